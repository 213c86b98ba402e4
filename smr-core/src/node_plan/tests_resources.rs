//! What the volume and bridge network tests of a node's pass share: one `app/db` replica on this
//! node, what it renders to, and a pass that runs one resource step before the replica plan.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::container::{ContainerConfig, ContainerInfo, labels};
use crate::convert::restart_of;
use crate::definitions::{ContainersSpec, Kind, Meta, Object, Spec};
use crate::scheduler::{NodeId, Placement, ReplicaSlot, replica_name};
use crate::state::{ClusterState, StoredObject};

pub(super) const NODE: NodeId = 1;
pub(super) const T0: u64 = 1_000_000;

/// Puts object `group/name` into `state`.
pub(super) fn put(state: &mut ClusterState, kind: Kind, group: &str, name: &str, spec: Spec) {
    let s = StoredObject {
        object: Object {
            kind,
            prefix: "simplecontainer.io/v1".into(),
            meta: Meta {
                group: group.into(),
                name: name.into(),
                labels: Default::default(),
            },
            spec,
        },
        generation: 1,
        template_generation: 1,
        revision: 1,
        created_ms: 0,
        updated_ms: 0,
        owner: None,
    };
    state.objects.insert(s.object.key(), s);
}

/// `app/db` (`spec`) with one replica on this node.
pub(super) fn put_app(state: &mut ClusterState, spec: ContainersSpec) {
    put(
        state,
        Kind::Containers,
        "app",
        "db",
        Spec::Containers(Box::new(spec)),
    );
    let slot = ReplicaSlot {
        node: NODE,
        generation: 1,
        surge: false,
        previous: None,
    };
    state.placements.insert(
        "containers/app/db".parse().unwrap(),
        Placement {
            replicas: BTreeMap::from([(1, slot)]),
        },
    );
}

/// The container of replica `index` of `stored` at `generation`, with smr's labels.
pub(super) fn replica_config(
    stored: &StoredObject,
    index: u32,
    generation: u64,
) -> ContainerConfig {
    let key = stored.object.key();
    let name = replica_name(&key.group, &key.name, index);
    let labels = BTreeMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::OWNER.to_string(), key.to_string()),
        (labels::REPLICA.to_string(), index.to_string()),
        (labels::GENERATION.to_string(), generation.to_string()),
        (labels::CONFIG_HASH.to_string(), "h".to_string()),
    ]);
    ContainerConfig {
        name: name.clone(),
        hostname: name,
        image: "db".into(),
        labels,
        ..Default::default()
    }
}

/// Phase and message of a replica's report.
pub(super) type Shown = Option<(String, Option<String>)>;

/// One pass: the actions of `step` (a resource step of the planner), the replica actions and
/// the report's (phase, message) of `app-db-1`.
pub(super) fn pass<A>(
    planner: &mut NodePlanner,
    state: &ClusterState,
    render: fn(&StoredObject, u32, u64) -> Result<Rendered, String>,
    containers: &[ContainerInfo],
    step: impl FnOnce(&mut NodePlanner, &Desired) -> Vec<A>,
) -> (Vec<A>, Vec<NodeAction>, Shown) {
    let d = Desired {
        state,
        replicas: desired_replicas(state, NODE, restart_of, render),
    };
    let stopping = BTreeSet::new();
    let o = Observed {
        containers,
        stopping: &stopping,
        now_ms: T0,
    };
    let resource_actions = step(planner, &d);
    let p = planner.plan(&d, &o);
    let report = planner
        .reports(&d, &o, &p)
        .into_iter()
        .find(|r| r.name == "app-db-1")
        .map(|r| (r.phase, r.message));
    (resource_actions, p.actions, report)
}

/// The replicas that `actions` create.
pub(super) fn created(actions: &[NodeAction]) -> Vec<String> {
    actions
        .iter()
        .flat_map(|a| match a {
            NodeAction::CreateBatch { replicas } => {
                replicas.iter().map(|(n, _)| n.clone()).collect()
            }
            NodeAction::Create { replica, .. } => vec![replica.clone()],
            _ => vec![],
        })
        .collect()
}
