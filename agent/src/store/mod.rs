//! Raft store: TEMPORARY STUB in main with the planned API; replaced by the store branch.
#![allow(dead_code, unused_variables)]
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::state::{ClusterState, Command, CommandResult, NodeId};

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RaftPeer {
    pub raft_addr: String,
    pub api_addr: String,
    pub name: String,
}

#[derive(Clone)]
pub struct Transport {
    pub client: reqwest::Client,
    pub scheme: String,
}

#[derive(Clone, Debug, Default)]
pub struct StoreConfig {}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("not the leader")]
    ForwardToLeader { leader_id: Option<NodeId>, leader: Option<RaftPeer> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("fatal: {0}")]
    Fatal(String),
}

pub type ReadError = WriteError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    Leader,
    Follower,
    Candidate,
    Learner,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoreStatus {
    pub id: NodeId,
    pub state: ServerState,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub members: BTreeMap<NodeId, RaftPeer>,
}

#[derive(Clone)]
pub struct Store {}

impl Store {
    pub async fn open(dir: &Path, id: NodeId, transport: Transport, config: StoreConfig) -> Result<Store, StoreError> {
        todo!()
    }
    pub async fn bootstrap(&self, me: RaftPeer) -> Result<(), StoreError> {
        todo!()
    }
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        todo!()
    }
    pub async fn read(&self, linearizable: bool) -> Result<Arc<ClusterState>, ReadError> {
        todo!()
    }
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        todo!()
    }
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        todo!()
    }
    pub async fn add_member(&self, id: NodeId, peer: RaftPeer) -> Result<(), WriteError> {
        todo!()
    }
    pub async fn remove_member(&self, id: NodeId) -> Result<(), WriteError> {
        todo!()
    }
    pub fn status(&self) -> StoreStatus {
        todo!()
    }
    pub fn rpc_router(&self) -> axum::Router {
        todo!()
    }
    pub async fn shutdown(&self) {}
}
