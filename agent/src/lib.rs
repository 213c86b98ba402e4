//! The smr agent: everything a node runs.
//!
//! - [`definitions`]: the YAML definitions model (simplecontainer-compatible), parsing, validation.
//! - [`state`]: the replicated state machine (pure: commands in, results out).
//! - [`store`]: openraft with its log, vote and snapshots in redb; the Raft RPC transport.
//! - [`pki`]: the cluster CA, node and admin certificates, join tokens, rustls configurations.
//! - [`api`]: the REST API (axum) served on 1443 with mTLS, its typed errors and OpenAPI document.
//! - [`client`]: a typed client of that API, used by smrctl, smrmgr and by nodes to forward.
//! - [`daemon`]: wires the parts into a running node.

pub mod definitions;
pub mod pki;
pub mod state;
pub mod store;
