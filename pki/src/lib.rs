//! The cluster PKI: the cluster CA, node and admin certificates, join tokens and the rustls
//! configurations of the REST API (port 1443) and the Raft RPC (port 9212).
//!
//! The first node generates a [`ClusterCa`] (ECDSA P-256); its private key never leaves that
//! node. Every other key is generated where it is used ([`new_key_and_csr`]): a joining node
//! holds only a [`JoinToken`] (`SMRTKN-1-<CA fingerprint>-<secret>`), connects with a
//! [`pinned_client_config`] that accepts a server only if its chain contains the CA whose SHA-256
//! is in the token, sends its CSR with the secret, and gets back a certificate the CA built
//! itself ([`ClusterCa::sign_csr`]: subject, SANs and usages come from the CA, only the public
//! key from the CSR). The role and name of a certificate sit in its subject (`CN=<name>`,
//! `OU=smr-node` / `OU=smr-admin`) and are read back from a verified peer by [`peer_identity`].
//!
//! ```text
//!  joiner                                   node with the CA
//!  token -> pinned_client_config  --TLS-->  api_server_config (client cert optional)
//!  new_key_and_csr -> CSR + secret  ----->  secret_sha256 matches? sign_csr(Node, name, sans)
//!  Identity{cert, key, ca}.save()  <-----  node certificate + CA certificate
//!  client_config / raft_server_config: mTLS with the cluster CA as the only trust anchor
//! ```
//!
//! Only the aws-lc-rs crypto provider is used; [`install_crypto_provider`] makes it the process
//! default, and every configuration built here names it explicitly.

#![forbid(unsafe_code)]

mod ca;
mod files;
mod identity;
mod live;
mod seal;
mod tls;
mod token;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use ca::{
    ClusterCa, LEAF_VALIDITY, Role, first_pem, join_pem, new_key_and_csr, pem_fingerprints,
};
pub use identity::{Identity, PeerIdentity, cert_serial, peer_identity, pem_serial};
pub use live::{LiveIdentity, PeerClient, renew_at, validity};
pub use seal::{CLUSTER_KEY_FILE, ClusterKey, SEALED_VALUE_PREFIX, is_sealed_value};
pub use tls::{
    CA_MISMATCH, api_server_config, api_server_config_live, client_config, pinned_client_config,
    pinned_reqwest_client, raft_server_config, raft_server_config_live, reqwest_client,
    reqwest_client_live,
};
pub use token::{JoinToken, TokenError, hash_secret, secret_matches};

/// File names used by [`ClusterCa::save`] / [`ClusterCa::load`] and [`Identity`].
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key file (mode 0600); only on the node that created the cluster (every other
/// node opens the copy sealed in the state, see [`ClusterKey`]).
pub const CA_KEY_FILE: &str = "ca.key";

/// Errors of the PKI module.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("certificate signing request rejected: {0}")]
    InvalidCsr(String),
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid subject alternative name {0:?}: must be an IP address or a DNS name")]
    InvalidSan(String),
    #[error("the private key does not belong to the certificate {0}")]
    KeyMismatch(&'static str),
    #[error("certificate could not be parsed: {0}")]
    BadCertificate(String),
    #[error("CA fingerprint must be 64 hex characters (SHA-256), got {0:?}")]
    InvalidFingerprint(String),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS verifier configuration failed: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("building the HTTP client failed: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cluster key: {0}")]
    Sealed(&'static str),
}

/// The one crypto provider of smr: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process-wide default rustls provider. Idempotent: a second call,
/// or a call after someone else installed a provider, does nothing.
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race against another installer is fine: a default exists either way.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}
