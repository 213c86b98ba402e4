//! The Raft log: its entries in segment files ([`super::segments`]), the vote and the purge point
//! in redb, written by one thread, and the newest entries in memory.
//!
//! Entries are stored as MessagePack behind a tag byte; entries an earlier version wrote as JSON
//! still read ([`super::codec`]). The vote, commit point and purge point stay JSON (tiny). An
//! earlier version kept the entries in redb (table `logs`): opening moves them to a segment once.
//!
//! ```text
//!  append(entries) --> the tail (memory): readable at once --> returns; replication goes on
//!        \--> writer thread: takes every write queued (appends, truncations, purges, the vote,
//!             the commit point) --> segments: pwrite + one fdatasync; the vote and a purge
//!             point: one durable redb commit --> callbacks and answers
//! ```
//! An append puts its entries in the tail and queues them for the writer; it does not touch the
//! disk, so it never waits for a write in progress. Replication reads the tail, so sending
//! entries to a follower never waits for the leader's write in progress either. openraft hears
//! that the entries are flushed only after the writer's `fdatasync`: a leader counts its own
//! copy, and a follower acknowledges the entries, only once they are on disk. (openraft 0.9's
//! core awaits each append's flush before it goes on, and replicates an entry only after the
//! leader's own flush of it: the leader's fsync and the followers' follow one another. A version of openraft that
//! writes the log off the core would let them overlap; this store already allows it.) Writes
//! queued together share one `fdatasync`.
//!
//! The tail holds every entry not yet durable and the newest durable ones ([`TAIL_KEEP`]), so
//! that replication to followers that are up to date reads memory, not the disk; older entries
//! are read from the segments. Every entry below the tail's first index is durable there.
//!
//! Truncations, purges and the vote go through the writer too, in order with the appends, and
//! return once durable. The commit point is kept in memory and written, as a record in the
//! segments, with the writer's next append (see [`LogStore::save_committed`]). Everything the
//! writer wrote is durable, so a retry after an I/O error loses nothing it acknowledged:
//! [`Disk::run`] and [`Disk::run_io`] run the same operation again (see [`super::disk`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::disk::{Disk, DiskError};
use super::segments::Segments;
use super::{TypeConfig, codec, lock};
use crate::state::NodeId;

pub(super) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Entries kept in the tail once durable, at most (those not durable yet are always kept): enough
/// for followers a few entries behind; a follower further behind reads the segments.
pub(super) const TAIL_KEEP: usize = 64;
/// Bytes (encoded) of the entries kept in the tail once durable, at most: an entry in memory takes
/// a few times its encoded size, and the state's memory bound counts on a small constant.
pub(super) const TAIL_KEEP_BYTES: usize = 1024 * 1024;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

const WRITER_STOPPED: &str = "the Raft log's writer has stopped";

/// The newest entries of the log, contiguous, each with its encoded size and the number of the
/// append that put it there.
///
/// Durability is counted in appends, not indexes: a truncation can remove entries whose append is
/// still queued, and entries appended after it take the same indexes; an index-based mark would
/// call those durable when the earlier append's commit ends, and they could be dropped before the
/// writer has written them.
#[derive(Default)]
pub(super) struct Tail {
    entries: BTreeMap<u64, Held>,
    /// The number of the last append taken.
    appends: u64,
    /// Every append up to this number is durable in the segments.
    durable: u64,
    /// Encoded bytes of the entries held.
    bytes: usize,
}

/// An entry in the tail.
struct Held {
    entry: Entry<TypeConfig>,
    /// Its encoded size.
    size: usize,
    /// The number of the append that put it there.
    append: u64,
}

impl Tail {
    /// Numbers the next append; its entries are then [`Tail::push`]ed with that number.
    fn next_append(&mut self) -> u64 {
        self.appends += 1;
        self.appends
    }

    fn push(&mut self, entry: Entry<TypeConfig>, size: usize, append: u64) {
        self.bytes += size;
        let index = entry.log_id.index;
        if let Some(old) = self.entries.insert(
            index,
            Held {
                entry,
                size,
                append,
            },
        ) {
            self.bytes -= old.size;
        }
    }

    /// Forgets the entries in `range` (a truncation or a purge).
    fn remove(&mut self, range: impl RangeBounds<u64>) {
        let gone: Vec<u64> = self.entries.range(range).map(|(i, _)| *i).collect();
        for index in gone {
            if let Some(gone) = self.entries.remove(&index) {
                self.bytes -= gone.size;
            }
        }
    }

