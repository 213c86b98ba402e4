//! Networks beyond `cluster`: the `network` kind with `driver: overlay` (the default), pure.
//!
//! An overlay network is cluster-wide, like a Swarm overlay network. Its address pool
//! (`IPV4AddressPool`) is carved into one subnet per node from the replicated state: the node
//! whose `cluster` lease is the k-th subnet of the cluster CIDR gets the k-th subnet of the pool
//! ([`node_subnet`]), so slices come and go with the leases and need no state of their own. On
//! each node the agent makes a Docker bridge network on that slice, routes every peer's slice
//! through the overlay backend in use (wireguard: as the peer's allowed IPs), and installs smr's isolation rules: a container reaches
//! the networks it joined and no others.
//!
//! This module decides: what is accepted ([`check_apply`]), what may be deleted
//! ([`check_delete`]), which networks a replica joins ([`attachments`]), and what a node needs
//! ([`node_networks`], [`peer_routes`], [`allowed_ranges`]). The agent executes.
//!
//! ```text
//!  pool 10.20.0.0/16     cluster 10.10.0.0/16, /24 leases
//!  node 1: lease 10.10.0.0/24  -> front slice 10.20.0.0/24 (Docker network smr.g.front)
//!  node 2: lease 10.10.1.0/24  -> front slice 10.20.1.0/24
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::definitions::{ContainersSpec, Kind, Object, ObjectKey, Spec};
use crate::state::{ClusterState, NodeId};

/// The default network: the overlay's own, on each node's lease.
pub const CLUSTER: &str = "cluster";
/// Label on the Docker networks smr makes for overlay networks: `<group>/<name>`.
pub const NETWORK_LABEL: &str = "io.smr.network";
/// Label on the same networks: the network's pool (so a node can remove the routes of a
/// network that is gone from the state).
pub const POOL_LABEL: &str = "io.smr.pool";

/// Label on the Docker networks smr makes for bridge networks (`driver: bridge`):
/// `<group>/<name>`. Not [`NETWORK_LABEL`], so the overlay networks' loop leaves them alone.
pub const BRIDGE_LABEL: &str = "io.smr.bridge-network";
/// Label on the same networks: their subnet (a network whose object was applied again with
/// another pool is recreated once no container uses it).
pub const SUBNET_LABEL: &str = "io.smr.subnet";
/// Docker's own default network, joinable as `{group: internal, name: bridge}` (or any group
/// with name `bridge` when no network object has that key).
pub const DOCKER_BRIDGE: &str = "bridge";

/// A `network` object with `driver: bridge`: a node-local Docker bridge network with the
/// same subnet (`ipv4AddressPool`) on every node that runs a replica joining it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BridgeNetwork {
    pub group: String,
    pub name: String,
    pub subnet: Ipv4Net,
}

impl BridgeNetwork {
    /// The Docker network's name on the nodes that need it: `smr.<group>.<name>`.
    pub fn docker_name(&self) -> String {
        format!("smr.{}.{}", self.group, self.name)
    }

    /// The Linux bridge's name: `smrb` and 8 hex digits of a hash of `<group>/<name>`.
    pub fn bridge(&self) -> String {
        format!("smrb{}", fnv(&self.group, &self.name))
    }

    /// `<group>/<name>`, the value of [`BRIDGE_LABEL`].
    pub fn label(&self) -> String {
        format!("{}/{}", self.group, self.name)
    }

    /// The gateway (the bridge's address on each node): the subnet's first address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }
}

fn fnv(group: &str, name: &str) -> String {
    // FNV-1a: stable across builds and versions, unlike the std hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("{group}/{name}").bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// A `network` object with `driver: overlay`, as the agent uses it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OverlayNetwork {
    pub group: String,
    pub name: String,
    pub pool: Ipv4Net,
}

impl OverlayNetwork {
    /// The Docker network's name on every node: `smr.<group>.<name>`.
    pub fn docker_name(&self) -> String {
        format!("smr.{}.{}", self.group, self.name)
    }

    /// The Linux bridge's name (at most 15 bytes): `smrn` and 8 hex digits of a hash of
    /// `<group>/<name>`.
    pub fn bridge(&self) -> String {
        format!("smrn{}", fnv(&self.group, &self.name))
    }

