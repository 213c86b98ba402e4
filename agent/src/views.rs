//! Read-only views computed from the cluster state (pure): for the API, and the DNS records the
//! network loop serves.

use crate::definitions::{ObjectKey, Spec};
use crate::scheduler::replica_name;
use crate::state::StoredObject;
use crate::state::{ClusterState, NodeId};
use api_types::types::ReplicaView;

/// Every placed replica (optionally of one object) with what its node last reported about it.
/// A placed replica that its node has not reported yet is `pending`.
pub fn replicas(state: &ClusterState, only: Option<&ObjectKey>) -> Vec<ReplicaView> {
    let mut views = Vec::new();
    // What each node reports, by (node, object, index), built once: looking a slot up does not
    // scan its node's report (the first entry for a replica counts, as `find` did).
    let mut reports: std::collections::BTreeMap<
        (NodeId, &ObjectKey, u32),
        &crate::state::ReplicaReport,
    > = std::collections::BTreeMap::new();
    for (node, report) in state.reports.iter() {
        for r in &report.replicas {
            if only.is_none_or(|o| o == &r.key) {
                reports.entry((*node, &r.key, r.index)).or_insert(r);
            }
        }
    }
    for (key, placement) in &state.placements {
        if only.is_some_and(|o| o != key) {
            continue;
        }
        let image = state
            .objects
            .get(key)
            .and_then(|o| o.object.spec.as_containers().map(|c| c.image_ref()))
            .unwrap_or_default();
        for (index, slot) in &placement.replicas {
            let reported = reports.get(&(slot.node, key, *index)).copied();
            let node_name = state
                .nodes
                .get(&slot.node)
                .map(|n| n.name.clone())
                .unwrap_or_default();
            let name = replica_name(&key.group, &key.name, *index);
            views.push(match reported {
                Some(r) => ReplicaView {
                    name,
                    object: key.clone(),
                    index: *index,
                    node: slot.node,
                    node_name,
                    generation: slot.generation,
                    state: r.phase.clone(),
                    ready: r.ready,
                    image: r.image.clone(),
                    ip: r.ip.clone(),
                    restarts: r.restarts,
                    started_ms: r.started_ms,
                    container_id: r.container_id.clone(),
                    message: r.message.clone(),
                },
                None => ReplicaView {
                    name,
                    object: key.clone(),
                    index: *index,
                    node: slot.node,
                    node_name,
                    generation: slot.generation,
                    state: crate::scheduler::Phase::Pending.as_str().into(),
                    ready: false,
                    image: image.clone(),
                    ip: None,
                    restarts: 0,
                    started_ms: None,
                    container_id: None,
                    message: None,
                },
            });
        }
    }
    views
}

/// The `*.private` records every node answers: ready replicas with their address on the
/// cluster network (`cluster.*`) and on each overlay network they joined (`<network>.*`), and
/// nodes.
pub fn dns_records(state: &ClusterState) -> dns::RecordSet {
    records(state, None)
}

/// The `*.private` records node `me` answers: [`dns_records`], and the names of the replicas
/// running on `me` on node-local networks (bridge networks and Docker's own `bridge`): their
/// addresses are reachable on `me` only, so other nodes do not know these names.
pub fn dns_records_on(state: &ClusterState, me: NodeId) -> dns::RecordSet {
    records(state, Some(me))
}

