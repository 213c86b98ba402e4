//! The cluster key and the CA key sealed with it, so that every node can sign.
//!
//! The node that creates the cluster generates a [`ClusterKey`] (256 random bits) beside the CA.
//! The CA private key travels through the replicated state only sealed with it
//! ([`ClusterKey::seal_ca`]: AES-256-GCM, a random 96-bit nonce, the CA fingerprint as associated
//! data, so a sealed key cannot be passed off as another CA's). A joining node receives the
//! cluster key in the answer to its join (token-authenticated, over TLS pinned to the CA) and keeps
//! it in `pki/cluster.key` (0600). A node that holds the cluster key opens the CA key from the
//! state when it has to sign ([`ClusterKey::open_ca`]); the opened key stays in that process's
//! memory: it is written nowhere (the first node keeps the `ca.key` file it always had).
//!
//! ```text
//!  state.ca.key_sealed = "v1:" hex(nonce(12) || AES-256-GCM(ca.key PEM, aad = "smr-ca-key:" fpr))
//! ```
//!
//! The values of `kind: secret` objects are sealed with the same key ([`ClusterKey::seal_value`])
//! before they are proposed, and stay sealed in the state, the Raft log, snapshots, etcd and
//! backups. That sealing is deterministic, so that an unchanged secret applied again is the same
//! text and stays a no-op: AES-256-GCM-SIV (nonce-misuse resistant) under a key derived from the
//! cluster key, with a nonce derived from the value by HMAC-SHA256 under another derived key.
//! Equal values of the same field seal to equal texts (that much is visible); the field's place
//! (`group/name:field`) is the associated data, so a sealed value cannot be moved to another one.
//!
//! ```text
//!  value = "smr-sealed:v1:" hex(nonce(12) || AES-256-GCM-SIV(value, aad = "smr-secret:" place))
//!  nonce = HMAC-SHA256(HMAC-SHA256(cluster key, "smr-secret-nonce-v1"), place 0x00 value)[..12]
//! ```

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{
    AES_256_GCM, AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey,
};
use aws_lc_rs::hmac;

use super::PkiError;
use super::ca::ClusterCa;
use super::files::{self, KEY_MODE};

/// File name of the cluster key in a node's `pki/` directory.
pub const CLUSTER_KEY_FILE: &str = "cluster.key";

const SEALED_PREFIX: &str = "v1:";
/// How a sealed secret value starts.
pub const SEALED_VALUE_PREFIX: &str = "smr-sealed:v1:";
const KEY_TEXT_PREFIX: &str = "SMRKEY-1-";

/// The cluster's key-encryption key: 32 random bytes. Its text form is `SMRKEY-1-<64 hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(***)")
    }
}

impl ClusterKey {
    /// A new random key.
    pub fn generate() -> ClusterKey {
        ClusterKey(rand::random())
    }

    /// `SMRKEY-1-<64 hex>`.
    pub fn to_text(&self) -> String {
        format!("{KEY_TEXT_PREFIX}{}", hex::encode(self.0))
    }

    /// Reads the text form (surrounding white space ignored).
    pub fn from_text(text: &str) -> Result<ClusterKey, PkiError> {
        let bad = || PkiError::Sealed("the cluster key must be SMRKEY-1- and 64 hex characters");
        let hex_part = text.trim().strip_prefix(KEY_TEXT_PREFIX).ok_or_else(bad)?;
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        Ok(ClusterKey(bytes.try_into().map_err(|_| bad())?))
    }

    /// Loads the key from `path` (its text form).
    pub fn load(path: &Path) -> Result<ClusterKey, PkiError> {
        ClusterKey::from_text(&files::read_text(path)?)
    }

