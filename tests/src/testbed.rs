//! End-to-end testbed: several emulated VMs on one machine (recipe: shared/TESTBED.md).
//!
//! Each VM is a network namespace with one address on an "underlay" bridge and its OWN
//! dockerd (own data root, exec root, pidfile, socket and containerd namespace), started
//! with `nsenter --net=/var/run/netns/NS dockerd ... --bridge=none --iptables=false`.
//! No registry is needed: a busybox rootfs is built once per testbed from the host's
//! static busybox and `docker import`ed into each daemon as [`BUSYBOX_IMAGE`].
//!
//! ```text
//!   host:  bridge <prefix><slot>  10.200.<slot>.254/24   (+ iptables FORWARD ACCEPT br->br)
//!            |-- veth <prefix><slot>v1 ==== eth0 10.200.<slot>.1  netns <prefix><slot>-vm1  dockerd
//!            |-- veth <prefix><slot>v2 ==== eth0 10.200.<slot>.2  netns <prefix><slot>-vm2  dockerd
//!            ...
//! ```
//!
//! Several testbeds may run at the same time (threads or processes): the "slot" is claimed
//! by creating the bridge (creation is atomic; an existing name means "taken"), and every
//! other name, address and directory derives from it. Every resource is recorded in
//! `<dir>/state.json` right after it was created, so teardown (explicit
//! [`Testbed::shutdown`], or `Drop`, which also runs while a failing test unwinds) and the
//! leftover sweeper ([`sweep_leftovers`], for runs that were killed) only ever remove what
//! this code created: processes by recorded pid (checked against their start time),
//! namespaces, links and the iptables rule by their exact names.
//!
//! Clouds behind NAT ([`TestbedConfig::clouds`]): the bridge then plays "the internet". Each
//! cloud is a router namespace with a public address on the bridge (`10.200.<slot>.<100+c>`)
//! and a private LAN behind it (by default `10.1.0.0/24` in every cloud, as default cloud
//! VPCs overlap: router `.1`, VMs `.11`, `.12`, ...). The router masquerades its LAN and
//! forwards tcp 1443 (API), tcp 9212 (Raft) and udp 51820 (WireGuard) of its public address
//! to the cloud's first VM ([`Testbed::forward`] adds more); VMs have a default route via the
//! router. [`Testbed::capture`] records what crosses the bridge (tcpdump) to a file.
//!
//! ```text
//!   host:  bridge <prefix><slot> 10.200.<slot>.254/24 ("internet")
//!            |-- veth <prefix><slot>r1 ==== out0 10.200.<slot>.101  netns <prefix><slot>-r1 (NAT)
//!            |                                lan0 10.1.0.1/24 --- eth0 10.1.0.11  netns ...-vmN
//!            |-- veth <prefix><slot>r2 ==== out0 10.200.<slot>.102  netns <prefix><slot>-r2 (NAT)
//!                                             lan0 10.1.0.1/24 --- eth0 10.1.0.11  netns ...-vmM
//! ```
//!
//! Traps handled here: the host's `/etc/docker/daemon.json` clashes with `--data-root`, so
//! each VM daemon gets its own `--config-file`; `ip netns exec` hides the cgroup mounts,
//! so everything enters the namespace with `nsenter --net=` (network namespace only: VM
//! processes see the host's files, e.g. binaries under target/).
//!
//! ```no_run
//! use smr_tests::testbed::{Testbed, TestbedConfig, BUSYBOX_IMAGE};
//! # fn main() -> anyhow::Result<()> {
//! let tb = Testbed::start(TestbedConfig::new(3))?;
//! let (a, b) = (tb.vm(0), tb.vm(1));
//! assert!(a.ping(b.ip));
//! let mut agent = a.cmd("/work/target/debug/smrmgr");
//! agent.args(["start", "--ip", &a.ip.to_string(), "--docker-host", &a.docker_host]);
//! let proc = a.spawn("agent", agent)?; // logs in <a.dir>/logs/agent.log
//! a.docker_ok(&["run", "-d", "--network", "none", BUSYBOX_IMAGE, "sleep", "60"])?;
//! tb.cut(b)?; // partition vm2
//! tb.heal(b)?;
//! a.stop(proc.pid, std::time::Duration::from_secs(5))?;
//! drop(tb); // or tb.shutdown(): everything goes away, also when a test panics
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// The image every VM daemon has after [`Testbed::start`] (busybox with all its applets in /bin).
pub const BUSYBOX_IMAGE: &str = "smr/busybox:local";

/// Where the host's busybox-static lives (package `busybox-static`).
const BUSYBOX_BIN: &str = "/bin/busybox";
/// First two octets of every underlay; the third is the testbed's slot.
const UNDERLAY_NET: [u8; 2] = [10, 200];
/// Host address (last octet) on the underlay bridge.
const BRIDGE_HOST_OCTET: u8 = 254;
/// Largest number of VMs per testbed (addresses .1 ..= .MAX_VMS).
pub const MAX_VMS: usize = 99;
/// Largest number of clouds per testbed (router public addresses .101 ..= .150).
pub const MAX_CLOUDS: usize = 50;
/// Last octet of cloud 1's router on the bridge; cloud c has `ROUTER_OCTET_BASE + c`.
const ROUTER_OCTET_BASE: u8 = 100;
/// The ports a router forwards to its cloud's first VM: (protocol, port).
pub const CLOUD_PORTS: [(&str, u16); 3] = [("tcp", 1443), ("tcp", 9212), ("udp", 51820)];

/// One cloud of [`TestbedConfig::clouds`]: VMs on a private network behind a NAT router.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// VMs behind the router (1..).
    pub vms: usize,
    /// First three octets of the private /24 (router `.1`, VMs `.11`, `.12`, ...).
    pub private_net: [u8; 3],
}

