//! `smrmgr start` settings: one struct for the flags that define a node, kept in `node.json`
//! (key `start`, with every default filled in) and merged with the flags of a restart.
//!
//! ```text
//!  flags given ----+
//!                  +-- merge: same value, or a setting in MUTABLE -> the given value
//!  node.json start-+          any other difference                -> refused (exit 2)
//!                     -> defaults for what neither has -> AgentConfig (and node.json again)
//! ```
//! A restart with only `--data-dir` runs the node exactly as it was started. A field added to
//! [`StartSettings`] is kept and merged the same way, and belongs to the node's identity (a
//! different value at restart is refused) unless it is listed in [`MUTABLE`].

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Settings a restart may change: what other nodes do not know this node by (labels are
/// updated in the node registry by the agent).
pub const MUTABLE: &[&str] = &[
    "docker_host",
    "labels",
    "iface",
    "node_timeout",
    "wg_port",
    "metrics_addr",
    "etcd_cacert",
    "etcd_cert",
    "etcd_key",
    "etcd_user",
    "etcd_password_file",
    "cluster_key_file",
];

pub const DEFAULT_API_PORT: u16 = 1443;
pub const DEFAULT_RAFT_PORT: u16 = 9212;
pub const DEFAULT_CIDR: &str = "10.10.0.0/16";
pub const DEFAULT_SUBNET_LEN: u8 = 24;
pub const DEFAULT_NODE_TIMEOUT: &str = "15s";
pub const DEFAULT_ETCD_PREFIX: &str = "/smr/";

/// The flags of `smrmgr start` that define the node (not `--join`, `--token`, `--data-dir`,
/// `--foreground`, `--wait`). `None` (or false, or empty) is "not given".
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StartSettings {
    /// Agent name, unique in the cluster (e.g. smr-agent-1).
    #[arg(short = 'a', long = "agent")]
    pub agent: Option<String>,
    /// Domain the API is reached under (put in the node certificate) [default: the host name].
    #[arg(short = 'd', long = "domain")]
    pub domain: Option<String>,
    /// This node's host name (put in the node certificate) [default: the agent name].
    #[arg(short = 'n', long = "node")]
    pub node: Option<String>,
    /// Advertised underlay address [default: the address of the default route].
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// The address other nodes reach this node at (behind NAT: the public address whose ports
    /// 1443/tcp, 9212/tcp and the WireGuard port are forwarded here) [default: --ip].
    #[arg(long = "public-ip")]
    pub public_ip: Option<IpAddr>,
    /// UDP port of the WireGuard device [default: 51820].
    #[arg(long = "wg-port", value_parser = clap::value_parser!(u16).range(1..))]
    pub wg_port: Option<u16>,
    /// Docker daemon to run containers on [default: DOCKER_HOST or the local socket].
    #[arg(long = "docker-host", env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// API port [default: 1443].
    #[arg(long = "api-port")]
    pub api_port: Option<u16>,
    /// Raft port [default: 9212].
    #[arg(long = "raft-port")]
    pub raft_port: Option<u16>,
    /// Node label KEY=VALUE (repeatable), used by node selectors.
    #[arg(long = "label", value_parser = parse_label)]
    #[serde(default)]
    pub labels: Vec<String>,
    /// Cluster network, when this node creates the cluster [default: 10.10.0.0/16].
    #[arg(long)]
    pub cidr: Option<ipnet::Ipv4Net>,
    /// Prefix length of each node's subnet, when this node creates the cluster [default: 24].
    #[arg(long = "subnet-len")]
    pub subnet_len: Option<u8>,
    /// Overlay backend, fixed by the node that creates the cluster: wireguard (encrypted, works
    /// across clouds and NAT; the default for a new cluster), vxlan or host-gw (clear text:
    /// trusted networks only), or none (no overlay). A joining node that names another backend
    /// than the cluster's is refused.
    #[arg(long, value_parser = ["wireguard", "vxlan", "host-gw", "none"])]
    pub backend: Option<String>,
    /// Underlay interface for the overlay [default: the one holding --ip].
    #[arg(long)]
    pub iface: Option<String>,
    /// Run no replicas on this node (control plane only).
    #[arg(long = "no-workloads")]
    #[serde(default)]
    pub no_workloads: bool,
    /// How long a node may stay silent before the leader places its replicas on other nodes
    /// (5s to 1h). The leader's value applies: give every node the same [default: 15s].
    #[arg(long = "node-timeout", value_parser = check_node_timeout)]
    pub node_timeout: Option<String>,
    /// Keep the cluster state in an existing etcd cluster instead of the embedded Raft store:
    /// etcd://HOST:PORT[,HOST:PORT...]. Every agent of the cluster names the same etcd.
    #[arg(long = "store", value_name = "URL")]
    pub store: Option<String>,
    /// CA certificate (PEM) that signed the etcd server certificates; enables TLS to etcd.
    #[arg(long = "etcd-cacert", requires = "store")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long = "etcd-cert", requires_all = ["store", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long = "etcd-key", requires_all = ["store", "etcd_cert"])]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, when etcd authentication is enabled (with --etcd-password-file).
    #[arg(long = "etcd-user", requires_all = ["store", "etcd_password_file"])]
    pub etcd_user: Option<String>,
    /// File holding the password of --etcd-user (read at each start, never copied).
    #[arg(long = "etcd-password-file", requires_all = ["store", "etcd_user"])]
    pub etcd_password_file: Option<PathBuf>,
    /// Prefix of this cluster's keys in etcd [default: /smr/].
    #[arg(long = "etcd-prefix")]
    pub etcd_prefix: Option<String>,
    /// Serve Prometheus metrics in plain HTTP at http://ADDR/metrics: IP:PORT, or `off`
    /// [default: 127.0.0.1:9213].
    #[arg(long = "metrics-addr", value_name = "ADDR", value_parser = check_metrics_addr)]
    pub metrics_addr: Option<String>,
    /// Keep the cluster key (which opens the CA key sealed in the state) in FILE, an absolute
    /// path off the data dir (e.g. on a tmpfs the operator fills before each start), instead of
    /// <data-dir>/pki/cluster.key. A node started with it refuses to start when FILE is missing.
    #[arg(long = "cluster-key-file", value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
}

fn check_metrics_addr(s: &str) -> Result<String, String> {
    agent::metrics::parse_addr(s).map(|_| s.to_string())
}

fn parse_label(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("label {s:?} is not KEY=VALUE")),
    }
}