    /// `<group>/<name>`, the value of [`NETWORK_LABEL`].
    pub fn label(&self) -> String {
        format!("{}/{}", self.group, self.name)
    }
}

/// Why a network or a containers definition is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "{key}: driver {driver:?} is not supported (supported: overlay, the default, and bridge)"
    )]
    Driver { key: ObjectKey, driver: String },
    #[error(
        "{key}: a bridge network needs ipv4AddressPool, its subnet on each node that runs a replica joining it (e.g. 172.30.0.0/24)"
    )]
    BridgeNoPool { key: ObjectKey },
    #[error("{key}: ipv4AddressPool {pool} is too small for a bridge network (at most /30)")]
    BridgeTooSmall { key: ObjectKey, pool: Ipv4Net },
    #[error(
        "{key}: driver cannot change from {old} to {new} (delete the network and apply it again)"
    )]
    DriverChanged {
        key: ObjectKey,
        old: &'static str,
        new: &'static str,
    },
    #[error("{key}: an overlay network needs ipv4AddressPool (e.g. 10.20.0.0/16)")]
    NoPool { key: ObjectKey },
    #[error("{key}: ipv4AddressPool {pool:?} is not an IPv4 network in CIDR form")]
    BadPool { key: ObjectKey, pool: String },
    #[error("{key}: the name {CLUSTER} is the default network's")]
    Reserved { key: ObjectKey },
    #[error("{key}: ipv4AddressPool {pool} overlaps {other}")]
    Overlap {
        key: ObjectKey,
        pool: Ipv4Net,
        other: String,
    },
    #[error(
        "{key}: ipv4AddressPool {pool} is too small: it must hold one subnet of at least 4 addresses per possible node ({nodes}), so at most /{max}"
    )]
    PoolTooSmall {
        key: ObjectKey,
        pool: Ipv4Net,
        nodes: u64,
        max: u8,
    },
    #[error(
        "{key}: overlay networks need an overlay backend (wireguard, vxlan or host-gw); this cluster runs {backend}"
    )]
    Backend { key: ObjectKey, backend: String },
    #[error(
        "{key}: ipv4AddressPool cannot change from {old} to {new} (delete the network and apply it again)"
    )]
    PoolChanged {
        key: ObjectKey,
        old: Ipv4Net,
        new: Ipv4Net,
    },
    #[error(
        "{key}: networks[{index}] {group}/{name}: no such network (apply a network object {group}/{name}, or use {{group: internal, name: cluster}})"
    )]
    Unknown {
        key: ObjectKey,
        index: usize,
        group: String,
        name: String,
    },
    #[error(
        "{key}: networks[{index}] {group}/{name}: Docker's own {name} network cannot be joined through networks (use networkMode: {name})"
    )]
    DockerOwn {
        key: ObjectKey,
        index: usize,
        group: String,
        name: String,
    },
    #[error("{key}: networks lists {group}/{name} twice")]
    Twice {
        key: ObjectKey,
        group: String,
        name: String,
    },
    #[error("{key}: networks cannot be joined with networkMode {mode}")]
    WithMode { key: ObjectKey, mode: String },
    #[error("{key} is used by {}; delete or change them first", users.join(", "))]
    InUse { key: ObjectKey, users: Vec<String> },
}

/// The overlay networks of the state, in key order. Objects that are not accepted overlay
/// networks (they cannot be stored: [`check_apply`] refuses them) are skipped.
pub fn overlay_networks(state: &ClusterState) -> Vec<OverlayNetwork> {
    state
        .objects_of(Kind::Network)
        .filter_map(|s| overlay_of(&s.object))
        .collect()
}

fn overlay_of(object: &Object) -> Option<OverlayNetwork> {
    let Spec::Network(n) = &object.spec else {
        return None;
    };
    if !matches!(n.driver.as_deref(), None | Some("overlay")) {
        return None;
    }
    let pool: Ipv4Net = n.ipv4_address_pool.as_deref()?.trim().parse().ok()?;
    Some(OverlayNetwork {
        group: object.meta.group.clone(),
        name: object.meta.name.clone(),
        pool: pool.trunc(),
    })
}

