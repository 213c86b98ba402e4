//! Replica reports, batched (issue 14).
//!
//! ```text
//!  controllers::replicas (every node) --Node::report(delta)--+
//!  api internal/report (simulated nodes) --Node::report_here-+--> pending --(two flushers at a time)-->
//!      Op::Reports { merge_reports(oldest, up to 256 KiB) } --Node::propose--> one log entry each
//! ```
//! Reports that arrive while batches are being proposed wait for one to be committed and then go
//! together in the next one (group commit): under load the number of log entries follows the
//! commit rate, not the number of nodes. Each caller learns from the entry's result whether its
//! node must send a full report (its delta built on a report the state does not hold).

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::{Consistency, Node, NodeError};
use crate::state::{CommandResult, NodeId, Op, ReportDelta, merge_reports};
use crate::store::batch::{cut, json_size};

/// What became of one report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reported {
    Applied,
    /// The delta was based on a report the state does not hold: send the whole list.
    SendFull,
}

type Answer = Result<CommandResult, String>;

/// Most bytes (as JSON) of the reports in one entry: a burst of full reports (every node
/// starting again) goes in several, each far under etcd's request limit (1.5 MiB) and a Raft
/// entry's group-commit bound. A larger lone report goes alone.
const BATCH_BYTES: usize = 256 * 1024;

/// Report entries being proposed at once. A node has one report in flight at a time (it waits
/// for the answer before its next), so two entries never hold reports of one node that depend
/// on each other.
const IN_FLIGHT: usize = 2;

/// A report waiting for its batch: its size as JSON and where its entry's result goes.
struct Pending {
    delta: ReportDelta,
    size: usize,
    answer: oneshot::Sender<Answer>,
}

/// Reports waiting for the next batch, and the flushers' turns.
pub(crate) struct Batcher {
    pending: Mutex<Vec<Pending>>,
    turns: tokio::sync::Semaphore,
    max_bytes: usize,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher {
            pending: Mutex::default(),
            turns: tokio::sync::Semaphore::new(IN_FLIGHT),
            max_bytes: BATCH_BYTES,
        }
    }
}

/// `SMR_TEST_LEGACY_REPORTS=1` (tests only): this node says it does not read delta reports, as
/// the version before them, and reports in full.
pub const TEST_LEGACY_ENV: &str = "SMR_TEST_LEGACY_REPORTS";

/// Whether this node plays the version before delta reports ([`TEST_LEGACY_ENV`]).
pub fn test_legacy() -> bool {
    static LEGACY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LEGACY.get_or_init(|| {
        let legacy = std::env::var(TEST_LEGACY_ENV).is_ok_and(|v| v == "1");
        if legacy {
            tracing::warn!(
                "{TEST_LEGACY_ENV}=1: playing a version without delta reports (tests only)"
            );
        }
        legacy
    })
}

impl Batcher {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `delta` and waits for the entry it goes in: proposed by this caller with `propose`
    /// (with the reports queued before it, merged, in entries of at most `max_bytes`) when fewer
    /// than [`IN_FLIGHT`] batches are in flight, else by the caller whose turn comes first.
    /// Answers the entry's result.
    pub(crate) async fn submit<F, Fut>(&self, delta: ReportDelta, mut propose: F) -> Answer
    where
        F: FnMut(Op) -> Fut,
        Fut: std::future::Future<Output = Answer>,
    {
        let (tx, mut rx) = oneshot::channel();
        // Sized here, not under the queue's lock.
        let size = json_size(&delta);
        self.pending().push(Pending {
            delta,
            size,
            answer: tx,
        });
        let Ok(turn) = self.turns.acquire().await else {
            return Err("the report batcher is closed".to_string());
        };
        loop {
            if let Ok(answer) = rx.try_recv() {
                // Went out in this caller's entry, or in the batch of a caller before.
                return answer;
            }
            // The oldest reports, up to the bound: this caller's is among them, in a later
            // entry of this turn, or in the entry of a caller whose turn runs alongside.
            let batch: Vec<_> = {
                let mut pending = self.pending();
                let take = cut(pending.iter().map(|p| p.size), usize::MAX, self.max_bytes);
                pending.drain(..take).collect()
            };
            if batch.is_empty() {
                // Taken by the turn alongside: its answer comes from there.
                drop(turn);
                return rx
                    .await
                    .unwrap_or_else(|_| Err("the report batch lost its answer".to_string()));
            }
            let (deltas, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.delta, p.answer)).unzip();
            crate::metrics::report_batch(deltas.len());
            let result = propose(Op::Reports {
                reports: merge_reports(deltas),
            })
            .await;
            for answer in answers {
                let _ = answer.send(result.clone());
            }
        }
    }
}

