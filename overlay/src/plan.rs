//! Peer diff: desired peers + observed kernel state -> the exact list of kernel ops.
//!
//! Pure logic, no I/O. For the vxlan backend every peer gets exactly one permanent ARP
//! entry (`<subnet>.0` -> VTEP MAC), one FDB entry (VTEP MAC -> underlay IP, `NTF_SELF`)
//! and one onlink route (`<subnet> via <subnet>.0 dev smr.1 onlink`). For host-gw every
//! peer gets one route `<subnet> via <underlay ip>`. Entries that are already right are
//! left alone (no churn); entries nobody wants any more are deleted. Deletions come
//! first, then additions in dependency order (FDB, neighbour, route).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::wireguard::WgPeer;

/// Name of the vxlan device.
pub const VXLAN_DEV: &str = "smr.1";

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Another node of the overlay, as the agent knows it from the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The peer's lease.
    pub subnet: Ipv4Net,
    /// The peer's underlay (VM) address.
    pub underlay: Ipv4Addr,
    /// The MAC of the peer's vxlan device.
    pub vtep_mac: [u8; 6],
    /// The peer's WireGuard key and endpoint (needed by the wireguard backend only).
    pub wireguard: Option<WgPeer>,
    /// The peer's slices of overlay networks' pools (the `network` kind): the wireguard
    /// backend adds them to the peer's allowed IPs (vxlan and host-gw route them apart, see
    /// `Overlay::reconcile_pool`).
    pub extra_subnets: Vec<Ipv4Net>,
}

/// A neighbour (ARP) entry on the vxlan device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighEntry {
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
    /// `nud permanent`.
    pub permanent: bool,
}

/// A forwarding database entry on the vxlan device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    pub mac: Mac,
    /// The remote VTEP (`dst`); `None` for entries without one.
    pub dst: Option<Ipv4Addr>,
}

/// An IPv4 route in the main table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    /// Output device name.
    pub dev: String,
    pub onlink: bool,
}

/// What the kernel currently holds that the overlay manages: neighbours and FDB entries
/// of the vxlan device, and main-table routes inside the cluster CIDR (except the
/// node's own lease).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub neighs: Vec<NeighEntry>,
    pub fdb: Vec<FdbEntry>,
    pub routes: Vec<RouteEntry>,
}

/// One kernel change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Add or replace a permanent neighbour entry on `dev`.
    AddNeigh {
        dev: String,
        ip: Ipv4Addr,
        mac: Mac,
    },
    DelNeigh {
        dev: String,
        ip: Ipv4Addr,
    },
    /// Add or replace an FDB entry (`self permanent`) on `dev`.
    AddFdb {
        dev: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
    DelFdb {
        dev: String,
        mac: Mac,
        dst: Option<Ipv4Addr>,
    },
    AddRoute(RouteEntry),
    DelRoute(RouteEntry),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddNeigh { dev, ip, mac } => write!(f, "add neigh {ip} lladdr {mac} dev {dev}"),
            Op::DelNeigh { dev, ip } => write!(f, "del neigh {ip} dev {dev}"),
            Op::AddFdb { dev, mac, dst } => write!(f, "add fdb {mac} dev {dev} dst {dst}"),
            Op::DelFdb { dev, mac, dst } => match dst {
                Some(d) => write!(f, "del fdb {mac} dev {dev} dst {d}"),
                None => write!(f, "del fdb {mac} dev {dev}"),
            },
            Op::AddRoute(r) => write!(f, "add route {}", route_text(r)),
            Op::DelRoute(r) => write!(f, "del route {}", route_text(r)),
        }
    }
}

fn route_text(r: &RouteEntry) -> String {
    let mut s = r.dst.to_string();
    if let Some(v) = r.via {
        s.push_str(&format!(" via {v}"));
    }
    s.push_str(&format!(" dev {}", r.dev));
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}

/// Drops duplicate peers: the first peer wins a subnet, and the first peer wins a VTEP MAC.
fn dedup(desired: &[Peer]) -> Vec<Peer> {
    let mut subnets = HashSet::new();
    let mut macs = HashSet::new();
    let mut out = Vec::new();
    for p in desired {
        let subnet = p.subnet.trunc();
        if subnets.insert(subnet) && macs.insert(p.vtep_mac) {
            out.push(Peer {
                subnet,
                ..p.clone()
            });
        }
    }
    out
}

