//! PKI: TEMPORARY STUB in main with the planned API; replaced by the pki branch.
#![allow(dead_code, unused_variables)]
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Other(String),
}

pub fn install_crypto_provider() {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Node,
    Admin,
}

pub struct ClusterCa {}
impl ClusterCa {
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, PkiError> {
        todo!()
    }
    pub fn load(dir: &Path) -> Result<ClusterCa, PkiError> {
        todo!()
    }
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        todo!()
    }
    pub fn cert_pem(&self) -> &str {
        todo!()
    }
    pub fn fingerprint(&self) -> String {
        todo!()
    }
    pub fn sign_csr(&self, csr_pem: &str, role: Role, name: &str, sans: &[String]) -> Result<String, PkiError> {
        todo!()
    }
}

pub fn new_key_and_csr(role: Role, name: &str, sans: &[String]) -> Result<(String, String), PkiError> {
    todo!()
}

#[derive(Clone, Debug)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}
impl Identity {
    pub fn load(dir: &Path, prefix: &str) -> Result<Identity, PkiError> {
        todo!()
    }
    pub fn save(&self, dir: &Path, prefix: &str) -> Result<(), PkiError> {
        todo!()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
}

pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<PeerIdentity> {
    todo!()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub secret: String,
}
impl JoinToken {
    pub fn generate(ca_fingerprint: &str) -> JoinToken {
        todo!()
    }
    pub fn secret_sha256(&self) -> String {
        todo!()
    }
}
impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        todo!()
    }
}
impl std::str::FromStr for JoinToken {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        todo!()
    }
}

pub fn api_server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    todo!()
}
pub fn raft_server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    todo!()
}
pub fn reqwest_client(ca_pem: &str, identity: Option<&Identity>, timeout: Duration) -> Result<reqwest::Client, PkiError> {
    todo!()
}
pub fn pinned_reqwest_client(ca_fingerprint: &str, timeout: Duration) -> Result<reqwest::Client, PkiError> {
    todo!()
}
pub fn fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    todo!()
}
