//! Gitops webhooks: signature headers and push payloads from anyone on the network. No input
//! panics; a signature is accepted only when it is the body's HMAC-SHA256 under the secret.
#![no_main]

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fuzz_target!(|input: (&[u8], &str, &[u8])| {
    let (secret, header, body) = input;
    let verdict = gitops::verify_signature(secret, body, header);
    if verdict.is_ok() {
        let expected = sign(secret, body);
        let given = header.trim();
        let given = given.split_once('=').map(|(_, hex)| hex).unwrap_or(given);
        assert!(
            given.eq_ignore_ascii_case(&expected),
            "accepted {header:?} for a body whose signature is {expected}"
        );
    }
    if !secret.is_empty() {
        let good = sign(secret, body);
        assert_eq!(gitops::verify_signature(secret, body, &good), Ok(()));
        assert!(gitops::verify_signature(secret, body, &format!("sha256={good}")).is_ok());
    }
    if let Ok(push) = gitops::parse_push(body) {
        let _ = (push.branch(), push.tag(), push.is_delete());
        assert!(push.repo_urls.iter().all(|u| !u.is_empty()));
    }
});
