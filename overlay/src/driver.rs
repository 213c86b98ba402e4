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

mod pools;
pub use pools::{plan_pool, pool_routes};

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::OnceLock;

use ipnet::Ipv4Net;

use crate::kernel::{Kernel, KernelError, NetlinkKernel, ObserveScope, Underlay};
use crate::masq::{Iptables, IptablesCmd, MasqError, ensure_masquerade, remove_masquerade};
use crate::plan::{
    Mac, NotSameL2, Op, Peer, VXLAN_DEV, VxlanSpec, check_same_l2, plan, plan_host_gw,
    vxlan_differs,
};
use crate::wireguard::{
    KernelWg, PeerStats, UserspaceWg, WG_DEV, WG_OVERHEAD, WgConfig, WgDevice, WgError, WgKey,
    WgOp, WgPeerConfig, plan_wireguard,
};

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
    /// The WireGuard peer changes applied (before `ops`), in order.
    pub wg_ops: Vec<WgOp>,
}

impl ReconcileReport {
    /// Nothing changed.
    pub fn is_noop(&self) -> bool {
        !self.device_recreated
            && !self.device_fixed
            && self.ops.is_empty()
            && self.wg_ops.is_empty()
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
    /// The WireGuard device (wireguard backend, after `setup`).
    wg: tokio::sync::Mutex<Option<AnyWg>>,
    /// Which implementation `setup` chose.
    wg_impl: OnceLock<&'static str>,
    /// The key given to `set_private_key` (replaces the configured one).
    key_override: std::sync::Mutex<Option<WgKey>>,
}

/// The WireGuard device the overlay runs: the kernel's where it has WireGuard, else ours.
pub enum AnyWg {
    Kernel(KernelWg),
    Userspace(UserspaceWg),
}

impl WgDevice for AnyWg {
    fn kind(&self) -> &'static str {
        match self {
            AnyWg::Kernel(d) => d.kind(),
            AnyWg::Userspace(d) => d.kind(),
        }
    }
    async fn configure(&self, cfg: &WgConfig) -> Result<(), WgError> {
        match self {
            AnyWg::Kernel(d) => d.configure(cfg).await,
            AnyWg::Userspace(d) => WgDevice::configure(d, cfg).await,
        }
    }
    async fn peers(&self) -> Result<Vec<WgPeerConfig>, WgError> {
        match self {
            AnyWg::Kernel(d) => d.peers().await,
            AnyWg::Userspace(d) => WgDevice::peers(d).await,
        }
    }
    async fn apply(&self, op: &WgOp) -> Result<(), WgError> {
        match self {
            AnyWg::Kernel(d) => d.apply(op).await,
            AnyWg::Userspace(d) => WgDevice::apply(d, op).await,
        }
    }
    async fn stats(&self) -> Result<Vec<PeerStats>, WgError> {
        match self {
            AnyWg::Kernel(d) => d.stats().await,
            AnyWg::Userspace(d) => WgDevice::stats(d).await,
        }
    }
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
            wg: tokio::sync::Mutex::new(None),
            wg_impl: OnceLock::new(),
            key_override: std::sync::Mutex::new(None),
        })
    }

    /// Uses the userspace WireGuard device even where the kernel has WireGuard (tests and
    /// benchmarks that must exercise it; the agent never calls this).
    pub fn prefer_userspace_wireguard(self) -> Self {
        let _ = self.wg_impl.set("userspace");
        self
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
        match self.cfg.backend {
            Backend::Vxlan => {
                self.ensure_device(&u).await?;
            }
            Backend::WireGuard => {
                // A vxlan device left from an earlier run would only confuse.
                if self.kernel.delete_link(VXLAN_DEV).await? {
                    tracing::info!(dev = VXLAN_DEV, "removed a stale vxlan device");
                }
                self.ensure_wg_device(&u).await?;
            }
            Backend::HostGw => {}
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
            Backend::WireGuard => {
                let (recreated, fixed) = self.ensure_wg_device(&u).await?;
                report.device_recreated = recreated;
                report.device_fixed = fixed;
                let guard = self.wg.lock().await;
                let dev = guard.as_ref().ok_or_else(not_set_up)?;
                let plan = plan_wireguard(
                    &peers,
                    &dev.peers().await?,
                    &self.kernel.observe(&scope).await?.routes,
                );
                for op in plan.peers {
                    tracing::debug!(%op, "overlay op");
                    dev.apply(&op).await?;
                    report.wg_ops.push(op);
                }
                plan.routes
            }
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
        if self.cfg.backend == Backend::WireGuard {
            // Dropping the userspace device removes its TUN device; a kernel one is deleted.
            self.wg.lock().await.take();
            self.kernel.delete_link(WG_DEV).await?;
        }
        remove_masquerade(&self.iptables).await?;
        Ok(())
    }

    /// What the WireGuard device knows of each peer (empty for vxlan and host-gw).
    pub async fn peer_stats(&self) -> Result<Vec<PeerStats>, OverlayError> {
        if self.cfg.backend != Backend::WireGuard {
            return Ok(Vec::new());
        }
        let guard = self.wg.lock().await;
        Ok(guard.as_ref().ok_or_else(not_set_up)?.stats().await?)
    }

    /// Replaces this node's WireGuard private key in the running device (rotate-key):
    /// sessions restart with one handshake once peers know the new public key.
    pub async fn set_private_key(&self, key: WgKey) -> Result<(), OverlayError> {
        if self.cfg.backend != Backend::WireGuard {
            return Err(OverlayError::Config(format!(
                "the {} backend has no WireGuard key",
                self.cfg.backend
            )));
        }
        let cfg = WgConfig {
            private_key: key,
            listen_port: self.wg_config()?.listen_port,
        };
        let guard = self.wg.lock().await;
        guard
            .as_ref()
            .ok_or_else(not_set_up)?
            .configure(&cfg)
            .await?;
        // A device recreated later must use the new key too.
        *self.key_override.lock().unwrap_or_else(|e| e.into_inner()) = Some(cfg.private_key);
        Ok(())
    }

    /// Which WireGuard implementation runs: `"kernel"` or `"userspace"` (`None` before
    /// `setup` and for the other backends).
    pub fn wireguard_impl(&self) -> Option<&'static str> {
        self.wg_impl.get().copied()
    }

    fn wg_config(&self) -> Result<WgConfig, OverlayError> {
        let mut cfg = self.cfg.wireguard.clone().ok_or_else(|| {
            OverlayError::Config("the wireguard backend needs a WireGuard key".into())
        })?;
        if let Some(k) = self
            .key_override
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            cfg.private_key = k;
        }
        Ok(cfg)
    }

    /// Makes sure the WireGuard device exists, is configured, has its address and is up;
    /// returns (recreated, fixed). The first call picks the implementation: the kernel's
    /// when it can create a wireguard link, else the userspace one.
    async fn ensure_wg_device(&self, u: &Underlay) -> Result<(bool, bool), OverlayError> {
        let mtu = self.mtu_for(u);
        let mut guard = self.wg.lock().await;
        let link = self.kernel.link_kind(WG_DEV).await?;
        let healthy = match (&*guard, &link) {
            (Some(AnyWg::Kernel(_)), Some(l)) => l.kind == "wireguard" && l.mtu == mtu,
            (Some(AnyWg::Userspace(_)), Some(l)) => l.kind == "tun" && l.mtu == mtu,
            _ => false,
        };
        let mut recreated = false;
        if !healthy {
            let cfg = self.wg_config()?;
            let first = guard.is_none();
            if !first {
                tracing::warn!(
                    dev = WG_DEV,
                    "WireGuard device missing or changed: recreating"
                );
            }
            // Stop our own userspace device first (it holds the name).
            guard.take();
            let adopt = first
                && self.wg_impl.get() != Some(&"userspace")
                && link
                    .as_ref()
                    .is_some_and(|l| l.kind == "wireguard" && l.mtu == mtu);
            let dev = if adopt {
                // A kernel device from our previous run: keep it (and its sessions).
                tracing::info!(
                    dev = WG_DEV,
                    "WireGuard: kernel implementation (adopting the existing device)"
                );
                AnyWg::Kernel(KernelWg::new(WG_DEV)?)
            } else {
                if self.kernel.delete_link(WG_DEV).await? {
                    tracing::info!(dev = WG_DEV, "removed a stale or wrong WireGuard device");
                }
                let try_kernel = self.wg_impl.get() != Some(&"userspace");
                self.create_wg(&cfg, mtu, try_kernel).await?
            };
            dev.configure(&cfg).await?;
            let _ = self.wg_impl.set(dev.kind());
            *guard = Some(dev);
            recreated = !adopt;
        }
        let fixed = self
            .kernel
            .ensure_address_up(WG_DEV, self.device_address())
            .await?;
        Ok((recreated, fixed && !recreated))
    }

    async fn create_wg(
        &self,
        cfg: &WgConfig,
        mtu: u32,
        try_kernel: bool,
    ) -> Result<AnyWg, OverlayError> {
        let why = if try_kernel {
            match self.kernel.create_wireguard(WG_DEV, mtu).await {
                Ok(()) => {
                    tracing::info!(
                        dev = WG_DEV,
                        "WireGuard: kernel implementation (ip link add type wireguard works)"
                    );
                    return Ok(AnyWg::Kernel(KernelWg::new(WG_DEV)?));
                }
                Err(KernelError::Unsupported { source, .. }) => {
                    format!("the kernel has no WireGuard (creating a wireguard link: {source})")
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            "it was chosen for this overlay".to_string()
        };
        // Start in the calling thread (its network namespace): the TUN device and socket
        // are made there.
        let dev = UserspaceWg::start(WG_DEV, mtu, cfg)?;
        tracing::info!(
            dev = WG_DEV,
            "WireGuard: userspace implementation (boringtun, in-process) because {why}"
        );
        Ok(AnyWg::Userspace(dev))
    }
}

fn not_set_up() -> OverlayError {
    OverlayError::Config("the WireGuard device is not set up: call setup first".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent shares one `Arc<Overlay>` between tasks and spawns its futures.
    #[test]
    fn overlay_is_shareable_and_its_futures_are_send() {
        fn shared<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        shared::<Overlay>();
        #[allow(clippy::let_underscore_future, dead_code)]
        fn futures(o: &Overlay) {
            send(&o.setup());
            send(&o.reconcile(&[]));
            send(&o.mtu());
            send(&o.peer_stats());
            send(&o.set_private_key(WgKey::generate()));
            send(&o.teardown());
        }
    }

    #[test]
    fn backend_names() {
        for (name, b) in [
            ("vxlan", Backend::Vxlan),
            ("host-gw", Backend::HostGw),
            ("wireguard", Backend::WireGuard),
        ] {
            assert_eq!(name.parse::<Backend>().unwrap(), b);
            assert_eq!(b.to_string(), name);
        }
        assert_eq!(
            "wg".parse::<Backend>().unwrap_err().to_string(),
            "unknown overlay backend \"wg\": expected wireguard, vxlan or host-gw"
        );
    }

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
