//! Writes a follower forwards to the leader, batched (issue 14).
//!
//! ```text
//!  propose_command (follower) --ForwardToLeader--> queue --(a free turn, at most IN_FLIGHT)-->
//!      POST internal/propose-batch {commands: [every command queued for that leader]}
//!      --> leader: each command written as if sent alone (they join its group commit)
//!      <-- answers, one per command, in order: each caller gets its own
//! ```
//! With 64 clients spread over three nodes, two thirds of the writes reach a follower; one request
//! per write made the leader read and answer as many HTTP/TLS requests again as its own clients
//! sent (the bench's "spread" row was 20 % below the "leader" row). Commands that queue while
//! [`IN_FLIGHT`] requests are on the way go together in the next one.
//!
//! A failure of the request itself (not sent, no answer, refused) is every member's, as it would
//! have been for each alone. While a member of the cluster does not announce the route (a
//! rolling upgrade: [`Feature::ProposeBatch`]), every command is forwarded alone, as before. A
//! leader that answers the route as unknown (404: a node of the version before it, which joined
//! after this node saw every member announce it) gets that batch's commands one by one, and no
//! batch again while it leads.

use std::sync::Mutex;
use std::time::Instant;

use api_types::types::{ProposeAnswer, ProposeBatchRequest, ProposeBatchResponse, ProposeRequest};
use tokio::sync::{Semaphore, oneshot};

use super::features::Feature;
use super::{Forwarded, Node, NodeError};
use crate::state::{Command, CommandResult, NodeId};
use crate::store::RaftPeer;

/// Batches on the way to the leader at once, at most.
pub const IN_FLIGHT: usize = 2;

/// One command waiting to be forwarded.
struct Queued {
    command: Command,
    leader_id: Option<NodeId>,
    leader: RaftPeer,
    deadline: Instant,
    answer: oneshot::Sender<Forwarded<CommandResult>>,
}

/// Commands waiting for a turn, and the turns.
pub(crate) struct Forwarder {
    queue: Mutex<Vec<Queued>>,
    turns: Semaphore,
    /// The leader that answered the route as unknown, if one did.
    without_route: Mutex<Option<NodeId>>,
}

impl Default for Forwarder {
    fn default() -> Forwarder {
        Forwarder {
            queue: Mutex::new(Vec::new()),
            turns: Semaphore::new(IN_FLIGHT),
            without_route: Mutex::new(None),
        }
    }
}

impl Forwarder {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn without_route(&self) -> std::sync::MutexGuard<'_, Option<NodeId>> {
        self.without_route.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The commands queued for the leader of the first one (all of them, in order); the others
    /// stay for a later turn.
    fn take(&self) -> Vec<Queued> {
        let mut queue = self.queue();
        let Some(first) = queue.first() else {
            return Vec::new();
        };
        let (leader_id, addr) = (first.leader_id, first.leader.api_addr.clone());
        let (taken, rest) = std::mem::take(&mut *queue)
            .into_iter()
            .partition(|q| q.leader_id == leader_id && q.leader.api_addr == addr);
        *queue = rest;
        taken
    }
}

/// A copy of a whole request's error, for each of its commands: an answer relayed as it is,
/// any other as the unavailability it stands for.
fn copy(e: &NodeError) -> NodeError {
    match e {
        NodeError::Relayed { status, body } => NodeError::Relayed {
            status: *status,
            body: body.clone(),
        },
        other => NodeError::Unavailable(other.to_string()),
    }
}

/// Answers every caller of a batch with the same outcome (a failure of the whole request).
fn answer_all(
    answers: Vec<oneshot::Sender<Forwarded<CommandResult>>>,
    outcome: impl Fn() -> Forwarded<CommandResult>,
) {
    for tx in answers {
        let _ = tx.send(outcome());
    }
}

/// One command's answer in a batch, classed as [`Node::forward`] classes an answer to one.
fn classify(answer: ProposeAnswer) -> Forwarded<CommandResult> {
    match answer {
        ProposeAnswer::Done(result) => Forwarded::Done(result),
        ProposeAnswer::Failed { status, body } => {
            let e = NodeError::Relayed { status, body };
            match status {
                503 => Forwarded::NotApplied(e),
                504 => Forwarded::Unknown(e.to_string()),
                _ => Forwarded::Final(e),
            }
        }
    }
}

