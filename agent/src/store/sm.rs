//! The state machine openraft applies entries to: [`ClusterState`] in memory, with its snapshot
//! persisted in redb. On start the last snapshot is loaded; openraft then re-applies the committed
//! entries after it from the log.
//!
//! A snapshot is taken every [`super::StoreConfig::snapshot_every`] applied entries (openraft's
//! policy) and logged. Its body (the state, MessagePack behind a tag byte, see [`super::codec`])
//! is a file next to the database, `snapshot-<id>.snap` (written to a temporary name, synced,
//! renamed; a `snapshot-<id>.json` body of an earlier version still loads), so that writing it never
//! holds redb's single writer away from the log; its meta, naming the file, is then committed in
//! redb, and older snapshot files are removed. Only the meta stays in memory; the body is read
//! back when a follower needs it. After each snapshot openraft purges the log behind it (see
//! [`super::log`]).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::disk::Disk;
use super::{RaftPeer, TypeConfig, codec};
use crate::state::{ClusterState, CommandResult, NodeId};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// The snapshot's meta (JSON); its body is the file [`body_file`] names.
const META: &str = "meta";
/// Before issue 12 meta and body were one JSON value under this key (the body as an array of
/// numbers, in the database). Still read; replaced by the first new snapshot.
const LEGACY: &str = "current";

type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, RaftPeer>;
type Meta = SnapshotMeta<NodeId, RaftPeer>;

fn sm_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn snap_read(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

fn snap_write(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

/// What a snapshot holds: the applied state and where it was taken.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
pub(super) struct SnapshotBody {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: ClusterState,
}

/// [`SnapshotBody`] as it is written, borrowing the state (no copy of it is made).
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    last_applied: Option<LogId<NodeId>>,
    membership: &'a Membership,
    state: &'a ClusterState,
}

/// The pre-issue-12 record: meta and body in one JSON value.
#[derive(Deserialize)]
struct LegacySnapshot {
    meta: Meta,
    data: Vec<u8>,
}

struct Inner {
    state: RwLock<Arc<ClusterState>>,
    applied: RwLock<(Option<LogId<NodeId>>, Membership)>,
    /// The meta of the snapshot stored in the database, if any.
    snapshot: Mutex<Option<Meta>>,
    disk: Arc<Disk>,
    applied_tx: watch::Sender<u64>,
    snapshots_built: Mutex<u64>,
}

/// The state machine; clones share it.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The file holding the body of snapshot `id` (an id from the leader that is not a plain name
/// is hashed into one).
fn body_file(dir: &Path, id: &str) -> PathBuf {
    let plain = !id.is_empty()
        && id.len() <= 100
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let name = if plain {
        id.to_string()
    } else {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(id.as_bytes()))
    };
    dir.join(format!("snapshot-{name}.snap"))
}

/// The file holding the stored body of snapshot `id`: [`body_file`], or the JSON file an
/// earlier version wrote under the same id if only that exists.
fn stored_body_file(dir: &Path, id: &str) -> PathBuf {
    let file = body_file(dir, id);
    let legacy = file.with_extension("json");
    if !file.exists() && legacy.exists() {
        legacy
    } else {
        file
    }
}

/// Reads the stored snapshot (blocking): its meta and body.
fn read_stored(disk: &Disk) -> Result<Option<(Meta, Vec<u8>)>> {
    let (meta, legacy) = disk
        .run("reading the snapshot meta", |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SNAPSHOT)?;
            let meta = table.get(META)?.map(|v| v.value().to_vec());
            let legacy = match meta {
                Some(_) => None,
                None => table.get(LEGACY)?.map(|v| v.value().to_vec()),
            };
            Ok((meta, legacy))
        })
        .map_err(snap_read)?;
    if let Some(meta) = meta {
        let meta: Meta = serde_json::from_slice(&meta).map_err(snap_read)?;
        let file = stored_body_file(disk.dir(), &meta.snapshot_id);
        // A missing body is not a passing I/O error: retrying cannot bring it back.
        let body = std::fs::read(&file).map_err(|e| {
            snap_read(std::io::Error::new(
                e.kind(),
                format!("reading {}: {e}", file.display()),
            ))
        })?;
        return Ok(Some((meta, body)));
    }
    match legacy {
        Some(bytes) => {
            let legacy: LegacySnapshot = serde_json::from_slice(&bytes).map_err(snap_read)?;
            Ok(Some((legacy.meta, legacy.data)))
        }
        None => Ok(None),
    }
}

/// Writes `body` to `file` durably: a temporary file, synced, renamed, the directory synced.
fn write_file(file: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    let mut out = std::fs::File::create(&tmp)?;
    out.write_all(body)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Removes snapshot files other than `keep` (older snapshots, interrupted writes).
fn remove_other_snapshots(dir: &Path, keep: Option<&Path>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snapshot-")
            && Some(path.as_path()) != keep
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!("removing the old snapshot {}: {e}", path.display());
        }
    }
}

