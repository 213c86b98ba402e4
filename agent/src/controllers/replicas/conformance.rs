//! What the reconciler relies on from a [`Runtime`], as case functions run against the
//! [`FakeRuntime`] and against [`DockerRuntime`] on the host's dockerd: the fake must behave
//! like Docker where it matters. The Docker run imports a busybox image under a tag unique to
//! the run, names every container with a unique prefix and removes all it created, by id.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::fake::FakeRuntime;
use crate::runtime::{
    ContainerConfig, DockerRuntime, Runtime, RuntimeError, State, VolumeConfig, labels,
};

/// A container config named `<prefix>-<name>`, managed by smr unless `managed` is false.
fn config(prefix: &str, name: &str, image: &str, managed: bool, cmd: &[&str]) -> ContainerConfig {
    let mut labels = BTreeMap::new();
    if managed {
        labels.insert(labels::MANAGED.to_string(), "true".to_string());
        labels.insert(labels::OWNER.to_string(), "containers/conf/x".to_string());
    }
    ContainerConfig {
        name: format!("{prefix}-{name}"),
        hostname: name.into(),
        image: image.into(),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        labels,
        ..Default::default()
    }
}

const SLEEP: &[&str] = &["sleep", "600"];

/// Ids created by the cases, removed at the end whatever happened.
type Created = Vec<String>;

async fn list_excludes_unlabelled<R: Runtime>(
    rt: &R,
    prefix: &str,
    image: &str,
    ids: &mut Created,
) {
    let managed = rt
        .create(&config(prefix, "managed", image, true, SLEEP))
        .await
        .unwrap();
    ids.push(managed.clone());
    let foreign = rt
        .create(&config(prefix, "foreign", image, false, SLEEP))
        .await
        .unwrap();
    ids.push(foreign.clone());
    let listed = rt.list_managed().await.unwrap();
    let c = listed
        .iter()
        .find(|c| c.id == managed)
        .expect("managed listed");
    assert_eq!(c.name, format!("{prefix}-managed"));
    assert_eq!(c.state, State::Created);
    assert_eq!(
        c.labels.get(labels::OWNER).map(String::as_str),
        Some("containers/conf/x")
    );
    assert!(
        listed.iter().all(|c| c.id != foreign),
        "unlabelled containers are not listed"
    );
}

async fn round_trip_and_idempotent_stop<R: Runtime>(
    rt: &R,
    prefix: &str,
    image: &str,
    ids: &mut Created,
) {
    let id = rt
        .create(&config(prefix, "trip", image, true, SLEEP))
        .await
        .unwrap();
    ids.push(id.clone());
    rt.start(&id).await.unwrap();
    let state = |listed: Vec<crate::runtime::ContainerInfo>| {
        listed
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| (c.state, c.started_ms.is_some()))
    };
    assert_eq!(
        state(rt.list_managed().await.unwrap()),
        Some((State::Running, true))
    );
    rt.stop(&id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        state(rt.list_managed().await.unwrap()).map(|s| s.0),
        Some(State::Exited)
    );
    rt.stop(&id, Duration::from_secs(1))
        .await
        .expect("stopping a stopped container is fine");
    rt.remove(&id).await.unwrap();
    assert_eq!(state(rt.list_managed().await.unwrap()), None);
    assert!(matches!(
        rt.remove(&id).await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        rt.start(&id).await,
        Err(RuntimeError::NotFound(_))
    ));
}

async fn name_conflict<R: Runtime>(rt: &R, prefix: &str, image: &str, ids: &mut Created) {
    let c = config(prefix, "twice", image, true, SLEEP);
    ids.push(rt.create(&c).await.unwrap());
    assert!(matches!(
        rt.create(&c).await,
        Err(RuntimeError::Conflict(_))
    ));
}

async fn init_exit_code_and_log<R: Runtime>(rt: &R, prefix: &str, image: &str) {
    let mut init = config(
        prefix,
        "x-init",
        image,
        false,
        &["sh", "-c", "echo hello; exit 3"],
    );
    init.labels
        .insert(labels::INIT.into(), format!("{prefix}-x"));
    assert_eq!(
        rt.run_to_completion(&init).await.unwrap(),
        (3, "hello".into())
    );
    // Removed afterwards (Docker removes it in the background): poll until it is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match rt.exec(&init.name, &["true".into()]).await {
            Err(RuntimeError::NotFound(_)) => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "init container not removed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rt.run_to_completion(&init).await.unwrap(),
        (3, "hello".into())
    );
}

