//! What the leader's repository sync decides, as pure values: given the state and a commit's
//! parsed definitions, what to propose for one `gitops` object ([`decide`]), and the repository
//! to fetch ([`repo_spec`]). The agent's loop (`controllers::sync`) fetches, parses and proposes.
//!
//! Everything a sync changes goes through one `Op::GitopsSync`, so a commit is applied whole or
//! not at all, together with the commit it came from.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::definitions::{self, GitopsSpec, Kind, Object, ObjectKey};
use crate::state::{ClusterState, GitopsState, GitopsStatus, GitopsSync, owner_of};

/// simplecontainer's default `poolingInterval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(180);

/// A commit's definitions, parsed and validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub commit: String,
    /// The gitops object's generation the fetch was made for.
    pub generation: u64,
    pub objects: BTreeMap<ObjectKey, Object>,
}

/// What the loop should propose for one gitops object, if anything.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Nothing,
    Propose(Box<GitopsSync>),
}

/// Decides what to do with gitops object `key` given a parsed commit. Pure.
///
/// `request` is the sync request this evaluation answers (0 for none): an explicit request
/// deploys even with `automaticSync` off.
pub fn decide(
    state: &ClusterState,
    key: &ObjectKey,
    desired: &Desired,
    request: u64,
    now: u64,
) -> Decision {
    let Some(stored) = state.objects.get(key) else {
        return Decision::Nothing;
    };
    let Some(spec) = stored.object.spec.as_gitops() else {
        return Decision::Nothing;
    };
    if stored.generation != desired.generation {
        return Decision::Nothing;
    }
    let current = state.gitops.get(key).cloned().unwrap_or_default();
    let owner = owner_of(key);
    // The crate plans over opaque hashes; equality with git is all that matters here.
    let wanted: BTreeMap<String, String> = desired
        .objects
        .keys()
        .map(|k| (k.to_string(), "git".to_string()))
        .collect();
    let actual: BTreeMap<String, gitops::Actual> = state
        .objects
        .iter()
        .filter(|(k, o)| {
            desired.objects.contains_key(*k) || o.owner.as_deref() == Some(owner.as_str())
        })
        .map(|(k, o)| {
            let same = desired.objects.get(k) == Some(&o.object);
            let hash = if same { "git" } else { "changed" };
            (k.to_string(), gitops::Actual::new(hash, o.owner.as_deref()))
        })
        .collect();
    let plan = gitops::plan_sync(&owner, &wanted, &actual);
    let parse = |k: &String| k.parse::<ObjectKey>().ok();
    let conflicts: Vec<(ObjectKey, String)> = plan
        .conflicts
        .iter()
        .filter_map(|(k, why)| Some((parse(k)?, why.clone())))
        .collect();
    let new_commit = current.synced_commit.as_deref() != Some(desired.commit.as_str())
        || current.synced_generation != desired.generation;
    let deploy = spec.automatic_sync || request > current.sync_handled;
    let mut status = GitopsStatus {
        head_commit: Some(desired.commit.clone()),
        sync_requested: current.sync_requested,
        sync_handled: current.sync_handled.max(request),
        ..current.clone()
    };
    let mut sync = GitopsSync {
        gitops: key.clone(),
        generation: desired.generation,
        apply: Vec::new(),
        delete: Vec::new(),
        status: GitopsStatus::default(),
    };
    if plan.is_noop() || deploy {
        sync.apply = plan
            .create
            .iter()
            .chain(&plan.update)
            .filter_map(|k| desired.objects.get(&parse(k)?).cloned())
            .collect();
        sync.delete = plan.delete.iter().filter_map(parse).collect();
        // Refused by the state machine anyway; said in the status rather than only in a log.
        let keys: Vec<ObjectKey> = sync.apply.iter().map(Object::key).collect();
        if let Err(e) =
            crate::docker_names::check(|k| state.objects.contains_key(k), &keys, &sync.delete)
        {
            let message = format!("commit {}: {e}", short(&desired.commit));
            return failed(
                state,
                key,
                desired.generation,
                Some(desired.commit.clone()),
                message,
                request,
            )
            .map_or(Decision::Nothing, |s| Decision::Propose(Box::new(s)));
        }
        status.synced_commit = Some(desired.commit.clone());
        status.synced_generation = desired.generation;
        if new_commit || !plan.is_noop() {
            status.last_sync_ms = Some(now);
        }
        status.drifted.clear();
        status.conflicts = conflicts;
        if status.conflicts.is_empty() {
            status.state = GitopsState::Synced;
            status.message.clear();
        } else {
            status.state = GitopsState::Conflict;
            status.message = conflict_message(&status.conflicts);
        }
    } else {
        let mut differing: Vec<ObjectKey> = plan
            .create
            .iter()
            .chain(&plan.update)
            .chain(&plan.delete)
            .filter_map(parse)
            .collect();
        differing.sort();
        status.conflicts = conflicts;
        if new_commit {
            status.state = GitopsState::OutOfSync;
            status.drifted.clear();
            status.message = format!(
                "commit {} has {} to create, {} to update, {} to prune; automaticSync is off: \
                 run `smrctl gitops sync {}/{}`",
                short(&desired.commit),
                plan.create.len(),
                plan.update.len(),
                plan.delete.len(),
                key.group,
                key.name
            );
        } else {
            status.state = GitopsState::Drifted;
            status.message = format!(
                "{} object(s) differ from commit {}: {}",
                differing.len(),
                short(&desired.commit),
                list(&differing)
            );
            status.drifted = differing;
        }
    }
    if sync.apply.is_empty() && sync.delete.is_empty() && status == current {
        return Decision::Nothing;
    }
    sync.status = status;
    Decision::Propose(Box::new(sync))
}

