//! `smrctl cordon`, `uncordon` and `drain`: naming a node, and following a drain until the node
//! holds no replica.

use std::time::{Duration, Instant};

use api_types::client::{Client, ClientError};
use api_types::types::{NodeView, ReplicaView};
use smr_core::scheduler::Availability;

/// The node `arg` names: an id, or a name.
pub fn resolve<'a>(nodes: &'a [NodeView], arg: &str) -> Result<&'a NodeView, String> {
    nodes
        .iter()
        .find(|n| n.name == arg)
        .or_else(|| {
            let id: u64 = arg.parse().ok()?;
            nodes.iter().find(|n| n.id == id)
        })
        .ok_or_else(|| {
            let known: Vec<String> = nodes
                .iter()
                .map(|n| format!("{} {}", n.id, n.name))
                .collect();
            format!("no node {arg:?} (nodes: {})", known.join(", "))
        })
}

/// One line of drain progress: what is left on the node, by replica name.
pub fn progress(node: &NodeView, replicas: &[ReplicaView]) -> String {
    let mut placed: Vec<&str> = replicas
        .iter()
        .filter(|r| r.node == node.id)
        .map(|r| r.name.as_str())
        .collect();
    placed.sort();
    let moving = node.replicas as usize - placed.len().min(node.replicas as usize);
    let mut line = format!("{}: {} replica(s) left", node.name, node.replicas);
    if !placed.is_empty() {
        line.push_str(&format!(" (to move: {})", placed.join(", ")));
    }
    if moving > 0 {
        line.push_str(&format!(
            "; {moving} moved, old container running until the new one is ready"
        ));
    }
    line
}

/// Why a drain did not finish: the timeout ran out.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    NoSuchNode(String),
    #[error("{0}")]
    Timeout(String),
}

/// Sets `arg`'s availability; returns the node.
pub async fn set(
    client: &Client,
    arg: &str,
    availability: Availability,
) -> Result<NodeView, DrainError> {
    let nodes = client.nodes().await?;
    let node = resolve(&nodes, arg)
        .map_err(DrainError::NoSuchNode)?
        .clone();
    client.set_availability(node.id, availability).await?;
    Ok(node)
}

/// Drains `arg`: cordons it so that it takes nothing new, has the leader move its replicas
/// (one batch at a time, each new replica ready before the old one stops) and prints progress
/// until the node holds none, or `timeout` runs out.
pub async fn drain(client: &Client, arg: &str, timeout: Duration) -> Result<(), DrainError> {
    let node = set(client, arg, Availability::Draining).await?;
    println!("{}: draining (no new replicas)", node.name);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let nodes = client.nodes().await?;
        let now = resolve(&nodes, &node.id.to_string()).map_err(DrainError::NoSuchNode)?;
        let replicas = client.replicas(None).await?;
        let line = progress(now, &replicas);
        if line != last {
            println!("{line}");
            last = line;
        }
        if now.replicas == 0 {
            println!(
                "{}: drained (`smrctl uncordon {}` takes replicas again)",
                node.name, node.name
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DrainError::Timeout(format!(
                "{} not drained after {timeout:?}: {last} (it stays draining; replicas that \
                 have no other node to go to, e.g. pinned by spread or a node selector, stay)",
                node.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
