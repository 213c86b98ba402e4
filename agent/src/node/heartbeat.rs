//! Node heartbeats to the leader, off the replicated log (issue 14).
//!
//! ```text
//!  controllers::heartbeat (every node) --Node::heartbeat--> this node leads? record here
//!                                                           else POST internal/heartbeat (mTLS)
//!  api internal/heartbeat (the leader) --Node::heartbeat_here--> Board (memory, leader's clock)
//!  controllers::placement (the leader) --Node::heartbeats--> leader::Liveness --> rescheduling
//! ```
//! The leader answers with the period it wants ([`heartbeat_period`] of its node timeout). The
//! same path serves the etcd store: there the leader is the agent elected through etcd, which
//! is also the one running the placement loop. Nothing here is replicated: a new leader starts
//! with an empty board and a grace period of one node timeout (`leader::Liveness::new`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api_types::types::{HeartbeatRequest, HeartbeatResponse};
use smr_core::scheduler::heartbeat::{Heartbeats, MAX_PERIOD, MIN_PERIOD, heartbeat_period};
use smr_core::scheduler::leader::DEFAULT_NODE_TIMEOUT;

use super::{Consistency, Node, NodeError};
use crate::state::NodeId;
use crate::store::ServerState;

/// Longest wait for the leader's answer to one heartbeat.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The heartbeats a leader received and the node timeout it judges by.
pub(crate) struct Board {
    beats: Mutex<Heartbeats>,
    timeout_ms: AtomicU64,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            beats: Mutex::default(),
            timeout_ms: AtomicU64::new(DEFAULT_NODE_TIMEOUT.as_millis() as u64),
        }
    }
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, Heartbeats> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Node {
    /// Sets the node timeout this node judges liveness by while it leads; the heartbeat period
    /// it asks of the nodes follows from it.
    pub fn set_node_timeout(&self, timeout: Duration) {
        self.heartbeats
            .timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// The node timeout this node judges liveness by while it leads.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeats.timeout_ms.load(Ordering::Relaxed))
    }

    /// When each node was last heard from by a heartbeat, while this node led.
    pub fn heartbeats(&self) -> BTreeMap<NodeId, Instant> {
        self.heartbeats.lock().last().clone()
    }

    /// Forgets the heartbeats of nodes that are no longer members.
    pub fn forget_heartbeats(&self, keep: impl FnMut(NodeId) -> bool) {
        self.heartbeats.lock().retain(keep);
    }

    fn record_heartbeat(&self, node: NodeId) -> HeartbeatResponse {
        self.heartbeats.lock().beat(node, Instant::now());
        crate::metrics::heartbeat("received");
        HeartbeatResponse {
            period_ms: heartbeat_period(self.node_timeout()).as_millis() as u64,
        }
    }

    /// Records the heartbeat of another node, here, the leader. `cert_name` is the name in the
    /// caller's node certificate: a node heartbeats for itself only.
    pub async fn heartbeat_here(
        &self,
        req: HeartbeatRequest,
        cert_name: &str,
    ) -> Result<HeartbeatResponse, NodeError> {
        if !self.is_leader() {
            return Err(NodeError::Unavailable(
                "this node does not lead: heartbeats go to the leader".into(),
            ));
        }
        let state = self.state(Consistency::Stale).await?;
        let Some(record) = state.nodes.get(&req.node) else {
            return Err(NodeError::NotFound(format!("node {}", req.node)));
        };
        if record.name != cert_name {
            return Err(NodeError::Forbidden(format!(
                "the certificate of {cert_name} cannot heartbeat for node {} ({})",
                req.node, record.name
            )));
        }
        Ok(self.record_heartbeat(req.node))
    }

    /// Sends this node's heartbeat: recorded here when this node leads, else sent to the
    /// leader's API. Returns the period the leader asks for.
    pub async fn heartbeat(&self) -> Result<Duration, NodeError> {
        let status = self.store.status();
        let sent = match status.leader {
            Some(leader) if leader == self.id && status.state == ServerState::Leader => {
                Ok(self.record_heartbeat(self.id))
            }
            Some(leader) => match status.members.get(&leader) {
                Some(peer) => {
                    let req = HeartbeatRequest { node: self.id };
                    let call = self.call(&peer.api_addr, "internal/heartbeat", Some(&req));
                    match tokio::time::timeout(SEND_TIMEOUT, call).await {
                        Ok(answer) => answer,
                        Err(_) => Err(NodeError::Unavailable(format!(
                            "the leader {} did not answer a heartbeat in time",
                            peer.name
                        ))),
                    }
                }
                None => Err(NodeError::Unavailable(format!(
                    "the leader {leader} is not among the known members"
                ))),
            },
            None => Err(NodeError::Unavailable("no leader is elected".into())),
        };
        crate::metrics::heartbeat(if sent.is_ok() { "sent" } else { "failed" });
        let answer = sent?;
        Ok(Duration::from_millis(answer.period_ms).clamp(MIN_PERIOD, MAX_PERIOD))
    }
}
