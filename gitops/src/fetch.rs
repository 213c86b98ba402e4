//! Fetching repositories into a local cache and reading one revision out of them.
//!
//! ```text
//!  Fetcher::fetch(spec) ──spawn_blocking──► lock cache/<sha256(url)> (bare repo)
//!                                            │ remote_anonymous(url).fetch(heads -> refs/remotes/origin/*, tags)
//!                                            │   credentials: Auth (one attempt; a second ask = refused)
//!                                            │   ssh host key: HostKeyPolicy
//!                                            │ resolve revision: branch, tag, commit sha, remote HEAD
//!                                            └ tree::read_commit (no work tree) ──► Checkout
//! ```
//!
//! The cache is one bare repository per URL (directory named by a hash of the URL without
//! credentials). The remote is anonymous, so the URL and any credentials in it are never
//! written into the cache's config. Concurrent fetches of one URL are serialised.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use base64::Engine;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, ErrorClass, ErrorCode,
    FetchOptions, FetchPrune, Oid, Reference, RemoteCallbacks, Repository,
};
use sha2::{Digest, Sha256};

use crate::error::GitError;
use crate::spec::{Auth, RepoSpec, scrub};
use crate::tree::{Checkout, Limits, read_commit};

const REFSPECS: [&str; 2] = [
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
];
const KNOWN_HOSTS: &str = "known_hosts";

/// How SSH server host keys are checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Accept and remember the key seen on first contact with `host:port` (kept in
    /// `<cache>/known_hosts`); refuse a different key later. This is what simplecontainer does.
    #[default]
    TrustOnFirstUse,
    /// Accept only these SHA-256 fingerprints, written as `ssh-keygen -l` prints them
    /// (`SHA256:<base64 without padding>`).
    Pinned(Vec<String>),
    /// libgit2's own check against `~/.ssh/known_hosts`.
    SystemKnownHosts,
}

/// Settings of a [`Fetcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetcherConfig {
    pub limits: Limits,
    /// Deadline of one fetch (default 5 min). libgit2 has no socket timeout reachable
    /// without `unsafe`, so a stalled server leaves its blocking thread waiting until the
    /// connection dies; the caller gets [`GitError::Timeout`] at the deadline regardless,
    /// transfers are aborted at the deadline, and later fetches of the same URL do not
    /// queue behind the stuck one for longer than their own deadline.
    pub timeout: Option<Duration>,
    pub host_keys: HostKeyPolicy,
    /// Accept local repositories (`/path`, `file://`). Off by default: a gitops object
    /// must not be able to read repositories on the agent's own disk.
    pub allow_local_urls: bool,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        FetcherConfig {
            limits: Limits::default(),
            host_keys: HostKeyPolicy::default(),
            allow_local_urls: false,
            timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// Fetches repositories into a cache directory and reads definition files out of them.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    cache_dir: PathBuf,
    limits: Limits,
    host_keys: HostKeyPolicy,
    allow_local_urls: bool,
    timeout: Option<Duration>,
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    known_hosts_lock: Mutex<()>,
}

impl Fetcher {
    /// A fetcher keeping its clones under `cache_dir` (created on first use), with default
    /// [`Limits`] and trust-on-first-use SSH host keys.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self::with_config(cache_dir, FetcherConfig::default())
    }

    pub fn with_config(cache_dir: impl Into<PathBuf>, config: FetcherConfig) -> Self {
        Fetcher {
            inner: Arc::new(Inner {
                cache_dir: cache_dir.into(),
                limits: config.limits,
                host_keys: config.host_keys,
                allow_local_urls: config.allow_local_urls,
                timeout: config.timeout,
                locks: Mutex::new(HashMap::new()),
                known_hosts_lock: Mutex::new(()),
            }),
        }
    }

    /// The cache directory used for `url` (credentials in the URL do not change it).
    pub fn repo_dir(&self, url: &str) -> PathBuf {
        self.inner.repo_dir(url)
    }

    /// Fetches `spec.url`, resolves `spec.revision` and reads the definition files of
    /// `spec.directory` at that commit. Runs libgit2 on the blocking pool.
    pub async fn fetch(&self, spec: &RepoSpec) -> Result<Checkout, GitError> {
        let inner = self.inner.clone();
        let timeout = inner.timeout;
        let url = spec.safe_url();
        let spec = spec.clone();
        let task = tokio::task::spawn_blocking(move || inner.fetch_blocking(&spec));
        let joined = match timeout {
            // A little slack so the worker's own deadline errors win when it can report.
            Some(t) => tokio::time::timeout(t + Duration::from_secs(1), task)
                .await
                .map_err(|_| GitError::Timeout {
                    url,
                    seconds: t.as_secs(),
                    detail: " (server stalled)",
                })?,
            None => task.await,
        };
        joined.map_err(|e| GitError::Task(e.to_string()))?
    }

    /// The blocking form of [`Fetcher::fetch`], for callers already off the async runtime.
    pub fn fetch_blocking(&self, spec: &RepoSpec) -> Result<Checkout, GitError> {
        self.inner.fetch_blocking(spec)
    }
}