/// The routes the desired peers need, then the ops turning `observed` routes into them.
pub(crate) fn plan_routes(
    want: &[RouteEntry],
    observed: &[RouteEntry],
    dels: &mut Vec<Op>,
    adds: &mut Vec<Op>,
) {
    let mut kept: HashSet<&RouteEntry> = HashSet::new();
    for r in observed {
        if want.contains(r) && kept.insert(r) {
            continue;
        }
        dels.push(Op::DelRoute(r.clone()));
    }
    for r in want {
        if !kept.contains(r) {
            adds.push(Op::AddRoute(r.clone()));
        }
    }
}

/// The vxlan backend's ops turning `observed` into the state `desired` peers need.
pub fn plan(desired: &[Peer], observed: &Observed) -> Vec<Op> {
    let peers = dedup(desired);
    let dev = VXLAN_DEV.to_string();
    let mut dels = Vec::new();
    let mut adds = Vec::new();

    // Routes.
    let want_routes: Vec<RouteEntry> = peers
        .iter()
        .map(|p| RouteEntry {
            dst: p.subnet,
            via: Some(p.subnet.network()),
            dev: dev.clone(),
            onlink: true,
        })
        .collect();
    let mut route_dels = Vec::new();
    let mut route_adds = Vec::new();
    plan_routes(
        &want_routes,
        &observed.routes,
        &mut route_dels,
        &mut route_adds,
    );

    // Neighbours, keyed by IP.
    let mut neigh_dels = Vec::new();
    let mut neigh_adds = Vec::new();
    for n in &observed.neighs {
        if !peers.iter().any(|p| p.subnet.network() == n.ip) {
            neigh_dels.push(Op::DelNeigh {
                dev: dev.clone(),
                ip: n.ip,
            });
        }
    }
    for p in &peers {
        let ip = p.subnet.network();
        let mac = Mac(p.vtep_mac);
        let right = observed
            .neighs
            .iter()
            .any(|n| n.ip == ip && n.mac == Some(mac) && n.permanent);
        if !right {
            neigh_adds.push(Op::AddNeigh {
                dev: dev.clone(),
                ip,
                mac,
            });
        }
    }

    // FDB, keyed by (mac, dst).
    let mut fdb_dels = Vec::new();
    let mut fdb_adds = Vec::new();
    let mut seen = HashSet::new();
    for e in &observed.fdb {
        let wanted = peers
            .iter()
            .any(|p| Mac(p.vtep_mac) == e.mac && Some(p.underlay) == e.dst);
        if !wanted || !seen.insert(*e) {
            fdb_dels.push(Op::DelFdb {
                dev: dev.clone(),
                mac: e.mac,
                dst: e.dst,
            });
        }
    }
    for p in &peers {
        let mac = Mac(p.vtep_mac);
        if !seen.contains(&FdbEntry {
            mac,
            dst: Some(p.underlay),
        }) {
            fdb_adds.push(Op::AddFdb {
                dev: dev.clone(),
                mac,
                dst: p.underlay,
            });
        }
    }

    dels.extend(route_dels);
    dels.extend(neigh_dels);
    dels.extend(fdb_dels);
    adds.extend(fdb_adds);
    adds.extend(neigh_adds);
    adds.extend(route_adds);
    dels.extend(adds);
    dels
}

/// The host-gw backend's ops: one route per peer subnet via the peer's underlay IP on
/// `dev` (the underlay interface).
pub fn plan_host_gw(desired: &[Peer], observed: &Observed, dev: &str) -> Vec<Op> {
    let peers = dedup(desired);
    let want: Vec<RouteEntry> = peers
        .iter()
        .map(|p| RouteEntry {
            dst: p.subnet,
            via: Some(p.underlay),
            dev: dev.to_string(),
            onlink: false,
        })
        .collect();
    let mut dels = Vec::new();
    let mut adds = Vec::new();
    plan_routes(&want, &observed.routes, &mut dels, &mut adds);
    dels.extend(adds);
    dels
}

/// A peer that host-gw cannot reach without a router in between.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "host-gw needs every peer on a directly connected subnet: peer underlay {peer} is in none of the local networks [{}]; use the vxlan backend",
    local.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
)]
pub struct NotSameL2 {
    pub peer: Ipv4Addr,
    pub local: Vec<Ipv4Net>,
}

/// Checks that `peer` lies in one of the directly connected `local` networks (address +
/// prefix of each local interface address).
pub fn check_same_l2(peer: Ipv4Addr, local: &[Ipv4Net]) -> Result<(), NotSameL2> {
    if local
        .iter()
        .any(|n| n.prefix_len() < 32 && n.trunc().contains(&peer) && n.addr() != peer)
    {
        Ok(())
    } else {
        Err(NotSameL2 {
            peer,
            local: local.to_vec(),
        })
    }
}

/// The vxlan device as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    /// Index of the underlay interface.
    pub link: u32,
    pub mtu: u32,
    pub mac: Mac,
}