async fn init_refuses_a_foreign_name<R: Runtime>(
    rt: &R,
    prefix: &str,
    image: &str,
    ids: &mut Created,
) {
    let squatter = config(prefix, "y-init", image, false, SLEEP);
    ids.push(rt.create(&squatter).await.unwrap());
    let mut init = config(prefix, "y-init", image, false, &["true"]);
    init.labels
        .insert(labels::INIT.into(), format!("{prefix}-y"));
    assert!(matches!(
        rt.run_to_completion(&init).await,
        Err(RuntimeError::Conflict(_))
    ));
}

async fn exec_exit_code<R: Runtime>(rt: &R, prefix: &str, image: &str, ids: &mut Created) {
    let id = rt
        .create(&config(prefix, "exec", image, true, SLEEP))
        .await
        .unwrap();
    ids.push(id.clone());
    rt.start(&id).await.unwrap();
    let out = rt
        .exec(&id, &["sh".into(), "-c".into(), "exit 4".into()])
        .await
        .unwrap();
    assert_eq!(out.exit_code, 4);
    let out = rt.exec(&id, &["true".into()]).await.unwrap();
    assert_eq!(out.exit_code, 0);
}

/// Named volumes: created with smr's labels, listed with the containers that mount them,
/// refused removal while mounted; a name mounted without a volume is created without labels.
async fn volumes_listed_with_users<R: Runtime>(
    rt: &R,
    prefix: &str,
    image: &str,
    ids: &mut Created,
    volumes: &mut Vec<String>,
) {
    let name = format!("{prefix}-vol");
    let labels = BTreeMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::OWNER.to_string(), "volume/conf/vol".to_string()),
    ]);
    let volume = VolumeConfig {
        name: name.clone(),
        driver: "local".into(),
        driver_opts: BTreeMap::new(),
        labels: labels.clone(),
    };
    rt.create_volume(&volume).await.unwrap();
    volumes.push(name.clone());
    let listed = rt.list_volumes().await.unwrap();
    let v = listed
        .iter()
        .find(|v| v.name == name)
        .expect("volume listed");
    assert_eq!(v.labels, labels);
    assert!(v.users.is_empty(), "{v:?}");

    let implicit = format!("{prefix}-implicit");
    volumes.push(implicit.clone());
    let mut user = config(prefix, "mounter", image, true, SLEEP);
    user.binds = vec![format!("{name}:/data"), format!("{implicit}:/other")];
    let id = rt.create(&user).await.unwrap();
    ids.push(id.clone());
    let listed = rt.list_volumes().await.unwrap();
    let v = listed
        .iter()
        .find(|v| v.name == name)
        .expect("volume listed");
    assert_eq!(v.users, vec![format!("{prefix}-mounter")]);
    let other = listed
        .iter()
        .find(|v| v.name == implicit)
        .expect("implicit");
    assert!(!other.labels.contains_key(labels::MANAGED), "{other:?}");
    assert!(
        rt.remove_volume(&name).await.is_err(),
        "a mounted volume is not removed"
    );

    rt.remove(&id).await.unwrap();
    rt.remove_volume(&name).await.unwrap();
    rt.remove_volume(&implicit).await.unwrap();
    let listed = rt.list_volumes().await.unwrap();
    assert!(listed.iter().all(|v| v.name != name && v.name != implicit));
    assert!(matches!(
        rt.remove_volume(&name).await,
        Err(RuntimeError::NotFound(_))
    ));
}

