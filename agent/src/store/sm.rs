//! The state machine openraft applies entries to: [`ClusterState`] in memory, with its snapshot
//! persisted in redb. On start the last snapshot is loaded; openraft then re-applies the committed
//! entries after it from the log.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{RaftPeer, TypeConfig};
use crate::state::{ClusterState, CommandResult, NodeId};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const CURRENT: &str = "current";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, RaftPeer>;

fn sm_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn snap_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

/// What a snapshot holds: the applied state and where it was taken.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: ClusterState,
}

/// A snapshot as kept on disk: its meta and its serialized body.
#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, RaftPeer>,
    data: Vec<u8>,
}

struct Inner {
    state: RwLock<Arc<ClusterState>>,
    applied: RwLock<(Option<LogId<NodeId>>, Membership)>,
    snapshot: Mutex<Option<StoredSnapshot>>,
    db: Arc<Database>,
    applied_tx: watch::Sender<u64>,
    snapshots_built: Mutex<u64>,
}

/// The state machine; clones share it.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    /// Opens the state machine from the last snapshot in `db`, if any.
    pub fn load(db: Arc<Database>) -> Result<StateMachineStore> {
        let txn = db.begin_write().map_err(snap_write)?;
        txn.open_table(SNAPSHOT).map_err(snap_write)?;
        txn.commit().map_err(snap_write)?;
        let stored: Option<StoredSnapshot> = {
            let txn = db.begin_read().map_err(sm_read)?;
            let table = txn.open_table(SNAPSHOT).map_err(sm_read)?;
            match table.get(CURRENT).map_err(sm_read)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(sm_read)?),
                None => None,
            }
        };
        let (state, applied, membership) = match &stored {
            Some(s) => {
                let body: SnapshotBody = serde_json::from_slice(&s.data).map_err(sm_read)?;
                (body.state, body.last_applied, body.membership)
            }
            None => (ClusterState::default(), None, Membership::default()),
        };
        let (applied_tx, _) = watch::channel(applied.map(|l| l.index).unwrap_or(0));
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                state: RwLock::new(Arc::new(state)),
                applied: RwLock::new((applied, membership)),
                snapshot: Mutex::new(stored),
                db,
                applied_tx,
                snapshots_built: Mutex::new(0),
            }),
        })
    }

    /// The applied state (cheap: shares the current version).
    pub fn state(&self) -> Arc<ClusterState> {
        self.inner
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    fn persist(&self, snapshot: &StoredSnapshot) -> Result<()> {
        let bytes = serde_json::to_vec(snapshot).map_err(snap_write)?;
        let txn = self.inner.db.begin_write().map_err(snap_write)?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(snap_write)?;
            table
                .insert(CURRENT, bytes.as_slice())
                .map_err(snap_write)?;
        }
        txn.commit().map_err(snap_write)
    }

    fn install(&self, body: SnapshotBody) {
        let index = body.last_applied.map(|l| l.index).unwrap_or(0);
        *self.inner.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(body.state);
        *self
            .inner
            .applied
            .write()
            .unwrap_or_else(|e| e.into_inner()) = (body.last_applied, body.membership);
        self.inner.applied_tx.send_replace(index);
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let state = self.state();
        let (last_applied, membership) = self
            .inner
            .applied
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let this = self.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let body = SnapshotBody {
                last_applied,
                membership: membership.clone(),
                state: (*state).clone(),
            };
            let data = serde_json::to_vec(&body).map_err(snap_write)?;
            let count = {
                let mut built = this
                    .inner
                    .snapshots_built
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *built += 1;
                *built
            };
            let snapshot_id = format!("{}-{count}", last_applied.map(|l| l.index).unwrap_or(0));
            let stored = StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: last_applied,
                    last_membership: membership,
                    snapshot_id,
                },
                data,
            };
            this.persist(&stored)?;
            Ok::<_, StorageError<NodeId>>(stored)
        })
        .await
        .map_err(snap_write)??;
        *self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(stored.clone());
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership)> {
        Ok(self
            .inner
            .applied
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut last = None;
        {
            let mut guard = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
            let state = Arc::make_mut(&mut guard);
            let mut applied = self
                .inner
                .applied
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                applied.0 = Some(entry.log_id);
                last = Some(entry.log_id.index);
                results.push(match entry.payload {
                    EntryPayload::Normal(command) => state.apply(&command),
                    EntryPayload::Membership(membership) => {
                        applied.1 = StoredMembership::new(Some(entry.log_id), membership);
                        CommandResult::Done {
                            revision: state.revision,
                        }
                    }
                    EntryPayload::Blank => CommandResult::Done {
                        revision: state.revision,
                    },
                });
            }
        }
        if let Some(index) = last {
            self.inner.applied_tx.send_replace(index);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftPeer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data).map_err(sm_read)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let this = self.clone();
        let to_persist = stored.clone();
        tokio::task::spawn_blocking(move || this.persist(&to_persist))
            .await
            .map_err(snap_write)??;
        self.install(SnapshotBody {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            ..body
        });
        *self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let stored = self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