    /// Saves the key to `path` (mode 0600), atomically.
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        if let Some(dir) = path.parent() {
            files::ensure_dir(dir)?;
        }
        files::write_atomic(path, format!("{}\n", self.to_text()).as_bytes(), KEY_MODE)
    }

    fn aead(&self) -> LessSafeKey {
        // 32 bytes is always a valid AES-256 key.
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("AES-256 key of 32 bytes"))
    }

    /// The CA private key sealed with this key (see the module documentation).
    pub fn seal_ca(&self, ca: &ClusterCa) -> Result<String, PkiError> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut data = ca.key_pem().as_bytes().to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad(&ca.fingerprint())),
                &mut data,
            )
            .map_err(|_| PkiError::Sealed("sealing the CA key failed"))?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{SEALED_PREFIX}{}", hex::encode(out)))
    }

    /// Opens a CA key sealed by [`ClusterKey::seal_ca`] for the CA certificate `cert_pem`.
    /// Fails with a clear error when this is not the key it was sealed with, or when the
    /// sealed text was made for another CA or altered.
    pub fn open_ca(&self, cert_pem: &str, sealed: &str) -> Result<ClusterCa, PkiError> {
        let bad = PkiError::Sealed("the sealed CA key is not in the v1 format");
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .ok_or(bad)?;
        if bytes.len() <= NONCE_LEN {
            return Err(PkiError::Sealed("the sealed CA key is too short"));
        }
        let (nonce, sealed_data) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        let fingerprint =
            super::ca::fingerprint_der(&super::ca::parse_cert_pem(cert_pem, "CA certificate")?);
        let mut data = sealed_data.to_vec();
        let plain = self
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&fingerprint)),
                &mut data,
            )
            .map_err(|_| {
                PkiError::Sealed(
                    "the CA key does not open with this cluster key (another cluster's key, or \
                     altered)",
                )
            })?;
        let key_pem = std::str::from_utf8(plain)
            .map_err(|_| PkiError::Sealed("the opened CA key is not text"))?
            .to_owned();
        ClusterCa::from_pem(cert_pem, &key_pem)
    }
}

/// Whether `value` has the form of a sealed secret value (it may still not open).
pub fn is_sealed_value(value: &str) -> bool {
    value.starts_with(SEALED_VALUE_PREFIX)
}

impl ClusterKey {
    /// A key for one purpose, derived from the cluster key.
    fn derived(&self, label: &[u8]) -> hmac::Tag {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.0), label)
    }

    /// The secret value `value` of the field at `place` (`group/name:field`) sealed with this
    /// key, deterministically (see the module documentation).
    pub fn seal_value(&self, place: &str, value: &str) -> String {
        let nonce_key = hmac::Key::new(
            hmac::HMAC_SHA256,
            self.derived(b"smr-secret-nonce-v1").as_ref(),
        );
        let mut ctx = hmac::Context::with_key(&nonce_key);
        ctx.update(place.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        let tag = ctx.sign();
        let nonce: [u8; NONCE_LEN] = tag.as_ref()[..NONCE_LEN]
            .try_into()
            .expect("HMAC-SHA256 is longer than a nonce");
        let mut data = value.as_bytes().to_vec();
        self.value_aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(value_aad(place)),
                &mut data,
            )
            .expect("AES-256-GCM-SIV seals any string");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{SEALED_VALUE_PREFIX}{}", hex::encode(out))
    }

    /// Opens a value sealed by [`ClusterKey::seal_value`] for the same `place`. Fails with a
    /// clear error when it is not in that form, was sealed with another key or for another
    /// place, or was altered.
    pub fn open_value(&self, place: &str, sealed: &str) -> Result<String, PkiError> {
        let bytes = sealed
            .strip_prefix(SEALED_VALUE_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or(PkiError::Sealed(
                "the sealed secret value is not in the smr-sealed:v1 format",
            ))?;
        let (nonce, sealed_data) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        let mut data = sealed_data.to_vec();
        let plain = self
            .value_aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(value_aad(place)),
                &mut data,
            )
            .map_err(|_| {
                PkiError::Sealed(
                    "the secret value does not open with this cluster key (another cluster's \
                     key, another field's value, or altered)",
                )
            })?;
        String::from_utf8(plain.to_vec())
            .map_err(|_| PkiError::Sealed("the opened secret value is not text"))
    }

    fn value_aead(&self) -> LessSafeKey {
        let key = self.derived(b"smr-secret-enc-v1");
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM_SIV, key.as_ref()).expect("AES-256 key of 32 bytes"),
        )
    }
}

fn value_aad(place: &str) -> Vec<u8> {
    format!("smr-secret:{place}").into_bytes()
}

fn aad(fingerprint: &str) -> Vec<u8> {
    format!("smr-ca-key:{fingerprint}").into_bytes()
}
