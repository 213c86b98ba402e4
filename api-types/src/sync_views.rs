//! Bodies of the gitops routes: status of a `gitops` object, sync requests, webhook answers.

use serde::{Deserialize, Serialize};

use crate::definitions::ObjectKey;
use crate::state::GitopsStatus;

/// One gitops object and where it stands. Never carries credentials.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GitopsView {
    pub group: String,
    pub name: String,
    /// The repository URL without any `user:password@`.
    pub repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    pub automatic_sync: bool,
    pub interval_seconds: u64,
    pub webhook: bool,
    pub generation: u64,
    pub status: GitopsStatus,
    /// The objects it deployed (describe only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ManagedObject>,
}

/// An object deployed by a gitops object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManagedObject {
    pub key: ObjectKey,
    pub generation: u64,
    /// `synced` or `drifted`.
    pub state: String,
}

/// `POST .../sync` and webhook answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncRequested {
    /// `sync requested`, `ignored` or `pong`.
    pub status: String,
    /// The request number; the sync answering it sets `status.sync_handled` to at least this.
    #[serde(default)]
    pub request: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
