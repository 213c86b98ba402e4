//! Backup files and the two ways a cluster starts again from a state (pure).
//!
//! A backup file (`smrmgr backup FILE`) is three lines of text:
//! ```text
//! smr-backup                      magic: what the file is
//! {"format_version":1,...}        BackupHeader: version, cluster id, position, time, body size and SHA-256
//! {"revision":...,"objects":...}  the whole ClusterState as JSON (secrets in it: the file is mode 0600)
//! ```
//! [`decode`] checks the magic, the version, the body's length (a truncated file) and SHA-256 (a
//! corrupt one) and that the body parses, before anything is created from it.
//!
//! From a state, a cluster starts again in one of two ways, each one command applied to a state
//! that holds nothing yet:
//! - [`restored`] (`smrmgr restore`): a new cluster keeps the backup's objects (definitions,
//!   configurations, secrets, gitops objects with their sync status) and nothing of the old
//!   cluster's nodes, placements, reports, events, tokens or CA.
//! - [`forced`] (`smrmgr start --force-new-cluster`): a surviving node keeps its whole state but
//!   every other node, so that their replicas are placed again.

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::state::{ClusterState, NodeId};

/// The first line of every backup file.
pub const MAGIC: &str = "smr-backup";

/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What a backup says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    pub format_version: u32,
    /// The cluster the state comes from: its CA's SHA-256 fingerprint.
    pub cluster_id: String,
    /// `raft` or `etcd`.
    pub store: String,
    /// The state's revision (the body is the state exactly at it).
    pub revision: u64,
    /// The store's applied log index (Raft) or etcd revision when the backup was taken (the
    /// answering node had applied at least this far).
    pub index: u64,
    /// The Raft term then (0 on etcd).
    pub term: u64,
    /// Wall clock of the answering node, milliseconds since the epoch.
    pub taken_ms: u64,
    /// The name of the node that answered.
    pub taken_by: String,
    /// How many objects the body holds (for people reading the header).
    pub objects: usize,
    pub body_bytes: u64,
    /// Hex SHA-256 of the body line.
    pub body_sha256: String,
}

/// A backup file read and checked.
#[derive(Clone, Debug)]
pub struct Backup {
    pub header: BackupHeader,
    pub state: ClusterState,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not an smr backup file (it does not start with the line {MAGIC:?})")]
    NotABackup,
    #[error("the backup header does not parse: {0}")]
    Header(String),
    #[error(
        "the backup has format version {found}; this smr reads version {FORMAT_VERSION} only \
         (use the smr release that wrote it, or a newer one)"
    )]
    Version { found: u32 },
    #[error(
        "the backup is truncated: its header announces a body of {expected} bytes, the file \
         holds {found}"
    )]
    Truncated { expected: u64, found: u64 },
    #[error("the backup is corrupt: the body's SHA-256 is {found}, its header says {expected}")]
    Checksum { expected: String, found: String },
    #[error("the backup's state does not parse: {0}")]
    Body(String),
    #[error("the backup holds no cluster CA record: it is not from a cluster that ever started")]
    NoCluster,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Where and when a backup is taken (everything of the header that the state does not say).
#[derive(Clone, Debug, Default)]
pub struct TakenAt {
    pub store: String,
    pub index: u64,
    pub term: u64,
    pub taken_ms: u64,
    pub taken_by: String,
}

/// The backup file of `state`. Refused for a state without a CA (a cluster not yet created).
pub fn encode(state: &ClusterState, at: TakenAt) -> Result<Vec<u8>, BackupError> {
    let ca = state.ca.as_ref().ok_or(BackupError::NoCluster)?;
    let body = serde_json::to_vec(state).map_err(|e| BackupError::Body(e.to_string()))?;
    let header = BackupHeader {
        format_version: FORMAT_VERSION,
        cluster_id: ca.fingerprint.clone(),
        store: at.store,
        revision: state.revision,
        index: at.index,
        term: at.term,
        taken_ms: at.taken_ms,
        taken_by: at.taken_by,
        objects: state.objects.len(),
        body_bytes: body.len() as u64,
        body_sha256: sha256_hex(&body),
    };
    let header = serde_json::to_vec(&header).map_err(|e| BackupError::Header(e.to_string()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + header.len() + body.len() + 3);
    out.extend_from_slice(MAGIC.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&header);
    out.push(b'\n');
    out.extend_from_slice(&body);
    out.push(b'\n');
    Ok(out)
}

/// Reads a backup file, checking everything before the state is used.
pub fn decode(bytes: &[u8]) -> Result<Backup, BackupError> {
    let magic = format!("{MAGIC}\n");
    let rest = bytes
        .strip_prefix(magic.as_bytes())
        .ok_or(BackupError::NotABackup)?;
    let Some(end) = rest.iter().position(|b| *b == b'\n') else {
        return Err(BackupError::Header(
            "the file ends inside the header (truncated)".into(),
        ));
    };
    let (header_line, rest) = (&rest[..end], &rest[end + 1..]);
    // The version first, so that a newer header with other fields is named as such.
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let version: Version =
        serde_json::from_slice(header_line).map_err(|e| BackupError::Header(e.to_string()))?;
    if version.format_version != FORMAT_VERSION {
        return Err(BackupError::Version {
            found: version.format_version,
        });
    }
    let header: BackupHeader =
        serde_json::from_slice(header_line).map_err(|e| BackupError::Header(e.to_string()))?;
    let body = rest.strip_suffix(b"\n").unwrap_or(rest);
    if body.len() as u64 != header.body_bytes {
        return Err(BackupError::Truncated {
            expected: header.body_bytes,
            found: body.len() as u64,
        });
    }
    let found = sha256_hex(body);
    if found != header.body_sha256 {
        return Err(BackupError::Checksum {
            expected: header.body_sha256,
            found,
        });
    }
    let state: ClusterState =
        serde_json::from_slice(body).map_err(|e| BackupError::Body(e.to_string()))?;
    if state.ca.is_none() {
        return Err(BackupError::NoCluster);
    }
    Ok(Backup { header, state })
}

/// What a new cluster keeps of a backup: its objects, the sync status of its gitops objects and
/// its revision (so that object revisions stay below the cluster's). Nothing of the old
/// cluster's membership: nodes, placements and their errors, reports, events, join tokens, CA,
/// node availability, recent operation ids. The network settings are the new cluster's own
/// (`smrmgr restore` creates it with the backup's).
pub fn restored(backup: &ClusterState) -> ClusterState {
    ClusterState {
        revision: backup.revision,
        objects: backup.objects.clone(),
        gitops: backup.gitops.clone(),
        network: backup.network.clone(),
        ..ClusterState::default()
    }
}

/// A surviving node's state as a one-node cluster: every node but `keep` leaves the registry
/// (with its report and availability), so that the leader places their replicas again; the
/// rest (objects, placements, CA, tokens, events, recent operation ids) stays.
pub fn forced(local: &ClusterState, keep: NodeId) -> ClusterState {
    let mut state = local.clone();
    let gone: Vec<NodeId> = state
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != keep)
        .collect();
    for id in &gone {
        state.nodes.remove(id);
        state.reports.remove(id);
        state.availability.remove(id);
    }
    // Derived from the objects; rebuilt when first needed.
    state.readers_index = Default::default();
    state
}

#[cfg(test)]
mod tests;
