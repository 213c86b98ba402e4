//! Group commit: many proposals per Raft entry, so per log append and fsync.
//!
//! ```text
//!  write(cmd) --queue--> batcher task: waits for a free in-flight slot, takes what is queued
//!                        (up to MAX_COUNT commands, MAX_BYTES), proposes it as one entry
//!  caller <-- its own result <-- the entry's results, one per command, in order
//! ```
//! While [`MAX_IN_FLIGHT`] entries are being committed, new writes gather in the queue; the next
//! entry takes them all (up to the bounds). Commands written together ([`Batcher::write_all`],
//! a placement pass) are one group: the group goes whole into one entry, past the bounds if it
//! must, so a reader never sees part of it applied. A lone command goes as a plain
//! [`Proposal::One`], encoded exactly as entries were before batching. While a member of the
//! cluster runs an earlier version (during a rolling upgrade: its Raft RPC server does not
//! announce [`super::net::FEATURES_HEADER`] `batch`), every command goes as its own entry, which
//! that version reads. Each command of a batch is applied on its own ([`apply_proposal`]): a
//! refused one (a conflict, a validation error) answers only its caller, and each caller gets
//! its own revision. A Raft error (not the leader, no quorum in time) answers every member of
//! the entry, as it would have answered each alone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::net::Peers;
use super::{Raft, WriteError, lock, write_error};
use crate::state::{ClusterState, Command, CommandResult};

/// Most commands in one entry.
pub const MAX_COUNT: usize = 512;
/// Most bytes (as JSON, estimated) of the commands in one entry; a larger lone command goes alone.
pub const MAX_BYTES: usize = 1024 * 1024;
/// Entries being committed at once; further writes wait in the queue and go together.
pub const MAX_IN_FLIGHT: usize = 2;

/// What one Raft entry carries: one command (as before batching) or several.
///
/// In JSON a lone command is the command itself, so entries written before batching read back
/// unchanged; a batch is `{"batch": [command, ...]}`.
// A lone command is the common entry: kept inline rather than boxed (one allocation less).
///
/// Read through [`RawProposal`], a plain struct, not as an untagged enum: serde buffers an
/// untagged enum's input, and a buffered JSON map key ("1") no longer reads as a number, so
/// every entry holding a placement (`BTreeMap<u32, _>`) failed to read on the followers.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "RawProposal")]
pub enum Proposal {
    Batch { batch: Vec<Command> },
    One(Command),
}

/// The fields of either form of a [`Proposal`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProposal {
    #[serde(default)]
    batch: Option<Vec<Command>>,
    #[serde(default)]
    op_id: Option<String>,
    #[serde(default)]
    at_ms: Option<u64>,
    #[serde(default)]
    op: Option<crate::state::Op>,
}

impl TryFrom<RawProposal> for Proposal {
    type Error = String;

    fn try_from(raw: RawProposal) -> Result<Proposal, String> {
        match raw {
            RawProposal {
                batch: Some(batch),
                op_id: None,
                at_ms: None,
                op: None,
            } => Ok(Proposal::Batch { batch }),
            RawProposal {
                batch: None,
                op_id: Some(op_id),
                at_ms: Some(at_ms),
                op: Some(op),
            } => Ok(Proposal::One(Command { op_id, at_ms, op })),
            _ => Err("a log entry is a batch or one command (op_id, at_ms and op)".into()),
        }
    }
}

impl Proposal {
    /// The commands, in the order they are applied.
    pub fn commands(&self) -> &[Command] {
        match self {
            Proposal::Batch { batch } => batch,
            Proposal::One(cmd) => std::slice::from_ref(cmd),
        }
    }

    fn of(mut commands: Vec<Command>) -> Proposal {
        if commands.len() == 1 {
            Proposal::One(commands.remove(0))
        } else {
            Proposal::Batch { batch: commands }
        }
    }
}

/// Applies every command of `proposal` in order, each on its own: one result per command.
pub fn apply_proposal(state: &mut ClusterState, proposal: &Proposal) -> Vec<CommandResult> {
    proposal.commands().iter().map(|c| state.apply(c)).collect()
}

/// How many of the queued commands (their sizes in bytes, oldest first) go into the next entry:
/// at least one (a command larger than `max_bytes` goes alone), at most `max_count`, and no
/// more than fit in `max_bytes` together. Pure.
pub fn cut(sizes: impl IntoIterator<Item = usize>, max_count: usize, max_bytes: usize) -> usize {
    cut_groups(
        sizes.into_iter().map(|size| (1, size)),
        max_count,
        max_bytes,
    )
}

