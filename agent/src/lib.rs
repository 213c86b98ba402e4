//! The smr agent: everything a node runs.
//!
//! - [`definitions`]: the YAML definitions model (simplecontainer-compatible), parsing, validation.
//! - [`state`]: the replicated state machine (pure: commands in, results out).
//! - [`store`]: openraft with its log, vote and snapshots in redb; the Raft RPC transport.
//! - [`pki`]: the cluster CA, node and admin certificates, join tokens, rustls configurations.
//! - [`scheduler`]: placement of replicas on nodes and rollout planning (pure).
//! - [`node_plan`]: what a node's reconciler does with its replicas, as exact actions (pure).
//! - [`runtime`]: the container runtime (Docker through bollard) behind a narrow trait.
//! - [`node`]: the typed actions behind the API, with forwarding to the leader.
//! - [`api`]: the REST API (axum) served on 1443 with mTLS, its typed errors and OpenAPI document.
//! - [`client`]: a typed client of that API, used by smrctl, smrmgr and the tests.
//! - [`daemon`]: wires the parts into a running node.
//! - [`credentials`]: a user and password that is never shown.

pub mod api;
pub mod client;
pub mod controller;
pub mod credentials;
pub mod daemon;
pub mod definitions;
pub mod node;
pub mod node_plan;
pub mod pki;
pub mod runtime;
pub mod scheduler;
pub mod state;
pub mod store;
pub mod views;
