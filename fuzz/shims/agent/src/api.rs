//! The API's request and response types (agent/src/api/types.rs).
#[path = "../../../../agent/src/api/types.rs"]
pub mod types;
