//! Replica reports, batched (issue 14).
//!
//! ```text
//!  controllers::replicas (every node) --Node::report(delta)--+
//!  api internal/report (simulated nodes) --Node::report_here-+--> pending --(one flusher at a time)-->
//!      Op::Reports { merge_reports(pending) } --Node::propose--> one log entry for all of them
//! ```
//! Reports that arrive while a batch is being proposed wait for it to be committed and then go
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

/// Reports waiting for the next batch, and the one flusher's turn.
pub(crate) struct Batcher {
    pending: Mutex<Vec<(ReportDelta, oneshot::Sender<Answer>)>>,
    turn: tokio::sync::Mutex<()>,
    max_bytes: usize,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher {
            pending: Mutex::default(),
            turn: tokio::sync::Mutex::default(),
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
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<(ReportDelta, oneshot::Sender<Answer>)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `delta` and waits for the entry it goes in: proposed by this caller with `propose`
    /// (with the reports queued before it, merged, in entries of at most `max_bytes`) when no
    /// batch is in flight, else by the caller whose turn comes first. Answers the entry's result.
    pub(crate) async fn submit<F, Fut>(&self, delta: ReportDelta, mut propose: F) -> Answer
    where
        F: FnMut(Op) -> Fut,
        Fut: std::future::Future<Output = Answer>,
    {
        let (tx, mut rx) = oneshot::channel();
        self.pending().push((delta, tx));
        let _turn = self.turn.lock().await;
        loop {
            if let Ok(answer) = rx.try_recv() {
                // Went out in this caller's entry, or in the batch of a caller before.
                return answer;
            }
            // The oldest reports, up to the bound: this caller's is among them, or in a later
            // entry of this turn.
            let batch: Vec<_> = {
                let mut pending = self.pending();
                let sizes = pending.iter().map(|(d, _)| json_size(d));
                let take = cut(sizes, usize::MAX, self.max_bytes);
                pending.drain(..take).collect()
            };
            if batch.is_empty() {
                return Err("the report batch lost its answer".to_string());
            }
            let (deltas, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
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

    #[tokio::test]
    async fn reports_queued_while_a_batch_is_in_flight_go_together_in_the_next_entry() {
        let batcher = Arc::new(Batcher::default());
        let proposed: Arc<Mutex<Vec<Vec<NodeId>>>> = Arc::default();
        let answer = || {
            Ok(CommandResult::Reported {
                revision: 1,
                resend: vec![],
                unknown: vec![],
            })
        };
        // Node 1's report goes out alone and its entry is held until released.
        let (release, held) = oneshot::channel::<()>();
        let first = {
            let (batcher, proposed) = (batcher.clone(), proposed.clone());
            tokio::spawn(async move {
                let mut held = Some(held);
                batcher
                    .submit(report(1), |op| {
                        let (proposed, held) = (proposed.clone(), held.take());
                        async move {
                            proposed.lock().unwrap().push(nodes_of(&op));
                            if let Some(held) = held {
                                let _ = held.await;
                            }
                            answer()
                        }
                    })
                    .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while proposed.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the first batch is not proposed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Nine more arrive meanwhile.
        let others: Vec<_> = (2..=10)
            .map(|node| {
                let (batcher, proposed) = (batcher.clone(), proposed.clone());
                tokio::spawn(async move {
                    batcher
                        .submit(report(node), |op| {
                            let proposed = proposed.clone();
                            async move {
                                proposed.lock().unwrap().push(nodes_of(&op));
                                answer()
                            }
                        })
                        .await
                })
            })
            .collect();
        while batcher.pending().len() < 9 {
            assert!(Instant::now() < deadline, "the reports are not queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.send(()).expect("the first batch waits");
        assert_eq!(first.await.expect("joined"), answer());
        for other in others {
            assert_eq!(other.await.expect("joined"), answer());
        }
        assert_eq!(
            *proposed.lock().unwrap(),
            vec![vec![1], (2..=10).collect::<Vec<NodeId>>()],
            "one entry for the first, one for the nine that arrived during it"
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
        // Eight full reports queued before the first caller takes its turn.
        let turn = batcher.turn.lock().await;
        let callers: Vec<_> = (1..=8)
            .map(|node| {
                let (batcher, proposed) = (batcher.clone(), proposed.clone());
                tokio::spawn(async move {
                    batcher
                        .submit(replicas(node), |op| {
                            let proposed = proposed.clone();
                            async move {
                                let Op::Reports { reports } = &op else {
                                    panic!("not reports: {op:?}")
                                };
                                let bytes: usize = reports.iter().map(json_size).sum();
                                assert!(bytes <= one * 3, "over the bound: {bytes}");
                                proposed.lock().unwrap().push(nodes_of(&op));
                                Ok(CommandResult::Reported {
                                    revision: 1,
                                    resend: vec![],
                                    unknown: vec![],
                                })
                            }
                        })
                        .await
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while batcher.pending().len() < 8 {
            assert!(Instant::now() < deadline, "the reports are not queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(turn);
        for caller in callers {
            assert!(
                caller.await.expect("joined").is_ok(),
                "every caller answered"
            );
        }
        assert_eq!(
            *proposed.lock().unwrap(),
            vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8]],
            "oldest first, three to an entry"
        );
    }
}