impl CloudConfig {
    /// `vms` VMs on 10.1.0.0/24, the same private range in every cloud.
    pub fn new(vms: usize) -> Self {
        CloudConfig {
            vms,
            private_net: [10, 1, 0],
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How to build a testbed. `TestbedConfig::new(3)` is the usual start.
#[derive(Clone, Debug)]
pub struct TestbedConfig {
    /// Number of emulated VMs on the underlay bridge (0..=99; at least one VM in all).
    pub vms: usize,
    /// Clouds behind NAT routers on the bridge, each with its own VMs (numbered after the
    /// underlay VMs).
    pub clouds: Vec<CloudConfig>,
    /// Prefix of the bridge, veth and netns names: 1..=8 chars of `[a-z0-9]`.
    pub name_prefix: String,
    /// Parent of the testbed's directory (`$SMR_TESTBED_DIR` or `/tmp/smrtb`). Keep it
    /// short: unix socket paths live below it.
    pub base_dir: PathBuf,
    /// Start one dockerd per VM.
    pub docker: bool,
    /// Import [`BUSYBOX_IMAGE`] into every daemon (needs `docker`).
    pub import_busybox: bool,
    /// `storage-driver` for the VM daemons (None: dockerd's choice, overlay2 here).
    pub storage_driver: Option<String>,
    /// How long to wait for each dockerd to answer `docker info`.
    pub docker_ready_timeout: Duration,
    /// Before starting, tear down leftovers of testbeds whose owning process is gone
    /// (only what their state files recorded).
    pub sweep_leftovers: bool,
}

impl TestbedConfig {
    pub fn new(vms: usize) -> Self {
        TestbedConfig {
            vms,
            ..Self::default()
        }
    }

    /// Only clouds behind NAT, with these numbers of VMs (`clouds(&[1, 1])`: two clouds, one
    /// VM each, both at 10.1.0.11).
    pub fn clouds(vms_per_cloud: &[usize]) -> Self {
        TestbedConfig {
            vms: 0,
            clouds: vms_per_cloud.iter().map(|&n| CloudConfig::new(n)).collect(),
            ..Self::default()
        }
    }

    fn total_vms(&self) -> usize {
        self.vms + self.clouds.iter().map(|c| c.vms).sum::<usize>()
    }
}

impl Default for TestbedConfig {
    fn default() -> Self {
        TestbedConfig {
            vms: 3,
            clouds: Vec::new(),
            name_prefix: "smrtb".into(),
            base_dir: default_base_dir(),
            docker: true,
            import_busybox: true,
            storage_driver: None,
            docker_ready_timeout: Duration::from_secs(60),
            sweep_leftovers: true,
        }
    }
}

/// `$SMR_TESTBED_DIR`, else `/tmp/smrtb`.
pub fn default_base_dir() -> PathBuf {
    std::env::var_os("SMR_TESTBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/smrtb"))
}

/// Why the testbed cannot run here (not root, no dockerd, ...), or None when it can.
/// Suites print `skipped: <why>` and return when this is Some.
pub fn unsupported_reason(need_docker: bool) -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    for tool in [
        "ip", "nsenter", "iptables", "tar", "umount", "kill", "sysctl",
    ] {
        if which(tool).is_none() {
            return Some(format!("`{tool}` not found (run tests/install-deps.sh)"));
        }
    }
    if need_docker {
        for tool in ["dockerd", "docker"] {
            if which(tool).is_none() {
                return Some(format!("`{tool}` not found (run tests/install-deps.sh)"));
            }
        }
        if !Path::new(BUSYBOX_BIN).exists() {
            return Some(format!(
                "{BUSYBOX_BIN} missing (apt-get install busybox-static)"
            ));
        }
    }
    None
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective\t..."
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Polls `f` every `every` until it returns true; fails after `timeout` with `what`.
/// The last error of `f` (if any) is part of the failure.
pub fn poll_until(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let every = Duration::from_millis(100);
    loop {
        let last = match f() {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("timed out after {timeout:?}: {what}")),
                None => anyhow!("timed out after {timeout:?}: {what}"),
            });
        }
        thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------
// State file: everything created, recorded right after creation.

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    owner_pid: u32,
    owner_start: u64,
    dir: PathBuf,
    bridge: Option<String>,
    /// `-i BR -o BR -j ACCEPT` inserted into FORWARD (the rule spec after the chain name).
    iptables_rule: Option<Vec<String>>,
    netns: Vec<String>,
    links: Vec<String>,
    vms: Vec<VmState>,
    pids: Vec<RecordedPid>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct VmState {
    name: String,
    docker_sock: Option<String>,
    exec_root: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
enum PidKind {
    /// Started with [`Vm::spawn`]: stopped first.
    Spawned,
    Dockerd,
    /// Children of a dockerd (its containerd), stopped after it.
    DockerChild,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RecordedPid {
    pid: u32,
    start: u64,
    kind: PidKind,
    what: String,
}

fn save_state(path: &Path, state: &State) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(state)?;
    let mut f = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(&data)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

fn load_state(path: &Path) -> Result<State> {
    let data = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("parse {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// /proc helpers

/// (state char, ppid, start time in clock ticks) of a live (or zombie) process.
fn proc_stat(pid: u32) -> Option<(char, u32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

fn proc_start(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, _, st)| st)
}

/// True when `pid` is the same process that was recorded (same start time) and not a zombie.
fn same_alive(pid: u32, start: u64) -> bool {
    matches!(proc_stat(pid), Some((st, _, s)) if s == start && st != 'Z' && st != 'X')
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn children_of(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| matches!(proc_stat(p), Some((_, pp, _)) if pp == pid))
        .collect()
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Mount points (unescaped) from /proc/self/mountinfo at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(d) = b.get(i + 1..i + 4)
            && d.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// Commands

/// Runs `cmd`, killing it after `timeout`. Stdout/stderr are captured.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {desc}"))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}: {desc}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `cmd` and fails (with its stderr) unless it exits 0. Returns trimmed stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = output_with_timeout(cmd, CMD_TIMEOUT)?;
    check(&desc, out)
}

fn check(desc: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ip(args: &[&str]) -> Result<String> {
    run_ok(Command::new("ip").args(args))
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

fn iptables_rule_present(rule: &[String]) -> bool {
    Command::new("iptables")
        .args(["-w", "-C", "FORWARD"])
        .args(rule)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// True when any host address or route mentions the /24 `a.b.c.0`.
fn subnet_in_use(prefix: &str) -> bool {
    let addrs = ip(&["-o", "-4", "addr", "show"]).unwrap_or_default();
    let routes = ip(&["-4", "route", "show", "table", "all"]).unwrap_or_default();
    addrs
        .split_whitespace()
        .chain(routes.split_whitespace())
        .any(|w| w.starts_with(prefix))
}

// ---------------------------------------------------------------------------------------
// Shared state between the testbed and its VMs

struct Proc {
    rec: RecordedPid,
    child: Option<Child>,
}

struct Shared {
    state_path: PathBuf,
    state: Mutex<State>,
    procs: Mutex<Vec<Proc>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn procs(&self) -> MutexGuard<'_, Vec<Proc>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f` to the state and writes it to disk.
    fn record(&self, f: impl FnOnce(&mut State)) -> Result<()> {
        let mut st = self.state();
        f(&mut st);
        save_state(&self.state_path, &st)
    }

    fn record_proc(&self, child: Child, kind: PidKind, what: String) -> Result<u32> {
        let pid = child.id();
        let start = proc_start(pid).unwrap_or(0);
        let rec = RecordedPid {
            pid,
            start,
            kind,
            what,
        };
        self.record(|s| s.pids.push(rec.clone()))?;
        self.procs().push(Proc {
            rec,
            child: Some(child),
        });
        Ok(pid)
    }
}

// ---------------------------------------------------------------------------------------
// VM

/// One emulated VM: a network namespace with `eth0` on the underlay and its own dockerd.
#[derive(Clone)]
pub struct Vm {
    /// 1-based position in the testbed.
    pub index: usize,
    /// `vm1`, `vm2`, ...
    pub name: String,
    /// Name under /var/run/netns.
    pub netns: String,
    /// Address of `eth0`: on the underlay, or the private address in a cloud.
    pub ip: Ipv4Addr,
    /// In a cloud: the 1-based cloud and its router's public address (what other clouds reach
    /// the VM at, for the forwarded ports).
    pub cloud: Option<usize>,
    pub public_ip: Option<Ipv4Addr>,
    /// `unix:///.../docker.sock` of this VM's dockerd (empty when started without docker).
    pub docker_host: String,
    /// This VM's own directory (dockerd roots, logs/, free for the suite's files).
    pub dir: PathBuf,
    /// Host end of the VM's veth on the bridge (in a cloud: its router's); down = cut off.
    pub host_veth: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.name)
            .field("netns", &self.netns)
            .field("ip", &self.ip)
            .field("public_ip", &self.public_ip)
            .field("docker_host", &self.docker_host)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Vm {
    /// A command that runs `program` inside this VM's network namespace
    /// (`nsenter --net=/var/run/netns/NS -- program`; mounts and /sys stay the host's).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program args` in the namespace (60 s limit); the raw output.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        output_with_timeout(self.cmd(program).args(args), CMD_TIMEOUT)
    }

    /// Runs `program args` in the namespace; fails unless it exits 0; trimmed stdout.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> Result<String> {
        run_ok(self.cmd(program).args(args))
    }

    /// A `docker -H <this VM's socket>` command (the CLI runs on the host; the daemon is in the VM).
    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H").arg(&self.docker_host);
        c
    }

    /// `docker -H <socket> args` (60 s limit); the raw output, whatever the exit status.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        output_with_timeout(self.docker_cmd().args(args), CMD_TIMEOUT)
    }

    /// `docker -H <socket> args`; fails unless it exits 0; trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        run_ok(self.docker_cmd().args(args))
    }

    /// One `ping -c1 -W1` from this VM to `to`: true when it answered.
    pub fn ping(&self, to: Ipv4Addr) -> bool {
        self.run("ping", &["-n", "-q", "-c", "1", "-W", "1", &to.to_string()])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Starts a long-running process (e.g. `vm.cmd("smrmgr")` with its args). Stdin is
    /// null; stdout and stderr go to `<vm dir>/logs/<name>.log`. The process is recorded
    /// and stopped at teardown (SIGTERM, then SIGKILL after 10 s) before the dockerds.
    pub fn spawn(&self, name: &str, mut cmd: Command) -> Result<Spawned> {
        let logs = self.dir.join("logs");
        fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{name}.log"));
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let pid =
            self.shared
                .record_proc(child, PidKind::Spawned, format!("{}:{name}", self.name))?;
        Ok(Spawned { pid, log })
    }

    /// Stops a process started with [`Vm::spawn`] now: SIGTERM, SIGKILL after `grace`.
    /// Returns its exit status (None if it was not ours or already reaped).
    pub fn stop(&self, pid: u32, grace: Duration) -> Result<Option<ExitStatus>> {
        let taken = {
            let mut procs = self.shared.procs();
            procs
                .iter()
                .position(|p| p.rec.pid == pid && p.rec.kind == PidKind::Spawned)
                .map(|i| procs.remove(i))
        };
        let Some(mut p) = taken else {
            return Ok(None);
        };
        let status = stop_procs(std::slice::from_mut(&mut p), "TERM", grace);
        self.shared.record(|s| s.pids.retain(|r| r.pid != pid))?;
        Ok(status.into_iter().next().flatten())
    }

    /// Sends `sig` (e.g. "KILL", "STOP", "CONT") to a process started with [`Vm::spawn`];
    /// it stays recorded for teardown.
    pub fn signal(&self, pid: u32, sig: &str) -> Result<()> {
        let procs = self.shared.procs();
        let p = procs
            .iter()
            .find(|p| p.rec.pid == pid && p.rec.kind == PidKind::Spawned)
            .ok_or_else(|| anyhow!("pid {pid} was not spawned by this testbed"))?;
        if same_alive(p.rec.pid, p.rec.start) {
            signal(pid, sig);
        }
        Ok(())
    }

    /// True while a process started with [`Vm::spawn`] runs (reaps it when it has exited).
    pub fn is_running(&self, pid: u32) -> bool {
        let mut procs = self.shared.procs();
        let Some(p) = procs.iter_mut().find(|p| p.rec.pid == pid) else {
            return false;
        };
        match p.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => same_alive(p.rec.pid, p.rec.start),
        }
    }
}

/// A NAT router of a cloud.
#[derive(Clone, Debug)]
struct Router {
    /// 1-based cloud number.
    index: usize,
    netns: String,
    public_ip: Ipv4Addr,
    #[allow(dead_code)]
    host_veth: String,
}

impl Router {
    /// DNAT of `proto` `port` arriving on the public side to `to`, same port. The rule lives
    /// in the router's namespace and goes with it.
    fn forward(&self, proto: &str, port: u16, to: Ipv4Addr) -> Result<()> {
        if proto != "tcp" && proto != "udp" {
            bail!("forward: protocol must be tcp or udp, not {proto:?}");
        }
        run_ok(
            Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{}", self.netns))
                .args([
                    "--",
                    "iptables",
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    "out0",
                    "-p",
                    proto,
                    "--dport",
                ])
                .arg(port.to_string())
                .args(["-j", "DNAT", "--to-destination"])
                .arg(to.to_string()),
        )
        .map(|_| ())
    }
}

/// A running [`Testbed::capture`].
#[derive(Clone, Debug)]
pub struct Capture {
    pub pid: u32,
    /// The pcap file.
    pub path: PathBuf,
    /// tcpdump's own messages.
    pub log: PathBuf,
}

impl Capture {
    /// How many packets of the capture file match a tcpdump filter (e.g. `udp port 8472`).
    pub fn count(&self, filter: &str) -> Result<usize> {
        let out = run_ok(
            Command::new("tcpdump")
                .args(["-n", "-r"])
                .arg(&self.path)
                .args(filter.split_whitespace()),
        )?;
        Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
    }
}

/// True when `needle` occurs anywhere in `haystack` (e.g. a marker in a capture file).
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A process started with [`Vm::spawn`].
#[derive(Clone, Debug)]
pub struct Spawned {
    pub pid: u32,
    pub log: PathBuf,
}

// ---------------------------------------------------------------------------------------
// Testbed

/// A set of emulated VMs; torn down by [`Testbed::shutdown`] or on drop.
pub struct Testbed {
    id: String,
    slot: u8,
    dir: PathBuf,
    bridge: String,
    vms: Vec<Vm>,
    routers: Vec<Router>,
    shared: Arc<Shared>,
    down: bool,
    /// How long `start` took.
    pub start_time: Duration,
}

impl std::fmt::Debug for Testbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testbed")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("bridge", &self.bridge)
            .field("vms", &self.vms)
            .finish()
    }
}

