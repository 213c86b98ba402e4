//! Isolation between networks: a container reaches the networks it joined and no others.
//!
//! smr's own filter chain `SMR-NETS`, jumped to first from `FORWARD`, decides for traffic that
//! leaves a container of this node (its source lies in one of this node's slices); traffic
//! arriving from other nodes was decided by the node it left. In order:
//!
//! 1. replies of allowed connections pass (`RELATED,ESTABLISHED`);
//! 2. traffic inside one network passes: from this node's slice of a range to that range (so a
//!    container not reported yet, or an init container, reaches its own network at once);
//! 3. a local container address may send to the ranges of the other networks its replica
//!    joined (one `RETURN` per address and range: a container on `front` and `back` sends from
//!    its `front` address, the one of its default route, to `back` too);
//! 4. anything else from a local slice to an isolated range (the cluster CIDR, every pool) is
//!    dropped.
//!
//! The rules are pure data ([`isolation_rules`]); installing them goes through the
//! [`Iptables`] trait, like masquerading. The chain exists only while there are overlay
//! networks: with none, [`remove_isolation`] takes it and its jump away.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::masq::{Iptables, MasqError, OwnedChain};

/// The filter chain smr owns.
pub const ISOLATION_CHAIN: &str = "SMR-NETS";
const JUMP: &str = "FORWARD -j SMR-NETS";

/// What the rules are made of (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IsolationSpec {
    /// Ranges isolated from each other: the cluster CIDR and every pool.
    pub ranges: Vec<Ipv4Net>,
    /// This node's slices (its `cluster` lease and its slice of every pool).
    pub local: Vec<Ipv4Net>,
    /// Per local container address, a range it may send to.
    pub allowed: Vec<(Ipv4Addr, Ipv4Net)>,
}

/// The chain's rules, in the form `iptables -S` prints them.
pub fn isolation_rules(spec: &IsolationSpec) -> Vec<String> {
    let c = ISOLATION_CHAIN;
    let mut rules = vec![format!(
        "-A {c} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    )];
    for local in &spec.local {
        if let Some(range) = spec.ranges.iter().find(|r| r.contains(local)) {
            rules.push(format!(
                "-A {c} -s {} -d {} -j RETURN",
                local.trunc(),
                range.trunc()
            ));
        }
    }
    for (ip, range) in spec
        .allowed
        .iter()
        .filter(|(ip, range)| !range.contains(ip))
    {
        rules.push(format!("-A {c} -s {ip}/32 -d {} -j RETURN", range.trunc()));
    }
    for local in &spec.local {
        for range in &spec.ranges {
            rules.push(format!(
                "-A {c} -s {} -d {} -j DROP",
                local.trunc(),
                range.trunc()
            ));
        }
    }
    rules
}

const ISOLATION: OwnedChain = OwnedChain {
    table: "filter",
    name: ISOLATION_CHAIN,
    jump: JUMP,
};

/// Installs the chain with `spec`'s rules and the jump; `true` if anything changed. The
/// chain is rewritten only when its content differs (the jump stays, so the rules apply
/// throughout: a rewrite flushes and refills within one pass).
pub async fn ensure_isolation<I: Iptables>(
    ipt: &I,
    spec: &IsolationSpec,
) -> Result<bool, MasqError> {
    ISOLATION.ensure(ipt, &isolation_rules(spec)).await
}

/// Removes the jump and the chain; `true` if anything was there.
pub async fn remove_isolation<I: Iptables>(ipt: &I) -> Result<bool, MasqError> {
    ISOLATION.remove(ipt).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn rules_allow_joined_ranges_then_drop_the_rest() {
        let spec = IsolationSpec {
            ranges: vec![net("10.10.0.0/16"), net("10.20.0.0/16")],
            local: vec![net("10.10.1.0/24"), net("10.20.1.0/24")],
            allowed: vec![
                ("10.20.1.2".parse().unwrap(), net("10.20.0.0/16")),
                ("10.20.1.2".parse().unwrap(), net("10.10.0.0/16")),
                ("10.10.1.2".parse().unwrap(), net("10.10.0.0/16")),
            ],
        };
        assert_eq!(
            isolation_rules(&spec),
            vec![
                "-A SMR-NETS -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-A SMR-NETS -s 10.10.1.0/24 -d 10.10.0.0/16 -j RETURN",
                "-A SMR-NETS -s 10.20.1.0/24 -d 10.20.0.0/16 -j RETURN",
                "-A SMR-NETS -s 10.20.1.2/32 -d 10.10.0.0/16 -j RETURN",
                "-A SMR-NETS -s 10.10.1.0/24 -d 10.10.0.0/16 -j DROP",
                "-A SMR-NETS -s 10.10.1.0/24 -d 10.20.0.0/16 -j DROP",
                "-A SMR-NETS -s 10.20.1.0/24 -d 10.10.0.0/16 -j DROP",
                "-A SMR-NETS -s 10.20.1.0/24 -d 10.20.0.0/16 -j DROP",
            ]
        );
    }
}
