//! Issue 16, secrets at rest, on real agents (loopback, the embedded Raft store): a secret's value
//! is sealed with the cluster key before it is proposed, so it is found neither in clear nor in
//! base64 in any file of the nodes' data dirs (Raft log, snapshots), nor in a backup; it opens
//! with the cluster key; applied again unchanged it is a no-op; `smrmgr restore` refuses the
//! backup without the old cluster's key and seals the secret again with the new cluster's key.
//! A cluster whose secrets an older version stored in clear gets them sealed by its leader when it
//! starts again, without a new generation.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::definitions::{self, DataSpec, Object, Spec};
use agent::pki::ClusterKey;
use agent::state::Outcome;
use base64::Engine as _;
use common::{Cluster, backup, eventually};

const VALUE: &str = "e2e-sealed-4c1f9a-distinctive";

fn secret() -> Object {
    Object::new(
        "app",
        "db",
        Spec::Secret(DataSpec {
            data: [("password".to_string(), VALUE.to_string())].into(),
        }),
    )
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The files under `dir` that hold the secret's value in clear or in base64.
fn holding_the_value(dir: &Path) -> Vec<String> {
    let hidden = [
        VALUE.as_bytes().to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(VALUE)
            .into_bytes(),
    ];
    let mut all = Vec::new();
    files(dir, &mut all);
    all.iter()
        .filter(|f| {
            let bytes = std::fs::read(f).unwrap_or_default();
            hidden
                .iter()
                .any(|h| bytes.windows(h.len()).any(|w| w == h.as_slice()))
        })
        .map(|f| f.display().to_string())
        .collect()
}

fn secret_value(state: &agent::state::ClusterState) -> String {
    common::secret_password(state, "db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_sealed_in_the_log_snapshots_and_backups_and_restored_with_the_old_key()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    cluster
        .agreed_leader(&[0, 1], Duration::from_secs(60))
        .await?;
    let client = cluster.client(1);
    let applied = client.apply(&[secret()], false, None).await?;
    assert_eq!(applied.outcomes[0].outcome, Outcome::Created, "{applied:?}");
    // Applied again unchanged (the seal is deterministic): a no-op.
    let again = client.apply(&[secret()], false, None).await?;
    assert_eq!(again.outcomes[0].outcome, Outcome::Unchanged, "{again:?}");
    let preview = client.apply(&[secret()], true, None).await?;
    assert_eq!(
        preview.outcomes[0].outcome,
        Outcome::Unchanged,
        "{preview:?}"
    );

    // 18 MiB of log after it: a snapshot is taken (more than 16 MiB of log since the last).
    let big = "x".repeat(1024 * 1024);
    for n in 0..18 {
        let config = Object::new(
            "fill",
            format!("c{n}"),
            Spec::Configuration(DataSpec {
                data: [("big".to_string(), big.clone())].into(),
            }),
        );
        client.apply(&[config], false, None).await?;
    }
    // (The leader's log crossed the threshold; a follower may take its own later.)
    let snapshots = eventually("a snapshot", Duration::from_secs(60), || async {
        let mut all = Vec::new();
        files(cluster.dir.path(), &mut all);
        let snapshots: Vec<PathBuf> = all
            .into_iter()
            .filter(|f| {
                f.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("snapshot-") && (n.ends_with(".snap") || n.ends_with(".json"))
                })
            })
            .collect();
        (!snapshots.is_empty()).then_some(snapshots)
    })
    .await?;
    println!("snapshots: {snapshots:?}");
    // The filling goes (the restore below then carries a small state).
    let fill: Vec<definitions::ObjectKey> = (0..18)
        .map(|n| format!("configuration/fill/c{n}").parse())
        .collect::<Result<_, _>>()?;
    client.delete(&fill).await?;

    // A backup: the value is sealed in it and opens with the cluster key only.
    let file = cluster.dir.path().join("cluster.smr");
    let state = backup(&cluster, 0, &file)?;
    let key_file = cluster.nodes[0].data_dir.join("pki/cluster.key");
    let key = ClusterKey::load(&key_file)?;
    // Nowhere on disk in clear: neither in the nodes' data dirs (log, snapshots) nor the backup.
    let found = holding_the_value(cluster.dir.path());
    assert!(found.is_empty(), "the secret in clear in {found:?}");
    let sealed = secret_value(&state);
    assert!(agent::pki::is_sealed_value(&sealed), "{sealed}");
    assert_eq!(secret_value(&agent::secrets::opened(&key, &state)), VALUE);

    // Restored without the old cluster's key: refused, nothing created.
    let ip = std::net::Ipv4Addr::new(127, 78, (std::process::id() % 250) as u8 + 1, 9);
    let node = common::Node {
        name: "restored".into(),
        ip,
        data_dir: cluster.dir.path().join("restored"),
    };
    let restore = |with_key: bool| {
        let mut cmd = common::smrmgr(cluster.dir.path());
        cmd.arg("restore").arg(&file);
        if with_key {
            cmd.arg("--backup-key-file").arg(&key_file);
        }
        cmd.args(["-a", "restored", "--ip", &ip.to_string()])
            .args([
                "--backend",
                "none",
                "--no-workloads",
                "--metrics-addr",
                "off",
            ])
            .arg("--data-dir")
            .arg(&node.data_dir);
        cmd
    };
    let out = common::output(restore(false));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--backup-key-file FILE"),
        "{out:?}"
    );
    assert!(!node.data_dir.exists());

    // With it: the new cluster holds the secret sealed with its own key.
    println!("{}", common::run(restore(true))?);
    let restored_client = node.client()?;
    let data_dir = node.data_dir.clone();
    cluster.nodes.push(node);
    let key_path: definitions::ObjectKey = "secret/app/db".parse()?;
    eventually("the restored secret", Duration::from_secs(30), || async {
        restored_client.get(&key_path).await.ok()
    })
    .await?;
    let again = backup(&cluster, 2, &cluster.dir.path().join("restored.smr"))?;
    let new_key = ClusterKey::load(&data_dir.join("pki/cluster.key"))?;
    assert_ne!(new_key, key);
    assert_ne!(secret_value(&again), sealed);
    assert_eq!(
        secret_value(&agent::secrets::opened(&new_key, &again)),
        VALUE
    );
    let found = holding_the_value(cluster.dir.path());
    assert!(found.is_empty(), "the secret in clear in {found:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_stored_in_clear_by_an_older_version_are_sealed_by_the_leader_at_start()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    // Two nodes of a version before sealing: secrets proposed in clear.
    cluster.start_env = vec![(agent::secrets::TEST_PLAIN_ENV.into(), "1".into())];
    cluster.start_first()?;
    cluster.join(0)?;
    cluster
        .agreed_leader(&[0, 1], Duration::from_secs(60))
        .await?;
    cluster.client(0).apply(&[secret()], false, None).await?;
    let file = cluster.dir.path().join("before.smr");
    assert_eq!(secret_value(&backup(&cluster, 0, &file)?), VALUE);

    // The first node (the only voter, so the leader) restarts as the new version: the other
    // one is still older, so the leader leaves the secret as it is and says why.
    cluster.stop(0)?;
    cluster.restart(0)?;
    let log = cluster.nodes[0].data_dir.join("smr.log");
    eventually(
        "the leader waiting for the older node",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("wait for every node to seal secrets")
                .then_some(())
        },
    )
    .await?;
    assert_eq!(secret_value(&backup(&cluster, 0, &file)?), VALUE);
    // The same secret applied again through the new version, which seals what it proposes: the
    // sealed form of the value stored in clear is no change (no new generation, no rollout);
    // it stays in clear for the leader's seal.
    let again = cluster.client(0).apply(&[secret()], false, None).await?;
    assert_eq!(again.outcomes[0].generation, 1, "{again:?}");
    assert_eq!(secret_value(&backup(&cluster, 0, &file)?), VALUE);

    // The other node upgraded too: the leader seals it, one command, no new generation.
    cluster.stop(1)?;
    cluster.restart(1)?;
    let key = ClusterKey::load(&cluster.nodes[0].data_dir.join("pki/cluster.key"))?;
    let after = cluster.dir.path().join("after.smr");
    let state = eventually("the secret sealed", Duration::from_secs(60), || async {
        let state = backup(&cluster, 0, &after).ok()?;
        agent::pki::is_sealed_value(&secret_value(&state)).then_some(state)
    })
    .await?;
    assert_eq!(secret_value(&agent::secrets::opened(&key, &state)), VALUE);
    let stored = cluster.client(0).get(&"secret/app/db".parse()?).await?;
    assert_eq!(stored.generation, 1, "{stored:?}");
    assert!(!std::fs::read_to_string(&after)?.contains(VALUE));
    // Applied again once sealed: still the same object.
    let again = cluster.client(1).apply(&[secret()], false, None).await?;
    assert_eq!(again.outcomes[0].generation, 1, "{again:?}");
    Ok(())
}
