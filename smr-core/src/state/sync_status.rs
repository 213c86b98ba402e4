//! The replicated side of gitops: each `gitops` object's sync status, the atomic sync operation
//! that applies a commit's definitions and prunes what left git, and sync requests.
//!
//! The leader's loop (`agent::controllers::sync`, deciding with `smr_core::repo_sync`) fetches and plans; everything it changes goes
//! through [`ClusterState::gitops_sync`] in one command, so a sync is applied whole or not at all,
//! and the last synced commit is recorded in the same entry as the objects it produced. A new
//! leader reads that commit and finds nothing left to do.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ClusterState, CommandResult, Event, Outcome};
use crate::definitions::{Kind, Object, ObjectKey};

/// Where a gitops object stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GitopsState {
    /// Not synced yet.
    #[default]
    Pending,
    /// The cluster holds what the commit says.
    Synced,
    /// The repository has a commit the cluster does not hold, and automaticSync is off.
    OutOfSync,
    /// Objects it deployed were changed or deleted by hand.
    Drifted,
    /// Some definitions of the commit are held by someone else and were left alone.
    Conflict,
    /// The last attempt failed (fetch, parse, validation, credentials); nothing of it applied.
    Error,
}

impl std::fmt::Display for GitopsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            GitopsState::Pending => "pending",
            GitopsState::Synced => "synced",
            GitopsState::OutOfSync => "out-of-sync",
            GitopsState::Drifted => "drifted",
            GitopsState::Conflict => "conflict",
            GitopsState::Error => "error",
        };
        f.write_str(text)
    }
}

/// The status of one gitops object, as the leader last recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitopsStatus {
    pub state: GitopsState,
    /// The commit whose definitions the cluster holds (the last successful sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_commit: Option<String>,
    /// The gitops object's generation that commit was synced for.
    #[serde(default)]
    pub synced_generation: u64,
    /// The newest commit seen in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_commit: Option<String>,
    /// Human-readable detail: the error (file, line, field), what is out of sync, conflicts.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the cluster last took a commit's definitions (wall clock of the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_ms: Option<u64>,
    /// Objects owned by this gitops object that differ from git (changed or deleted by hand).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted: Vec<ObjectKey>,
    /// Objects in git held by someone else, with the reason they were left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<(ObjectKey, String)>,
    /// Incremented by every sync request (`smrctl gitops sync`, webhook).
    #[serde(default)]
    pub sync_requested: u64,
    /// The highest request the leader has answered with a sync attempt.
    #[serde(default)]
    pub sync_handled: u64,
}

/// The owner string of objects deployed by gitops object `key`: `gitops/<group>/<name>`.
pub fn owner_of(key: &ObjectKey) -> String {
    format!("gitops/{}/{}", key.group, key.name)
}

/// One sync of a gitops object, applied as a whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GitopsSync {
    /// The gitops object.
    pub gitops: ObjectKey,
    /// Its generation the sync was computed for; a sync for an older generation is refused.
    pub generation: u64,
    /// Objects to create or update, owned by the gitops object afterwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apply: Vec<Object>,
    /// Objects it owns that left git.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<ObjectKey>,
    /// The status to record (its `sync_requested` is ignored: the state keeps its own count).
    pub status: GitopsStatus,
}

