//! An smr cluster on emulated VMs: one agent per VM of a [`Testbed`], each in the VM's network
//! namespace with the VM's own dockerd. Agents run in the foreground under the testbed, which
//! stops them (by pid) before it tears the VMs down.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use agent::api::types::ReplicaView;
use agent::client::{Client, Context};
use agent::definitions::ObjectKey;
use anyhow::{Context as _, bail};
use smr_tests::testbed::{Testbed, TestbedConfig, Vm};

use super::eventually;

pub struct VmCluster {
    pub testbed: Testbed,
    /// Pid of each VM's agent, when running.
    pub agents: Vec<Option<u32>>,
    /// Extra environment of the agent of VM i (0-based), for its starts and restarts.
    pub env: std::collections::HashMap<usize, Vec<(String, String)>>,
    /// The smrmgr the agents run: this build's, or another (a bench's baseline).
    pub smrmgr: PathBuf,
}

pub fn data_dir(vm: &Vm) -> PathBuf {
    vm.dir.join("smr")
}

pub fn agent_name(vm: &Vm) -> String {
    format!("smr-agent-{}", vm.index)
}

/// The address other VMs (and the host) reach `vm` at: its cloud's public address, or its own.
pub fn dial_ip(vm: &Vm) -> std::net::Ipv4Addr {
    vm.public_ip.unwrap_or(vm.ip)
}

/// VM `vm`'s admin context, pointed at the address the host reaches it at.
pub fn api_context(vm: &Vm) -> anyhow::Result<Context> {
    let mut ctx = Context::load(&data_dir(vm).join("admin.context"))?;
    if let Some(public) = vm.public_ip {
        ctx.api_url = format!("https://{public}:1443");
    }
    Ok(ctx)
}

impl VmCluster {
    /// Starts `n` VMs, or says why this machine cannot (then the test prints "skipped").
    pub fn start(n: usize) -> anyhow::Result<Option<VmCluster>> {
        Self::start_with(TestbedConfig::new(n))
    }

    /// Starts the VMs of `config` (e.g. clouds behind NAT), or says why this machine cannot.
    pub fn start_with(config: TestbedConfig) -> anyhow::Result<Option<VmCluster>> {
        if let Some(why) = smr_tests::testbed::unsupported_reason(true) {
            println!("skipped: {why}");
            return Ok(None);
        }
        let testbed = Testbed::start(config)?;
        let n = testbed.vms().len();
        Ok(Some(VmCluster {
            testbed,
            agents: vec![None; n],
            env: Default::default(),
            smrmgr: PathBuf::from(env!("CARGO_BIN_EXE_smrmgr")),
        }))
    }

    pub fn vm(&self, i: usize) -> &Vm {
        self.testbed.vm(i)
    }

    fn smrmgr(&self, vm: &Vm) -> Command {
        let mut cmd = vm.cmd(&self.smrmgr);
        cmd.env("HOME", &vm.dir)
            .env("SMR_LOG", "info,openraft=warn,hickory_server=warn");
        cmd
    }

