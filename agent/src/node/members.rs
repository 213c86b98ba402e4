//! This node's health and the member list as `GET /api/v1/health` and `GET /api/v1/nodes`
//! show them: registry, Raft roles, health probes, WireGuard sessions; and the leader's upkeep of
//! the store's membership.

use std::time::Duration;

use super::features::Claim;
use super::{Consistency, Node, NodeError};
use crate::state::NodeRecord;
use api_types::types::{HealthResponse, NodeView, WgPeerView};

/// How long a member is given to answer a health probe ([`Node::members_health`]).
pub(crate) const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Node {
    /// On the leader, one step of keeping the store's membership equal to the node registry:
    /// registered nodes are added (as learners, promoted by the voter policy), removed nodes are
    /// taken out. Failures are logged; the next step tries again.
    pub async fn update_membership(&self) {
        let status = self.store.status();
        if status.state != crate::store::ServerState::Leader {
            return;
        }
        let Ok(state) = self.state(Consistency::Stale).await else {
            return;
        };
        // A node registered without a Raft port (a simulated node, `crate::sim`) runs no Raft
        // server: it never becomes a member.
        for (id, record) in state.nodes.iter().filter(|(_, r)| r.raft_port != 0) {
            if !status.members.contains_key(id) {
                let peer = crate::store::RaftPeer {
                    raft_addr: record.raft_addr(),
                    api_addr: record.api_addr(),
                    name: record.name.clone(),
                };
                tracing::info!(id, name = %record.name, "adding node to the Raft membership");
                match tokio::time::timeout(
                    Duration::from_secs(20),
                    self.store.add_member(*id, peer),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(id, "adding node failed: {e}"),
                    Err(_) => tracing::warn!(id, "adding node timed out; will retry"),
                }
            }
        }
        // An empty registry (a state from before the last node's removal was refused) must not
        // empty the membership.
        for id in status.members.keys().filter(|_| !state.nodes.is_empty()) {
            if !state.nodes.contains_key(id) {
                tracing::info!(id, "removing node from the Raft membership");
                if let Err(e) = self.store.remove_member(*id).await {
                    tracing::warn!(id, "removing node failed: {e}");
                }
            }
        }
    }

    /// This node's health as `GET /api/v1/health` shows it.
    pub async fn health(&self) -> Result<HealthResponse, NodeError> {
        let status = self.store.status();
        let state = self.state(Consistency::Stale).await?;
        // A node whose store cannot take writes says so first; its Raft role is secondary then.
        let shown = match &status.problem {
            Some(_) => crate::store::ServerState::Degraded,
            None => status.state,
        };
        Ok(HealthResponse {
            node: self.name.clone(),
            id: self.id,
            state: serde_json::to_value(shown)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            problem: status.problem.clone(),
            leader: status.leader,
            revision: state.revision,
            voters: status.voters.iter().copied().collect(),
            learners: status.learners.iter().copied().collect(),
            cert_expires_ms: self.cert_expires_ms(),
            seals_secrets: self.seals_secrets(),
            cert_ca: self.cert_ca(),
            report_deltas: !super::reports::test_legacy(),
            holds_cluster_key: self.cluster_key().is_some(),
            features: super::features::announced(),
        })
    }

    /// Whether this node seals and opens secret values: it has the cluster key (and does not
    /// play an older version in a test).
    pub fn seals_secrets(&self) -> bool {
        self.cluster_key().is_some() && !crate::secrets::test_plain()
    }

    /// Whether every node of `state` says it seals and opens secret values
    /// ([`Claim::SealsSecrets`], [`Node::members_claim`]); a node that does not answer or does not
    /// say so (an older version) is `false`.
    pub async fn all_seal_secrets(&self, state: &crate::state::ClusterState) -> bool {
        self.members_claim(state.nodes.values(), Claim::SealsSecrets)
            .await
            .into_iter()
            .all(|(_, said)| said == Some(true))
    }

    /// The health answer of each of `members`, in their order, asked all at once
    /// ([`HEALTH_PROBE_TIMEOUT`] each); `None` for one that did not answer in time. This node
    /// answers for itself without the network (behind NAT it may not reach its own public
    /// address). The features every answer announces are noted ([`super::features`]). The one
    /// way this node asks members about themselves: [`Node::members_claim`], [`Node::nodes`].
    pub(crate) async fn members_health<'a>(
        &self,
        members: impl IntoIterator<Item = &'a NodeRecord>,
    ) -> Vec<(&'a NodeRecord, Option<HealthResponse>)> {
        let probes = members.into_iter().map(|n| async move {
            if n.id == self.id {
                return (n, self.health().await.ok());
            }
            let probe = tokio::time::timeout(
                HEALTH_PROBE_TIMEOUT,
                self.call::<(), HealthResponse>(&n.api_addr(), "health", None),
            )
            .await;
            let health = match probe {
                Ok(Ok(health)) => {
                    self.features.note(&health);
                    Some(health)
                }
                _ => None,
            };
            (n, health)
        });
        futures::future::join_all(probes).await
    }

    /// Whether each of `members` says `claim` of itself in its health answer
    /// ([`Node::members_health`]): `None` for one that did not answer.
    pub(crate) async fn members_claim<'a>(
        &self,
        members: impl IntoIterator<Item = &'a NodeRecord>,
        claim: Claim,
    ) -> Vec<(&'a NodeRecord, Option<bool>)> {
        self.members_health(members)
            .await
            .into_iter()
            .map(|(n, health)| (n, health.map(|h| claim.made_in(&h))))
            .collect()
    }

    /// Every member with its role (voter, learner, joining), whether it answers a health probe
    /// ([`Node::members_health`]) and this node's WireGuard session with it.
    pub async fn nodes(&self, consistency: Consistency) -> Result<Vec<NodeView>, NodeError> {
        let state = self.state(consistency).await?;
        let status = self.store.status();
        let healthy = self
            .members_health(state.nodes.values())
            .await
            .into_iter()
            .map(|(_, health)| match health {
                Some(health) => (true, health.cert_expires_ms, health.cert_ca),
                None => (false, None, None),
            });
        let stats = match self.overlay.peer_stats().await {
            Ok(stats) => stats,
            Err(e) => {
                tracing::warn!("WireGuard peer statistics: {e}");
                Vec::new()
            }
        };
        let views = state
            .nodes
            .values()
            .zip(healthy)
            .map(|(n, (healthy, cert_expires_ms, cert_ca))| NodeView {
                id: n.id,
                name: n.name.clone(),
                host: n.host.clone(),
                domain: n.domain.clone(),
                ip: n.ip.clone(),
                api: n.api_addr(),
                raft: n.raft_addr(),
                role: if status.voters.contains(&n.id) {
                    "voter"
                } else if status.learners.contains(&n.id) {
                    "learner"
                } else {
                    "joining"
                }
                .into(),
                leader: status.leader == Some(n.id),
                health: if healthy { "healthy" } else { "unreachable" }.into(),
                labels: n.labels.clone(),
                joined_ms: n.joined_ms,
                subnet: n.lease.map(|l| l.to_string()),
                backend: state.network.as_ref().map(|net| net.backend.clone()),
                vtep_mac: n.vtep_mac.clone(),
                public_ip: n.public_ip.clone(),
                wg_port: n.wg_port,
                wg_public_key: n.wg_public_key.clone(),
                wireguard: (n.id != self.id).then(|| wg_peer_view(n, &stats)).flatten(),
                availability: state.availability.get(&n.id).copied().unwrap_or_default(),
                replicas: super::availability::replicas_on(&state, n.id),
                cert_expires_ms,
                cert_ca,
            })
            .collect();
        Ok(views)
    }
}

/// The answering node's WireGuard session with `n`, found by `n`'s published public key.
fn wg_peer_view(n: &crate::state::NodeRecord, stats: &[overlay::PeerStats]) -> Option<WgPeerView> {
    let key: overlay::WgPublicKey = n.wg_public_key.as_deref()?.parse().ok()?;
    let peer = stats.iter().find(|s| s.public_key == key)?;
    Some(WgPeerView {
        endpoint: peer.endpoint.map(|e| e.to_string()),
        last_handshake_ms: peer
            .last_handshake
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64),
        rx_bytes: peer.rx_bytes,
        tx_bytes: peer.tx_bytes,
    })
}
