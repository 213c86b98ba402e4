//! `smrmgr user revoke` against real agents on loopback (issue 16): user certificates signed by
//! the cluster are recorded; revoking a user (or one certificate by serial) makes every node's
//! API refuse them (403 naming the revocation), connections already open included, while other
//! users and the nodes' own contexts keep working. On the embedded Raft store and on etcd.

mod common;

use std::time::Duration;

use agent::client::{Client, Context};
use anyhow::{Context as _, ensure};
use common::{Cluster, eventually, smrmgr_on, text};

/// A user's client on node `i`.
fn on(ctx: &Context, cluster: &Cluster, i: usize) -> anyhow::Result<Client> {
    let mut ctx = ctx.clone();
    ctx.api_url = format!("https://{}", cluster.nodes[i].api());
    Ok(Client::from_context(&ctx)?)
}

/// Whether `client` is refused as revoked (`Some(true)`), answered (`Some(false)`), or neither.
async fn refused(client: &Client) -> Option<bool> {
    match client.nodes().await {
        Ok(_) => Some(false),
        Err(e) => {
            let e = format!("{e:#}");
            e.contains("was revoked").then_some(true)
        }
    }
}

async fn scenario(cluster: &Cluster) -> anyhow::Result<()> {
    let n = cluster.nodes.len();
    let admin = Context::load(&cluster.nodes[0].context_path())?;
    let signer = cluster.client(n - 1);
    let alice = signer.user_context(&admin, "alice", "alice").await?;
    let alice2 = signer.user_context(&admin, "alice", "alice-laptop").await?;
    let bob = signer.user_context(&admin, "bob", "bob").await?;
    // Clients made (and connected) before the revocation: their pooled connections too must
    // be refused afterwards.
    let mut before = Vec::new();
    for i in 0..n {
        for ctx in [&alice, &alice2, &bob] {
            let client = on(ctx, cluster, i)?;
            ensure!(refused(&client).await == Some(false), "node {i}");
            before.push((ctx.name.clone(), i, client));
        }
    }

    let out = smrmgr_on(cluster, 0, &["user", "revoke", "alice"]);
    ensure!(
        out.status.success() && text(&out).contains("revoked 2 certificate(s) of user alice"),
        "{}",
        text(&out)
    );
    for (name, i, client) in &before {
        let want = name != "bob";
        eventually(
            &format!(
                "node {i} to {} {name}",
                if want { "refuse" } else { "answer" }
            ),
            Duration::from_secs(10),
            || async { (refused(client).await == Some(want)).then_some(()) },
        )
        .await?;
    }
    // The answer names the certificate and what to do.
    let e = on(&alice, cluster, n - 1)?.nodes().await.unwrap_err();
    let serial = agent::pki::pem_serial(&alice.cert_pem)?;
    ensure!(
        format!("{e:#}").contains(&format!(
            "the certificate of \"alice\" (serial {serial}) was revoked"
        )),
        "{e:#}"
    );
    // Revocation is per certificate: a certificate signed for alice afterwards works.
    let again = signer.user_context(&admin, "alice", "alice-new").await?;
    for i in 0..n {
        ensure!(refused(&on(&again, cluster, i)?).await == Some(false));
    }
    let out = smrmgr_on(cluster, 1, &["user", "list"]);
    let listed = text(&out);
    ensure!(out.status.success(), "{listed}");
    ensure!(
        listed.matches("alice").count() == 3
            && listed.matches(" yes").count() == 2
            && listed.contains("bob"),
        "{listed}"
    );

    // One certificate by serial, written as openssl prints it (upper case) with colons.
    let bob_serial = agent::pki::pem_serial(&bob.cert_pem)?.to_uppercase();
    let colons: Vec<String> = bob_serial
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let out = smrmgr_on(
        cluster,
        n - 1,
        &["user", "revoke", "--serial", &colons.join(":")],
    );
    ensure!(out.status.success(), "{}", text(&out));
    for i in 0..n {
        let client = on(&bob, cluster, i)?;
        eventually(
            &format!("node {i} to refuse bob"),
            Duration::from_secs(10),
            || async { (refused(&client).await == Some(true)).then_some(()) },
        )
        .await?;
        // The nodes' own admin contexts are not touched.
        cluster.client(i).nodes().await.context("own context")?;
    }

    // Clear refusals.
    let out = smrmgr_on(cluster, 0, &["user", "revoke", "carol"]);
    ensure!(
        !out.status.success() && text(&out).contains("no certificate of user \"carol\""),
        "{}",
        text(&out)
    );
    let out = smrmgr_on(cluster, 0, &["user", "revoke", "--serial", "xyz"]);
    ensure!(
        !out.status.success() && text(&out).contains("hex digits"),
        "{}",
        text(&out)
    );
    // A revoked user cannot revoke, list or sign either.
    ensure!(on(&alice, cluster, 0)?.user_certs().await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_user_is_refused_by_every_node_and_others_still_work() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.join(0)?;
    cluster.join(0)?;
    cluster.wait_formed(&[0, 1, 2], 3).await?;
    scenario(&cluster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_user_is_refused_on_the_etcd_store() -> anyhow::Result<()> {
    let (_etcd, cluster) = common::on_etcd(2, "/smr-revoke/").await?;
    scenario(&cluster).await
}

/// Whether `result` is a 409 whose message names `node` as not upgraded.
fn refused_for<T>(result: Result<T, agent::client::ClientError>, node: &str) -> anyhow::Result<()> {
    match result {
        Err(agent::client::ClientError::Api {
            status: 409,
            message,
            ..
        }) if message.contains("until every node is upgraded") && message.contains(node) => Ok(()),
        Err(e) => anyhow::bail!("not the refusal naming {node}: {e:#}"),
        Ok(_) => anyhow::bail!("accepted while {node} plays the older version"),
    }
}

/// Rolling upgrade: while a member plays the version before user-certificate records and CA
/// aborts (`SMR_TEST_LEGACY_FEATURES`; a real one would stop applying the log at such an entry),
/// user certificates are signed without being recorded, and revocation and abort are refused
/// with 409 naming it. Once it is restarted as the new version, records are written again, and
/// a certificate signed meanwhile is revoked by its serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_entries_wait_for_every_node_to_read_them() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    cluster.start_env = vec![(
        "SMR_TEST_LEGACY_FEATURES".into(),
        "user-certs,ca-abort".into(),
    )];
    let old = cluster.join(0)?;
    cluster.start_env.clear();
    cluster
        .agreed_leader(&[0, old], Duration::from_secs(30))
        .await?;
    let old_name = cluster.nodes[old].name.clone();

    let admin = Context::load(&cluster.nodes[0].context_path())?;
    let signer = cluster.client(0);
    let alice = signer.user_context(&admin, "alice", "alice").await?;
    ensure!(refused(&on(&alice, &cluster, 0)?).await == Some(false));
    let recorded = signer.user_certs().await?;
    ensure!(
        recorded.is_empty(),
        "recorded while a node is old: {recorded:?}"
    );
    // The old node itself does not record either.
    cluster
        .client(old)
        .user_context(&admin, "alice", "alice-2")
        .await?;
    ensure!(signer.user_certs().await?.is_empty());

    let revoke = |name: &str| agent::api::types::UserRevokeRequest {
        name: Some(name.into()),
        serial: None,
    };
    refused_for(signer.revoke_user(&revoke("alice")).await, &old_name)?;
    refused_for(signer.ca_abort().await, &old_name)?;
    for args in [&["user", "revoke", "alice"][..], &["ca", "abort"]] {
        let out = smrmgr_on(&cluster, 0, args);
        ensure!(
            out.status.code() == Some(1) && text(&out).contains(&old_name),
            "{args:?}: {}",
            text(&out)
        );
    }

    // The node is upgraded.
    cluster.stop(old)?;
    cluster.restart(old)?;
    let bob = eventually(
        "a user certificate recorded once every node reads the records",
        Duration::from_secs(30),
        || async {
            let bob = signer.user_context(&admin, "bob", "bob").await.ok()?;
            let certs = signer.user_certs().await.ok()?;
            certs.iter().any(|c| c.name == "bob").then_some(bob)
        },
    )
    .await?;
    // The upgrade finished: the abort is answered on its merits (no rotation under way).
    match signer.ca_abort().await {
        Err(agent::client::ClientError::Api {
            status: 409,
            message,
            ..
        }) if message.contains("no CA rotation is under way") => {}
        other => anyhow::bail!("abort after the upgrade: {other:?}"),
    }
    // alice's certificate was not recorded: by name it is not found, by serial it is revoked.
    let out = smrmgr_on(&cluster, 0, &["user", "revoke", "alice"]);
    ensure!(
        !out.status.success() && text(&out).contains("no certificate of user \"alice\""),
        "{}",
        text(&out)
    );
    let serial = agent::pki::pem_serial(&alice.cert_pem)?;
    let out = smrmgr_on(&cluster, 0, &["user", "revoke", "--serial", &serial]);
    ensure!(out.status.success(), "{}", text(&out));
    for i in [0, old] {
        let client = on(&alice, &cluster, i)?;
        eventually(
            &format!("node {i} to refuse alice"),
            Duration::from_secs(10),
            || async { (refused(&client).await == Some(true)).then_some(()) },
        )
        .await?;
        ensure!(refused(&on(&bob, &cluster, i)?).await == Some(false));
    }
    Ok(())
}
