//! Pure record computation for the `private.` zone.
//!
//! The agent hands in plain facts (which replicas exist, their overlay IP and whether they
//! are ready; which nodes exist) and [`compute_records`] turns them into a [`RecordSet`]:
//! an immutable, cheaply clonable map from lowercase owner name (without the trailing dot,
//! e.g. `cluster.busybox.busybox-busybox-1.private`) to the sorted, de-duplicated IPv4
//! addresses of its A records. The server swaps whole `RecordSet`s; nothing here does I/O.
//!
//! Names produced, for each READY replica `(group, name, index, ip)`:
//! - `cluster.<group>.<group>-<name>-<index>.private` (the seed article's form)
//! - `cluster.<group>-<name>-<index>.private` (simplecontainer's newer form)
//! - `cluster.<group>.<name>.private`, shared by all ready replicas of the definition
//!
//! and for each node `<node>.node.private`. Every label is lowercased and must then be a
//! hostname label (`[a-z0-9-]`, 1..=63 bytes, no leading or trailing `-`); an input whose
//! labels are invalid is skipped, never a panic. Should two forms collide (e.g. definition
//! `a/a-b-1` and replica 1 of `a/b` both give `cluster.a.a-b-1.private`), the name answers
//! the union of the addresses.
//!
//! The set also remembers every "empty non-terminal" (a name with no address of its own but
//! with names below it, like `node.private` or `busybox-busybox-1.private`), so the server
//! can answer those NOERROR/NODATA rather than NXDOMAIN (RFC 8020: an NXDOMAIN would tell
//! caching resolvers that nothing exists underneath).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The zone this crate is authoritative for, without the trailing dot.
pub const ZONE: &str = "private";

/// Longest presentation name (without the trailing dot) that fits the 255-byte wire limit.
const MAX_NAME_LEN: usize = 253;
/// Longest label allowed by RFC 1035.
const MAX_LABEL_LEN: usize = 63;

/// One replica of a container definition as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// `meta.group` of the definition.
    pub group: String,
    /// `meta.name` of the definition.
    pub name: String,
    /// Replica index, from 1.
    pub index: u32,
    /// The replica's address on the overlay.
    pub ip: Ipv4Addr,
    /// Only ready replicas get records.
    pub ready: bool,
}

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name; must be a single DNS label once lowercased.
    pub name: String,
    /// The address `<name>.node.private` resolves to.
    pub ip: Ipv4Addr,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Inner {
    names: BTreeMap<String, Vec<Ipv4Addr>>,
    interior: BTreeSet<String>,
}

/// An immutable map from owner name to A record addresses. Cloning is an `Arc` bump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordSet {
    inner: Arc<Inner>,
}

impl RecordSet {
    /// Builds a set from `(name, addresses)` pairs. Names are lowercased, a trailing dot is
    /// accepted; names that are not valid hostnames inside `private` are skipped. Addresses
    /// of repeated names are merged; each address list ends up sorted and de-duplicated.
    pub fn from_entries<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = (S, Vec<Ipv4Addr>)>,
        S: AsRef<str>,
    {
        let mut builder = Builder::default();
        for (name, ips) in entries {
            let Some(name) = normalize_name(name.as_ref()) else {
                continue;
            };
            for ip in ips {
                builder.add(name.clone(), ip);
            }
        }
        builder.finish()
    }

    /// Number of names that have at least one address.
    pub fn len(&self) -> usize {
        self.inner.names.len()
    }

    /// True when no name has an address.
    pub fn is_empty(&self) -> bool {
        self.inner.names.is_empty()
    }

    /// Addresses of `name` (lowercase, without the trailing dot), sorted.
    pub fn get(&self, name: &str) -> Option<&[Ipv4Addr]> {
        self.inner.names.get(name).map(Vec::as_slice)
    }

    /// True when `name` has no address but some name below it has one.
    pub fn is_empty_non_terminal(&self, name: &str) -> bool {
        self.inner.interior.contains(name)
    }

    /// All names with their addresses, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Ipv4Addr])> {
        self.inner
            .names
            .iter()
            .map(|(name, ips)| (name.as_str(), ips.as_slice()))
    }
}

#[derive(Default)]
struct Builder {
    names: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl Builder {
    fn add(&mut self, name: String, ip: Ipv4Addr) {
        self.names.entry(name).or_default().push(ip);
    }

    fn finish(mut self) -> RecordSet {
        let mut interior = BTreeSet::new();
        for (name, ips) in self.names.iter_mut() {
            ips.sort_unstable();
            ips.dedup();
            // Every proper suffix strictly below the apex is a non-terminal.
            let mut rest = name.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if parent == ZONE {
                    break;
                }
                interior.insert(parent.to_owned());
                rest = parent;
            }
        }
        interior.retain(|n| !self.names.contains_key(n));
        RecordSet {
            inner: Arc::new(Inner {
                names: self.names,
                interior,
            }),
        }
    }
}

