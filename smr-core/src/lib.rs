//! smr's pure core: everything that decides, nothing that waits on I/O.
//!
//! - [`definitions`]: the YAML definitions model (simplecontainer-compatible), parsing, validation.
//! - [`state`]: the replicated state machine (pure: commands in, results out).
//! - [`scheduler`]: placement of replicas on nodes, rollout planning and per-node replica plans.
//! - [`credentials`]: a user and password that is never shown.
//!
//! The crate has no async runtime, HTTP, Docker or Raft dependency: the agent crate is the I/O
//! shell around it, and smrctl links it without any of those.
#![forbid(unsafe_code)]

pub mod credentials;
pub mod definitions;
pub mod scheduler;
pub mod state;
