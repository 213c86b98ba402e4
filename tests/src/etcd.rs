//! A real etcd cluster for the suites: `members` etcd processes (Debian's `etcd-server`,
//! installed by tests/install-deps.sh) on free ports of 127.0.0.1 (or a testbed bridge address
//! the VMs reach), each with its own
//! data directory in a tempdir. Members are stopped by their recorded pid (on drop too).

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// PEM files for a TLS etcd: clients must present a certificate signed by `ca`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    /// Client URLs are https and client certificates are required.
    pub tls: Option<TlsFiles>,
    /// More `etcd` flags, given to every member.
    args: Vec<String>,
    /// The address every member listens on.
    pub ip: Ipv4Addr,
    initial_cluster: String,
    token: String,
    _dir: tempfile::TempDir,
}

/// A free port, held until the listener is dropped (so the ports of one cluster differ).
fn free_port(ip: Ipv4Addr) -> anyhow::Result<(u16, TcpListener)> {
    let listener = TcpListener::bind((ip, 0))?;
    Ok((listener.local_addr()?.port(), listener))
}

/// How many times a cluster is started on new ports when another process took one of them
/// between choosing and binding.
const START_ATTEMPTS: usize = 3;

/// Whether the `etcd` binary is installed.
pub fn available() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl EtcdCluster {
    /// Starts a new cluster of `members` on 127.0.0.1 and waits until every member answers.
    pub fn start(members: usize) -> anyhow::Result<EtcdCluster> {
        EtcdCluster::start_on(members, Ipv4Addr::LOCALHOST)
    }

    /// Same, listening on `ip` (e.g. a testbed bridge address the VMs reach).
    pub fn start_on(members: usize, ip: Ipv4Addr) -> anyhow::Result<EtcdCluster> {
        EtcdCluster::start_with(members, ip, None)
    }

    /// Same, with TLS and client-certificate authentication on the client port when `tls` is set.
    pub fn start_with(
        members: usize,
        ip: Ipv4Addr,
        tls: Option<TlsFiles>,
    ) -> anyhow::Result<EtcdCluster> {
        EtcdCluster::start_with_args(members, ip, tls, &[])
    }

    /// Same, with more `etcd` flags for every member (e.g. `--auth-token-ttl 2`).
    pub fn start_with_args(
        members: usize,
        ip: Ipv4Addr,
        tls: Option<TlsFiles>,
        args: &[&str],
    ) -> anyhow::Result<EtcdCluster> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut attempt = 1;
        loop {
            match EtcdCluster::try_start(members, ip, tls.clone(), args.clone()) {
                Err(e)
                    if attempt < START_ATTEMPTS
                        && format!("{e:#}").contains("address already in use") =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn try_start(
        members: usize,
        ip: Ipv4Addr,
        tls: Option<TlsFiles>,
        args: Vec<String>,
    ) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::tempdir()?;
        let mut list = Vec::new();
        let mut held = Vec::new();
        for i in 0..members {
            let name = format!("m{i}");
            let (client_port, client) = free_port(ip)?;
            let (peer_port, peer) = free_port(ip)?;
            held.extend([client, peer]);
            list.push(Member {
                data_dir: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                peer_port,
                child: None,
            });
        }
        drop(held);
        let initial_cluster = list
            .iter()
            .map(|m| format!("{}=http://{ip}:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members: list,
            tls,
            args,
            ip,
            initial_cluster,
            token: format!("smr-test-{}", std::process::id()),
            _dir: dir,
        };
        for i in 0..members {
            cluster.start_member(i)?;
        }
        for i in 0..members {
            cluster.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    /// `IP:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}:{}", self.ip, m.client_port))
            .collect()
    }

    /// `etcd://` URL naming every member.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// (Re)starts member `i` on its data directory.
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        if m.child.is_some() {
            return Ok(());
        }
        let state = if m.data_dir.join("member").exists() {
            "existing"
        } else {
            "new"
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}:{}", self.ip, m.client_port);
        let peer = format!("http://{}:{}", self.ip, m.peer_port);
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(&self.args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (is etcd-server installed? tests/install-deps.sh)")?;
        m.child = Some(child);
        Ok(())
    }

    /// Kills member `i` (SIGKILL by its pid) and reaps it.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until member `i` reports healthy (its /health endpoint on the client port; with
    /// TLS, until the client port accepts connections).
    pub fn wait_healthy(&mut self, i: usize, limit: Duration) -> anyhow::Result<()> {
        let tls = self.tls.is_some();
        let ip = self.ip;
        let m = &mut self.members[i];
        let deadline = Instant::now() + limit;
        let url = format!("http://{ip}:{}/health", m.client_port);
        let tail = |m: &Member| {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        };
        loop {
            if let Some(child) = m.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                m.child = None;
                bail!(
                    "etcd member {} exited ({status}); log tail:\n{}",
                    m.name,
                    tail(m)
                );
            }
            let ready = if tls {
                std::net::TcpStream::connect((ip, m.client_port)).is_ok()
            } else {
                http_get(&url).is_ok_and(|body| body.contains("\"health\":\"true\""))
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd member {} not healthy in {limit:?}; log tail:\n{}",
                    m.name,
                    tail(m)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Turns on etcd's authentication: a `root` user (password `root-pw`), and `user` with
/// `password` allowed to read and write the keys under `prefix` only.
pub async fn enable_auth(
    endpoints: &[String],
    user: &str,
    password: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let mut admin = etcd_client::Client::connect(endpoints, None).await?;
    // The root role exists already on some etcd versions.
    let _ = admin.role_add("root").await;
    admin.user_add("root", "root-pw", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.role_add(user).await?;
    admin
        .role_grant_permission(
            user,
            etcd_client::Permission::read_write(prefix).with_prefix(),
        )
        .await?;
    admin.user_add(user, password, None).await?;
    admin.user_grant_role(user, user).await?;
    admin.auth_enable().await?;
    Ok(())
}

/// A minimal blocking HTTP GET (the health endpoint only; no client crate needed).
fn http_get(url: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("http only")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /{path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

/// Every key and value etcd holds (no authentication), to look for what must not be there.
pub async fn all_key_values(endpoints: &[String]) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut client = etcd_client::Client::connect(endpoints, None).await?;
    let answer = client
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await?;
    Ok(answer
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect())
}
