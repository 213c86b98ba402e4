//! The [`Overlay`] driver: what the agent calls.
//!
//! The agent hands it plain inputs (its lease, the cluster CIDR, its underlay address,
//! its persisted VTEP MAC) and, on every change of the cluster state, the list of peers.
//! `setup` creates the vxlan device (or nothing for host-gw), turns on forwarding and
//! installs masquerading; `reconcile` makes sure the device is still right (recreating it
//! when deleted or changed), reads the kernel state, asks the pure planner for the ops and
//! applies them; `teardown` removes what `setup` made.
//!
//! ```text
//! agent --peers--> Overlay::reconcile --observe--> Kernel
//!                        |  plan(desired, observed) -> [Op]
//!                        +--apply each Op---------> Kernel
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

use crate::kernel::{Kernel, KernelError, NetlinkKernel, ObserveScope, Underlay};
use crate::masq::{Iptables, IptablesCmd, MasqError, ensure_masquerade, remove_masquerade};
use crate::plan::{
    Mac, NotSameL2, Op, Peer, VXLAN_DEV, VxlanSpec, check_same_l2, plan, plan_host_gw,
    vxlan_differs,
};
use crate::wireguard::{PeerStats, WG_OVERHEAD, WgConfig, WgError, WgKey};

/// VXLAN network identifier of the overlay.
pub const VNI: u32 = 1;
/// UDP port of the overlay (flannel's).
pub const VXLAN_PORT: u16 = 8472;
/// Bytes the VXLAN encapsulation costs.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Which data path carries pod traffic between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// A VXLAN device `smr.1` (works across routed underlays).
    #[default]
    Vxlan,
    /// Plain routes via the peers' underlay addresses (all nodes on one L2 segment).
    HostGw,
    /// An encrypted WireGuard device `smr-wg` (kernel or userspace), works across NAT.
    WireGuard,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::WireGuard => "wireguard",
        })
    }
}

/// A backend name that is none of `vxlan`, `host-gw`, `wireguard`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown overlay backend {0:?}: expected wireguard, vxlan or host-gw")]
pub struct UnknownBackend(pub String);

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "vxlan" => Ok(Backend::Vxlan),
            "host-gw" => Ok(Backend::HostGw),
            "wireguard" => Ok(Backend::WireGuard),
            other => Err(UnknownBackend(other.to_string())),
        }
    }
}

/// The plain inputs of the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConfig {
    pub backend: Backend,
    /// This node's subnet.
    pub lease: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    /// This node's underlay (VM) address.
    pub underlay_ip: Ipv4Addr,
    /// The underlay interface; by default the one holding `underlay_ip`.
    pub iface: Option<String>,
    /// The MAC of the vxlan device (persisted by the agent, see [`generate_vtep_mac`]).
    pub vtep_mac: [u8; 6],
    /// This node's WireGuard key and port; required by the wireguard backend.
    pub wireguard: Option<WgConfig>,
}

