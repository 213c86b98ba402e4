//! A change to the data a containers definition reads rolls it.
//!
//! Replicas are rendered from their definition and from configuration, secret and resource
//! objects (template variables, `lookup`s, files). Changing such an object changes what the
//! replicas should run without changing the definition, so the state machine gives every
//! definition that reads it a new template generation: the leader then replaces its replicas
//! one batch at a time, as for an edited definition, instead of every node replacing them all
//! at once.

use std::collections::BTreeSet;

use super::{ClusterState, Event};
use crate::definitions::{ContainersSpec, Kind, ObjectKey, template_lookups};

impl ClusterState {
    /// Starts a rolling update of each containers definition (not in `rolled`) whose replicas
    /// read one of the `changed` objects.
    pub(super) fn roll_readers(
        &mut self,
        changed: &BTreeSet<ObjectKey>,
        rolled: &BTreeSet<ObjectKey>,
        revision: u64,
        now: u64,
    ) {
        if changed.is_empty() {
            return;
        }
        let readers: Vec<(ObjectKey, ObjectKey)> = self
            .objects
            .iter()
            .filter(|(key, _)| !rolled.contains(*key))
            .filter_map(|(key, stored)| {
                let spec = stored.object.spec.as_containers()?;
                let read = self.template_inputs(key, spec);
                let hit = changed.iter().find(|c| read.contains(*c))?;
                Some((key.clone(), hit.clone()))
            })
            .collect();
        for (key, cause) in readers {
            if let Some(stored) = self.objects.get_mut(&key) {
                stored.template_generation += 1;
            }
            self.push_event(Event {
                revision,
                at_ms: now,
                subject: key.to_string(),
                replica: None,
                node: None,
                reason: "InputChanged".into(),
                message: format!("{cause} changed: rolling update of its replicas"),
            });
        }
    }

    /// The configuration, secret and resource objects the replicas of containers definition
    /// `key` read: listed `configurations`, the configuration named like the definition,
    /// mounted `resources`, and every `lookup` in the definition or in those resources.
    pub fn template_inputs(&self, key: &ObjectKey, spec: &ContainersSpec) -> BTreeSet<ObjectKey> {
        let mut inputs = BTreeSet::from([ObjectKey {
            kind: Kind::Configuration,
            group: key.group.clone(),
            name: key.name.clone(),
        }]);
        let mut texts = Vec::new();
        for spec in std::iter::once(spec).chain(spec.init_container.as_deref()) {
            for c in &spec.configurations {
                inputs.insert(ObjectKey {
                    kind: Kind::Configuration,
                    group: c.group.clone(),
                    name: c.name.clone(),
                });
            }
            for r in &spec.resources {
                let resource = ObjectKey {
                    kind: Kind::Resource,
                    group: r.group.clone(),
                    name: r.name.clone(),
                };
                if let Some(data) = self
                    .objects
                    .get(&resource)
                    .and_then(|o| o.object.spec.data())
                {
                    texts.extend(data.values().cloned());
                }
                inputs.insert(resource);
            }
        }
        if let Ok(value) = serde_json::to_value(spec) {
            strings(&value, &mut texts);
        }
        for text in &texts {
            inputs.extend(template_lookups(text));
        }
        inputs
    }
}

fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}
