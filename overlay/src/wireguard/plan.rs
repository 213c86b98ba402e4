//! WireGuard peer diff: desired peers + the device's peers + observed routes -> the
//! exact list of device and route operations.
//!
//! Pure logic, like [`crate::plan`] for vxlan. Every peer that has WireGuard data
//! ([`Peer::wireguard`]) becomes one device peer (its public key, its endpoint, allowed
//! IPs = its subnet, persistent keepalive [`WG_KEEPALIVE_SECS`]) and one route
//! `<subnet> dev smr-wg`. A peer that is already right is left alone (no churn); a
//! device peer or route nobody wants any more is removed. A changed key is a removal of
//! the old key plus an addition of the new one; a changed endpoint, subnet or keepalive
//! of the same key is an update (the device keeps its session).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddrV4;

use ipnet::Ipv4Net;

use super::{WG_DEV, WG_KEEPALIVE_SECS, WgPublicKey};
use crate::plan::{Op, Peer, RouteEntry};

/// One peer as the device holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WgPeerConfig {
    pub public_key: WgPublicKey,
    /// The endpoint configured for it (not a roamed one the device follows).
    pub endpoint: Option<SocketAddrV4>,
    pub allowed_ips: Vec<Ipv4Net>,
    /// Persistent keepalive interval in seconds.
    pub keepalive: Option<u16>,
}

impl fmt::Display for WgPeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {}", self.public_key)?;
        if let Some(e) = self.endpoint {
            write!(f, " endpoint {e}")?;
        }
        let ips: Vec<String> = self.allowed_ips.iter().map(|n| n.to_string()).collect();
        write!(f, " allowed-ips {}", ips.join(","))?;
        if let Some(k) = self.keepalive {
            write!(f, " persistent-keepalive {k}")?;
        }
        Ok(())
    }
}

/// One change of the device's peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WgOp {
    AddPeer(WgPeerConfig),
    /// Same key, new endpoint / allowed IPs / keepalive (sessions stay).
    UpdatePeer(WgPeerConfig),
    RemovePeer(WgPublicKey),
}

impl fmt::Display for WgOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WgOp::AddPeer(p) => write!(f, "add wireguard {p}"),
            WgOp::UpdatePeer(p) => write!(f, "update wireguard {p}"),
            WgOp::RemovePeer(k) => write!(f, "remove wireguard peer {k}"),
        }
    }
}

/// The ops of one reconcile: device peers first (removals, then additions and
/// updates), then routes (deletions, then additions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgPlan {
    pub peers: Vec<WgOp>,
    pub routes: Vec<Op>,
}

/// The device peer a desired peer needs (`None` without WireGuard data).
pub fn peer_config(p: &Peer) -> Option<WgPeerConfig> {
    let wg = p.wireguard?;
    let mut extra: Vec<Ipv4Net> = p.extra_subnets.iter().map(Ipv4Net::trunc).collect();
    extra.sort();
    extra.dedup();
    let mut allowed_ips = vec![p.subnet.trunc()];
    allowed_ips.extend(extra.into_iter().filter(|n| *n != p.subnet.trunc()));
    Some(WgPeerConfig {
        public_key: wg.public_key,
        endpoint: Some(wg.endpoint),
        allowed_ips,
        keepalive: Some(WG_KEEPALIVE_SECS),
    })
}

/// Equal configurations, whatever order the device lists allowed IPs in.
fn same_config(a: &WgPeerConfig, b: &WgPeerConfig) -> bool {
    let sorted = |c: &WgPeerConfig| {
        let mut ips = c.allowed_ips.clone();
        ips.sort();
        ips
    };
    a.public_key == b.public_key
        && a.endpoint == b.endpoint
        && a.keepalive == b.keepalive
        && sorted(a) == sorted(b)
}

/// The route a peer's subnet needs.
pub fn peer_route(subnet: Ipv4Net) -> RouteEntry {
    RouteEntry {
        dst: subnet.trunc(),
        via: None,
        dev: WG_DEV.to_string(),
        onlink: false,
    }
}

