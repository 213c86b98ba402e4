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
//! parsed commit it says what to propose (`smr_core::repo_sync`). Only the leader runs the loop; a new leader starts
//! with an empty cache, fetches once, and finds nothing to do when the last sync completed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};

use crate::definitions::{self, Kind, ObjectKey};
use crate::node::{Node, now_ms};
use crate::state::{ClusterState, Op};
use smr_core::repo_sync::{
    DEFAULT_INTERVAL, Decision, Desired, RepoSpecError, decide, failed, repo_spec, short,
};

/// How many repositories are fetched at once.
const PARALLEL_FETCHES: usize = 4;

/// Why a commit's definitions are not applied.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("{0}")]
    Definition(#[from] definitions::DefinitionError),
    #[error("{file}: {key} is also defined in {first}")]
    Duplicate {
        file: String,
        key: ObjectKey,
        first: String,
    },
}

/// Parses and validates every file of a checkout; the first error names file, line and field.
pub fn parse_checkout(
    checkout: &gitops::Checkout,
    generation: u64,
) -> Result<Desired, CheckoutError> {
    let mut objects = BTreeMap::new();
    let mut origin: BTreeMap<ObjectKey, &str> = BTreeMap::new();
    for file in &checkout.files {
        let parsed = definitions::parse_str(&file.path, &file.text)?;
        for object in parsed {
            let key = object.key();
            if let Some(first) = origin.insert(key.clone(), &file.path) {
                return Err(CheckoutError::Duplicate {
                    file: file.path.clone(),
                    key,
                    first: first.to_string(),
                });
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
    let mut changes = node.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut trackers: HashMap<ObjectKey, Tracker> = HashMap::new();
    let mut leading = false;
    loop {
        let mut fetched = None;
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = changes.changed() => {},
            _ = tick.tick() => {},
            Some(f) = rx.recv() => fetched = Some(f),
        }
        if !node.is_leader() {
            if leading {
                trackers.clear();
                leading = false;
            }
            continue;
        }
        leading = true;
        let Ok(state) = node.state(crate::node::Consistency::Stale).await else {
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
                Ok(mut desired) => {
                    // Sealed as the state holds them: an unchanged secret is no drift.
                    if let Some(key) = node.sealing_key(Some(&*state)).await {
                        for object in desired.objects.values_mut() {
                            crate::secrets::seal_object(key, object);
                        }
                    }
                    t.desired = Some(Arc::new(desired));
                    t.evaluated = Some(state.revision);
                    let desired = t.desired.clone().expect("just set");
                    let desired = as_state_holds(&node, &state, desired).await;
                    let decision = decide(&state, &f.key, &desired, f.request, now_ms());
                    propose(&node, decision).await;
                }
                Err((head, message)) => {
                    tracing::warn!("gitops {}: {message}", f.key);
                    // The last good commit no longer describes the repository: comparing the
                    // cluster with it between fetches would report "synced" at that commit and
                    // overwrite this error within milliseconds. Until a fetch succeeds again,
                    // nothing is applied and the error stands (as Flux and Argo CD do with a
                    // revision that does not build).
                    t.desired = None;
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
                let desired = as_state_holds(&node, &state, desired).await;
                let decision = decide(&state, &key, &desired, 0, now_ms());
                propose(&node, decision).await;
            }
        }
    }
}

/// `desired` (sealed) with each secret the state still holds in clear, unchanged, as it is
/// stored ([`crate::state::clear_secrets`]): no drift before `Op::SealSecrets` seals it, and no
/// new generation from a sync. The same `desired` when there is none.
async fn as_state_holds(node: &Node, state: &ClusterState, desired: Arc<Desired>) -> Arc<Desired> {
    let Some(key) = node.sealing_key(Some(state)).await else {
        return desired;
    };
    let seal = |o: &mut definitions::Object| crate::secrets::seal_object(key, o);
    let stored: Vec<_> = desired
        .objects
        .values()
        .filter_map(|o| crate::state::clear_secrets::as_stored(state, o, seal))
        .collect();
    if stored.is_empty() {
        return desired;
    }
    let mut desired = (*desired).clone();
    for object in stored {
        desired.objects.insert(object.key(), object);
    }
    Arc::new(desired)
}

struct Job {
    key: ObjectKey,
    generation: u64,
    request: u64,
    spec: Result<gitops::RepoSpec, RepoSpecError>,
}

async fn fetch(
    fetcher: gitops::Fetcher,
    slots: Arc<Semaphore>,
    tx: mpsc::Sender<Fetched>,
    job: Job,
) {
    let _slot = slots.acquire().await;
    let result = match job.spec {
        Err(e) => Err((None, e.to_string())),
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
                            .map_err(|e| format!("parsing: {e}"))
                            .and_then(|parsed| parsed.map_err(|e| e.to_string()));
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
