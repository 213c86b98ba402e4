//! smrmgr: node lifecycle. Starts, joins, stops and inspects the agent of this machine.

use std::collections::BTreeMap;
use std::io::{BufRead, Seek};
use std::net::{IpAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use agent::client::{Client, Context};
use agent::daemon::{self, AgentConfig, NodeFile};
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use smr::DEFAULT_DATA_DIR;

#[derive(Parser)]
#[command(
    name = "smrmgr",
    version,
    about = "Start, join, stop and inspect the smr agent of this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the agent: create a cluster, join one (-j/--token), or restart from the data dir.
    Start(StartArgs),
    /// Stop the agent of this data dir (SIGTERM, then SIGKILL after --timeout).
    Stop {
        #[command(flatten)]
        data: DataDir,
        #[arg(long, default_value = "30")]
        timeout: u64,
        /// Also remove the overlay devices (`smr.1`, `smr-wg`) and smr's masquerading rules from
        /// this host.
        #[arg(long)]
        clean: bool,
    },
    /// Is the agent running and healthy? Exit 0 if so, 3 if not running, 6 if not answering.
    Status {
        #[command(flatten)]
        data: DataDir,
    },
    /// Print a new join token for other nodes.
    Token {
        #[command(flatten)]
        data: DataDir,
        /// Token lifetime in hours.
        #[arg(long, default_value = "24")]
        ttl_hours: u64,
    },
    /// Remove this node from the cluster, stop it and delete its cluster state.
    Leave {
        #[command(flatten)]
        data: DataDir,
    },
    /// Write a systemd unit that runs `smrmgr start --foreground` with these flags, and enable it.
    ServiceInstall(StartArgs),
    /// Replace this node's WireGuard key: a new key pair is made here, written to
    /// <data-dir>/wireguard.key, applied to the running device and its public key published;
    /// peers stop accepting the old key once they reconcile.
    RotateKey {
        #[command(flatten)]
        data: DataDir,
    },
}