    /// Appends up to number `append` are durable: drops the oldest durable entries beyond what
    /// is kept.
    fn durable(&mut self, append: u64) {
        self.durable = self.durable.max(append);
        while self.entries.len() > TAIL_KEEP || self.bytes > TAIL_KEEP_BYTES {
            match self.entries.first_key_value() {
                Some((&index, held)) if held.append <= self.durable => {
                    self.bytes -= held.size;
                    self.entries.remove(&index);
                }
                _ => break,
            }
        }
    }

    /// The entries of `start..end` held here, and the first index held (everything below it is
    /// in the segments); `None` when nothing is held.
    fn read(&self, start: u64, end: Option<u64>) -> Option<(u64, Vec<Entry<TypeConfig>>)> {
        let (&first, _) = self.entries.first_key_value()?;
        let from = start.max(first);
        if end.is_some_and(|end| end <= from) {
            return Some((first, Vec::new()));
        }
        let upto = end.map_or(Bound::Unbounded, Bound::Excluded);
        let held = self
            .entries
            .range((Bound::Included(from), upto))
            .map(|(_, held)| held.entry.clone())
            .collect();
        Some((first, held))
    }

    fn last(&self) -> Option<LogId<NodeId>> {
        self.entries
            .last_key_value()
            .map(|(_, held)| held.entry.log_id)
    }

    #[cfg(test)]
    pub(super) fn indexes(&self) -> Vec<u64> {
        self.entries.keys().copied().collect()
    }
}

type Done<T> = oneshot::Sender<std::result::Result<T, String>>;

/// A write queued for the writer thread.
enum Write {
    Append {
        /// Its number in the tail.
        number: u64,
        entries: Vec<(u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Removes the entries from this index on.
    Truncate {
        from: u64,
        done: Done<()>,
    },
    /// Removes the entries up to this log id and records it as the purge point; answers how many
    /// were removed.
    Purge {
        upto: LogId<NodeId>,
        bytes: Vec<u8>,
        done: Done<u64>,
    },
    Vote {
        bytes: Vec<u8>,
        done: Done<()>,
    },
}

/// The log store; clones share the database, the segments, the tail and the writer.
#[derive(Clone)]
pub struct LogStore {
    disk: Arc<Disk>,
    segments: Arc<Mutex<Segments>>,
    writer: std::sync::mpsc::Sender<Write>,
    tail: Arc<Mutex<Tail>>,
    /// The newest commit point not written yet (JSON): the writer's next commit writes it.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn io_failed(why: String) -> StorageError<NodeId> {
    io_write(std::io::Error::other(why))
}

impl LogStore {
    pub fn new(disk: Arc<Disk>) -> std::result::Result<LogStore, DiskError> {
        disk.run("creating the log tables", |db| {
            let txn = db.begin_write()?;
            txn.open_table(LOGS)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(())
        })?;
        let segments = Arc::new(Mutex::new(open_segments(&disk)?));
        let (writer, queue) = std::sync::mpsc::channel();
        let tail = Arc::new(Mutex::new(Tail::default()));
        let committed = Arc::new(Mutex::new(None));
        let shared = Shared {
            disk: disk.clone(),
            segments: segments.clone(),
            tail: tail.clone(),
            committed: committed.clone(),
        };
        std::thread::Builder::new()
            .name("raft-log-write".into())
            .spawn(move || write(&shared, &queue))
            .map_err(|e| DiskError::Failed {
                what: "starting the Raft log's writer",
                source: redb::Error::Io(e),
            })?;
        Ok(LogStore {
            disk,
            segments,
            writer,
            tail,
            committed,
        })
    }

    /// The tail (for tests).
    #[cfg(test)]
    pub(super) fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        lock(&self.tail)
    }

    /// The indexes of the entries in the segments (for tests).
    #[cfg(test)]
    pub(super) fn stored(&self) -> Vec<u64> {
        lock(&self.segments).indexes()
    }

    /// Runs `op` on the blocking pool through [`Disk::run`].
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnMut(&Database) -> std::result::Result<T, redb::Error> + Send + 'static,
        on_error: fn(DiskError) -> StorageError<NodeId>,
    ) -> Result<T> {
        let disk = self.disk.clone();
        tokio::task::spawn_blocking(move || disk.run(what, op))
            .await
            .map_err(io_write)?
            .map_err(on_error)
    }

