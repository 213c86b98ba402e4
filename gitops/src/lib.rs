//! Git sync for smr's `gitops` objects, independent of Raft and of the agent.
//!
//! - [`Fetcher`] keeps one bare clone per repository URL and, for a [`RepoSpec`], fetches,
//!   resolves the revision and returns the definition files of a directory (or pack) at that
//!   commit as a [`Checkout`], reading the commit's tree without any work-tree checkout.
//! - [`plan_sync`] / [`drifted`] turn (files in git, objects in the cluster) into a
//!   [`SyncPlan`]; pure, keys and hashes are opaque to this crate.
//! - [`verify_signature`] / [`parse_push`] handle GitHub and Gitea push webhooks.
//!
//! The agent parses the YAML itself; this crate deals in files and opaque keys. Secrets in
//! a [`RepoSpec`] never appear in `Debug` output or in [`GitError`] messages.
#![forbid(unsafe_code)]

//!
//! Without the default feature `git` only the pure parts are built ([`plan_sync`], [`drifted`],
//! [`RepoSpec`], [`normalize_directory`], [`parse_pack`], [`pack`] variables and templates,
//! [`GitError`]): that is what `smr-core` links.

mod error;
#[cfg(feature = "git")]
mod fetch;
pub mod pack;
mod paths;
mod plan;
mod spec;
pub mod template;
#[cfg(feature = "git")]
mod tree;
#[cfg(feature = "git")]
mod webhook;

pub use error::GitError;
#[cfg(feature = "git")]
pub use fetch::{Fetcher, FetcherConfig, HostKeyPolicy};
pub use paths::{PackInfo, normalize_directory, parse_pack};
pub use plan::{Actual, SyncPlan, drifted, plan_sync};
pub use spec::{Auth, RepoSpec, redact_text, redact_url};
#[cfg(feature = "git")]
pub use tree::{Checkout, Limits, SourceFile};
#[cfg(feature = "git")]
pub use webhook::{PushEvent, WebhookError, parse_push, verify_signature};
