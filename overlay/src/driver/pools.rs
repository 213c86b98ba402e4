//! Routes to the slices other nodes hold of the pools of overlay networks (the `network`
//! kind), carried by the backend in use exactly like the routes to their leases: vxlan sends
//! `<slice> via <peer lease>.0 dev smr.1 onlink` (the peer's VTEP, whose neighbour and FDB
//! entries the peer diff already keeps), host-gw `<slice> via <peer underlay>`, wireguard
//! `<slice> dev smr-wg` (the slice is one of the peer's allowed IPs). The pure part is
//! [`pool_routes`]; [`Overlay::reconcile_pool`] reads the routes inside one pool and applies the
//! difference.

use ipnet::Ipv4Net;

use super::{Backend, Overlay, OverlayError};
use crate::kernel::{Kernel, ObserveScope};
use crate::masq::Iptables;
use crate::plan::{Observed, Op, Peer, RouteEntry, VXLAN_DEV, plan_routes};

/// The routes `slices` (each a peer's slice of a pool, with that peer) need on `backend`;
/// `underlay_dev` is the interface host-gw routes leave by. WireGuard routes a slice into its
/// device, which sends it to the peer whose allowed IPs hold it (`Peer::extra_subnets`).
pub fn pool_routes(
    backend: Backend,
    slices: &[(Ipv4Net, Peer)],
    underlay_dev: &str,
) -> Vec<RouteEntry> {
    slices
        .iter()
        .map(|(slice, peer)| match backend {
            Backend::Vxlan => RouteEntry {
                dst: slice.trunc(),
                via: Some(peer.subnet.network()),
                dev: VXLAN_DEV.into(),
                onlink: true,
            },
            Backend::HostGw => RouteEntry {
                dst: slice.trunc(),
                via: Some(peer.underlay),
                dev: underlay_dev.into(),
                onlink: false,
            },
            Backend::WireGuard => crate::wireguard::plan::peer_route(*slice),
        })
        .collect()
}

/// The ops turning the routes `observed` inside a pool into `want`.
pub fn plan_pool(want: &[RouteEntry], observed: &Observed) -> Vec<Op> {
    let (mut dels, mut adds) = (Vec::new(), Vec::new());
    plan_routes(want, &observed.routes, &mut dels, &mut adds);
    dels.extend(adds);
    dels
}

impl<K: Kernel, I: Iptables> Overlay<K, I> {
    /// Brings the routes inside `pool` (apart from `own`, this node's slice, which is its
    /// Docker bridge's) to `slices`; an empty `slices` removes them all (a network that is gone).
    pub async fn reconcile_pool(
        &self,
        pool: Ipv4Net,
        own: Ipv4Net,
        slices: &[(Ipv4Net, Peer)],
    ) -> Result<Vec<Op>, OverlayError> {
        let u = self.underlay().await?;
        let scope = ObserveScope {
            vxlan_dev: None,
            cluster: pool,
            own_lease: own,
        };
        let want = pool_routes(self.cfg.backend, slices, &u.name);
        let ops = plan_pool(&want, &self.kernel.observe(&scope).await?);
        for op in &ops {
            tracing::debug!(%op, "pool route op");
            self.kernel.apply(op).await?;
        }
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn peer(n: u8) -> Peer {
        Peer {
            subnet: net(&format!("10.10.{n}.0/24")),
            underlay: format!("192.168.1.{n}").parse().unwrap(),
            vtep_mac: [2, 0, 0, 0, 0, n],
            wireguard: None,
            extra_subnets: vec![],
        }
    }

    #[test]
    fn each_backend_routes_a_slice_to_its_peer() {
        let slices = [
            (net("10.20.1.0/24"), peer(1)),
            (net("10.20.2.0/24"), peer(2)),
        ];
        let show = |b| {
            pool_routes(b, &slices, "eth0")
                .iter()
                .map(|r| Op::AddRoute(r.clone()).to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            show(Backend::Vxlan),
            vec![
                "add route 10.20.1.0/24 via 10.10.1.0 dev smr.1 onlink",
                "add route 10.20.2.0/24 via 10.10.2.0 dev smr.1 onlink",
            ]
        );
        assert_eq!(
            show(Backend::HostGw),
            vec![
                "add route 10.20.1.0/24 via 192.168.1.1 dev eth0",
                "add route 10.20.2.0/24 via 192.168.1.2 dev eth0",
            ]
        );
        assert_eq!(
            show(Backend::WireGuard),
            vec![
                "add route 10.20.1.0/24 dev smr-wg",
                "add route 10.20.2.0/24 dev smr-wg",
            ]
        );
    }

    #[test]
    fn routes_that_are_right_stay_stale_ones_go() {
        let want = pool_routes(Backend::Vxlan, &[(net("10.20.1.0/24"), peer(1))], "eth0");
        let stale = RouteEntry {
            dst: net("10.20.9.0/24"),
            via: Some("10.10.9.0".parse().unwrap()),
            dev: VXLAN_DEV.into(),
            onlink: true,
        };
        let observed = Observed {
            routes: vec![want[0].clone(), stale.clone()],
            ..Default::default()
        };
        assert_eq!(plan_pool(&want, &observed), vec![Op::DelRoute(stale)]);
        assert_eq!(
            plan_pool(&want, &Observed::default()),
            vec![Op::AddRoute(want[0].clone())]
        );
        // A network that is gone: every route in its pool is removed.
        assert_eq!(
            plan_pool(&[], &observed),
            vec![
                Op::DelRoute(want[0].clone()),
                Op::DelRoute(observed.routes[1].clone())
            ]
        );
    }
}
