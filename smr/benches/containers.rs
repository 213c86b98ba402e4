//! Time from an apply to all replicas ready, for 1, 10 and 50 replicas on 3 emulated VMs, side by
//! side with `docker run -d` of the same containers in a loop on the same daemons; and the time to
//! reschedule replicas after a node stops answering.
//!
//!     cargo bench -p smr --bench containers     # as root
//!
//! Prints figures; asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use agent::definitions;
use common::eventually;
use common::vms::VmCluster;

fn definition(name: &str, replicas: usize) -> String {
    format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: bench\n  name: {name}\nspec:\n  image: smr/busybox\n  tag: local\n  replicas: {replicas}\n  entrypoint: [\"sleep\", \"3600\"]\n"
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(3)? else {
        return Ok(());
    };
    cluster.start_all(&[]).await?;
    let client = cluster.client(0);
    println!("3 emulated VMs, one dockerd each, busybox image, `sleep 3600`");
    println!(
        "{:<10} {:>14} {:>18} {:>8}",
        "replicas", "smr apply->ready", "docker run -d loop", "ratio"
    );
    for n in [1usize, 10, 50] {
        let name = format!("r{n}");
        let started = Instant::now();
        client
            .apply(
                &definitions::parse_str("bench.yaml", &definition(&name, n))?,
                false,
                None,
            )
            .await?;
        let key = format!("containers/bench/{name}").parse()?;
        eventually(
            &format!("{n} ready replicas"),
            Duration::from_secs(600),
            || async {
                let r = client.replicas(Some(&key)).await.ok()?;
                (r.len() == n && r.iter().all(|r| r.ready)).then_some(())
            },
        )
        .await?;
        let smr = started.elapsed();
        client.delete(&[key]).await?;

        // The same containers with plain docker, spread the same way, one after another.
        let started = Instant::now();
        for i in 0..n {
            let vm = cluster.vm(i % 3);
            vm.docker_ok(&[
                "run",
                "-d",
                "--network",
                "none",
                "--name",
                &format!("plain-{name}-{i}"),
                "smr/busybox:local",
                "sleep",
                "3600",
            ])?;
        }
        let docker = started.elapsed();
        for i in 0..n {
            cluster
                .vm(i % 3)
                .docker_ok(&["rm", "-f", &format!("plain-{name}-{i}")])?;
        }
        println!(
            "{n:<10} {:>13.2}s {:>17.2}s {:>7.2}x",
            smr.as_secs_f64(),
            docker.as_secs_f64(),
            smr.as_secs_f64() / docker.as_secs_f64()
        );
    }

    // Reschedule time: stop vm3's agent and cut its link; time until its replicas run elsewhere.
    client
        .apply(
            &definitions::parse_str("bench.yaml", &definition("move", 6))?,
            false,
            None,
        )
        .await?;
    let key = "containers/bench/move".parse()?;
    eventually("6 ready replicas", Duration::from_secs(300), || async {
        let r = client.replicas(Some(&key)).await.ok()?;
        (r.len() == 6 && r.iter().all(|r| r.ready)).then_some(())
    })
    .await?;
    cluster.stop_agent(2)?;
    cluster.testbed.cut(cluster.vm(2))?;
    let cut = Instant::now();
    eventually("replicas off vm3", Duration::from_secs(300), || async {
        let r = client.replicas(Some(&key)).await.ok()?;
        (r.len() == 6 && r.iter().all(|r| r.ready && r.node != 3)).then_some(())
    })
    .await?;
    println!(
        "reschedule after a node stops answering: {:.1} s (node timeout 15 s)",
        cut.elapsed().as_secs_f64()
    );
    println!("reference: a plain `docker run` takes about 0.57 s on SSD");
    Ok(())
}
