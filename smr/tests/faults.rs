//! Issue 12's fault suite: three agents on emulated VMs (one network namespace each, no Docker:
//! `--backend none --no-workloads`), writers that keep their own log of every write, and fault
//! rounds: kill -9, SIGSTOP/SIGCONT and an iptables partition of the leader, a partition of a
//! follower, the leader's link down, a restart of every node. Then the check: every acknowledged
//! write is there (0 lost), none is applied twice (0 duplicated), a linearizable read after an
//! acknowledgement never misses it (0 stale), no write answered `unavailable` was applied, and
//! every `outcome_unknown` is resolved by a retry with the same op_id.
//!
//! One writer per node, each through that node only (as a client with one API URL): when the
//! leader fails, writes go on through the followers as soon as they forward to the new leader.
//! How duplicates show: a write keeps its op_id while its fate is unknown and takes a new one only
//! after `unavailable` (the API's word that nothing was applied); each attempt carries its number
//! in the object, so an object applied twice has generation 2.
//!
//! Prints, per fault, the longest time without an acknowledged write. `SMR_FAULTS_SMRMGR=PATH`
//! runs another build's agents (e.g. main's, for a comparison) under the same writers;
//! `SMR_FAULTS_LOG=FILTER` sets their log filter (default `info,openraft=warn`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent::client::Context;
use agent::pki::{self, Identity};
use anyhow::{Context as _, bail};
use common::eventually;
use smr_tests::testbed::{Testbed, TestbedConfig, Vm};

/// One attempt's time limit: above the agent's own deadline (10 s), so the agent's answer is
/// what the writer sees.
const ATTEMPT: Duration = Duration::from_secs(15);
/// How long a leader stays frozen or cut off: longer than the agent's 10 s deadline, so a write
/// waiting on the lost leader instead of following the new one shows as a 10 s window.
const HOLD: Duration = Duration::from_secs(11);
/// How long a writer keeps at one write before leaving it for the check to resolve.
const WRITE_BUDGET: Duration = Duration::from_secs(20);

fn smrmgr_path() -> PathBuf {
    std::env::var_os("SMR_FAULTS_SMRMGR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_smrmgr")))
}

/// The API of one node, as the admin.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn load(context: &std::path::Path) -> anyhow::Result<Api> {
        let ctx = Context::load(context)?;
        let identity = Identity {
            cert_pem: ctx.cert_pem.clone(),
            key_pem: ctx.key_pem.clone(),
            ca_pem: ctx.ca_pem.clone(),
        };
        Ok(Api {
            http: pki::reqwest_client(&ctx.ca_pem, Some(&identity), Duration::from_secs(30))?,
            base: ctx.api_url,
        })
    }

    async fn get(&self, path: &str, timeout: Duration) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = self
            .http
            .get(format!("{}/api/v1/{path}", self.base))
            .timeout(timeout)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or_default()))
    }
}

struct Agents {
    testbed: Testbed,
    pids: Vec<Option<u32>>,
    apis: Vec<Api>,
    run: u32,
}

fn data_dir(vm: &Vm) -> PathBuf {
    vm.dir.join("smr")
}