impl Node {
    /// Whether every node that applies log entries reads [`Op::Reports`]
    /// ([`Node::members_support`]: asked again at most every 10 s while one does not, never
    /// again once all do).
    pub async fn members_read_report_deltas(&self) -> bool {
        self.members_support(super::features::Feature::ReportDeltas)
            .await
    }

    /// Proposes a node's whole report as one entry of its own ([`Op::Report`]), as the version
    /// before delta reports did: while a node that applies entries would not read [`Op::Reports`].
    pub async fn report_in_full(
        &self,
        node: NodeId,
        seq: u64,
        at_ms: u64,
        replicas: Vec<crate::state::ReplicaReport>,
    ) -> Result<(), NodeError> {
        let report = crate::state::NodeReport {
            seq,
            at_ms,
            replicas,
        };
        match self.propose(Op::Report { node, report }, None).await? {
            CommandResult::Rejected { reason } => Err(NodeError::Conflict(reason)),
            _ => Ok(()),
        }
    }

    /// Proposes a node's report together with the others that arrive meanwhile: one
    /// [`Op::Reports`] entry per batch (forwarded to the leader when this node does not lead).
    pub async fn report(&self, delta: ReportDelta) -> Result<Reported, NodeError> {
        let node = delta.node;
        let answer = self
            .reports
            .submit(delta, |op| async move {
                self.propose(op, None).await.map_err(|e| e.to_string())
            })
            .await;
        match answer {
            Ok(CommandResult::Reported {
                resend, unknown, ..
            }) => {
                if unknown.contains(&node) {
                    Err(NodeError::NotFound(format!("node {node}")))
                } else if resend.contains(&node) {
                    Ok(Reported::SendFull)
                } else {
                    Ok(Reported::Applied)
                }
            }
            Ok(CommandResult::Rejected { reason }) => Err(NodeError::Conflict(reason)),
            Ok(other) => Err(NodeError::Internal(format!(
                "a report batch answered {other:?}"
            ))),
            Err(why) => Err(NodeError::Unavailable(why)),
        }
    }

    /// A report received from another node over the API: `cert_name` is the name in the
    /// caller's node certificate, and a node reports for itself only.
    pub async fn report_here(
        &self,
        delta: ReportDelta,
        cert_name: &str,
    ) -> Result<Reported, NodeError> {
        let state = self.state(Consistency::Stale).await?;
        let Some(record) = state.nodes.get(&delta.node) else {
            return Err(NodeError::NotFound(format!("node {}", delta.node)));
        };
        if record.name != cert_name {
            return Err(NodeError::Forbidden(format!(
                "the certificate of {cert_name} cannot report for node {} ({})",
                delta.node, record.name
            )));
        }
        drop(state);
        self.report(delta).await
    }
}

