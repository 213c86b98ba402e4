//! `smrctl context export --user NAME` against real agents on loopback (issue 15): the cluster
//! signs a fresh admin certificate for the named user (the key is made by smrctl and never sent),
//! the file imports into a second smrctl (its own HOME) that then works; only admin certificates
//! may ask, and a bad name is refused.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use agent::client::{Client, Context};
use agent::pki::{self, Identity, Role};
use common::{Cluster, output, smrctl};

/// smrctl with its own HOME and no context flag: what a colleague's machine runs.
fn colleague(home: &Path, args: &[&str]) -> Output {
    Command::new(common::smrctl_bin())
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SMR_CONTEXT")
        .output()
        .expect("smrctl runs")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exported_user_context_works_from_a_second_smrctl() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    cluster
        .agreed_leader(&[0, 1], Duration::from_secs(60))
        .await?;
    let work = tempfile::tempdir()?;
    let file = work.path().join("alice.context");

    // Exported through node 2, which does not hold the CA key: it has the CA holder sign.
    let admin = cluster.nodes[1].context_path();
    let mut cmd = smrctl(&admin);
    cmd.args(["context", "export", "--user", "alice"])
        .arg(&file);
    let out = output(cmd);
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file)?.permissions().mode() & 0o777,
        0o600
    );

    // A new key and an admin certificate for CN=alice, under the cluster's CA.
    let exported = Context::load(&file)?;
    let own = Context::load(&admin)?;
    assert_eq!(exported.name, "alice");
    assert_eq!(exported.api_url, own.api_url);
    assert_eq!(exported.ca_pem, own.ca_pem);
    assert_ne!(exported.key_pem, own.key_pem);
    let identity = Identity::new(
        exported.cert_pem.clone(),
        exported.key_pem.clone(),
        exported.ca_pem.clone(),
    )?;
    let peer = identity.peer_identity()?;
    assert_eq!((peer.role, peer.name.as_str()), (Role::Admin, "alice"));

    // A second smrctl imports it and uses it.
    let home = tempfile::tempdir()?;
    let h = home.path();
    let out = ok(colleague(
        h,
        &["context", "import", file.to_str().unwrap(), "--use"],
    ));
    assert!(out.contains("context alice imported and in use"), "{out}");
    let nodes = ok(colleague(h, &["nodes"]));
    assert!(
        nodes.contains("smr-agent-1") && nodes.contains("smr-agent-2"),
        "{nodes}"
    );
    let yaml = work.path().join("b.yaml");
    std::fs::write(&yaml, common::busybox("team", "web"))?;
    ok(colleague(
        h,
        &["apply", yaml.to_str().unwrap(), "--no-wait"],
    ));
    let stored = cluster.client(0).get(&common::key("team", "web")).await?;
    assert_eq!(stored.object.meta.name, "web");

    // A bad user name is refused by smrctl before anything is sent, and by the API.
    let mut cmd = smrctl(&admin);
    cmd.args([
        "context",
        "export",
        "--user",
        "a,OU=smr-node",
        "--name",
        "x",
    ]);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("invalid certificate name"),
        "{out:?}"
    );

    // Only admin certificates may ask: a node certificate is refused (403).
    let node = Identity::load(&cluster.nodes[0].data_dir.join("pki"), "node")?;
    let http = pki::reqwest_client(&own.ca_pem, Some(&node), Duration::from_secs(10))?;
    let (_, csr) = pki::new_key_and_csr(Role::Admin, "mallory", &[])?;
    let response = http
        .post(format!(
            "https://{}/api/v1/users/mallory/certificate",
            cluster.nodes[0].api()
        ))
        .json(&serde_json::json!({ "csr": csr }))
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    // And no certificate at all: 401.
    let anonymous = pki::reqwest_client(&own.ca_pem, None, Duration::from_secs(10))?;
    let response = anonymous
        .post(format!(
            "https://{}/api/v1/users/mallory/certificate",
            cluster.nodes[0].api()
        ))
        .json(&serde_json::json!({ "csr": csr }))
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    // The exported user is an admin too: it can sign for another user.
    let alice = Client::from_context(&exported)?;
    let signed = alice.sign_user("bob", &csr).await?;
    assert_eq!(signed.name, "bob");
    let refused = alice.sign_user("a,OU=smr-node", &csr).await;
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        why.contains("user name \"a,OU=smr-node\" is refused"),
        "{why}"
    );
    Ok(())
}
