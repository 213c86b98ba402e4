//! The leader's placement loop: placements for every `containers` object, rolling updates, and
//! rescheduling of replicas away from nodes that stopped heartbeating. The decisions are
//! `smr_core::scheduler::leader` (pure); this loop reads the state and the heartbeats this node
//! received as leader ([`crate::node::heartbeat`]), keeps the liveness memory and proposes them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::node::Node;
use crate::state::{Follower, NodeId, Op, Step};
use smr_core::scheduler::leader::{Liveness, plan, plan_keys, touched_in};

/// How often a full pass runs while the state changes, whatever the deltas said: the safety net
/// of the incremental passes (it finds nothing to do in steady state: a test says so).
const RESYNC: Duration = Duration::from_secs(10);

/// How often the loop looks at liveness when nothing changes. A look with no node turning dead
/// costs a read of the heartbeats (O(nodes)), nothing else.
const TICK: Duration = Duration::from_millis(100);

/// Runs the scheduling loop until `stop`; acts only while this node leads.
///
/// A pass plans only the objects the changes since the last pass touched
/// ([`plan_keys`] of [`touched_in`], O(change)), and every object ([`plan`], O(state)) the first time, when nodes,
/// their availability or their liveness changed, after a proposal failed, and every [`RESYNC`].
pub async fn run(node: Arc<Node>, timeout: Duration, mut stop: watch::Receiver<bool>) {
    let mut changes = node.subscribe();
    // The timer that finds silent nodes: a node is judged dead within this of its timeout.
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut liveness: Option<Liveness> = None;
    let mut follower = Follower::new();
    // Liveness at the last pass: a change of it needs a full pass.
    let mut last_live: Option<BTreeMap<NodeId, bool>> = None;
    // When the last full pass ran, and on which revision: a full pass on the same revision and
    // liveness finds what it found then (nothing, or what was proposed), so an idle cluster's
    // resyncs cost nothing.
    let mut last_full = (Instant::now(), None);
    node.set_node_timeout(timeout);
    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = changes.changed() => {}
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            liveness = None;
            follower = Follower::new();
            last_live = None;
            continue;
        }
        let Ok(state) = node.state(crate::node::Consistency::Stale).await else {
            continue;
        };
        let now = Instant::now();
        let resync =
            now.duration_since(last_full.0) >= RESYNC && last_full.1 != Some(state.revision);
        let step = follower.next(&state, resync);
        node.forget_heartbeats(|id| state.nodes.contains_key(&id));
        let live = liveness
            .get_or_insert_with(|| Liveness::new(timeout, now))
            .observe(&state, &node.heartbeats(), now);
        let keys = match (&step, last_live.as_ref() == Some(&live)) {
            // Not the objects whose reports alone changed while no rollout or drain moves them.
            (Step::Changes(delta), true) => touched_in(delta, &state),
            _ => None,
        };
        let updates = match &keys {
            // Nothing a placement reads changed (a heartbeat, a configuration).
            Some(keys) if keys.is_empty() => continue,
            Some(keys) => plan_keys(&state, &live, keys),
            None => {
                last_full = (now, Some(state.revision));
                plan(&state, &live)
            }
        };
        last_live = Some(live);
        if updates.is_empty() {
            continue;
        }
        if let Err(e) = node.propose(Op::Place { updates }, None).await {
            tracing::warn!("scheduling: {e}");
            // What this pass planned was not written: the next pass plans every object again.
            follower = Follower::new();
        }
    }
}
