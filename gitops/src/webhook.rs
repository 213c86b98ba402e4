//! Push webhooks: HMAC-SHA256 signature checks for GitHub (`X-Hub-Signature-256:
//! sha256=<hex>`) and Gitea/Forgejo (`X-Gitea-Signature: <hex>`), and a small parser of
//! their push payloads (ref, new commit, repository URLs) so the agent can tell which
//! gitops objects a push concerns. Comparison is constant-time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("no webhook secret is configured; refusing unsigned deliveries")]
    NoSecret,
    #[error("signature header is empty")]
    MissingSignature,
    #[error("unsupported signature algorithm {0:?} (only sha256 is accepted)")]
    UnsupportedAlgorithm(String),
    #[error("signature is not hex-encoded SHA-256")]
    MalformedSignature,
    #[error("signature does not match the body")]
    Mismatch,
    #[error("push payload is not valid: {0}")]
    BadPayload(String),
}

/// Checks `header` (the value of `X-Hub-Signature-256` or `X-Gitea-Signature`) against
/// the HMAC-SHA256 of `body` keyed by `secret`.
pub fn verify_signature(secret: &[u8], body: &[u8], header: &str) -> Result<(), WebhookError> {
    if secret.is_empty() {
        return Err(WebhookError::NoSecret);
    }
    let header = header.trim();
    if header.is_empty() {
        return Err(WebhookError::MissingSignature);
    }
    let hex_part = match header.split_once('=') {
        Some((algo, hex)) if algo.eq_ignore_ascii_case("sha256") => hex,
        Some((algo, _)) => return Err(WebhookError::UnsupportedAlgorithm(algo.to_string())),
        None => header,
    };
    if hex_part.len() != 64 {
        return Err(WebhookError::MalformedSignature);
    }
    let expected = hex::decode(hex_part).map_err(|_| WebhookError::MalformedSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::NoSecret)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::Mismatch)
}

/// The interesting part of a GitHub or Gitea push event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// Full ref name, e.g. `refs/heads/main` or `refs/tags/v1`.
    pub git_ref: String,
    /// The commit the ref points to after the push (all zeros when it was deleted).
    pub after: String,
    /// Clone URLs of the repository (https, ssh, git), as the forge reports them.
    pub repo_urls: Vec<String>,
}

impl PushEvent {
    /// `main` for `refs/heads/main`.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/")
    }

    /// `v1` for `refs/tags/v1`.
    pub fn tag(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/tags/")
    }

    /// True when the push deleted the ref.
    pub fn is_delete(&self) -> bool {
        !self.after.is_empty() && self.after.bytes().all(|b| b == b'0')
    }
}

#[derive(Deserialize)]
struct RawPush {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    repository: Option<RawRepo>,
}

#[derive(Deserialize)]
struct RawRepo {
    clone_url: Option<String>,
    ssh_url: Option<String>,
    git_url: Option<String>,
    html_url: Option<String>,
}

/// Parses a GitHub or Gitea push payload (`application/json`).
pub fn parse_push(body: &[u8]) -> Result<PushEvent, WebhookError> {
    let raw: RawPush =
        serde_json::from_slice(body).map_err(|e| WebhookError::BadPayload(e.to_string()))?;
    let repo_urls = raw
        .repository
        .map(|r| {
            [r.clone_url, r.ssh_url, r.git_url, r.html_url]
                .into_iter()
                .flatten()
                .filter(|u| !u.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(PushEvent {
        git_ref: raw.git_ref,
        after: raw.after,
        repo_urls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        let sig = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(sign(b"Jefe", b"what do ya want for nothing?"), sig);
        assert_eq!(
            verify_signature(
                b"Jefe",
                b"what do ya want for nothing?",
                &format!("sha256={sig}")
            ),
            Ok(())
        );
        assert_eq!(
            verify_signature(b"Jefe", b"what do ya want for nothing?", sig),
            Ok(())
        );
    }

    #[test]
    fn github_and_gitea_forms() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = sign(b"s3", body);
        assert_eq!(
            verify_signature(b"s3", body, &format!("sha256={sig}")),
            Ok(())
        );
        assert_eq!(verify_signature(b"s3", body, &sig.to_uppercase()), Ok(()));
        assert_eq!(verify_signature(b"s3", body, &format!(" {sig}\n")), Ok(()));
    }

    #[test]
    fn rejections() {
        let body = b"payload";
        let sig = sign(b"key", body);
        assert_eq!(
            verify_signature(b"other", body, &sig),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"key", b"payload2", &format!("sha256={sig}")),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"", body, &sig),
            Err(WebhookError::NoSecret)
        );
        assert_eq!(
            verify_signature(b"key", body, ""),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify_signature(b"key", body, "sha1=abcd"),
            Err(WebhookError::UnsupportedAlgorithm("sha1".into()))
        );
        assert_eq!(
            verify_signature(b"key", body, &sig[..63]),
            Err(WebhookError::MalformedSignature)
        );
        let mut bad = sig.clone();
        bad.replace_range(0..1, "z");
        assert_eq!(
            verify_signature(b"key", body, &bad),
            Err(WebhookError::MalformedSignature)
        );
    }

    #[test]
    fn github_push() {
        let body = br#"{"ref":"refs/heads/main","before":"a","after":"0123456789abcdef0123456789abcdef01234567",
            "repository":{"full_name":"o/r","clone_url":"https://github.com/o/r.git","ssh_url":"git@github.com:o/r.git",
            "git_url":"git://github.com/o/r.git","html_url":"https://github.com/o/r"},"pusher":{"name":"x"}}"#;
        let ev = parse_push(body).unwrap();
        assert_eq!(
            ev,
            PushEvent {
                git_ref: "refs/heads/main".into(),
                after: "0123456789abcdef0123456789abcdef01234567".into(),
                repo_urls: vec![
                    "https://github.com/o/r.git".into(),
                    "git@github.com:o/r.git".into(),
                    "git://github.com/o/r.git".into(),
                    "https://github.com/o/r".into(),
                ],
            }
        );
        assert_eq!(ev.branch(), Some("main"));
        assert_eq!(ev.tag(), None);
        assert!(!ev.is_delete());
    }

    #[test]
    fn gitea_tag_delete() {
        let body = br#"{"ref":"refs/tags/v1","after":"0000000000000000000000000000000000000000",
            "repository":{"clone_url":"http://gitea/o/r.git","ssh_url":""}}"#;
        let ev = parse_push(body).unwrap();
        assert_eq!(ev.tag(), Some("v1"));
        assert!(ev.is_delete());
        assert_eq!(ev.repo_urls, vec!["http://gitea/o/r.git".to_string()]);
        assert!(matches!(
            parse_push(b"{}"),
            Err(WebhookError::BadPayload(_))
        ));
    }
}