/// Bridge networks: created with smr's labels on their subnet, listed with the containers on
/// them (created ones too), refused removal while a running container is on one.
async fn networks_listed_with_users<R: Runtime>(
    rt: &R,
    prefix: &str,
    image: &str,
    ids: &mut Created,
    networks: &mut Vec<String>,
) {
    let network = smr_core::networks::BridgeNetwork {
        group: prefix.into(),
        name: "net".into(),
        // Per process, so that runs side by side do not overlap.
        subnet: format!("172.31.{}.0/24", std::process::id() % 250)
            .parse()
            .unwrap(),
    };
    let config = smr_core::networks::bridge::bridge_config(&network);
    let name = config.name.clone();
    rt.create_network(&config).await.unwrap();
    networks.push(name.clone());
    let listed = rt.list_networks().await.unwrap();
    let n = listed
        .iter()
        .find(|n| n.name == name)
        .expect("network listed");
    assert_eq!(n.labels, config.labels);
    assert!(n.ours(), "{n:?}");
    assert!(n.users.is_empty(), "{n:?}");

    let mut user = self::config(prefix, "netuser", image, true, SLEEP);
    user.network = Some(name.clone());
    let id = rt.create(&user).await.unwrap();
    ids.push(id.clone());
    // Listed as a user once created (Docker itself would remove the network under a container
    // that never started: the planner goes by these users).
    let listed = rt.list_networks().await.unwrap();
    let n = listed.iter().find(|n| n.name == name).expect("listed");
    assert_eq!(n.users, vec![format!("{prefix}-netuser")]);
    rt.start(&id).await.unwrap();
    assert!(
        rt.remove_network(&name).await.is_err(),
        "a network in use is not removed"
    );

    rt.remove(&id).await.unwrap();
    rt.remove_network(&name).await.unwrap();
    let listed = rt.list_networks().await.unwrap();
    assert!(listed.iter().all(|n| n.name != name));
    assert!(matches!(
        rt.remove_network(&name).await,
        Err(RuntimeError::NotFound(_))
    ));
}

/// The default route of a running container's namespace, read on the host from
/// `/proc/PID/net/route` (the image has no `ip`): the gateway as an address.
fn default_gateway(id: &str) -> Option<std::net::Ipv4Addr> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", id])
        .output()
        .ok()?;
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/route")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000"))
            .then(|| u32::from_str_radix(f[2], 16).ok())
            .flatten()
            .map(|g| std::net::Ipv4Addr::from(g.swap_bytes()))
    })
}

