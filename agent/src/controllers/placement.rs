//! The leader's placement loop: placements for every `containers` object, rolling updates, and
//! rescheduling of replicas away from nodes that stopped heartbeating. The decisions are
//! `smr_core::scheduler::leader` (pure); this loop reads the state and the heartbeats this node
//! received as leader ([`crate::node::heartbeat`]), keeps the liveness memory and proposes them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::node::Node;
use crate::state::{Delta, Follower, NodeId, Op};
use smr_core::scheduler::leader::{Liveness, plan};

/// Runs the scheduling loop until `stop`; acts only while this node leads.
pub async fn run(node: Arc<Node>, timeout: Duration, mut stop: watch::Receiver<bool>) {
    let mut changes = node.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut liveness: Option<Liveness> = None;
    let mut follower = Follower::new();
    // The state revision and liveness of the last pass that found nothing to do: `plan` is a
    // function of the two, so the same pair finds nothing again (an idle cluster's ticks).
    let mut quiet: Option<(u64, BTreeMap<NodeId, bool>)> = None;
    node.set_node_timeout(timeout);
    loop {
        let timed = tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = changes.changed() => false,
            _ = tick.tick() => true,
        };
        if !node.is_leader() {
            liveness = None;
            follower = Follower::new();
            quiet = None;
            continue;
        }
        let Ok(state) = node.state(crate::node::Consistency::Stale).await else {
            continue;
        };
        // A change that concerns no placement (a heartbeat, a configuration nobody reads) waits
        // for the next tick (liveness is judged there too), which is a full pass.
        if !follower
            .next(&state, timed)
            .needs(Delta::touches_scheduling)
        {
            continue;
        }
        let now = Instant::now();
        node.forget_heartbeats(|id| state.nodes.contains_key(&id));
        let live = liveness
            .get_or_insert_with(|| Liveness::new(timeout, now))
            .observe(&state, &node.heartbeats(), now);
        if quiet
            .as_ref()
            .is_some_and(|(revision, before)| *revision == state.revision && *before == live)
        {
            continue;
        }
        let updates = plan(&state, &live);
        if updates.is_empty() {
            quiet = Some((state.revision, live));
            continue;
        }
        quiet = None;
        if let Err(e) = node.propose(Op::Place { updates }, None).await {
            tracing::warn!("scheduling: {e}");
        }
    }
}