/// The vxlan device as the kernel reports it (fields it did not report are `None`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanLink {
    pub index: u32,
    pub is_vxlan: bool,
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub local: Option<Ipv4Addr>,
    pub link: Option<u32>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub up: bool,
}

/// Whether an existing device must be deleted and created again to match `spec`.
pub fn vxlan_differs(spec: &VxlanSpec, link: &VxlanLink) -> bool {
    !(link.is_vxlan
        && link.vni == Some(spec.vni)
        && link.port == Some(spec.port)
        && link.learning == Some(false)
        && link.local == Some(spec.local)
        && link.link == Some(spec.link)
        && link.mtu == Some(spec.mtu)
        && link.mac == Some(spec.mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    const M2: [u8; 6] = [0x0a, 0, 0, 0, 0, 2];
    const M3: [u8; 6] = [0x0a, 0, 0, 0, 0, 3];

    fn p2() -> Peer {
        Peer {
            subnet: net("10.42.2.0/24"),
            underlay: ip("192.168.250.12"),
            vtep_mac: M2,
            wireguard: None,
            extra_subnets: vec![],
        }
    }
    fn p3() -> Peer {
        Peer {
            subnet: net("10.42.3.0/24"),
            underlay: ip("192.168.250.13"),
            vtep_mac: M3,
            wireguard: None,
            extra_subnets: vec![],
        }
    }
    fn dev() -> String {
        VXLAN_DEV.to_string()
    }
    fn vx_route(p: &Peer) -> RouteEntry {
        RouteEntry {
            dst: p.subnet,
            via: Some(p.subnet.network()),
            dev: dev(),
            onlink: true,
        }
    }
    /// The observed state after applying everything `peers` need.
    fn converged(peers: &[Peer]) -> Observed {
        Observed {
            neighs: peers
                .iter()
                .map(|p| NeighEntry {
                    ip: p.subnet.network(),
                    mac: Some(Mac(p.vtep_mac)),
                    permanent: true,
                })
                .collect(),
            fdb: peers
                .iter()
                .map(|p| FdbEntry {
                    mac: Mac(p.vtep_mac),
                    dst: Some(p.underlay),
                })
                .collect(),
            routes: peers.iter().map(vx_route).collect(),
        }
    }

    #[test]
    fn fresh_device_gets_three_entries_per_peer() {
        let ops = plan(&[p2(), p3()], &Observed::default());
        assert_eq!(
            ops,
            vec![
                Op::AddFdb {
                    dev: dev(),
                    mac: Mac(M2),
                    dst: ip("192.168.250.12")
                },
                Op::AddFdb {
                    dev: dev(),
                    mac: Mac(M3),
                    dst: ip("192.168.250.13")
                },
                Op::AddNeigh {
                    dev: dev(),
                    ip: ip("10.42.2.0"),
                    mac: Mac(M2)
                },
                Op::AddNeigh {
                    dev: dev(),
                    ip: ip("10.42.3.0"),
                    mac: Mac(M3)
                },
                Op::AddRoute(vx_route(&p2())),
                Op::AddRoute(vx_route(&p3())),
            ]
        );
    }

    #[test]
    fn converged_state_yields_no_ops() {
        assert_eq!(plan(&[p2(), p3()], &converged(&[p2(), p3()])), vec![]);
        assert_eq!(plan(&[], &Observed::default()), vec![]);
    }

    #[test]
    fn removed_peer_entries_are_deleted() {
        let ops = plan(&[p2()], &converged(&[p2(), p3()]));
        assert_eq!(
            ops,
            vec![
                Op::DelRoute(vx_route(&p3())),
                Op::DelNeigh {
                    dev: dev(),
                    ip: ip("10.42.3.0")
                },
                Op::DelFdb {
                    dev: dev(),
                    mac: Mac(M3),
                    dst: Some(ip("192.168.250.13"))
                },
            ]
        );
    }

    #[test]
    fn changed_underlay_and_mac_are_fixed_precisely() {
        let moved = Peer {
            underlay: ip("192.168.250.99"),
            ..p2()
        };
        let ops = plan(&[moved, p3()], &converged(&[p2(), p3()]));
        assert_eq!(
            ops,
            vec![
                Op::DelFdb {
                    dev: dev(),
                    mac: Mac(M2),
                    dst: Some(ip("192.168.250.12"))
                },
                Op::AddFdb {
                    dev: dev(),
                    mac: Mac(M2),
                    dst: ip("192.168.250.99")
                },
            ]
        );

        let new_mac = [0x0a, 0, 0, 0, 0, 0x22];
        let remac = Peer {
            vtep_mac: new_mac,
            ..p2()
        };
        let ops = plan(&[remac], &converged(&[p2()]));
        assert_eq!(
            ops,
            vec![
                Op::DelFdb {
                    dev: dev(),
                    mac: Mac(M2),
                    dst: Some(ip("192.168.250.12"))
                },
                Op::AddFdb {
                    dev: dev(),
                    mac: Mac(new_mac),
                    dst: ip("192.168.250.12")
                },
                Op::AddNeigh {
                    dev: dev(),
                    ip: ip("10.42.2.0"),
                    mac: Mac(new_mac)
                },
            ]
        );
    }

    #[test]
    fn non_permanent_neighbour_is_replaced_and_strays_removed() {
        let mut obs = converged(&[p2()]);
        obs.neighs[0].permanent = false;
        obs.neighs.push(NeighEntry {
            ip: ip("10.42.7.0"),
            mac: None,
            permanent: false,
        });
        obs.fdb.push(FdbEntry {
            mac: Mac([0; 6]),
            dst: Some(ip("192.168.250.50")),
        });
        obs.routes.push(RouteEntry {
            dst: net("10.42.2.0/24"),
            via: Some(ip("192.168.250.12")),
            dev: "eth0".into(),
            onlink: false,
        });
        let ops = plan(&[p2()], &obs);
        assert_eq!(
            ops,
            vec![
                Op::DelRoute(RouteEntry {
                    dst: net("10.42.2.0/24"),
                    via: Some(ip("192.168.250.12")),
                    dev: "eth0".into(),
                    onlink: false,
                }),
                Op::DelNeigh {
                    dev: dev(),
                    ip: ip("10.42.7.0")
                },
                Op::DelFdb {
                    dev: dev(),
                    mac: Mac([0; 6]),
                    dst: Some(ip("192.168.250.50"))
                },
                Op::AddNeigh {
                    dev: dev(),
                    ip: ip("10.42.2.0"),
                    mac: Mac(M2)
                },
            ]
        );
    }

    #[test]
    fn duplicate_peers_are_ignored() {
        let dup_subnet = Peer {
            vtep_mac: [0x0a, 9, 9, 9, 9, 9],
            ..p2()
        };
        assert_eq!(plan(&[p2(), dup_subnet, p2()], &converged(&[p2()])), vec![]);
    }

    #[test]
    fn host_gw_routes() {
        let route = |p: &Peer| RouteEntry {
            dst: p.subnet,
            via: Some(p.underlay),
            dev: "eth0".into(),
            onlink: false,
        };
        assert_eq!(
            plan_host_gw(&[p2(), p3()], &Observed::default(), "eth0"),
            vec![Op::AddRoute(route(&p2())), Op::AddRoute(route(&p3()))]
        );
        let obs = Observed {
            routes: vec![route(&p2()), route(&p3()), vx_route(&p2())],
            ..Observed::default()
        };
        assert_eq!(
            plan_host_gw(&[p2()], &obs, "eth0"),
            vec![Op::DelRoute(route(&p3())), Op::DelRoute(vx_route(&p2()))]
        );
        let obs = Observed {
            routes: vec![route(&p2())],
            ..Observed::default()
        };
        assert_eq!(plan_host_gw(&[p2()], &obs, "eth0"), vec![]);
    }

    #[test]
    fn same_l2_check() {
        let local = [net("192.168.250.11/24"), net("127.0.0.1/8")];
        assert_eq!(check_same_l2(ip("192.168.250.12"), &local), Ok(()));
        let err = check_same_l2(ip("192.168.7.12"), &local).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host-gw needs every peer on a directly connected subnet: peer underlay 192.168.7.12 is in none of the local networks [192.168.250.11/24, 127.0.0.1/8]; use the vxlan backend"
        );
        // A /32 address connects nothing.
        assert!(check_same_l2(ip("10.0.0.2"), &[net("10.0.0.1/32")]).is_err());
    }

    #[test]
    fn vxlan_difference() {
        let spec = VxlanSpec {
            name: dev(),
            vni: 1,
            port: 8472,
            local: ip("192.168.250.11"),
            link: 2,
            mtu: 1450,
            mac: Mac(M2),
        };
        let mut link = VxlanLink {
            index: 7,
            is_vxlan: true,
            vni: Some(1),
            port: Some(8472),
            learning: Some(false),
            local: Some(ip("192.168.250.11")),
            link: Some(2),
            mtu: Some(1450),
            mac: Some(Mac(M2)),
            up: false,
        };
        assert!(!vxlan_differs(&spec, &link));
        link.mtu = Some(1500);
        assert!(vxlan_differs(&spec, &link));
        link.mtu = Some(1450);
        link.learning = Some(true);
        assert!(vxlan_differs(&spec, &link));
    }
}