/// [`cut`] over groups of commands, each `(commands, bytes)`, never splitting one: how many
/// groups go into the next entry. The first group goes whatever its size; the next ones while
/// the entry stays within `max_count` commands and `max_bytes`. Pure.
pub fn cut_groups(
    groups: impl IntoIterator<Item = (usize, usize)>,
    max_count: usize,
    max_bytes: usize,
) -> usize {
    let mut taken = 0;
    let (mut count, mut bytes) = (0usize, 0usize);
    for (n, size) in groups {
        if taken > 0 && (count + n > max_count.max(1) || bytes + size > max_bytes) {
            break;
        }
        taken += 1;
        count += n;
        bytes += size;
    }
    taken
}

/// Each member's answer from the entry's outcome: its own result, or the entry's error for all.
/// Pure.
pub fn route(
    members: usize,
    outcome: Result<Vec<CommandResult>, WriteError>,
) -> Vec<Result<CommandResult, WriteError>> {
    match outcome {
        Ok(results) if results.len() == members => results.into_iter().map(Ok).collect(),
        Ok(results) => {
            let why = format!(
                "the state machine answered {} results for an entry of {members} commands",
                results.len()
            );
            (0..members)
                .map(|_| Err(WriteError::Fatal(why.clone())))
                .collect()
        }
        Err(e) => (0..members).map(|_| Err(e.clone())).collect(),
    }
}

/// The size of `value` as JSON, without building it.
pub fn json_size<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

type Reply = oneshot::Sender<Result<CommandResult, WriteError>>;

struct Queued {
    cmd: Command,
    reply: Reply,
}

/// Commands written together: they go into one entry.
struct Group {
    members: Vec<Queued>,
    bytes: usize,
}

/// The queue in front of the Raft core; clones share it.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Group>,
}

impl Batcher {
    /// Starts the batcher task; it ends when every clone of the batcher is dropped.
    pub fn start(
        raft: Raft,
        timeout: Duration,
        in_doubt: Arc<std::sync::Mutex<VecDeque<String>>>,
        peers: Arc<Peers>,
    ) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, raft, timeout, in_doubt, peers));
        Batcher { tx }
    }

    /// Queues `cmd` and waits for its own result.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let mut results = self.write_all(vec![cmd]).await;
        results.pop().unwrap_or_else(|| {
            Err(WriteError::Fatal(
                "the batcher answered no result for a write".into(),
            ))
        })
    }

    /// Queues `commands` as one group (proposed in one entry, in order) and waits for their
    /// results, one per command.
    pub async fn write_all(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<CommandResult, WriteError>> {
        let mut answers = Vec::with_capacity(commands.len());
        let mut members = Vec::with_capacity(commands.len());
        let mut bytes = 0;
        for cmd in commands {
            let (reply, answer) = oneshot::channel();
            bytes += json_size(&cmd);
            members.push(Queued { cmd, reply });
            answers.push(answer);
        }
        if members.is_empty() {
            return Vec::new();
        }
        if self.tx.send(Group { members, bytes }).is_err() {
            return answers
                .iter()
                .map(|_| Err(WriteError::Unavailable("the store is shutting down".into())))
                .collect();
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(answer.await.unwrap_or_else(|_| {
                Err(WriteError::Unavailable(
                    "the store shut down before the write was proposed".into(),
                ))
            }));
        }
        results
    }
}

/// Whether every other member of the cluster reads batched entries.
pub(super) fn members_read_batches(raft: &Raft, peers: &Peers) -> bool {
    let metrics = raft.metrics().borrow().clone();
    let me = metrics.id;
    let others: Vec<_> = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| *id != me)
        .collect();
    peers.all_batch(others)
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Group>,
    raft: Raft,
    timeout: Duration,
    in_doubt: Arc<std::sync::Mutex<VecDeque<String>>>,
    peers: Arc<Peers>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut queue: VecDeque<Group> = VecDeque::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if queue.is_empty() {
            match rx.recv().await {
                Some(q) => queue.push_back(q),
                None => return,
            }
        }
        while let Ok(q) = rx.try_recv() {
            queue.push_back(q);
        }
        if !members_read_batches(&raft, &peers) {
            // A member would not read a batch: each command is its own entry, all proposed at
            // once (openraft appends concurrent proposals together), as before batching.
            drop(slot);
            for q in queue.drain(..).flat_map(|g| g.members) {
                tokio::spawn(propose(
                    raft.clone(),
                    vec![q.cmd],
                    vec![q.reply],
                    timeout,
                    in_doubt.clone(),
                    None,
                ));
            }
            continue;
        }
        let n = cut_groups(
            queue.iter().map(|g| (g.members.len(), g.bytes)),
            MAX_COUNT,
            MAX_BYTES,
        );
        let (commands, replies): (Vec<Command>, Vec<Reply>) = queue
            .drain(..n)
            .flat_map(|g| g.members)
            .map(|q| (q.cmd, q.reply))
            .unzip();
        tokio::spawn(propose(
            raft.clone(),
            commands,
            replies,
            timeout,
            in_doubt.clone(),
            Some(slot),
        ));
    }
}