/// Overlay errors.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("masquerade: {0}")]
    Masq(#[from] MasqError),
    #[error(transparent)]
    NotSameL2(#[from] NotSameL2),
    #[error("invalid overlay config: {0}")]
    Config(String),
    #[error(transparent)]
    WireGuard(#[from] WgError),
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// The vxlan device was missing or wrong and was (re)created.
    pub device_recreated: bool,
    /// The device's address or up state was fixed.
    pub device_fixed: bool,
    /// The ops applied, in order.
    pub ops: Vec<Op>,
}

impl ReconcileReport {
    /// Nothing changed.
    pub fn is_noop(&self) -> bool {
        !self.device_recreated && !self.device_fixed && self.ops.is_empty()
    }
}

/// A random locally administered unicast MAC for the vxlan device.
pub fn generate_vtep_mac() -> [u8; 6] {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// The overlay of one node.
pub struct Overlay<K = NetlinkKernel, I = IptablesCmd> {
    cfg: OverlayConfig,
    kernel: K,
    iptables: I,
}

impl Overlay<NetlinkKernel, IptablesCmd> {
    /// The real overlay: netlink in the calling thread's network namespace and the
    /// `iptables` binary. Must be called inside a tokio runtime.
    pub fn new(cfg: OverlayConfig) -> Result<Self, OverlayError> {
        Self::with_parts(cfg, NetlinkKernel::new()?, IptablesCmd::default())
    }
}

impl<K: Kernel, I: Iptables> Overlay<K, I> {
    /// An overlay over the given kernel and iptables implementations.
    pub fn with_parts(cfg: OverlayConfig, kernel: K, iptables: I) -> Result<Self, OverlayError> {
        let lease = cfg.lease.trunc();
        let cluster = cfg.cluster_cidr.trunc();
        if lease.prefix_len() > 30 || !cluster.contains(&lease) || lease == cluster {
            return Err(OverlayError::Config(format!(
                "lease {} must be a subnet (at most /30) of the cluster CIDR {cluster}",
                cfg.lease
            )));
        }
        if cfg.backend == Backend::WireGuard && cfg.wireguard.is_none() {
            return Err(OverlayError::Config(
                "the wireguard backend needs this node's WireGuard key and port".into(),
            ));
        }
        if cfg.vtep_mac[0] & 1 == 1 || cfg.vtep_mac == [0; 6] {
            return Err(OverlayError::Config(format!(
                "VTEP MAC {} is not a unicast address",
                Mac(cfg.vtep_mac)
            )));
        }
        Ok(Overlay {
            cfg: OverlayConfig {
                lease,
                cluster_cidr: cluster,
                ..cfg
            },
            kernel,
            iptables,
        })
    }

    pub fn config(&self) -> &OverlayConfig {
        &self.cfg
    }

    /// The device address: `<lease>.0/32`.
    pub fn device_address(&self) -> Ipv4Net {
        Ipv4Net::new(self.cfg.lease.network(), 32).unwrap_or(self.cfg.lease)
    }

    async fn underlay(&self) -> Result<Underlay, OverlayError> {
        Ok(self
            .kernel
            .underlay(self.cfg.underlay_ip, self.cfg.iface.as_deref())
            .await?)
    }

    /// The MTU containers should use: underlay MTU minus the VXLAN overhead (or the
    /// underlay MTU for host-gw).
    pub async fn mtu(&self) -> Result<u32, OverlayError> {
        let u = self.underlay().await?;
        Ok(self.mtu_for(&u))
    }

    fn mtu_for(&self, u: &Underlay) -> u32 {
        match self.cfg.backend {
            Backend::Vxlan => u.mtu.saturating_sub(VXLAN_OVERHEAD),
            Backend::HostGw => u.mtu,
            Backend::WireGuard => u.mtu.saturating_sub(WG_OVERHEAD),
        }
    }

    /// Creates the device when missing or different; returns (recreated, fixed).
    async fn ensure_device(&self, u: &Underlay) -> Result<(bool, bool), OverlayError> {
        let spec = VxlanSpec {
            name: VXLAN_DEV.to_string(),
            vni: VNI,
            port: VXLAN_PORT,
            local: self.cfg.underlay_ip,
            link: u.index,
            mtu: self.mtu_for(u),
            mac: Mac(self.cfg.vtep_mac),
        };
        let mut recreated = false;
        match self.kernel.vxlan_link(VXLAN_DEV).await? {
            Some(link) if !vxlan_differs(&spec, &link) => {}
            Some(_) => {
                tracing::info!(
                    dev = VXLAN_DEV,
                    "vxlan device differs from its spec: recreating"
                );
                self.kernel.delete_link(VXLAN_DEV).await?;
                self.kernel.create_vxlan(&spec).await?;
                recreated = true;
            }
            None => {
                tracing::info!(dev = VXLAN_DEV, "creating vxlan device");
                self.kernel.create_vxlan(&spec).await?;
                recreated = true;
            }
        }
        let fixed = self
            .kernel
            .ensure_address_up(VXLAN_DEV, self.device_address())
            .await?;
        Ok((recreated, fixed && !recreated))
    }

    /// Creates the device (vxlan), enables forwarding and installs masquerading.
    pub async fn setup(&self) -> Result<(), OverlayError> {
        let u = self.underlay().await?;
        if self.cfg.backend == Backend::Vxlan {
            self.ensure_device(&u).await?;
        }
        self.kernel.enable_ip_forward().await?;
        ensure_masquerade(&self.iptables, self.cfg.lease, self.cfg.cluster_cidr).await?;
        Ok(())
    }

    /// Brings the kernel in line with `peers` (this node's own lease is ignored if present).
    pub async fn reconcile(&self, peers: &[Peer]) -> Result<ReconcileReport, OverlayError> {
        let peers: Vec<Peer> = peers
            .iter()
            .filter(|p| p.subnet.trunc() != self.cfg.lease)
            .cloned()
            .collect();
        let u = self.underlay().await?;
        let mut report = ReconcileReport::default();
        let scope = ObserveScope {
            vxlan_dev: (self.cfg.backend == Backend::Vxlan).then(|| VXLAN_DEV.to_string()),
            cluster: self.cfg.cluster_cidr,
            own_lease: self.cfg.lease,
        };
        let ops = match self.cfg.backend {
            Backend::Vxlan => {
                let (recreated, fixed) = self.ensure_device(&u).await?;
                report.device_recreated = recreated;
                report.device_fixed = fixed;
                plan(&peers, &self.kernel.observe(&scope).await?)
            }
            Backend::HostGw => {
                for p in &peers {
                    check_same_l2(p.underlay, &u.local_nets)?;
                }
                plan_host_gw(&peers, &self.kernel.observe(&scope).await?, &u.name)
            }
            Backend::WireGuard => return Err(not_yet()),
        };
        for op in ops {
            tracing::debug!(%op, "overlay op");
            self.kernel.apply(&op).await?;
            report.ops.push(op);
        }
        Ok(report)
    }

    /// Removes the routes to peers, the vxlan device and the masquerade chain.
    pub async fn teardown(&self) -> Result<(), OverlayError> {
        let scope = ObserveScope {
            vxlan_dev: None,
            cluster: self.cfg.cluster_cidr,
            own_lease: self.cfg.lease,
        };
        // Routes first (host-gw routes live on the underlay and would otherwise stay).
        for r in self.kernel.observe(&scope).await?.routes {
            self.kernel.apply(&Op::DelRoute(r)).await?;
        }
        // Deleting the device drops its neighbours and FDB entries with it.
        self.kernel.delete_link(VXLAN_DEV).await?;
        remove_masquerade(&self.iptables).await?;
        Ok(())
    }

    /// What the WireGuard device knows of each peer (empty for vxlan and host-gw).
    pub async fn peer_stats(&self) -> Result<Vec<PeerStats>, OverlayError> {
        match self.cfg.backend {
            Backend::WireGuard => Err(not_yet()),
            _ => Ok(Vec::new()),
        }
    }

    /// Replaces this node's WireGuard private key in the running device (rotate-key).
    pub async fn set_private_key(&self, _key: WgKey) -> Result<(), OverlayError> {
        match self.cfg.backend {
            Backend::WireGuard => Err(not_yet()),
            other => Err(OverlayError::Config(format!(
                "the {other} backend has no WireGuard key"
            ))),
        }
    }

    /// Which WireGuard implementation runs: `"kernel"` or `"userspace"` (`None` before
    /// `setup` and for the other backends).
    pub fn wireguard_impl(&self) -> Option<&'static str> {
        None
    }
}

fn not_yet() -> OverlayError {
    OverlayError::WireGuard(WgError::Device(
        "the wireguard backend is not built yet".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_local_unicast() {
        for _ in 0..100 {
            let m = generate_vtep_mac();
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_ne!(generate_vtep_mac(), generate_vtep_mac());
    }
}
