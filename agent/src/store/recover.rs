//! A node's state read from its Raft data alone, with no Raft running: what
//! `smrmgr start --force-new-cluster` turns into a one-node cluster when the quorum is lost.
//!
//! The state is the last snapshot with every entry of the local log after it applied, committed
//! or not (as etcd's `--force-new-cluster` does with its WAL): whatever this node holds survives,
//! and a write it had not yet learned was committed is kept rather than lost.

use std::path::Path;
use std::sync::Arc;

use openraft::{Entry, EntryPayload};

use super::disk::Disk;
use super::{StateMachineStore, StoreError, TypeConfig};
use crate::state::ClusterState;

/// What the local Raft data holds.
pub struct LocalState {
    pub state: ClusterState,
    /// The index of the snapshot the state started from.
    pub snapshot_index: u64,
    /// The index of the last log entry applied on top of it.
    pub last_index: u64,
}

/// Reads the state of the Raft data in `dir` (blocking). The agent of that data must not run.
pub fn local_state(dir: &Path) -> Result<LocalState, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: dir.display().to_string(),
        reason,
    };
    if !dir.join("raft.redb").exists() {
        return Err(open_err("no Raft data (raft.redb) here".into()));
    }
    let disk = Arc::new(Disk::open(dir, None).map_err(|e| open_err(e.to_string()))?);
    let result = read(&disk).map_err(open_err);
    disk.release();
    result
}

fn read(disk: &Arc<Disk>) -> Result<LocalState, String> {
    let sm = StateMachineStore::load(disk.clone()).map_err(|e| e.to_string())?;
    let mut state = (*sm.state()).clone();
    let snapshot_index = sm.applied_index();
    let raw = super::log::read_stopped(disk, snapshot_index + 1)?;
    let mut last_index = snapshot_index;
    for bytes in raw {
        let entry: Entry<TypeConfig> =
            super::codec::decode(&bytes).map_err(|e| format!("a log entry: {e}"))?;
        last_index = entry.log_id.index;
        if let EntryPayload::Normal(proposal) = &entry.payload {
            super::batch::apply_proposal(&mut state, proposal);
        }
    }
    Ok(LocalState {
        state,
        snapshot_index,
        last_index,
    })
}