/// Names and ids a testbed created, to check afterwards that none is left.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub dir: PathBuf,
    pub netns: Vec<String>,
    pub links: Vec<String>,
    pub pids: Vec<(u32, u64)>,
    pub iptables_rule: Option<Vec<String>>,
    /// containerd sockets of the VM daemons (any process naming one is a leftover shim).
    pub containerd_sockets: Vec<String>,
}

impl Inventory {
    /// What of this inventory still exists (empty after a clean teardown).
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for ns in &self.netns {
            if netns_exists(ns) {
                left.push(format!("netns {ns}"));
            }
        }
        for l in &self.links {
            if link_exists(l) {
                left.push(format!("link {l}"));
            }
        }
        for &(pid, start) in &self.pids {
            if same_alive(pid, start) {
                left.push(format!("process {pid} ({})", cmdline(pid)));
            }
        }
        if !self.containerd_sockets.is_empty() {
            for pid in all_pids() {
                let cl = cmdline(pid);
                if self
                    .containerd_sockets
                    .iter()
                    .any(|s| cl.contains(s.as_str()))
                {
                    left.push(format!("process {pid} ({cl})"));
                }
            }
        }
        for m in mounts_under(&self.dir) {
            left.push(format!("mount {}", m.display()));
        }
        if let Some(rule) = &self.iptables_rule
            && iptables_rule_present(rule)
        {
            left.push(format!("iptables FORWARD {}", rule.join(" ")));
        }
        if self.dir.exists() {
            left.push(format!("dir {}", self.dir.display()));
        }
        left
    }
}