/// Locks `lock`, giving up at `deadline`.
fn lock_until(lock: &Mutex<()>, deadline: Option<Instant>) -> Option<MutexGuard<'_, ()>> {
    loop {
        match lock.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
}

/// `SHA256:<base64 without padding>` of a raw SSH host key hash.
fn fingerprint(hash: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
    )
}

/// `host:port` of an SSH URL (`ssh://[user@]host[:port]/path` or scp-like `[user@]host:path`).
pub(crate) fn ssh_host_port(url: &str) -> Option<String> {
    if let Some(rest) = url.strip_prefix("ssh://") {
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        let host_port = authority.rsplit('@').next().unwrap_or(authority);
        if host_port.is_empty() {
            return None;
        }
        if host_port.starts_with('[') {
            // [v6]:port or [v6]
            return Some(if host_port.contains("]:") {
                host_port.to_string()
            } else {
                format!("{host_port}:22")
            });
        }
        return Some(if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:22")
        });
    }
    if url.contains("://") {
        return None;
    }
    let (before, _) = url.split_once(':')?;
    let host = before.rsplit('@').next().unwrap_or(before);
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some(format!("{host}:22"))
}

impl Inner {
    fn repo_dir(&self, url: &str) -> PathBuf {
        let safe = crate::spec::redact_url(url);
        let digest = Sha256::digest(safe.as_bytes());
        self.cache_dir.join(hex::encode(&digest[..16]))
    }

