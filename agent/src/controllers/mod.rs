//! The control loops that turn the replicated state into running containers.
//!
//! ```text
//!  leader only:  state --(placement)--> Op::Place  (placements, rolling updates, rescheduling)
//!  leader only:  git + state --(sync)--> Op::GitopsSync (deploy commits, prune, drift)
//!  every node:   state + Docker --(replicas)--> Docker actions, Op::Report (replica status changes)
//!  every node:   state --(network)--> overlay, `cluster` Docker network, DNS records
//!  every node:   --(heartbeat)--> the leader's API (its memory, not the log)
//!  leader only:  secrets stored in clear by a previous version --> Op::SealSecrets (once)
//! ```
//! The loops are level-triggered: they wake on every state change and on a timer, read the whole
//! desired and observed state, and act on the difference computed by the pure planners of
//! `smr-core` (`scheduler::leader`, `repo_sync`, `node_plan`).

pub mod heartbeat;
pub mod network;
pub mod placement;
pub mod replicas;
pub mod sync;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::node::Node;
use crate::state::NodeId;
use smr_core::backend::NetworkBackend;

/// What the node's loops need from the agent's configuration.
#[derive(Clone, Debug)]
pub struct NodeLoops {
    pub id: NodeId,
    pub workloads: bool,
    pub underlay_ip: IpAddr,
    pub iface: Option<String>,
    pub vtep_mac: [u8; 6],
    /// This node's WireGuard private key file and port.
    pub wg_key_path: PathBuf,
    pub wg_port: u16,
    pub files_dir: PathBuf,
    /// Where the gitops loop keeps its clones (used while this node leads).
    pub gitops_cache: PathBuf,
    pub node_timeout: Duration,
}

/// Starts the loops of a node: the scheduler (acting while this node leads), and for nodes that
/// run workloads the network loop and the reconciler. Returns when `stop` turns true.
pub async fn run_node(node: Arc<Node>, cfg: NodeLoops, stop: watch::Receiver<bool>) {
    let scheduler = tokio::spawn(placement::run(node.clone(), cfg.node_timeout, stop.clone()));
    let sync = tokio::spawn(sync::run(
        node.clone(),
        cfg.gitops_cache.clone(),
        stop.clone(),
    ));
    let heartbeat = tokio::spawn(heartbeat::run(node.clone(), stop.clone()));
    let seal = tokio::spawn(crate::secrets::seal_plain_secrets(
        node.clone(),
        stop.clone(),
    ));
    if cfg.workloads {
        workloads(node, cfg, stop.clone()).await;
    }
    let mut stop = stop;
    crate::shutdown::stopped(&mut stop).await;
    let _ = scheduler.await;
    let _ = sync.await;
    let _ = heartbeat.await;
    let _ = seal.await;
}

async fn workloads(node: Arc<Node>, cfg: NodeLoops, mut stop: watch::Receiver<bool>) {
    let runtime = loop {
        match node.docker().await {
            Ok(runtime) => break runtime,
            Err(e) => tracing::warn!("{e}; retrying"),
        }
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {},
        }
    };
    // The cluster network settings and this node's lease arrive with the replicated state.
    let mut changes = node.subscribe();
    let (settings, lease) = loop {
        if let Ok(state) = node.state(crate::node::Consistency::Stale).await
            && let Some(settings) = state.network.clone()
            && let Some(me) = state.nodes.get(&cfg.id)
        {
            break (settings, me.lease);
        }
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = changes.changed() => {},
        }
    };
    // A stored backend that is none of the known ones is an error, not a default.
    let backend: NetworkBackend = match settings.backend.parse() {
        Ok(backend) => backend,
        Err(e) => {
            tracing::error!("the cluster's network settings: {e}; no replicas run on this node");
            return;
        }
    };
    let (network, dns) = match (backend, lease, cfg.underlay_ip) {
        (NetworkBackend::None, _, _) | (_, None, _) => (None, Vec::new()),
        (_, Some(lease), IpAddr::V4(underlay_ip)) => {
            let upstreams: Vec<SocketAddr> =
                dns::upstreams_from_resolv_conf("/etc/resolv.conf").unwrap_or_default();
            let net = network::NetworkConfig {
                id: cfg.id,
                underlay_ip,
                iface: cfg.iface.clone(),
                vtep_mac: cfg.vtep_mac,
                wg_key_path: cfg.wg_key_path.clone(),
                wg_port: cfg.wg_port,
                docker: runtime.docker().clone(),
                upstreams,
            };
            let (node, stop) = (node.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(e) = network::run(node, net, stop).await {
                    tracing::error!("network: {e}");
                }
            });
            (
                Some("cluster".to_string()),
                vec![network::gateway(lease).to_string()],
            )
        }
        (_, Some(_), IpAddr::V6(ip)) => {
            tracing::error!("the overlay needs an IPv4 underlay address, not {ip}");
            (None, Vec::new())
        }
    };
    let config = replicas::ReplicasConfig {
        node: cfg.id,
        network,
        dns,
        files_dir: cfg.files_dir.clone(),
        stop_grace: Duration::from_secs(10),
    };
    let runtime = crate::metrics::runtime::Metered(runtime);
    replicas::run(node, Arc::new(runtime), config, stop).await;
}