impl Testbed {
    /// Builds the testbed: bridge + FORWARD rule, a namespace, veth and dockerd per VM,
    /// busybox imported everywhere. On error, everything created so far is torn down.
    pub fn start(cfg: TestbedConfig) -> Result<Testbed> {
        let t0 = Instant::now();
        if cfg.total_vms() == 0 || cfg.total_vms() > MAX_VMS {
            bail!("a testbed has 1..={MAX_VMS} VMs, got {}", cfg.total_vms());
        }
        if cfg.clouds.len() > MAX_CLOUDS || cfg.clouds.iter().any(|c| c.vms == 0 || c.vms > 200) {
            bail!("at most {MAX_CLOUDS} clouds of 1..=200 VMs each");
        }
        let p = &cfg.name_prefix;
        if p.is_empty()
            || p.len() > 8
            || !p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            bail!("name_prefix must be 1..=8 chars of [a-z0-9], got {p:?}");
        }
        if let Some(why) = unsupported_reason(cfg.docker) {
            bail!("testbed unsupported here: {why}");
        }
        fs::create_dir_all(&cfg.base_dir)
            .with_context(|| format!("create {}", cfg.base_dir.display()))?;
        if cfg.sweep_leftovers {
            for line in sweep_leftovers(&cfg.base_dir) {
                eprintln!("testbed: swept leftover: {line}");
            }
        }

        // Own directory first (holds the state file), then claim a slot via the bridge.
        let me = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = cfg.base_dir.join(format!("p{me}-{n}-{:x}", nanos & 0xffff));
        fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let state_path = dir.join("state.json");
        let state = State {
            owner_pid: me,
            owner_start: proc_start(me).unwrap_or(0),
            dir: dir.clone(),
            ..State::default()
        };
        save_state(&state_path, &state)?;
        let shared = Arc::new(Shared {
            state_path,
            state: Mutex::new(state),
            procs: Mutex::new(Vec::new()),
        });

