//! Which placement slots each node must run, indexed by node.
//!
//! A node's reconcile pass (and the leader's count of a node's replicas) needs the slots placed
//! on that node or moving off it ([`Placement::on_node`]). Scanning every slot of every placement
//! for that cost O(all slots) per node: at 1,000 nodes and 100,000 replicas, a round of
//! reconcile passes was 10^8 slot visits. The [`SlotIndex`] answers in O(log n + that node's
//! slots).
//!
//! The index is derived from `placements`, never serialized, and equal for any two states. It
//! remembers the version of `placements` it reflects (an O(1) clone of the persistent map), so:
//! - every [`ClusterState::apply`] brings it up to date from the difference between that version
//!   and the current one ([`SharedMap::diff`]: O(what changed)), building it whole the first
//!   time (after a load, a restore, a reset: whatever replaced the state);
//! - a reader of a state that no apply touched (one loaded from a snapshot or fetched from the
//!   API) builds it once on the first question and shares it between its clones;
//! - a reader of a state whose `placements` were changed directly (tests) gets the right answer
//!   by a scan, never a stale one.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

use super::ClusterState;
use super::shared::{MapChange, SharedMap};
use crate::definitions::ObjectKey;
use crate::scheduler::{NodeId, Placement};

/// Node -> object -> the slot indexes of that object the node must run.
pub type NodeSlots = SharedMap<ObjectKey, BTreeSet<u32>>;

#[derive(Clone)]
struct Built {
    /// The version of `placements` the index reflects.
    source: SharedMap<ObjectKey, Placement>,
    by_node: SharedMap<NodeId, NodeSlots>,
    /// Per node, the slots placed on it (`slot.node`; not those moving off it): the leader's
    /// placement loop needs every node's load on each pass.
    placed: SharedMap<NodeId, u32>,
}

/// The slots of every node, by node (see the module doc). Leave it alone: the state keeps it.
#[derive(Clone, Default)]
pub struct SlotIndex {
    built: OnceLock<Built>,
}

impl PartialEq for SlotIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for SlotIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.built.get() {
            Some(built) => write!(f, "SlotIndex {{ nodes: {} }}", built.by_node.len()),
            None => write!(f, "SlotIndex {{ not built }}"),
        }
    }
}

/// The slot indexes of `placement` per node: its own slots and those moving off it.
fn per_node(placement: &Placement) -> std::collections::BTreeMap<NodeId, BTreeSet<u32>> {
    let mut nodes: std::collections::BTreeMap<NodeId, BTreeSet<u32>> = Default::default();
    for (&index, slot) in &placement.replicas {
        nodes.entry(slot.node).or_default().insert(index);
        if let Some(previous) = slot.previous
            && previous != slot.node
        {
            nodes.entry(previous).or_default().insert(index);
        }
    }
    nodes
}

impl Built {
    fn new(placements: &SharedMap<ObjectKey, Placement>) -> Built {
        let mut built = Built {
            source: placements.clone(),
            by_node: SharedMap::new(),
            placed: SharedMap::new(),
        };
        for (key, placement) in placements {
            built.set(key, None, Some(placement));
        }
        built
    }

    /// Replaces what `old` (the placement of `key` the index holds) put in the index with what
    /// `new` puts there; only the nodes whose slots of `key` differ are touched.
    fn set(&mut self, key: &ObjectKey, old: Option<&Placement>, new: Option<&Placement>) {
        for slot in old.iter().flat_map(|p| p.replicas.values()) {
            if let Some(count) = self.placed.get_mut(&slot.node) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.placed.remove(&slot.node);
                }
            }
        }
        for slot in new.iter().flat_map(|p| p.replicas.values()) {
            *self.placed.get_or_insert_with(slot.node, || 0) += 1;
        }
        let before = old.map(per_node).unwrap_or_default();
        let after = new.map(per_node).unwrap_or_default();
        for node in before.keys().filter(|n| !after.contains_key(n)) {
            if let Some(slots) = self.by_node.get_mut(node) {
                slots.remove(key);
                if slots.is_empty() {
                    self.by_node.remove(node);
                }
            }
        }
        for (node, indexes) in after {
            if before.get(&node) == Some(&indexes) {
                continue;
            }
            self.by_node
                .get_or_insert_with(node, SharedMap::new)
                .insert(key.clone(), indexes);
        }
    }

    /// Brings the index from `self.source` to `placements`.
    fn sync(&mut self, placements: &SharedMap<ObjectKey, Placement>) {
        if self.source.ptr_eq(placements) {
            return;
        }
        let source = std::mem::take(&mut self.source);
        for change in placements.diff(&source) {
            match change {
                MapChange::Added(key, new) => self.set(key, None, Some(new)),
                MapChange::Changed { key, old, new } => self.set(key, Some(old), Some(new)),
                MapChange::Removed(key, old) => self.set(key, Some(old), None),
            }
        }
        self.source = placements.clone();
    }
}

impl SlotIndex {
    /// Brings the index up to date with `placements` (built whole the first time).
    pub(super) fn sync(&mut self, placements: &SharedMap<ObjectKey, Placement>) {
        match self.built.get_mut() {
            Some(built) => built.sync(placements),
            None => {
                let _ = self.built.set(Built::new(placements));
            }
        }
    }
}

impl ClusterState {
    /// The slots node `node` must run (placed on it or moving off it), per object in key order,
    /// each object's slot indexes in order: [`Placement::on_node`] of every placement, in
    /// O(log n + that node's slots) once the index is built (see [`SlotIndex`]).
    pub fn slots_on(&self, node: NodeId) -> NodeSlots {
        let built = self
            .slot_index
            .built
            .get_or_init(|| Built::new(&self.placements));
        if built.source.ptr_eq(&self.placements) {
            return built.by_node.get(&node).cloned().unwrap_or_default();
        }
        // `placements` changed without an apply (tests do that): scan, never answer stale.
        self.placements
            .iter()
            .filter_map(|(key, placement)| {
                let indexes: BTreeSet<u32> = placement.on_node(node).map(|(i, _)| i).collect();
                (!indexes.is_empty()).then(|| (key.clone(), indexes))
            })
            .collect()
    }

    /// How many slots are placed on each node (`slot.node`, not the nodes they move off), nodes
    /// with none left out: in O(nodes) once the index is built, not O(slots).
    pub fn placed_counts(&self) -> std::collections::BTreeMap<NodeId, u32> {
        let built = self
            .slot_index
            .built
            .get_or_init(|| Built::new(&self.placements));
        if built.source.ptr_eq(&self.placements) {
            return built.placed.iter().map(|(n, c)| (*n, *c)).collect();
        }
        // `placements` changed without an apply (tests do that): count, never answer stale.
        let mut counts = std::collections::BTreeMap::new();
        for slot in self.placements.values().flat_map(|p| p.replicas.values()) {
            *counts.entry(slot.node).or_insert(0) += 1;
        }
        counts
    }

    /// How many slots node `node` must run: the count of [`ClusterState::slots_on`].
    pub fn slot_count_on(&self, node: NodeId) -> usize {
        self.slots_on(node).values().map(BTreeSet::len).sum()
    }
}
