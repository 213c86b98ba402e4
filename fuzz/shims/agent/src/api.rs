//! The API's request and response types (api-types/src/types.rs).
#[path = "../../../../api-types/src/types.rs"]
pub mod types;