        let mut tb = Testbed {
            id: String::new(),
            slot: 0,
            dir,
            bridge: String::new(),
            vms: Vec::new(),
            routers: Vec::new(),
            shared,
            down: false,
            start_time: Duration::ZERO,
        };
        // From here on, an error drops `tb`, which tears down what was recorded.
        tb.build(&cfg, me.wrapping_mul(31).wrapping_add(n.wrapping_mul(7)))?;
        tb.start_time = t0.elapsed();
        Ok(tb)
    }

    fn build(&mut self, cfg: &TestbedConfig, seed: u32) -> Result<()> {
        let shared = self.shared.clone();
        let prefix = &cfg.name_prefix;

        // 1. Claim a slot: the bridge name <prefix><slot>; `ip link add` fails if taken.
        let mut claimed = None;
        for k in 0..250u32 {
            let slot = ((seed.wrapping_add(k)) % 250) as u8;
            let bridge = format!("{prefix}{slot}");
            let net = format!("{}.{}.{slot}.", UNDERLAY_NET[0], UNDERLAY_NET[1]);
            if link_exists(&bridge) || subnet_in_use(&net) {
                continue;
            }
            match ip(&["link", "add", &bridge, "type", "bridge"]) {
                Ok(_) => {
                    claimed = Some((slot, bridge));
                    break;
                }
                Err(e) if link_exists(&bridge) => {
                    let _ = e; // taken by a concurrent testbed: next slot
                }
                Err(e) => return Err(e.context("create underlay bridge")),
            }
        }
        let (slot, bridge) = claimed.ok_or_else(|| anyhow!("no free testbed slot"))?;
        shared.record(|s| {
            s.bridge = Some(bridge.clone());
            s.links.push(bridge.clone());
        })?;
        self.slot = slot;
        self.id = bridge.clone();
        self.bridge = bridge.clone();
        let [a, b] = UNDERLAY_NET;
        ip(&[
            "addr",
            "add",
            &format!("{a}.{b}.{slot}.{BRIDGE_HOST_OCTET}/24"),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;

        // 2. Let bridged traffic through FORWARD (a host dockerd sets its policy to DROP).
        let rule: Vec<String> = ["-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        run_ok(
            Command::new("iptables")
                .args(["-w", "-I", "FORWARD"])
                .args(&rule),
        )?;
        shared.record(|s| s.iptables_rule = Some(rule))?;

        // 3. Namespaces and veths.
        for i in 1..=cfg.vms {
            let name = format!("vm{i}");
            let netns = format!("{bridge}-{name}");
            let host_veth = format!("{bridge}v{i}");
            let vm_ip = Ipv4Addr::new(a, b, slot, i as u8);
            let vdir = self.dir.join(&name);
            fs::create_dir_all(vdir.join("logs"))?;

            ip(&["netns", "add", &netns])?;
            shared.record(|s| s.netns.push(netns.clone()))?;
            ip(&[
                "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ])?;
            shared.record(|s| s.links.push(host_veth.clone()))?;
            ip(&["link", "set", &host_veth, "master", &bridge])?;
            ip(&["link", "set", &host_veth, "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{vm_ip}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;

            let docker_host = if cfg.docker {
                format!("unix://{}", vdir.join("docker.sock").display())
            } else {
                String::new()
            };
            self.vms.push(Vm {
                index: i,
                name,
                netns,
                ip: vm_ip,
                cloud: None,
                public_ip: None,
                docker_host,
                dir: vdir,
                host_veth,
                shared: shared.clone(),
            });
        }

        // 3b. Clouds: a NAT router per cloud on the bridge, its VMs on a LAN behind it.
        for (c, cloud) in cfg.clouds.iter().enumerate() {
            self.build_cloud(c + 1, cloud, cfg.docker)?;
        }

        if !cfg.docker {
            return Ok(());
        }

        // 4. One dockerd per VM, all started before polling any.
        for vm in &self.vms {
            self.start_dockerd(vm, cfg)?;
        }
        for vm in &self.vms {
            self.wait_dockerd(vm, cfg.docker_ready_timeout)?;
        }

        // 5. Busybox image, rootfs built once.
        if cfg.import_busybox {
            let tar = self.build_busybox_rootfs()?;
            let tar_s = tar.to_string_lossy().into_owned();
            let mut pending = Vec::new();
            for vm in &self.vms {
                let mut c = vm.docker_cmd();
                c.args([
                    "import",
                    "--change",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--change",
                    "CMD [\"sh\"]",
                    &tar_s,
                    BUSYBOX_IMAGE,
                ]);
                pending.push((vm.name.clone(), thread::spawn(move || run_ok(&mut c))));
            }
            for (name, h) in pending {
                h.join()
                    .map_err(|_| anyhow!("import thread panicked"))?
                    .with_context(|| format!("import busybox into {name}"))?;
            }
        }
        Ok(())
    }

    /// Cloud `c` (1-based): router namespace `<bridge>-r<c>` with `out0` on the bridge
    /// (public address) and a `lan0` bridge holding the private network; masquerading out of
    /// the LAN; the [`CLOUD_PORTS`] forwarded to the first VM; VMs with a default route via
    /// the router.
    fn build_cloud(&mut self, c: usize, cloud: &CloudConfig, docker: bool) -> Result<()> {
        let shared = self.shared.clone();
        let bridge = self.bridge.clone();
        let [a, b] = UNDERLAY_NET;
        let public_ip = Ipv4Addr::new(a, b, self.slot, ROUTER_OCTET_BASE + c as u8);
        let netns = format!("{bridge}-r{c}");
        let host_veth = format!("{bridge}r{c}");
        let [p0, p1, p2] = cloud.private_net;
        let lan = format!("{p0}.{p1}.{p2}.0/24");
        let gateway = Ipv4Addr::new(p0, p1, p2, 1);

        ip(&["netns", "add", &netns])?;
        shared.record(|s| s.netns.push(netns.clone()))?;
        ip(&[
            "link", "add", &host_veth, "type", "veth", "peer", "name", "out0", "netns", &netns,
        ])?;
        shared.record(|s| s.links.push(host_veth.clone()))?;
        ip(&["link", "set", &host_veth, "master", &bridge])?;
        ip(&["link", "set", &host_veth, "up"])?;
        let rip = |args: &[&str]| -> Result<String> {
            let mut full = vec!["-n", netns.as_str()];
            full.extend_from_slice(args);
            ip(&full)
        };
        rip(&["link", "set", "lo", "up"])?;
        rip(&["addr", "add", &format!("{public_ip}/24"), "dev", "out0"])?;
        rip(&["link", "set", "out0", "up"])?;
        rip(&["link", "add", "lan0", "type", "bridge"])?;
        rip(&["addr", "add", &format!("{gateway}/24"), "dev", "lan0"])?;
        rip(&["link", "set", "lan0", "up"])?;
        let in_router = |program: &str, args: &[&str]| -> Result<String> {
            run_ok(
                Command::new("nsenter")
                    .arg(format!("--net=/var/run/netns/{netns}"))
                    .arg("--")
                    .arg(program)
                    .args(args),
            )
        };
        in_router("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        in_router(
            "iptables",
            &[
                "-w",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                &lan,
                "-o",
                "out0",
                "-j",
                "MASQUERADE",
            ],
        )?;
        let router = Router {
            index: c,
            netns: netns.clone(),
            public_ip,
            host_veth: host_veth.clone(),
        };

        for k in 0..cloud.vms {
            let i = self.vms.len() + 1;
            let name = format!("vm{i}");
            let vm_netns = format!("{bridge}-{name}");
            let vm_ip = Ipv4Addr::new(p0, p1, p2, 11 + k as u8);
            let vdir = self.dir.join(&name);
            fs::create_dir_all(vdir.join("logs"))?;
            ip(&["netns", "add", &vm_netns])?;
            shared.record(|s| s.netns.push(vm_netns.clone()))?;
            let lan_port = format!("lan{}", k + 1);
            rip(&[
                "link", "add", &lan_port, "type", "veth", "peer", "name", "eth0", "netns",
                &vm_netns,
            ])?;
            rip(&["link", "set", &lan_port, "master", "lan0"])?;
            rip(&["link", "set", &lan_port, "up"])?;
            let vip = |args: &[&str]| -> Result<String> {
                let mut full = vec!["-n", vm_netns.as_str()];
                full.extend_from_slice(args);
                ip(&full)
            };
            vip(&["link", "set", "lo", "up"])?;
            vip(&["addr", "add", &format!("{vm_ip}/24"), "dev", "eth0"])?;
            vip(&["link", "set", "eth0", "up"])?;
            vip(&["route", "add", "default", "via", &gateway.to_string()])?;
            let docker_host = if docker {
                format!("unix://{}", vdir.join("docker.sock").display())
            } else {
                String::new()
            };
            let vm = Vm {
                index: i,
                name,
                netns: vm_netns,
                ip: vm_ip,
                cloud: Some(c),
                public_ip: Some(public_ip),
                docker_host,
                dir: vdir,
                host_veth: host_veth.clone(),
                shared: shared.clone(),
            };
            if k == 0 {
                for (proto, port) in CLOUD_PORTS {
                    router.forward(proto, port, vm.ip)?;
                }
            }
            self.vms.push(vm);
        }
        self.routers.push(router);
        Ok(())
    }

    fn start_dockerd(&self, vm: &Vm, cfg: &TestbedConfig) -> Result<()> {
        let data = vm.dir.join("data");
        let exec = vm.dir.join("exec");
        let config = vm.dir.join("daemon.json");
        // Own config file: the host's /etc/docker/daemon.json would clash with our flags.
        let mut conf = serde_json::Map::new();
        if let Some(sd) = &cfg.storage_driver {
            conf.insert("storage-driver".into(), sd.clone().into());
        }
        fs::write(&config, serde_json::to_vec(&conf)?)?;
        let ns = format!("{}-{}", self.bridge, vm.name);
        let log = fs::File::create(vm.dir.join("logs/dockerd.log"))?;
        let mut cmd = vm.cmd("dockerd");
        cmd.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(&data)
            .arg("--exec-root")
            .arg(&exec)
            .arg("--pidfile")
            .arg(vm.dir.join("docker.pid"))
            .arg("-H")
            .arg(&vm.docker_host)
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            // A registry a suite runs on a VM of the underlay is plain HTTP.
            .args(["--insecure-registry", "10.200.0.0/16"])
            .arg("--containerd-namespace")
            .arg(&ns)
            .arg("--containerd-plugins-namespace")
            .arg(format!("{ns}-p"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let exec_s = exec.clone();
        self.shared.record(|s| {
            s.vms.push(VmState {
                name: vm.name.clone(),
                docker_sock: Some(vm.docker_host.clone()),
                exec_root: Some(exec_s),
            })
        })?;
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        self.shared
            .record_proc(child, PidKind::Dockerd, format!("{}:dockerd", vm.name))?;
        Ok(())
    }

    fn wait_dockerd(&self, vm: &Vm, timeout: Duration) -> Result<()> {
        let pid = self
            .shared
            .procs()
            .iter()
            .find(|p| {
                p.rec.kind == PidKind::Dockerd && p.rec.what == format!("{}:dockerd", vm.name)
            })
            .map(|p| p.rec.pid)
            .ok_or_else(|| anyhow!("no dockerd recorded for {}", vm.name))?;
        let log = vm.dir.join("logs/dockerd.log");
        poll_until(timeout, &format!("dockerd of {} answers", vm.name), || {
            if !vm.is_running_any(pid) {
                let tail = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                bail!(
                    "dockerd of {} exited; log tail:\n{}",
                    vm.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let out = output_with_timeout(
                vm.docker_cmd()
                    .args(["info", "--format", "{{.ServerVersion}}"]),
                Duration::from_secs(10),
            )?;
            Ok(out.status.success())
        })?;
        // Record its children (containerd) so they are stopped even if dockerd is killed.
        for c in children_of(pid) {
            if let Some(start) = proc_start(c) {
                let rec = RecordedPid {
                    pid: c,
                    start,
                    kind: PidKind::DockerChild,
                    what: format!("{}:{}", vm.name, cmdline(c)),
                };
                self.shared.record(|s| s.pids.push(rec.clone()))?;
                self.shared.procs().push(Proc { rec, child: None });
            }
        }
        Ok(())
    }

    fn build_busybox_rootfs(&self) -> Result<PathBuf> {
        let root = self.dir.join("rootfs");
        for d in [
            "bin", "sbin", "etc", "proc", "sys", "dev", "root", "tmp", "var", "run", "usr/bin",
            "usr/sbin",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::copy(BUSYBOX_BIN, root.join("bin/busybox")).context("copy busybox")?;
        let list = run_ok(Command::new(BUSYBOX_BIN).arg("--list"))?;
        for applet in list.lines().map(str::trim).filter(|a| {
            !a.is_empty() && *a != "busybox" && a.chars().all(|c| c.is_ascii_graphic() && c != '/')
        }) {
            let link = root.join("bin").join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", &link)?;
            }
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        fs::write(root.join("etc/group"), "root:x:0:\n")?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        let tar = self.dir.join("rootfs.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        )?;
        Ok(tar)
    }

    /// The testbed's id (= its bridge name, unique on the machine while it runs).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The testbed's own directory (removed at teardown).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Name of the underlay bridge.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The host's address on the underlay (10.200.<slot>.254).
    pub fn bridge_ip(&self) -> Ipv4Addr {
        let [a, b] = UNDERLAY_NET;
        Ipv4Addr::new(a, b, self.slot, BRIDGE_HOST_OCTET)
    }

    /// The underlay network, e.g. "10.200.7.0/24".
    pub fn underlay_cidr(&self) -> String {
        let [a, b] = UNDERLAY_NET;
        format!("{a}.{b}.{}.0/24", self.slot)
    }

    pub fn vms(&self) -> &[Vm] {
        &self.vms
    }

    /// The VM at 0-based position `i` (panics when out of range, like indexing).
    pub fn vm(&self, i: usize) -> &Vm {
        &self.vms[i]
    }

    /// The public address of cloud `c` (1-based): its router's address on the bridge.
    pub fn cloud_public_ip(&self, c: usize) -> Option<Ipv4Addr> {
        self.routers
            .iter()
            .find(|r| r.index == c)
            .map(|r| r.public_ip)
    }

    /// Forwards `proto` (`tcp`/`udp`) `port` of the public address of `vm`'s cloud to `vm`
    /// (the cloud's first VM has [`CLOUD_PORTS`] already).
    pub fn forward(&self, vm: &Vm, proto: &str, port: u16) -> Result<()> {
        let router = vm
            .cloud
            .and_then(|c| self.routers.iter().find(|r| r.index == c))
            .ok_or_else(|| anyhow!("{} is not in a cloud", vm.name))?;
        router.forward(proto, port, vm.ip)
    }

    /// Starts recording every packet that crosses the bridge ("the internet" of a clouds
    /// testbed, the underlay otherwise) to `<testbed dir>/<name>.pcap`, and returns once
    /// tcpdump listens. Stop it with [`Testbed::stop_capture`] (teardown stops it too).
    pub fn capture(&self, name: &str) -> Result<Capture> {
        if which("tcpdump").is_none() {
            bail!("`tcpdump` not found (run tests/install-deps.sh)");
        }
        let path = self.dir.join(format!("{name}.pcap"));
        let log = self.dir.join(format!("{name}.tcpdump.log"));
        let f = fs::File::create(&log)?;
        // -U and --immediate-mode: each packet is written as it comes (on SIGTERM tcpdump drops
        // what the kernel still buffers); -Z root: keep the right to write into our directory.
        let child = Command::new("tcpdump")
            .args([
                "-i",
                &self.bridge,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("spawn tcpdump")?;
        let pid = self
            .shared
            .record_proc(child, PidKind::Spawned, format!("capture:{name}"))?;
        let capture = Capture { pid, path, log };
        poll_until(Duration::from_secs(10), "tcpdump to listen", || {
            if !self.is_running_pid(pid) {
                bail!(
                    "tcpdump exited: {}",
                    fs::read_to_string(&capture.log).unwrap_or_default()
                );
            }
            Ok(fs::read_to_string(&capture.log)
                .unwrap_or_default()
                .contains("listening on"))
        })?;
        Ok(capture)
    }

    /// Stops a capture (SIGTERM: tcpdump flushes and closes the file) and returns its bytes.
    pub fn stop_capture(&self, capture: &Capture) -> Result<Vec<u8>> {
        let taken = {
            let mut procs = self.shared.procs();
            procs
                .iter()
                .position(|p| p.rec.pid == capture.pid)
                .map(|i| procs.remove(i))
        };
        if let Some(mut p) = taken {
            stop_procs(std::slice::from_mut(&mut p), "TERM", Duration::from_secs(5));
            self.shared
                .record(|s| s.pids.retain(|r| r.pid != capture.pid))?;
        }
        fs::read(&capture.path).with_context(|| format!("read {}", capture.path.display()))
    }

    fn is_running_pid(&self, pid: u32) -> bool {
        let mut procs = self.shared.procs();
        match procs.iter_mut().find(|p| p.rec.pid == pid) {
            Some(Proc { child: Some(c), .. }) => matches!(c.try_wait(), Ok(None)),
            Some(p) => same_alive(p.rec.pid, p.rec.start),
            None => false,
        }
    }

    /// Network partition: sets the VM's host-side veth down; nothing reaches it.
    pub fn cut(&self, vm: &Vm) -> Result<()> {
        ip(&["link", "set", &vm.host_veth, "down"]).map(|_| ())
    }

    /// Ends a [`Testbed::cut`]: the VM's host-side veth up again.
    pub fn heal(&self, vm: &Vm) -> Result<()> {
        ip(&["link", "set", &vm.host_veth, "up"]).map(|_| ())
    }

    /// What this testbed created so far (for leftover checks after shutdown).
    pub fn inventory(&self) -> Inventory {
        let st = self.shared.state();
        Inventory {
            dir: self.dir.clone(),
            netns: st.netns.clone(),
            links: st.links.clone(),
            pids: st.pids.iter().map(|p| (p.pid, p.start)).collect(),
            iptables_rule: st.iptables_rule.clone(),
            containerd_sockets: st
                .vms
                .iter()
                .filter_map(|v| v.exec_root.as_ref())
                .map(|e| e.join("containerd/containerd.sock").display().to_string())
                .collect(),
        }
    }

    /// Tears everything down (safe to call again; `Drop` calls it too). Errors of single
    /// steps are collected; the state file is kept when anything could not be removed.
    pub fn shutdown(&mut self) -> Result<()> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        let procs = std::mem::take(&mut *self.shared.procs());
        let state = self.shared.state().clone();
        let errors = teardown(&state, procs, &self.shared.state_path);
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("testbed {} teardown: {}", self.id, errors.join("; "))
        }
    }
}

impl Vm {
    fn is_running_any(&self, pid: u32) -> bool {
        let mut procs = self.shared.procs();
        match procs.iter_mut().find(|p| p.rec.pid == pid) {
            Some(Proc { child: Some(c), .. }) => matches!(c.try_wait(), Ok(None)),
            Some(p) => same_alive(p.rec.pid, p.rec.start),
            None => false,
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("testbed: {e:#}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Teardown (shared by shutdown and the sweeper)

/// Sends `sig` to every live process, waits up to `grace`, SIGKILLs the rest and waits
/// again (reaping our children). Returns the exit statuses of those we could reap.
fn stop_procs(procs: &mut [Proc], sig: &str, grace: Duration) -> Vec<Option<ExitStatus>> {
    let mut status: Vec<Option<ExitStatus>> = vec![None; procs.len()];
    let alive = |p: &mut Proc, st: &mut Option<ExitStatus>| -> bool {
        match p.child.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(Some(s)) => {
                    *st = Some(s);
                    false
                }
                Ok(None) => true,
                Err(_) => same_alive(p.rec.pid, p.rec.start),
            },
            None => same_alive(p.rec.pid, p.rec.start),
        }
    };
    for (p, st) in procs.iter_mut().zip(status.iter_mut()) {
        if alive(p, st) {
            signal(p.rec.pid, sig);
        }
    }
    for (round_sig, wait) in [(None, grace), (Some("KILL"), Duration::from_secs(10))] {
        if let Some(s) = round_sig {
            for (p, st) in procs.iter_mut().zip(status.iter_mut()) {
                if alive(p, st) {
                    signal(p.rec.pid, s);
                }
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            let mut any = false;
            for (p, st) in procs.iter_mut().zip(status.iter_mut()) {
                any |= alive(p, st);
            }
            if !any || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    status
}

fn teardown(state: &State, mut procs: Vec<Proc>, state_path: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    // Processes recorded in the state but without a handle here (sweeper, or handles
    // already taken): stop them by pid + start time.
    let known: BTreeSet<u32> = procs.iter().map(|p| p.rec.pid).collect();
    for rec in &state.pids {
        if !known.contains(&rec.pid) {
            procs.push(Proc {
                rec: rec.clone(),
                child: None,
            });
        }
    }
    let (mut spawned, rest): (Vec<Proc>, Vec<Proc>) = procs
        .into_iter()
        .partition(|p| p.rec.kind == PidKind::Spawned);
    let (mut dockerds, mut docker_children): (Vec<Proc>, Vec<Proc>) = rest
        .into_iter()
        .partition(|p| p.rec.kind == PidKind::Dockerd);

    // 1. Spawned processes (agents) first.
    stop_procs(&mut spawned, "TERM", Duration::from_secs(10));

    // 2. Containers of every live daemon, in parallel, so no shim outlives them.
    let mut rm = Vec::new();
    for vm in &state.vms {
        let Some(sock) = vm.docker_sock.clone() else {
            continue;
        };
        let name = vm.name.clone();
        rm.push(thread::spawn(move || -> Result<()> {
            let ps = output_with_timeout(
                Command::new("docker").args(["-H", &sock, "ps", "-aq"]),
                Duration::from_secs(15),
            )?;
            if !ps.status.success() {
                return Ok(()); // daemon not up: nothing to remove through it
            }
            let ids: Vec<String> = String::from_utf8_lossy(&ps.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let out = output_with_timeout(
                    Command::new("docker")
                        .args(["-H", &sock, "rm", "-f", "-v"])
                        .args(&ids),
                    Duration::from_secs(60),
                )?;
                check(&format!("docker rm -f on {name}"), out)?;
            }
            Ok(())
        }));
    }
    for h in rm {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push("docker rm thread panicked".into()),
        }
    }

    // 3. The daemons, then their children (containerd) should any survive.
    stop_procs(&mut dockerds, "TERM", Duration::from_secs(20));
    stop_procs(&mut docker_children, "TERM", Duration::from_secs(10));

    // 4. Stray shims of our own containerds (named by our unique socket path).
    let sockets: Vec<String> = state
        .vms
        .iter()
        .filter_map(|v| v.exec_root.as_ref())
        .map(|e| e.join("containerd/containerd.sock").display().to_string())
        .collect();
    if !sockets.is_empty() {
        let mut strays: Vec<Proc> = all_pids()
            .into_iter()
            .filter(|&p| {
                let cl = cmdline(p);
                sockets.iter().any(|s| cl.contains(s.as_str()))
            })
            .filter_map(|pid| {
                Some(Proc {
                    rec: RecordedPid {
                        pid,
                        start: proc_start(pid)?,
                        kind: PidKind::DockerChild,
                        what: "shim".into(),
                    },
                    child: None,
                })
            })
            .collect();
        stop_procs(&mut strays, "KILL", Duration::from_secs(5));
    }

    // 5. Mounts under our directory, deepest first.
    let mut mounts = mounts_under(&state.dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    for m in &mounts {
        let ok = Command::new("umount")
            .arg(m)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(m)
                .stderr(Stdio::null())
                .status();
        }
    }
    let left = mounts_under(&state.dir);
    if !left.is_empty() {
        errors.push(format!("mounts left: {left:?}"));
    }

    // 6. The iptables rule, by its exact spec.
    if let Some(rule) = &state.iptables_rule {
        for _ in 0..10 {
            if !iptables_rule_present(rule) {
                break;
            }
            if let Err(e) = run_ok(
                Command::new("iptables")
                    .args(["-w", "-D", "FORWARD"])
                    .args(rule),
            ) {
                errors.push(format!("{e:#}"));
                break;
            }
        }
    }

    // 7. Namespaces, then links (veth host ends, bridge last).
    for ns in &state.netns {
        if netns_exists(ns)
            && let Err(e) = ip(&["netns", "del", ns])
        {
            errors.push(format!("{e:#}"));
        }
    }
    for l in state.links.iter().rev() {
        // A veth goes away by itself when its peer's namespace is destroyed, asynchronously:
        // a failed delete only counts if the link is still there afterwards.
        if link_exists(l)
            && let Err(e) = ip(&["link", "del", "dev", l])
            && link_exists(l)
        {
            errors.push(format!("{e:#}"));
        }
    }

    // 8. The directory (never while something is still mounted below it).
    if errors.is_empty() {
        if state.dir.exists()
            && let Err(e) = fs::remove_dir_all(&state.dir)
        {
            errors.push(format!("remove {}: {e}", state.dir.display()));
        }
    } else {
        let _ = save_state(state_path, state);
    }
    errors
}

/// Tears down testbeds under `base` whose owner process is gone (a killed test run), using
/// only what their state files recorded. Returns one line per testbed swept.
pub fn sweep_leftovers(base: &Path) -> Vec<String> {
    let mut report = Vec::new();
    let Ok(rd) = fs::read_dir(base) else {
        return report;
    };
    let me = std::process::id();
    for entry in rd.flatten() {
        let dir = entry.path();
        let path = dir.join("state.json");
        let Ok(state) = load_state(&path) else {
            continue;
        };
        if same_alive(state.owner_pid, state.owner_start) || state.dir != dir {
            continue;
        }
        // Claim it: only one sweeper wins the rename.
        let claimed = dir.join(format!("state.sweeping.{me}.json"));
        if fs::rename(&path, &claimed).is_err() {
            continue;
        }
        let errors = teardown(&state, Vec::new(), &path);
        let _ = fs::remove_file(&claimed);
        report.push(if errors.is_empty() {
            format!("{} (owner pid {})", dir.display(), state.owner_pid)
        } else {
            format!("{}: {}", dir.display(), errors.join("; "))
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mount(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount(r"/tmp/x\011"), "/tmp/x\t");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount(r"/tail\04"), r"/tail\04");
    }

    #[test]
    fn parses_own_proc_stat() {
        let (state, ppid, start) = proc_stat(std::process::id()).expect("own stat");
        assert!(state == 'R' || state == 'S');
        assert!(ppid > 0);
        assert!(start > 0);
        assert!(same_alive(std::process::id(), start));
        assert!(!same_alive(std::process::id(), start + 1));
    }

    #[test]
    fn rejects_bad_config() {
        let mut c = TestbedConfig::new(0);
        assert!(Testbed::start(c.clone()).is_err());
        c.vms = 1;
        c.name_prefix = "much-too-long".into();
        assert!(Testbed::start(c).is_err());
    }
}
