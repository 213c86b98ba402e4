//! Read-only views computed from the cluster state for the API (pure).

use crate::api::types::ReplicaView;
use crate::definitions::ObjectKey;
use crate::scheduler::replica_name;
use crate::state::ClusterState;

/// Every placed replica (optionally of one object) with what its node last reported about it.
/// A placed replica that its node has not reported yet is `pending`.
pub fn replicas(state: &ClusterState, only: Option<&ObjectKey>) -> Vec<ReplicaView> {
    let mut views = Vec::new();
    for (key, placement) in &state.placements {
        if only.is_some_and(|o| o != key) {
            continue;
        }
        let image = state
            .objects
            .get(key)
            .and_then(|o| o.object.spec.as_containers().map(|c| c.image_ref()))
            .unwrap_or_default();
        for (index, slot) in &placement.replicas {
            let reported = state.reports.get(&slot.node).and_then(|r| {
                r.replicas
                    .iter()
                    .find(|r| &r.key == key && r.index == *index)
            });
            let node_name = state
                .nodes
                .get(&slot.node)
                .map(|n| n.name.clone())
                .unwrap_or_default();
            let name = replica_name(&key.group, &key.name, *index);
            views.push(match reported {
                Some(r) => ReplicaView {
                    name,
                    object: key.clone(),
                    index: *index,
                    node: slot.node,
                    node_name,
                    generation: slot.generation,
                    state: r.phase.clone(),
                    ready: r.ready,
                    image: r.image.clone(),
                    ip: r.ip.clone(),
                    restarts: r.restarts,
                    started_ms: r.started_ms,
                    container_id: r.container_id.clone(),
                    message: r.message.clone(),
                },
                None => ReplicaView {
                    name,
                    object: key.clone(),
                    index: *index,
                    node: slot.node,
                    node_name,
                    generation: slot.generation,
                    state: "pending".into(),
                    ready: false,
                    image: image.clone(),
                    ip: None,
                    restarts: 0,
                    started_ms: None,
                    container_id: None,
                    message: None,
                },
            });
        }
    }
    views
}
