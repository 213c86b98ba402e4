//! Mapping typed definitions onto the scheduler's plain inputs.

use std::collections::BTreeMap;

use crate::definitions::{self, ContainersSpec, SpreadMode};
use crate::scheduler::{self, AgentRef, Spread, Workload};
use crate::state::StoredObject;

/// The scheduler's view of a `containers` object, or `None` for other kinds.
pub fn workload_of(stored: &StoredObject) -> Option<Workload> {
    let spec = stored.object.spec.as_containers()?;
    let meta = &stored.object.meta;
    let mut workload = Workload::new(&meta.group, &meta.name, spec.replicas);
    workload.key = stored.object.key().to_string();
    workload.spread = spread_of(spec);
    workload.node_selector = spec.node_selector.clone();
    workload.generation = stored.template_generation;
    if let Some(rolling) = &spec.rolling_update {
        workload.max_unavailable = rolling.max_unavailable;
        workload.max_surge = rolling.max_surge;
    }
    Some(workload)
}

fn spread_of(spec: &ContainersSpec) -> Spread {
    match &spec.spread {
        Some(s) if s.spread == SpreadMode::Specific => Spread::Specific(
            s.agents
                .iter()
                .map(|a| match a {
                    definitions::AgentRef::Id(id) => AgentRef::Id(*id),
                    definitions::AgentRef::Name(name) => AgentRef::Name(name.clone()),
                })
                .collect(),
        ),
        _ => Spread::Uniform,
    }
}

/// The restart policy the node reconciler applies.
pub fn restart_of(spec: &ContainersSpec) -> scheduler::RestartPolicy {
    match spec.restart.as_ref().map(|r| r.policy).unwrap_or_default() {
        definitions::RestartMode::Always => scheduler::RestartPolicy::Always,
        definitions::RestartMode::OnFailure => scheduler::RestartPolicy::OnFailure,
        definitions::RestartMode::Never => scheduler::RestartPolicy::Never,
    }
}

/// Labels a node carries, for node selectors.
pub fn node_labels(labels: &BTreeMap<String, String>, name: &str) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels
        .entry("smr.io/node".into())
        .or_insert_with(|| name.to_string());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(yaml: &str) -> StoredObject {
        let object = definitions::parse_str("t.yaml", yaml)
            .expect("valid")
            .remove(0);
        StoredObject {
            object,
            generation: 4,
            template_generation: 2,
            revision: 1,
            created_ms: 0,
            updated_ms: 0,
            owner: None,
        }
    }

    #[test]
    fn workload_follows_the_spec() {
        let w = workload_of(&stored(
            "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\nspec:\n  image: busybox\n  replicas: 3\n  spread:\n    spread: specific\n    agents: [1, smr-agent-2]\n  nodeSelector:\n    disk: ssd\n  rollingUpdate:\n    maxUnavailable: 2\n",
        ))
        .expect("containers");
        assert_eq!(w.key, "containers/g/n");
        assert_eq!(w.replicas, 3);
        assert_eq!(w.generation, 2, "replicas roll on the template generation");
        assert_eq!(
            w.spread,
            Spread::Specific(vec![AgentRef::Id(1), AgentRef::Name("smr-agent-2".into())])
        );
        assert_eq!(w.node_selector.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(w.max_unavailable, 2);
    }

    #[test]
    fn other_kinds_are_not_workloads() {
        let s = stored(
            "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\nspec:\n  data:\n    a: b\n",
        );
        assert!(workload_of(&s).is_none());
    }
}