impl StateMachineStore {
    /// Opens the state machine from the last snapshot in the database, if any.
    pub fn load(disk: Arc<Disk>) -> std::result::Result<StateMachineStore, StorageError<NodeId>> {
        let started = Instant::now();
        disk.run("creating the snapshot table", |db| {
            let txn = db.begin_write()?;
            txn.open_table(SNAPSHOT)?;
            txn.commit()?;
            Ok(())
        })
        .map_err(sm_read)?;
        let stored = read_stored(&disk)?;
        let (state, applied, membership, meta) = match stored {
            Some((meta, body)) => {
                let body: SnapshotBody = codec::decode(&body).map_err(sm_read)?;
                tracing::info!(
                    "loaded the snapshot at index {} ({} objects) in {} ms",
                    body.last_applied.map(|l| l.index).unwrap_or(0),
                    body.state.objects.len(),
                    started.elapsed().as_millis()
                );
                (body.state, body.last_applied, body.membership, Some(meta))
            }
            None => (ClusterState::default(), None, Membership::default(), None),
        };
        if let Some(m) = &meta {
            let size =
                std::fs::metadata(stored_body_file(disk.dir(), &m.snapshot_id)).map(|m| m.len());
            disk.snapshot_taken(size.ok());
        }
        let keep = meta
            .as_ref()
            .map(|m| stored_body_file(disk.dir(), &m.snapshot_id));
        remove_other_snapshots(disk.dir(), keep.as_deref());
        let (applied_tx, _) = watch::channel(applied.map(|l| l.index).unwrap_or(0));
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                state: RwLock::new(Arc::new(state)),
                applied: RwLock::new((applied, membership)),
                snapshot: Mutex::new(meta),
                disk,
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

    /// The index of the last entry applied (0 before any).
    pub(super) fn applied_index(&self) -> u64 {
        self.inner
            .applied
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// Stores a snapshot, replacing the previous one (blocking): the body file first, then the
    /// meta naming it; a crash in between leaves the previous snapshot in force.
    fn persist(&self, meta: &Meta, body: &[u8]) -> Result<()> {
        let disk = &self.inner.disk;
        let meta_bytes = serde_json::to_vec(meta).map_err(snap_write)?;
        let file = body_file(disk.dir(), &meta.snapshot_id);
        disk.run_io("writing the snapshot file", || write_file(&file, body))
            .map_err(snap_write)?;
        disk.run("storing the snapshot meta", |db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(SNAPSHOT)?;
                table.insert(META, meta_bytes.as_slice())?;
                table.remove(LEGACY)?;
            }
            txn.commit()?;
            Ok(())
        })
        .map_err(snap_write)?;
        remove_other_snapshots(disk.dir(), Some(&file));
        disk.snapshot_taken(Some(body.len() as u64));
        Ok(())
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
        let started = Instant::now();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let data = codec::encode(&SnapshotBodyRef {
                last_applied,
                membership: &membership,
                state: &state,
            })
            .map_err(snap_write)?;
            let count = {
                let mut built = lock(&this.inner.snapshots_built);
                *built += 1;
                *built
            };
            let index = last_applied.map(|l| l.index).unwrap_or(0);
            let millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id: format!("{index}-{millis}-{count}"),
            };
            this.persist(&meta, &data)?;
            tracing::info!(
                "snapshot built at index {index}: {} objects, {} KiB, in {} ms",
                state.objects.len(),
                data.len() / 1024,
                started.elapsed().as_millis()
            );
            Ok::<_, StorageError<NodeId>>((meta, data))
        })
        .await
        .map_err(snap_write)??;
        *lock(&self.inner.snapshot) = Some(meta.clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
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

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>>
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
                    EntryPayload::Normal(proposal) => {
                        super::batch::apply_proposal(state, &proposal)
                    }
                    EntryPayload::Membership(membership) => {
                        applied.1 = StoredMembership::new(Some(entry.log_id), membership);
                        vec![CommandResult::Done {
                            revision: state.revision,
                        }]
                    }
                    EntryPayload::Blank => vec![CommandResult::Done {
                        revision: state.revision,
                    }],
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
        let body: SnapshotBody = codec::decode(&data).map_err(sm_read)?;
        let this = self.clone();
        let to_persist = meta.clone();
        tokio::task::spawn_blocking(move || this.persist(&to_persist, &data))
            .await
            .map_err(snap_write)??;
        tracing::info!(
            "installed the leader's snapshot at index {}",
            meta.last_log_id.map(|l| l.index).unwrap_or(0)
        );
        self.install(SnapshotBody {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            ..body
        });
        *lock(&self.inner.snapshot) = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        if lock(&self.inner.snapshot).is_none() {
            return Ok(None);
        }
        let disk = self.inner.disk.clone();
        // The snapshot goes to a follower: as JSON, which every version reads (a follower of an
        // earlier version, during a rolling upgrade, reads no MessagePack).
        let stored = tokio::task::spawn_blocking(move || {
            let Some((meta, body)) = read_stored(&disk)? else {
                return Ok(None);
            };
            if body.first() != Some(&codec::TAG_MSGPACK) {
                return Ok(Some((meta, body)));
            }
            let decoded: SnapshotBody = codec::decode(&body).map_err(snap_read)?;
            let json = serde_json::to_vec(&SnapshotBodyRef {
                last_applied: decoded.last_applied,
                membership: &decoded.membership,
                state: &decoded.state,
            })
            .map_err(snap_read)?;
            Ok::<_, StorageError<NodeId>>(Some((meta, json)))
        })
        .await
        .map_err(snap_read)??;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
