//! The control loops that turn the replicated state into running containers.
//!
//! ```text
//!  leader only:  state --(schedule)--> Op::Place  (placements, rolling updates, rescheduling)
//!  leader only:  git + state --(gitops)--> Op::GitopsSync (deploy commits, prune, drift)
//!  every node:   state + Docker --(reconcile)--> Docker actions, Op::Report (replica status, heartbeat)
//! ```
//! Both loops are level-triggered: they wake on every state change and on a timer, read the whole
//! desired and observed state, and act on the difference computed by [`crate::scheduler`].

pub mod convert;
pub mod gitops;
pub mod network;
pub mod reconcile;
pub mod schedule;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::node::Node;
use crate::runtime::DockerRuntime;
use crate::state::NodeId;

/// What the node's loops need from the agent's configuration.
#[derive(Clone, Debug)]
pub struct NodeLoops {
    pub id: NodeId,
    pub workloads: bool,
    pub docker_host: Option<String>,
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
    let scheduler = tokio::spawn(schedule::run(node.clone(), cfg.node_timeout, stop.clone()));
    let gitops = tokio::spawn(gitops::run(
        node.clone(),
        cfg.gitops_cache.clone(),
        stop.clone(),
    ));
    if cfg.workloads {
        workloads(node, cfg, stop.clone()).await;
    }
    let mut stop = stop;
    crate::api::serve::stopped(&mut stop).await;
    let _ = scheduler.await;
    let _ = gitops.await;
}

async fn workloads(node: Arc<Node>, cfg: NodeLoops, mut stop: watch::Receiver<bool>) {
    let runtime = loop {
        match DockerRuntime::connect(cfg.docker_host.as_deref()).await {
            Ok(runtime) => break runtime,
            Err(e) => tracing::warn!("{e}; retrying"),
        }
        tokio::select! {
            _ = crate::api::serve::stopped(&mut stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {},
        }
    };
    // The cluster network settings and this node's lease arrive with the replicated state.
    let mut changes = node.store.subscribe();
    let (settings, lease) = loop {
        if let Ok(state) = node.store.read(false).await
            && let Some(settings) = state.network.clone()
            && let Some(me) = state.nodes.get(&cfg.id)
        {
            break (settings, me.lease);
        }
        tokio::select! {
            _ = crate::api::serve::stopped(&mut stop) => return,
            _ = changes.changed() => {},
        }
    };
    let (network, dns) = match (settings.backend.as_str(), lease, cfg.underlay_ip) {
        ("none", _, _) | (_, None, _) => (None, Vec::new()),
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
    let config = reconcile::ReconcileConfig {
        node: cfg.id,
        network,
        dns,
        files_dir: cfg.files_dir.clone(),
        stop_grace: Duration::from_secs(10),
    };
    let runtime = crate::metrics::runtime::Metered(runtime);
    reconcile::run(node, Arc::new(runtime), config, stop).await;
}
