//! Issue 7 end to end: real agent processes on loopback keeping their state in a real 3-member
//! etcd cluster with authentication on (`smrmgr start --store etcd://... --etcd-user ...`), no
//! smr Raft group.

mod common;

use std::time::{Duration, Instant};

use agent::definitions::{self, ObjectKey};
use common::{Cluster, apply_busybox, busybox, eventually, key, stale_get};
use smr_tests::etcd::EtcdCluster;

async fn visible(cluster: &Cluster, nodes: &[usize], keys: &[ObjectKey]) -> anyhow::Result<()> {
    for &j in nodes {
        let client = cluster.client(j);
        for k in keys {
            eventually(&format!("{k} on node {j}"), Duration::from_secs(15), || {
                stale_get(&client, k)
            })
            .await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_on_etcd_apply_fail_over_and_survive_an_etcd_member_kill() -> anyhow::Result<()> {
    let mut etcd = tokio::task::spawn_blocking(|| EtcdCluster::start(3)).await??;
    // etcd authentication on: the agents log in as a user that may only touch their prefix
    // (tokens are per member, so the member failover below also renews them).
    smr_tests::etcd::enable_auth(&etcd.endpoints(), "smr", "e2e-pw", "/smr-e2e/").await?;
    let secrets = tempfile::tempdir()?;
    let password_file = secrets.path().join("etcd-password");
    std::fs::write(&password_file, "e2e-pw\n")?;
    let mut cluster = Cluster::new();
    cluster.start_extra = vec![
        "--store".into(),
        etcd.url(),
        "--etcd-prefix".into(),
        "/smr-e2e/".into(),
        "--etcd-user".into(),
        "smr".into(),
        "--etcd-password-file".into(),
        password_file.display().to_string(),
    ];
    cluster.start_first()?;
    cluster.join(0)?;
    cluster.join(0)?;
    let all = [0, 1, 2];
    let leader = cluster.agreed_leader(&all, Duration::from_secs(30)).await?;
    let health = cluster.client(0).health().await?;
    assert_eq!(
        health.voters.len(),
        3,
        "every agent is a member: {health:?}"
    );

    // A write through any agent is visible on every agent.
    let mut keys = Vec::new();
    for i in all {
        apply_busybox(&cluster.client(i), "written", &format!("via{i}")).await?;
        keys.push(key("written", &format!("via{i}")));
    }
    visible(&cluster, &all, &keys).await?;

    // The smr leader dies (SIGKILL): another agent takes the singleton work within 10 s.
    let killed = cluster.index_of(leader);
    cluster.kill9(killed)?;
    let gone = Instant::now();
    let survivors: Vec<usize> = all.into_iter().filter(|&i| i != killed).collect();
    let new_leader = eventually("a new leader", Duration::from_secs(10), || async {
        for &i in &survivors {
            let health = cluster.client(i).health().await.ok()?;
            if health.state == "leader" && health.id != leader {
                return Some(health.id);
            }
        }
        None
    })
    .await?;
    eprintln!(
        "agent {new_leader} leads {:?} after agent {leader} was killed",
        gone.elapsed()
    );
    for &i in &survivors {
        apply_busybox(&cluster.client(i), "after-kill", &format!("via{i}")).await?;
        keys.push(key("after-kill", &format!("via{i}")));
    }
    visible(&cluster, &survivors, &keys).await?;

    // The etcd member listed first dies: the agents fail over to the other members.
    etcd.kill_member(0);
    for &i in &survivors {
        apply_busybox(&cluster.client(i), "member-killed", &format!("via{i}")).await?;
        keys.push(key("member-killed", &format!("via{i}")));
    }
    visible(&cluster, &survivors, &keys).await?;

    // The killed agent comes back and catches up from etcd.
    cluster.restart(killed)?;
    visible(&cluster, &all, &keys).await?;
    cluster.agreed_leader(&all, Duration::from_secs(30)).await?;

    // etcd loses its quorum: the agents keep serving their last state, report degraded and
    // refuse writes; once etcd is back they resume and nothing acknowledged is lost.
    etcd.kill_member(1);
    eventually(
        "every agent to report degraded",
        Duration::from_secs(20),
        || async {
            for i in all {
                let health = cluster.client(i).health().await.ok()?;
                if health.state != "degraded" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await?;
    let objects = definitions::parse_str("e", &busybox("outage", "refused"))?;
    assert!(
        cluster
            .client(0)
            .apply(&objects, false, None)
            .await
            .is_err(),
        "a write without etcd is refused"
    );
    visible(&cluster, &all, &keys).await?;
    for i in 0..3 {
        etcd.start_member(i)?;
    }
    for i in 0..3 {
        etcd.wait_healthy(i, Duration::from_secs(30))?;
    }
    cluster.agreed_leader(&all, Duration::from_secs(30)).await?;
    apply_busybox(&cluster.client(2), "after-outage", "via2").await?;
    keys.push(key("after-outage", "via2"));
    visible(&cluster, &all, &keys).await?;
    Ok(())
}

/// `smrmgr ca rotate` on the etcd store (issue 16): the CA record is part of the state kept in
/// etcd, so the rotation runs as on the embedded store: every agent ends with a certificate of
/// the new CA, trusts only it, and the cluster takes writes through every agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ca_is_rotated_on_the_etcd_store() -> anyhow::Result<()> {
    let (_etcd, cluster) = common::on_etcd(2, "/smr-rotate/").await?;
    let old = cluster.client(0).ca_status().await?.fingerprint;

    let mut cmd = common::smrmgr(cluster.dir.path());
    cmd.args(["ca", "rotate", "--timeout", "60", "--data-dir"])
        .arg(&cluster.nodes[1].data_dir);
    let out = common::run(cmd)?;
    assert!(out.contains("done: 2/2 nodes"), "{out}");

    let status = cluster.client(0).ca_status().await?;
    assert_ne!(status.fingerprint, old);
    assert_eq!(status.previous.as_deref(), Some(old.as_str()));
    for n in &status.nodes {
        assert_eq!(
            n.cert_ca.as_deref(),
            Some(status.fingerprint.as_str()),
            "{n:?}"
        );
    }
    for i in 0..2 {
        let ca = cluster.nodes[i].data_dir.join("pki/ca.crt");
        eventually(
            &format!("agent {i} to trust only the new CA"),
            Duration::from_secs(30),
            || {
                let ca = ca.clone();
                let new = status.fingerprint.clone();
                async move {
                    let pem = std::fs::read_to_string(&ca).ok()?;
                    (agent::pki::pem_fingerprints(&pem).ok()? == vec![new]).then_some(())
                }
            },
        )
        .await?;
        apply_busybox(&cluster.client(i), "rotated", &format!("via{i}")).await?;
    }
    visible(
        &cluster,
        &[0, 1],
        &[key("rotated", "via0"), key("rotated", "via1")],
    )
    .await?;
    Ok(())
}