/// The status recorded when a sync attempt fails: what the cluster holds is left as it is.
pub fn failed(
    state: &ClusterState,
    key: &ObjectKey,
    generation: u64,
    head: Option<String>,
    message: String,
    request: u64,
) -> Option<GitopsSync> {
    let current = state.gitops.get(key).cloned().unwrap_or_default();
    let status = GitopsStatus {
        state: GitopsState::Error,
        head_commit: head.or(current.head_commit.clone()),
        message,
        sync_handled: current.sync_handled.max(request),
        ..current.clone()
    };
    (status != current).then(|| GitopsSync {
        gitops: key.clone(),
        generation,
        apply: Vec::new(),
        delete: Vec::new(),
        status,
    })
}

pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn list(keys: &[ObjectKey]) -> String {
    let mut text: Vec<String> = keys.iter().take(5).map(|k| k.to_string()).collect();
    if keys.len() > 5 {
        text.push(format!("and {} more", keys.len() - 5));
    }
    text.join(", ")
}

fn conflict_message(conflicts: &[(ObjectKey, String)]) -> String {
    let mut text: Vec<String> = conflicts
        .iter()
        .take(5)
        .map(|(k, why)| format!("{k} left alone: {why}"))
        .collect();
    if conflicts.len() > 5 {
        text.push(format!("and {} more", conflicts.len() - 5));
    }
    text.join("; ")
}

/// Why a gitops object's repository cannot be fetched as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoSpecError {
    #[error("{0} does not exist")]
    Missing(ObjectKey),
    #[error("set either httpAuthRef or certKeyRef, not both")]
    TwoAuths,
    #[error("certkey/{group}/{name} has no privateKey")]
    NoPrivateKey { group: String, name: String },
}

/// The repository, revision, directory and credentials of a gitops object, from the state.
pub fn repo_spec(
    state: &ClusterState,
    spec: &GitopsSpec,
) -> Result<gitops::RepoSpec, RepoSpecError> {
    let find = |kind: Kind, r: &definitions::ObjectRef| {
        let key = ObjectKey {
            kind,
            group: r.group.clone(),
            name: r.name.clone(),
            prefix: None,
        };
        state
            .objects
            .get(&key)
            .map(|o| o.object.spec.clone())
            .ok_or(RepoSpecError::Missing(key))
    };
    let auth = match (&spec.http_auth_ref, &spec.cert_key_ref) {
        (Some(_), Some(_)) => {
            return Err(RepoSpecError::TwoAuths);
        }
        (Some(r), None) => match find(Kind::Httpauth, r)? {
            definitions::Spec::Httpauth(h) => gitops::Auth::Basic {
                username: h.username,
                password: h.password,
            },
            _ => unreachable!("an httpauth key holds an httpauth spec"),
        },
        (None, Some(r)) => match find(Kind::Certkey, r)? {
            definitions::Spec::Certkey(c) => gitops::Auth::SshKey {
                private_key_pem: c.private_key.ok_or_else(|| RepoSpecError::NoPrivateKey {
                    group: r.group.clone(),
                    name: r.name.clone(),
                })?,
                passphrase: c.private_key_password,
            },
            _ => unreachable!("a certkey key holds a certkey spec"),
        },
        (None, None) => gitops::Auth::None,
    };
    Ok(gitops::RepoSpec {
        url: spec.repo_url.clone(),
        revision: spec.revision.clone().filter(|r| !r.is_empty()),
        directory: definitions::repo_directory(spec.directory_path.as_deref().unwrap_or(""))
            .to_string(),
        auth,
    })
}

#[cfg(test)]
mod tests;
