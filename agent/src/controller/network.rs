//! The node's network loop: the overlay (VXLAN or host-gw) from the peers' leases, the `cluster`
//! Docker network on this node's lease, and the `*.private` DNS server on its gateway, fed with
//! the records of ready replicas and of nodes.
//!
//! Level-triggered like the other loops: on every state change and every few seconds the overlay
//! is reconciled against the peer list (which also repairs a deleted `smr.1`), the Docker network
//! is checked, and the DNS records are recomputed and swapped in.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::node::Node;
use crate::state::{ClusterState, NodeId};
use overlay::docker::{BollardNetworks, ClusterNetworkSpec, ensure_cluster_network};
use overlay::{Backend, Overlay, OverlayConfig, Peer};

/// What the network loop needs to know about this node.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub id: NodeId,
    pub underlay_ip: Ipv4Addr,
    pub iface: Option<String>,
    pub vtep_mac: [u8; 6],
    pub docker: bollard::Docker,
    /// Where public names are forwarded (from the host's resolv.conf).
    pub upstreams: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("overlay: {0}")]
    Overlay(#[from] overlay::OverlayError),
    #[error("cluster network: {0}")]
    Docker(#[from] overlay::docker::DockerError),
    #[error("DNS: {0}")]
    Dns(#[from] dns::DnsError),
    #[error("{0}")]
    Config(String),
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes.try_into().ok()
}

/// The overlay peers: every other node with a lease, an IPv4 underlay address and a VTEP MAC.
pub fn peers(state: &ClusterState, me: NodeId) -> Vec<Peer> {
    state
        .nodes
        .values()
        .filter(|n| n.id != me)
        .filter_map(|n| {
            Some(Peer {
                subnet: n.lease?,
                underlay: n.ip.parse().ok()?,
                vtep_mac: n.vtep_mac.as_deref().and_then(parse_mac)?,
            })
        })
        .collect()
}

/// The `*.private` records: ready replicas with an address on the cluster network, and nodes.
pub fn records(state: &ClusterState) -> dns::RecordSet {
    let replicas: Vec<dns::ReplicaInfo> = state
        .reports
        .values()
        .flat_map(|r| &r.replicas)
        .filter_map(|r| {
            Some(dns::ReplicaInfo {
                group: r.key.group.clone(),
                name: r.key.name.clone(),
                index: r.index,
                ip: r.ip.as_deref()?.parse().ok()?,
                ready: r.ready,
            })
        })
        .collect();
    let nodes: Vec<dns::NodeInfo> = state
        .nodes
        .values()
        .filter_map(|n| {
            Some(dns::NodeInfo {
                name: n.name.clone(),
                ip: n.ip.parse().ok()?,
            })
        })
        .collect();
    dns::compute_records(&replicas, &nodes)
}

/// The gateway of this node's `cluster` network, where its DNS server listens.
pub fn gateway(lease: ipnet::Ipv4Net) -> Ipv4Addr {
    ClusterNetworkSpec::new(lease, 1450).gateway()
}

/// Runs until `stop`. Returns early (with an error) only on a misconfiguration that retrying
/// cannot fix; transient failures are logged and retried.
pub async fn run(
    node: Arc<Node>,
    config: NetworkConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), NetworkError> {
    let mut changes = node.store.subscribe();
    // Wait for the cluster network settings and this node's lease.
    let (settings, lease) = loop {
        if let Ok(state) = node.store.read(false).await
            && let Some(settings) = state.network.clone()
            && let Some(me) = state.nodes.get(&config.id)
        {
            match me.lease {
                Some(lease) => break (settings, lease),
                None if settings.backend == "none" => return Ok(()),
                None => return Err(NetworkError::Config("this node has no subnet lease".into())),
            }
        }
        tokio::select! {
            _ = crate::api::serve::stopped(&mut stop) => return Ok(()),
            _ = changes.changed() => {},
        }
    };
    let backend = match settings.backend.as_str() {
        "vxlan" => Backend::Vxlan,
        "host-gw" => Backend::HostGw,
        other => {
            return Err(NetworkError::Config(format!(
                "unknown overlay backend {other}"
            )));
        }
    };
    let overlay = Overlay::new(OverlayConfig {
        backend,
        lease,
        cluster_cidr: settings.cidr,
        underlay_ip: config.underlay_ip,
        iface: config.iface.clone(),
        vtep_mac: config.vtep_mac,
    })?;
    overlay.setup().await?;
    let mtu = overlay.mtu().await?;
    let spec = ClusterNetworkSpec::new(lease, mtu);
    let networks = BollardNetworks {
        docker: config.docker.clone(),
    };
    ensure_cluster_network(&networks, &spec).await?;
    let dns = dns::DnsServer::start(dns::DnsConfig {
        listen: vec![SocketAddr::new(spec.gateway().into(), 53)],
        upstreams: config.upstreams.clone(),
        ..dns::DnsConfig::default()
    })
    .await?;
    tracing::info!(%lease, mtu, gateway = %spec.gateway(), "overlay, cluster network and DNS ready");

    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        if let Ok(state) = node.store.read(false).await {
            match overlay.reconcile(&peers(&state, config.id)).await {
                Ok(report) if !report.is_noop() => tracing::info!(?report, "overlay reconciled"),
                Ok(_) => {}
                Err(e) => tracing::warn!("overlay: {e}"),
            }
            let records = records(&state);
            if records != dns.records() {
                dns.set_records(records);
            }
        }
        if let Err(e) = ensure_cluster_network(&networks, &spec).await {
            tracing::warn!("cluster network: {e}");
        }
        tokio::select! {
            _ = crate::api::serve::stopped(&mut stop) => break,
            _ = changes.changed() => {},
            _ = tick.tick() => {},
        }
    }
    if let Err(e) = dns.shutdown().await {
        tracing::warn!("DNS shutdown: {e}");
    }
    Ok(())
}