/// The bridge networks of the state, in key order (objects that are not accepted bridge
/// networks are skipped, as in [`overlay_networks`]).
pub fn bridge_networks(state: &ClusterState) -> Vec<BridgeNetwork> {
    state
        .objects_of(Kind::Network)
        .filter_map(|s| bridge_of(&s.object))
        .collect()
}

fn bridge_of(object: &Object) -> Option<BridgeNetwork> {
    let Spec::Network(n) = &object.spec else {
        return None;
    };
    if n.driver.as_deref() != Some("bridge") {
        return None;
    }
    let subnet: Ipv4Net = n.ipv4_address_pool.as_deref()?.trim().parse().ok()?;
    Some(BridgeNetwork {
        group: object.meta.group.clone(),
        name: object.meta.name.clone(),
        subnet: subnet.trunc(),
    })
}

/// The prefix length of a node's slice of `pool`: as many slices as the cluster CIDR has
/// leases. `None` if a slice would hold fewer than 4 addresses.
pub fn slice_len(pool: Ipv4Net, cidr: Ipv4Net, subnet_len: u8) -> Option<u8> {
    let extra = subnet_len.checked_sub(cidr.prefix_len())?;
    let len = pool.prefix_len().checked_add(extra)?;
    (len <= 30).then_some(len)
}

/// The slice of `pool` for the node whose `cluster` lease is `lease`: the k-th lease of the
/// cluster CIDR gets the k-th slice of the pool.
pub fn node_subnet(
    pool: Ipv4Net,
    cidr: Ipv4Net,
    subnet_len: u8,
    lease: Ipv4Net,
) -> Option<Ipv4Net> {
    let (pool, cidr) = (pool.trunc(), cidr.trunc());
    let len = slice_len(pool, cidr, subnet_len)?;
    if !cidr.contains(&lease.network()) {
        return None;
    }
    let offset = u32::from(lease.network()) - u32::from(cidr.network());
    let k = offset >> (32 - u32::from(subnet_len));
    let base = u32::from(pool.network()) + (k << (32 - u32::from(len)));
    Ipv4Net::new(Ipv4Addr::from(base), len).ok()
}

/// One network a replica joins, in the order of `spec.networks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    Cluster,
    Overlay(OverlayNetwork),
    /// A `driver: bridge` network: node-local.
    Bridge(BridgeNetwork),
    /// Docker's own `bridge` network: node-local, its subnet is Docker's.
    DockerBridge,
}

impl Attachment {
    /// The Docker network's name.
    pub fn docker_name(&self) -> String {
        match self {
            Attachment::Cluster => CLUSTER.into(),
            Attachment::Overlay(n) => n.docker_name(),
            Attachment::Bridge(n) => n.docker_name(),
            Attachment::DockerBridge => DOCKER_BRIDGE.into(),
        }
    }

    /// The first label of its DNS names (`<network>.<group>.<name>.private`).
    pub fn dns_label(&self) -> &str {
        match self {
            Attachment::Cluster => CLUSTER,
            Attachment::Overlay(n) => &n.name,
            Attachment::Bridge(n) => &n.name,
            Attachment::DockerBridge => DOCKER_BRIDGE,
        }
    }

    /// The address range smr knows for it (`None` for Docker's own `bridge`).
    pub fn range(&self, cluster: Option<Ipv4Net>) -> Option<Ipv4Net> {
        match self {
            Attachment::Cluster => cluster.map(|c| c.trunc()),
            Attachment::Overlay(n) => Some(n.pool),
            Attachment::Bridge(n) => Some(n.subnet),
            Attachment::DockerBridge => None,
        }
    }
}

/// The networks a replica of `spec` joins: `spec.networks` resolved against the state's
/// network objects (by group and name; `cluster` and Docker's own `bridge` by name when no
/// network object has that key), `[cluster]` when it lists none. Unknown names are left out
/// (refused at apply time).
pub fn attachments(spec: &ContainersSpec, state: &ClusterState) -> Vec<Attachment> {
    attachments_among(spec, &overlay_networks(state), &bridge_networks(state))
}

