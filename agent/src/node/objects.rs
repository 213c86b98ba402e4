//! Objects, events and DNS records as the API asks for them: apply (and its dry run), delete,
//! the event long poll, the `.private` records, signing with the CA key held here.

use std::time::Duration;

use super::{Consistency, Node, NodeError};
use crate::definitions::{Kind, Object, ObjectKey};
use crate::state::{Command, CommandResult, Event, Op, Outcome, restart_refusal};
use api_types::types::{ApplyResponse, DescribeView, DnsRecordView, SignRequest};

impl Node {
    /// Applies `objects` (validated already), or with `dry_run` shows what applying them would do
    /// to the current (linearizable) state, without writing anything.
    pub async fn apply(
        &self,
        objects: Vec<Object>,
        op_id: Option<String>,
        dry_run: bool,
    ) -> Result<ApplyResponse, NodeError> {
        let mut op = Op::Apply {
            objects,
            owner: None,
        };
        if dry_run {
            // Sealed as a real apply would be: an unchanged secret previews as unchanged.
            self.seal_secrets(&mut op).await;
            let state = self.state(Consistency::Linearizable).await?;
            let mut preview = (*state).clone();
            let command = Command {
                op_id: String::new(),
                at_ms: 0,
                op,
            };
            return objects_response(preview.apply(&command), true);
        }
        objects_response(self.propose(op, op_id).await?, false)
    }

    /// Deletes `keys`; each outcome says whether the object was there.
    pub async fn delete(
        &self,
        keys: Vec<ObjectKey>,
        op_id: Option<String>,
    ) -> Result<ApplyResponse, NodeError> {
        objects_response(self.propose(Op::Delete { keys }, op_id).await?, false)
    }

    /// Deletes one object: not found when it was not there.
    pub async fn delete_one(
        &self,
        key: ObjectKey,
        op_id: Option<String>,
    ) -> Result<ApplyResponse, NodeError> {
        let result = self
            .propose(
                Op::Delete {
                    keys: vec![key.clone()],
                },
                op_id,
            )
            .await?;
        if let CommandResult::Objects { outcomes, .. } = &result
            && outcomes.iter().all(|o| o.outcome == Outcome::NotFound)
        {
            return Err(NodeError::NotFound(key.to_string()));
        }
        objects_response(result, false)
    }

    /// Restarts the replicas of containers definition `key`, batch by batch (a new template
    /// generation for the same definition): not found when it is not there, a bad request for
    /// any other kind (refused before anything is proposed).
    pub async fn restart(
        &self,
        key: ObjectKey,
        op_id: Option<String>,
    ) -> Result<ApplyResponse, NodeError> {
        if key.kind != Kind::Containers {
            return Err(NodeError::BadRequest(restart_refusal(&key)));
        }
        let result = self
            .propose(Op::Restart { key: key.clone() }, op_id)
            .await?;
        if let CommandResult::Objects { outcomes, .. } = &result
            && outcomes.iter().all(|o| o.outcome == Outcome::NotFound)
        {
            return Err(NodeError::NotFound(key.to_string()));
        }
        objects_response(result, false)
    }

    /// The events after revision `since` (of `subject` only, if given), from this node's applied
    /// state; when there is none yet, waits up to `wait` for one.
    pub async fn events(
        &self,
        since: u64,
        subject: Option<&str>,
        wait: Duration,
    ) -> Result<Vec<Event>, NodeError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.subscribe();
        loop {
            let state = self.state(Consistency::Stale).await?;
            let events: Vec<_> = state
                .events
                .iter()
                .filter(|e| e.revision > since)
                .filter(|e| subject.is_none_or(|s| e.subject == s))
                .cloned()
                .collect();
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(events);
            }
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        }
    }

    /// An object (credentials redacted) with its placement error, replicas and events.
    pub async fn describe(
        &self,
        key: &ObjectKey,
        consistency: Consistency,
    ) -> Result<DescribeView, NodeError> {
        let state = self.state(consistency).await?;
        let object = state
            .objects
            .get(key)
            .map(crate::views::redacted)
            .ok_or_else(|| NodeError::NotFound(key.to_string()))?;
        let subject = key.to_string();
        Ok(DescribeView {
            object,
            placement_error: state.placement_errors.get(key).cloned(),
            replicas: crate::views::replicas(&state, Some(key)),
            events: state
                .events
                .iter()
                .filter(|e| e.subject == subject)
                .cloned()
                .collect(),
        })
    }

    /// The `*.private` records this node serves (computed from its applied state).
    pub async fn dns_records(&self) -> Result<Vec<DnsRecordView>, NodeError> {
        let state = self.state(Consistency::Stale).await?;
        Ok(crate::views::dns_records(&state)
            .iter()
            .map(|(name, ips)| DnsRecordView {
                name: format!("{name}."),
                addresses: ips.iter().map(|ip| ip.to_string()).collect(),
            })
            .collect())
    }

    /// Signs a CSR with the CA key this node holds or opens (another node's request); refused
    /// on a node that cannot sign.
    pub async fn sign_here(&self, req: SignRequest) -> Result<String, NodeError> {
        self.sign_locally(&req).await?.ok_or_else(|| {
            NodeError::Unavailable("this node cannot sign: it holds no cluster CA key".into())
        })
    }
}

/// The answer to an apply or a delete.
fn objects_response(result: CommandResult, dry_run: bool) -> Result<ApplyResponse, NodeError> {
    match result {
        CommandResult::Objects { revision, outcomes } => Ok(ApplyResponse {
            revision,
            outcomes,
            dry_run,
        }),
        CommandResult::Rejected { reason } => Err(NodeError::Conflict(reason)),
        other => Err(NodeError::Internal(format!("unexpected result {other:?}"))),
    }
}
