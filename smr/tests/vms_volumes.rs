//! The `volume` kind on emulated VMs (issue 15): a Docker named volume, with its driver options,
//! created on the node whose replica mounts it (and only there), keeping its data across the
//! replica's replacement; deleting it is refused while a definition mounts it, and removes it
//! from the node's dockerd once none does.

mod common;

use std::time::Duration;

use agent::client::Client;
use agent::definitions::{self, ObjectKey};
use anyhow::Context as _;
use common::eventually;
use common::vms::VmCluster;

const IMAGE: &str = "smr/busybox";
const TAG: &str = "local";

/// A volume bound to `device` on its node (driver `local`, options `type: none, o: bind`: the
/// options reach Docker, and the data is visible on the host), and one replica on node 2 that
/// mounts it.
fn definitions(device: &str) -> String {
    format!(
        "kind: volume\nprefix: simplecontainer.io/v1\nmeta:\n  group: storage\n  name: data\nspec:\n  driver: local\n  driver_opts:\n    type: none\n    o: bind\n    device: {device}\n---\nkind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: app\n  name: db\nspec:\n  image: {IMAGE}\n  tag: {TAG}\n  replicas: 1\n  spread:\n    spread: specific\n    agents: [smr-agent-2]\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n  volumes:\n    - name: storage-data\n      type: volume\n      mountPoint: /data\n"
    )
}

fn db() -> ObjectKey {
    "containers/app/db".parse().expect("key")
}

fn volume() -> ObjectKey {
    "volume/storage/data".parse().expect("key")
}

/// The one replica of app/db once it is ready and its container id differs from `not`.
async fn ready_replica(
    client: &Client,
    not: Option<&str>,
) -> anyhow::Result<agent::api::types::ReplicaView> {
    eventually("app/db ready", Duration::from_secs(90), || async {
        let replicas = client.replicas(Some(&db())).await.ok()?;
        let ready: Vec<_> = replicas
            .into_iter()
            .filter(|r| r.ready && r.state == "running")
            .collect();
        (ready.len() == 1 && ready[0].container_id.as_deref() != not)
            .then(|| ready.into_iter().next())
            .flatten()
    })
    .await
}

fn volumes_on(cluster: &VmCluster, i: usize) -> anyhow::Result<Vec<String>> {
    let out = cluster
        .vm(i)
        .docker_ok(&["volume", "ls", "--format", "{{.Name}}"])?;
    Ok(out.lines().map(str::to_string).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_named_volume_keeps_data_across_replacement_and_is_deleted_only_when_unused()
-> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(2)? else {
        return Ok(());
    };
    cluster.start_all(&[]).await?;
    let client = cluster.client(0);
    let result = volumes(&cluster, &client).await;
    if result.is_err() {
        println!("replicas: {:#?}", client.replicas(None).await);
        cluster.dump_logs();
    }
    result
}

async fn volumes(cluster: &VmCluster, client: &Client) -> anyhow::Result<()> {
    let device = cluster.vm(1).dir.join("volume-device");
    std::fs::create_dir_all(&device)?;
    let yaml = definitions(&device.display().to_string());
    client
        .apply(&definitions::parse_str("volume.yaml", &yaml)?, false, None)
        .await?;
    let first = ready_replica(client, None).await?;
    anyhow::ensure!(first.node == 2, "placed on node {}", first.node);

    // Created on node 2 with smr's labels and the object's options; node 1 has none.
    let inspect = cluster.vm(1).docker_ok(&[
        "volume",
        "inspect",
        "--format",
        "{{.Driver}} {{index .Options \"o\"}} {{index .Options \"device\"}} {{index .Labels \"io.smr.owner\"}}",
        "storage-data",
    ])?;
    anyhow::ensure!(
        inspect == format!("local bind {} volume/storage/data", device.display()),
        "{inspect}"
    );
    anyhow::ensure!(
        !volumes_on(cluster, 0)?.contains(&"storage-data".to_string()),
        "node 1 has the volume though no replica there mounts it"
    );

    // Data written by the replica survives its replacement.
    let marker = common::vms::unique_marker("volume");
    cluster.vm(1).docker_ok(&[
        "exec",
        &first.name,
        "sh",
        "-c",
        &format!("echo {marker} > /data/file"),
    ])?;
    let on_host = std::fs::read_to_string(device.join("file"))?;
    anyhow::ensure!(on_host.trim() == marker, "host sees {on_host:?}");
    client.restart(&db()).await?;
    let second = ready_replica(client, first.container_id.as_deref()).await?;
    let vm = cluster.vm(second.node as usize - 1);
    let old_gone = eventually("the old container removed", Duration::from_secs(60), || {
        let id = first.container_id.clone().unwrap_or_default();
        let ids = vm
            .docker_ok(&["ps", "-aq", "--no-trunc"])
            .unwrap_or_default();
        async move { (!ids.contains(&id)).then_some(()) }
    })
    .await;
    old_gone?;
    let read = vm.docker_ok(&["exec", &second.name, "cat", "/data/file"])?;
    anyhow::ensure!(read == marker, "after replacement /data/file is {read:?}");

    // Deleting the mounted volume is refused, naming its user; nothing is deleted.
    let refused = client.delete(&[volume()]).await;
    let why = format!(
        "{:?}",
        refused.as_ref().err().context("delete was accepted")?
    );
    anyhow::ensure!(
        why.contains("volume/storage/data is used by containers/app/db"),
        "{why}"
    );
    let out = common::output({
        let mut cmd = cluster.smrctl_on(0);
        cmd.args(["delete", "volume/storage/data"]);
        cmd
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        !out.status.success() && stderr.contains("containers/app/db"),
        "smrctl delete: {out:?}"
    );
    anyhow::ensure!(volumes_on(cluster, 1)?.contains(&"storage-data".to_string()));

    // Once its user is gone the volume is deleted, and removed from dockerd.
    client.delete(&[db()]).await?;
    client.delete(&[volume()]).await?;
    eventually(
        "storage-data removed from node 2's dockerd",
        Duration::from_secs(60),
        || {
            let gone = volumes_on(cluster, 1)
                .map(|v| !v.contains(&"storage-data".to_string()))
                .unwrap_or(false);
            async move { gone.then_some(()) }
        },
    )
    .await?;
    // A bind volume's removal leaves the data in its device.
    anyhow::ensure!(device.join("file").exists());
    Ok(())
}
