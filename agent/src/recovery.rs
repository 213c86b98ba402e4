//! Starting a cluster again from a state: `smrmgr restore FILE` (a new cluster from a backup) and
//! `smrmgr start --force-new-cluster` (a survivor of a lost quorum becomes a one-node cluster).
//!
//! ```text
//!  smrmgr (agent stopped)                         agent (daemon::run)
//!  restore: decode + check FILE, fresh data dir   creates the cluster (new CA, node 1)
//!           seed.json <- restored(state)  ------> apply_seed: Op::Restore (objects, gitops)
//!  force:   raft/ -> local state (offline)        new Raft group of this node alone
//!           seed.json <- state, this node's id -> apply_seed: bootstrap + Op::ForceNewCluster
//!           raft/ -> raft.before-force-<ms>/      (every other node leaves the registry)
//! ```
//! The seed is proposed with an op id derived from its bytes and removed once applied: an agent
//! that stops in between applies it again at its next start, and the state machine answers the
//! second proposal with the first one's result.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::daemon::{NodeFile, node_file_path};
use crate::node::{Node, now_ms};
use crate::state::{ClusterState, Command, CommandResult, NodeId, Op};
use crate::store::RaftPeer;

/// The seed file in the data dir.
pub fn seed_path(data_dir: &Path) -> PathBuf {
    data_dir.join("seed.json")
}

/// A state waiting to be proposed when the agent starts.
/// Externally tagged (`{"restore": {...}}`): an internally tagged enum would buffer the state,
/// whose maps keyed by node id then no longer parse.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seed {
    /// What a new cluster keeps of a backup.
    Restore { state: Box<ClusterState> },
    /// This node's state, to become a one-node cluster of `keep`.
    ForceNewCluster {
        state: Box<ClusterState>,
        keep: NodeId,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error(
        "{path} is not empty (it holds {entries}): a backup is restored into a fresh data dir \
         only; name another --data-dir, or remove this one's content"
    )]
    NotFresh { path: PathBuf, entries: String },
    #[error("{0}")]
    Refused(String),
    #[error("the state store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("proposing the seed: {0}")]
    Propose(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> RecoveryError {
    RecoveryError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write_seed(data_dir: &Path, seed: &Seed) -> Result<(), RecoveryError> {
    let path = seed_path(data_dir);
    let bytes = serde_json::to_vec(seed).map_err(|e| io(&path, e))?;
    crate::client::write_private(&path, &bytes).map_err(|e| io(&path, e))
}

/// Checks that `data_dir` is absent or empty (what `smrmgr restore` needs).
pub fn check_fresh(data_dir: &Path) -> Result<(), RecoveryError> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(data_dir, e)),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let shown = if names.len() > 5 {
        format!("{}, ... ({} entries)", names[..5].join(", "), names.len())
    } else {
        names.join(", ")
    };
    Err(RecoveryError::NotFresh {
        path: data_dir.to_path_buf(),
        entries: shown,
    })
}

/// `smrmgr restore`: puts what the new cluster keeps of `backup` into the fresh `data_dir`, for
/// the agent to propose once it created the cluster. The new cluster's key is made here and saved
/// at `key_path` (where the agent reads it): the backup's secrets are opened with `old_key` (the
/// key of the cluster the backup was taken from) and sealed again with it. Refused, with nothing
/// written, when the backup holds sealed secrets and `old_key` is absent or does not open them.
pub fn prepare_restore(
    data_dir: &Path,
    backup: &ClusterState,
    old_key: Option<&crate::pki::ClusterKey>,
    key_path: &Path,
) -> Result<(), RecoveryError> {
    check_fresh(data_dir)?;
    if old_key.is_none() && crate::secrets::holds_sealed(backup) {
        return Err(RecoveryError::Refused(
            "the backup holds secrets sealed with the cluster key of the cluster it was taken \
             from: give that key (its nodes' pki/cluster.key, or the file their \
             --cluster-key-file named) with --backup-key-file FILE"
                .into(),
        ));
    }
    let mut state = smr_core::backup::restored(backup);
    let new_key = crate::pki::ClusterKey::generate();
    crate::secrets::reseal(old_key, &new_key, &mut state).map_err(|e| {
        RecoveryError::Refused(format!(
            "opening the backup's secrets with the --backup-key-file key: {e}"
        ))
    })?;
    create_private_dir(data_dir)?;
    new_key.save(key_path).map_err(|e| io(key_path, e))?;
    write_seed(
        data_dir,
        &Seed::Restore {
            state: Box::new(state),
        },
    )
}