    fn lock_for(&self, dir: &Path) -> Arc<Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(dir.to_path_buf()).or_default().clone()
    }

    fn open_or_init(&self, dir: &Path) -> Result<Repository, GitError> {
        let cache_err = |detail: String| GitError::Cache {
            path: dir.display().to_string(),
            detail,
        };
        if dir.exists() {
            match Repository::open_bare(dir) {
                Ok(repo) => return Ok(repo),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e.message(), "cache repository unusable, recreating it");
                    fs::remove_dir_all(dir).map_err(|e| cache_err(e.to_string()))?;
                }
            }
        }
        fs::create_dir_all(dir).map_err(|e| cache_err(e.to_string()))?;
        Repository::init_bare(dir).map_err(|e| cache_err(e.message().to_string()))
    }

    fn fetch_blocking(&self, spec: &RepoSpec) -> Result<Checkout, GitError> {
        let url = spec.safe_url();
        check_url(&spec.url, self.allow_local_urls).map_err(|reason| GitError::UnsupportedUrl {
            url: url.clone(),
            reason,
        })?;
        let secrets = spec.secrets();
        let dir = self.repo_dir(&spec.url);
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let timed_out = |detail| GitError::Timeout {
            url: url.clone(),
            seconds: self.timeout.map_or(0, |t| t.as_secs()),
            detail,
        };
        let lock = self.lock_for(&dir);
        let _guard = lock_until(&lock, deadline)
            .ok_or_else(|| timed_out(" (another fetch of this repository is still running)"))?;
        let repo = self.open_or_init(&dir)?;
        let expired = Cell::new(false);
        let in_time = || {
            let ok = deadline.is_none_or(|d| Instant::now() < d);
            if !ok {
                expired.set(true);
            }
            ok
        };

        let attempts = Cell::new(0u32);
        let auth_problem: RefCell<Option<String>> = RefCell::new(None);
        let host_key_problem: RefCell<Option<String>> = RefCell::new(None);
        let default_branch = {
            let mut callbacks = RemoteCallbacks::new();
            callbacks.credentials(|_url, user_from_url, allowed| {
                credentials(spec, user_from_url, allowed, &attempts, &auth_problem)
            });
            callbacks.transfer_progress(|_| in_time());
            callbacks.sideband_progress(|_| in_time());
            callbacks.certificate_check(|cert, host| {
                let Some(hostkey) = cert.as_hostkey() else {
                    // TLS: libgit2 verifies against the system trust store.
                    return Ok(CertificateCheckStatus::CertificatePassthrough);
                };
                let Some(hash) = hostkey.hash_sha256() else {
                    *host_key_problem.borrow_mut() =
                        Some("server offered no SHA-256 host key hash".into());
                    return Err(cert_error("no SHA-256 host key hash"));
                };
                let seen = fingerprint(hash);
                let key = ssh_host_port(&spec.url).unwrap_or_else(|| format!("{host}:22"));
                match self.check_host_key(&key, &seen) {
                    Ok(status) => Ok(status),
                    Err(detail) => {
                        *host_key_problem.borrow_mut() = Some(detail.clone());
                        Err(cert_error(&detail))
                    }
                }
            });
            let mut options = FetchOptions::new();
            options
                .remote_callbacks(callbacks)
                .prune(FetchPrune::On)
                .download_tags(AutotagOption::All);
            let mut remote = repo
                .remote_anonymous(&spec.url)
                .map_err(|e| GitError::Other {
                    url: url.clone(),
                    detail: scrub(e.message(), &secrets),
                })?;
            let fetched = remote.fetch(&REFSPECS, Some(&mut options), None);
            drop(options);
            if let Err(e) = fetched {
                if expired.get() {
                    return Err(timed_out(""));
                }
                return Err(classify(
                    &e,
                    &url,
                    &secrets,
                    auth_problem.borrow().clone(),
                    host_key_problem.borrow().clone(),
                ));
            }
            remote
                .default_branch()
                .ok()
                .and_then(|b| b.as_str().ok().map(str::to_string))
        };

        let commit = resolve(&repo, spec.revision.as_deref(), default_branch, &url)?;
        tracing::debug!(url = %url, commit = %commit, "fetched");
        read_commit(&repo, commit, &spec.directory, self.limits, &url)
    }

    /// Applies the host key policy to `seen` (a fingerprint) for `host_port`.
    fn check_host_key(
        &self,
        host_port: &str,
        seen: &str,
    ) -> Result<CertificateCheckStatus, String> {
        match &self.host_keys {
            HostKeyPolicy::SystemKnownHosts => Ok(CertificateCheckStatus::CertificatePassthrough),
            HostKeyPolicy::Pinned(allowed) => {
                if allowed.iter().any(|a| a.trim() == seen) {
                    Ok(CertificateCheckStatus::CertificateOk)
                } else {
                    Err(format!(
                        "host key {seen} of {host_port} is not one of the pinned fingerprints"
                    ))
                }
            }
            HostKeyPolicy::TrustOnFirstUse => {
                let _guard = self
                    .known_hosts_lock
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let path = self.cache_dir.join(KNOWN_HOSTS);
                let text = match fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
                };
                for line in text.lines() {
                    if let Some((host, known)) = line.split_once(' ')
                        && host == host_port
                    {
                        return if known.trim() == seen {
                            Ok(CertificateCheckStatus::CertificateOk)
                        } else {
                            Err(format!(
                                "host key of {host_port} changed: remembered {}, offered {seen}",
                                known.trim()
                            ))
                        };
                    }
                }
                fs::create_dir_all(&self.cache_dir)
                    .and_then(|()| {
                        fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                            .and_then(|mut f| writeln!(f, "{host_port} {seen}"))
                    })
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                tracing::info!(host = %host_port, fingerprint = %seen, "trusting SSH host key on first use");
                Ok(CertificateCheckStatus::CertificateOk)
            }
        }
    }
}

/// Accepts http(s)://, ssh://, git:// and scp-like `user@host:path` URLs; local paths and
/// `file://` only when allowed; anything else (e.g. `ext::`) never.
pub(crate) fn check_url(url: &str, allow_local: bool) -> Result<(), &'static str> {
    if url.is_empty() {
        return Err("the URL is empty");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the URL contains whitespace or control characters");
    }
    if url.starts_with('-') {
        return Err("the URL starts with '-'");
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" | "ssh" | "git" | "git+ssh" | "ssh+git" => Ok(()),
            "file" if allow_local => Ok(()),
            "file" => Err("local repositories are not allowed"),
            _ => Err("only http, https, ssh and git URLs are supported"),
        };
    }
    if url.starts_with('/') || url.starts_with('.') || url.starts_with('~') {
        return if allow_local {
            Ok(())
        } else {
            Err("local repositories are not allowed")
        };
    }
    if url.contains("::") {
        return Err("transport helpers (<transport>::<address>) are not supported");
    }
    // scp-like: [user@]host:path, host without '/'.
    match url.split_once(':') {
        Some((host, path)) if !host.is_empty() && !host.contains('/') && !path.is_empty() => Ok(()),
        _ if allow_local => Ok(()),
        _ => Err("not a remote URL (expected scheme://host/path or user@host:path)"),
    }
}

