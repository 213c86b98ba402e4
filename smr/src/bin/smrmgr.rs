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
use clap::{Args, CommandFactory, Parser, Subcommand};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use smr::DEFAULT_DATA_DIR;
use smr::start::StartSettings;

/// The agent's allocator: jemalloc rather than glibc's malloc. At 50,000 objects the agent keeps
/// about 30 MiB of state in small, long-lived allocations, made between a request's short-lived
/// ones; glibc's per-thread arenas kept about 20 MiB free between them that `malloc_trim` could
/// not return (3 MiB), where jemalloc's size classes and decay return it (10 MiB less resident,
/// issue 14). Its settings (`.cargo/config.toml`): a background thread returns dirty pages after
/// about a second, also while the agent is idle.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        /// Also remove the overlay devices (`smr.1`, `smr-wg`), smr's masquerading rules and its
        /// network isolation chain from this host.
        #[arg(long)]
        clean: bool,
    },
    /// Is the agent running and healthy? Exit 0 if so, 3 if not running, 4 if degraded (it answers
    /// but refuses writes, e.g. its data dir is full; the reason is printed), 6 if not answering.
    Status {
        #[command(flatten)]
        data: DataDir,
    },
    /// Print a new join token for other nodes.
    Token {
        #[command(flatten)]
        data: DataDir,
        /// Token lifetime in hours (1 to 8760, one year).
        #[arg(long, default_value = "24", value_parser = clap::value_parser!(u64).range(1..=8760))]
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
    /// Print the shell completion script (e.g. `source <(smrmgr completion bash)`).
    Completion { shell: clap_complete::Shell },
    /// Write a consistent backup of the whole cluster state to FILE (mode 0600: it holds every
    /// secret), taken online through the local agent (a follower too).
    Backup {
        /// The backup file to write (replaced atomically if it exists).
        file: PathBuf,
        #[command(flatten)]
        data: DataDir,
    },
    /// Create a new one-node cluster from a backup FILE, in a fresh data dir (the start flags of
    /// a new node; the cluster network is the backup's). Other nodes then join it with a token.
    Restore(RestoreArgs),
    /// The cluster CA: `rotate` replaces it (cross-signed transition), `status` shows it.
    Ca {
        #[command(subcommand)]
        command: CaCmd,
    },
    /// User certificates (`smrctl context export --user`): `revoke` one user's, `list` them.
    User {
        #[command(subcommand)]
        command: UserCmd,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Revoke every certificate signed for user NAME, or one certificate by `--serial`: every
    /// node's API refuses it from its next request (403), within a second or so.
    Revoke {
        /// The user (as given to `smrctl context export --user`).
        #[arg(required_unless_present = "serial", conflicts_with = "serial")]
        name: Option<String>,
        /// One certificate's serial number, hex (`openssl x509 -noout -serial -in CERT`).
        #[arg(long)]
        serial: Option<String>,
        #[command(flatten)]
        data: DataDir,
    },
    /// The user certificates the cluster signed, and revoked ones.
    List {
        #[command(flatten)]
        data: DataDir,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Replace the cluster CA: a new CA is made and cross-signed by the current one; every node
    /// trusts both and renews its certificates from the new CA; once all have, the old CA is
    /// trusted no longer. Waits for the end and prints progress (nodes done / total).
    Rotate {
        #[command(flatten)]
        data: DataDir,
        /// How long to wait for every node, in seconds (the rotation goes on after a timeout).
        #[arg(long, default_value = "300")]
        timeout: u64,
    },
    /// The cluster CA, a rotation under way, and the CA each node's certificate comes from.
    Status {
        #[command(flatten)]
        data: DataDir,
    },
    /// Abandon the rotation under way and go back to the current CA: every node keeps trusting
    /// both CAs and renews from the current one if it had a certificate of the new one; once all
    /// have, the new CA is trusted no longer. Waits for the end and prints progress.
    Abort {
        #[command(flatten)]
        data: DataDir,
        /// How long to wait for every node, in seconds (the abort goes on after a timeout).
        #[arg(long, default_value = "300")]
        timeout: u64,
    },
}

#[derive(Args, Clone)]
struct RestoreArgs {
    /// The backup file (`smrmgr backup`).
    file: PathBuf,
    #[command(flatten)]
    settings: StartSettings,
    #[command(flatten)]
    data: DataDir,
    /// Run in the foreground instead of starting a background agent.
    #[arg(long)]
    foreground: bool,
    /// How long to wait for a background agent to serve, in seconds.
    #[arg(long, default_value = "90")]
    wait: u64,
    /// The cluster key (SMRKEY-1-...) of the cluster the backup was taken from: its secrets are
    /// opened with it and sealed again with the new cluster's key. Needed when the backup holds
    /// secrets.
    #[arg(long = "backup-key-file", value_name = "FILE")]
    backup_key_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct DataDir {
    /// Data directory of the agent.
    #[arg(long = "data-dir", default_value = DEFAULT_DATA_DIR, env = "SMR_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(Args, Clone)]
struct StartArgs {
    /// The settings that define the node; kept in node.json, so a restart needs none of them.
    #[command(flatten)]
    settings: StartSettings,
    /// Join the cluster of this member's API (HOST:PORT).
    #[arg(short = 'j', long = "join")]
    join: Option<String>,
    /// Join token printed by `smrmgr token` on a member.
    #[arg(long, env = "SMR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    data: DataDir,
    /// Run in the foreground instead of starting a background agent.
    #[arg(long)]
    foreground: bool,
    /// How long to wait for a background agent to serve, in seconds.
    #[arg(long, default_value = "90")]
    wait: u64,
    /// Quorum is lost for good: make this node's state a one-node cluster (the other nodes leave
    /// the registry, their replicas are placed again; others join with a new token). The agent
    /// must be stopped; the embedded Raft store only.
    #[arg(long = "force-new-cluster")]
    force_new_cluster: bool,
}

/// A usage error found after parsing (exit code 2, like clap's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Start(args) if args.force_new_cluster => force_new_cluster(args),
        Cmd::Start(args) if args.foreground => foreground(args),
        Cmd::Start(args) => background(args, start_child_args()),
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
        Cmd::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "smrmgr", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backup { file, data } => backup(&data.data_dir, &file),
        Cmd::Restore(args) => restore(args),
        Cmd::Ca {
            command: CaCmd::Rotate { data, timeout },
        } => ca_rotate(&data.data_dir, Duration::from_secs(timeout)),
        Cmd::Ca {
            command: CaCmd::Status { data },
        } => ca_status(&data.data_dir),
        Cmd::Ca {
            command: CaCmd::Abort { data, timeout },
        } => ca_abort(&data.data_dir, Duration::from_secs(timeout)),
        Cmd::User {
            command: UserCmd::Revoke { name, serial, data },
        } => user_revoke(&data.data_dir, name, serial),
        Cmd::User {
            command: UserCmd::List { data },
        } => user_list(&data.data_dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smrmgr: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
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
///
/// The agent holds an exclusive lock on its pid file while it runs, and the lock ends with the
/// process (kill -9 included): a pid file nobody locks is stale, whatever the pid in it names
/// now (nothing, a zombie, another program). Pid 0 stands for an agent whose pid is unreadable.
fn running_pid(dir: &Path) -> Option<Pid> {
    let file = std::fs::File::open(pid_path(dir)).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err((file, Errno::EWOULDBLOCK)) => Some(read_pid(&file).unwrap_or(Pid::from_raw(0))),
        Err(_) => None,
    }
}

fn read_pid(mut file: &std::fs::File) -> Option<Pid> {
    use std::io::Read as _;
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    Some(Pid::from_raw(text.trim().parse().ok()?))
}

/// Takes the pid file of `dir` for this process (see [`running_pid`]) and writes its pid; the
/// lock lasts as long as the returned value. A pid file left by an agent that is gone is taken
/// over, and said so.
fn lock_pid_file(dir: &Path) -> anyhow::Result<Flock<std::fs::File>> {
    use std::io::Write as _;
    let path = pid_path(dir);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // `smrmgr status` holds a shared lock for an instant: try again for a moment.
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut lock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((f, Errno::EWOULDBLOCK)) => {
                let pid = read_pid(&f).map(|p| p.to_string()).unwrap_or("?".into());
                bail!(
                    "an agent is already running for {} (pid {pid})",
                    dir.display()
                );
            }
            Err((_, e)) => bail!("locking {}: {e}", path.display()),
        }
    };
    if let Some(stale) = read_pid(&lock) {
        say_stale(dir, stale);
    }
    lock.set_len(0)?;
    lock.rewind()?;
    write!(lock, "{}", std::process::id())?;
    lock.sync_all()?;
    Ok(lock)
}

fn say_stale(dir: &Path, pid: Pid) {
    eprintln!(
        "smrmgr: removed a stale pid file of {} (pid {pid} is not an smr agent of this data dir)",
        dir.display()
    );
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

/// What a node.json written before the start settings were kept records of them.
fn recorded_settings(node: &NodeFile) -> serde_json::Map<String, serde_json::Value> {
    if !node.start.is_empty() {
        return node.start.clone();
    }
    let etcd = node.etcd.as_ref();
    StartSettings {
        agent: Some(node.name.clone()),
        domain: Some(node.domain.clone()),
        node: Some(node.host.clone()),
        ip: node.ip.parse().ok(),
        public_ip: node.public_ip.as_deref().and_then(|p| p.parse().ok()),
        wg_port: Some(node.wg_port),
        api_port: Some(node.api_port),
        raft_port: Some(node.raft_port),
        no_workloads: !node.schedulable,
        store: etcd.map(|e| e.url.clone()),
        etcd_prefix: etcd.map(|e| e.prefix.clone()),
        etcd_cacert: etcd.and_then(|e| e.cacert.clone()),
        etcd_cert: etcd.and_then(|e| e.cert.clone()),
        etcd_key: etcd.and_then(|e| e.key.clone()),
        etcd_user: etcd.and_then(|e| e.user.clone()),
        etcd_password_file: etcd.and_then(|e| e.password_file.clone()),
        ..StartSettings::default()
    }
    .given()
}

/// The agent's configuration: the flags given, merged at a restart with the settings the node
/// was started with (a conflicting flag is a usage error), defaults for the rest.
fn agent_config(args: &StartArgs) -> anyhow::Result<AgentConfig> {
    let dir = &args.data.data_dir;
    let existing = existing_node(dir);
    let given = args.settings.given();
    let merged = match &existing {
        Some(node) => StartSettings::merge(&recorded_settings(node), &given)
            .map_err(|e| Usage(format!("{} is node {}: {e}", dir.display(), node.name)))?,
        None => given,
    };
    let mut settings = StartSettings::from_map(merged)
        .context("the start settings in node.json")?
        .with_defaults(default_ip)?;
    if args.join.is_some() && existing.is_some() {
        eprintln!(
            "smrmgr: {} already belongs to a cluster; restarting it (ignoring --join)",
            dir.display()
        );
    }
    let absolute = |p: &Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
        p.as_ref()
            .map(|p| std::path::absolute(p).context("--etcd-* path"))
            .transpose()
    };
    for path in [
        &mut settings.etcd_cacert,
        &mut settings.etcd_cert,
        &mut settings.etcd_key,
        &mut settings.etcd_password_file,
    ] {
        *path = absolute(path)?;
    }
    let etcd = match settings.store.as_deref() {
        None | Some("raft") | Some("embedded") => None,
        Some(url) => {
            let etcd = daemon::EtcdSettings {
                url: url.to_string(),
                prefix: settings
                    .etcd_prefix
                    .clone()
                    .unwrap_or_else(|| smr::start::DEFAULT_ETCD_PREFIX.into()),
                cacert: settings.etcd_cacert.clone(),
                cert: settings.etcd_cert.clone(),
                key: settings.etcd_key.clone(),
                user: settings.etcd_user.clone(),
                password_file: settings.etcd_password_file.clone(),
            };
            // Reported here rather than by the background agent.
            etcd.store_config()?;
            Some(etcd)
        }
    };
    let labels = settings
        .labels
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    let filled = |what: &str| anyhow!("no {what} after the defaults");
    Ok(AgentConfig {
        name: settings.agent.clone().ok_or_else(|| filled("name"))?,
        domain: settings.domain.clone().ok_or_else(|| filled("domain"))?,
        host: settings.node.clone().ok_or_else(|| filled("host"))?,
        join: if existing.is_some() {
            None
        } else {
            args.join.clone()
        },
        token: args.token.clone(),
        ip: settings.ip.ok_or_else(|| filled("ip"))?,
        public_ip: settings.public_ip,
        wg_port: settings.wg_port.ok_or_else(|| filled("wireguard port"))?,
        data_dir: dir.clone(),
        docker_host: settings.docker_host.clone(),
        api_port: settings.api_port.ok_or_else(|| filled("api port"))?,
        raft_port: settings.raft_port.ok_or_else(|| filled("raft port"))?,
        labels,
        cidr: settings.cidr.ok_or_else(|| filled("cidr"))?,
        subnet_len: settings.subnet_len.ok_or_else(|| filled("subnet length"))?,
        backend: settings
            .backend
            .as_deref()
            .map(str::parse::<agent::daemon::NetworkBackend>)
            .transpose()
            .map_err(|e| Usage(format!("--backend: {e}")))?,
        iface: settings.iface.clone(),
        workloads: !settings.no_workloads,
        node_timeout: smr::start::node_timeout(
            settings.node_timeout.as_deref().unwrap_or_default(),
        )
        .map_err(|e| Usage(format!("--node-timeout {e}")))?,
        etcd,
        metrics_addr: agent::metrics::parse_addr(
            settings
                .metrics_addr
                .as_deref()
                .unwrap_or(agent::metrics::DEFAULT_ADDR),
        )
        .map_err(Usage)?,
        cluster_key_file: settings.cluster_key_file.clone(),
        settings: settings.to_map(),
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
    let pid_lock = lock_pid_file(&dir)?;
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
    drop(pid_lock);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The arguments of this `smrmgr start` (without the program), for the background agent: the
/// token goes by environment, not argv, so it does not show in the process list.
fn start_child_args() -> Vec<std::ffi::OsString> {
    let mut child_args = Vec::new();
    let mut args_iter = std::env::args_os().skip(1);
    while let Some(arg) = args_iter.next() {
        if arg == "--token" {
            args_iter.next();
        } else if !arg.to_string_lossy().starts_with("--token=") && arg != "--force-new-cluster" {
            child_args.push(arg);
        }
    }
    child_args
}

/// Starts `smrmgr CHILD_ARGS --foreground` detached, logging to `<data-dir>/smr.log`, and waits
/// until it serves.
fn background(args: StartArgs, child_args: Vec<std::ffi::OsString>) -> anyhow::Result<ExitCode> {
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
    if let Ok(file) = std::fs::File::open(pid_path(&dir))
        && let Some(stale) = read_pid(&file)
    {
        say_stale(&dir, stale);
        std::fs::remove_file(pid_path(&dir))
            .with_context(|| format!("removing {}", pid_path(&dir).display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(&dir))?;
    let log_start = log_file.metadata()?.len();
    let _ = std::fs::remove_file(daemon::context_path(&dir));
    let mut command = std::process::Command::new(std::env::current_exe()?);
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
    if pid.as_raw() <= 0 {
        bail!(
            "the agent of {} runs but its pid file holds no pid",
            dir.display()
        );
    }
    kill(pid, Signal::SIGTERM).with_context(|| format!("signalling pid {pid}"))?;
    let deadline = Instant::now() + timeout;
    while running_pid(dir).is_some() {
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
        if overlay::isolation::remove_isolation(&overlay::masq::IptablesCmd::default()).await? {
            println!("removed smr's network isolation rules");
        }
        if overlay::masq::remove_networks_masquerade(&overlay::masq::IptablesCmd::default()).await?
        {
            println!("removed smr's masquerading rules of networks");
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
            if h.state == "degraded" {
                println!(
                    "degraded: {}",
                    h.problem.as_deref().unwrap_or("no reason given")
                );
                return Ok(ExitCode::from(4));
            }
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
    if args.force_new_cluster {
        return Err(Usage(
            "--force-new-cluster is a one-time step: run `smrmgr start --force-new-cluster` \
             (agent stopped), then install the service without it"
                .into(),
        )
        .into());
    }
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
        smr::start::systemd_exec_arg(&exe.to_string_lossy()),
        flags
            .iter()
            .map(|f| smr::start::systemd_exec_arg(f))
            .collect::<Vec<_>>()
            .join(" ")
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

/// `smrmgr backup FILE`: the cluster state from the local agent, checked, written atomically.
fn backup(dir: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let client = client_for(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let bytes = runtime
        .block_on(client.backup())
        .context("taking the backup")?;
    // What restore will read is checked before it replaces anything.
    let backup = smr_core::backup::decode(&bytes).context("the backup the agent sent")?;
    smr::backup::write_atomic_private(file, &bytes)
        .with_context(|| format!("writing {}", file.display()))?;
    println!(
        "wrote {} ({} KiB): {}",
        file.display(),
        bytes.len().div_ceil(1024),
        smr::backup::describe(&backup)
    );
    Ok(ExitCode::SUCCESS)
}

/// `smrmgr restore FILE <new node flags>`: checks the file and the data dir before anything is
/// created, leaves the state to restore in the data dir and starts the agent, which creates the
/// cluster and applies it.
fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data.data_dir.clone();
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let backup = smr_core::backup::decode(&bytes)
        .with_context(|| format!("{} cannot be restored", args.file.display()))?;
    agent::recovery::check_fresh(&dir)?;
    let settings =
        smr::backup::with_backup_network(args.settings.clone(), &backup).map_err(Usage)?;
    let start = StartArgs {
        settings: settings.clone(),
        join: None,
        token: None,
        data: args.data.clone(),
        foreground: args.foreground,
        wait: args.wait,
        force_new_cluster: false,
    };
    // The flags are checked before anything is written.
    agent_config(&start)?;
    let old_key = match &args.backup_key_file {
        Some(file) => Some(
            agent::pki::ClusterKey::load(file)
                .with_context(|| format!("--backup-key-file {}", file.display()))?,
        ),
        None => None,
    };
    let key_path = match &settings.cluster_key_file {
        Some(file) => file.clone(),
        None => dir.join("pki").join(agent::pki::CLUSTER_KEY_FILE),
    };
    agent::recovery::prepare_restore(&dir, &backup.state, old_key.as_ref(), &key_path)?;
    println!(
        "restoring {}: {}",
        args.file.display(),
        smr::backup::describe(&backup)
    );
    let started = if args.foreground {
        foreground(start)
    } else {
        let child: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let child = smr::backup::start_args_for_restore(
            &child,
            &args.file.clone().into_os_string(),
            &settings,
        );
        background(start, child)
    };
    if started.is_err() {
        // The agent did not start: the seed stays, and says why at the next start.
        eprintln!(
            "smrmgr: the restore is prepared in {}; fix the problem and run `smrmgr start \
             --data-dir {}` to finish it, or empty the data dir to start over",
            dir.display(),
            dir.display()
        );
    }
    started
}

/// `smrmgr start --force-new-cluster`: this node's state becomes a one-node cluster.
fn force_new_cluster(mut args: StartArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data.data_dir.clone();
    if args.join.is_some() || args.token.is_some() {
        return Err(Usage(
            "--force-new-cluster does not join: leave out --join and --token".into(),
        )
        .into());
    }
    if let Some(pid) = running_pid(&dir) {
        bail!(
            "the agent of {} runs (pid {pid}): stop it first (`smrmgr stop`), then start it \
             with --force-new-cluster",
            dir.display()
        );
    }
    agent_config(&args)?;
    let forced = agent::recovery::prepare_force_new_cluster(&dir)?;
    let removed: Vec<String> = forced
        .removed
        .iter()
        .map(|(id, name)| format!("{name} (id {id})"))
        .collect();
    println!(
        "forcing a new one-node cluster of node {} (id {}) from its state up to log index {} \
         ({} objects); removing {}; the old Raft data is in {}",
        forced.name,
        forced.id,
        forced.last_index,
        forced.objects,
        if removed.is_empty() {
            "no other node".into()
        } else {
            removed.join(", ")
        },
        forced.old_raft.display()
    );
    args.force_new_cluster = false;
    if args.foreground {
        foreground(args)
    } else {
        background(args, start_child_args())
    }
}

/// A fingerprint as people read it: its first 16 hex characters.
fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

fn print_ca_status(status: &agent::api::types::CaStatus) {
    println!("CA        {}", status.fingerprint);
    if let Some(next) = &status.next {
        match status.aborted_ms {
            None => println!(
                "rotating  to {next} ({}/{} nodes done)",
                status.done, status.total
            ),
            Some(_) => println!(
                "aborting  the rotation to {next} ({}/{} nodes back on the current CA)",
                status.done, status.total
            ),
        }
        if !status.waiting.is_empty() {
            println!("waiting   for {}", waiting_names(status));
        }
    }
    if let Some(previous) = &status.previous {
        println!("previous  {previous} (no longer trusted)");
    }
    println!("{:<6} {:<20} {:<12} CERT CA", "ID", "NODE", "HEALTH");
    for n in &status.nodes {
        let ca = match n.cert_ca.as_deref() {
            None => "-".to_string(),
            Some(fp) if fp == status.fingerprint => format!("{} (current)", short(fp)),
            Some(fp) if Some(fp) == status.next.as_deref() => format!("{} (next)", short(fp)),
            Some(fp) => format!("{} (other)", short(fp)),
        };
        println!("{:<6} {:<20} {:<12} {ca}", n.id, n.name, n.health);
    }
}

/// The nodes a rotation (or its abort) waits for, as people read them: `name (id N, health)`,
/// with what removes a node that will never answer.
fn waiting_names(status: &agent::api::types::CaStatus) -> String {
    let names: Vec<String> = status
        .waiting
        .iter()
        .map(|id| match status.nodes.iter().find(|n| n.id == *id) {
            Some(n) => format!("{} (id {id}, {})", n.name, n.health),
            None => format!("id {id}"),
        })
        .collect();
    format!(
        "{} (a node that will never answer: `smrctl remove-node ID` lets it end)",
        names.join(", ")
    )
}

fn ca_status(dir: &Path) -> anyhow::Result<ExitCode> {
    let client = client_for(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let status = runtime
        .block_on(client.ca_status())
        .context("reading the CA status")?;
    print_ca_status(&status);
    Ok(ExitCode::SUCCESS)
}

/// `smrmgr ca rotate`: starts the rotation (or joins the one under way) and waits for its end.
/// The client is made again from `admin.context` at each poll: the agent rewrites it with a
/// certificate of the new CA during the rotation.
fn ca_rotate(dir: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let started = runtime
        .block_on(client_for(dir)?.ca_rotate())
        .context("starting the CA rotation")?;
    let Some(next) = started.next.clone() else {
        bail!(
            "the rotation did not start (the CA is {}); see `smrmgr ca status`",
            started.fingerprint
        );
    };
    println!(
        "rotating the cluster CA {} -> {}",
        short(&started.fingerprint),
        short(&next)
    );
    wait_ca(
        dir,
        &runtime,
        timeout,
        CaWait::Rotation,
        &next,
        &started.fingerprint,
        &next,
    )
}

/// `smrmgr ca abort`: aborts the rotation under way (or joins the abort under way) and waits
/// until the next CA is dropped. Like `ca rotate`, the client is made again at each poll
/// (`admin.context` is rewritten when this node renews from the current CA).
fn ca_abort(dir: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let aborted = runtime
        .block_on(client_for(dir)?.ca_abort())
        .context("aborting the CA rotation")?;
    let (current, Some(next)) = (aborted.fingerprint.clone(), aborted.next.clone()) else {
        bail!(
            "no CA rotation is under way (the CA is {}); see `smrmgr ca status`",
            aborted.fingerprint
        );
    };
    println!(
        "aborting the rotation {} -> {}: back to {}",
        short(&current),
        short(&next),
        short(&current)
    );
    wait_ca(
        dir,
        &runtime,
        timeout,
        CaWait::Abort,
        &current,
        &next,
        &next,
    )
}

/// What `ca rotate` and `ca abort` wait for: the end of a rotation or of an abort.
#[derive(Clone, Copy, PartialEq)]
enum CaWait {
    Rotation,
    Abort,
}

impl CaWait {
    fn noun(self) -> &'static str {
        match self {
            CaWait::Rotation => "rotation",
            CaWait::Abort => "abort",
        }
    }

    /// How the nodes that reached the end are counted.
    fn progress(self) -> &'static str {
        match self {
            CaWait::Rotation => "nodes done",
            CaWait::Abort => "nodes back",
        }
    }
}

/// Polls the CA status until the cluster's CA is `target` and the rotation to `next` is over
/// (CA `dropped` no longer trusted), shared by `ca rotate` and `ca abort`. The client is made
/// again from `admin.context` at each poll: the agent rewrites it during the rotation or abort.
fn wait_ca(
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
    timeout: Duration,
    wait: CaWait,
    target: &str,
    dropped: &str,
    next: &str,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let mut shown = None;
    loop {
        match client_for(dir).and_then(|c| Ok(runtime.block_on(c.ca_status())?)) {
            Ok(status) if status.next.is_none() && status.fingerprint == target => {
                println!(
                    "done: {}/{} nodes have a certificate of CA {}; CA {} is no longer trusted",
                    status.done,
                    status.total,
                    short(target),
                    short(dropped)
                );
                return Ok(ExitCode::SUCCESS);
            }
            Ok(status) if status.next.as_deref() != Some(next) => {
                bail!(
                    "the cluster CA is {} and no rotation to {} is under way any more",
                    status.fingerprint,
                    next
                );
            }
            Ok(status) if wait == CaWait::Rotation && status.aborted_ms.is_some() => {
                bail!(
                    "the rotation to {next} was aborted (`smrmgr ca abort`); the cluster goes \
                     back to CA {}: see `smrmgr ca status`",
                    status.fingerprint
                );
            }
            Ok(status) => {
                if shown != Some((status.done, status.total)) {
                    println!("{}: {}/{}", wait.progress(), status.done, status.total);
                    shown = Some((status.done, status.total));
                }
                if Instant::now() >= deadline {
                    bail!(
                        "the {} is still under way after {} s ({}/{} {}; waiting for {}); it \
                         goes on by itself: see `smrmgr ca status`",
                        wait.noun(),
                        timeout.as_secs(),
                        status.done,
                        status.total,
                        wait.progress(),
                        waiting_names(&status)
                    );
                }
            }
            // A node may be between two certificates: ask again until the deadline.
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "the {}'s status after {} s",
                    wait.noun(),
                    timeout.as_secs()
                )));
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print_user_certs(certs: &[agent::state::UserCert]) {
    println!("{:<20} {:<34} REVOKED", "USER", "SERIAL");
    for c in certs {
        let name = if c.name.is_empty() { "-" } else { &c.name };
        let revoked = if c.revoked_ms.is_some() { "yes" } else { "no" };
        println!("{name:<20} {:<34} {revoked}", c.serial);
    }
}

/// `smrmgr user revoke NAME | --serial HEX`.
fn user_revoke(
    dir: &Path,
    name: Option<String>,
    serial: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = client_for(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let req = agent::api::types::UserRevokeRequest {
        name: name.clone(),
        serial: serial.clone(),
    };
    let certs = runtime
        .block_on(client.revoke_user(&req))
        .context("revoking")?;
    let revoked: Vec<_> = certs
        .into_iter()
        .filter(|c| c.revoked_ms.is_some())
        .filter(|c| match (&name, &serial) {
            (Some(name), _) => &c.name == name,
            (None, _) => true,
        })
        .collect();
    match (&name, &serial) {
        (Some(name), _) => println!(
            "revoked {} certificate(s) of user {name}; every node refuses them from now on",
            revoked.len()
        ),
        _ => println!("revoked; every node refuses that certificate from now on"),
    }
    print_user_certs(&revoked);
    Ok(ExitCode::SUCCESS)
}

fn user_list(dir: &Path) -> anyhow::Result<ExitCode> {
    let client = client_for(dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let certs = runtime
        .block_on(client.user_certs())
        .context("listing user certificates")?;
    print_user_certs(&certs);
    Ok(ExitCode::SUCCESS)
}
