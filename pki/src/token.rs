//! Join tokens: `SMRTKN-1-<64 hex: SHA-256 of the CA certificate>-<64 hex: secret>`.
//!
//! The fingerprint lets a joiner authenticate the cluster before it trusts anything; the
//! secret (32 random bytes) authenticates the joiner to the cluster, which stores only its
//! SHA-256 ([`hash_secret`]) and compares in constant time ([`secret_matches`]).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

const PREFIX: &str = "SMRTKN-";
const VERSION: &str = "1";

/// Why a string is not a usable join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not an smr join token (expected SMRTKN-1-<fingerprint>-<secret>)")]
    NotAToken,
    #[error("token version {0} is not supported (this smr reads version 1)")]
    UnsupportedVersion(String),
    #[error("token is malformed: fingerprint must be 64 hex characters")]
    BadFingerprint,
    #[error("token is malformed: secret must be 64 hex characters")]
    BadSecret,
}

/// A join token. `Display` prints the full token (secret included); `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the cluster CA certificate (DER).
    pub ca_fingerprint: String,
    /// Lowercase hex of 32 random bytes.
    pub secret: String,
}

impl JoinToken {
    /// A token with a fresh random secret for the CA with `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> Result<JoinToken, TokenError> {
        if !is_hex64(ca_fingerprint) {
            return Err(TokenError::BadFingerprint);
        }
        let secret: [u8; 32] = rand::random();
        Ok(JoinToken {
            ca_fingerprint: ca_fingerprint.to_ascii_lowercase(),
            secret: hex::encode(secret),
        })
    }

    /// Hex SHA-256 of the secret: what the cluster stores instead of the secret.
    pub fn secret_sha256(&self) -> String {
        hash_secret(&self.secret)
    }
}

/// Hex SHA-256 of a secret as written in a token (its lowercase hex text, UTF-8).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(
        secret.trim().to_ascii_lowercase().as_bytes(),
    ))
}

/// Whether `secret` hashes to `stored_sha256` (hex); constant time in the hash comparison.
pub fn secret_matches(stored_sha256: &str, secret: &str) -> bool {
    let presented = hash_secret(secret);
    let stored = stored_sha256.trim().to_ascii_lowercase();
    if presented.len() != stored.len() {
        return false;
    }
    presented
        .bytes()
        .zip(stored.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{VERSION}-{}-{}",
            self.ca_fingerprint, self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix(PREFIX).ok_or(TokenError::NotAToken)?;
        let (version, rest) = rest.split_once('-').ok_or(TokenError::NotAToken)?;
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::NotAToken);
        }
        if version != VERSION {
            return Err(TokenError::UnsupportedVersion(version.to_owned()));
        }
        let (fingerprint, secret) = rest.split_once('-').ok_or(TokenError::BadFingerprint)?;
        if !is_hex64(fingerprint) {
            return Err(TokenError::BadFingerprint);
        }
        if !is_hex64(secret) {
            return Err(TokenError::BadSecret);
        }
        Ok(JoinToken {
            ca_fingerprint: fingerprint.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn round_trip() {
        let t = JoinToken::generate(FP).unwrap();
        let s = t.to_string();
        assert!(s.starts_with(&format!("SMRTKN-1-{FP}-")));
        assert_eq!(s.len(), "SMRTKN-1-".len() + 64 + 1 + 64);
        let back: JoinToken = s.parse().unwrap();
        assert_eq!(back, t);
        // Pasted with a newline and in upper case.
        let pasted = format!(
            "  SMRTKN-1-{}-{}\n",
            t.ca_fingerprint.to_ascii_uppercase(),
            t.secret.to_ascii_uppercase()
        );
        assert_eq!(pasted.parse::<JoinToken>().unwrap(), t);
        assert_eq!(JoinToken::generate(FP).unwrap().secret.len(), 64);
        assert_ne!(JoinToken::generate(FP).unwrap().secret, t.secret);
    }

    #[test]
    fn exact_format() {
        let t = JoinToken {
            ca_fingerprint: FP.into(),
            secret: "ab".repeat(32),
        };
        assert_eq!(t.to_string(), format!("SMRTKN-1-{FP}-{}", "ab".repeat(32)));
        assert!(!format!("{t:?}").contains(&"ab".repeat(32)));
    }

    #[test]
    fn parse_errors() {
        let secret = "ab".repeat(32);
        let cases = [
            ("SWMTKN-1-abc-def".to_string(), TokenError::NotAToken),
            ("".into(), TokenError::NotAToken),
            ("SMRTKN-".into(), TokenError::NotAToken),
            (format!("SMRTKN-x-{FP}-{secret}"), TokenError::NotAToken),
            (
                format!("SMRTKN-2-{FP}-{secret}"),
                TokenError::UnsupportedVersion("2".into()),
            ),
            (
                format!("SMRTKN-1-{}-{secret}", &FP[..63]),
                TokenError::BadFingerprint,
            ),
            (
                format!("SMRTKN-1-{}g-{secret}", &FP[..63]),
                TokenError::BadFingerprint,
            ),
            (format!("SMRTKN-1-{FP}"), TokenError::BadFingerprint),
            (
                format!("SMRTKN-1-{FP}-{}", &secret[..10]),
                TokenError::BadSecret,
            ),
            (format!("SMRTKN-1-{FP}-{secret}-x"), TokenError::BadSecret),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<JoinToken>(), Err(want), "{input}");
        }
        assert_eq!(
            TokenError::NotAToken.to_string(),
            "token is not an smr join token (expected SMRTKN-1-<fingerprint>-<secret>)"
        );
        assert_eq!(
            TokenError::UnsupportedVersion("2".into()).to_string(),
            "token version 2 is not supported (this smr reads version 1)"
        );
        assert_eq!(
            TokenError::BadFingerprint.to_string(),
            "token is malformed: fingerprint must be 64 hex characters"
        );
        assert_eq!(
            JoinToken::generate("abc").unwrap_err(),
            TokenError::BadFingerprint
        );
    }

    #[test]
    fn secret_hash() {
        let t = JoinToken {
            ca_fingerprint: FP.into(),
            secret: "ab".repeat(32),
        };
        // sha256 of the 64 ASCII characters "abab...ab".
        assert_eq!(
            t.secret_sha256(),
            hex::encode(Sha256::digest("ab".repeat(32)))
        );
        assert!(secret_matches(&t.secret_sha256(), &t.secret));
        assert!(secret_matches(
            &t.secret_sha256().to_uppercase(),
            &"AB".repeat(32)
        ));
        assert!(!secret_matches(&t.secret_sha256(), &"ac".repeat(32)));
        assert!(!secret_matches("", &t.secret));
    }
}
