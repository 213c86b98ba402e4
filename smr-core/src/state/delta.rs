//! What changed between two versions of the state.
//!
//! Consumers (DNS records, the scheduler, the node reconciler, gitops) keep the version they last
//! worked from (a clone costs O(1)) and ask [`ClusterState::delta`] what differs in the current
//! one; they then update only what the delta names. Computed by comparing the persistent maps,
//! which skips what the versions share: about O(change * log n) between a version and one a few
//! applies later, O(n) between unrelated versions (after a snapshot install), when it is a full
//! resync anyway. Being a comparison of the states, not a record kept by the apply code, it cannot
//! miss a change that a code path forgot to record.

use std::collections::{BTreeMap, BTreeSet};

use super::shared::{MapChange, SharedMap};
use super::{ClusterState, Command, CommandResult, NodeId, NodeReport, ReplicaReport};
use crate::definitions::{Kind, ObjectKey};

/// The keys of one collection that changed: set (created or modified) or removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes<K: Ord> {
    /// Present afterwards, absent or different before.
    pub changed: BTreeSet<K>,
    /// Present before, absent afterwards.
    pub removed: BTreeSet<K>,
}

impl<K: Ord> Default for Changes<K> {
    fn default() -> Self {
        Changes {
            changed: BTreeSet::new(),
            removed: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> Changes<K> {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }

    /// Every key named, changed or removed, in order.
    pub fn touched(&self) -> impl Iterator<Item = &K> {
        let mut all: Vec<&K> = self.changed.iter().chain(&self.removed).collect();
        all.sort();
        all.into_iter()
    }

    /// Whether `key` is named.
    pub fn contains(&self, key: &K) -> bool {
        self.changed.contains(key) || self.removed.contains(key)
    }

    /// Folds in a later change: the later one wins for a key both name.
    pub fn merge(&mut self, later: Changes<K>) {
        for key in later.changed {
            self.removed.remove(&key);
            self.changed.insert(key);
        }
        for key in later.removed {
            self.changed.remove(&key);
            self.removed.insert(key);
        }
    }

    fn of<V: Clone + PartialEq>(after: &SharedMap<K, V>, before: &SharedMap<K, V>) -> Self {
        let mut changes = Changes::default();
        for change in after.diff(before) {
            match change {
                MapChange::Added(key, _) | MapChange::Changed { key, .. } => {
                    changes.changed.insert(key.clone());
                }
                MapChange::Removed(key, _) => {
                    changes.removed.insert(key.clone());
                }
            }
        }
        changes
    }
}

/// What differs from one version of the state to another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// The revision of the older version.
    pub from_revision: u64,
    /// The revision of the newer version.
    pub to_revision: u64,
    /// Stored objects: definition or bookkeeping (generation, template generation, owner).
    pub objects: Changes<ObjectKey>,
    pub placements: Changes<ObjectKey>,
    pub placement_errors: Changes<ObjectKey>,
    pub nodes: Changes<NodeId>,
    /// Nodes whose report changed (a new sequence number alone counts: it is a heartbeat).
    pub reports: Changes<NodeId>,
    /// Objects with a replica whose report was added, changed or dropped on some node (a new
    /// sequence number or time alone does not count).
    pub replicas: BTreeSet<ObjectKey>,
    pub gitops: Changes<ObjectKey>,
    /// The CA, the cluster network, the join tokens or a node's availability (cordon, drain)
    /// changed.
    pub settings: bool,
    /// How many events were appended (the newest of the state's events).
    pub events: usize,
}

impl Delta {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
            && self.placements.is_empty()
            && self.placement_errors.is_empty()
            && self.nodes.is_empty()
            && self.reports.is_empty()
            && self.replicas.is_empty()
            && self.gitops.is_empty()
            && !self.settings
            && self.events == 0
    }

    /// Whether what the network loop derives may differ: overlay peers and WireGuard keys (the
    /// nodes, the cluster network) and DNS records (the nodes, the replicas' reports). A
    /// heartbeat (a report with the same replicas) or a definition write touches none of them,
    /// but a `network` object's write does (Docker networks, routes, isolation rules).
    pub fn touches_network(&self) -> bool {
        !self.nodes.is_empty()
            || self.settings
            || !self.replicas.is_empty()
            || self.objects.touched().any(|k| k.kind == Kind::Network)
    }

    /// Whether a node's replicas may need work: placements, nodes, the cluster network, replica
    /// reports (a dependency's readiness), and any definition but configuration, secret and
    /// resource objects. Those three reach replicas only through the definitions that read
    /// them, which the same write rolls (a new template generation), so they count through it.
    pub fn touches_replicas(&self) -> bool {
        !self.placements.is_empty()
            || !self.nodes.is_empty()
            || self.settings
            || !self.replicas.is_empty()
            || self.objects.touched().any(|k| !is_data(k.kind))
    }

    /// Whether the leader's placements may need to change: containers definitions, placements
    /// and their errors, nodes, replica reports (rollout progress). Liveness (report sequence
    /// numbers against the clock) is the scheduler's timer's business.
    pub fn touches_scheduling(&self) -> bool {
        !self.placements.is_empty()
            || !self.placement_errors.is_empty()
            || !self.nodes.is_empty()
            || !self.replicas.is_empty()
            || self.settings
            || self
                .objects
                .touched()
                .any(|k| k.kind == crate::definitions::Kind::Containers)
    }