fn check_node_timeout(s: &str) -> Result<String, String> {
    node_timeout(s).map(|_| s.to_string())
}

/// `--node-timeout`: 5s to 1h.
pub fn node_timeout(s: &str) -> Result<std::time::Duration, String> {
    let timeout = agent::definitions::parse_duration(s).map_err(|e| e.to_string())?;
    let (min, max) = (
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(3600),
    );
    if timeout < min || timeout > max {
        return Err(format!(
            "{s} is outside 5s..1h (nodes heartbeat every {}s at the fastest)",
            agent::scheduler::heartbeat::MIN_PERIOD.as_secs()
        ));
    }
    Ok(timeout)
}

/// Flags given at a restart that differ from what the node was started with.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}; a node keeps what it was started with: leave {} out (or use another --data-dir for a new node)",
    .0.join("; "),
    if .0.len() == 1 { "that flag" } else { "those flags" }
)]
pub struct Conflicts(pub Vec<String>);

/// The command-line spelling of a setting.
pub fn flag(key: &str) -> String {
    match key {
        "labels" => "--label".into(),
        "agent" => "-a/--agent".into(),
        key => format!("--{}", key.replace('_', "-")),
    }
}

impl StartSettings {
    /// The flags given: settings that are set, as JSON.
    pub fn given(&self) -> Map<String, Value> {
        let Ok(Value::Object(map)) = serde_json::to_value(self) else {
            return Map::new();
        };
        map.into_iter()
            .filter(|(_, v)| match v {
                Value::Null | Value::Bool(false) => false,
                Value::Array(a) => !a.is_empty(),
                _ => true,
            })
            .collect()
    }

