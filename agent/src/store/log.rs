//! The Raft log, vote and commit point in redb, with durable commits.
//!
//! Every write is one redb transaction committed with immediate durability (fsync) before
//! openraft is told the entries are flushed. redb is blocking; each call runs on the blocking pool.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::TypeConfig;
use crate::state::NodeId;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The log store; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn join_error(e: tokio::task::JoinError) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Result<LogStore> {
        let txn = db.begin_write().map_err(io_write)?;
        txn.open_table(LOGS).map_err(io_write)?;
        txn.open_table(META).map_err(io_write)?;
        txn.commit().map_err(io_write)?;
        Ok(LogStore { db })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(join_error)?
    }

    async fn read_meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(io_read)?;
            let table = txn.open_table(META).map_err(io_read)?;
            match table.get(key).map_err(io_read)? {
                Some(value) => Ok(Some(
                    serde_json::from_slice(value.value()).map_err(io_read)?,
                )),
                None => Ok(None),
            }
        })
        .await
    }

    async fn write_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io_write)?;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(io_write)?;
            {
                let mut table = txn.open_table(META).map_err(io_write)?;
                table.insert(key, bytes.as_slice()).map_err(io_write)?;
            }
            txn.commit().map_err(io_write)
        })
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
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(io_read)?;
            let table = txn.open_table(LOGS).map_err(io_read)?;
            let iter = match end {
                Some(end) if end <= start => return Ok(Vec::new()),
                Some(end) => table.range(start..end).map_err(io_read)?,
                None => table.range(start..).map_err(io_read)?,
            };
            let mut entries = Vec::new();
            for item in iter {
                let (_, value) = item.map_err(io_read)?;
                entries.push(serde_json::from_slice(value.value()).map_err(io_read)?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED).await?;
        let last = self
            .blocking(|db| {
                let txn = db.begin_read().map_err(io_read)?;
                let table = txn.open_table(LOGS).map_err(io_read)?;
                match table.last().map_err(io_read)? {
                    Some((_, value)) => {
                        let entry: Entry<TypeConfig> =
                            serde_json::from_slice(value.value()).map_err(io_read)?;
                        Ok(Some(entry.log_id))
                    }
                    None => Ok(None),
                }
            })
            .await?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.write_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_meta(VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.write_meta(COMMITTED, &committed).await
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
            .map(|e| Ok((e.log_id.index, serde_json::to_vec(&e).map_err(io_write)?)))
            .collect::<Result<_>>()?;
        let result = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(io_write)?;
                {
                    let mut table = txn.open_table(LOGS).map_err(io_write)?;
                    for (index, bytes) in &encoded {
                        table.insert(*index, bytes.as_slice()).map_err(io_write)?;
                    }
                }
                txn.commit().map_err(io_write)
            })
            .await;
        // Flushed only once the commit is durable.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(io_write)?;
            {
                let mut table = txn.open_table(LOGS).map_err(io_write)?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(io_write)?;
            }
            txn.commit().map_err(io_write)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.write_meta(LAST_PURGED, &log_id).await?;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(io_write)?;
            {
                let mut table = txn.open_table(LOGS).map_err(io_write)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(io_write)?;
            }
            txn.commit().map_err(io_write)
        })
        .await
    }
}
