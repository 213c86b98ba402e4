//! Issue 12, finding 5: a node whose data dir fills up refuses writes with 507
//! `insufficient_storage` (nothing half-written), reports `degraded` in its health and in
//! `smrmgr status` (exit 4), and takes writes again by itself once space is back: no restart,
//! no acknowledged write lost. The data dir is a small tmpfs mounted for the test (needs root).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::client::ClientError;
use agent::definitions;
use common::{Cluster, eventually, output, smrmgr};

/// A tmpfs mounted on `dir`, unmounted by that path on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "mount tmpfs on {}: {status} (root?)",
            dir.display()
        );
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    /// Unmounts by the recorded path; lazily when the agent still holds files there (a failed
    /// test drops this before the cluster kills the agent).
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}

/// Fills the file system of `dir` with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    for chunk in [1024 * 1024, 4096, 1] {
        let block = vec![0x5a; chunk];
        while file.write_all(&block).is_ok() {}
    }
    path
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Acked,
    /// 507 insufficient_storage: refused, nothing applied.
    Refused,
    /// Anything else (the outcome is not known to the client).
    Other(String),
}

fn object(n: usize) -> Vec<definitions::Object> {
    let yaml = format!(
        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: disk\n  name: w{n}\nspec:\n  data:\n    n: \"{n}\"\n"
    );
    definitions::parse_str("w", &yaml).expect("definition")
}

fn status_code(cluster: &Cluster) -> Option<i32> {
    let mut cmd = smrmgr(cluster.dir.path());
    cmd.args(["status", "--data-dir"])
        .arg(&cluster.nodes[0].data_dir);
    output(cmd).status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_data_dir_refuses_writes_and_recovers_by_itself() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cluster = Cluster::new();
    // The first node's data dir (the harness names it after the node) on a 64 MiB tmpfs: 5 % of
    // it, 3.2 MiB, is kept in reserve.
    let data_dir = cluster.dir.path().join("smr-agent-1");
    let tmpfs = Tmpfs::mount(&data_dir, "64m")?;
    cluster.start_first()?;
    let client = cluster.client(0);
    eventually("a leader", Duration::from_secs(20), || async {
        client.health().await.ok()?.leader
    })
    .await?;
    assert_eq!(status_code(&cluster), Some(0));

    // One writer, each write with its own op_id; every outcome recorded.
    let outcomes: Arc<Mutex<BTreeMap<usize, Outcome>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, outcomes, stop) = (cluster.client(0), outcomes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let outcome = match client
                    .apply(&object(n), false, Some(format!("disk-{n}")))
                    .await
                {
                    Ok(_) => Outcome::Acked,
                    Err(ClientError::Api {
                        status: 507, code, ..
                    }) if code == "insufficient_storage" => Outcome::Refused,
                    Err(e) => Outcome::Other(e.to_string()),
                };
                outcomes.lock().expect("lock").insert(n, outcome);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let count = |o: Outcome| {
        let outcomes = outcomes.clone();
        move || {
            outcomes
                .lock()
                .expect("lock")
                .values()
                .filter(|x| **x == o)
                .count()
        }
    };
    let acked = count(Outcome::Acked);
    eventually(
        "writes before the disk fills",
        Duration::from_secs(10),
        || async { (acked() >= 10).then_some(()) },
    )
    .await?;

    let filler = fill(&data_dir);
    let filled = Instant::now();
    let refused = count(Outcome::Refused);
    eventually(
        "a write refused with 507",
        Duration::from_secs(10),
        || async { (refused() > 0).then_some(()) },
    )
    .await?;
    let health = client.health().await?;
    assert_eq!(health.state, "degraded", "{health:?}");
    let problem = health.problem.unwrap_or_default();
    assert!(problem.contains("free"), "{problem}");
    assert_eq!(
        status_code(&cluster),
        Some(4),
        "smrmgr status exits 4 when degraded"
    );
    let refused_at_fill = refused();
    eventually("several refusals", Duration::from_secs(10), || async {
        (refused() >= refused_at_fill + 3).then_some(())
    })
    .await?;
    eprintln!("507 within {:?} of the disk filling", filled.elapsed());

    // Space back: writes resume by themselves.
    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    let acked_at_free = acked();
    eventually("writes to resume", Duration::from_secs(10), || async {
        (acked() > acked_at_free + 3).then_some(())
    })
    .await?;
    eprintln!(
        "writes resumed {:?} after the space came back",
        freed.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await?;
    assert_eq!(client.health().await?.state, "leader");
    assert_eq!(status_code(&cluster), Some(0));

    // Every acknowledged write is there; no refused one is.
    let stored: std::collections::BTreeSet<String> = client
        .list(Some(definitions::Kind::Configuration))
        .await?
        .into_iter()
        .map(|o| o.object.meta.name)
        .collect();
    let outcomes = outcomes.lock().expect("lock").clone();
    let lost: Vec<usize> = outcomes
        .iter()
        .filter(|(n, o)| **o == Outcome::Acked && !stored.contains(&format!("w{n}")))
        .map(|(n, _)| *n)
        .collect();
    let half_written: Vec<usize> = outcomes
        .iter()
        .filter(|(n, o)| **o == Outcome::Refused && stored.contains(&format!("w{n}")))
        .map(|(n, _)| *n)
        .collect();
    let other: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Other(_)))
        .collect();
    eprintln!(
        "{} writes: {} acknowledged, {} refused (507), {} other {other:?}",
        outcomes.len(),
        outcomes.values().filter(|o| **o == Outcome::Acked).count(),
        outcomes
            .values()
            .filter(|o| **o == Outcome::Refused)
            .count(),
        other.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        half_written.is_empty(),
        "refused writes applied: {half_written:?}"
    );
    assert!(other.is_empty(), "writes with an other outcome: {other:?}");

    cluster.stop(0)?;
    drop(tmpfs);
    eprintln!("disk-full test took {:?}", started.elapsed());
    Ok(())
}
