//! What a client of smr's REST API needs, and nothing else: the request and response bodies
//! ([`types`], [`sync_views`]), the typed [`client`], the framing of interactive exec
//! ([`stream`]), where to find the [`context`], the retry policy with a deadline ([`retry`]). smrctl links this crate and `smr-core`, never the agent.
#![forbid(unsafe_code)]

pub mod client;
pub mod context;
pub mod retry;
pub mod stream;
pub mod sync_views;
pub mod types;

use std::time::{SystemTime, UNIX_EPOCH};

// The moved files name the model as `crate::definitions` and `crate::state`.
use smr_core::{definitions, state};

use definitions::Object;
use state::StoredObject;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Objects as users write them (for `-o yaml`).
pub fn plain_objects(stored: &[StoredObject]) -> Vec<Object> {
    stored.iter().map(|s| s.object.clone()).collect()
}