/// Desired peers with WireGuard data; the first peer wins a subnet and the first wins a key.
fn wanted(desired: &[Peer]) -> Vec<WgPeerConfig> {
    let mut subnets = HashSet::new();
    let mut keys = HashSet::new();
    desired
        .iter()
        .filter_map(peer_config)
        .filter(|c| subnets.insert(c.allowed_ips[0]) && keys.insert(c.public_key))
        .collect()
}

/// The wireguard backend's ops turning the device's `observed` peers and the `routes`
/// observed inside the cluster CIDR into what `desired` needs.
pub fn plan_wireguard(
    desired: &[Peer],
    observed: &[WgPeerConfig],
    routes: &[RouteEntry],
) -> WgPlan {
    let want = wanted(desired);
    let mut plan = WgPlan::default();

    // A device holds a key at most once, so observed peers are unique by key.
    for o in observed {
        if !want.iter().any(|w| w.public_key == o.public_key) {
            plan.peers.push(WgOp::RemovePeer(o.public_key));
        }
    }
    for w in &want {
        match observed.iter().find(|o| o.public_key == w.public_key) {
            None => plan.peers.push(WgOp::AddPeer(w.clone())),
            Some(o) if !same_config(o, w) => plan.peers.push(WgOp::UpdatePeer(w.clone())),
            Some(_) => {}
        }
    }

    let want_routes: Vec<RouteEntry> = want.iter().map(|w| peer_route(w.allowed_ips[0])).collect();
    let mut kept = HashSet::new();
    let mut adds = Vec::new();
    for r in routes {
        if want_routes.contains(r) && kept.insert(r) {
            continue;
        }
        plan.routes.push(Op::DelRoute(r.clone()));
    }
    for r in &want_routes {
        if !kept.contains(r) {
            adds.push(Op::AddRoute(r.clone()));
        }
    }
    plan.routes.extend(adds);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::WgPeer;
    use std::net::Ipv4Addr;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn key(n: u8) -> WgPublicKey {
        WgPublicKey([n; 32])
    }
    fn ep(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, last), 51820)
    }
    fn peer(node: u8, k: u8) -> Peer {
        Peer {
            subnet: net(&format!("10.42.{node}.0/24")),
            underlay: Ipv4Addr::new(10, 0, 0, 5),
            vtep_mac: [2, 0, 0, 0, 0, node],
            wireguard: Some(WgPeer {
                public_key: key(k),
                endpoint: ep(node),
            }),
            extra_subnets: vec![],
        }
    }
    fn cfg(node: u8, k: u8) -> WgPeerConfig {
        WgPeerConfig {
            public_key: key(k),
            endpoint: Some(ep(node)),
            allowed_ips: vec![net(&format!("10.42.{node}.0/24"))],
            keepalive: Some(25),
        }
    }
    fn route(node: u8) -> RouteEntry {
        RouteEntry {
            dst: net(&format!("10.42.{node}.0/24")),
            via: None,
            dev: "smr-wg".into(),
            onlink: false,
        }
    }

    #[test]
    fn fresh_device_gets_one_peer_and_one_route_each() {
        let plan = plan_wireguard(&[peer(2, 2), peer(3, 3)], &[], &[]);
        assert_eq!(
            plan,
            WgPlan {
                peers: vec![WgOp::AddPeer(cfg(2, 2)), WgOp::AddPeer(cfg(3, 3))],
                routes: vec![Op::AddRoute(route(2)), Op::AddRoute(route(3))],
            }
        );
        assert_eq!(
            plan.peers[0].to_string(),
            format!(
                "add wireguard peer {} endpoint 203.0.113.2:51820 allowed-ips 10.42.2.0/24 persistent-keepalive 25",
                key(2)
            )
        );
        assert_eq!(
            plan.routes[0].to_string(),
            "add route 10.42.2.0/24 dev smr-wg"
        );
    }

    #[test]
    fn converged_state_yields_no_ops() {
        let plan = plan_wireguard(
            &[peer(2, 2), peer(3, 3)],
            &[cfg(3, 3), cfg(2, 2)],
            &[route(3), route(2)],
        );
        assert_eq!(plan, WgPlan::default());
        assert_eq!(plan_wireguard(&[], &[], &[]), WgPlan::default());
    }

    #[test]
    fn removed_peer_goes_with_its_route() {
        let plan = plan_wireguard(
            &[peer(2, 2)],
            &[cfg(2, 2), cfg(3, 3)],
            &[route(2), route(3)],
        );
        assert_eq!(
            plan,
            WgPlan {
                peers: vec![WgOp::RemovePeer(key(3))],
                routes: vec![Op::DelRoute(route(3))],
            }
        );
    }

    #[test]
    fn new_key_replaces_the_old_one() {
        let plan = plan_wireguard(&[peer(2, 9)], &[cfg(2, 2)], &[route(2)]);
        assert_eq!(
            plan,
            WgPlan {
                peers: vec![WgOp::RemovePeer(key(2)), WgOp::AddPeer(cfg(2, 9))],
                routes: vec![],
            }
        );
    }

    #[test]
    fn slices_of_overlay_networks_are_allowed_ips_in_any_order() {
        let mut p = peer(2, 2);
        p.extra_subnets = vec![net("10.21.2.0/24"), net("10.20.2.0/24")];
        let want = WgPeerConfig {
            allowed_ips: vec![
                net("10.42.2.0/24"),
                net("10.20.2.0/24"),
                net("10.21.2.0/24"),
            ],
            ..cfg(2, 2)
        };
        // Their routes are the pools' business (`Overlay::reconcile_pool`), not this plan's.
        assert_eq!(
            plan_wireguard(std::slice::from_ref(&p), &[cfg(2, 2)], &[route(2)]),
            WgPlan {
                peers: vec![WgOp::UpdatePeer(want.clone())],
                routes: vec![],
            }
        );
        // A device that lists them in another order is left alone.
        let reordered = WgPeerConfig {
            allowed_ips: vec![
                net("10.21.2.0/24"),
                net("10.42.2.0/24"),
                net("10.20.2.0/24"),
            ],
            ..cfg(2, 2)
        };
        assert_eq!(
            plan_wireguard(&[p], &[reordered], &[route(2)]),
            WgPlan::default()
        );
    }

    #[test]
    fn moved_endpoint_and_subnet_are_updates() {
        let mut moved = peer(2, 2);
        moved.wireguard.as_mut().unwrap().endpoint = ep(99);
        let want = WgPeerConfig {
            endpoint: Some(ep(99)),
            ..cfg(2, 2)
        };
        assert_eq!(
            plan_wireguard(&[moved], &[cfg(2, 2)], &[route(2)]),
            WgPlan {
                peers: vec![WgOp::UpdatePeer(want)],
                routes: vec![],
            }
        );

        let mut resubnet = peer(2, 2);
        resubnet.subnet = net("10.42.7.0/24");
        assert_eq!(
            plan_wireguard(&[resubnet], &[cfg(2, 2)], &[route(2)]),
            WgPlan {
                peers: vec![WgOp::UpdatePeer(WgPeerConfig {
                    allowed_ips: vec![net("10.42.7.0/24")],
                    ..cfg(2, 2)
                })],
                routes: vec![Op::DelRoute(route(2)), Op::AddRoute(route(7))],
            }
        );

        // A device peer without keepalive (e.g. set by hand) is fixed.
        let no_ka = WgPeerConfig {
            keepalive: None,
            ..cfg(2, 2)
        };
        assert_eq!(
            plan_wireguard(&[peer(2, 2)], &[no_ka], &[route(2)]).peers,
            vec![WgOp::UpdatePeer(cfg(2, 2))]
        );
    }

    #[test]
    fn strays_duplicates_and_keyless_peers() {
        let keyless = Peer {
            wireguard: None,
            ..peer(4, 4)
        };
        let dup_subnet = peer(2, 8);
        let dup_key = peer(5, 2);
        let vxlan_route = RouteEntry {
            dst: net("10.42.2.0/24"),
            via: Some("10.42.2.0".parse().unwrap()),
            dev: "smr.1".into(),
            onlink: true,
        };
        let plan = plan_wireguard(
            &[peer(2, 2), keyless, dup_subnet, dup_key],
            &[cfg(2, 2), cfg(6, 6)],
            &[route(2), vxlan_route.clone(), route(2)],
        );
        assert_eq!(
            plan,
            WgPlan {
                peers: vec![WgOp::RemovePeer(key(6))],
                routes: vec![Op::DelRoute(vxlan_route), Op::DelRoute(route(2))],
            }
        );
    }
}
