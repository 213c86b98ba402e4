//! Issue 16, on real agents (loopback, the embedded Raft store): a cluster created by the first
//! version of smr (no cluster key on any node, the CA key only in the first node's `pki/ca.key`,
//! secrets in clear), emulated with `SMR_TEST_LEGACY_CA=1` (for tests only), is upgraded node by node, with one node down through the migration. It ends as a
//! new cluster is: every node holds the same cluster key (0600), secrets stay in clear until
//! every node holds it and are then sealed with their generation unchanged, a node other than the first signs a join while the first is stopped, and
//! `smrmgr ca rotate` succeeds. The key route refuses an admin certificate and a client without
//! one.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::client::ClientError;
use agent::definitions::{DataSpec, Object, Spec};
use agent::pki::ClusterKey;
use common::{Cluster, eventually};

const VALUE: &str = "e2e-migrated-7d20c4-distinctive";

fn secret() -> Object {
    secret_named("db")
}

fn secret_named(name: &str) -> Object {
    Object::new(
        "app",
        name,
        Spec::Secret(DataSpec {
            data: [("password".to_string(), VALUE.to_string())].into(),
        }),
    )
}

fn secret_value(state: &agent::state::ClusterState) -> String {
    common::secret_password(state, "db")
}

/// The state as node `i` backs it up (a linearizable read).
fn backup(cluster: &Cluster, i: usize) -> anyhow::Result<agent::state::ClusterState> {
    let file = cluster.dir.path().join(format!("backup-{i}.smr"));
    common::backup(cluster, i, &file)
}

fn key_path(cluster: &Cluster, i: usize) -> PathBuf {
    cluster.nodes[i].data_dir.join("pki/cluster.key")
}

