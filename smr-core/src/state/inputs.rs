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
        // Only containers definitions read inputs: the others are not even visited (with tens of
        // thousands of objects, a scan of all of them on every write was most of a write's cost).
        let readers: Vec<(ObjectKey, ObjectKey)> = self
            .keyed_objects_of(Kind::Containers)
            .filter(|(key, _)| !rolled.contains(*key))
            .filter_map(|(key, stored)| {
                let spec = stored.object.spec.as_containers()?;
                let hit = self.reads_one_of(key, spec, changed)?;
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

    /// The first of `changed` that the replicas of containers definition `key` read: listed
    /// `configurations`, the configuration named like the definition, mounted `resources`, or
    /// a `lookup` in the definition or in those resources. Lookups (a walk over every string of
    /// the definition) are searched only when the direct references miss.
    fn reads_one_of<'c>(
        &self,
        key: &ObjectKey,
        spec: &ContainersSpec,
        changed: &'c BTreeSet<ObjectKey>,
    ) -> Option<&'c ObjectKey> {
        let mut direct = BTreeSet::from([ObjectKey {
            kind: Kind::Configuration,
            group: key.group.clone(),
            name: key.name.clone(),
        }]);
        for spec in std::iter::once(spec).chain(spec.init_container.as_deref()) {
            direct.extend(spec.configurations.iter().map(|c| ObjectKey {
                kind: Kind::Configuration,
                group: c.group.clone(),
                name: c.name.clone(),
            }));
            direct.extend(spec.resources.iter().map(|r| ObjectKey {
                kind: Kind::Resource,
                group: r.group.clone(),
                name: r.name.clone(),
            }));
        }
        if let Some(hit) = changed.iter().find(|c| direct.contains(*c)) {
            return Some(hit);
        }
        // Resource contents are rendered too, so their lookups count.
        let mut texts: Vec<String> = direct
            .iter()
            .filter(|k| k.kind == Kind::Resource)
            .filter_map(|k| self.objects.get(k)?.object.spec.data())
            .flat_map(|data| data.values().cloned())
            .collect();
        if let Ok(value) = serde_json::to_value(spec) {
            strings(&value, &mut texts);
        }
        let looked_up: BTreeSet<ObjectKey> =
            texts.iter().flat_map(|t| template_lookups(t)).collect();
        changed.iter().find(|c| looked_up.contains(*c))
    }
}

/// The strings of `value` that hold a template.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if s.contains("((") => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}