fn records(state: &ClusterState, me: Option<NodeId>) -> dns::RecordSet {
    let info = |r: &crate::state::ReplicaReport, ip: &str| {
        Some(dns::ReplicaInfo {
            group: r.key.group.clone(),
            name: r.key.name.clone(),
            index: r.index,
            ip: ip.parse().ok()?,
            ready: r.ready,
        })
    };
    let overlay_names: std::collections::BTreeMap<String, String> =
        smr_core::networks::overlay_networks(state)
            .into_iter()
            .map(|n| (n.docker_name(), n.name))
            .collect();
    let mut local_names: std::collections::BTreeMap<String, String> =
        smr_core::networks::bridge_networks(state)
            .into_iter()
            .map(|n| (n.docker_name(), n.name))
            .collect();
    local_names.insert(
        smr_core::networks::DOCKER_BRIDGE.into(),
        smr_core::networks::DOCKER_BRIDGE.into(),
    );
    let mut replicas = Vec::new();
    let mut on_networks = Vec::new();
    // A replica is named only while its slot is on the node that reports it (or moving off it
    // and not yet ready elsewhere): a node that went silent keeps its last report, "ready"
    // included, after the leader moved its slots to live nodes.
    let placed_here = |node: NodeId, r: &&crate::state::ReplicaReport| {
        state
            .placements
            .get(&r.key)
            .is_some_and(|p| p.runs_on(node, r.index))
    };
    for (node, r) in state.reports.iter().flat_map(|(&node, report)| {
        report
            .replicas
            .iter()
            .filter(move |r| placed_here(node, r))
            .map(move |r| (node, r))
    }) {
        // On `cluster` by name; else, when the replica is on no overlay network (a report
        // without addresses per network, an older agent's; backend `none`, where replicas sit
        // on Docker's bridge; a `networkMode` of its own), by its one address, as before
        // overlay networks existed.
        // A bridge network (not Docker's own `bridge`) counts as an overlay network here.
        let on_overlay = r.ips.keys().any(|n| {
            overlay_names.contains_key(n)
                || (local_names.contains_key(n) && n != smr_core::networks::DOCKER_BRIDGE)
        });
        let cluster_ip = match r.ips.get(smr_core::networks::CLUSTER) {
            Some(ip) => Some(ip.as_str()),
            None if !on_overlay => r.ip.as_deref(),
            None => None,
        };
        replicas.extend(cluster_ip.and_then(|ip| info(r, ip)));
        for (docker_name, ip) in &r.ips {
            if let Some(network) = overlay_names.get(docker_name) {
                on_networks.extend(info(r, ip).map(|i| (network.clone(), i)));
            } else if me == Some(node)
                && let Some(network) = local_names.get(docker_name)
            {
                on_networks.extend(info(r, ip).map(|i| (network.clone(), i)));
            }
        }
    }
    let nodes: Vec<dns::NodeInfo> = state
        .nodes
        .values()
        .filter_map(|n| {
            Some(dns::NodeInfo {
                name: n.name.clone(),
                ip: n.dial_ip().parse().ok()?,
            })
        })
        .collect();
    dns::compute_network_records(&replicas, &on_networks, &nodes)
}

/// A stored object as the API shows it: credentials (httpauth passwords, certkey keys and
/// passwords, secret values, `registryAuth` of containers and their init containers) replaced by
/// `***`, and `user:password@` dropped from repository URLs.
pub fn redacted(stored: &StoredObject) -> StoredObject {
    const HIDDEN: &str = "***";
    let hide = |v: &mut Option<String>| {
        if v.is_some() {
            *v = Some(HIDDEN.into());
        }
    };
    let mut out = stored.clone();
    match &mut out.object.spec {
        Spec::Httpauth(h) => h.password = HIDDEN.into(),
        Spec::Certkey(c) => {
            hide(&mut c.private_key);
            hide(&mut c.private_key_password);
            hide(&mut c.key_store_password);
        }
        Spec::Secret(s) => s.data.values_mut().for_each(|v| *v = HIDDEN.into()),
        Spec::Gitops(g) => g.repo_url = gitops::redact_url(&g.repo_url),
        Spec::Containers(c) => {
            let mut spec = Some(&mut **c);
            while let Some(c) = spec {
                hide(&mut c.registry_auth);
                spec = c.init_container.as_deref_mut();
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::{CertKeySpec, DataSpec, GitopsSpec, HttpAuthSpec, Object};

    use crate::fixtures::stored;

    #[test]
    fn credentials_never_leave_in_api_answers() {
        let objects = [
            Object::new(
                "g",
                "a",
                Spec::Httpauth(HttpAuthSpec {
                    username: "u".into(),
                    password: "pw-1".into(),
                }),
            ),
            Object::new(
                "g",
                "b",
                Spec::Certkey(Box::new(CertKeySpec {
                    private_key: Some("pw-2".into()),
                    private_key_password: Some("pw-3".into()),
                    ..Default::default()
                })),
            ),
            Object::new(
                "g",
                "c",
                Spec::Secret(DataSpec {
                    data: [("k".to_string(), "pw-4".to_string())].into(),
                }),
            ),
            Object::new(
                "g",
                "e",
                Spec::Containers(Box::new(crate::definitions::ContainersSpec {
                    registry_auth: Some("user:pw-6".into()),
                    init_container: Some(Box::new(crate::definitions::ContainersSpec {
                        registry_auth: Some("user:pw-7".into()),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
            ),
            Object::new(
                "g",
                "d",
                Spec::Gitops(Box::new(GitopsSpec {
                    repo_url: "https://user:pw-5@git.example.com/r.git".into(),
                    ..Default::default()
                })),
            ),
        ];
        for object in objects {
            let shown = serde_json::to_string(&redacted(&stored(object))).unwrap();
            assert!(!shown.contains("pw-"), "{shown}");
        }
    }
}
