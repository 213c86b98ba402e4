//! Real git servers on loopback for the fetch tests: a bare repository built with the git
//! CLI, served by `git daemon` (git://), by `git http-backend` behind a small HTTP/1.1 server
//! with basic auth (http://), and by a private `sshd` with its own host key and one
//! authorised test key (ssh://). Every server is torn down by its pid (or task) in `Drop`.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Runs git with a config independent of the host's.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=smr test",
            "-c",
            "user.email=test@smr.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `<base>/<name>.git` and a work clone used to make commits.
pub struct TestRepo {
    pub dir: TempDir,
    pub name: String,
}

impl TestRepo {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = TestRepo {
            dir,
            name: name.to_string(),
        };
        std::fs::create_dir_all(repo.base()).expect("mkdir base");
        std::fs::create_dir_all(repo.work()).expect("mkdir work");
        git(
            &repo.base(),
            &["init", "-q", "--bare", "-b", "main", &format!("{name}.git")],
        );
        git(&repo.work(), &["init", "-q", "-b", "main"]);
        git(
            &repo.work(),
            &[
                "remote",
                "add",
                "origin",
                repo.bare().to_str().expect("utf8 path"),
            ],
        );
        repo
    }

    /// The directory servers export (`--base-path`, `GIT_PROJECT_ROOT`).
    pub fn base(&self) -> PathBuf {
        self.dir.path().join("srv")
    }

    pub fn bare(&self) -> PathBuf {
        self.base().join(format!("{}.git", self.name))
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) {
        let full = self.work().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, content).expect("write");
    }

    pub fn remove(&self, path: &str) {
        git(&self.work(), &["rm", "-q", "-r", path]);
    }

    pub fn symlink(&self, path: &str, target: &str) {
        let full = self.work().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, full).expect("symlink");
    }

    /// Commits everything and pushes all branches and tags; returns the new HEAD sha.
    pub fn commit(&self, message: &str) -> String {
        git(&self.work(), &["add", "-A"]);
        git(&self.work(), &["commit", "-q", "-m", message]);
        self.push();
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    pub fn push(&self) {
        git(&self.work(), &["push", "-q", "--all", "-f", "origin"]);
        git(&self.work(), &["push", "-q", "--tags", "-f", "origin"]);
    }

    pub fn checkout(&self, branch: &str, create: bool) {
        if create {
            git(&self.work(), &["checkout", "-q", "-b", branch]);
        } else {
            git(&self.work(), &["checkout", "-q", branch]);
        }
    }

    pub fn tag(&self, name: &str) {
        git(&self.work(), &["tag", "-a", "-m", name, name]);
        self.push();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Starts `what` (the command `command(port)` makes) on a free loopback port and waits until it
/// accepts connections. A server that exits early (another process took the port between
/// choosing and binding it) is started again on another port, at most 3 times.
pub fn spawn_listening(what: &str, mut command: impl FnMut(u16) -> Command) -> (u16, Child) {
    let mut attempt = 1;
    loop {
        let port = free_port();
        let mut child = command(port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(attempt < 3, "{what} exited early: {status}");
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (port, child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        attempt += 1;
    }
}

/// A child process killed by pid when dropped.
pub struct ProcessGuard {
    child: Child,
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `git-daemon` program itself. `git daemon` would run it as a child of its own, and
/// killing `git` by its pid would leave that daemon running.
pub fn git_daemon_command() -> Command {
    let exec_path = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    let dir = String::from_utf8_lossy(&exec_path.stdout)
        .trim()
        .to_string();
    Command::new(Path::new(&dir).join("git-daemon"))
}

/// `git daemon` exporting a repo's base directory on a free loopback port.
pub struct GitDaemon {
    pub port: u16,
    _guard: ProcessGuard,
}

impl GitDaemon {
    pub fn start(base: &Path) -> Self {
        let (port, child) = spawn_listening("git daemon", |port| {
            let mut command = git_daemon_command();
            command
                .args([
                    "--export-all",
                    "--reuseaddr",
                    "--informative-errors",
                    "--listen=127.0.0.1",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", base.display()))
                .arg(base);
            command
        });
        GitDaemon {
            port,
            _guard: ProcessGuard { child },
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }
}

/// Smart HTTP: `git http-backend` as CGI behind a minimal HTTP/1.1 server that demands
/// `Authorization: Basic` with the given user and password.
pub struct HttpGit {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpGit {
    pub async fn start(base: &Path, user: &str, password: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let base = base.to_path_buf();
        let user = user.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let base = base.clone();
                let expected = expected.clone();
                let user = user.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(sock, &base, &expected, &user).await;
                });
            }
        });
        HttpGit { port, task }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}.git", self.port)
    }
}

async fn serve_connection(
    sock: tokio::net::TcpStream,
    base: &Path,
    expected_auth: &str,
    user: &str,
) -> std::io::Result<()> {
    let (read, mut write) = sock.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size_line = String::new();
                reader.read_line(&mut size_line).await?;
                let size_hex = size_line.trim().split(';').next().unwrap_or("0");
                let size = usize::from_str_radix(size_hex, 16).unwrap_or(0);
                if size == 0 {
                    // trailers until a blank line
                    loop {
                        let mut t = String::new();
                        if reader.read_line(&mut t).await? == 0 || t.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0u8; size];
                reader.read_exact(&mut chunk).await?;
                body.extend_from_slice(&chunk);
                let mut crlf = String::new();
                reader.read_line(&mut crlf).await?;
            }
        } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body = vec![0u8; len];
            reader.read_exact(&mut body).await?;
        }
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));

        if header("authorization").as_deref() != Some(expected_auth) {
            write
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\n\r\n",
                )
                .await?;
            if close {
                return Ok(());
            }
            continue;
        }

        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("http-backend")
            .env("GIT_PROJECT_ROOT", base)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("REQUEST_METHOD", &method)
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("REMOTE_USER", user)
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(ct) = header("content-type") {
            cmd.env("CONTENT_TYPE", ct);
        }
        if let Some(enc) = header("content-encoding") {
            cmd.env("HTTP_CONTENT_ENCODING", enc);
        }
        if let Some(proto) = header("git-protocol") {
            cmd.env("HTTP_GIT_PROTOCOL", proto);
        }
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().expect("stdin");
        let feeder = tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
        let out = child.wait_with_output().await?;
        let _ = feeder.await;
        let raw = out.stdout;
        let (head, payload) = match find(&raw, b"\r\n\r\n") {
            Some(i) => (&raw[..i], &raw[i + 4..]),
            None => match find(&raw, b"\n\n") {
                Some(i) => (&raw[..i], &raw[i + 2..]),
                None => (&raw[..0], &raw[..]),
            },
        };
        let head = String::from_utf8_lossy(head);
        let mut status = "200 OK".to_string();
        let mut response = String::new();
        for line in head.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.eq_ignore_ascii_case("status") {
                status = v.trim().to_string();
            } else {
                response.push_str(&format!("{}: {}\r\n", k.trim(), v.trim()));
            }
        }
        let mut bytes = format!(
            "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        bytes.extend_from_slice(payload);
        write.write_all(&bytes).await?;
        if close {
            return Ok(());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A private sshd on a loopback port: own host key, one authorised key, root only.
pub struct Sshd {
    pub port: u16,
    pub dir: TempDir,
    /// The client's private key (OpenSSH format), authorised on this server.
    pub client_key: String,
    /// A second private key that is NOT authorised.
    pub stranger_key: String,
    /// `SHA256:...` fingerprint of the host key.
    pub host_fingerprint: String,
    _guard: ProcessGuard,
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "smr-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
}

impl Sshd {
    /// None when openssh-server is not installed.
    pub fn start() -> Option<Self> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            return None;
        }
        // Privilege separation directory sshd insists on (normally made by the service).
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client"));
        keygen(&d.join("stranger"));
        let client_pub = std::fs::read_to_string(d.join("client.pub")).expect("pub");
        std::fs::write(
            d.join("authorized_keys"),
            format!("restrict {}", client_pub.trim()) + "\n",
        )
        .expect("authorized_keys");
        let fp = Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(d.join("host_key.pub"))
            .output()
            .expect("ssh-keygen -l");
        let host_fingerprint = String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_string();
        let (port, child) = spawn_listening("sshd", |port| {
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nAllowUsers root\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             UsePAM no\nStrictModes no\nX11Forwarding no\nAllowTcpForwarding no\nAllowAgentForwarding no\n\
             PermitTTY no\nPrintMotd no\nLogLevel ERROR\n",
                d = d.display()
            );
            std::fs::write(d.join("sshd_config"), config).expect("config");
            let mut command = Command::new(sshd);
            command
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(d.join("sshd_config"));
            command
        });
        Some(Sshd {
            port,
            client_key: std::fs::read_to_string(d.join("client")).expect("key"),
            stranger_key: std::fs::read_to_string(d.join("stranger")).expect("key"),
            host_fingerprint,
            dir,
            _guard: ProcessGuard { child },
        })
    }

    pub fn url(&self, bare: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, bare.display())
    }
}
