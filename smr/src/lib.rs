//! Pieces of the `smrmgr` binary: how `smrmgr start` records and checks its settings.

pub mod backup;
pub mod start;

pub use api_types::context::{DEFAULT_DATA_DIR, default_context_pointer, resolve_context};
