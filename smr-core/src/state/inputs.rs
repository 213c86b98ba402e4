//! A change to the data a containers definition reads rolls it.
//!
//! Replicas are rendered from their definition and from configuration, secret and resource
//! objects (template variables, `lookup`s, files). Changing such an object changes what the
//! replicas should run without changing the definition, so the state machine gives every
//! definition that reads it a new template generation: the leader then replaces its replicas
//! one batch at a time, as for an edited definition, instead of every node replacing them all
//! at once.

//!
//! Which definitions read which objects is kept in a [`ReadersIndex`], so that a write visits
//! only the definitions that read what it changed, not every containers definition (rendering
//! each one's lookups on every configuration write cost O(definitions) per write).

use std::collections::BTreeSet;
use std::fmt;

use super::shared::SharedMap;
use super::{ClusterState, Event};
use crate::definitions::{ContainersSpec, Kind, ObjectKey, template_lookups};

/// Which containers definitions read which objects: derived from the objects, so never written
/// to a snapshot; built on the first write after the state is created or loaded, then kept up to
/// date by every write. Equal for any two states (it is not part of what the state says).
#[derive(Clone, Default)]
pub struct ReadersIndex {
    built: bool,
    /// Object -> the containers definitions that read it.
    readers: SharedMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Containers definition -> the objects it reads.
    inputs: SharedMap<ObjectKey, BTreeSet<ObjectKey>>,
}

impl PartialEq for ReadersIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for ReadersIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReadersIndex {{ built: {}, definitions: {} }}",
            self.built,
            self.inputs.len()
        )
    }
}

impl ReadersIndex {
    /// The definitions that read `key`.
    pub fn readers_of(&self, key: &ObjectKey) -> impl Iterator<Item = &ObjectKey> {
        self.readers.get(key).into_iter().flatten()
    }

    /// Object -> the definitions that read it, as a sorted list (for tests and diagnostics).
    pub fn readers(&self) -> Vec<(ObjectKey, Vec<ObjectKey>)> {
        self.readers
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect()
    }

    /// Definition -> what it reads, as a sorted list (for tests and diagnostics).
    pub fn inputs(&self) -> Vec<(ObjectKey, Vec<ObjectKey>)> {
        self.inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect()
    }
}

impl ClusterState {
    /// Brings the readers index up to date after the objects `touched` were created, changed or
    /// deleted (builds it whole the first time).
    pub(super) fn reindex(&mut self, touched: &BTreeSet<ObjectKey>) {
        if !self.readers_index.built {
            self.rebuild_readers_index();
            return;
        }
        let mut definitions: BTreeSet<ObjectKey> = touched
            .iter()
            .filter(|k| k.kind == Kind::Containers)
            .cloned()
            .collect();
        // A resource's contents are rendered, so its lookups are read by whoever mounts it.
        for key in touched.iter().filter(|k| k.kind == Kind::Resource) {
            definitions.extend(self.readers_index.readers_of(key).cloned());
        }
        for key in definitions {
            self.index_definition(&key);
        }
    }

    /// Builds the readers index from every containers definition.
    pub fn rebuild_readers_index(&mut self) {
        self.readers_index = ReadersIndex {
            built: true,
            ..ReadersIndex::default()
        };
        let definitions: Vec<ObjectKey> = self
            .keyed_objects_of(Kind::Containers)
            .map(|(k, _)| k.clone())
            .collect();
        for key in definitions {
            self.index_definition(&key);
        }
    }

    /// Records what containers definition `key` reads now (nothing when it is gone).
    fn index_definition(&mut self, key: &ObjectKey) {
        let now: BTreeSet<ObjectKey> = match self
            .objects
            .get(key)
            .and_then(|s| s.object.spec.as_containers())
        {
            Some(spec) => {
                let direct = direct_inputs(key, spec);
                let looked_up = self.looked_up(&direct, spec);
                direct.into_iter().chain(looked_up).collect()
            }
            None => BTreeSet::new(),
        };
        let index = &mut self.readers_index;
        let before = index.inputs.get(key).cloned().unwrap_or_default();
        if before == now {
            return;
        }
        for gone in before.difference(&now) {
            if let Some(readers) = index.readers.get_mut(gone) {
                readers.remove(key);
                if readers.is_empty() {
                    index.readers.remove(gone);
                }
            }
        }
        for added in now.difference(&before) {
            index
                .readers
                .get_or_insert_with(added.clone(), BTreeSet::new)
                .insert(key.clone());
        }
        if now.is_empty() {
            index.inputs.remove(key);
        } else {
            index.inputs.insert(key.clone(), now);
        }
    }

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
        // Only the definitions the index says read one of `changed` are visited, in key order.
        let candidates: BTreeSet<&ObjectKey> = changed
            .iter()
            .flat_map(|c| self.readers_index.readers_of(c))
            .filter(|key| !rolled.contains(*key))
            .collect();
        let readers: Vec<(ObjectKey, ObjectKey)> = candidates
            .into_iter()
            .filter_map(|key| {
                let spec = self.objects.get(key)?.object.spec.as_containers()?;
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
        let direct = direct_inputs(key, spec);
        if let Some(hit) = changed.iter().find(|c| direct.contains(*c)) {
            return Some(hit);
        }
        let looked_up = self.looked_up(&direct, spec);
        changed.iter().find(|c| looked_up.contains(*c))
    }

    /// The objects named by a `lookup` in the definition or in the resources it mounts
    /// (resource contents are rendered too, so their lookups count).
    fn looked_up(
        &self,
        direct: &BTreeSet<ObjectKey>,
        spec: &ContainersSpec,
    ) -> BTreeSet<ObjectKey> {
        let mut texts: Vec<String> = direct
            .iter()
            .filter(|k| k.kind == Kind::Resource)
            .filter_map(|k| self.objects.get(k)?.object.spec.data())
            .flat_map(|data| data.values().cloned())
            .collect();
        if let Ok(value) = serde_json::to_value(spec) {
            strings(&value, &mut texts);
        }
        texts.iter().flat_map(|t| template_lookups(t)).collect()
    }
}

/// What containers definition `key` names: listed `configurations`, the configuration named
/// like the definition, mounted `resources` (its init container's too).
fn direct_inputs(key: &ObjectKey, spec: &ContainersSpec) -> BTreeSet<ObjectKey> {
    let mut direct = BTreeSet::from([ObjectKey {
        kind: Kind::Configuration,
        group: key.group.clone(),
        name: key.name.clone(),
        prefix: None,
    }]);
    for spec in std::iter::once(spec).chain(spec.init_container.as_deref()) {
        direct.extend(spec.configurations.iter().map(|c| ObjectKey {
            kind: Kind::Configuration,
            group: c.group.clone(),
            name: c.name.clone(),
            prefix: None,
        }));
        direct.extend(spec.resources.iter().map(|r| ObjectKey {
            kind: Kind::Resource,
            group: r.group.clone(),
            name: r.name.clone(),
            prefix: None,
        }));
    }
    direct
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
