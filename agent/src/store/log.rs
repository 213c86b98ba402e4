//! The Raft log, vote and commit point in redb, with durable commits.
//!
//! Entries are stored as MessagePack behind a tag byte; entries an earlier version wrote as JSON
//! still read ([`super::codec`]). The vote, commit point and purge point stay JSON (tiny).
//!
//! An append is committed without fsync and returns at once: the entries are readable, so the
//! leader replicates them while its own disk flushes (openraft's contract for
//! [`RaftLogStorage::append`]). A flusher thread then makes them durable with one fsync'd redb
//! commit for every append waiting at that moment (group commit across appends) and only then
//! tells openraft they are flushed: a leader counts its own copy, and a follower acknowledges the
//! entries, only once they are on disk.
//!
//! ```text
//!  append(entries) --> redb commit, no fsync (readable) --> returns; replication goes on
//!        \--> flusher: waits for what is queued --> one durable commit (fsync) --> callbacks
//! ```
//! Until they are flushed the entries are also held in memory ([`Disk::hold_unflushed`]): redb
//! reopens at its last durable commit, so a reopen after an I/O error writes them again.
//! Truncations, purges and the vote are committed durably before they return (which makes the
//! appends before them durable too); the commit point without fsync (see
//! [`LogStore::save_committed`]). redb is blocking; each call runs on the blocking pool (the
//! flusher on its own thread) through [`Disk::run`], which waits out I/O errors instead of failing
//! Raft (see [`super::disk`]).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::disk::{Disk, DiskError};
use super::{TypeConfig, codec};
use crate::state::NodeId;

