//! What the agent's unit tests share to fill a [`ClusterState`]: objects as the state stores
//! them, placed on a node.

use crate::definitions::{Object, ObjectKey};
use crate::scheduler::{NodeId, Placement, ReplicaSlot};
use crate::state::{ClusterState, StoredObject};

/// `object` as the state stores it, at generation 1.
pub(crate) fn stored(object: Object) -> StoredObject {
    StoredObject {
        object,
        generation: 1,
        template_generation: 1,
        revision: 1,
        created_ms: 0,
        updated_ms: 0,
        owner: None,
    }
}

/// Puts `object` into `state` (see [`stored`]); returns its key.
pub(crate) fn put(state: &mut ClusterState, object: Object) -> ObjectKey {
    let key = object.key();
    state.objects.insert(key.clone(), stored(object));
    key
}

/// Puts `object` into `state` with replicas `1..=replicas` on `node`, at generation 1; returns
/// its key.
pub(crate) fn put_placed(
    state: &mut ClusterState,
    object: Object,
    node: NodeId,
    replicas: u32,
) -> ObjectKey {
    let key = put(state, object);
    let slot = ReplicaSlot {
        node,
        generation: 1,
        surge: false,
        previous: None,
    };
    let replicas = (1..=replicas).map(|i| (i, slot.clone())).collect();
    state.placements.insert(key.clone(), Placement { replicas });
    key
}
