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
//!
//! The same loop follows the cluster CA record every second: during a CA rotation it makes the
//! node trust both CAs, renews its certificates from the next CA at once (presented with the
//! cross-signed certificate), finishes the rotation on the leader once every node's certificate
//! comes from the next CA, and drops the old CA afterwards ([`crate::state::ca_rotation`]).
//! After `smrmgr ca abort` it renews from the current CA again, and the leader drops the next
//! CA once every node is back on the current one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api_types::types::SignRequest;
use tokio::sync::watch;

use crate::client::Context;
use crate::daemon::DaemonError;
use crate::node::certs::identity_for;
use crate::node::{Consistency, Node};
use crate::pki::{self, Identity, LiveIdentity, Role};
use crate::state::ca_rotation::{self, CaAction};
use crate::state::{CaRecord, ClusterState, CommandResult, Op};

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

/// How often the node compares what it presents and trusts with the CA record (a CA rotation).
const CA_CHECK: Duration = Duration::from_secs(1);

/// Runs until `stop`: renews the node and admin certificates at 2/3 of the node certificate's
/// lifetime, and follows the cluster CA record (a rotation: trust both CAs, renew from the next
/// one, finish on the leader, drop the old CA; see [`crate::state::ca_rotation`]).
pub async fn run(
    node: Arc<Node>,
    live: Arc<LiveIdentity>,
    renewal: Renewal,
    mut stop: watch::Receiver<bool>,
) {
    let mut failed_at: Option<SystemTime> = None;
    loop {
        let renew_at = match pki::validity(&live.get().cert_pem) {
            Ok((not_before, not_after)) => pki::renew_at(not_before, not_after),
            Err(e) => {
                tracing::error!("certificate renewal: reading this node's certificate: {e}");
                return;
            }
        };
        // After a failure, the next attempt waits a pause that depends on what is left.
        let due = match failed_at {
            Some(at) => {
                let left = pki::validity(&live.get().cert_pem)
                    .ok()
                    .and_then(|(_, na)| na.duration_since(at).ok())
                    .unwrap_or_default();
                (at + (left / 20).clamp(Duration::from_secs(1), Duration::from_secs(10)))
                    .max(renew_at)
            }
            None => renew_at,
        };
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(CA_CHECK);
        if !wait.is_zero() {
            tokio::select! {
                _ = crate::shutdown::stopped(&mut stop) => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(e) = follow_ca(&node, &live, &renewal).await {
            tracing::warn!("following the cluster CA: {e}");
        }
        if SystemTime::now() < due {
            continue;
        }
        match renew(&node, &live, &renewal).await {
            Ok(not_after) => {
                failed_at = None;
                let left = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::info!(
                    valid_for_s = left.as_secs(),
                    "renewed this node's certificates (node and admin)"
                );
            }
            Err(e) => {
                failed_at = Some(SystemTime::now());
                let left = pki::validity(&live.get().cert_pem)
                    .ok()
                    .and_then(|(_, na)| na.duration_since(SystemTime::now()).ok())
                    .unwrap_or_default();
                tracing::warn!(
                    expires_in_s = left.as_secs(),
                    "certificate renewal failed, trying again: {e}"
                );
            }
        }
    }
}

/// This node's applied state (a stale read), for the loops that follow the CA record (this one
/// and [`crate::migration`]).
pub(crate) async fn stale_state(node: &Node) -> Result<Arc<ClusterState>, String> {
    node.state(Consistency::Stale)
        .await
        .map_err(|e| e.to_string())
}

/// Proposes an entry that ends a CA rotation, its abort or the key migration
/// ([`crate::migration`]); a rejection is the error.
pub(crate) async fn propose_ca_op(node: &Node, op: Op) -> Result<(), String> {
    match node.propose(op, None).await.map_err(|e| e.to_string())? {
        CommandResult::Rejected { reason } => Err(reason),
        _ => Ok(()),
    }
}

/// One step towards what the CA record asks ([`ca_rotation::ca_actions`]).
async fn follow_ca(node: &Node, live: &LiveIdentity, renewal: &Renewal) -> Result<(), String> {
    let state = stale_state(node).await?;
    let Some(record) = state.ca.as_ref() else {
        return Ok(());
    };
    let current = live.get();
    let trusted = current.ca_fingerprints().map_err(|e| e.to_string())?;
    let leaf_ca = current.leaf_ca_fingerprint().map_err(|e| e.to_string())?;
    let presents_cross = current.client_chain().map_err(|e| e.to_string())?.len() > 1;
    let members = if record.next.is_some() && node.is_leader() {
        let nodes = node
            .nodes(Consistency::Stale)
            .await
            .map_err(|e| e.to_string())?;
        Some(
            nodes
                .into_iter()
                .map(|n| (n.id, n.cert_ca))
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    if let (Some(next), Some(members)) = (&record.next, &members) {
        let (done, total) = ca_rotation::progress(record, members);
        crate::metrics::ca_rotation::record_progress(&next.fingerprint, done, total);
    }
    match retire_ca_key(&renewal.pki_dir, record) {
        Ok(true) => tracing::info!(
            "deleted {}: the key of a CA rotated out (the state's CA is {})",
            renewal.pki_dir.join(pki::CA_KEY_FILE).display(),
            record.fingerprint
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!("the CA key file: {e}"),
    }
    let actions = ca_rotation::ca_actions(&ca_rotation::NodeCaView {
        ca: record,
        trusted: &trusted,
        presents_cross,
        leaf_ca: &leaf_ca,
        members: members.as_deref(),
    });
    for action in actions {
        match action {
            CaAction::Trust { cas } => {
                let node_id = identity_for(record, &current.cert_pem, &current.key_pem)?;
                let admin = Identity::load(&renewal.pki_dir, "admin").map_err(|e| e.to_string())?;
                let admin = identity_for(record, &admin.cert_pem, &admin.key_pem)?;
                install(live, renewal, node_id, admin)?;
                tracing::info!(?cas, "this node now trusts the CAs of the CA record");
            }
            CaAction::Renew => {
                renew(node, live, renewal).await?;
                tracing::info!(ca = %ca_rotation::signing_ca(record), "renewed this node's certificates from the CA that signs now");
            }
            CaAction::Finish { fingerprint } => {
                let op = Op::FinishCaRotation {
                    fingerprint: fingerprint.clone(),
                };
                propose_ca_op(node, op).await?;
                tracing::info!(%fingerprint, "CA rotation finished: every node's certificate comes from the new CA")
            }
            CaAction::FinishAbort { fingerprint } => {
                // A node of an older version joined meanwhile: it would stop at the entry.
                if !node
                    .members_support(crate::node::features::Feature::CaAbort)
                    .await
                {
                    tracing::info!(%fingerprint, "the CA rotation abort waits for every node to read its end (an older version is a member)");
                    continue;
                }
                let op = Op::FinishCaAbort {
                    fingerprint: fingerprint.clone(),
                };
                propose_ca_op(node, op).await?;
                tracing::info!(%fingerprint, "CA rotation abort finished: every node's certificate comes from the current CA again; the next CA is trusted no longer")
            }
        }
    }
    Ok(())
}

/// Saves both identities and `admin.context`, then presents (and trusts) the node identity from
/// the next handshake on. The admin side goes first: once the node's health shows a
/// certificate of the next CA (what finishes a rotation), its `admin.context` has one too.
fn install(
    live: &LiveIdentity,
    renewal: &Renewal,
    node_id: Identity,
    admin: Identity,
) -> Result<(), String> {
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
    node_id
        .save(&renewal.pki_dir, "node")
        .map_err(|e| e.to_string())?;
    live.replace(node_id).map_err(|e| e.to_string())
}

/// One renewal of both certificates, from the CA that signs now, as the CA record asks them
/// presented; returns the new node certificate's `notAfter`.
async fn renew(node: &Node, live: &LiveIdentity, renewal: &Renewal) -> Result<SystemTime, String> {
    let issue = |role: Role, name: String, sans: Vec<String>| async move {
        let (key_pem, csr) = pki::new_key_and_csr(role, &name, &sans).map_err(|e| e.to_string())?;
        let req = SignRequest {
            csr,
            admin: role == Role::Admin,
            name,
            sans,
        };
        let cert_pem = node.sign_own(req).await.map_err(|e| e.to_string())?;
        // The record as it is once signed: the certificate is of the CA that signs now.
        let state = stale_state(node).await?;
        match state.ca.as_ref() {
            Some(record) => identity_for(record, &cert_pem, &key_pem),
            None => Identity::new(cert_pem, key_pem, live.get().ca_pem).map_err(|e| e.to_string()),
        }
    };
    let node_id = issue(Role::Node, renewal.name.clone(), renewal.sans.clone()).await?;
    let admin = issue(Role::Admin, format!("admin@{}", renewal.name), Vec::new()).await?;
    let (_, not_after) = pki::validity(&node_id.cert_pem).map_err(|e| e.to_string())?;
    install(live, renewal, node_id, admin)?;
    Ok(not_after)
}

/// After a CA rotation, `pki/ca.key` of the node that created the cluster is the key of a CA
/// the state no longer names: it is deleted (nothing signs with it any more, and nobody trusts
/// its CA). It is kept while its CA is the state's CA or the next one (a rotation under way may
/// be aborted back to it), and when it cannot be read as a key of either. Returns whether it
/// was deleted; no file: `false`.
pub fn retire_ca_key(pki_dir: &std::path::Path, record: &CaRecord) -> Result<bool, String> {
    let path = pki_dir.join(pki::CA_KEY_FILE);
    let key_pem = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let named = std::iter::once(record.cert_pem.as_str())
        .chain(record.next.as_ref().map(|n| n.cert_pem.as_str()));
    for cert_pem in named {
        match pki::ClusterCa::from_pem(cert_pem, &key_pem) {
            Ok(_) => return Ok(false),
            Err(pki::PkiError::KeyMismatch(_)) => {}
            Err(e) => return Err(format!("{} kept: {e}", path.display())),
        }
    }
    std::fs::remove_file(&path).map_err(|e| format!("deleting {}: {e}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterCa;
    use crate::state::NextCa;

    fn record(current: &ClusterCa, next: Option<&ClusterCa>) -> CaRecord {
        CaRecord {
            cert_pem: current.cert_pem().into(),
            fingerprint: current.fingerprint(),
            holder: 1,
            key_sealed: None,
            next: next.map(|ca| NextCa {
                cert_pem: ca.cert_pem().into(),
                fingerprint: ca.fingerprint(),
                key_sealed: String::new(),
                cross_pem: String::new(),
                started_ms: 0,
                aborted_ms: None,
            }),
            previous: None,
            key_migrating: false,
        }
    }

    #[test]
    fn the_ca_key_file_is_deleted_only_once_its_ca_is_neither_current_nor_next() {
        pki::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let old = ClusterCa::generate("t").unwrap();
        let new = old.generate_successor().unwrap();
        let other = ClusterCa::generate("t").unwrap();
        old.save(dir.path()).unwrap();
        let key = dir.path().join(pki::CA_KEY_FILE);
        // Its CA is the state's, during a rotation from it and after an abort back to it.
        assert_eq!(retire_ca_key(dir.path(), &record(&old, None)), Ok(false));
        assert_eq!(
            retire_ca_key(dir.path(), &record(&old, Some(&new))),
            Ok(false)
        );
        // A rotation to it (from another CA) may still finish.
        assert_eq!(
            retire_ca_key(dir.path(), &record(&other, Some(&old))),
            Ok(false)
        );
        assert!(key.exists());
        // Rotated out: deleted; then nothing to do.
        assert_eq!(retire_ca_key(dir.path(), &record(&new, None)), Ok(true));
        assert!(!key.exists());
        assert!(dir.path().join(pki::CA_CERT_FILE).exists());
        assert_eq!(retire_ca_key(dir.path(), &record(&new, None)), Ok(false));
        // A file that is no key is kept, with the reason.
        std::fs::write(&key, "not a key").unwrap();
        let kept = retire_ca_key(dir.path(), &record(&new, None)).unwrap_err();
        assert!(kept.contains("kept"), "{kept}");
        assert!(key.exists());
    }
}