pub(super) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The log store; clones share the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    disk: Arc<Disk>,
    /// The flusher thread's queue: the callbacks of appends committed without fsync.
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
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
        let (flusher, queue) = std::sync::mpsc::channel();
        let flushing = disk.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush(&flushing, &queue))
            .map_err(|e| DiskError::Failed {
                what: "starting the Raft log's flusher",
                source: redb::Error::Io(e),
            })?;
        Ok(LogStore { disk, flusher })
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

    /// Stores `value` under `key`; with `durable`, fsynced before this returns, else made durable
    /// by the next durable commit (the next log append).
    async fn write_meta<T: serde::Serialize>(
        &self,
        what: &'static str,
        key: &'static str,
        value: &T,
        durable: bool,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io_write)?;
        self.blocking(
            what,
            move |db| {
                let mut txn = db.begin_write()?;
                if !durable {
                    txn.set_durability(redb::Durability::None)
                        .map_err(redb::Error::from)?;
                }
                {
                    let mut table = txn.open_table(META)?;
                    table.insert(key, bytes.as_slice())?;
                }
                txn.commit()?;
                Ok(())
            },
            io_write,
        )
        .await
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
        let raw = self
            .blocking(
                "reading the Raft log",
                move |db| {
                    let txn = db.begin_read()?;
                    let table = txn.open_table(LOGS)?;
                    let iter = match end {
                        Some(end) => table.range(start..end)?,
                        None => table.range(start..)?,
                    };
                    let mut raw = Vec::new();
                    for item in iter {
                        raw.push(item?.1.value().to_vec());
                    }
                    Ok(raw)
                },
                io_read,
            )
            .await?;
        raw.iter()
            .map(|bytes| codec::decode(bytes).map_err(io_read))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED).await?;
        let last = self
            .blocking(
                "reading the Raft log",
                |db| {
                    let txn = db.begin_read()?;
                    let table = txn.open_table(LOGS)?;
                    Ok(table.last()?.map(|(_, value)| value.value().to_vec()))
                },
                io_read,
            )
            .await?;
        let last = match last {
            Some(bytes) => {
                let entry: Entry<TypeConfig> = codec::decode(&bytes).map_err(io_read)?;
                Some(entry.log_id)
            }
            None => None,
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
        self.write_meta("saving the Raft vote", VOTE, vote, true)
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_meta(VOTE).await
    }

    /// Not fsynced: openraft calls this on every commit, before applying, so a durable commit
    /// point cost one more fsync per write on every node, on the write's path. A commit point
    /// older than the real one is still a commit point (every entry up to it is committed), and
    /// this one becomes durable with the next append (the next durable redb commit); after a
    /// crash the node applies up to the older point at start and learns the rest from the leader.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.write_meta("saving the Raft commit point", COMMITTED, &committed, false)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, codec::encode(&e).map_err(io_write)?)))
            .collect::<Result<_>>()?;
        let bytes: u64 = encoded.iter().map(|(_, b)| b.len() as u64).sum();
        let disk = self.disk.clone();
        let result = self
            .blocking(
                "appending to the Raft log",
                move |db| {
                    let mut txn = db.begin_write()?;
                    txn.set_durability(redb::Durability::None)
                        .map_err(redb::Error::from)?;
                    {
                        let mut table = txn.open_table(LOGS)?;
                        for (index, bytes) in &encoded {
                            table.insert(*index, bytes.as_slice())?;
                        }
                    }
                    disk.hold_unflushed(&encoded);
                    txn.commit()?;
                    Ok(())
                },
                io_write,
            )
            .await;
        // Flushed only once a durable commit after this one is done: the flusher's.
        match &result {
            Ok(()) => {
                self.disk.appended(bytes);
                if let Err(unsent) = self.flusher.send(callback) {
                    unsent.0.log_io_completed(Err(std::io::Error::other(
                        "the Raft log's flusher has stopped",
                    )));
                }
            }
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let disk = self.disk.clone();
        self.blocking(
            "truncating the Raft log",
            move |db| {
                let txn = db.begin_write()?;
                disk.forget_unflushed(log_id.index..);
                {
                    let mut table = txn.open_table(LOGS)?;
                    table.retain_in(log_id.index.., |_, _| false)?;
                }
                txn.commit()?;
                Ok(())
            },
            io_write,
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let bytes = serde_json::to_vec(&log_id).map_err(io_write)?;
        let disk = self.disk.clone();
        // The purge point and the removal in one transaction: a crash between them cannot leave
        // the log start and the recorded purge point disagreeing.
        let removed = self
            .blocking(
                "purging the Raft log",
                move |db| {
                    let txn = db.begin_write()?;
                    disk.forget_unflushed(..=log_id.index);
                    let mut removed = 0u64;
                    {
                        let mut meta = txn.open_table(META)?;
                        meta.insert(LAST_PURGED, bytes.as_slice())?;
                        let mut table = txn.open_table(LOGS)?;
                        table.retain_in(..=log_id.index, |_, _| {
                            removed += 1;
                            false
                        })?;
                    }
                    txn.commit()?;
                    Ok(removed)
                },
                io_write,
            )
            .await?;
        // Give the freed pages back to the file system: the file then follows the state's size,
        // not the history's.
        let before = self.disk.file_size();
        let started = std::time::Instant::now();
        let disk = self.disk.clone();
        let compacted = tokio::task::spawn_blocking(move || disk.compact())
            .await
            .map_err(io_write)?;
        let after = self.disk.file_size();
        match compacted {
            Ok(_) => tracing::info!(
                "raft log purged up to index {} ({removed} entries removed); raft.redb compacted {} -> {} KiB in {} ms",
                log_id.index,
                before / 1024,
                after / 1024,
                started.elapsed().as_millis()
            ),
            // Compaction only gives space back; the purge itself is done.
            Err(e) => tracing::warn!(
                "raft log purged up to index {} ({removed} entries removed); {e}",
                log_id.index
            ),
        }
        Ok(())
    }
}

/// The flusher thread: takes every append's callback queued, makes those appends durable with one
/// fsync'd commit, then tells openraft. Ends when every [`LogStore`] is dropped.
fn flush(disk: &Disk, queue: &std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = queue.recv() {
        let mut waiting = vec![first];
        waiting.extend(queue.try_iter());
        // Every append whose callback is here has committed (it queued after its commit), and
        // redb's single writer orders this commit after them all.
        let flushed = disk.run("flushing the Raft log", |db| {
            let txn = db.begin_write()?;
            let upto = disk.unflushed_seq();
            txn.commit()?;
            Ok(upto)
        });
        match flushed {
            Ok(upto) => {
                disk.flushed(upto);
                for callback in waiting {
                    callback.log_io_completed(Ok(()));
                }
            }
            Err(e) => {
                for callback in waiting {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
            }
        }
    }
}