#[derive(Args, Clone)]
struct DataDir {
    /// Data directory of the agent.
    #[arg(long = "data-dir", default_value = DEFAULT_DATA_DIR, env = "SMR_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(Args, Clone)]
struct StartArgs {
    /// Agent name, unique in the cluster (e.g. smr-agent-1).
    #[arg(short = 'a', long = "agent")]
    agent: Option<String>,
    /// Domain the API is reached under (put in the node certificate).
    #[arg(short = 'd', long = "domain")]
    domain: Option<String>,
    /// This node's host name (put in the node certificate).
    #[arg(short = 'n', long = "node")]
    node: Option<String>,
    /// Join the cluster of this member's API (HOST:PORT).
    #[arg(short = 'j', long = "join")]
    join: Option<String>,
    /// Join token printed by `smrmgr token` on a member.
    #[arg(long, env = "SMR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// This node's own underlay address: what it binds and where its packets leave (default: the
    /// address of the default route).
    #[arg(long)]
    ip: Option<IpAddr>,
    /// The address other nodes reach this node at (behind NAT: the public address whose ports
    /// 1443/tcp, 9212/tcp and the WireGuard port are forwarded here). Default: --ip.
    #[arg(long = "public-ip")]
    public_ip: Option<IpAddr>,
    /// UDP port of the WireGuard device.
    #[arg(long = "wg-port")]
    wg_port: Option<u16>,
    #[command(flatten)]
    data: DataDir,
    /// Docker daemon to run containers on (default: DOCKER_HOST or the local socket).
    #[arg(long = "docker-host", env = "DOCKER_HOST")]
    docker_host: Option<String>,
    #[arg(long = "api-port", default_value = "1443")]
    api_port: u16,
    #[arg(long = "raft-port", default_value = "9212")]
    raft_port: u16,
    /// Node label KEY=VALUE (repeatable), used by node selectors.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Cluster network, when this node creates the cluster.
    #[arg(long, default_value = "10.10.0.0/16")]
    cidr: ipnet::Ipv4Net,
    /// Prefix length of each node's subnet, when this node creates the cluster.
    #[arg(long = "subnet-len", default_value = "24")]
    subnet_len: u8,
    /// Overlay backend, fixed by the node that creates the cluster: wireguard (encrypted, works
    /// across clouds and NAT; the default), vxlan or host-gw (clear text: trusted networks only),
    /// or none (no overlay). A joining node that names another backend than the cluster's is
    /// refused.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(daemon::BACKENDS))]
    backend: Option<String>,
    /// Underlay interface for the overlay (default: the one holding --ip).
    #[arg(long)]
    iface: Option<String>,
    /// Run no replicas on this node (control plane only).
    #[arg(long = "no-workloads")]
    no_workloads: bool,
    /// How long a node may stay silent before the leader places its replicas on other nodes
    /// (5s to 1h). The leader's value applies: give every node the same.
    #[arg(long = "node-timeout", default_value = "15s", value_parser = parse_node_timeout)]
    node_timeout: std::time::Duration,
    /// Keep the cluster state in an existing etcd cluster instead of the embedded Raft store:
    /// etcd://HOST:PORT[,HOST:PORT...]. Every agent of the cluster names the same etcd.
    #[arg(long = "store", value_name = "URL")]
    store: Option<String>,
    /// CA certificate (PEM) that signed the etcd server certificates; enables TLS to etcd.
    #[arg(long = "etcd-cacert", requires = "store")]
    etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long = "etcd-cert", requires_all = ["store", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long = "etcd-key", requires_all = ["store", "etcd_cert"])]
    etcd_key: Option<PathBuf>,
    /// etcd user, when etcd authentication is enabled (with --etcd-password-file).
    #[arg(long = "etcd-user", requires_all = ["store", "etcd_password_file"])]
    etcd_user: Option<String>,
    /// File holding the password of --etcd-user (read at each start, never copied).
    #[arg(long = "etcd-password-file", requires_all = ["store", "etcd_user"])]
    etcd_password_file: Option<PathBuf>,
    /// Prefix of this cluster's keys in etcd.
    #[arg(long = "etcd-prefix", default_value = "/smr/")]
    etcd_prefix: String,
    /// Run in the foreground instead of starting a background agent.
    #[arg(long)]
    foreground: bool,
    /// How long to wait for a background agent to serve, in seconds.
    #[arg(long, default_value = "90")]
    wait: u64,
}

