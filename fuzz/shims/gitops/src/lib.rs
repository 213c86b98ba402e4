//! gitops's parsers of untrusted input, compiled from the crate's own source files (the same
//! module names at the root, so their `crate::` paths resolve), without git itself.
#![allow(dead_code)]

#[path = "../../../../gitops/src/error.rs"]
mod error;
#[path = "../../../../gitops/src/paths.rs"]
mod paths;
#[path = "../../../../gitops/src/webhook.rs"]
mod webhook;

pub use error::GitError;
pub use paths::{PackInfo, normalize_directory, parse_pack};
pub use webhook::{PushEvent, WebhookError, parse_push, verify_signature};