/// Node `i`'s cluster key, once it has one.
fn key_of(cluster: &Cluster, i: usize) -> Option<ClusterKey> {
    ClusterKey::load(&key_path(cluster, i)).ok()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn api_status(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::Api { status, .. } => Some(*status),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_created_before_the_ca_key_was_sealed_migrates_after_an_upgrade()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    // The first version: no cluster key, nothing sealed, secrets in clear.
    cluster.start_env = vec![(agent::migration::TEST_LEGACY_CA_ENV.into(), "1".into())];
    cluster.start_first()?;
    cluster.join(0)?;
    cluster.join(0)?;
    cluster.wait_formed(&[0, 1, 2], 3).await?;
    for i in 0..3 {
        assert!(key_of(&cluster, i).is_none(), "node {i} has a cluster key");
    }
    assert!(cluster.nodes[0].data_dir.join("pki/ca.key").exists());
    cluster.client(0).apply(&[secret()], false, None).await?;
    let before = backup(&cluster, 0)?;
    assert_eq!(secret_value(&before), VALUE);
    assert!(before.ca.as_ref().unwrap().key_sealed.is_none());
    let refused = cluster.client(1).ca_rotate().await.unwrap_err();
    assert_eq!(api_status(&refused), Some(409), "{refused}");
    assert!(refused.to_string().contains("no cluster key"), "{refused}");

    // The upgrade, one node at a time (`restart` starts a node without the test settings).
    // Node 2 first: it has no key and nobody can give it one yet.
    cluster.stop(1)?;
    cluster.restart(1)?;
    // Node 3 goes down before the migration starts and comes back after.
    cluster.stop(2)?;
    // The node that created the cluster: it makes the key and seals the CA key.
    cluster.stop(0)?;
    cluster.restart(0)?;
    let key = eventually(
        "node 1 to make the cluster key",
        Duration::from_secs(30),
        || async { key_of(&cluster, 0) },
    )
    .await?;
    eventually(
        "node 2 to fetch the cluster key",
        Duration::from_secs(30),
        || async { (key_of(&cluster, 1)? == key).then_some(()) },
    )
    .await?;
    for i in 0..2 {
        assert_eq!(mode(&key_path(&cluster, i)), 0o600);
    }
    // The CA key is sealed in the state with it, but node 3 does not hold it: the secret stays
    // in clear (node 3 could not open it) and the CA does not rotate.
    // A secret applied meanwhile through a node that holds the key is stored in clear too.
    cluster
        .client(1)
        .apply(&[secret_named("late")], false, None)
        .await?;
    let during = backup(&cluster, 1)?;
    let record = during.ca.as_ref().unwrap();
    assert!(record.key_migrating, "{record:?}");
    key.open_ca(&record.cert_pem, record.key_sealed.as_deref().unwrap())?;
    assert_eq!(secret_value(&during), VALUE);
    assert_eq!(common::secret_password(&during, "late"), VALUE);
    let refused = cluster.client(1).ca_rotate().await.unwrap_err();
    assert_eq!(api_status(&refused), Some(409), "{refused}");
    assert!(
        refused.to_string().contains("on its way to every node"),
        "{refused}"
    );

    // The key route: node certificates only. An admin certificate is refused (403), and so is a
    // client without a certificate.
    let admin = cluster
        .client(0)
        .get_json("internal/cluster-key")
        .await
        .unwrap_err();
    assert_eq!(api_status(&admin), Some(403), "{admin}");
    assert!(admin.to_string().contains("node certificates"), "{admin}");
    let anonymous = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()?
        .get(format!(
            "https://{}/api/v1/internal/cluster-key",
            cluster.nodes[0].api()
        ))
        .send()
        .await?;
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(!anonymous.text().await?.contains("SMRKEY"));

    // Node 3 comes back upgraded: it fetches the key, the migration ends, the secret is sealed
    // (same generation: nothing rolls out).
    cluster.restart(2)?;
    eventually(
        "node 3 to fetch the cluster key",
        Duration::from_secs(30),
        || async { (key_of(&cluster, 2)? == key).then_some(()) },
    )
    .await?;
    assert_eq!(mode(&key_path(&cluster, 2)), 0o600);
    let after = eventually("the secret sealed", Duration::from_secs(30), || async {
        let state = backup(&cluster, 0).ok()?;
        (agent::pki::is_sealed_value(&secret_value(&state))
            && agent::pki::is_sealed_value(&common::secret_password(&state, "late")))
        .then_some(state)
    })
    .await?;
    assert!(!after.ca.as_ref().unwrap().key_migrating);
    let opened = agent::secrets::opened(&key, &after);
    assert_eq!(secret_value(&opened), VALUE);
    assert_eq!(common::secret_password(&opened, "late"), VALUE);
    let stored = cluster.client(0).get(&"secret/app/db".parse()?).await?;
    assert_eq!(stored.generation, 1, "{stored:?}");

    // The first node stopped: a token minted on node 2, a new node joins through it (node 2
    // signs its certificates) and receives the cluster key.
    cluster.stop(0)?;
    let joined = cluster.join(1)?;
    assert_eq!(key_of(&cluster, joined), Some(key.clone()));
    cluster.nodes[joined].client()?.health().await?;

    // The first node back: the CA rotates.
    cluster.restart(0)?;

    // A removed node: its node certificate (still valid, from the cluster's CA) is refused the
    // key route (403), before anything else is looked at.
    let removed = &cluster.nodes[joined];
    let identity = agent::pki::Identity::load(&removed.data_dir.join("pki"), "node")?;
    let (name, api) = (removed.name.clone(), cluster.nodes[1].api());
    cluster.stop(joined)?;
    let id = backup(&cluster, 1)?
        .nodes
        .iter()
        .find(|(_, n)| n.name == name)
        .map(|(id, _)| *id)
        .expect("the joined node is a member");
    eventually("the joined node removed", Duration::from_secs(60), || {
        let client = cluster.client(1);
        async move { client.remove_node(id).await.ok() }
    })
    .await?;
    let node_client =
        agent::pki::reqwest_client(&identity.ca_pem, Some(&identity), Duration::from_secs(10))?;
    let refused = node_client
        .get(format!("https://{api}/api/v1/internal/cluster-key"))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 403);
    let text = refused.text().await?;
    assert!(text.contains("not a member"), "{text}");
    assert!(!text.contains("SMRKEY"), "{text}");
    let mut rotate = common::smrmgr(cluster.dir.path());
    rotate
        .args(["ca", "rotate", "--timeout", "40", "--data-dir"])
        .arg(&cluster.nodes[1].data_dir);
    println!("{}", common::run(rotate)?);
    let rotated = backup(&cluster, 1)?;
    let record = rotated.ca.as_ref().unwrap();
    assert_ne!(record.fingerprint, before.ca.as_ref().unwrap().fingerprint);
    assert!(record.next.is_none());
    Ok(())
}