fn cert_error(detail: &str) -> git2::Error {
    git2::Error::new(ErrorCode::Certificate, ErrorClass::Ssh, detail)
}

fn auth_error(detail: &str) -> git2::Error {
    git2::Error::new(ErrorCode::Auth, ErrorClass::Callback, detail)
}

/// The credentials callback. libgit2 calls it again after the server refused what we gave;
/// the second call ends the attempt (otherwise HTTP would retry forever).
fn credentials(
    spec: &RepoSpec,
    user_from_url: Option<&str>,
    allowed: CredentialType,
    attempts: &Cell<u32>,
    problem: &RefCell<Option<String>>,
) -> Result<Cred, git2::Error> {
    let ssh_user = user_from_url.unwrap_or("git");
    if allowed == CredentialType::USERNAME {
        // SSH asks for the user name first when the URL carries none.
        return Cred::username(ssh_user);
    }
    attempts.set(attempts.get() + 1);
    let fail = |detail: &str| {
        *problem.borrow_mut() = Some(detail.to_string());
        Err(auth_error(detail))
    };
    if attempts.get() > 1 {
        return fail("the server rejected the configured credentials");
    }
    match &spec.auth {
        Auth::None => fail("the server requires credentials and none are configured"),
        Auth::Basic { username, password } => {
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                Cred::userpass_plaintext(username, password)
            } else {
                fail("the server does not accept a username/password (an SSH URL needs a key)")
            }
        }
        Auth::SshKey {
            private_key_pem,
            passphrase,
        } => {
            if allowed.contains(CredentialType::SSH_MEMORY)
                || allowed.contains(CredentialType::SSH_KEY)
            {
                Cred::ssh_key_from_memory(ssh_user, None, private_key_pem, passphrase.as_deref())
                    .or_else(|_| {
                        fail("the SSH private key could not be loaded (bad key or passphrase)")
                    })
            } else {
                fail(
                    "the server does not accept an SSH key (an HTTP URL needs a username/password)",
                )
            }
        }
    }
}

/// Maps a libgit2 fetch error to what failed, with secrets scrubbed from its message.
fn classify(
    e: &git2::Error,
    url: &str,
    secrets: &[String],
    auth_problem: Option<String>,
    host_key_problem: Option<String>,
) -> GitError {
    let url = url.to_string();
    let detail = scrub(e.message(), secrets);
    if let Some(problem) = auth_problem {
        return GitError::AuthRefused {
            url,
            detail: problem,
        };
    }
    if let Some(problem) = host_key_problem {
        return GitError::HostKey {
            url,
            detail: scrub(&problem, secrets),
        };
    }
    let lower = detail.to_ascii_lowercase();
    match e.code() {
        ErrorCode::Auth => return GitError::AuthRefused { url, detail },
        ErrorCode::Certificate => return GitError::HostKey { url, detail },
        ErrorCode::NotFound => return GitError::RepoNotFound { url, detail },
        _ => {}
    }
    if lower.contains("401") || lower.contains("403") || lower.contains("authentication") {
        return GitError::AuthRefused { url, detail };
    }
    if lower.contains("404")
        || lower.contains("not found")
        || lower.contains("not exported")
        || lower.contains("no such repository")
        || lower.contains("does not appear to be a git repository")
        || lower.contains("does not exist")
    {
        return GitError::RepoNotFound { url, detail };
    }
    match e.class() {
        ErrorClass::Net | ErrorClass::Http | ErrorClass::Ssh | ErrorClass::Os | ErrorClass::Ssl => {
            GitError::Network { url, detail }
        }
        _ => GitError::Other { url, detail },
    }
}

