//! Certificates of a running node: who may sign (the CA key on the node that created the
//! cluster, or the sealed copy in the state opened with the cluster key on every other node),
//! this node's live certificate (what the API and Raft servers and the node client present,
//! replaced on renewal) and its expiry.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use api_types::types::{CaNodeStatus, CaStatus, SignRequest};

use super::{Consistency, Node, NodeError, read_error};
use crate::pki::{ClusterCa, ClusterKey, Identity, LiveIdentity, Role};
use crate::state::{CaRecord, CommandResult, NextCa, Op, ca_rotation};

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
    /// The cluster key: from [`NodePki`] at start, or adopted later by the migration of a
    /// cluster created before the CA key was sealed ([`crate::migration`]).
    key: OnceLock<ClusterKey>,
}

impl Node {
    /// Gives the node its PKI (once, at start).
    pub fn set_pki(&self, pki: NodePki) {
        if let Some(key) = &pki.cluster_key {
            let _ = self.certs.key.set(key.clone());
        }
        let _ = self.certs.pki.set(pki);
    }

    /// Takes `key` as this node's cluster key from now on (saved by the caller), when it has
    /// none yet; `false` when it had one already.
    pub fn adopt_cluster_key(&self, key: ClusterKey) -> bool {
        self.certs.key.set(key).is_ok()
    }

    /// The certificate this node presents, if the daemon set it.
    pub fn live_identity(&self) -> Option<Arc<LiveIdentity>> {
        self.certs.pki.get().map(|p| p.live.clone())
    }

    /// The cluster key, where this node has one: it seals and opens secret values.
    pub fn cluster_key(&self) -> Option<&ClusterKey> {
        self.certs.key.get()
    }

    /// The cluster key a joining node receives.
    pub(super) fn cluster_key_text(&self) -> Option<String> {
        self.cluster_key().map(ClusterKey::to_text)
    }