    /// Queues `write` for the writer and waits until it is durable.
    async fn through_writer<T>(&self, write: impl FnOnce(Done<T>) -> Write) -> Result<T> {
        let (done, answer) = oneshot::channel();
        self.writer
            .send(write(done))
            .map_err(|_| io_failed(WRITER_STOPPED.into()))?;
        answer
            .await
            .map_err(|_| io_failed(WRITER_STOPPED.into()))?
            .map_err(io_failed)
    }

    /// The encoded entries of `start..end` in the segments.
    async fn read_stored(&self, start: u64, end: Option<u64>) -> Result<Vec<Vec<u8>>> {
        let segments = self.segments.clone();
        tokio::task::spawn_blocking(move || lock(&segments).read(start, end))
            .await
            .map_err(io_read)?
            .map_err(io_read)
    }

    /// The id of the last entry in the segments.
    async fn last_stored(&self) -> Result<Option<LogId<NodeId>>> {
        let Some(last) = lock(&self.segments).last_index() else {
            return Ok(None);
        };
        let stored = self.read_stored(last, Some(last + 1)).await?;
        stored
            .first()
            .map(|bytes| {
                codec::decode::<Entry<TypeConfig>>(bytes)
                    .map(|entry| entry.log_id)
                    .map_err(io_read)
            })
            .transpose()
    }

    async fn read_meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>> {
        let bytes = self
            .blocking(
                "reading the Raft metadata",
                move |db| {
                    let txn = db.begin_read()?;
                    let table = txn.open_table(META)?;
                    Ok(table.get(key)?.map(|v| v.value().to_vec()))
                },
                io_read,
            )
            .await?;
        match bytes {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(io_read)?)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        // What the tail holds; below its first index everything is durable in the segments.
        let held = lock(&self.tail).read(start, end);
        let (stored_end, held) = match held {
            Some((first, held)) if first <= start => return Ok(held),
            Some((first, held)) => (Some(end.map_or(first, |end| end.min(first))), held),
            None => (end, Vec::new()),
        };
        let raw = self.read_stored(start, stored_end).await?;
        let mut entries = raw
            .iter()
            .map(|bytes| codec::decode(bytes).map_err(io_read))
            .collect::<Result<Vec<Entry<TypeConfig>>>>()?;
        entries.extend(held);
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED).await?;
        // The tail holds the newest entries; the segments are read only when it holds none.
        let held = lock(&self.tail).last();
        let last = match held {
            Some(last) => Some(last),
            None => self.last_stored().await?,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let bytes = serde_json::to_vec(vote).map_err(io_write)?;
        self.through_writer(|done| Write::Vote { bytes, done })
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_meta(VOTE).await
    }

