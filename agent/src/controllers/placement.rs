//! The leader's placement loop: placements for every `containers` object, rolling updates, and
//! rescheduling of replicas away from nodes that stopped heartbeating. The decisions are
//! `smr_core::scheduler::leader` (pure); this loop reads the state and the heartbeats this node
//! received as leader ([`crate::node::heartbeat`]), keeps the liveness memory and proposes them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::node::Node;
use crate::state::{Follower, NodeId, Op, PlacementUpdate, Step};
use crate::store::batch::{cut, json_size};
use smr_core::scheduler::leader::{Liveness, plan, plan_keys, touched_in};

/// How often a full pass runs while the state changes, whatever the deltas said: the safety net
/// of the incremental passes (it finds nothing to do in steady state: a test says so).
const RESYNC: Duration = Duration::from_secs(10);

/// Most bytes (as JSON) of the placement updates one proposal carries. A pass that places many
/// replicas at once (100,000 at first, or a tenth of 1,000 nodes gone silent) writes several
/// proposals, each independent of the others (an update is one object's placement): one command
/// stays far under etcd's request limit (1.5 MiB; 100,000 replicas in one were 3.4 MB and etcd
/// refused them on every pass). On the Raft store the proposals of a pass go in one entry.
const PLACE_BYTES: usize = 256 * 1024;

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
        log_turns(&state, last_live.as_ref(), &live, timeout);
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
        let turned = last_live.as_ref().is_some_and(|l| *l != live);
        last_live = Some(live);
        if updates.is_empty() {
            continue;
        }
        let count = updates.len();
        // Together: the Raft store commits them in one entry, so nodes and readers see the
        // whole pass at once, not a part of it and the rest a round later.
        let proposals = split(updates, PLACE_BYTES)
            .into_iter()
            .map(|updates| Op::Place { updates })
            .collect();
        let failed = node
            .propose_all(proposals)
            .await
            .into_iter()
            .filter_map(Result::err)
            .inspect(|e| tracing::warn!("scheduling: {e}"))
            .count();
        if turned {
            tracing::info!(
                "liveness changed: {count} objects placed again in {:?} ({failed} proposals failed)",
                now.elapsed()
            );
        }
        if failed > 0 {
            // What this pass planned was not all written: the next pass plans every object again.
            follower = Follower::new();
        }
    }
}

/// Logs each node whose liveness turned since the last pass (not on the first pass of a term:
/// everyone starts live, within the grace period).
fn log_turns(
    state: &crate::state::ClusterState,
    before: Option<&BTreeMap<NodeId, bool>>,
    live: &BTreeMap<NodeId, bool>,
    timeout: Duration,
) {
    let Some(before) = before else { return };
    for (id, &now_live) in live {
        if before.get(id).copied().unwrap_or(true) == now_live {
            continue;
        }
        let name = state.nodes.get(id).map_or("?", |n| n.name.as_str());
        if now_live {
            tracing::info!("node {name} ({id}) is heard from again");
        } else {
            tracing::warn!(
                "node {name} ({id}) is judged down: not heard from in {timeout:?}; its replicas go elsewhere"
            );
        }
    }
}

/// `updates` in order, in proposals of at most `max_bytes` (as JSON) each; an update larger
/// than that goes alone. Pure.
fn split(mut updates: Vec<PlacementUpdate>, max_bytes: usize) -> Vec<Vec<PlacementUpdate>> {
    let mut proposals = Vec::new();
    while !updates.is_empty() {
        let take = cut(updates.iter().map(json_size), usize::MAX, max_bytes);
        let rest = updates.split_off(take);
        proposals.push(std::mem::replace(&mut updates, rest));
    }
    proposals
}

#[cfg(test)]
mod tests {
    use super::*;
    use smr_core::scheduler::placement::{Placement, ReplicaSlot};

    fn update(name: &str, replicas: u32) -> PlacementUpdate {
        let slots = (1..=replicas)
            .map(|i| (i, ReplicaSlot::new(u64::from(i % 7) + 1, 1)))
            .collect();
        PlacementUpdate {
            key: format!("containers/g/{name}").parse().unwrap(),
            generation: 1,
            placement: Some(Placement { replicas: slots }),
            error: None,
        }
    }

    #[test]
    fn a_large_pass_goes_in_proposals_under_the_bound_in_order() {
        let updates: Vec<PlacementUpdate> =
            (0..10).map(|i| update(&format!("a{i}"), 100)).collect();
        let one = json_size(&updates[0]);
        // Two and a half updates' worth: two per proposal.
        let proposals = split(updates.clone(), one * 5 / 2);
        let names = |p: &[PlacementUpdate]| -> Vec<String> {
            p.iter().map(|u| u.key.name.clone()).collect()
        };
        assert_eq!(
            proposals.iter().map(|p| names(p)).collect::<Vec<_>>(),
            (0..5)
                .map(|k| vec![format!("a{}", 2 * k), format!("a{}", 2 * k + 1)])
                .collect::<Vec<_>>()
        );
        assert!(proposals.iter().all(|p| json_size(p) <= one * 5 / 2));
        // An update larger than the bound goes alone; a pass under it goes as one proposal.
        let big = vec![update("small", 1), update("big", 1000), update("after", 1)];
        let sizes: Vec<usize> = split(big.clone(), one).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert_eq!(split(big, usize::MAX).len(), 1);
        assert!(split(Vec::new(), one).is_empty());
    }
}