    /// When this node's certificate expires, in ms since the epoch.
    pub fn cert_expires_ms(&self) -> Option<u64> {
        let identity = self.live_identity()?.get();
        let (_, not_after) = crate::pki::validity(&identity.cert_pem).ok()?;
        Some(not_after.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
    }

    /// The CA that signs now (the next one during a rotation) when this node can sign: the key
    /// file of the node that created the cluster (for that CA only), else the key sealed in
    /// the state opened with the cluster key. `None`: this node cannot sign.
    async fn signing_ca(&self) -> Result<Option<Arc<ClusterCa>>, NodeError> {
        let state = self.store.read(false).await.map_err(read_error)?;
        let Some(record) = state.ca.as_ref() else {
            return Ok(None);
        };
        let (cert_pem, fingerprint, sealed) = match &record.next {
            Some(next) if next.aborted_ms.is_none() => {
                (&next.cert_pem, &next.fingerprint, Some(&next.key_sealed))
            }
            _ => (
                &record.cert_pem,
                &record.fingerprint,
                record.key_sealed.as_ref(),
            ),
        };
        if let Some(ca) = &self.ca
            && &ca.fingerprint() == fingerprint
        {
            return Ok(Some(ca.clone()));
        }
        let Some(key) = self.cluster_key() else {
            return Ok(None);
        };
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let mut opened = self.certs.opened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ca) = opened.as_ref()
            && &ca.fingerprint() == fingerprint
        {
            return Ok(Some(ca.clone()));
        }
        let ca = Arc::new(key.open_ca(cert_pem, sealed).map_err(|e| {
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

impl Node {
    /// The CA of this node's certificate (fingerprint), if the daemon set its PKI.
    pub fn cert_ca(&self) -> Option<String> {
        self.live_identity()?.get().leaf_ca_fingerprint().ok()
    }

    /// `POST /api/v1/ca/rotate`: makes the next CA (a new key, sealed with the cluster key like
    /// the current one's) and its certificate cross-signed by the current CA, and starts the
    /// rotation. A rotation under way already is not started again: its status is answered.
    pub async fn start_ca_rotation(&self) -> Result<CaStatus, NodeError> {
        let state = self.state(Consistency::Linearizable).await?;
        let record = state
            .ca
            .as_ref()
            .ok_or_else(|| NodeError::Unavailable("the cluster has no CA recorded".into()))?;
        super::ca_abort::refuse_while_aborting(record)?;
        if record.next.is_none() {
            let refused = |why: &str| {
                NodeError::Conflict(format!(
                    "the CA cannot be rotated from this node: {why} (the cluster was created \
                     before its CA key was sealed in the state; rotation needs it)"
                ))
            };
            if record.key_migrating {
                return Err(NodeError::Conflict(
                    "the CA cannot be rotated yet: the cluster key is on its way to every node \
                     (an upgraded cluster created before its CA key was sealed in the state); \
                     try again once every node holds it"
                        .into(),
                ));
            }
            let key = self
                .cluster_key()
                .ok_or_else(|| refused("it has no cluster key"))?;
            let sealed = record
                .key_sealed
                .as_deref()
                .ok_or_else(|| refused("the state holds no sealed CA key"))?;
            let internal = |e: crate::pki::PkiError| NodeError::Internal(e.to_string());
            let current = key.open_ca(&record.cert_pem, sealed).map_err(internal)?;
            let next = current.generate_successor().map_err(internal)?;
            let next = NextCa {
                cert_pem: next.cert_pem().to_owned(),
                fingerprint: next.fingerprint(),
                key_sealed: key.seal_ca(&next).map_err(internal)?,
                cross_pem: current.cross_sign(&next).map_err(internal)?,
                started_ms: super::now_ms(),
                aborted_ms: None,
            };
            let fingerprint = next.fingerprint.clone();
            match self.propose(Op::StartCaRotation { next }, None).await? {
                CommandResult::Rejected { reason } => return Err(NodeError::Conflict(reason)),
                _ => tracing::info!(%fingerprint, "CA rotation started"),
            }
        }
        self.ca_status().await
    }

    /// `GET /api/v1/ca/status`: the CA, the rotation under way, the CA of each node's
    /// certificate (from health probes, as `nodes` shows them).
    pub async fn ca_status(&self) -> Result<CaStatus, NodeError> {
        let nodes = self.nodes(Consistency::Linearizable).await?;
        let state = self.state(Consistency::Stale).await?;
        let record = state
            .ca
            .as_ref()
            .ok_or_else(|| NodeError::Unavailable("the cluster has no CA recorded".into()))?;
        let members: Vec<_> = nodes.iter().map(|n| (n.id, n.cert_ca.clone())).collect();
        let (done, total) = ca_rotation::progress(record, &members);
        Ok(CaStatus {
            fingerprint: record.fingerprint.clone(),
            next: record.next.as_ref().map(|n| n.fingerprint.clone()),
            started_ms: record.next.as_ref().map(|n| n.started_ms),
            previous: record.previous.clone(),
            done,
            total,
            nodes: nodes
                .into_iter()
                .map(|n| CaNodeStatus {
                    id: n.id,
                    name: n.name,
                    health: n.health,
                    cert_ca: n.cert_ca,
                })
                .collect(),
            aborted_ms: record.next.as_ref().and_then(|n| n.aborted_ms),
            waiting: ca_rotation::waiting_for(record, &members)
                .into_iter()
                .map(|(id, _)| *id)
                .collect(),
        })
    }
}

/// The identity a node presents for its leaf certificate `leaf_pem` (PEM; anything after the
/// first certificate is ignored) and `key_pem` under the CA `record`: it trusts the CAs the
/// record names (both during a rotation) and presents the cross-signed certificate after a leaf
/// of the next CA. Fails when no CA of the record issued the leaf.
pub fn identity_for(record: &CaRecord, leaf_pem: &str, key_pem: &str) -> Result<Identity, String> {
    let leaf = crate::pki::first_pem(leaf_pem);
    let mut roots = vec![record.cert_pem.as_str()];
    let mut chain = vec![leaf];
    if let Some(next) = &record.next {
        roots.push(&next.cert_pem);
        let probe = Identity {
            cert_pem: leaf.to_owned(),
            key_pem: key_pem.to_owned(),
            ca_pem: next.cert_pem.clone(),
        };
        if probe.leaf_ca_fingerprint().ok().as_ref() == Some(&next.fingerprint) {
            chain.push(&next.cross_pem);
        }
    }
    Identity::new(
        crate::pki::join_pem(&chain),
        key_pem.to_owned(),
        crate::pki::join_pem(&roots),
    )
    .map_err(|e| {
        format!(
            "the certificate under the cluster CA {}: {e}",
            record.fingerprint
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(ca: &ClusterCa) -> (String, String) {
        let (key, csr) = crate::pki::new_key_and_csr(Role::Node, "n1", &[]).unwrap();
        (ca.sign_csr(&csr, Role::Node, "n1", &[]).unwrap(), key)
    }

    fn record(current: &ClusterCa, next: Option<(&ClusterCa, &str)>) -> CaRecord {
        CaRecord {
            cert_pem: current.cert_pem().into(),
            fingerprint: current.fingerprint(),
            holder: 1,
            key_sealed: None,
            next: next.map(|(ca, cross)| NextCa {
                cert_pem: ca.cert_pem().into(),
                fingerprint: ca.fingerprint(),
                key_sealed: String::new(),
                cross_pem: cross.into(),
                started_ms: 0,
                aborted_ms: None,
            }),
            previous: None,
            key_migrating: false,
        }
    }

    #[test]
    fn a_node_presents_the_cross_certificate_only_with_a_leaf_of_the_next_ca() {
        crate::pki::install_crypto_provider();
        let old = ClusterCa::generate("t").unwrap();
        let new = old.generate_successor().unwrap();
        let cross = old.cross_sign(&new).unwrap();
        let rotating = record(&old, Some((&new, &cross)));
        let both = vec![old.fingerprint(), new.fingerprint()];

        // A leaf of the old CA during the rotation: trusts both, no cross certificate.
        let (cert, key) = leaf(&old);
        let id = identity_for(&rotating, &cert, &key).unwrap();
        assert_eq!(id.ca_fingerprints().unwrap(), both);
        assert_eq!(id.client_chain().unwrap().len(), 1);
        // A leaf of the next CA (given with a chain after it: only the leaf is taken).
        let (cert, key) = leaf(&new);
        let id = identity_for(&rotating, &crate::pki::join_pem(&[&cert, &cross]), &key).unwrap();
        assert_eq!(id.ca_fingerprints().unwrap(), both);
        let chain = id.client_chain().unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(
            crate::pki::pem_fingerprints(&cross).unwrap()[0],
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&chain[1]))
        );
        // After the finish: the new CA only, no cross certificate; a leaf of the old CA is
        // refused.
        let finished = record(&new, None);
        let id = identity_for(&finished, &id.cert_pem, &key).unwrap();
        assert_eq!(id.ca_fingerprints().unwrap(), vec![new.fingerprint()]);
        assert_eq!(id.client_chain().unwrap().len(), 1);
        let (cert, key) = leaf(&old);
        assert!(identity_for(&finished, &cert, &key).is_err());
    }
}