    /// Kept in memory and written with the writer's next append (a commit record in the
    /// segments), not synced on its own: openraft calls this on every commit, before applying, so
    /// a write of its own cost an fsync per write on every node, on the write's path. A commit
    /// point older than the real one is still a commit point (every entry up to it is
    /// committed); after a crash the node applies up to the older point at start and learns the
    /// rest from the leader.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        *lock(&self.committed) = Some(serde_json::to_vec(&committed).map_err(io_write)?);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        let pending = lock(&self.committed).clone();
        let pending = pending.or_else(|| lock(&self.segments).committed().map(<[u8]>::to_vec));
        match pending {
            Some(bytes) => {
                Ok(serde_json::from_slice::<Option<LogId<NodeId>>>(&bytes).map_err(io_read)?)
            }
            None => Ok(self
                .read_meta::<Option<LogId<NodeId>>>(COMMITTED)
                .await?
                .flatten()),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| Ok((e.log_id.index, codec::encode(e).map_err(io_write)?)))
            .collect::<Result<_>>()?;
        let bytes: u64 = encoded.iter().map(|(_, b)| b.len() as u64).sum();
        self.disk.appended(bytes);
        // Queued under the tail's lock, so that the writer takes appends in their numbers' order.
        let mut tail = lock(&self.tail);
        let number = tail.next_append();
        for (entry, (_, raw)) in entries.into_iter().zip(&encoded) {
            tail.push(entry, raw.len(), number);
        }
        // Flushed only once the writer's durable commit of them is done.
        if let Err(std::sync::mpsc::SendError(Write::Append { callback, .. })) =
            self.writer.send(Write::Append {
                number,
                entries: encoded,
                callback,
            })
        {
            drop(tail);
            callback.log_io_completed(Err(std::io::Error::other(WRITER_STOPPED)));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let from = log_id.index;
        lock(&self.tail).remove(from..);
        self.through_writer(|done| Write::Truncate { from, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let bytes = serde_json::to_vec(&log_id).map_err(io_write)?;
        // The purge point and the removal in one transaction: a crash between them cannot leave
        // the log start and the recorded purge point disagreeing.
        let removed = self
            .through_writer(|done| Write::Purge {
                upto: log_id,
                bytes,
                done,
            })
            .await?;
        lock(&self.tail).remove(..=log_id.index);
        tracing::info!(
            "raft log purged up to index {} ({removed} entries in whole segments removed)",
            log_id.index
        );
        Ok(())
    }
}

/// What the writer thread shares with the log store.
struct Shared {
    disk: Arc<Disk>,
    segments: Arc<Mutex<Segments>>,
    tail: Arc<Mutex<Tail>>,
    committed: Arc<Mutex<Option<Vec<u8>>>>,
}

/// Opens the segments of `disk`'s data dir; an earlier version's log, in redb's `logs` table,
/// is moved into them first (written and synced as a segment, then removed from redb; a crash in
/// between finds the segment and only removes the table's rows again).
fn open_segments(disk: &Disk) -> std::result::Result<Segments, DiskError> {
    let mut segments = Segments::open(disk.dir(), true)?;
    let (old, purged) = disk.run("reading the Raft log (redb)", |db| {
        let txn = db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let mut old = Vec::new();
        for item in table.iter()? {
            let (index, bytes) = item?;
            old.push((index.value(), bytes.value().to_vec()));
        }
        let purged = txn
            .open_table(META)?
            .get(LAST_PURGED)?
            .map(|v| v.value().to_vec());
        Ok((old, purged))
    })?;
    if let Some(bytes) = purged {
        let purged: LogId<NodeId> =
            serde_json::from_slice(&bytes).map_err(|e| DiskError::Failed {
                what: "reading the Raft log's purge point",
                source: redb::Error::Io(std::io::Error::other(e)),
            })?;
        segments.forget_upto(purged.index);
    }
    if old.is_empty() {
        return Ok(segments);
    }
    if segments.is_empty() {
        segments.import(&old)?;
        tracing::info!(
            "raft log: moved {} entries from raft.redb to {}",
            old.len(),
            super::segments::DIR
        );
    }
    disk.run("removing the Raft log from redb", |db| {
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?.retain(|_, _| false)?;
        txn.commit()?;
        Ok(())
    })?;
    // Give the pages the log took back to the file system.
    if let Err(e) = disk.compact() {
        tracing::warn!("raft log moved out of raft.redb; {e}");
    }
    Ok(segments)
}

/// The encoded entries from index `from` on in `disk`'s data dir, read only (for recovery from a
/// stopped node's data): from the segments, or from redb where an earlier version left them.
pub(super) fn read_stopped(disk: &Disk, from: u64) -> std::result::Result<Vec<Vec<u8>>, String> {
    let segments = Segments::open(disk.dir(), false).map_err(|e| e.to_string())?;
    if !segments.is_empty() {
        return segments.read(from, None).map_err(|e| e.to_string());
    }
    disk.run("reading the Raft log", move |db| {
        let txn = db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        let mut raw = Vec::new();
        for item in table.range(from..)? {
            raw.push(item?.1.value().to_vec());
        }
        Ok(raw)
    })
    .map_err(|e| e.to_string())
}

/// The writer thread: takes every write queued, makes them all durable (one `fdatasync` of the
/// segments; one durable redb commit when a vote or a purge point is among them), then tells
/// openraft and the waiting callers. Ends when every [`LogStore`] is dropped.
fn write(shared: &Shared, queue: &std::sync::mpsc::Receiver<Write>) {
    while let Ok(first) = queue.recv() {
        // The commit point before the rest of the batch: openraft saves a commit point only after
        // appending the entries it covers, so every append it covers is queued by now and is
        // written in this batch, before the commit record, or was in an earlier one. Read after
        // the batch, it could cover an append queued meanwhile and not written: after a crash the
        // node would restart with a commit point beyond its log, which openraft cannot start from.
        let committed = lock(&shared.committed).clone();
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        let outcome = write_batch(shared, &batch, committed.as_deref());
        let outcome = outcome.map_err(|e| e.to_string());
        let appended = batch.iter().rev().find_map(|write| match write {
            Write::Append { number, .. } => Some(*number),
            _ => None,
        });
        if outcome.is_ok()
            && let Some(number) = appended
        {
            // The commit point went with the appends: no longer pending, unless a newer one came
            // meanwhile.
            let mut pending = lock(&shared.committed);
            if *pending == committed {
                *pending = None;
            }
            drop(pending);
            // What is durable now: every append of the batch.
            lock(&shared.tail).durable(number);
        }
        let mut removed = outcome.clone().unwrap_or_default().into_iter();
        for write in batch {
            let result = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
            match write {
                Write::Append { callback, .. } => {
                    callback.log_io_completed(result.map_err(std::io::Error::other))
                }
                Write::Truncate { done, .. } | Write::Vote { done, .. } => {
                    let _ = done.send(result);
                }
                Write::Purge { done, .. } => {
                    let _ = done.send(result.map(|()| removed.next().unwrap_or(0)));
                }
            }
        }
    }
}

/// Writes one batch durably, in order: the vote and the purge points in redb first (a purge
/// point is recorded before the segments it frees are deleted), then the appends, truncations
/// and purges on the segments, then one sync. Answers how many entries each purge removed.
fn write_batch(
    shared: &Shared,
    batch: &[Write],
    committed: Option<&[u8]>,
) -> std::result::Result<Vec<u64>, DiskError> {
    if batch
        .iter()
        .any(|w| matches!(w, Write::Vote { .. } | Write::Purge { .. }))
    {
        shared.disk.run("writing the Raft metadata", |db| {
            let txn = db.begin_write()?;
            {
                let mut meta = txn.open_table(META)?;
                for write in batch {
                    match write {
                        Write::Purge { bytes, .. } => {
                            meta.insert(LAST_PURGED, bytes.as_slice())?;
                        }
                        Write::Vote { bytes, .. } => {
                            meta.insert(VOTE, bytes.as_slice())?;
                        }
                        Write::Append { .. } | Write::Truncate { .. } => {}
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })?;
    }
    let mut segments = lock(&shared.segments);
    let mut removed = Vec::new();
    let mut appended = false;
    for write in batch {
        match write {
            Write::Append { entries, .. } => {
                segments.append(&shared.disk, entries, committed)?;
                appended = true;
            }
            Write::Truncate { from, .. } => segments.truncate(&shared.disk, *from)?,
            Write::Purge { upto, .. } => removed.push(segments.purge(&shared.disk, upto.index)?),
            Write::Vote { .. } => {}
        }
    }
    if appended {
        segments.sync(&shared.disk)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tail_tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    /// An append's commit ending after a truncation removed its entries, and entries of a later
    /// append took their indexes, must not let those later entries be dropped as durable: they
    /// are not in redb yet (redb still holds the truncated ones), so a read of them would return
    /// the wrong entries.
    #[test]
    fn entries_appended_after_a_truncation_stay_until_their_own_commit() {
        let mut tail = Tail::default();
        let first = tail.next_append();
        for index in 1..=10 {
            tail.push(entry(1, index), 10, first);
        }
        tail.durable(first);
        // Queued, not durable yet: 11..=80 of term 1.
        let second = tail.next_append();
        for index in 11..=80 {
            tail.push(entry(1, index), 10, second);
        }
        // A new leader's log wins from 20 on: truncated, and 20..=100 of term 2 appended.
        tail.remove(20..);
        let third = tail.next_append();
        for index in 20..=100 {
            tail.push(entry(2, index), 10, third);
        }
        // The second append's commit ends: only entries of appends up to it may go.
        tail.durable(second);
        let (first_held, held) = tail.read(1, None).expect("entries held");
        assert_eq!(
            first_held, 20,
            "entries of the first two appends go, none of the third"
        );
        assert!(held.iter().all(|e| e.log_id.leader_id.term == 2));
        assert_eq!(held.len(), 81);
        // Once the third is durable, the tail keeps the newest TAIL_KEEP.
        tail.durable(third);
        assert_eq!(tail.indexes().len(), TAIL_KEEP);
        assert_eq!(tail.indexes().last(), Some(&100));
    }
}