fn create_private_dir(dir: &Path) -> Result<(), RecoveryError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io(dir, e))
}

/// What `--force-new-cluster` found and did.
#[derive(Debug)]
pub struct Forced {
    pub id: NodeId,
    pub name: String,
    /// The other nodes it removes from the registry: (id, name).
    pub removed: Vec<(NodeId, String)>,
    pub objects: usize,
    pub last_index: u64,
    /// Where the old Raft data was moved.
    pub old_raft: PathBuf,
}

/// `smrmgr start --force-new-cluster` (agent stopped): reads this node's state from its Raft data,
/// keeps it as the seed of a one-node cluster and moves the old Raft data aside. Refused for a
/// data dir without a node, on the etcd store, and while an earlier one waits to be applied.
pub fn prepare_force_new_cluster(data_dir: &Path) -> Result<Forced, RecoveryError> {
    let node_path = node_file_path(data_dir);
    let text = std::fs::read_to_string(&node_path).map_err(|e| {
        io(
            &node_path,
            format!("{e}: --force-new-cluster restarts an existing node; this data dir holds none"),
        )
    })?;
    let me: NodeFile = serde_json::from_str(&text).map_err(|e| io(&node_path, e))?;
    if me.etcd.is_some() {
        return Err(RecoveryError::Refused(
            "--force-new-cluster is for the embedded Raft store; this node keeps its state in \
             etcd, which has its own procedure (restore etcd's quorum, e.g. `etcd \
             --force-new-cluster` on a surviving member, then start the agents as they are)"
                .into(),
        ));
    }
    if seed_path(data_dir).exists() {
        return Err(RecoveryError::Refused(format!(
            "{} waits to be applied already (an earlier --force-new-cluster or restore): start \
             the agent without --force-new-cluster to finish it",
            seed_path(data_dir).display()
        )));
    }
    let raft_dir = data_dir.join("raft");
    let local = crate::store::recover::local_state(&raft_dir)?;
    if !local.state.nodes.contains_key(&me.id) {
        return Err(RecoveryError::Refused(format!(
            "node {} (id {}) is not in its own state (it was removed from the cluster): there is \
             nothing to force a cluster from",
            me.name, me.id
        )));
    }
    let removed: Vec<(NodeId, String)> = local
        .state
        .nodes
        .values()
        .filter(|n| n.id != me.id)
        .map(|n| (n.id, n.name.clone()))
        .collect();
    let objects = local.state.objects.len();
    write_seed(
        data_dir,
        &Seed::ForceNewCluster {
            state: Box::new(local.state),
            keep: me.id,
        },
    )?;
    let old_raft = data_dir.join(format!("raft.before-force-{}", now_ms()));
    if let Err(e) = std::fs::rename(&raft_dir, &old_raft) {
        let _ = std::fs::remove_file(seed_path(data_dir));
        return Err(io(&raft_dir, e));
    }
    Ok(Forced {
        id: me.id,
        name: me.name,
        removed,
        objects,
        last_index: local.last_index,
        old_raft,
    })
}