/// The gateway Docker gave container `id` on `network`.
fn docker_gateway(id: &str, network: &str) -> std::net::Ipv4Addr {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").Gateway}}}}");
    let out = Command::new("docker")
        .args(["inspect", "-f", &format, id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    text.parse()
        .unwrap_or_else(|_| panic!("{id}: gateway on {network}: {text:?}"))
}

/// Docker only: a container whose networks are Docker's own `bridge` and one of smr's bridge
/// networks (label [`labels::NETWORKS`] as the converter writes it) starts with its default route
/// through the first one, in either order.
async fn docker_bridge_joined_with_routes(
    rt: &DockerRuntime,
    prefix: &str,
    image: &str,
    ids: &mut Created,
    networks: &mut Vec<String>,
) {
    let network = smr_core::networks::BridgeNetwork {
        group: prefix.into(),
        name: "routes".into(),
        subnet: format!("172.30.{}.0/24", std::process::id() % 250)
            .parse()
            .unwrap(),
    };
    let config = smr_core::networks::bridge::bridge_config(&network);
    let ours = config.name.clone();
    rt.create_network(&config).await.unwrap();
    networks.push(ours.clone());
    let range = format!("{ours}={}", network.subnet);
    for (name, first, second, label) in [
        (
            "docker-first",
            "bridge",
            ours.as_str(),
            format!("bridge=,{range}"),
        ),
        (
            "ours-first",
            ours.as_str(),
            "bridge",
            format!("{range},bridge="),
        ),
    ] {
        let mut c = self::config(prefix, name, image, true, SLEEP);
        c.network = Some(first.to_string());
        c.extra_networks = vec![second.to_string()];
        c.labels.insert(labels::NETWORKS.to_string(), label);
        let id = rt.create(&c).await.unwrap();
        ids.push(id.clone());
        rt.start(&id).await.unwrap();
        assert_eq!(
            default_gateway(&id),
            Some(docker_gateway(&id, first)),
            "{name}: the default route goes through the first network, {first}"
        );
        rt.remove(&id).await.unwrap();
    }
    rt.remove_network(&ours).await.unwrap();
}

/// Every case, then removal of what they created (also when one panics).
async fn all_cases<R: Runtime>(rt: Arc<R>, prefix: &str, image: &str) {
    let mut ids = Created::new();
    let mut volumes = Vec::new();
    let mut networks = Vec::new();
    let run = async {
        list_excludes_unlabelled(rt.as_ref(), prefix, image, &mut ids).await;
        round_trip_and_idempotent_stop(rt.as_ref(), prefix, image, &mut ids).await;
        name_conflict(rt.as_ref(), prefix, image, &mut ids).await;
        init_exit_code_and_log(rt.as_ref(), prefix, image).await;
        init_refuses_a_foreign_name(rt.as_ref(), prefix, image, &mut ids).await;
        exec_exit_code(rt.as_ref(), prefix, image, &mut ids).await;
        volumes_listed_with_users(rt.as_ref(), prefix, image, &mut ids, &mut volumes).await;
        networks_listed_with_users(rt.as_ref(), prefix, image, &mut ids, &mut networks).await;
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await;
    for id in &ids {
        let _ = rt.remove(id).await;
    }
    for name in &volumes {
        let _ = rt.remove_volume(name).await;
    }
    for name in &networks {
        let _ = rt.remove_network(name).await;
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn the_fake_runtime_conforms() {
    let fake = Arc::new(FakeRuntime::new());
    fake.script_init("conf-x-init", 3, "hello");
    fake.script_exec("conf-exec", 4);
    // The fake's exec answers per container, not per command: `true` gets the same script.
    let rt = fake.clone();
    let mut ids = Created::new();
    list_excludes_unlabelled(rt.as_ref(), "conf", "img", &mut ids).await;
    round_trip_and_idempotent_stop(rt.as_ref(), "conf", "img", &mut ids).await;
    name_conflict(rt.as_ref(), "conf", "img", &mut ids).await;
    init_exit_code_and_log(rt.as_ref(), "conf", "img").await;
    init_refuses_a_foreign_name(rt.as_ref(), "conf", "img", &mut ids).await;
    volumes_listed_with_users(rt.as_ref(), "conf", "img", &mut ids, &mut Vec::new()).await;
    networks_listed_with_users(rt.as_ref(), "conf", "img", &mut ids, &mut Vec::new()).await;
    let id = rt
        .create(&config("conf", "exec", "img", true, SLEEP))
        .await
        .unwrap();
    rt.start(&id).await.unwrap();
    assert_eq!(rt.exec(&id, &["sh".into()]).await.unwrap().exit_code, 4);
    rt.stop(&id, Duration::ZERO).await.unwrap();
    assert!(
        rt.exec(&id, &["sh".into()]).await.is_err(),
        "exec needs a running container"
    );
}

/// [`docker_bridge_joined_with_routes`], then removal of what it created (also when it panics).
async fn docker_bridge_case(
    docker: &DockerRuntime,
    prefix: &str,
    image: &str,
) -> std::thread::Result<()> {
    let (mut ids, mut networks) = (Created::new(), Vec::new());
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        docker_bridge_joined_with_routes(docker, prefix, image, &mut ids, &mut networks),
    ))
    .await;
    for id in &ids {
        let _ = docker.remove(id).await;
    }
    for name in &networks {
        let _ = docker.remove_network(name).await;
    }
    result
}

/// Imports the host's static busybox as `tag` (all applets linked in /bin).
fn import_busybox(tag: &str) -> Result<(), String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(|e| format!("/bin/busybox (apt-get install busybox-static): {e}"))?;
    for applet in ["sh", "sleep", "echo", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
    }
    let tar = root.path().join("rootfs.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .arg("-cf")
        .arg(&tar)
        .arg("bin")
        .status()
        .map_err(|e| e.to_string())?
        .success();
    if !ok {
        return Err("tar failed".into());
    }
    let out = Command::new("docker")
        .arg("import")
        .arg(&tar)
        .arg(tag)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(())
}

#[tokio::test]
async fn the_docker_runtime_conforms() {
    if !std::path::Path::new("/var/run/docker.sock").exists() {
        eprintln!("SKIPPED: no dockerd at /var/run/docker.sock");
        return;
    }
    let run = format!("smrconf{}", std::process::id());
    let tag = format!("smr/busybox:{run}");
    import_busybox(&tag).unwrap();
    let docker = Arc::new(DockerRuntime::connect(None).await.unwrap());
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(all_cases(
        docker.clone(),
        &run,
        &tag,
    )))
    .await;
    let result = match result {
        Ok(()) => docker_bridge_case(&docker, &run, &tag).await,
        failed => failed,
    };
    let _ = Command::new("docker").args(["rmi", &tag]).output();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
