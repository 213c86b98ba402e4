//! The Raft data dir's storage: the one redb database every log, vote and snapshot access goes
//! through, and the guard that keeps a full, read-only or failing disk from stopping Raft for good.
//!
//! Why this shape (issue 12, "disk full"): openraft 0.9 treats any error of its storage as fatal:
//! its core stops ("shutdown") and only a restart of the process brings the node back. redb, for
//! its part, fails every operation after one failed I/O (`PreviousIo`) until the database is
//! closed and opened again. So the store deals with storage errors before openraft sees them:
//!
//! ```text
//!  Store::write ---> admission: problem()? ---- yes --> InsufficientStorage (507), nothing proposed
//!                      | no: read-only fs? free < reserve? an operation still failing?
//!                      v
//!  openraft core --> Disk::run(op) -- I/O error --> reopen redb, wait 0.5 s, run(op) again ...
//!                       |                           (the core waits in the call, like a paused
//!                       v ok                         process; status: degraded, with the reason)
//!                     result
//! ```
//!
//! - Admission: [`Disk::problem`] is checked before a command is proposed. While the data dir's
//!   file system is read-only, has less free space than the reserve, or an earlier storage
//!   operation keeps failing, writes are refused and nothing of them reaches the log.
//! - An operation that fails with an I/O error anyway (the disk filled between the check and the
//!   write, a remount read-only, EIO) is not handed to openraft: the database is reopened and the
//!   same operation retried every [`RETRY_PAUSE`] until it succeeds. Every operation is idempotent
//!   (log entries are put by index, the vote, the commit point and the snapshot are overwritten,
//!   purge and truncate remove ranges), so a retry never doubles anything; a failed redb commit
//!   leaves the database as of the last successful one. Meanwhile the Raft core waits in that call:
//!   a leader stops sending heartbeats and a node that can write takes over, a follower falls
//!   behind; when the disk takes writes again the core continues by itself, no restart.
//! - Only shutdown ends the wait ([`Disk::close`]): then the error goes to openraft, which stops.
//!
//! Rebuilding the Raft instance after openraft shut down on a storage error was the alternative;
//! it throws away the core's in-memory state (and in-flight writes with it) and still needs the
//! reopen-and-retry of redb, so waiting in the storage call is the smaller and safer mechanism.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use nix::sys::statvfs::{FsFlags, statvfs};
use redb::Database;

/// How long a failing storage operation waits before it is tried again.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Free space kept in reserve on the data dir's file system: writes are refused below it. A file
/// system smaller than 20 times this keeps 5 % of its size instead.
pub const DEFAULT_RESERVE: u64 = 64 * 1024 * 1024;
/// Log bytes since the last snapshot after which one is taken even before `snapshot_every`
/// entries (or the last snapshot's size, if larger): the log a restart replays stays bounded in
/// bytes, not only in entries.
pub const SNAPSHOT_LOG_BYTES: u64 = 16 * 1024 * 1024;
/// Memory redb may use to cache pages (its default is 1 GiB, which the resident size then shows).
/// redb keeps every page it writes in this cache until it is full, and the log is written once
/// and read back only by a follower catching up: with 32 MiB the cache held the whole log since
/// the last snapshot (issue 14: a quarter of the resident memory at 50,000 objects). Half of it
/// buffers a commit's pages (a group-commit entry is at most 1 MiB).
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Why the storage cannot serve an operation (only when it will not be retried).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("{what}: {source}")]
    Failed {
        what: &'static str,
        #[source]
        source: redb::Error,
    },
}

/// The node's Raft database and the health of the file system it is on.
pub struct Disk {
    dir: PathBuf,
    file: PathBuf,
    /// `None` while a reopen after an I/O error has not succeeded yet.
    db: RwLock<Option<Database>>,
    reserve: u64,
    /// Set while a storage operation keeps failing: what failed and why.
    failing: Mutex<Option<String>>,
    closing: AtomicBool,
    /// Bytes appended to the log since the last snapshot, and that snapshot's size.
    log_bytes: AtomicU64,
    snapshot_bytes: AtomicU64,
}

fn open_db(file: &Path) -> Result<Database, redb::Error> {
    Ok(Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(file)?)
}

