//! Join tokens (agent/src/pki/token.rs).
#[path = "../../../../agent/src/pki/token.rs"]
mod token;
pub use token::{JoinToken, TokenError, hash_secret, secret_matches};
