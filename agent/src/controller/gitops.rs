//! The leader's gitops loop: fetch each `gitops` object's repository, parse and validate every
//! definition of the commit, and make the cluster match it in one replicated step.
//!
//! ```text
//!  timer / state change / sync request ──► due? ──► fetch + parse (blocking pool) ──► Desired
//!                                                                                     │
//!  state change (drift) ─────────────────────────────────────────────► decide(state, Desired)
//!                                                                                     │
//!                                              Op::GitopsSync {apply, delete, status} ◄┘
//! ```
//! Everything a sync changes goes through one [`Op::GitopsSync`], so a commit is applied whole or
//! not at all, together with the commit it came from. [`decide`] is pure: given the state and a
//! parsed commit it says what to propose. Only the leader runs the loop; a new leader starts
//! with an empty cache, fetches once, and finds nothing to do when the last sync completed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};

use crate::definitions::{self, GitopsSpec, Kind, Object, ObjectKey};
use crate::node::{Node, now_ms};
use crate::state::{ClusterState, GitopsState, GitopsStatus, GitopsSync, Op, owner_of};
use crate::store::ServerState;

/// simplecontainer's default `poolingInterval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(180);

/// How many repositories are fetched at once.
const PARALLEL_FETCHES: usize = 4;

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

fn short(commit: &str) -> &str {
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

/// The repository, revision, directory and credentials of a gitops object, from the state.
pub fn repo_spec(state: &ClusterState, spec: &GitopsSpec) -> Result<gitops::RepoSpec, String> {
    let find = |kind: Kind, r: &definitions::ObjectRef| {
        let key = ObjectKey {
            kind,
            group: r.group.clone(),
            name: r.name.clone(),
        };
        state
            .objects
            .get(&key)
            .map(|o| o.object.spec.clone())
            .ok_or_else(|| format!("{key} does not exist"))
    };
    let auth = match (&spec.http_auth_ref, &spec.cert_key_ref) {
        (Some(_), Some(_)) => {
            return Err("set either httpAuthRef or certKeyRef, not both".into());
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
                private_key_pem: c
                    .private_key
                    .ok_or_else(|| format!("certkey/{}/{} has no privateKey", r.group, r.name))?,
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

/// Parses and validates every file of a checkout; the first error names file, line and field.
pub fn parse_checkout(checkout: &gitops::Checkout, generation: u64) -> Result<Desired, String> {
    let mut objects = BTreeMap::new();
    let mut origin: BTreeMap<ObjectKey, &str> = BTreeMap::new();
    for file in &checkout.files {
        let parsed = definitions::parse_str(&file.path, &file.text).map_err(|e| e.to_string())?;
        for object in parsed {
            let key = object.key();
            if let Some(first) = origin.insert(key.clone(), &file.path) {
                return Err(format!("{}: {key} is also defined in {first}", file.path));
            }
            objects.insert(key, object);
        }
    }
    Ok(Desired {
        commit: checkout.commit.clone(),
        generation,
        objects,
    })
}

/// A fetch's outcome, sent back to the loop.
struct Fetched {
    key: ObjectKey,
    generation: u64,
    request: u64,
    result: Result<Desired, (Option<String>, String)>,
}

/// Leader-local memory about one gitops object.
#[derive(Default)]
struct Tracker {
    desired: Option<Arc<Desired>>,
    next_poll: Option<Instant>,
    in_flight: bool,
    /// The sync request and object generation the last fetch was launched for.
    launched_request: u64,
    launched_generation: Option<u64>,
    /// State revision at the last evaluation against `desired`.
    evaluated: Option<u64>,
}

/// Runs the gitops loop until `stop`; acts only while this node leads.
pub async fn run(node: Arc<Node>, cache_dir: PathBuf, mut stop: watch::Receiver<bool>) {
    let fetcher = gitops::Fetcher::with_config(
        cache_dir,
        gitops::FetcherConfig {
            timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        },
    );
    let slots = Arc::new(Semaphore::new(PARALLEL_FETCHES));
    let (tx, mut rx) = mpsc::channel::<Fetched>(64);
    let mut changes = node.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut trackers: HashMap<ObjectKey, Tracker> = HashMap::new();
    let mut leading = false;
    loop {
        let mut fetched = None;
        tokio::select! {
            _ = crate::api::serve::stopped(&mut stop) => return,
            _ = changes.changed() => {},
            _ = tick.tick() => {},
            Some(f) = rx.recv() => fetched = Some(f),
        }
        if node.store.status().state != ServerState::Leader {
            if leading {
                trackers.clear();
                leading = false;
            }
            continue;
        }
        leading = true;
        let Ok(state) = node.store.read(false).await else {
            continue;
        };
        if let Some(f) = fetched {
            let Some(t) = trackers.get_mut(&f.key) else {
                continue;
            };
            t.in_flight = false;
            t.evaluated = None;
            crate::metrics::gitops_fetched(f.result.is_ok());
            match f.result {
                Ok(desired) => {
                    t.desired = Some(Arc::new(desired));
                    t.evaluated = Some(state.revision);
                    let desired = t.desired.clone().expect("just set");
                    let decision = decide(&state, &f.key, &desired, f.request, now_ms());
                    propose(&node, decision).await;
                }
                Err((head, message)) => {
                    tracing::warn!("gitops {}: {message}", f.key);
                    if let Some(sync) =
                        failed(&state, &f.key, f.generation, head, message, f.request)
                    {
                        propose(&node, Decision::Propose(Box::new(sync))).await;
                    }
                }
            }
            continue;
        }
        trackers.retain(|k, _| state.objects.contains_key(k));
        let now = Instant::now();
        for stored in state.objects_of(Kind::Gitops) {
            let key = stored.object.key();
            let Some(spec) = stored.object.spec.as_gitops() else {
                continue;
            };
            let t = trackers.entry(key.clone()).or_default();
            if t.in_flight {
                continue;
            }
            let status = state.gitops.get(&key);
            let requested = status.map(|s| s.sync_requested).unwrap_or(0);
            let handled = status.map(|s| s.sync_handled).unwrap_or(0);
            let asked = requested > handled && requested > t.launched_request;
            let stale = t.launched_generation != Some(stored.generation);
            let due = t.next_poll.is_none_or(|at| now >= at);
            if asked || stale || due {
                t.in_flight = true;
                t.launched_request = requested;
                t.launched_generation = Some(stored.generation);
                let interval = spec
                    .pooling_interval
                    .map(|i| i.get())
                    .unwrap_or(DEFAULT_INTERVAL);
                t.next_poll = Some(now + interval);
                let job = Job {
                    key: key.clone(),
                    generation: stored.generation,
                    request: if asked { requested } else { 0 },
                    spec: repo_spec(&state, spec),
                };
                tokio::spawn(fetch(fetcher.clone(), slots.clone(), tx.clone(), job));
                continue;
            }
            // Between fetches, compare the cluster with the last commit on every change: drift
            // shows (and, with automaticSync, is put back) without waiting for the next poll.
            if let Some(desired) = t.desired.clone()
                && t.evaluated != Some(state.revision)
            {
                t.evaluated = Some(state.revision);
                let decision = decide(&state, &key, &desired, 0, now_ms());
                propose(&node, decision).await;
            }
        }
    }
}

struct Job {
    key: ObjectKey,
    generation: u64,
    request: u64,
    spec: Result<gitops::RepoSpec, String>,
}

async fn fetch(
    fetcher: gitops::Fetcher,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Fetched>,
    job: Job,
) {
    let _slot = slots.acquire().await;
    let result = match job.spec {
        Err(e) => Err((None, e)),
        Ok(spec) => {
            let started = Instant::now();
            match fetcher.fetch(&spec).await {
                Err(e) => Err((None, e.to_string())),
                Ok(checkout) => {
                    let generation = job.generation;
                    let commit = checkout.commit.clone();
                    let parsed =
                        tokio::task::spawn_blocking(move || parse_checkout(&checkout, generation))
                            .await
                            .unwrap_or_else(|e| Err(format!("parsing: {e}")));
                    tracing::debug!(
                        "gitops {}: fetched and parsed commit {} in {:?}",
                        job.key,
                        short(&commit),
                        started.elapsed()
                    );
                    parsed.map_err(|e| {
                        (
                            Some(commit.clone()),
                            format!("commit {}: {e}; nothing of it applied", short(&commit)),
                        )
                    })
                }
            }
        }
    };
    let _ = tx
        .send(Fetched {
            key: job.key,
            generation: job.generation,
            request: job.request,
            result,
        })
        .await;
}

async fn propose(node: &Node, decision: Decision) {
    let Decision::Propose(sync) = decision else {
        return;
    };
    let key = sync.gitops.clone();
    match node.propose(Op::GitopsSync { sync }, None).await {
        Ok(crate::state::CommandResult::Rejected { reason }) => {
            tracing::warn!("gitops {key}: sync refused: {reason}");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("gitops {key}: {e}"),
    }
}

#[cfg(test)]
mod tests;
