//! The `*.private` DNS server of smr.
//!
//! Every agent answers `*.private` names for the containers of the cluster and forwards every
//! other name to the host's upstream resolvers. This crate knows nothing of Raft: the agent
//! turns cluster state into plain [`ReplicaInfo`] and [`NodeInfo`] values, calls
//! [`compute_records`] (pure) and hands the resulting [`RecordSet`] to a running server with
//! [`DnsHandle::set_records`] (an atomic swap, no restart).
//!
//! - [`records`]: the pure name -> addresses computation and name validation.
//! - [`resolv`]: reading upstreams from `resolv.conf`.
//! - `zone`: the hickory zone handlers (authoritative `private.`, forwarding `.`).
//! - `server`: sockets, start, swap and shutdown.
//! - [`stats`]: answers counted by response code ([`stats::query_counts`]).
//! - [`answer_packet`]: one request answered in process, as the server would (fuzzing, tests).

mod packet;
pub mod records;
pub mod resolv;
mod server;
pub mod stats;
mod zone;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use packet::answer_packet;
pub use records::{NodeInfo, RecordSet, ReplicaInfo, compute_network_records, compute_records};
pub use resolv::{parse_resolv_conf, upstreams_from_resolv_conf};
pub use server::{DnsConfig, DnsHandle, DnsServer};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listen address could not be bound (UDP or TCP).
    #[error("cannot bind DNS socket on {addr}: {source}")]
    Bind {
        /// The listen address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A resolv.conf could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration cannot be used.
    #[error("invalid DNS configuration: {0}")]
    Config(String),
    /// The server tasks ended with an error.
    #[error("DNS server failed: {0}")]
    Server(String),
}