impl ClusterState {
    /// Applies one gitops sync: all of it, or nothing with a reason.
    pub(super) fn gitops_sync(&mut self, sync: &GitopsSync, now: u64) -> CommandResult {
        let owner = owner_of(&sync.gitops);
        match self.objects.get(&sync.gitops) {
            Some(g) if g.object.kind == Kind::Gitops && g.generation == sync.generation => {}
            Some(g) if g.object.kind == Kind::Gitops => {
                return CommandResult::Rejected {
                    reason: format!(
                        "{} changed (generation {} is now {}); sync again",
                        sync.gitops, sync.generation, g.generation
                    ),
                };
            }
            _ => {
                return CommandResult::Rejected {
                    reason: format!("{} does not exist", sync.gitops),
                };
            }
        }
        // Check every object before changing anything.
        let mut seen = BTreeSet::new();
        for object in &sync.apply {
            let key = object.key();
            if !seen.insert(key.clone()) {
                return CommandResult::Rejected {
                    reason: format!("{key} appears twice in one sync"),
                };
            }
            if key == sync.gitops {
                return CommandResult::Rejected {
                    reason: format!("{key} cannot deploy itself"),
                };
            }
            if let Some(existing) = self.objects.get(&key)
                && existing.owner.as_deref() != Some(owner.as_str())
            {
                return CommandResult::Rejected {
                    reason: format!(
                        "{key} is held by {}; left alone",
                        existing
                            .owner
                            .as_deref()
                            .unwrap_or("a hand-applied definition")
                    ),
                };
            }
        }
        for key in &sync.delete {
            if let Some(existing) = self.objects.get(key)
                && existing.owner.as_deref() != Some(owner.as_str())
            {
                return CommandResult::Rejected {
                    reason: format!("{key} is not owned by {owner}; not deleting it"),
                };
            }
        }
        if let Some(reason) = crate::volume::refuse_delete_after(self, &sync.apply, &sync.delete) {
            return CommandResult::Rejected { reason };
        }
        let keys: Vec<ObjectKey> = sync.apply.iter().map(|o| o.key()).collect();
        if let Err(e) =
            crate::docker_names::check(|k| self.objects.contains_key(k), &keys, &sync.delete)
        {
            return CommandResult::Rejected {
                reason: e.to_string(),
            };
        }
        let before = self.revision;
        let mut outcomes = match self.apply_objects(&sync.apply, Some(&owner), now) {
            CommandResult::Objects { outcomes, .. } => outcomes,
            other => return other,
        };
        if let CommandResult::Objects { outcomes: gone, .. } =
            self.delete_objects(&sync.delete, now)
        {
            outcomes.extend(gone.into_iter().filter(|o| o.outcome != Outcome::NotFound));
        }
        let mut status = sync.status.clone();
        let previous = self.gitops.get(&sync.gitops).cloned().unwrap_or_default();
        status.sync_requested = previous.sync_requested;
        status.sync_handled = status.sync_handled.min(previous.sync_requested);
        let changed_objects = outcomes.iter().any(|o| o.outcome != Outcome::Unchanged);
        if status != previous || changed_objects {
            let revision = before + 1;
            if let Some(event) = status_event(&sync.gitops, &previous, &status, &outcomes) {
                self.push_event(Event {
                    revision,
                    at_ms: now,
                    ..event
                });
            }
            self.gitops.insert(sync.gitops.clone(), status);
            self.revision = revision;
        }
        CommandResult::Objects {
            revision: self.revision,
            outcomes,
        }
    }

    /// Asks the leader to sync a gitops object now; returns the request number in `revision`.
    pub(super) fn gitops_request_sync(&mut self, key: &ObjectKey) -> CommandResult {
        match self.objects.get(key) {
            Some(g) if g.object.kind == Kind::Gitops => {
                let status = self
                    .gitops
                    .get_or_insert_with(key.clone(), Default::default);
                status.sync_requested += 1;
                let requested = status.sync_requested;
                self.revision += 1;
                CommandResult::SyncRequested { request: requested }
            }
            _ => CommandResult::Rejected {
                reason: format!("{key} does not exist"),
            },
        }
    }

    /// Keys of the objects deployed by gitops object `key`.
    pub fn owned_by(&self, key: &ObjectKey) -> Vec<ObjectKey> {
        let owner = owner_of(key);
        self.objects
            .iter()
            .filter(|(_, o)| o.owner.as_deref() == Some(owner.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The event a status change is worth, if any.
fn status_event(
    key: &ObjectKey,
    before: &GitopsStatus,
    after: &GitopsStatus,
    outcomes: &[super::ObjectOutcome],
) -> Option<Event> {
    let count = |o: Outcome| outcomes.iter().filter(|x| x.outcome == o).count();
    let (created, configured, deleted) = (
        count(Outcome::Created),
        count(Outcome::Configured),
        count(Outcome::Deleted),
    );
    let short = |c: &Option<String>| {
        c.as_deref()
            .map(|c| c.chars().take(12).collect::<String>())
            .unwrap_or_else(|| "-".into())
    };
    let (reason, message) = if created + configured + deleted > 0 {
        let reason =
            if before.synced_commit == after.synced_commit && before.synced_commit.is_some() {
                "DriftCorrected"
            } else {
                "Synced"
            };
        (
            reason,
            format!(
                "commit {}: {created} created, {configured} updated, {deleted} pruned",
                short(&after.synced_commit)
            ),
        )
    } else if before.state == after.state && before.message == after.message {
        return None;
    } else {
        let reason = match after.state {
            GitopsState::Error => "SyncFailed",
            GitopsState::Drifted => "Drifted",
            GitopsState::OutOfSync => "OutOfSync",
            GitopsState::Conflict => "Conflict",
            GitopsState::Synced => "Synced",
            GitopsState::Pending => "Pending",
        };
        let message = if after.message.is_empty() {
            format!("commit {}: {}", short(&after.synced_commit), after.state)
        } else {
            after.message.clone()
        };
        (reason, message)
    };
    Some(Event {
        revision: 0,
        at_ms: 0,
        subject: key.to_string(),
        replica: None,
        node: None,
        reason: reason.into(),
        message,
    })
}
