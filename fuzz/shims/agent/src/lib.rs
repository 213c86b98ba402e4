//! The parsers of untrusted input and the state machine, under the module names the fuzz
//! targets use: definitions (YAML), state (commands) and scheduler from `smr-core`; the API's
//! request and response bodies (api-types/src/types.rs) and join tokens (pki/src/token.rs)
//! compiled from their own source files, whose `crate::` paths resolve to the re-exports here.
#![allow(dead_code, unused_imports)]

pub use smr_core::{definitions, scheduler, state};

// Loaded through `path` (so, like a mod.rs, its own `path`s are relative to this directory).
#[path = "api.rs"]
pub mod api;
#[path = "pki.rs"]
pub mod pki;