/// Computes the records of the `private.` zone from replicas and nodes. Never panics:
/// inputs whose names are not valid DNS labels are skipped.
pub fn compute_records(replicas: &[ReplicaInfo], nodes: &[NodeInfo]) -> RecordSet {
    compute_network_records(replicas, &[], nodes)
}

/// [`compute_records`] plus the names of replicas on other networks: for each
/// `(network, replica)` of `on_networks`, the three names with `<network>` in place of
/// `cluster` (`<network>.<group>.<group>-<name>-<index>.private`,
/// `<network>.<group>-<name>-<index>.private`, `<network>.<group>.<name>.private`), answering
/// the replica's address on that network.
pub fn compute_network_records(
    cluster: &[ReplicaInfo],
    on_networks: &[(String, ReplicaInfo)],
    nodes: &[NodeInfo],
) -> RecordSet {
    let mut builder = Builder::default();
    for replica in cluster {
        add_replica(&mut builder, "cluster", replica);
    }
    for (network, replica) in on_networks {
        add_replica(&mut builder, network, replica);
    }
    for node in nodes {
        let Some(name) = lower_label(&node.name) else {
            continue;
        };
        let owner = format!("{name}.node.{ZONE}");
        if owner.len() <= MAX_NAME_LEN {
            builder.add(owner, node.ip);
        }
    }
    builder.finish()
}

fn add_replica(builder: &mut Builder, network: &str, replica: &ReplicaInfo) {
    if !replica.ready {
        return;
    }
    let (Some(network), Some(group), Some(name)) = (
        lower_label(network),
        lower_label(&replica.group),
        lower_label(&replica.name),
    ) else {
        return;
    };
    let Some(host) = lower_label(&format!("{group}-{name}-{}", replica.index)) else {
        return;
    };
    for owner in [
        format!("{network}.{group}.{host}.{ZONE}"),
        format!("{network}.{host}.{ZONE}"),
        format!("{network}.{group}.{name}.{ZONE}"),
    ] {
        if owner.len() <= MAX_NAME_LEN {
            builder.add(owner, replica.ip);
        }
    }
}

/// Lowercases `label` and checks it is a hostname label: `[a-z0-9-]`, 1..=63 bytes, not
/// starting or ending with `-`. Returns `None` otherwise.
pub fn lower_label(label: &str) -> Option<String> {
    let lower = label.to_ascii_lowercase();
    is_host_label(lower.as_bytes()).then_some(lower)
}

/// True when `label` (already lowercase) is a valid hostname label.
pub fn is_host_label(label: &[u8]) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
}

/// Turns a name in presentation form (any case, optional trailing dot) into the key used by
/// [`RecordSet`]: lowercase, no trailing dot, every label a hostname label, strictly inside
/// `private`. Returns `None` for anything else.
pub fn normalize_name(name: &str) -> Option<String> {
    let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name_key_from_labels(lower.split('.').map(str::as_bytes))
}