/// [`attachments`] against given networks.
pub fn attachments_among(
    spec: &ContainersSpec,
    networks: &[OverlayNetwork],
    bridges: &[BridgeNetwork],
) -> Vec<Attachment> {
    if spec.networks.is_empty() {
        return vec![Attachment::Cluster];
    }
    let mut out: Vec<Attachment> = Vec::new();
    for r in &spec.networks {
        let overlay = networks
            .iter()
            .find(|n| n.group == r.group && n.name == r.name);
        let bridge = bridges
            .iter()
            .find(|n| n.group == r.group && n.name == r.name);
        let a = match (overlay, bridge) {
            (Some(n), _) => Attachment::Overlay(n.clone()),
            (None, Some(n)) => Attachment::Bridge(n.clone()),
            (None, None) if r.name == CLUSTER => Attachment::Cluster,
            (None, None) if r.name == DOCKER_BRIDGE => Attachment::DockerBridge,
            (None, None) => continue,
        };
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Refuses a batch of objects the networks cannot take, before anything is stored: network
/// objects (driver, pool, overlaps, backend) and containers definitions naming networks that
/// neither exist nor come in the same batch.
pub fn check_apply(state: &ClusterState, objects: &[Object]) -> Result<(), NetworkError> {
    // Only networks and containers definitions have anything to check: a batch of other kinds
    // costs nothing here, whatever the size of the state.
    if !objects
        .iter()
        .any(|o| matches!(o.spec, Spec::Network(_) | Spec::Containers(_)))
    {
        return Ok(());
    }
    let incoming: BTreeSet<ObjectKey> = objects.iter().map(Object::key).collect();
    // Networks after the batch: stored ones not replaced, then the batch's.
    let mut after: Vec<OverlayNetwork> = overlay_networks(state)
        .into_iter()
        .filter(|n| !incoming.contains(&key_of(&n.group, &n.name)))
        .collect();
    let mut bridges_after: Vec<BridgeNetwork> = bridge_networks(state)
        .into_iter()
        .filter(|n| !incoming.contains(&key_of(&n.group, &n.name)))
        .collect();
    for object in objects {
        let Spec::Network(n) = &object.spec else {
            continue;
        };
        let key = object.key();
        if object.meta.name == CLUSTER {
            return Err(NetworkError::Reserved { key });
        }
        let bridge = match n.driver.as_deref() {
            None | Some("overlay") => false,
            Some("bridge") => true,
            Some(other) => {
                return Err(NetworkError::Driver {
                    key,
                    driver: other.into(),
                });
            }
        };
        let Some(text) = n.ipv4_address_pool.as_deref() else {
            return Err(if bridge {
                NetworkError::BridgeNoPool { key }
            } else {
                NetworkError::NoPool { key }
            });
        };
        let pool: Ipv4Net = match text.trim().parse::<Ipv4Net>() {
            Ok(p) if bridge && p.prefix_len() > 30 => {
                return Err(NetworkError::BridgeTooSmall { key, pool: p });
            }
            Ok(p) => p.trunc(),
            Err(_) => {
                return Err(NetworkError::BadPool {
                    key,
                    pool: text.into(),
                });
            }
        };
        let old_overlay = overlay_networks(state)
            .into_iter()
            .find(|o| key_of(&o.group, &o.name) == key);
        let old_bridge = bridge_networks(state)
            .into_iter()
            .find(|o| key_of(&o.group, &o.name) == key);
        let driver_name = |b: bool| if b { "bridge" } else { "overlay" };
        if (bridge && old_overlay.is_some()) || (!bridge && old_bridge.is_some()) {
            return Err(NetworkError::DriverChanged {
                key,
                old: driver_name(!bridge),
                new: driver_name(bridge),
            });
        }
        if let Some(settings) = &state.network {
            if !bridge && !matches!(settings.backend.as_str(), "wireguard" | "vxlan" | "host-gw") {
                return Err(NetworkError::Backend {
                    key,
                    backend: settings.backend.clone(),
                });
            }
            if overlaps(pool, settings.cidr) {
                return Err(NetworkError::Overlap {
                    key,
                    pool,
                    other: format!("the cluster CIDR {}", settings.cidr),
                });
            }
            if !bridge && slice_len(pool, settings.cidr, settings.subnet_len).is_none() {
                let extra = settings
                    .subnet_len
                    .saturating_sub(settings.cidr.prefix_len());
                return Err(NetworkError::PoolTooSmall {
                    key,
                    pool,
                    nodes: 1u64 << extra,
                    max: 30u8.saturating_sub(extra),
                });
            }
        }
        let old_pool = old_overlay.map(|o| o.pool).or(old_bridge.map(|o| o.subnet));
        if let Some(old) = old_pool
            && old != pool
        {
            return Err(NetworkError::PoolChanged {
                key,
                old,
                new: pool,
            });
        }
        let other = after
            .iter()
            .find(|o| overlaps(pool, o.pool))
            .map(|o| format!("network/{}/{} ({})", o.group, o.name, o.pool))
            .or_else(|| {
                bridges_after
                    .iter()
                    .find(|o| overlaps(pool, o.subnet))
                    .map(|o| format!("network/{}/{} ({})", o.group, o.name, o.subnet))
            });
        if let Some(other) = other {
            return Err(NetworkError::Overlap { key, pool, other });
        }
        let (group, name) = (object.meta.group.clone(), object.meta.name.clone());
        if bridge {
            bridges_after.push(BridgeNetwork {
                group,
                name,
                subnet: pool,
            });
        } else {
            after.push(OverlayNetwork { group, name, pool });
        }
    }
    for object in objects {
        let Spec::Containers(c) = &object.spec else {
            continue;
        };
        check_refs(&object.key(), c, &after, &bridges_after)?;
    }
    Ok(())
}

fn check_refs(
    key: &ObjectKey,
    spec: &ContainersSpec,
    networks: &[OverlayNetwork],
    bridges: &[BridgeNetwork],
) -> Result<(), NetworkError> {
    // A container of the host's network, of none or of another container's joins no network.
    if let Some(mode) = spec.network_mode.as_deref()
        && !spec.networks.is_empty()
        && (matches!(mode, "host" | "none") || mode.starts_with("container:"))
    {
        return Err(NetworkError::WithMode {
            key: key.clone(),
            mode: mode.into(),
        });
    }
    let mut seen = BTreeSet::new();
    for (index, r) in spec.networks.iter().enumerate() {
        let known = networks
            .iter()
            .any(|n| n.group == r.group && n.name == r.name)
            || bridges
                .iter()
                .any(|n| n.group == r.group && n.name == r.name);
        if !known && matches!(r.name.as_str(), "host" | "none") {
            return Err(NetworkError::DockerOwn {
                key: key.clone(),
                index,
                group: r.group.clone(),
                name: r.name.clone(),
            });
        }
        if !known && r.name != CLUSTER && r.name != DOCKER_BRIDGE {
            return Err(NetworkError::Unknown {
                key: key.clone(),
                index,
                group: r.group.clone(),
                name: r.name.clone(),
            });
        }
        if !seen.insert((&r.group, &r.name)) {
            return Err(NetworkError::Twice {
                key: key.clone(),
                group: r.group.clone(),
                name: r.name.clone(),
            });
        }
    }
    Ok(())
}

/// Refuses deleting a network that containers definitions use (unless they go in the same
/// delete), naming them.
pub fn check_delete(state: &ClusterState, keys: &[ObjectKey]) -> Result<(), NetworkError> {
    let going: BTreeSet<&ObjectKey> = keys.iter().collect();
    for key in keys.iter().filter(|k| k.kind == Kind::Network) {
        let users: Vec<String> = state
            .objects
            .iter()
            .filter(|(k, _)| !going.contains(k))
            .filter_map(|(k, s)| match &s.object.spec {
                Spec::Containers(c)
                    if c.networks
                        .iter()
                        .any(|r| r.group == key.group && r.name == key.name) =>
                {
                    Some(k.to_string())
                }
                _ => None,
            })
            .collect();
        if !users.is_empty() {
            return Err(NetworkError::InUse {
                key: key.clone(),
                users,
            });
        }
    }
    Ok(())
}

fn key_of(group: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::Network,
        group: group.into(),
        name: name.into(),
        prefix: None,
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A Docker network this node needs for an overlay network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    pub network: OverlayNetwork,
    /// This node's slice of the pool.
    pub subnet: Ipv4Net,
}

/// The Docker networks `me` needs: one per overlay network, on its slice. Empty when the node
/// has no lease (no overlay) or the cluster network is not set.
pub fn node_networks(state: &ClusterState, me: NodeId) -> Vec<NodeNetwork> {
    let (Some(settings), Some(lease)) = (
        state.network.as_ref(),
        state.nodes.get(&me).and_then(|n| n.lease),
    ) else {
        return Vec::new();
    };
    overlay_networks(state)
        .into_iter()
        .filter_map(|network| {
            let subnet = node_subnet(network.pool, settings.cidr, settings.subnet_len, lease)?;
            Some(NodeNetwork { network, subnet })
        })
        .collect()
}

/// Per peer (by node id, in id order), the slices of every overlay network it holds: the
/// routes the overlay backend carries to that peer.
pub fn peer_routes(state: &ClusterState, me: NodeId) -> BTreeMap<NodeId, Vec<Ipv4Net>> {
    let Some(settings) = state.network.as_ref() else {
        return BTreeMap::new();
    };
    let networks = overlay_networks(state);
    state
        .nodes
        .values()
        .filter(|n| n.id != me)
        .filter_map(|n| {
            let lease = n.lease?;
            let slices: Vec<Ipv4Net> = networks
                .iter()
                .filter_map(|net| node_subnet(net.pool, settings.cidr, settings.subnet_len, lease))
                .collect();
            (!slices.is_empty()).then_some((n.id, slices))
        })
        .collect()
}

/// The isolation input of one node: which ranges are isolated from each other (the cluster
/// CIDR, every pool and every bridge network's subnet), this node's own slices (where its
/// containers send from: its lease, its slice of every pool, every bridge subnet), and per local
/// replica address the ranges it may send to (those of the networks its replica joined).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    pub ranges: Vec<Ipv4Net>,
    pub local: Vec<Ipv4Net>,
    pub allowed: Vec<(Ipv4Addr, Ipv4Net)>,
}

impl Isolation {
    /// The local ranges other than the `cluster` lease (the overlay networks' slices and the
    /// bridge networks' subnets): traffic from them to outside every range is masqueraded by
    /// smr (`cluster`'s is masqueraded by the overlay itself).
    pub fn masquerade_sources(&self, cluster: Ipv4Net) -> Vec<Ipv4Net> {
        self.local
            .iter()
            .filter(|l| !cluster.contains(*l))
            .copied()
            .collect()
    }
}

/// [`Isolation`] for node `me`: empty (no rules) when there is no overlay or bridge network.
/// `replica_ips` are this node's replicas: their object key and every address they hold.
pub fn allowed_ranges(
    state: &ClusterState,
    me: NodeId,
    replica_ips: &[(ObjectKey, Vec<Ipv4Addr>)],
) -> Isolation {
    let networks = overlay_networks(state);
    let bridges = bridge_networks(state);
    let (Some(settings), Some(lease)) = (
        state.network.as_ref(),
        state.nodes.get(&me).and_then(|n| n.lease),
    ) else {
        return Isolation::default();
    };
    if networks.is_empty() && bridges.is_empty() {
        return Isolation::default();
    }
    let mut ranges = vec![settings.cidr.trunc()];
    ranges.extend(networks.iter().map(|n| n.pool));
    ranges.extend(bridges.iter().map(|n| n.subnet));
    let mut local = vec![lease.trunc()];
    local.extend(node_networks(state, me).into_iter().map(|n| n.subnet));
    local.extend(bridges.iter().map(|n| n.subnet));
    let mut allowed = BTreeSet::new();
    for (key, ips) in replica_ips {
        let Some(Spec::Containers(spec)) = state.objects.get(key).map(|s| &s.object.spec) else {
            continue;
        };
        for a in attachments_among(spec, &networks, &bridges) {
            let Some(range) = a.range(Some(settings.cidr)) else {
                continue;
            };
            for ip in ips {
                allowed.insert((*ip, range));
            }
        }
    }
    Isolation {
        ranges,
        local,
        allowed: allowed.into_iter().collect(),
    }
}

pub mod bridge;

#[cfg(test)]
mod tests;
