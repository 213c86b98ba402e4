//! Pieces of the `smrctl` binary: output formats, rollout waiting, interactive exec, sources
//! (paths and https URLs), `edit`, named contexts.
//!
//! smrctl talks to the cluster only through the REST API: it links `api-types` and `smr-core`,
//! never the agent (no Raft, redb, Docker, axum or etcd client in this binary).

pub mod contexts;
pub mod edit;
pub mod exec;
pub mod output;
pub mod rollout;
pub mod source;

pub use api_types::context::{DEFAULT_DATA_DIR, default_context_pointer, resolve_context};
