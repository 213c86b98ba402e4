//! The agent's parsers of untrusted input and its state machine, compiled from the agent's own
//! source files under the same module names (so their `crate::` paths resolve): definitions
//! (YAML), state (commands), scheduler (placement types the state holds), the API's request and
//! response types, join tokens. A fuzz build then needs none of the agent's runtime dependencies.
#![allow(dead_code, unused_imports)]

#[path = "../../../../agent/src/definitions/mod.rs"]
pub mod definitions;
#[path = "../../../../agent/src/scheduler/mod.rs"]
pub mod scheduler;
#[path = "../../../../agent/src/state/mod.rs"]
pub mod state;

// Loaded through `path` (so, like a mod.rs, its own `path`s are relative to this directory).
#[path = "api.rs"]
pub mod api;
#[path = "pki.rs"]
pub mod pki;
