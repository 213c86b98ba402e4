//! `GET /api/v1/backup`: the whole replicated state as a backup file (see [`smr_core::backup`]).
//!
//! Taken online on any node: a linearizable read (on a follower: the leader's read index, then
//! this node's state once it applied up to it), so the file holds every write acknowledged before
//! the request, and exactly the state at its revision (a state is one immutable version).

use smr_core::backup::{self, TakenAt};

use super::{Consistency, Node, NodeError};
use crate::store::Store;

impl Node {
    /// The backup file of the cluster state as of now (linearizable).
    pub async fn backup(&self) -> Result<Vec<u8>, NodeError> {
        let state = self.state(Consistency::Linearizable).await?;
        let status = self.store.status();
        let (store, term) = match self.store {
            Store::Raft(_) => ("raft", status.term),
            // The etcd store's "term" is its own election's, not a position of the state.
            #[cfg(feature = "etcd")]
            Store::Etcd(_) => ("etcd", 0),
        };
        let at = TakenAt {
            store: store.into(),
            index: status.last_applied.unwrap_or(0),
            term,
            taken_ms: super::now_ms(),
            taken_by: self.name.clone(),
        };
        let objects = state.objects.len();
        // Serializing a large state takes a while: off the async threads.
        let bytes = tokio::task::spawn_blocking(move || backup::encode(&state, at))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        tracing::info!(
            "backup taken: {objects} objects, {} KiB",
            bytes.len() / 1024
        );
        Ok(bytes)
    }
}
