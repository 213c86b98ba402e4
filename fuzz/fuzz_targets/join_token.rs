//! Join tokens (`smrmgr start --token`, `POST /join`): no input panics the parser; an accepted
//! token prints back to itself and its secret matches its own hash.
#![no_main]

use agent::pki::{JoinToken, hash_secret, secret_matches};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The stored-hash comparison takes anything without panicking.
    let _ = secret_matches(text, text);
    let Ok(token) = text.parse::<JoinToken>() else {
        return;
    };
    let printed = token.to_string();
    assert_eq!(printed.parse::<JoinToken>().as_ref(), Ok(&token));
    assert!(secret_matches(&hash_secret(&token.secret), &token.secret));
    // Debug shows the (public) CA fingerprint, and a token whose secret is that same text is
    // valid: look for the secret in what Debug shows besides the fingerprint.
    let debug = format!("{token:?}").replace(&token.ca_fingerprint, "");
    assert!(!debug.contains(&token.secret), "Debug shows the secret");
});