    /// Starts the agent of VM `i` in the foreground (recorded by the testbed), creating the
    /// cluster (`join: None`) or joining it through VM `join`, and waits until it serves.
    pub async fn start_agent(
        &mut self,
        i: usize,
        join: Option<usize>,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let vm = self.vm(i).clone();
        let mut cmd = self.smrmgr(&vm);
        cmd.args([
            "start",
            "--foreground",
            "-a",
            &agent_name(&vm),
            "-d",
            &vm.name,
            "-n",
            &vm.name,
        ])
        .arg("--ip")
        .arg(vm.ip.to_string())
        .args(
            vm.public_ip
                .iter()
                .flat_map(|p| ["--public-ip".to_string(), p.to_string()]),
        )
        .arg("--docker-host")
        .arg(&vm.docker_host)
        .arg("--data-dir")
        .arg(data_dir(&vm))
        .args(extra);
        if let Some(j) = join {
            let token = self.token(j)?;
            cmd.args([
                "-j",
                &format!("{}:1443", dial_ip(self.vm(j))),
                "--token",
                &token,
            ]);
        }
        cmd.envs(self.env.get(&i).into_iter().flatten().map(|(k, v)| (k, v)));
        let _ = std::fs::remove_file(data_dir(&vm).join("admin.context"));
        let spawned = vm.spawn(&format!("agent-{}", vm.index), cmd)?;
        self.agents[i] = Some(spawned.pid);
        let log = spawned.log.clone();
        serving(
            &vm,
            &format!("agent on {} to serve (log {})", vm.name, log.display()),
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    }

    /// Restarts the agent of VM `i` from its data dir.
    pub async fn restart_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let vm = self.vm(i).clone();
        let mut cmd = self.smrmgr(&vm);
        cmd.args([
            "start",
            "--foreground",
            "--docker-host",
            &vm.docker_host,
            "--data-dir",
        ])
        .arg(data_dir(&vm))
        .envs(self.env.get(&i).into_iter().flatten().map(|(k, v)| (k, v)));
        let _ = std::fs::remove_file(data_dir(&vm).join("admin.context"));
        let spawned = vm.spawn(&format!("agent-{}-again", vm.index), cmd)?;
        self.agents[i] = Some(spawned.pid);
        serving(
            &vm,
            &format!("agent on {} to serve again", vm.name),
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    }

    /// Stops the agent of VM `i` (SIGTERM, SIGKILL after 10 s).
    pub fn stop_agent(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(pid) = self.agents[i].take() {
            self.vm(i).stop(pid, Duration::from_secs(10))?;
        }
        Ok(())
    }

    pub fn token(&self, i: usize) -> anyhow::Result<String> {
        let vm = self.vm(i);
        let mut cmd = self.smrmgr(vm);
        cmd.args(["token", "--data-dir"]).arg(data_dir(vm));
        let out = cmd.output().context("smrmgr token")?;
        if !out.status.success() {
            bail!("smrmgr token: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn context(&self, i: usize) -> PathBuf {
        data_dir(self.vm(i)).join("admin.context")
    }

    /// A client of VM `i`'s API, from the test process (the host): at the VM's public address
    /// when it is in a cloud.
    pub fn client(&self, i: usize) -> Client {
        Client::from_context(&api_context(self.vm(i)).expect("context")).expect("client")
    }

    /// `smrctl --context <VM i's admin context>` run in VM `i`'s network namespace (works for
    /// VMs behind NAT too, whose API the host reaches only at the public address).
    pub fn smrctl_on(&self, i: usize) -> Command {
        let vm = self.vm(i);
        let mut cmd = vm.cmd(super::smrctl_bin());
        cmd.arg("--context").arg(self.context(i));
        cmd
    }

    /// `smrmgr ARGS --data-dir <VM i's data dir>` in VM `i`'s network namespace.
    pub fn smrmgr_on(&self, i: usize, args: &[&str]) -> Command {
        let vm = self.vm(i);
        let mut cmd = self.smrmgr(vm);
        cmd.args(args).arg("--data-dir").arg(data_dir(vm));
        cmd
    }

    /// Prints the end of every agent's log (for failures).
    pub fn dump_logs(&self) {
        dump_testbed_logs(&self.testbed, 40);
    }

    /// Starts agents on every VM: the first creates the cluster, the others join it.
    pub async fn start_all(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.start_agent(0, None, extra).await?;
        for i in 1..self.agents.len() {
            self.start_agent(i, Some(0), extra).await?;
        }
        Ok(())
    }
}

/// Runs `scenario` on a cluster of `n` VMs whose agents start with `extra` arguments, given
/// the first agent's client; on failure, prints the replicas and the end of every agent's log.
/// Where the testbed cannot run: nothing (Ok).
pub async fn run_scenario(
    n: usize,
    extra: &[&str],
    scenario: impl AsyncFnOnce(&mut VmCluster, &Client) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let Some(mut cluster) = VmCluster::start(n)? else {
        return Ok(());
    };
    cluster.start_all(extra).await?;
    let client = cluster.client(0);
    let result = scenario(&mut cluster, &client).await;
    if result.is_err() {
        println!("replicas: {:#?}", client.replicas(None).await);
        cluster.dump_logs();
    }
    result
}

/// The busybox definition the VM suites run.
pub fn key() -> ObjectKey {
    "containers/busybox/busybox".parse().expect("key")
}

/// Waits until the busybox object has exactly `n` replicas, all running and ready.
pub async fn all_ready(
    client: &Client,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<ReplicaView>> {
    ready_replicas(client, Some(&key()), n, timeout).await
}

/// Waits until there are exactly `n` replicas (of `key`, or of every object), all running and
/// ready.
pub async fn ready_replicas(
    client: &Client,
    key: Option<&ObjectKey>,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<ReplicaView>> {
    eventually(&format!("{n} ready replicas"), timeout, || async {
        let replicas = client.replicas(key).await.ok()?;
        (replicas.len() == n && replicas.iter().all(|r| r.ready && r.state == "running"))
            .then_some(replicas)
    })
    .await
}

/// The VM (0-based) that runs a replica: node ids follow join order from 1.
pub fn vm_of(cluster: &VmCluster, replica: &ReplicaView) -> Vm {
    cluster.vm(replica.node as usize - 1).clone()
}

/// Sends `text` over TCP (port 7000) from replica `from` to replica `to` through the overlay,
/// and checks that `to` received exactly it.
pub async fn tcp_transfer(
    cluster: &VmCluster,
    from: &ReplicaView,
    to: &ReplicaView,
    text: &str,
) -> anyhow::Result<()> {
    tcp_send(cluster, from, to, &format!("echo {text}"), text).await
}

/// Sends what shell command `payload` prints in replica `from` over TCP (port 7000) to replica
/// `to` through the overlay, and checks that `to` received exactly `text`. The payload is in a
/// file before nc connects: the listener's stdin is empty, so it half-closes as soon as it
/// accepts, and a client still waiting on a pipe would read that EOF and leave without sending.
pub async fn tcp_send(
    cluster: &VmCluster,
    from: &ReplicaView,
    to: &ReplicaView,
    payload: &str,
    text: &str,
) -> anyhow::Result<()> {
    let (sender, receiver) = (vm_of(cluster, from), vm_of(cluster, to));
    let to_ip = to.ip.clone().context("receiver has no IP")?;
    let file = "/tmp/smr-tcp-payload";
    let sh = format!("{payload} > {file} && nc -w 2 {to_ip} 7000 < {file}");
    let mut listener = receiver
        .docker_cmd()
        .args(["exec", &to.name, "nc", "-l", "-p", "7000"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let sent = eventually(
        "a TCP connection across VMs",
        Duration::from_secs(20),
        || {
            let ok = sender
                .docker(&["exec", &from.name, "sh", "-c", &sh])
                .map(|o| o.status.success())
                .unwrap_or(false);
            async move { ok.then_some(()) }
        },
    )
    .await;
    if sent.is_err() {
        let _ = listener.kill();
    }
    let received = listener.wait_with_output()?;
    sent?;
    let got = String::from_utf8_lossy(&received.stdout).trim().to_string();
    anyhow::ensure!(got == text, "{} received {got:?}, not {text:?}", to.name);
    Ok(())
}

/// A marker nobody else sends: what a capture must (not) contain.
pub fn unique_marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("smr-{what}-marker-{}-{nanos}", std::process::id())
}

/// Waits until `vm`'s agent serves (its admin context answers a health check); its client.
pub async fn serving(vm: &Vm, what: &str, limit: Duration) -> anyhow::Result<Client> {
    eventually(what, limit, || {
        let vm = vm.clone();
        async move {
            let client = Client::from_context(&api_context(&vm).ok()?).ok()?;
            client.health().await.ok().map(|_| client)
        }
    })
    .await
}

/// Container id -> name of every running container whose name starts with `prefix`, over the
/// engines of `vms` (an engine that does not answer counts as running none).
pub fn running_named(vms: &[Vm], prefix: &str) -> std::collections::BTreeMap<String, String> {
    let mut ids = std::collections::BTreeMap::new();
    for vm in vms {
        let Ok(out) = vm.docker_ok(&["ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]) else {
            continue;
        };
        for line in out.lines() {
            if let Some((id, name)) = line.split_once(' ')
                && name.starts_with(prefix)
            {
                ids.insert(id.to_string(), name.to_string());
            }
        }
    }
    ids
}

/// The lowest counts seen while a command ran (see [`floor_while`]).
#[derive(Debug)]
pub struct Floor {
    /// Fewest containers running on the engines.
    pub running: usize,
    /// Fewest replicas the API called ready.
    pub ready: usize,
    pub samples: usize,
}

/// Runs `cmd` (a blocking command, e.g. an smrctl) to its end while sampling every 50 ms the
/// containers named `prefix*` running on `vms`' engines and the replicas of `key` (all when None)
/// that the API calls ready. Returns the command's output and the lowest counts seen.
pub async fn floor_while(
    vms: Vec<Vm>,
    client: &Client,
    key: Option<ObjectKey>,
    prefix: &'static str,
    cmd: Command,
) -> anyhow::Result<(String, Floor)> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, client) = (stop.clone(), client.clone());
        tokio::spawn(async move {
            let mut floor = Floor {
                running: usize::MAX,
                ready: usize::MAX,
                samples: 0,
            };
            while !stop.load(Ordering::SeqCst) {
                let vms = vms.clone();
                let running =
                    tokio::task::spawn_blocking(move || running_named(&vms, prefix).len())
                        .await
                        .unwrap_or_default();
                floor.running = floor.running.min(running);
                if let Ok(replicas) = client.replicas(key.as_ref()).await {
                    floor.ready = floor.ready.min(replicas.iter().filter(|r| r.ready).count());
                }
                floor.samples += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            floor
        })
    };
    let out = tokio::task::spawn_blocking(move || super::run(cmd)).await;
    stop.store(true, Ordering::SeqCst);
    let floor = watcher.await?;
    Ok((out??, floor))
}

/// A `configuration` object `<group>/<name>` holding `value` (the CA tests' writes).
pub fn configuration(group: &str, name: &str, value: &str) -> String {
    format!(
        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: {group}\n  name: {name}\nspec:\n  data:\n    value: \"{value}\"\n"
    )
}

/// Applies the definitions of a YAML text through `client`.
pub async fn apply_yaml(client: &Client, yaml: &str) -> anyhow::Result<()> {
    client
        .apply(
            &agent::definitions::parse_str("test.yaml", yaml)?,
            false,
            None,
        )
        .await?;
    Ok(())
}

/// One write of the CA tests' traffic: `configuration/<group>/w` set to `n` through the node of
/// data dir `dir`, with a fresh client (a fresh TLS connection, with the admin certificate and
/// trust roots its `admin.context` holds at that moment).
pub async fn write_fresh(dir: &std::path::Path, group: &str, n: usize) -> anyhow::Result<()> {
    let ctx = Context::load(&dir.join("admin.context"))?;
    let client = Client::from_context(&ctx)?;
    apply_yaml(&client, &configuration(group, "w", &n.to_string())).await
}

/// Every agent log of the testbed, concatenated.
pub fn all_logs(cluster: &VmCluster) -> String {
    agent_logs(&cluster.testbed)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

/// Every agent log of `testbed`: its path and text.
fn agent_logs(testbed: &Testbed) -> Vec<(PathBuf, String)> {
    let mut logs = Vec::new();
    for vm in testbed.vms() {
        if let Ok(entries) = std::fs::read_dir(vm.dir.join("logs")) {
            for entry in entries.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                logs.push((entry.path(), text));
            }
        }
    }
    logs
}

/// Prints the last `n` lines of every agent log of `testbed` (for failures).
pub fn dump_testbed_logs(testbed: &Testbed, n: usize) {
    for (path, text) in agent_logs(testbed) {
        let lines: Vec<&str> = text.lines().collect();
        println!("==> {} <==", path.display());
        for line in &lines[lines.len().saturating_sub(n)..] {
            println!("{line}");
        }
    }
}

/// Addresses of a container per Docker network, as its VM's Docker shows them.
pub fn addresses(
    cluster: &VmCluster,
    vm: usize,
    name: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let out = cluster.vm(vm).docker_ok(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
        name,
    ])?;
    Ok(out
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Whether container `from` on VM `vm` reaches `to` (two pings).
pub fn pings(cluster: &VmCluster, vm: usize, from: &str, to: &str) -> bool {
    cluster
        .vm(vm)
        .docker(&["exec", from, "ping", "-c", "2", "-W", "2", to])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `dig @<gateway of vm> name A +short`, the addresses sorted.
pub fn resolve(cluster: &VmCluster, vm: usize, name: &str) -> anyhow::Result<Vec<String>> {
    let out = cluster
        .vm(vm)
        .run_ok("dig", &[&format!("@10.10.{vm}.1"), name, "A", "+short"])?;
    let mut ips: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    ips.retain(|l| !l.is_empty());
    ips.sort();
    Ok(ips)
}

/// The names of VM `vm`'s Docker networks, one a line (empty when they cannot be listed).
pub fn docker_networks(vm: &Vm) -> String {
    vm.docker_ok(&["network", "ls", "--format", "{{.Name}}"])
        .unwrap_or_default()
}

/// One replica of `net/<name>` (busybox sleeping) on node `agent`, on networks `networks` of
/// group `net` (`cluster`: the cluster network; none: `cluster` without saying so).
pub fn net_replica(name: &str, agent: u64, networks: &[&str]) -> String {
    let mut s = format!(
        "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: net\n  name: {name}\nspec:\n  image: smr/busybox\n  tag: local\n  replicas: 1\n  entrypoint: [\"sleep\"]\n  args: [\"3600\"]\n  spread:\n    spread: specific\n    agents: [{agent}]\n"
    );
    if !networks.is_empty() {
        s.push_str("  networks:\n");
        for n in networks {
            let group = if *n == "cluster" { "internal" } else { "net" };
            s.push_str(&format!("    - group: {group}\n      name: {n}\n"));
        }
    }
    s
}

/// A network object `net/<name>` with address pool `pool` (`driver`: none, the default overlay).
pub fn net_network(name: &str, driver: Option<&str>, pool: &str) -> String {
    let driver = driver.map_or(String::new(), |d| format!("  driver: {d}\n"));
    format!(
        "kind: network\nprefix: simplecontainer.io/v1\nmeta:\n  group: net\n  name: {name}\nspec:\n{driver}  IPV4AddressPool: {pool}\n"
    )
}