/// Builds the [`RecordSet`] key from wire-form labels (most specific first, without the root
/// label), as they come out of a parsed query. `None` unless every label is a lowercase
/// hostname label and the name lies strictly inside `private`.
pub fn name_key_from_labels<'a, I>(labels: I) -> Option<String>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut key = String::new();
    let mut last: Option<&[u8]> = None;
    let mut count = 0usize;
    for label in labels {
        if !is_host_label(label) {
            return None;
        }
        if !key.is_empty() {
            key.push('.');
        }
        // is_host_label guarantees ASCII.
        key.push_str(std::str::from_utf8(label).ok()?);
        if key.len() > MAX_NAME_LEN {
            return None;
        }
        last = Some(label);
        count += 1;
    }
    (count >= 2 && last == Some(ZONE.as_bytes())).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn replica(group: &str, name: &str, index: u32, ip: [u8; 4], ready: bool) -> ReplicaInfo {
        ReplicaInfo {
            group: group.into(),
            name: name.into(),
            index,
            ip: Ipv4Addr::from(ip),
            ready,
        }
    }

    fn listing(set: &RecordSet) -> Vec<(String, Vec<Ipv4Addr>)> {
        set.iter()
            .map(|(n, ips)| (n.to_owned(), ips.to_vec()))
            .collect()
    }

    #[test]
    fn ready_replicas_and_nodes_give_exact_records() {
        let replicas = [
            replica("busybox", "busybox", 2, [10, 10, 2, 3], true),
            replica("busybox", "busybox", 1, [10, 10, 1, 2], true),
            replica("busybox", "busybox", 3, [10, 10, 1, 9], false),
        ];
        let nodes = [NodeInfo {
            name: "VM1".into(),
            ip: Ipv4Addr::new(192, 168, 0, 1),
        }];
        let set = compute_records(&replicas, &nodes);
        let ip = Ipv4Addr::new;
        assert_eq!(
            listing(&set),
            vec![
                (
                    "cluster.busybox-busybox-1.private".into(),
                    vec![ip(10, 10, 1, 2)]
                ),
                (
                    "cluster.busybox-busybox-2.private".into(),
                    vec![ip(10, 10, 2, 3)]
                ),
                (
                    "cluster.busybox.busybox-busybox-1.private".into(),
                    vec![ip(10, 10, 1, 2)]
                ),
                (
                    "cluster.busybox.busybox-busybox-2.private".into(),
                    vec![ip(10, 10, 2, 3)]
                ),
                (
                    "cluster.busybox.busybox.private".into(),
                    vec![ip(10, 10, 1, 2), ip(10, 10, 2, 3)]
                ),
                ("vm1.node.private".into(), vec![ip(192, 168, 0, 1)]),
            ]
        );
        assert_eq!(set.len(), 6);
        assert!(set.is_empty_non_terminal("node.private"));
        assert!(set.is_empty_non_terminal("busybox-busybox-1.private"));
        assert!(set.is_empty_non_terminal("busybox.busybox-busybox-1.private"));
        assert!(set.is_empty_non_terminal("busybox.private"));
        assert!(!set.is_empty_non_terminal("private"));
        assert!(!set.is_empty_non_terminal("busybox-busybox-3.private"));
        assert!(!set.is_empty_non_terminal("vm1.node.private"));
    }

    #[test]
    fn names_are_lowercased_and_invalid_labels_skipped() {
        let replicas = [
            replica("Web", "API", 1, [10, 0, 0, 1], true),
            replica("bad_group", "x", 1, [10, 0, 0, 2], true),
            replica("g", "-x", 1, [10, 0, 0, 3], true),
            replica("g", "", 1, [10, 0, 0, 4], true),
            replica("g.h", "x", 1, [10, 0, 0, 5], true),
            replica(&"a".repeat(60), "bb", 1, [10, 0, 0, 6], true),
        ];
        let nodes = [
            NodeInfo {
                name: "vm.example.com".into(),
                ip: Ipv4Addr::new(1, 1, 1, 1),
            },
            NodeInfo {
                name: "ünïcode".into(),
                ip: Ipv4Addr::new(1, 1, 1, 2),
            },
        ];
        let set = compute_records(&replicas, &nodes);
        let names: Vec<&str> = set.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            vec![
                "cluster.web-api-1.private",
                "cluster.web.api.private",
                "cluster.web.web-api-1.private",
            ]
        );
    }

    #[test]
    fn colliding_forms_merge_and_duplicates_collapse() {
        let replicas = [
            replica("a", "a-b-1", 1, [10, 0, 0, 9], true),
            replica("a", "b", 1, [10, 0, 0, 1], true),
            replica("a", "b", 1, [10, 0, 0, 1], true),
        ];
        let set = compute_records(&replicas, &[]);
        assert_eq!(
            set.get("cluster.a.a-b-1.private"),
            Some(&[Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9)][..])
        );
        assert_eq!(
            set.get("cluster.a.b.private"),
            Some(&[Ipv4Addr::new(10, 0, 0, 1)][..])
        );
    }

    #[test]
    fn from_entries_normalizes() {
        let set = RecordSet::from_entries([
            ("Host1.Node.Private.", vec![Ipv4Addr::new(1, 2, 3, 4)]),
            ("host1.node.private", vec![Ipv4Addr::new(1, 2, 3, 0)]),
            ("outside.example", vec![Ipv4Addr::new(9, 9, 9, 9)]),
            ("private", vec![Ipv4Addr::new(9, 9, 9, 9)]),
            ("a..private", vec![Ipv4Addr::new(9, 9, 9, 9)]),
        ]);
        assert_eq!(
            listing(&set),
            vec![(
                "host1.node.private".into(),
                vec![Ipv4Addr::new(1, 2, 3, 0), Ipv4Addr::new(1, 2, 3, 4)]
            )]
        );
    }

    #[test]
    fn name_keys() {
        assert_eq!(
            normalize_name("CLUSTER.X.private."),
            Some("cluster.x.private".into())
        );
        assert_eq!(normalize_name("private."), None);
        assert_eq!(normalize_name(""), None);
        assert_eq!(normalize_name("."), None);
        assert_eq!(normalize_name("x.private.."), None);
        assert_eq!(normalize_name("x.y.com"), None);
        let long = format!("{}.private", vec!["a".repeat(63); 4].join("."));
        assert_eq!(normalize_name(&long), None);
        assert_eq!(
            name_key_from_labels([&b"a"[..], b"private"]),
            Some("a.private".into())
        );
        assert_eq!(name_key_from_labels([&b"A"[..], b"private"]), None);
        assert_eq!(name_key_from_labels([&b"a\0"[..], b"private"]), None);
    }

    fn random_string(rng: &mut StdRng) -> String {
        const ALPHABET: &[char] = &[
            'a', 'Z', '0', '9', '-', '_', '.', ' ', '\0', '\\', 'é', '名', '\u{130}', 'K',
        ];
        let len = match rng.random_range(0..10) {
            0 => rng.random_range(60..300),
            _ => rng.random_range(0..20),
        };
        (0..len)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
            .collect()
    }

    #[test]
    fn never_panics_on_generated_inputs() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for _ in 0..2_000 {
            let replicas: Vec<ReplicaInfo> = (0..rng.random_range(0..8))
                .map(|_| ReplicaInfo {
                    group: random_string(&mut rng),
                    name: random_string(&mut rng),
                    index: rng.random(),
                    ip: Ipv4Addr::from(rng.random::<u32>()),
                    ready: rng.random(),
                })
                .collect();
            let nodes: Vec<NodeInfo> = (0..rng.random_range(0..4))
                .map(|_| NodeInfo {
                    name: random_string(&mut rng),
                    ip: Ipv4Addr::from(rng.random::<u32>()),
                })
                .collect();
            let set = compute_records(&replicas, &nodes);
            for (name, ips) in set.iter() {
                assert!(!ips.is_empty());
                assert!(ips.windows(2).all(|w| w[0] < w[1]));
                assert_eq!(normalize_name(name).as_deref(), Some(name));
            }
            let raw = random_string(&mut rng);
            let _ = normalize_name(&raw);
            let bytes: Vec<u8> = (0..rng.random_range(0..80)).map(|_| rng.random()).collect();
            let _ = name_key_from_labels(bytes.split(|b| *b == b'.'));
        }
    }

    #[test]
    fn names_per_network_answer_the_address_on_that_network() {
        let cluster = [replica("g", "web", 1, [10, 10, 0, 2], true)];
        let on = [
            (
                "front".to_string(),
                replica("g", "web", 1, [10, 20, 0, 2], true),
            ),
            (
                "back".to_string(),
                replica("g", "web", 1, [10, 21, 0, 2], true),
            ),
            (
                "back".to_string(),
                replica("g", "web", 2, [10, 21, 1, 2], true),
            ),
            (
                "back".to_string(),
                replica("g", "web", 3, [10, 21, 2, 2], false),
            ),
            (
                "Bad_Label".to_string(),
                replica("g", "web", 1, [10, 22, 0, 2], true),
            ),
        ];
        let set = compute_network_records(&cluster, &on, &[]);
        let names: Vec<(String, Vec<String>)> = set
            .iter()
            .map(|(n, ips)| (n.to_string(), ips.iter().map(|i| i.to_string()).collect()))
            .collect();
        let row =
            |n: &str, ips: &[&str]| (n.to_string(), ips.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            names,
            vec![
                row("back.g-web-1.private", &["10.21.0.2"]),
                row("back.g-web-2.private", &["10.21.1.2"]),
                row("back.g.g-web-1.private", &["10.21.0.2"]),
                row("back.g.g-web-2.private", &["10.21.1.2"]),
                row("back.g.web.private", &["10.21.0.2", "10.21.1.2"]),
                row("cluster.g-web-1.private", &["10.10.0.2"]),
                row("cluster.g.g-web-1.private", &["10.10.0.2"]),
                row("cluster.g.web.private", &["10.10.0.2"]),
                row("front.g-web-1.private", &["10.20.0.2"]),
                row("front.g.g-web-1.private", &["10.20.0.2"]),
                row("front.g.web.private", &["10.20.0.2"]),
            ]
        );
        assert_eq!(
            compute_network_records(&cluster, &[], &[]),
            compute_records(&cluster, &[])
        );
    }
}
