//! Join tokens (pki/src/token.rs).
#[path = "../../../../pki/src/token.rs"]
mod token;
pub use token::{JoinToken, TokenError, hash_secret, secret_matches};
