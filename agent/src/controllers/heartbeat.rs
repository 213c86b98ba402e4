//! Every node's heartbeat loop (issue 14): tells the leader this node is alive, at the period
//! the leader asks for, over the API ([`Node::heartbeat`]); nothing goes through the log. The
//! leader's placement loop judges liveness from what it received.

use std::sync::Arc;

use tokio::sync::watch;

use crate::node::Node;
use smr_core::scheduler::heartbeat::MIN_PERIOD;

/// Runs until `stop`.
pub async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    // Failures are logged once until a heartbeat gets through again.
    let mut failing = false;
    loop {
        let period = match node.heartbeat().await {
            Ok(wanted) => {
                if failing {
                    tracing::info!("heartbeats reach the leader again");
                }
                failing = false;
                wanted
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("heartbeat: {e}");
                }
                failing = true;
                // Soon again: the leader may have changed.
                MIN_PERIOD
            }
        };
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}
