//! Brings a cluster created before the CA key was sealed in the state (the first version of smr:
//! no cluster key anywhere, the CA key only in `pki/ca.key` of the node that created the cluster)
//! to what a new cluster is, after an upgrade and with nothing for the operator to do:
//!
//! ```text
//!  node holding ca.key, no cluster key:  make one, save it (0600, pki/cluster.key or
//!                                        --cluster-key-file), seal the CA key with it into the
//!                                        CA record (Op::SetCa, key_migrating)
//!  every other node without it:          GET /api/v1/internal/cluster-key from any member that
//!                                        holds it (mTLS, this node's certificate), check that it
//!                                        opens the sealed CA key, save it, use it; retried every
//!                                        second until it has it (a node down meanwhile gets it
//!                                        when it is back)
//!  the leader, once every member's       Op::FinishKeyMigration: secrets are sealed from then on
//!  health says holds_cluster_key:        (Op::SealSecrets for those stored in clear), the CA
//!                                        can be rotated
//! ```
//!
//! The decision is pure ([`crate::state::key_migration::key_actions`]); this loop gathers what
//! it needs and carries it out. On a cluster created with a cluster key it decides nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::node::Node;
use crate::pki::ClusterKey;
use crate::state::key_migration::{self, KeyAction, NodeKeyView};
use crate::state::{CaRecord, CommandResult, Op};

/// For tests only: set to `1`, the agent behaves as the first version of smr, from before the
/// CA key was sealed in the state: a node that creates a cluster makes no cluster key (it keeps
/// `pki/ca.key` only and seals nothing), and no node migrates. Tests create a cluster with it,
/// then start the nodes again without it (the upgrade). Not a feature: never set it otherwise.
pub const TEST_LEGACY_CA_ENV: &str = "SMR_TEST_LEGACY_CA";

/// Whether [`TEST_LEGACY_CA_ENV`] is set (read once; a warning is logged).
pub fn test_legacy_ca() -> bool {
    static LEGACY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LEGACY.get_or_init(|| {
        let legacy = std::env::var(TEST_LEGACY_CA_ENV).is_ok_and(|v| v == "1");
        if legacy {
            tracing::warn!(
                "{TEST_LEGACY_CA_ENV}=1: no cluster key is made or fetched, the CA key is not \
                 sealed (for tests only)"
            );
        }
        legacy
    })
}

/// How often the node looks at the CA record and what it holds.
const CHECK: Duration = Duration::from_secs(1);

/// How often the same failure is logged again.
const LOG_AGAIN: Duration = Duration::from_secs(30);

/// Runs until `stop`: one step of [`key_migration::key_actions`] every second. `key_path` is
/// where this node keeps its cluster key (`pki/cluster.key`, or `--cluster-key-file`).
pub async fn run(node: Arc<Node>, key_path: PathBuf, mut stop: watch::Receiver<bool>) {
    if test_legacy_ca() {
        return;
    }
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        match step(&node, &key_path).await {
            Ok(()) => last_error = None,
            Err(e) => {
                let again = last_error
                    .as_ref()
                    .is_none_or(|(said, at)| *said != e || at.elapsed() >= LOG_AGAIN);
                if again {
                    tracing::warn!("cluster key migration: {e}");
                    last_error = Some((e, Instant::now()));
                }
            }
        }
    }
}

/// One step: what the CA record and this node's keys call for, carried out in order.
async fn step(node: &Node, key_path: &std::path::Path) -> Result<(), String> {
    let state = crate::renewal::stale_state(node).await?;
    let Some(record) = state.ca.as_ref() else {
        return Ok(());
    };
    let holds_ca_key = node
        .ca
        .as_ref()
        .is_some_and(|ca| ca.fingerprint() == record.fingerprint);
    let members = if record.key_migrating && node.is_leader() {
        Some(node.members_holding_cluster_key(&state).await)
    } else {
        None
    };
    let actions = key_migration::key_actions(&NodeKeyView {
        ca: Some(record),
        holds_ca_key,
        has_cluster_key: node.cluster_key().is_some(),
        members: members.as_deref(),
    });
    for action in actions {
        match action {
            KeyAction::MakeKey => {
                let key = ClusterKey::generate();
                save(node, key_path, key)?;
                tracing::info!(
                    path = %key_path.display(),
                    "made the cluster key of this cluster created before the CA key was sealed \
                     in the state"
                );
            }
            KeyAction::SealCa => seal_ca(node, record).await?,
            KeyAction::FetchKey => {
                let key = node.fetch_cluster_key(&state, record).await.map_err(|e| {
                    format!("this node does not hold the cluster key; asking the others: {e}")
                })?;
                save(node, key_path, key)?;
                tracing::info!(path = %key_path.display(), "saved the cluster key");
            }
            KeyAction::Finish { fingerprint } => {
                crate::renewal::propose_ca_op(node, Op::FinishKeyMigration { fingerprint }).await?;
                tracing::info!(
                    "every node holds the cluster key: secrets are sealed and the CA can be \
                     rotated from now on"
                );
            }
        }
    }
    Ok(())
}

/// Saves `key` where this node keeps it (mode 0600, written atomically), then uses it.
fn save(node: &Node, key_path: &std::path::Path, key: ClusterKey) -> Result<(), String> {
    key.save(key_path)
        .map_err(|e| format!("saving the cluster key to {}: {e}", key_path.display()))?;
    node.adopt_cluster_key(key);
    Ok(())
}

/// The node holding the CA key seals it with its cluster key into the CA record, which starts
/// the migration ([`Op::SetCa`], which every version applies).
async fn seal_ca(node: &Node, record: &CaRecord) -> Result<(), String> {
    let (Some(ca), Some(key)) = (node.ca.as_ref(), node.cluster_key()) else {
        return Err("sealing the CA key needs the CA key and the cluster key here".into());
    };
    let sealed = CaRecord {
        key_sealed: Some(key.seal_ca(ca).map_err(|e| e.to_string())?),
        key_migrating: true,
        ..record.clone()
    };
    match node
        .propose(Op::SetCa { ca: sealed }, None)
        .await
        .map_err(|e| format!("sealing the CA key into the state: {e}"))?
    {
        CommandResult::Rejected { reason } => Err(format!("sealing the CA key: {reason}")),
        _ => {
            tracing::info!(
                fingerprint = %record.fingerprint,
                "sealed the CA key in the state: the other nodes fetch the cluster key now"
            );
            Ok(())
        }
    }
}