    /// Folds in a delta that follows this one (its `from_revision` is this one's `to_revision`).
    pub fn merge(&mut self, later: Delta) {
        self.to_revision = later.to_revision;
        self.objects.merge(later.objects);
        self.placements.merge(later.placements);
        self.placement_errors.merge(later.placement_errors);
        self.nodes.merge(later.nodes);
        self.reports.merge(later.reports);
        self.replicas.extend(later.replicas);
        self.gitops.merge(later.gitops);
        self.settings |= later.settings;
        self.events += later.events;
    }
}

impl ClusterState {
    /// What differs from `before` to `after`. Exact: a key is named if and only if its entry
    /// differs. Costs about the size of the difference when `after` descends from `before`.
    pub fn delta(before: &ClusterState, after: &ClusterState) -> Delta {
        let reports = Changes::of(&after.reports, &before.reports);
        let mut replicas = BTreeSet::new();
        for node in reports.touched() {
            replica_changes(
                before.reports.get(node),
                after.reports.get(node),
                &mut replicas,
            );
        }
        Delta {
            from_revision: before.revision,
            to_revision: after.revision,
            objects: Changes::of(&after.objects, &before.objects),
            placements: Changes::of(&after.placements, &before.placements),
            placement_errors: Changes::of(&after.placement_errors, &before.placement_errors),
            nodes: Changes::of(&after.nodes, &before.nodes),
            reports,
            replicas,
            gitops: Changes::of(&after.gitops, &before.gitops),
            settings: before.ca != after.ca
                || before.network != after.network
                || before.join_tokens != after.join_tokens
                || before.availability != after.availability,
            events: new_events(before, after),
        }
    }

    /// [`Self::apply`], and what it changed.
    pub fn apply_with_delta(&mut self, cmd: &Command) -> (CommandResult, Delta) {
        let before = self.clone();
        let result = self.apply(cmd);
        let delta = ClusterState::delta(&before, self);
        (result, delta)
    }
}

/// Configuration, secret and resource objects: data read by definitions.
fn is_data(kind: crate::definitions::Kind) -> bool {
    use crate::definitions::Kind;
    matches!(kind, Kind::Configuration | Kind::Secret | Kind::Resource)
}

/// Adds to `out` the objects of replicas that differ between two reports of one node.
fn replica_changes(
    before: Option<&NodeReport>,
    after: Option<&NodeReport>,
    out: &mut BTreeSet<ObjectKey>,
) {
    let (old, new) = (by_replica(before), by_replica(after));
    for (id, replica) in &new {
        if old.get(id) != Some(replica) {
            out.insert(id.0.clone());
        }
    }
    for id in old.keys() {
        if !new.contains_key(id) {
            out.insert(id.0.clone());
        }
    }
}

type ReplicaId<'a> = (&'a ObjectKey, u32);

fn by_replica(report: Option<&NodeReport>) -> BTreeMap<ReplicaId<'_>, &ReplicaReport> {
    report
        .map(|r| {
            r.replicas
                .iter()
                .map(|replica| ((&replica.key, replica.index), replica))
                .collect()
        })
        .unwrap_or_default()
}

/// How many events `after` has that `before` had not: those recorded at a later revision.
fn new_events(before: &ClusterState, after: &ClusterState) -> usize {
    after
        .events
        .iter()
        .rev()
        .take_while(|e| e.revision > before.revision)
        .count()
}

/// What a consumer should do with the state it was just handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Recompute everything: the first time, after a version it cannot relate to (a snapshot
    /// installed: the revision went back), and when the caller asks for a resync.
    Full,
    /// Update what the delta names (it may be empty: nothing to do).
    Changes(Box<Delta>),
}

impl Step {
    /// Whether a consumer interested in what `touches` says must work: always on a full pass.
    pub fn needs(&self, touches: impl FnOnce(&Delta) -> bool) -> bool {
        match self {
            Step::Full => true,
            Step::Changes(delta) => touches(delta),
        }
    }
}

/// Follows the state for one consumer: remembers the version it last worked from (an O(1)
/// clone) and hands out what changed since.
#[derive(Clone, Debug, Default)]
pub struct Follower {
    seen: Option<ClusterState>,
}

impl Follower {
    pub fn new() -> Self {
        Follower::default()
    }

    /// What changed from the version last handed out to `current`, or [`Step::Full`] when
    /// `resync` is asked, on the first call, or when `current` is older than what was seen.
    pub fn next(&mut self, current: &ClusterState, resync: bool) -> Step {
        let step = match &self.seen {
            Some(seen) if !resync && seen.revision <= current.revision => {
                Step::Changes(Box::new(ClusterState::delta(seen, current)))
            }
            _ => Step::Full,
        };
        self.seen = Some(current.clone());
        step
    }

    /// The revision last handed out, if any.
    pub fn revision(&self) -> Option<u64> {
        self.seen.as_ref().map(|s| s.revision)
    }
}