/// Errors a reopen and a retry can cure: the file system's, not the data's.
fn transient(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_)
            | redb::Error::PreviousIo
            | redb::Error::DatabaseClosed
            | redb::Error::DatabaseAlreadyOpen
            | redb::Error::RepairAborted
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Disk {
    /// Opens (or creates) `dir/raft.redb`. `reserve` overrides the free space kept in reserve.
    pub fn open(dir: &Path, reserve: Option<u64>) -> Result<Disk, DiskError> {
        let file = dir.join("raft.redb");
        let db = open_db(&file).map_err(|source| DiskError::Open {
            path: file.display().to_string(),
            source,
        })?;
        let reserve = reserve.unwrap_or_else(|| {
            let size = statvfs(dir)
                .map(|s| s.blocks() * s.fragment_size())
                .unwrap_or(u64::MAX);
            DEFAULT_RESERVE.min(size / 20)
        });
        Ok(Disk {
            dir: dir.to_path_buf(),
            file,
            db: RwLock::new(Some(db)),
            reserve,
            failing: Mutex::new(None),
            closing: AtomicBool::new(false),
            log_bytes: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
        })
    }

    /// The free space below which writes are refused.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Why this node cannot take writes now, if it cannot: an operation keeps failing, the file
    /// system is read-only, or it has less free space than the reserve.
    pub fn problem(&self) -> Option<String> {
        if let Some(failing) = lock(&self.failing).clone() {
            return Some(failing);
        }
        fs_problem(&self.dir, self.reserve)
    }

    /// Runs `op` on the database. An I/O error is not returned: the database is reopened and `op`
    /// run again until it succeeds (see the module doc), unless the store is closing. Blocking:
    /// call it from the blocking pool.
    pub fn run<T>(
        &self,
        what: &'static str,
        mut op: impl FnMut(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, DiskError> {
        self.retry(what, true, || {
            let slot = self.db.read().unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                Some(db) => op(db),
                None => Err(redb::Error::DatabaseClosed),
            }
        })
    }

    /// Runs a file operation in the data dir the same way: retried until it succeeds.
    pub fn run_io<T>(
        &self,
        what: &'static str,
        mut op: impl FnMut() -> std::io::Result<T>,
    ) -> Result<T, DiskError> {
        self.retry(what, false, || op().map_err(redb::Error::Io))
    }

    fn retry<T>(
        &self,
        what: &'static str,
        reopen: bool,
        mut attempt: impl FnMut() -> Result<T, redb::Error>,
    ) -> Result<T, DiskError> {
        let mut announced = false;
        loop {
            let error = match attempt() {
                Ok(value) => {
                    if announced && lock(&self.failing).take().is_some() {
                        tracing::info!("storage works again: {what} succeeded");
                    }
                    return Ok(value);
                }
                Err(e) if transient(&e) && !self.closing.load(Ordering::SeqCst) => e,
                Err(source) => return Err(DiskError::Failed { what, source }),
            };
            let why = match &error {
                // The first error says what happened; the later ones only that it still fails.
                redb::Error::PreviousIo | redb::Error::DatabaseClosed => lock(&self.failing)
                    .clone()
                    .unwrap_or_else(|| format!("{what}: {error}")),
                _ => format!("{what} failed: {error}; retrying until it succeeds"),
            };
            if !announced {
                tracing::error!("storage: {why}");
                announced = true;
            }
            *lock(&self.failing) = Some(why);
            std::thread::sleep(RETRY_PAUSE);
            if reopen {
                self.reopen();
            }
        }
    }

    /// The directory of the database (where snapshot files go too).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes and opens the database again (after an I/O error redb refuses everything until then).
    /// The reopened file holds what was durable: every commit of the log's writer is.
    pub(super) fn reopen(&self) {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        slot.take();
        match open_db(&self.file) {
            Ok(db) => *slot = Some(db),
            Err(e) => {
                let mut failing = lock(&self.failing);
                let before = failing.clone().unwrap_or_default();
                if !before.contains("reopening") {
                    *failing = Some(format!("{before}; reopening {}: {e}", self.file.display()));
                }
            }
        }
    }

    /// Compacts the database file (gives the pages freed by a purge back to the file system).
    /// Blocking; waits for the operations in progress.
    pub fn compact(&self) -> Result<bool, DiskError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(db) => db.compact().map_err(|e| DiskError::Failed {
                what: "compacting the Raft database",
                source: e.into(),
            }),
            None => Ok(false),
        }
    }

    /// Stops retrying: failing operations return their error from now on (at shutdown).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Closes the database file once the operations in progress are done, so that its lock is
    /// released now, not when the last task holding this `Disk` ends: a store opened again on the
    /// same directory right after a shutdown finds it free. Later operations fail as closed.
    /// Blocking.
    pub fn release(&self) {
        self.close();
        self.db.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Counts bytes appended to the log.
    pub fn appended(&self, bytes: u64) {
        self.log_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A snapshot of `bytes` was stored (or one was just asked for: `None`).
    pub fn snapshot_taken(&self, bytes: Option<u64>) {
        self.log_bytes.store(0, Ordering::Relaxed);
        if let Some(bytes) = bytes {
            self.snapshot_bytes.store(bytes, Ordering::Relaxed);
        }
    }

    /// The log since the last snapshot outgrew [`SNAPSHOT_LOG_BYTES`] and that snapshot: the
    /// bytes, if a snapshot is due.
    pub fn snapshot_due(&self) -> Option<u64> {
        let log = self.log_bytes.load(Ordering::Relaxed);
        let limit = SNAPSHOT_LOG_BYTES.max(self.snapshot_bytes.load(Ordering::Relaxed));
        (log > limit).then_some(log)
    }
}

/// Why the file system of `dir` cannot take writes: read-only, or less than `reserve` free.
pub(crate) fn fs_problem(dir: &Path, reserve: u64) -> Option<String> {
    let shown = dir.display();
    match statvfs(dir) {
        Ok(s) if s.flags().contains(FsFlags::ST_RDONLY) => Some(format!(
            "the data dir {shown} is on a read-only file system"
        )),
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            (free < reserve).then(|| {
                format!(
                    "the data dir {shown} has {} free, less than the {} kept in reserve",
                    mib(free),
                    mib(reserve)
                )
            })
        }
        Err(e) => Some(format!("the data dir {shown} cannot be checked: {e}")),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
