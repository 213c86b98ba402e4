//! Certificates of a running node: who may sign (the CA key on the node that created the
//! cluster, or the sealed copy in the state opened with the cluster key on every other node),
//! this node's live certificate (what the API and Raft servers and the node client present,
//! replaced on renewal) and its expiry.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use api_types::types::SignRequest;

use super::{Node, NodeError, read_error};
use crate::pki::{ClusterCa, ClusterKey, LiveIdentity, Role};

/// This node's PKI as the daemon set it up.
pub struct NodePki {
    /// Opens the CA key sealed in the state; `None` in a cluster created before it existed.
    pub cluster_key: Option<ClusterKey>,
    /// The certificate this node presents now.
    pub live: Arc<LiveIdentity>,
    /// Lifetime of the certificates this node signs (a year; shorter only in tests).
    pub leaf_validity: Duration,
}

/// Set once at start ([`Node::set_pki`]); the CA opened from the state is cached by fingerprint.
#[derive(Default)]
pub struct Certs {
    pki: OnceLock<NodePki>,
    opened: Mutex<Option<Arc<ClusterCa>>>,
}

impl Node {
    /// Gives the node its PKI (once, at start).
    pub fn set_pki(&self, pki: NodePki) {
        let _ = self.certs.pki.set(pki);
    }

    /// The certificate this node presents, if the daemon set it.
    pub fn live_identity(&self) -> Option<Arc<LiveIdentity>> {
        self.certs.pki.get().map(|p| p.live.clone())
    }

    /// The cluster key, where this node has one: it seals and opens secret values.
    pub fn cluster_key(&self) -> Option<&ClusterKey> {
        self.certs.pki.get().and_then(|p| p.cluster_key.as_ref())
    }

    /// The cluster key a joining node receives.
    pub(super) fn cluster_key_text(&self) -> Option<String> {
        self.certs
            .pki
            .get()
            .and_then(|p| p.cluster_key.as_ref())
            .map(ClusterKey::to_text)
    }

    /// When this node's certificate expires, in ms since the epoch.
    pub fn cert_expires_ms(&self) -> Option<u64> {
        let identity = self.live_identity()?.get();
        let (_, not_after) = crate::pki::validity(&identity.cert_pem).ok()?;
        Some(not_after.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
    }

    /// The CA that can sign here: the key file of the node that created the cluster, else the
    /// key sealed in the state opened with the cluster key. `None`: this node cannot sign.
    async fn signing_ca(&self) -> Result<Option<Arc<ClusterCa>>, NodeError> {
        let Some(key) = self.certs.pki.get().and_then(|p| p.cluster_key.as_ref()) else {
            return Ok(None);
        };
        let state = self.store.read(false).await.map_err(read_error)?;
        let Some(record) = state.ca.as_ref() else {
            return Ok(None);
        };
        let Some(sealed) = record.key_sealed.as_deref() else {
            return Ok(None);
        };
        let mut opened = self.certs.opened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ca) = opened.as_ref()
            && ca.fingerprint() == record.fingerprint
        {
            return Ok(Some(ca.clone()));
        }
        let ca = Arc::new(key.open_ca(&record.cert_pem, sealed).map_err(|e| {
            NodeError::Internal(format!("opening the CA key sealed in the state: {e}"))
        })?);
        *opened = Some(ca.clone());
        Ok(Some(ca))
    }

    /// Signs `req` here when this node can (see [`Node::signing_ca`]); `None` when it cannot.
    pub(super) async fn sign_locally(
        &self,
        req: &SignRequest,
    ) -> Result<Option<String>, NodeError> {
        let validity = self
            .certs
            .pki
            .get()
            .map_or(crate::pki::LEAF_VALIDITY, |p| p.leaf_validity);
        let role = if req.admin { Role::Admin } else { Role::Node };
        let sign = |ca: &ClusterCa| {
            ca.sign_csr_valid_for(&req.csr, role, &req.name, &req.sans, validity)
                .map_err(|e| NodeError::BadRequest(format!("certificate request refused: {e}")))
        };
        if let Some(ca) = &self.ca {
            return sign(ca).map(Some);
        }
        match self.signing_ca().await? {
            Some(ca) => sign(&ca).map(Some),
            None => Ok(None),
        }
    }

    /// Signs a certificate for this node itself (renewal): here when it can, else on the node
    /// that holds the CA key.
    pub async fn sign_own(&self, req: SignRequest) -> Result<String, NodeError> {
        let state = self.store.read(false).await.map_err(read_error)?;
        let holder = state
            .ca
            .as_ref()
            .map(|ca| ca.holder)
            .ok_or_else(|| NodeError::Unavailable("the cluster has no CA recorded".into()))?;
        self.sign(req, holder).await
    }
}