fn parse_node_timeout(s: &str) -> Result<std::time::Duration, String> {
    let timeout = agent::definitions::parse_duration(s)?;
    let (min, max) = (
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(3600),
    );
    if timeout < min || timeout > max {
        return Err(format!(
            "{s} is outside 5s..1h (nodes report every {}s)",
            agent::controller::reconcile::HEARTBEAT.as_secs()
        ));
    }
    Ok(timeout)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Start(args) if args.foreground => foreground(args),
        Cmd::Start(args) => background(args),
        Cmd::Stop {
            data,
            timeout,
            clean,
        } => stop(&data.data_dir, Duration::from_secs(timeout))
            .and_then(|_| if clean { clean_network() } else { Ok(()) })
            .map(|_| ExitCode::SUCCESS),
        Cmd::Status { data } => status(&data.data_dir),
        Cmd::Token { data, ttl_hours } => token(&data.data_dir, ttl_hours),
        Cmd::Leave { data } => leave(&data.data_dir),
        Cmd::ServiceInstall(args) => service_install(args),
        Cmd::RotateKey { data } => rotate_key(&data.data_dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smrmgr: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn pid_path(dir: &Path) -> PathBuf {
    dir.join("smr.pid")
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("smr.log")
}

/// The pid of the running agent of this data dir, if any.
fn running_pid(dir: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(pid_path(dir)).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    kill(pid, None).ok().map(|_| pid)
}

fn existing_node(dir: &Path) -> Option<NodeFile> {
    let text = std::fs::read_to_string(daemon::node_file_path(dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The address the default route leaves from (no packet is sent).
fn default_ip() -> anyhow::Result<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket
        .connect("192.0.2.1:9")
        .context("no default route; pass --ip")?;
    Ok(socket.local_addr()?.ip())
}

fn agent_config(args: &StartArgs) -> anyhow::Result<AgentConfig> {
    let dir = &args.data.data_dir;
    let existing = existing_node(dir);
    let name = match (&args.agent, &existing) {
        (Some(name), _) => name.clone(),
        (None, Some(node)) => node.name.clone(),
        (None, None) => bail!("-a/--agent NAME is required for a new node"),
    };
    let ip = match (args.ip, &existing) {
        (Some(ip), _) => ip,
        (None, Some(node)) => node.ip.parse().context("node.json has a bad ip")?,
        (None, None) => default_ip()?,
    };
    let public_ip = args.public_ip.or_else(|| {
        existing
            .as_ref()
            .and_then(|n| n.public_ip.as_deref())
            .and_then(|p| p.parse().ok())
    });
    let wg_port = args
        .wg_port
        .or_else(|| existing.as_ref().map(|n| n.wg_port))
        .unwrap_or(overlay::wireguard::WG_PORT);
    if wg_port == 0 {
        bail!("--wg-port must be 1..65535");
    }
    let host = args
        .node
        .clone()
        .or_else(|| existing.as_ref().map(|n| n.host.clone()))
        .unwrap_or_else(|| name.clone());
    let domain = args
        .domain
        .clone()
        .or_else(|| existing.as_ref().map(|n| n.domain.clone()))
        .unwrap_or_else(|| host.clone());
    if args.join.is_some() && existing.is_some() {
        eprintln!(
            "smrmgr: {} already belongs to a cluster; restarting it (ignoring --join)",
            dir.display()
        );
    }
    Ok(AgentConfig {
        name,
        domain,
        host,
        join: if existing.is_some() {
            None
        } else {
            args.join.clone()
        },
        token: args.token.clone(),
        ip,
        public_ip,
        wg_port,
        data_dir: dir.clone(),
        docker_host: args.docker_host.clone(),
        api_port: args.api_port,
        raft_port: args.raft_port,
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        cidr: args.cidr,
        subnet_len: args.subnet_len,
        backend: args.backend.clone(),
        iface: args.iface.clone(),
        workloads: !args.no_workloads,
        node_timeout: args.node_timeout,
        etcd: match &args.store {
            None => None,
            Some(url) if url == "raft" || url == "embedded" => None,
            Some(url) => {
                let absolute = |p: &Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
                    p.as_ref()
                        .map(|p| std::path::absolute(p).context("--etcd-* path"))
                        .transpose()
                };
                let settings = daemon::EtcdSettings {
                    url: url.clone(),
                    prefix: args.etcd_prefix.clone(),
                    cacert: absolute(&args.etcd_cacert)?,
                    cert: absolute(&args.etcd_cert)?,
                    key: absolute(&args.etcd_key)?,
                    user: args.etcd_user.clone(),
                    password_file: absolute(&args.etcd_password_file)?,
                };
                // Reported here rather than by the background agent.
                settings.store_config()?;
                Some(settings)
            }
        },
    })
}

fn foreground(args: StartArgs) -> anyhow::Result<ExitCode> {
    let config = agent_config(&args)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SMR_LOG")
                .unwrap_or_else(|_| "info,openraft=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(pid) = running_pid(&dir)
        && pid != nix::unistd::getpid()
    {
        bail!(
            "an agent is already running for {} (pid {pid})",
            dir.display()
        );
    }
    std::fs::write(pid_path(&dir), std::process::id().to_string())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            let _ = tx.send(true);
        });
        daemon::run(config, rx).await
    });
    let _ = std::fs::remove_file(pid_path(&dir));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Starts `smrmgr start --foreground` detached, logging to `<data-dir>/smr.log`, and waits until it serves.
fn background(args: StartArgs) -> anyhow::Result<ExitCode> {
    let config = agent_config(&args)?;
    let dir = config.data_dir.clone();
    if let Some(pid) = running_pid(&dir) {
        println!(
            "smr agent {} is already running (pid {pid}); log: {}",
            config.name,
            log_path(&dir).display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(&dir))?;
    let log_start = log_file.metadata()?.len();
    let _ = std::fs::remove_file(daemon::context_path(&dir));
    let mut command = std::process::Command::new(std::env::current_exe()?);
    // The token goes by environment, not argv, so it does not show in the process list.
    let mut child_args = Vec::new();
    let mut args_iter = std::env::args_os().skip(1);
    while let Some(arg) = args_iter.next() {
        if arg == "--token" {
            args_iter.next();
        } else if !arg.to_string_lossy().starts_with("--token=") {
            child_args.push(arg);
        }
    }
    command.args(child_args).arg("--foreground");
    if let Some(token) = &config.token {
        command.env("SMR_TOKEN", token);
    }
    command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0);
    let mut child = command.spawn().context("starting the agent")?;
    let pid = child.id();
    let log = log_path(&dir);
    let api_url = wait_serving(&dir, Duration::from_secs(args.wait), || {
        match child.try_wait() {
            Ok(Some(status)) => Err(anyhow!(
                "the agent exited ({status}) before serving:\n{}",
                log_tail(&log, log_start)
            )),
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        }
    })
    .with_context(|| format!("see {}", log.display()))?;
    println!(
        "smr agent {} is serving on {api_url} (pid {pid}); log: {}",
        config.name,
        log.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Polls until the agent of `dir` answers with the admin context it wrote; `alive` fails fast when
/// the agent is gone. Records the context as smrctl's default and returns the API URL.
fn wait_serving(
    dir: &Path,
    wait: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let context = daemon::context_path(dir);
    let deadline = Instant::now() + wait;
    let runtime = tokio::runtime::Runtime::new()?;
    loop {
        alive()?;
        if let Ok(ctx) = Context::load(&context)
            && let Ok(client) = Client::from_context(&ctx)
            && runtime.block_on(client.health()).is_ok()
        {
            record_default_context(&context);
            return Ok(ctx.api_url);
        }
        if Instant::now() > deadline {
            bail!("the agent did not serve within {}s", wait.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log written since `from`, for error messages (last 20 lines).
fn log_tail(path: &Path, from: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let _ = file.seek(std::io::SeekFrom::Start(from));
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn record_default_context(context: &Path) {
    let pointer = smr::default_context_pointer();
    if let Some(parent) = pointer.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Ok(absolute) = std::fs::canonicalize(context) {
        let _ = std::fs::write(pointer, absolute.to_string_lossy().as_bytes());
    }
}

fn stop(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let Some(pid) = running_pid(dir) else {
        println!("no agent is running for {}", dir.display());
        return Ok(());
    };
    kill(pid, Signal::SIGTERM).with_context(|| format!("signalling pid {pid}"))?;
    let deadline = Instant::now() + timeout;
    while kill(pid, None).is_ok() {
        if Instant::now() > deadline {
            eprintln!(
                "smrmgr: agent {pid} did not stop within {}s; killing it",
                timeout.as_secs()
            );
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopped the agent (pid {pid})");
    Ok(())
}

/// Removes what the agent put in this host's network: the overlay device and the masquerading
/// chain. The `cluster` Docker network stays (it may still have containers).
fn clean_network() -> anyhow::Result<()> {
    use overlay::kernel::Kernel as _;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kernel = overlay::NetlinkKernel::new()?;
        for dev in [overlay::VXLAN_DEV, overlay::wireguard::WG_DEV] {
            if kernel.delete_link(dev).await? {
                println!("removed {dev}");
            }
        }
        if overlay::masq::remove_masquerade(&overlay::masq::IptablesCmd::default()).await? {
            println!("removed smr's masquerading rules");
        }
        anyhow::Ok(())
    })
}

fn client_for(dir: &Path) -> anyhow::Result<Client> {
    let context = daemon::context_path(dir);
    let ctx = Context::load(&context)
        .map_err(|e| anyhow!("{e} (is the agent of {} started?)", dir.display()))?;
    Ok(Client::from_context(&ctx)?)
}

fn status(dir: &Path) -> anyhow::Result<ExitCode> {
    let Some(pid) = running_pid(dir) else {
        println!("not running ({})", dir.display());
        return Ok(ExitCode::from(3));
    };
    let client = client_for(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    match runtime.block_on(client.health()) {
        Ok(h) => {
            let leader = h
                .leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "none".into());
            println!(
                "running (pid {pid}): node {} id {} is {}, leader {leader}, revision {}, api {}",
                h.node,
                h.id,
                h.state,
                h.revision,
                client.base_url()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("running (pid {pid}) but not answering: {e}");
            Ok(ExitCode::from(6))
        }
    }
}

fn token(dir: &Path, ttl_hours: u64) -> anyhow::Result<ExitCode> {
    let client = client_for(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let token = runtime.block_on(client.token(Some(Duration::from_secs(ttl_hours * 3600))))?;
    println!("{}", token.token);
    Ok(ExitCode::SUCCESS)
}

fn rotate_key(dir: &Path) -> anyhow::Result<ExitCode> {
    let me = existing_node(dir).ok_or_else(|| anyhow!("{} holds no node", dir.display()))?;
    let client = client_for(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let rotated = runtime
        .block_on(client.rotate_key(me.id))
        .context("rotating this node's WireGuard key")?;
    println!(
        "node {} (id {}) has a new WireGuard key; public key {}",
        me.name, me.id, rotated.public_key
    );
    Ok(ExitCode::SUCCESS)
}

fn leave(dir: &Path) -> anyhow::Result<ExitCode> {
    let me = existing_node(dir).ok_or_else(|| anyhow!("{} holds no node", dir.display()))?;
    let client = client_for(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime
        .block_on(client.remove_node(me.id))
        .context("removing this node from the cluster")?;
    // Stay up while the leader hands this node's vote to another node (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match runtime.block_on(client.health()) {
            Ok(h) if h.voters.contains(&me.id) => std::thread::sleep(Duration::from_millis(200)),
            _ => break,
        }
    }
    stop(dir, Duration::from_secs(30))?;
    for stale in ["raft", "pki"] {
        let _ = std::fs::remove_dir_all(dir.join(stale));
    }
    for stale in ["node.json", "admin.context"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    println!(
        "node {} (id {}) left the cluster; its cluster state in {} is deleted",
        me.name,
        me.id,
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn service_install(args: StartArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let mut flags: Vec<String> = std::env::args().skip(2).collect();
    flags.retain(|f| f != "--foreground");
    if !Path::new("/run/systemd/system").exists() {
        bail!("systemd is not running here; start the agent with `smrmgr start` instead");
    }
    let unit = format!(
        "[Unit]\nDescription=smr agent\nAfter=network-online.target docker.service\nWants=network-online.target\n\n\
         [Service]\nExecStart={} start --foreground {}\nRestart=on-failure\nRestartSec=2\nLimitNOFILE=65536\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        exe.display(),
        flags.join(" ")
    );
    std::fs::write("/etc/systemd/system/smr.service", unit)
        .context("writing /etc/systemd/system/smr.service")?;
    let status = std::process::Command::new("systemctl")
        .args(["daemon-reload"])
        .status()?;
    if !status.success() {
        bail!("systemctl daemon-reload failed");
    }
    let status = std::process::Command::new("systemctl")
        .args(["enable", "--now", "smr.service"])
        .status()?;
    if !status.success() {
        bail!("systemctl enable --now smr.service failed");
    }
    let api_url = wait_serving(&args.data.data_dir, Duration::from_secs(args.wait), || {
        Ok(())
    })
    .context("see `journalctl -u smr`")?;
    println!("installed smr.service; the agent is serving on {api_url}");
    Ok(ExitCode::SUCCESS)
}
