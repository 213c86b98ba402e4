//! The smr agent: everything a node runs.
//!
//! The pure parts (definitions, the state machine, the scheduler, the node plan, the repository
//! sync decision) are in `smr-core`, the certificates in `pki`, the API's bodies and its client in
//! `api-types`. This crate is the I/O shell around them.
//!
//! - [`store`]: openraft with its log, vote and snapshots in redb; the Raft RPC transport.
//! - [`runtime`]: the container runtime (Docker through bollard) behind a narrow trait.
//! - [`node`]: the typed actions behind the API, with forwarding to the leader; fails with
//!   [`node::NodeError`], which [`api::error`] alone maps to HTTP.
//! - [`api`]: the REST API (axum) served on 1443 with mTLS, its typed errors and OpenAPI document.
//! - [`controllers`]: the loops that run the pure planners and apply their decisions.
//! - [`views`]: read-only views of the state (API answers, DNS records).
//! - [`shutdown`]: the shutdown flag every task watches.
//! - [`metrics`]: Prometheus metrics (`--metrics-addr`, `GET /metrics` on the API).
//! - [`daemon`]: wires the parts into a running node.
//! - [`recovery`]: a cluster started again from a backup or from a survivor of a lost quorum.
//! - [`renewal`]: renews this node's certificates at 2/3 of their lifetime, without a restart.
//! - [`sim`]: simulated nodes for the simulator (issue 14): real API, real reconciler, an engine
//!   in memory.
//! - [`secrets`]: secret values sealed with the cluster key, opened in memory for their readers.
//! - [`migration`]: a cluster created before the CA key was sealed in the state gets a cluster
//!   key on every node and its CA key sealed, after an upgrade.

pub mod api;
pub mod controllers;
pub mod daemon;
pub mod metrics;
pub mod migration;
pub mod node;
pub mod recovery;
pub mod renewal;
pub mod runtime;
pub mod secrets;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod views;

// Transitional (issue 13): the pure modules moved to smr-core; these keep `agent::state`,
// `crate::definitions` and the like resolving for agent's own code and the tests.
#[doc(hidden)]
pub use api_types::client;
#[doc(hidden)]
pub use pki;
#[doc(hidden)]
pub use smr_core::{credentials, definitions, scheduler, state};
#[cfg(test)]
mod fixtures;
