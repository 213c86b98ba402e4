//! Errors of fetching and reading a repository. Every variant that concerns a remote names
//! its URL with credentials removed (see [`crate::spec::redact_url`]), and every message
//! taken from libgit2 is scrubbed of URLs' user-info and of the spec's secrets before it is
//! stored, so `to_string()` and `Debug` are safe to log and to show to users.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum GitError {
    #[error("{url}: authentication refused: {detail}")]
    AuthRefused { url: String, detail: String },
    #[error("{url}: repository not found: {detail}")]
    RepoNotFound { url: String, detail: String },
    #[error("{url}: network error: {detail}")]
    Network { url: String, detail: String },
    #[error("{url}: server identity not trusted: {detail}")]
    HostKey { url: String, detail: String },
    #[error("{url}: revision {revision:?} not found (tried branch, tag and commit)")]
    RevisionNotFound { url: String, revision: String },
    #[error("{url}: the remote has no HEAD branch; set a revision")]
    NoDefaultBranch { url: String },
    #[error("hostile directory path {path:?}: {reason}")]
    HostilePath { path: String, reason: &'static str },
    #[error("{url}: directory {directory:?} not found at commit {commit}")]
    DirectoryNotFound {
        url: String,
        directory: String,
        commit: String,
    },
    #[error("{url}: {path:?} is a symbolic link; symlinks are refused in definition directories")]
    Symlink { url: String, path: String },
    #[error("{url}: file {path:?} is {size} bytes, over the limit of {limit} bytes")]
    FileTooLarge {
        url: String,
        path: String,
        size: usize,
        limit: usize,
    },
    #[error("{url}: definition files total more than the limit of {limit} bytes")]
    TotalTooLarge { url: String, limit: usize },
    #[error("{url}: file {path:?} is not valid UTF-8")]
    NotUtf8 { url: String, path: String },
    #[error("{url}: pack file {path:?} is invalid: {detail}")]
    BadPack {
        url: String,
        path: String,
        detail: String,
    },
    #[error("local cache {path}: {detail}")]
    Cache { path: String, detail: String },
    #[error("{url}: git error: {detail}")]
    Other { url: String, detail: String },
    #[error("{url}: unsupported repository URL: {reason}")]
    UnsupportedUrl { url: String, reason: &'static str },
    #[error("{url}: fetch did not finish within {seconds} s{detail}")]
    Timeout {
        url: String,
        seconds: u64,
        detail: &'static str,
    },
    #[error("git worker task failed: {0}")]
    Task(String),
}