impl Node {
    /// Forwards `command` to the leader `leader`, for one attempt, with the other commands this
    /// node forwards meanwhile (one request for all, see the module doc).
    pub(super) async fn forward_write(
        &self,
        leader_id: Option<NodeId>,
        leader: &RaftPeer,
        command: Command,
        deadline: Instant,
    ) -> Forwarded<CommandResult> {
        let without_route = *self.forwarder.without_route();
        if leader_id.is_some_and(|id| without_route == Some(id))
            || !self.members_support(Feature::ProposeBatch).await
        {
            let body = ProposeRequest { command };
            return self
                .forward(leader_id, leader, "internal/propose", Some(&body), deadline)
                .await;
        }
        let (answer, mut rx) = oneshot::channel();
        self.forwarder.queue().push(Queued {
            command,
            leader_id,
            leader: leader.clone(),
            deadline,
            answer,
        });
        loop {
            let Ok(turn) = self.forwarder.turns.acquire().await else {
                return Forwarded::NotApplied(NodeError::Unavailable(
                    "the forwarder is closed".into(),
                ));
            };
            if let Ok(answer) = rx.try_recv() {
                return answer;
            }
            let batch = self.forwarder.take();
            if batch.is_empty() {
                // Taken by another caller's turn: its answer comes from there.
                drop(turn);
                return rx.await.unwrap_or_else(|_| {
                    Forwarded::Unknown("the forwarded batch lost its answer".into())
                });
            }
            self.send_batch(batch).await;
            if let Ok(answer) = rx.try_recv() {
                return answer;
            }
            // Ours went to another leader than this turn's batch: take another turn.
        }
    }

    /// Sends one batch and answers each of its callers.
    async fn send_batch(&self, batch: Vec<Queued>) {
        let deadline = batch
            .iter()
            .map(|q| q.deadline)
            .min()
            .expect("a batch is not empty");
        let (leader_id, leader) = (batch[0].leader_id, batch[0].leader.clone());
        crate::metrics::forward_batch(batch.len());
        let (commands, answers): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|q| (q.command, q.answer)).unzip();
        let count = commands.len();
        let body = ProposeBatchRequest { commands };
        let outcome = self
            .forward::<_, ProposeBatchResponse>(
                leader_id,
                &leader,
                "internal/propose-batch",
                Some(&body),
                deadline,
            )
            .await;
        match outcome {
            Forwarded::Done(response) if response.answers.len() == count => {
                for (answer, tx) in response.answers.into_iter().zip(answers) {
                    let _ = tx.send(classify(answer));
                }
            }
            Forwarded::Done(response) => {
                let why = format!(
                    "{} answered {} of {count} forwarded writes",
                    leader.name,
                    response.answers.len()
                );
                answer_all(answers, || Forwarded::Unknown(why.clone()));
            }
            Forwarded::NotApplied(e) => answer_all(answers, || Forwarded::NotApplied(copy(&e))),
            Forwarded::Unknown(why) => answer_all(answers, || Forwarded::Unknown(why.clone())),
            Forwarded::Final(NodeError::Relayed { status: 404, .. }) => {
                tracing::warn!(
                    "{} does not know internal/propose-batch (an earlier version): forwarding one by one",
                    leader.name
                );
                *self.forwarder.without_route() = leader_id;
                let alone = body.commands.into_iter().map(|command| {
                    let body = ProposeRequest { command };
                    let leader = &leader;
                    async move {
                        self.forward(leader_id, leader, "internal/propose", Some(&body), deadline)
                            .await
                    }
                });
                let outcomes = futures::future::join_all(alone).await;
                for (outcome, tx) in outcomes.into_iter().zip(answers) {
                    let _ = tx.send(outcome);
                }
            }
            Forwarded::Final(e) => answer_all(answers, || Forwarded::Final(copy(&e))),
        }
    }

    /// `internal/propose-batch` on the leader: each command written as if it came alone (they
    /// go into the group commit together), each answered on its own.
    pub async fn write_batch_here(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<CommandResult, NodeError>> {
        futures::future::join_all(commands.into_iter().map(|c| self.write_here(c))).await
    }
}