/// At start, after the cluster exists (restore) or the store is open (force): proposes the seed
/// of the data dir, if there is one, then removes it.
pub async fn apply_seed(node: &Node, data_dir: &Path, me: RaftPeer) -> Result<(), RecoveryError> {
    let path = seed_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&path, e)),
    };
    let seed: Seed = serde_json::from_slice(&bytes).map_err(|e| io(&path, e))?;
    let op = match seed {
        Seed::Restore { state } => Op::Restore { state },
        Seed::ForceNewCluster { state, keep } => {
            if keep != node.id {
                return Err(RecoveryError::Refused(format!(
                    "{} is for node {keep}, this is node {}",
                    path.display(),
                    node.id
                )));
            }
            // A new Raft group of this node alone (nothing if it exists: a second start).
            node.bootstrap(me).await?;
            Op::ForceNewCluster { state, keep }
        }
    };
    let what = match &op {
        Op::Restore { state } => format!("restoring {} object(s)", state.objects.len()),
        _ => "forcing a one-node cluster".into(),
    };
    let command = Command {
        op_id: format!("seed-{}", &hex::encode(sha2::Sha256::digest(&bytes))[..32]),
        at_ms: now_ms(),
        op,
    };
    match node.propose_command(command).await {
        Ok(CommandResult::Rejected { reason }) => {
            return Err(RecoveryError::Propose(format!("{what}: refused: {reason}")));
        }
        Ok(_) => {}
        Err(e) => return Err(RecoveryError::Propose(format!("{what}: {e}"))),
    }
    std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
    tracing::info!("{what}: done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeRecord;

    fn state_with_nodes() -> ClusterState {
        let mut state = ClusterState::default();
        for id in [1, 2] {
            state.nodes.insert(
                id,
                NodeRecord {
                    id,
                    name: format!("n{id}"),
                    host: "h".into(),
                    domain: "d".into(),
                    ip: "10.0.0.1".into(),
                    public_ip: None,
                    api_port: 1443,
                    raft_port: 9212,
                    labels: Default::default(),
                    joined_ms: 0,
                    schedulable: true,
                    lease: None,
                    vtep_mac: None,
                    wg_port: None,
                    wg_public_key: None,
                },
            );
        }
        state
    }

    #[test]
    fn a_seed_with_nodes_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let seed = Seed::ForceNewCluster {
            state: Box::new(state_with_nodes()),
            keep: 1,
        };
        write_seed(dir.path(), &seed).unwrap();
        let back: Seed =
            serde_json::from_slice(&std::fs::read(seed_path(dir.path())).unwrap()).unwrap();
        match back {
            Seed::ForceNewCluster { state, keep } => {
                assert_eq!(keep, 1);
                assert_eq!(*state, state_with_nodes());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn restore_needs_a_fresh_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("smr");
        check_fresh(&data).unwrap();
        std::fs::create_dir(&data).unwrap();
        check_fresh(&data).unwrap();
        std::fs::write(data.join("node.json"), "{}").unwrap();
        let key_path = data.join("pki/cluster.key");
        let e = prepare_restore(&data, &ClusterState::default(), None, &key_path).unwrap_err();
        assert!(
            e.to_string().contains("is not empty (it holds node.json)"),
            "{e}"
        );
        assert!(!seed_path(&data).exists());
    }

    #[test]
    fn a_restore_of_sealed_secrets_needs_the_old_key_and_seals_them_with_the_new_one() {
        use crate::definitions::{DataSpec, Object, Spec};
        use crate::pki::ClusterKey;
        let old = ClusterKey::generate();
        let mut secret = Object::new(
            "app",
            "db",
            Spec::Secret(DataSpec {
                data: [("password".to_string(), "pw-restored".to_string())].into(),
            }),
        );
        crate::secrets::seal_object(&old, &mut secret);
        let mut backup = ClusterState::default();
        backup.apply(&Command {
            op_id: "a".into(),
            at_ms: 1,
            op: Op::Apply {
                objects: vec![secret],
                owner: None,
            },
        });
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("smr");
        let key_path = data.join("pki").join(crate::pki::CLUSTER_KEY_FILE);

        // No key, or another cluster's: refused, nothing written.
        let e = prepare_restore(&data, &backup, None, &key_path).unwrap_err();
        assert!(e.to_string().contains("--backup-key-file"), "{e}");
        let e =
            prepare_restore(&data, &backup, Some(&ClusterKey::generate()), &key_path).unwrap_err();
        assert!(
            e.to_string().contains("secret/app/db key password")
                && e.to_string().contains("does not open"),
            "{e}"
        );
        assert!(!data.exists());

        // The right key: the seed holds the secret sealed with the new cluster's key only.
        prepare_restore(&data, &backup, Some(&old), &key_path).unwrap();
        let new = ClusterKey::load(&key_path).unwrap();
        assert_ne!(new, old);
        let text = std::fs::read_to_string(seed_path(&data)).unwrap();
        assert!(!text.contains("pw-restored"));
        let Seed::Restore { state } = serde_json::from_str(&text).unwrap() else {
            panic!("{text}")
        };
        let opened = crate::secrets::opened(&new, &state);
        let value = &opened
            .objects
            .values()
            .next()
            .unwrap()
            .object
            .spec
            .data()
            .unwrap()["password"];
        assert_eq!(value, "pw-restored");
    }

    #[test]
    fn force_new_cluster_is_refused_on_etcd_and_without_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let e = prepare_force_new_cluster(dir.path()).unwrap_err();
        assert!(e.to_string().contains("holds none"), "{e}");
        let node = serde_json::json!({
            "id": 1, "name": "n1", "host": "h", "domain": "d", "ip": "10.0.0.1",
            "api_port": 1443, "raft_port": 9212, "bootstrapped": true,
            "vtep_mac": "02:00:00:00:00:01",
            "etcd": {"url": "etcd://127.0.0.1:2379", "prefix": "/smr/"}
        });
        std::fs::write(node_file_path(dir.path()), node.to_string()).unwrap();
        let e = prepare_force_new_cluster(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("this node keeps its state in etcd"),
            "{e}"
        );
        assert!(!seed_path(dir.path()).exists());
    }
}
