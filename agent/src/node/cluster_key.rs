//! The cluster key between nodes, for the migration of a cluster created before the CA key was
//! sealed in the state ([`crate::migration`]): a node that holds it gives it to a member that
//! asks with its node certificate; a node that does not hold it asks the others.

use std::time::Duration;

use api_types::types::ClusterKeyResponse;

use super::features::Claim;
use super::{Consistency, Node, NodeError};
use crate::pki::ClusterKey;
use crate::state::{CaRecord, ClusterState, NodeId};

/// How long one node is given to answer a request for the cluster key.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// `GET /api/v1/internal/cluster-key`: this node's cluster key, for the member named by the
    /// caller's node certificate (the route lets only node certificates through), while a
    /// migration runs. Refused to a name that is not a member (a removed node) and when no
    /// migration runs; unavailable while this node has none.
    pub async fn cluster_key_for(&self, caller: &str) -> Result<ClusterKeyResponse, NodeError> {
        let state = self.state(Consistency::Stale).await?;
        if !state.nodes.values().any(|n| n.name == caller) {
            return Err(NodeError::Forbidden(format!(
                "node {caller:?} is not a member of this cluster: the cluster key goes to members \
                 only"
            )));
        }
        // After the migration a node gets the key only when it joins: a copy of a node's data
        // dir kept away from its key (`--cluster-key-file`) cannot ask for it.
        if !state.key_migrating() {
            return Err(NodeError::Conflict(
                "no cluster key migration runs: the cluster key is given to a node only when it \
                 joins, or while an upgraded cluster created before its CA key was sealed in the \
                 state migrates"
                    .into(),
            ));
        }
        let key = self.cluster_key().ok_or_else(|| {
            NodeError::Unavailable(format!(
                "node {} does not hold the cluster key (yet); ask another node",
                self.name
            ))
        })?;
        tracing::info!(node = %caller, "gave the cluster key to a member that had none");
        Ok(ClusterKeyResponse {
            cluster_key: key.to_text(),
        })
    }

    /// Asks the other members of `state`, one after the other, for the cluster key (over mTLS
    /// with this node's certificate), and takes the first one that opens the CA key `record`
    /// holds sealed. Fails, saying what each answered, when none gave one.
    pub async fn fetch_cluster_key(
        &self,
        state: &ClusterState,
        record: &CaRecord,
    ) -> Result<ClusterKey, String> {
        let sealed = record
            .key_sealed
            .as_deref()
            .ok_or("the state holds no sealed CA key yet")?;
        let mut refusals = Vec::new();
        for peer in state
            .nodes
            .values()
            .filter(|n| n.id != self.id && n.raft_port != 0)
        {
            let asked = tokio::time::timeout(
                ASK_TIMEOUT,
                self.call::<(), ClusterKeyResponse>(&peer.api_addr(), "internal/cluster-key", None),
            )
            .await;
            let answer = match asked {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => {
                    refusals.push(format!("{}: {e}", peer.name));
                    continue;
                }
                Err(_) => {
                    refusals.push(format!("{}: no answer in {ASK_TIMEOUT:?}", peer.name));
                    continue;
                }
            };
            let checked = ClusterKey::from_text(&answer.cluster_key)
                .map_err(|e| e.to_string())
                .and_then(|key| {
                    key.open_ca(&record.cert_pem, sealed)
                        .map(|_| key)
                        .map_err(|e| format!("it does not open the CA key of the state: {e}"))
                });
            match checked {
                Ok(key) => {
                    tracing::info!(from = %peer.name, "received the cluster key");
                    return Ok(key);
                }
                Err(e) => refusals.push(format!("{}: the key it gave: {e}", peer.name)),
            }
        }
        if refusals.is_empty() {
            return Err("no other member to ask".into());
        }
        Err(refusals.join("; "))
    }

    /// Whether each member of `state` holds the cluster key, as its health answer says
    /// ([`Claim::HoldsClusterKey`], [`Node::members_claim`]). A member that does not answer, or an
    /// older version that does not say so, is `false`.
    pub async fn members_holding_cluster_key(&self, state: &ClusterState) -> Vec<(NodeId, bool)> {
        self.members_claim(state.nodes.values(), Claim::HoldsClusterKey)
            .await
            .into_iter()
            .map(|(n, said)| (n.id, said == Some(true)))
            .collect()
    }
}