impl Agents {
    fn smrmgr(vm: &Vm) -> Command {
        let mut cmd = vm.cmd(smrmgr_path());
        cmd.env("HOME", &vm.dir)
            .env(
                "SMR_LOG",
                std::env::var("SMR_FAULTS_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .env_remove("DOCKER_HOST");
        cmd
    }

    /// Starts (or restarts, `join: None` on an existing data dir) the agent of VM `i`.
    fn spawn(&mut self, i: usize, join: Option<(String, String)>) -> anyhow::Result<()> {
        let vm = self.testbed.vm(i).clone();
        let mut cmd = Self::smrmgr(&vm);
        cmd.args([
            "start",
            "--foreground",
            "-a",
            &format!("smr-agent-{}", vm.index),
            "-d",
            &vm.name,
            "-n",
            &vm.name,
            "--backend",
            "none",
            "--no-workloads",
        ])
        .arg("--ip")
        .arg(vm.ip.to_string())
        .arg("--data-dir")
        .arg(data_dir(&vm));
        if let Some((addr, token)) = join {
            cmd.args(["-j", &addr, "--token", &token]);
        }
        self.run += 1;
        let spawned = vm.spawn(&format!("agent-{}-{}", vm.index, self.run), cmd)?;
        self.pids[i] = Some(spawned.pid);
        Ok(())
    }

    async fn serving(&self, i: usize) -> anyhow::Result<()> {
        let context = data_dir(self.testbed.vm(i)).join("admin.context");
        eventually(
            &format!("agent {i} to serve"),
            Duration::from_secs(60),
            || {
                let context = context.clone();
                async move {
                    let api = Api::load(&context).ok()?;
                    let (status, _) = api.get("health", Duration::from_secs(2)).await.ok()?;
                    (status == 200).then_some(())
                }
            },
        )
        .await
    }

    fn token(&self) -> anyhow::Result<String> {
        let vm = self.testbed.vm(0);
        let mut cmd = Self::smrmgr(vm);
        cmd.args(["token", "--data-dir"]).arg(data_dir(vm));
        let out = cmd.output().context("smrmgr token")?;
        if !out.status.success() {
            bail!("smrmgr token: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn signal(&self, i: usize, sig: &str) -> anyhow::Result<()> {
        let pid = self.pids[i].context("no agent")?;
        self.testbed.vm(i).signal(pid, sig)
    }

    fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(pid) = self.pids[i].take() {
            self.testbed.vm(i).stop(pid, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// The leader every node names (as a VM index), with 3 voters.
    async fn leader(&self, within: Duration) -> anyhow::Result<usize> {
        eventually("one leader with 3 voters", within, || async {
            let mut leader = None;
            for api in &self.apis {
                let (status, h) = api.get("health", Duration::from_secs(1)).await.ok()?;
                let l = h["leader"].as_u64()?;
                if status != 200
                    || h["voters"].as_array()?.len() != 3
                    || leader.is_some_and(|x| x != l)
                {
                    return None;
                }
                leader = Some(l);
            }
            leader.map(|l| l as usize - 1)
        })
        .await
    }

    /// Cuts VM `i` off with iptables in its own namespace (rules named for this run).
    fn partition(&self, i: usize, on: bool) -> anyhow::Result<()> {
        let vm = self.testbed.vm(i);
        let tag = format!("smr-faults-{}", std::process::id());
        let action = if on { "-I" } else { "-D" };
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let out = vm.run(
                "iptables",
                &[
                    action,
                    chain,
                    dir,
                    "eth0",
                    "-m",
                    "comment",
                    "--comment",
                    &tag,
                    "-j",
                    "DROP",
                ],
            )?;
            if !out.status.success() {
                bail!(
                    "iptables {action} {chain} in {}: {}",
                    vm.netns,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }
}

/// What one write became, as its writer saw it.
#[derive(Clone, Debug, Default)]
struct WriteLog {
    name: String,
    /// Every op_id used, in order; the last one is the write's current identity.
    op_ids: Vec<String>,
    attempts: u32,
    /// Attempts answered 503 `unavailable` or not connected (nothing applied).
    unavailable: u32,
    /// Attempts whose fate was unknown (504, or sent without an answer).
    unknown: u32,
    /// Acknowledged: at this revision.
    revision: Option<u64>,
    /// Never acknowledged, and an attempt under the current op_id may have been applied.
    open: bool,
    /// Refused for good (a 4xx): must not happen.
    refused: Option<String>,
}

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<WriteLog>>,
    acks: Mutex<Vec<Instant>>,
    /// 503 and 504 answers and lost answers, with when.
    troubles: Mutex<Vec<(Instant, &'static str)>>,
    stale: Mutex<Vec<String>>,
    /// Acknowledged names no node would read back within 30 s.
    unread: Mutex<Vec<String>>,
    reads: AtomicU64,
    stop: AtomicBool,
}

fn object(name: &str, attempt: u32) -> serde_json::Value {
    let yaml = format!(
        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: faults\n  name: \
         {name}\nspec:\n  data:\n    attempt: \"{attempt}\"\n"
    );
    let objects = agent::definitions::parse_str("fault", &yaml).expect("definition");
    serde_json::to_value(&objects).expect("json")
}

enum Answer {
    Applied(u64),
    /// Surely not applied: 503, or a connection that failed (nothing sent).
    Unavailable(&'static str),
    Unknown(&'static str),
    Refused(String),
}

async fn attempt(api: &Api, name: &str, op_id: &str, n: u32) -> Answer {
    let body = serde_json::json!({ "objects": object(name, n), "op_id": op_id });
    let sent = api
        .http
        .post(format!("{}/api/v1/objects", api.base))
        .json(&body)
        .timeout(ATTEMPT)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            match status {
                200 => match body["revision"].as_u64() {
                    Some(revision) => Answer::Applied(revision),
                    None => Answer::Unknown("unreadable answer"),
                },
                503 => Answer::Unavailable("503"),
                504 => Answer::Unknown("504"),
                _ => Answer::Refused(format!("{status}: {body}")),
            }
        }
        // A connection that failed carried nothing; anything else may have been applied.
        Err(e) if e.is_connect() => Answer::Unavailable("no connection"),
        Err(_) => Answer::Unknown("no answer"),
    }
}

/// One writer per node, like a client given that node's API URL: writes `w<node>-<n>` one after
/// another through its node only until told to stop, and hands each acknowledged name to the
/// reader. How soon writes go on through the followers of a failed leader is the agents' doing.
async fn writer(
    node: usize,
    api: Api,
    shared: Arc<Shared>,
    reads: tokio::sync::mpsc::UnboundedSender<(String, usize)>,
) {
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        seq += 1;
        let mut entry = WriteLog {
            name: format!("w{node}-{seq}"),
            op_ids: vec![agent::node::new_op_id()],
            ..WriteLog::default()
        };
        let deadline = Instant::now() + WRITE_BUDGET;
        loop {
            entry.attempts += 1;
            let op_id = entry.op_ids.last().cloned().unwrap_or_default();
            let answer = attempt(&api, &entry.name, &op_id, entry.attempts).await;
            match answer {
                Answer::Applied(revision) => {
                    shared.acks.lock().unwrap().push(Instant::now());
                    entry.revision = Some(revision);
                    entry.open = false;
                    let _ = reads.send((entry.name.clone(), node));
                    break;
                }
                Answer::Unavailable(why) => {
                    entry.unavailable += 1;
                    shared.troubles.lock().unwrap().push((Instant::now(), why));
                    // Nothing applied, says the API: unless an earlier attempt's fate is open,
                    // the next attempt is a new operation.
                    if !entry.open {
                        entry.op_ids.push(agent::node::new_op_id());
                    }
                }
                Answer::Unknown(why) => {
                    entry.unknown += 1;
                    entry.open = true;
                    shared.troubles.lock().unwrap().push((Instant::now(), why));
                }
                Answer::Refused(why) => {
                    entry.refused = Some(why);
                    break;
                }
            }
            if Instant::now() > deadline {
                break;
            }
            // The node is down or without a leader: ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shared.log.lock().unwrap().push(entry);
    }
}

/// Reads every acknowledged name back (linearizable) through another node than the one that
/// acknowledged it, trying the nodes in turn for up to 30 s; a 404 is a stale read.
async fn reader(
    apis: Vec<Api>,
    shared: Arc<Shared>,
    mut names: tokio::sync::mpsc::UnboundedReceiver<(String, usize)>,
) {
    while let Some((name, acked_by)) = names.recv().await {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut k = 1;
        loop {
            let api = &apis[(acked_by + k) % apis.len()];
            match api
                .get(
                    &format!("objects/configuration/faults/{name}"),
                    Duration::from_secs(2),
                )
                .await
            {
                Ok((200, _)) => {
                    shared.reads.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok((404, _)) => {
                    shared.stale.lock().unwrap().push(name.clone());
                    break;
                }
                _ if Instant::now() > deadline => {
                    shared.unread.lock().unwrap().push(name.clone());
                    break;
                }
                _ => k += 1,
            }
            if k % apis.len() == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The longest time without an acknowledged write between `from` and `to`.
fn longest_gap(acks: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut previous = acks
        .iter()
        .copied()
        .filter(|a| *a <= from)
        .max()
        .unwrap_or(from);
    let mut longest = Duration::ZERO;
    for &ack in acks.iter().filter(|a| **a > from && **a <= to) {
        longest = longest.max(ack - previous);
        previous = ack;
    }
    longest.max(to.saturating_duration_since(previous).min(to - from))
}

struct Round {
    fault: &'static str,
    window: Duration,
    acks: usize,
    troubles: BTreeMap<&'static str, usize>,
}

async fn recovered(agents: &Agents, shared: &Shared, since: Instant) -> anyhow::Result<()> {
    agents.leader(Duration::from_secs(60)).await?;
    eventually("writes to flow again", Duration::from_secs(60), || async {
        let acks = shared.acks.lock().unwrap();
        (acks.iter().filter(|a| **a > since).count() >= 20).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_lose_nothing_apply_nothing_twice_and_read_nothing_stale() -> anyhow::Result<()> {
    if let Some(why) = smr_tests::testbed::unsupported_reason(false) {
        println!("skipped: {why}");
        return Ok(());
    }
    let began = Instant::now();
    let testbed = Testbed::start(TestbedConfig {
        docker: false,
        import_busybox: false,
        name_prefix: "smrflt".into(),
        ..TestbedConfig::new(3)
    })?;
    let mut agents = Agents {
        testbed,
        pids: vec![None; 3],
        apis: Vec::new(),
        run: 0,
    };
    let result = run_suite(&mut agents, began).await;
    if result.is_err() {
        common::vms::dump_testbed_logs(&agents.testbed, 30);
    }
    for i in 0..3 {
        let _ = agents.signal(i, "CONT");
        let _ = agents.partition(i, false);
        let _ = agents.testbed.heal(agents.testbed.vm(i));
    }
    for i in 0..3 {
        let _ = agents.stop(i);
    }
    agents.testbed.shutdown()?;
    result
}

async fn run_suite(agents: &mut Agents, began: Instant) -> anyhow::Result<()> {
    agents.spawn(0, None)?;
    agents.serving(0).await?;
    for i in 1..3 {
        let token = agents.token()?;
        let addr = format!("{}:1443", agents.testbed.vm(0).ip);
        agents.spawn(i, Some((addr, token)))?;
        agents.serving(i).await?;
    }
    agents.apis = (0..3)
        .map(|i| Api::load(&data_dir(agents.testbed.vm(i)).join("admin.context")))
        .collect::<anyhow::Result<_>>()?;
    agents.leader(Duration::from_secs(60)).await?;
    println!("cluster formed after {:?}", began.elapsed());

    let shared = Arc::new(Shared::default());
    let (to_reader, from_writers) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(reader(agents.apis.clone(), shared.clone(), from_writers));
    let writers: Vec<_> = (0..agents.apis.len())
        .map(|w| {
            tokio::spawn(writer(
                w,
                agents.apis[w].clone(),
                shared.clone(),
                to_reader.clone(),
            ))
        })
        .collect();
    drop(to_reader);
    recovered(agents, &shared, Instant::now()).await?;

    let faults = [
        "kill -9 leader",
        "SIGSTOP leader",
        "iptables partition of the leader",
        "iptables partition of a follower",
        "link down of the leader",
        "restart of every node",
    ];
    let mut rounds = Vec::new();
    for fault in faults {
        let leader = agents.leader(Duration::from_secs(60)).await?;
        let follower = (leader + 1) % 3;
        let from = Instant::now();
        match fault {
            "kill -9 leader" => {
                agents.signal(leader, "KILL")?;
                tokio::time::sleep(Duration::from_secs(4)).await;
                agents.stop(leader)?;
                agents.spawn(leader, None)?;
            }
            "SIGSTOP leader" => {
                agents.signal(leader, "STOP")?;
                tokio::time::sleep(HOLD).await;
                agents.signal(leader, "CONT")?;
            }
            "iptables partition of the leader" => {
                agents.partition(leader, true)?;
                tokio::time::sleep(HOLD).await;
                agents.partition(leader, false)?;
            }
            "iptables partition of a follower" => {
                agents.partition(follower, true)?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                agents.partition(follower, false)?;
            }
            "link down of the leader" => {
                let vm = agents.testbed.vm(leader).clone();
                agents.testbed.cut(&vm)?;
                tokio::time::sleep(HOLD).await;
                agents.testbed.heal(&vm)?;
            }
            "restart of every node" => {
                for i in 0..3 {
                    agents.stop(i)?;
                }
                for i in 0..3 {
                    agents.spawn(i, None)?;
                }
            }
            _ => unreachable!(),
        }
        let healed = Instant::now();
        recovered(agents, &shared, healed).await?;
        let to = Instant::now();
        let acks = shared.acks.lock().unwrap().clone();
        let mut troubles = BTreeMap::new();
        for (at, what) in shared.troubles.lock().unwrap().iter() {
            if *at >= from && *at <= to {
                *troubles.entry(*what).or_insert(0) += 1;
            }
        }
        let round = Round {
            fault,
            window: longest_gap(&acks, from, to),
            acks: acks.iter().filter(|a| **a > from && **a <= to).count(),
            troubles,
        };
        println!(
            "round {}: {fault}: longest window without an acknowledged write {:.2} s",
            rounds.len() + 1,
            round.window.as_secs_f64()
        );
        rounds.push(round);
    }

    shared.stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await?;
    }
    reader.await?;
    check(agents, &shared, &rounds, began).await
}

async fn check(
    agents: &Agents,
    shared: &Shared,
    rounds: &[Round],
    began: Instant,
) -> anyhow::Result<()> {
    let mut log = shared.log.lock().unwrap().clone();
    // Every write whose fate is open is resolved by its own op_id: the API must then answer.
    let mut resolved = 0;
    for entry in log.iter_mut().filter(|e| e.open && e.revision.is_none()) {
        let op_id = entry.op_ids.last().cloned().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut k = 0;
        loop {
            entry.attempts += 1;
            match attempt(&agents.apis[k % 3], &entry.name, &op_id, entry.attempts).await {
                Answer::Applied(revision) => {
                    entry.revision = Some(revision);
                    resolved += 1;
                    break;
                }
                Answer::Refused(why) => bail!("{} refused at resolution: {why}", entry.name),
                _ if Instant::now() > deadline => {
                    bail!("{} could not be resolved with op_id {op_id}", entry.name)
                }
                _ => k += 1,
            }
        }
    }
    if let Some(refused) = log.iter().find(|e| e.refused.is_some()) {
        bail!("a write was refused: {refused:?}");
    }

    // The state, as every node has it once it caught up.
    let mut states = Vec::new();
    for (i, api) in agents.apis.iter().enumerate() {
        let (status, list) = api
            .get("objects/configuration", Duration::from_secs(20))
            .await?;
        anyhow::ensure!(status == 200, "node {i} did not list: {list}");
        let objects: BTreeMap<String, (u64, u64)> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["object"]["meta"]["group"] == "faults")
            .filter_map(|o| {
                Some((
                    o["object"]["meta"]["name"].as_str()?.to_string(),
                    (o["generation"].as_u64()?, o["revision"].as_u64()?),
                ))
            })
            .collect();
        states.push(objects);
    }
    let stored = &states[0];
    let applied: BTreeSet<&String> = log
        .iter()
        .filter(|e| e.revision.is_some())
        .map(|e| &e.name)
        .collect();
    let lost: Vec<&String> = applied
        .iter()
        .copied()
        .filter(|n| !stored.contains_key(*n))
        .collect();
    let duplicated: Vec<&String> = stored
        .iter()
        .filter(|(_, (generation, _))| *generation > 1)
        .map(|(n, _)| n)
        .collect();
    // Only ever told `unavailable` (every op_id refused as not applied), yet there.
    let phantom: Vec<&String> = log
        .iter()
        .filter(|e| e.revision.is_none() && !e.open && stored.contains_key(&e.name))
        .map(|e| &e.name)
        .collect();
    let stale = shared.stale.lock().unwrap().clone();
    let unread = shared.unread.lock().unwrap().clone();
    let diverged: Vec<usize> = (1..states.len())
        .filter(|&i| states[i] != *stored)
        .collect();

    let acked = log
        .iter()
        .filter(|e| e.revision.is_some() && !e.open)
        .count();
    let unknown: u32 = log.iter().map(|e| e.unknown).sum();
    let had_unknown = log.iter().filter(|e| e.unknown > 0).count();
    let unavailable: u32 = log.iter().map(|e| e.unavailable).sum();
    println!(
        "\n{} writes: {} acknowledged, {} answers outcome-unknown (504 or lost), {} unavailable \
         (503 or no connection); {} writes had an unknown outcome, every one resolved by a retry with its op_id \
         ({} of them at the check); {} read back",
        log.len(),
        acked,
        unknown,
        unavailable,
        had_unknown,
        resolved,
        shared.reads.load(Ordering::SeqCst)
    );
    println!(
        "| fault | longest window without an acknowledged write | acks in the round | other answers |"
    );
    println!("|---|---|---|---|");
    for r in rounds {
        println!(
            "| {} | {:.2} s | {} | {:?} |",
            r.fault,
            r.window.as_secs_f64(),
            r.acks,
            r.troubles
        );
    }
    println!(
        "lost {}, duplicated {}, stale {}, applied though answered unavailable {}, nodes \
         diverging {}; suite took {:?}",
        lost.len(),
        duplicated.len(),
        stale.len(),
        phantom.len(),
        diverged.len(),
        began.elapsed()
    );
    anyhow::ensure!(lost.is_empty(), "acknowledged but absent: {lost:?}");
    anyhow::ensure!(duplicated.is_empty(), "applied twice: {duplicated:?}");
    anyhow::ensure!(stale.is_empty(), "stale reads: {stale:?}");
    anyhow::ensure!(unread.is_empty(), "never read back: {unread:?}");
    anyhow::ensure!(
        phantom.is_empty(),
        "answered unavailable, yet applied: {phantom:?}"
    );
    anyhow::ensure!(diverged.is_empty(), "nodes {diverged:?} differ from node 0");
    Ok(())
}
