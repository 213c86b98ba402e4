//! smr's embedded flannel-equivalent.
//!
//! Each node gets a subnet lease of the cluster CIDR (allocated by the state machine in
//! `smr_core::state::lease`); the [`Overlay`] driver
//! programs the kernel so that the leases of all nodes reach each other, over a VXLAN
//! device, plain host-gw routes or an encrypted WireGuard device ([`wireguard`]: the
//! kernel's where it has WireGuard, else an in-process userspace one), masquerades traffic
//! leaving the cluster
//! ([`masq`]) and the [`docker`] module provides the `cluster` bridge network on the
//! lease. The agent drives it with plain inputs; this crate knows nothing of Raft.
//!
//! Decisions are pure and unit-tested ([`plan`], [`wireguard::plan`],
//! [`masq::masq_rules`], [`docker::decide`]); I/O sits behind the [`Kernel`],
//! [`wireguard::WgDevice`], [`masq::Iptables`] and [`docker::DockerNetworks`] traits.

pub mod docker;
mod driver;
pub mod isolation;
pub mod kernel;
pub mod masq;
pub mod netns;
pub mod plan;
pub mod wireguard;

pub use driver::{
    Backend, Overlay, OverlayConfig, OverlayError, ReconcileReport, UnknownBackend, VNI,
    VXLAN_OVERHEAD, VXLAN_PORT, generate_vtep_mac, plan_pool, pool_routes,
};
pub use kernel::{Kernel, KernelError, NetlinkKernel};
pub use plan::{Mac, Observed, Op, Peer, VXLAN_DEV, check_same_l2, plan, plan_host_gw};
pub use wireguard::{PeerStats, WgConfig, WgError, WgKey, WgPeer, WgPublicKey};