/// Resolves a revision to a commit: branch, then tag, then full or abbreviated sha.
/// `None` (or blank) is the remote's HEAD branch (`refs/heads/...` as the server named it).
fn resolve(
    repo: &Repository,
    revision: Option<&str>,
    default_branch: Option<String>,
    url: &str,
) -> Result<Oid, GitError> {
    let revision = revision.map(str::trim).filter(|r| !r.is_empty());
    let Some(rev) = revision else {
        let candidates: Vec<String> = match default_branch
            .as_deref()
            .and_then(|b| b.strip_prefix("refs/heads/"))
        {
            Some(branch) => vec![format!("refs/remotes/origin/{branch}")],
            None => vec![
                "refs/remotes/origin/main".into(),
                "refs/remotes/origin/master".into(),
            ],
        };
        return candidates
            .iter()
            .find_map(|name| peel(repo, name))
            .ok_or_else(|| GitError::NoDefaultBranch {
                url: url.to_string(),
            });
    };
    let not_found = || GitError::RevisionNotFound {
        url: url.to_string(),
        revision: rev.to_string(),
    };
    let names: Vec<String> = if let Some(branch) = rev.strip_prefix("refs/heads/") {
        vec![format!("refs/remotes/origin/{branch}")]
    } else if rev.starts_with("refs/tags/") {
        vec![rev.to_string()]
    } else {
        vec![
            format!("refs/remotes/origin/{rev}"),
            format!("refs/tags/{rev}"),
        ]
    };
    if let Some(oid) = names.iter().find_map(|name| peel(repo, name)) {
        return Ok(oid);
    }
    let is_hex = rev.len() >= 4 && rev.len() <= 40 && rev.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex {
        return Err(not_found());
    }
    let commit = if rev.len() == 40 {
        Oid::from_str(rev).and_then(|oid| repo.find_commit(oid))
    } else {
        repo.find_commit_by_prefix(rev)
    };
    commit.map(|c| c.id()).map_err(|_| not_found())
}

fn peel(repo: &Repository, name: &str) -> Option<Oid> {
    if !Reference::is_valid_name(name) {
        return None;
    }
    let reference = repo.find_reference(name).ok()?;
    reference.peel_to_commit().ok().map(|c| c.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_host_ports() {
        assert_eq!(
            ssh_host_port("ssh://git@h:2222/r.git").as_deref(),
            Some("h:2222")
        );
        assert_eq!(ssh_host_port("ssh://h/r.git").as_deref(), Some("h:22"));
        assert_eq!(
            ssh_host_port("git@github.com:o/r.git").as_deref(),
            Some("github.com:22")
        );
        assert_eq!(ssh_host_port("https://h/r"), None);
        assert_eq!(ssh_host_port("/srv/r.git"), None);
        assert_eq!(
            ssh_host_port("ssh://[::1]:22/r").as_deref(),
            Some("[::1]:22")
        );
    }

    #[test]
    fn url_checks() {
        for ok in [
            "https://h/r.git",
            "http://u:p@h:8080/r",
            "ssh://git@h:22/r.git",
            "git://h/r.git",
            "git@github.com:o/r.git",
            "h:r.git",
        ] {
            assert_eq!(check_url(ok, false), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/srv/git/r.git",
            "./r",
            "file:///etc",
            "ext::sh -c id",
            "ext::id",
            "fd::3",
            "-uhttps://h/r",
            "ftp://h/r",
            "https://h/r\nx",
            "relative/path",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad} accepted");
        }
        assert_eq!(check_url("/srv/git/r.git", true), Ok(()));
        assert_eq!(check_url("file:///srv/r.git", true), Ok(()));
        assert!(check_url("ext::id", true).is_err());
    }

    #[test]
    fn fingerprint_format() {
        assert_eq!(
            fingerprint(&[0u8; 32]),
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        );
    }

    #[test]
    fn repo_dir_ignores_credentials() {
        let f = Fetcher::new("/tmp/x");
        assert_eq!(
            f.repo_dir("https://a:b@h/r.git"),
            f.repo_dir("https://h/r.git")
        );
        assert_ne!(f.repo_dir("https://h/r.git"), f.repo_dir("https://h/s.git"));
    }

    #[test]
    fn classify_scrubs_secrets() {
        let e = git2::Error::new(
            ErrorCode::GenericError,
            ErrorClass::Http,
            "unexpected http status code: 404 for http://u:hunter2@h/r and hunter2",
        );
        let err = classify(&e, "http://h/r", &["hunter2".into()], None, None);
        let text = err.to_string();
        assert!(matches!(err, GitError::RepoNotFound { .. }), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
