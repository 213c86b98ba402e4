//! Renews this node's certificates (node and admin) at 2/3 of their lifetime, with no restart.
//!
//! ```text
//!  sleep until renew_at(node.crt) --> new key + CSR (here) --> Node::sign_own (here, with the
//!  CA key this node holds or opens; else on the CA holder) --> pki/node.{crt,key} (and admin,
//!  admin.context) --> LiveIdentity::replace: the next TLS handshake of the API and Raft servers
//!  and of the node client presents the new certificate
//! ```
//! A failed renewal is logged and tried again (every 10 s, sooner for short lifetimes) until
//! it succeeds or the certificate expires.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api_types::types::SignRequest;
use tokio::sync::watch;

use crate::client::Context;
use crate::daemon::DaemonError;
use crate::node::Node;
use crate::pki::{self, Identity, LiveIdentity, Role};

/// Environment variable, FOR TESTS ONLY: the lifetime, in seconds (30 to 31536000), of the
/// certificates this node signs (default: a year). Tests set it on every agent to see renewals
/// within minutes; a production cluster must not.
pub const TEST_LIFETIME_ENV: &str = "SMR_TEST_CERT_LIFETIME_SECS";

/// The lifetime of the certificates this node signs: a year, or [`TEST_LIFETIME_ENV`].
pub fn leaf_validity() -> Result<Duration, DaemonError> {
    match std::env::var(TEST_LIFETIME_ENV) {
        Err(_) => Ok(pki::LEAF_VALIDITY),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(secs) if (30..=pki::LEAF_VALIDITY.as_secs()).contains(&secs) => {
                tracing::warn!(
                    "{TEST_LIFETIME_ENV}={secs}: certificates signed here last {secs} s (a \
                     setting for tests only)"
                );
                Ok(Duration::from_secs(secs))
            }
            _ => Err(DaemonError::Config(format!(
                "{TEST_LIFETIME_ENV}={text:?} must be a number of seconds from 30 to {}",
                pki::LEAF_VALIDITY.as_secs()
            ))),
        },
    }
}

/// What a renewal writes and asks for.
pub struct Renewal {
    pub pki_dir: PathBuf,
    /// The node's name (`CN`); the admin certificate is `admin@<name>`.
    pub name: String,
    /// The node certificate's SANs, as at its first issue.
    pub sans: Vec<String>,
    /// `admin.context`, rewritten with the renewed admin certificate.
    pub context_path: PathBuf,
    pub api_url: String,
}

/// Runs until `stop`: renews the node and admin certificates at 2/3 of the node certificate's
/// lifetime.
pub async fn run(
    node: Arc<Node>,
    live: Arc<LiveIdentity>,
    renewal: Renewal,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let wait = match pki::validity(&live.get().cert_pem) {
            Ok((not_before, not_after)) => {
                let at = pki::renew_at(not_before, not_after);
                at.duration_since(SystemTime::now()).unwrap_or_default()
            }
            Err(e) => {
                tracing::error!("certificate renewal: reading this node's certificate: {e}");
                return;
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = crate::shutdown::stopped(&mut stop) => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        match renew(&node, &live, &renewal).await {
            Ok(not_after) => {
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::info!(
                    valid_for_s = left.as_secs(),
                    "renewed this node's certificates (node and admin)"
                );
            }
            Err(e) => {
                let left = pki::validity(&live.get().cert_pem)
                    .ok()
                    .and_then(|(_, na)| na.duration_since(SystemTime::now()).ok())
                    .unwrap_or_default();
                tracing::warn!(
                    expires_in_s = left.as_secs(),
                    "certificate renewal failed, trying again: {e}"
                );
                let pause = (left / 20).clamp(Duration::from_secs(1), Duration::from_secs(10));
                tokio::select! {
                    _ = crate::shutdown::stopped(&mut stop) => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// One renewal of both certificates; returns the new node certificate's `notAfter`.
async fn renew(node: &Node, live: &LiveIdentity, renewal: &Renewal) -> Result<SystemTime, String> {
    let current = live.get();
    let ca_pem = current.ca_pem.clone();
    let issue = |role: Role, name: String, sans: Vec<String>| {
        let ca_pem = ca_pem.clone();
        async move {
            let (key_pem, csr) =
                pki::new_key_and_csr(role, &name, &sans).map_err(|e| e.to_string())?;
            let req = SignRequest {
                csr,
                admin: role == Role::Admin,
                name,
                sans,
            };
            let cert_pem = node.sign_own(req).await.map_err(|e| e.to_string())?;
            Identity::new(cert_pem, key_pem, ca_pem).map_err(|e| e.to_string())
        }
    };
    let node_id = issue(Role::Node, renewal.name.clone(), renewal.sans.clone()).await?;
    let admin = issue(Role::Admin, format!("admin@{}", renewal.name), Vec::new()).await?;
    node_id
        .save(&renewal.pki_dir, "node")
        .map_err(|e| e.to_string())?;
    live.replace(node_id.clone()).map_err(|e| e.to_string())?;
    admin
        .save(&renewal.pki_dir, "admin")
        .map_err(|e| e.to_string())?;
    Context {
        name: renewal.name.clone(),
        api_url: renewal.api_url.clone(),
        ca_pem: admin.ca_pem.clone(),
        cert_pem: admin.cert_pem.clone(),
        key_pem: admin.key_pem.clone(),
    }
    .save(&renewal.context_path)
    .map_err(|e| e.to_string())?;
    let (_, not_after) = pki::validity(&node_id.cert_pem).map_err(|e| e.to_string())?;
    Ok(not_after)
}
