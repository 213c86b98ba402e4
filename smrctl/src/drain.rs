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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, name: &str, replicas: u32) -> NodeView {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "host": name, "domain": name, "ip": "10.0.0.1",
            "api": "10.0.0.1:1443", "raft": "10.0.0.1:9212", "role": "voter", "leader": false,
            "health": "healthy", "joined_ms": 0, "replicas": replicas,
        }))
        .expect("node view")
    }

    fn replica(name: &str, node: u64) -> ReplicaView {
        serde_json::from_value(serde_json::json!({
            "name": name, "object": "containers/g/n", "index": 1, "node": node,
            "node_name": "", "state": "running", "ready": true, "image": "i", "restarts": 0,
        }))
        .expect("replica view")
    }

    #[test]
    fn a_node_is_named_by_name_or_id() {
        let nodes = vec![node(1, "a", 0), node(2, "7", 0), node(7, "b", 0)];
        assert_eq!(resolve(&nodes, "a").map(|n| n.id), Ok(1));
        assert_eq!(resolve(&nodes, "7").map(|n| n.id), Ok(2), "a name first");
        assert_eq!(resolve(&nodes, "1").map(|n| n.id), Ok(1));
        assert_eq!(
            resolve(&nodes, "zz").map(|n| n.id),
            Err("no node \"zz\" (nodes: 1 a, 2 7, 7 b)".into())
        );
    }

    #[test]
    fn progress_names_what_is_left_and_what_is_moving() {
        let n = node(2, "vm2", 3);
        let replicas = vec![
            replica("g-n-3", 2),
            replica("g-n-1", 2),
            replica("g-n-2", 1),
        ];
        assert_eq!(
            progress(&n, &replicas),
            "vm2: 3 replica(s) left (to move: g-n-1, g-n-3); 1 moved, old container running \
             until the new one is ready"
        );
        assert_eq!(progress(&node(2, "vm2", 0), &[]), "vm2: 0 replica(s) left");
    }
}