/// Proposes `commands` as one entry and answers each member; frees `slot` once committed.
async fn propose(
    raft: Raft,
    commands: Vec<Command>,
    replies: Vec<Reply>,
    timeout: Duration,
    in_doubt: Arc<std::sync::Mutex<VecDeque<String>>>,
    slot: Option<OwnedSemaphorePermit>,
) {
    let n = commands.len();
    let op_ids: Vec<String> = commands.iter().map(|c| c.op_id.clone()).collect();
    let proposal = Proposal::of(commands);
    let started = std::time::Instant::now();
    let written = tokio::time::timeout(timeout, raft.client_write(proposal)).await;
    crate::metrics::store_entry(n, started.elapsed());
    let outcome = match written {
        Ok(Ok(response)) => Ok(response.data),
        Ok(Err(e)) => Err(write_error(e)),
        Err(_) => {
            let mut in_doubt = lock(&in_doubt);
            in_doubt.extend(op_ids);
            while in_doubt.len() > crate::state::DEDUP_WINDOW {
                in_doubt.pop_front();
            }
            Err(WriteError::Unknown(format!(
                "the write was not committed within {timeout:?} (no quorum?)"
            )))
        }
    };
    drop(slot);
    for (reply, answer) in replies.into_iter().zip(route(n, outcome)) {
        // A caller that went away no longer waits for its answer.
        let _ = reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Op, Outcome};

    fn cmd(op_id: &str, op: Op) -> Command {
        Command {
            op_id: op_id.into(),
            at_ms: 1,
            op,
        }
    }

    #[test]
    fn a_queue_is_cut_by_count_and_bytes() {
        assert_eq!(cut([10, 10, 10, 10], 3, 1000), 3);
        assert_eq!(cut([10, 10, 10, 10], 10, 25), 2);
        assert_eq!(cut([10, 10, 10, 10], 10, 30), 3);
        // A command larger than the bound goes alone, never waits for ever.
        assert_eq!(cut([5000, 10], 10, 100), 1);
        assert_eq!(cut([10, 5000, 10], 10, 100), 1);
        assert_eq!(cut(Vec::<usize>::new(), 10, 100), 0);
        assert_eq!(cut([1, 1], 0, 100), 1);
    }

    /// Commands written together are never split across entries: the group goes whole, past
    /// the bounds if it is larger, and the next group waits for the next entry when it would
    /// not fit beside it.
    #[test]
    fn a_group_goes_whole_into_one_entry() {
        assert_eq!(cut_groups([(3, 30), (2, 20), (1, 10)], 10, 1000), 3);
        assert_eq!(cut_groups([(3, 30), (2, 20), (1, 10)], 4, 1000), 1);
        assert_eq!(cut_groups([(3, 30), (2, 20), (1, 10)], 5, 1000), 2);
        assert_eq!(cut_groups([(3, 30), (2, 20), (1, 10)], 10, 45), 1);
        // 16 placement proposals of 256 KiB written together: one entry of 4 MiB.
        assert_eq!(cut_groups([(16, 4 << 20), (1, 10)], 512, 1 << 20), 1);
        assert_eq!(cut_groups([(600, 600)], 512, 1 << 20), 1);
        assert_eq!(cut_groups(Vec::<(usize, usize)>::new(), 10, 100), 0);
    }

    #[test]
    fn each_member_gets_its_own_result_or_the_entrys_error() {
        let results = vec![
            CommandResult::Done { revision: 4 },
            CommandResult::Rejected {
                reason: "no".into(),
            },
            CommandResult::Done { revision: 5 },
        ];
        let routed = route(3, Ok(results.clone()));
        let ok: Vec<CommandResult> = routed.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(ok, results);
        let routed = route(2, Err(WriteError::Unavailable("no quorum".into())));
        assert_eq!(routed.len(), 2);
        assert!(
            routed
                .iter()
                .all(|r| matches!(r, Err(WriteError::Unavailable(w)) if w == "no quorum"))
        );
        // A mismatch (never expected) fails every member rather than answering the wrong one.
        let routed = route(2, Ok(vec![CommandResult::Done { revision: 1 }]));
        assert!(
            routed
                .iter()
                .all(|r| matches!(r, Err(WriteError::Fatal(_))))
        );
    }

    #[test]
    fn a_refused_member_of_a_batch_answers_only_itself() {
        let mut state = ClusterState::default();
        let proposal = Proposal::of(vec![
            cmd("a", Op::Noop),
            cmd("b", Op::RemoveNode { id: 42 }),
            cmd(
                "c",
                Op::Delete {
                    keys: vec!["containers/x/y".parse().unwrap()],
                },
            ),
            cmd("d", Op::Noop),
        ]);
        let results = apply_proposal(&mut state, &proposal);
        assert_eq!(results.len(), 4);
        assert_eq!(results[0], CommandResult::Done { revision: 1 });
        assert!(matches!(results[1], CommandResult::Rejected { .. }));
        assert!(matches!(
            &results[2],
            CommandResult::Objects { outcomes, .. } if outcomes[0].outcome == Outcome::NotFound
        ));
        assert_eq!(results[3], CommandResult::Done { revision: 2 });
        assert_eq!(state.revision, 2);
        // Each member is remembered under its own op id: a retry gets its own result back.
        assert_eq!(state.recent_result("b"), Some(&results[1]));
        assert_eq!(state.recent_result("d"), Some(&results[3]));
    }

    #[test]
    fn a_lone_command_is_encoded_as_before_batching() {
        let one = cmd("a", Op::Noop);
        let proposal = Proposal::of(vec![one.clone()]);
        assert_eq!(
            serde_json::to_value(&proposal).unwrap(),
            serde_json::to_value(&one).unwrap()
        );
        // An entry written before batching (a plain command) reads back as one command.
        let old = serde_json::to_vec(&one).unwrap();
        let read: Proposal = serde_json::from_slice(&old).unwrap();
        assert_eq!(read, Proposal::One(one.clone()));
        let batch = Proposal::of(vec![one.clone(), cmd("b", Op::Noop)]);
        let text = serde_json::to_vec(&batch).unwrap();
        assert_eq!(serde_json::from_slice::<Proposal>(&text).unwrap(), batch);
    }

    #[test]
    fn entries_holding_placements_read_back_in_json_and_messagepack() {
        let placement: crate::scheduler::placement::Placement = serde_json::from_str(
            r#"{"replicas": {"1": {"node": 1, "generation": 1}, "2": {"node": 2, "generation": 1}}}"#,
        )
        .unwrap();
        let place = Op::Place {
            updates: vec![crate::state::PlacementUpdate {
                key: "containers/g/n".parse().unwrap(),
                generation: 1,
                placement: Some(placement),
                error: None,
            }],
        };
        for proposal in [
            Proposal::of(vec![cmd("a", place.clone())]),
            Proposal::of(vec![cmd("a", place.clone()), cmd("b", Op::Noop)]),
        ] {
            let json = serde_json::to_vec(&proposal).unwrap();
            let back: Proposal = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, proposal);
            let packed = super::super::codec::encode(&proposal).unwrap();
            let back: Proposal = super::super::codec::decode(&packed).unwrap();
            assert_eq!(back, proposal);
        }
        // Neither form, or both at once: refused, naming the forms.
        for bad in [
            r#"{"op_id": "a"}"#,
            r#"{"batch": [], "op_id": "a", "at_ms": 1, "op": "noop"}"#,
        ] {
            let err = serde_json::from_str::<Proposal>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("a batch or one command"), "{bad}: {err}");
        }
    }
}

#[cfg(test)]
mod peers_tests {
    use super::Peers;
    use crate::store::net::PeerFeatures;

    fn said(header: &str) -> PeerFeatures {
        PeerFeatures::parse(Some(header))
    }

    /// Batches go only once every other member announced it reads them: a peer not heard from,
    /// or one of an earlier version (no header), gets one command per entry.
    #[test]
    fn batches_wait_for_every_member_to_read_them() {
        let peers = Peers::default();
        assert!(peers.all_batch([]), "a one-node cluster batches");
        assert!(!peers.all_batch([2]), "a peer not heard from yet");
        peers.heard(2, said("batch"));
        peers.heard(3, PeerFeatures::parse(None));
        assert!(peers.all_batch([2]));
        assert!(!peers.all_batch([2, 3]), "node 3 runs an earlier version");
        peers.heard(3, said("batch,msgpack"));
        assert!(peers.all_batch([2, 3]));
    }
}