    /// The settings of a restart: the stored ones, with the given flags that may change them.
    /// A stored key holds the node's value (`null` for "none"); a key it lacks was not recorded
    /// (an older node.json) and is taken from the flags.
    pub fn merge(
        stored: &Map<String, Value>,
        given: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Conflicts> {
        let mut merged = stored.clone();
        let mut conflicts = Vec::new();
        for (key, value) in given {
            match stored.get(key) {
                Some(old) if old != value && !may_change(key, old, value) => {
                    conflicts.push(format!(
                        "{} {} conflicts with this node's {}",
                        flag(key),
                        shown(value),
                        shown(old)
                    ));
                }
                _ => {
                    merged.insert(key.clone(), value.clone());
                }
            }
        }
        if conflicts.is_empty() {
            Ok(merged)
        } else {
            Err(Conflicts(conflicts))
        }
    }

    /// Settings from JSON (unknown keys, e.g. of a newer smrmgr, are left aside).
    pub fn from_map(map: Map<String, Value>) -> Result<StartSettings, serde_json::Error> {
        serde_json::from_value(Value::Object(map))
    }

    /// The settings to keep in node.json.
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// Every default filled in; `default_ip` is asked only when no address is set.
    pub fn with_defaults(
        mut self,
        default_ip: impl FnOnce() -> anyhow::Result<IpAddr>,
    ) -> anyhow::Result<StartSettings> {
        let agent = self
            .agent
            .clone()
            .ok_or_else(|| anyhow::anyhow!("-a/--agent NAME is required for a new node"))?;
        if self.ip.is_none() {
            self.ip = Some(default_ip()?);
        }
        let node = self.node.get_or_insert(agent).clone();
        self.domain.get_or_insert(node);
        self.api_port.get_or_insert(DEFAULT_API_PORT);
        self.raft_port.get_or_insert(DEFAULT_RAFT_PORT);
        self.cidr
            .get_or_insert(DEFAULT_CIDR.parse().expect("default cidr"));
        self.subnet_len.get_or_insert(DEFAULT_SUBNET_LEN);
        // The backend stays unset when not given: a new cluster gets the agent's default
        // (wireguard), a joining node the cluster's.
        self.wg_port.get_or_insert(overlay::wireguard::WG_PORT);
        self.node_timeout.get_or_insert(DEFAULT_NODE_TIMEOUT.into());
        self.metrics_addr
            .get_or_insert(agent::metrics::DEFAULT_ADDR.into());
        if self.store.is_some() {
            self.etcd_prefix.get_or_insert(DEFAULT_ETCD_PREFIX.into());
        }
        Ok(self)
    }
}

fn may_change(key: &str, old: &Value, new: &Value) -> bool {
    let etcd = |v: &Value| v.as_str().is_some_and(|s| s.starts_with("etcd"));
    // The endpoints of the same etcd may move; moving between stores may not.
    MUTABLE.contains(&key) || (key == "store" && etcd(old) && etcd(new))
}

fn shown(value: &Value) -> String {
    match value {
        Value::Null => "(none)".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// One argument of a systemd `ExecStart=` line: as it is when it holds only characters systemd
/// reads literally, else double-quoted with `\` and `"` escaped; `%` and `$` doubled in either
/// case (systemd would expand them as specifiers and environment variables).
pub fn systemd_exec_arg(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,@+%$".contains(c));
    let text = arg.replace('%', "%%").replace('$', "$$");
    if plain {
        return text;
    }
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Map<String, Value> {
        StartSettings {
            agent: Some("a1".into()),
            ip: Some("10.0.0.1".parse().unwrap()),
            api_port: Some(2443),
            labels: vec!["zone=a".into()],
            ..StartSettings::default()
        }
        .with_defaults(|| unreachable!("the ip is set"))
        .unwrap()
        .to_map()
    }

    #[test]
    fn a_restart_without_flags_is_the_stored_settings() {
        let merged = StartSettings::merge(&stored(), &StartSettings::default().given()).unwrap();
        let settings = StartSettings::from_map(merged).unwrap();
        assert_eq!(settings.api_port, Some(2443));
        assert_eq!(settings.raft_port, Some(DEFAULT_RAFT_PORT));
        assert_eq!(settings.labels, vec!["zone=a".to_string()]);
        assert_eq!(settings.node.as_deref(), Some("a1"));
    }

    #[test]
    fn identity_flags_that_differ_are_refused_and_mutable_ones_taken() {
        let given = StartSettings {
            api_port: Some(1443),
            store: Some("etcd://h:2379".into()),
            ..StartSettings::default()
        };
        let e = StartSettings::merge(&stored(), &given.given()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("--api-port 1443 conflicts with this node's 2443"),
            "{text}"
        );
        assert!(
            text.contains("--store etcd://h:2379 conflicts with this node's (none)"),
            "{text}"
        );
        // The same value again, and a mutable setting, are fine.
        let given = StartSettings {
            api_port: Some(2443),
            labels: vec!["zone=b".into()],
            docker_host: Some("unix:///d.sock".into()),
            ..StartSettings::default()
        };
        let merged = StartSettings::merge(&stored(), &given.given()).unwrap();
        let settings = StartSettings::from_map(merged).unwrap();
        assert_eq!(settings.labels, vec!["zone=b".to_string()]);
        assert_eq!(settings.docker_host.as_deref(), Some("unix:///d.sock"));
    }

    #[test]
    fn a_setting_the_stored_file_lacks_is_taken_from_the_flags() {
        let mut old = stored();
        old.remove("iface");
        old.remove("backend");
        let given = StartSettings {
            backend: Some("host-gw".into()),
            ..StartSettings::default()
        };
        let merged = StartSettings::merge(&old, &given.given()).unwrap();
        assert_eq!(merged["backend"], "host-gw");
    }

    #[test]
    fn systemd_exec_args_are_quoted_where_systemd_would_split_or_expand_them() {
        let line: Vec<String> = [
            "-a",
            "vm1.example.com",
            "--token",
            "a b",
            "50%",
            "$HOME",
            "say \"hi\" \\ there",
            "",
        ]
        .iter()
        .map(|a| systemd_exec_arg(a))
        .collect();
        assert_eq!(
            line,
            [
                "-a",
                "vm1.example.com",
                "--token",
                "\"a b\"",
                "50%%",
                "$$HOME",
                "\"say \\\"hi\\\" \\\\ there\"",
                "\"\"",
            ]
        );
    }
}