/// The report to send after `last` (the replicas and sequence number of the last report the
/// state took, if any): a delta on it, or the whole list. `None`: nothing changed.
pub fn next_report(
    node: NodeId,
    seq: u64,
    at_ms: u64,
    last: Option<&(u64, Vec<crate::state::ReplicaReport>)>,
    replicas: &[crate::state::ReplicaReport],
) -> Option<ReportDelta> {
    match last {
        Some((base, before)) => ReportDelta::between(node, seq, at_ms, *base, before, replicas),
        None => Some(ReportDelta::full(node, seq, at_ms, replicas.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    fn report(node: NodeId) -> ReportDelta {
        ReportDelta::full(node, 1, 0, Vec::new())
    }

    fn nodes_of(op: &Op) -> Vec<NodeId> {
        match op {
            Op::Reports { reports } => reports.iter().map(|r| r.node).collect(),
            other => panic!("not reports: {other:?}"),
        }
    }

    fn reported() -> Answer {
        Ok(CommandResult::Reported {
            revision: 1,
            resend: vec![],
            unknown: vec![],
        })
    }

    /// Node `node`'s report submitted on a task; its entry, if this caller proposes one, is
    /// recorded in `proposed` and then held until `held` is released.
    fn submit(
        batcher: &Arc<Batcher>,
        proposed: &Arc<Mutex<Vec<Vec<NodeId>>>>,
        delta: ReportDelta,
        held: Option<oneshot::Receiver<()>>,
    ) -> tokio::task::JoinHandle<Answer> {
        let (batcher, proposed) = (batcher.clone(), proposed.clone());
        let mut held = held;
        tokio::spawn(async move {
            batcher
                .submit(delta, |op| {
                    let (proposed, held) = (proposed.clone(), held.take());
                    async move {
                        proposed.lock().unwrap().push(nodes_of(&op));
                        if let Some(held) = held {
                            let _ = held.await;
                        }
                        reported()
                    }
                })
                .await
        })
    }

    #[tokio::test]
    async fn reports_queued_while_batches_are_in_flight_go_together_in_the_next_entry() {
        let batcher = Arc::new(Batcher::default());
        let proposed: Arc<Mutex<Vec<Vec<NodeId>>>> = Arc::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Nodes 1 and 2 each go out alone (two entries in flight), held until released.
        let mut held = Vec::new();
        for node in 1..=2 {
            let (release, hold) = oneshot::channel::<()>();
            held.push((
                release,
                submit(&batcher, &proposed, report(node), Some(hold)),
            ));
            while proposed.lock().unwrap().len() < node as usize {
                assert!(Instant::now() < deadline, "batch {node} is not proposed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Eight more arrive meanwhile: no turn is free.
        let others: Vec<_> = (3..=10)
            .map(|node| submit(&batcher, &proposed, report(node), None))
            .collect();
        while batcher.pending().len() < 8 {
            assert!(Instant::now() < deadline, "the reports are not queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (release, first) in held {
            release.send(()).expect("the batch waits");
            assert_eq!(first.await.expect("joined"), reported());
        }
        for other in others {
            assert_eq!(other.await.expect("joined"), reported());
        }
        assert_eq!(
            *proposed.lock().unwrap(),
            vec![vec![1], vec![2], (3..=10).collect::<Vec<NodeId>>()],
            "one entry each for the two in flight, one for the eight that arrived during them"
        );
    }

    #[tokio::test]
    async fn a_burst_larger_than_the_bound_goes_in_several_entries_each_under_it() {
        let replicas = |node: NodeId| {
            let replica = |index| crate::state::ReplicaReport {
                key: "containers/g/n".parse().unwrap(),
                index,
                name: format!("g-n-{index}"),
                container_id: None,
                phase: "running".into(),
                ready: true,
                ip: None,
                restarts: 0,
                generation: 1,
                image: "busybox".into(),
                started_ms: None,
                message: None,
                ips: Default::default(),
            };
            ReportDelta::full(node, 1, 0, (1..=20).map(replica).collect())
        };
        let one = json_size(&replicas(1));
        let batcher = Arc::new(Batcher {
            max_bytes: one * 3,
            ..Batcher::default()
        });
        let proposed: Arc<Mutex<Vec<Vec<NodeId>>>> = Arc::default();
        // Eight full reports queued before a caller takes a turn.
        let turns = batcher.turns.acquire_many(IN_FLIGHT as u32).await;
        let callers: Vec<_> = (1..=8)
            .map(|node| submit(&batcher, &proposed, replicas(node), None))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while batcher.pending().len() < 8 {
            assert!(Instant::now() < deadline, "the reports are not queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(turns);
        for caller in callers {
            assert_eq!(
                caller.await.expect("joined"),
                reported(),
                "every caller answered"
            );
        }
        // Every report has the same size: three to an entry is the bound.
        assert_eq!(
            *proposed.lock().unwrap(),
            vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8]],
            "oldest first, three to an entry"
        );
    }
}
