//! Wires a node together: data directory, PKI, join or bootstrap, Raft store, API and Raft servers,
//! and the leader's membership reconciler.
//!
//! Data directory layout (default /var/lib/smr, mode 0700):
//! ```text
//! node.json            who this node is (id, name, addresses); written once joined or bootstrapped
//! wireguard.key        this node's WireGuard private key (base64, mode 0600); never leaves the node
//! pki/ca.crt ca.key    the cluster CA (ca.key only on the node that created the cluster)
//! pki/cluster.key      the cluster key (0600): opens the CA key sealed in the state
//! pki/node.crt .key    this node's certificate and key
//! pki/admin.crt .key   the admin client certificate for smrctl
//! raft/                Raft log, vote and snapshots (redb); absent when the state is in etcd
//! gitops/              bare clones of gitops repositories (used by the leader)
//! admin.context        API URL + admin certificate, smrctl's default context
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::middleware;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api;
use crate::api::types::{JoinRequest, JoinResponse};
use crate::client::{Context, error_chain, write_private};
use crate::node::{Consistency, Node, new_op_id, now_ms};
use crate::pki::{self, ClusterCa, Identity, JoinToken, Role};
use crate::state::{
    CaRecord, Command, CommandResult, NetworkSettings, NodeRecord, Op, join_host_port,
};
use crate::store::{EtcdConfig, RaftPeer, Store, StoreConfig, Transport};
pub use smr_core::backend::NetworkBackend;

/// Everything `smrmgr start` passes to the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: String,
    pub domain: String,
    pub host: String,
    pub join: Option<String>,
    pub token: Option<String>,
    /// The node's own underlay address: what it binds and where its packets leave.
    pub ip: IpAddr,
    /// What other nodes dial (WireGuard endpoint, API, Raft; an IP SAN of the node certificate);
    /// `None`: `ip`.
    pub public_ip: Option<IpAddr>,
    /// UDP port of the WireGuard device.
    pub wg_port: u16,
    pub data_dir: PathBuf,
    pub docker_host: Option<String>,
    pub api_port: u16,
    pub raft_port: u16,
    pub labels: BTreeMap<String, String>,
    /// Cluster network and subnet length (used when this node creates the cluster).
    pub cidr: ipnet::Ipv4Net,
    pub subnet_len: u8,
    /// Overlay backend: `wireguard`, `vxlan`, `host-gw` or `none`. Used when this node creates the
    /// cluster (`None`: [`NetworkBackend::DEFAULT`]); a joining node that names one is refused
    /// when the cluster runs another.
    pub backend: Option<NetworkBackend>,
    /// Underlay interface for the overlay (default: the one holding `ip`).
    pub iface: Option<String>,
    /// Whether this node runs replicas.
    pub workloads: bool,
    /// How long a node may stay silent before, when this node leads, its replicas are moved.
    pub node_timeout: Duration,
    /// Keep the state in this etcd cluster instead of the embedded Raft store.
    pub etcd: Option<EtcdSettings>,
    /// The `smrmgr start` settings this node runs with, kept in `node.json` (`start`) so that a
    /// restart uses them; the agent only stores them.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Where to serve Prometheus metrics in plain HTTP (`--metrics-addr`; `None`: off).
    pub metrics_addr: Option<SocketAddr>,
    /// Where the cluster key is kept when not in `pki/cluster.key` (`--cluster-key-file`, an
    /// absolute path, e.g. on a tmpfs): the node refuses to start when it is missing.
    pub cluster_key_file: Option<PathBuf>,
}

/// `smrmgr start --store etcd://...` and its TLS files; kept in `node.json` for restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// `etcd://HOST:PORT[,HOST:PORT...]`
    pub url: String,
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// etcd user; its password is read from `password_file` at each start (never kept here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl EtcdSettings {
    /// The store configuration, with the PEM files read.
    pub fn store_config(&self) -> Result<EtcdConfig, DaemonError> {
        let mut config = EtcdConfig::parse_url(&self.url)?;
        config.prefix = self.prefix.clone();
        let read = |path: &Option<PathBuf>| -> Result<Option<String>, DaemonError> {
            path.as_ref()
                .map(|p| std::fs::read_to_string(p).map_err(|e| data_err(p, e)))
                .transpose()
        };
        config.ca_pem = read(&self.cacert)?;
        config.cert_pem = read(&self.cert)?;
        config.key_pem = read(&self.key)?;
        config.credentials = match (&self.user, read(&self.password_file)?) {
            (Some(user), Some(password)) => {
                let password = password.trim_end_matches(['\r', '\n']).to_string();
                if user.is_empty() || password.is_empty() {
                    return Err(DaemonError::Config(
                        "--etcd-user and the --etcd-password-file content must not be empty".into(),
                    ));
                }
                Some(crate::credentials::Credentials {
                    user: user.clone(),
                    password,
                })
            }
            (None, None) => None,
            _ => {
                return Err(DaemonError::Config(
                    "--etcd-user and --etcd-password-file go together".into(),
                ));
            }
        };
        if !config.prefix.starts_with('/') || !config.prefix.ends_with('/') {
            return Err(DaemonError::Config(format!(
                "--etcd-prefix {:?} must start and end with '/'",
                config.prefix
            )));
        }
        Ok(config)
    }
}

/// Where a node keeps its WireGuard private key.
pub fn wireguard_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("wireguard.key")
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("data directory {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("PKI: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("join refused by {addr}: {reason}")]
    Join { addr: String, reason: String },
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("WireGuard key: {0}")]
    WireguardKey(#[from] overlay::wireguard::WgError),
}

/// What a node remembers about itself, in `node.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub id: u64,
    pub name: String,
    pub host: String,
    pub domain: String,
    pub ip: String,
    /// The address other nodes dial (`--public-ip`); absent: `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// UDP port of the WireGuard device (`--wg-port`).
    #[serde(default = "default_wg_port")]
    pub wg_port: u16,
    pub api_port: u16,
    pub raft_port: u16,
    /// False until a bootstrap node has recorded itself and the CA in the cluster state.
    pub bootstrapped: bool,
    /// MAC of this node's VXLAN device, kept across restarts.
    pub vtep_mac: String,
    #[serde(default = "yes")]
    pub schedulable: bool,
    /// Set when the cluster keeps its state in etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSettings>,
    /// The `smrmgr start` settings of the last start (see [`AgentConfig::settings`]).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub start: serde_json::Map<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

fn default_wg_port() -> u16 {
    overlay::wireguard::WG_PORT
}

impl NodeFile {
    /// The address other nodes dial.
    pub fn dial_ip(&self) -> &str {
        self.public_ip.as_deref().unwrap_or(&self.ip)
    }

    fn record(&self, labels: &BTreeMap<String, String>, wg_public_key: String) -> NodeRecord {
        NodeRecord {
            id: self.id,
            name: self.name.clone(),
            host: self.host.clone(),
            domain: self.domain.clone(),
            ip: self.ip.clone(),
            public_ip: self.public_ip.clone(),
            wg_port: Some(self.wg_port),
            wg_public_key: Some(wg_public_key),
            api_port: self.api_port,
            raft_port: self.raft_port,
            labels: labels.clone(),
            joined_ms: 0,
            schedulable: self.schedulable,
            lease: None,
            vtep_mac: Some(self.vtep_mac.clone()),
        }
    }

    fn peer(&self) -> RaftPeer {
        RaftPeer {
            raft_addr: join_host_port(self.dial_ip(), self.raft_port),
            api_addr: join_host_port(self.dial_ip(), self.api_port),
            name: self.name.clone(),
        }
    }
}

pub fn node_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join("node.json")
}

pub fn context_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.context")
}

fn data_err(path: &Path, e: impl std::fmt::Display) -> DaemonError {
    DaemonError::DataDir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    config: AgentConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    pki::install_crypto_provider();
    if !crate::definitions::is_dns_label(&config.name) {
        return Err(DaemonError::Config(format!(
            "agent name {:?} must be a DNS label: a-z, 0-9 and '-', at most 63 characters",
            config.name
        )));
    }
    let dir = config.data_dir.clone();
    create_private_dir(&dir)?;
    create_private_dir(&dir.join("pki"))?;
    let pki_dir = dir.join("pki");

    // Bind first: a port in use is reported before anything is written.
    let api_listener = bind(config.ip, config.api_port).await?;
    let raft_listener = bind(config.ip, config.raft_port).await?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };

    // The WireGuard key pair is made here, whatever the backend: a joining node learns the
    // cluster's backend only after it joined, and its public key goes with the join request.
    let wg_key = overlay::wireguard::load_or_create_key(&wireguard_key_path(&dir))?;
    let wg_public_key = wg_key.public_key().to_string();

    let node_path = node_file_path(&dir);
    // Checked before anything is written.
    cluster_key_path(&config, &pki_dir)?;
    let (mut me, identity, ca) = if node_path.exists() {
        let mut me: NodeFile = read_json(&node_path)?;
        let public_ip = config.public_ip.unwrap_or(config.ip).to_string();
        if public_ip != me.dial_ip() {
            return Err(DaemonError::Config(format!(
                "{} is registered with public address {}; --public-ip {public_ip} cannot change \
                 it (remove the node and join again)",
                dir.display(),
                me.dial_ip()
            )));
        }
        // A new port is published by the network loop like a new key.
        me.wg_port = config.wg_port;
        match (&me.etcd, &config.etcd) {
            (None, Some(_)) => {
                return Err(DaemonError::Config(format!(
                    "{} belongs to a cluster on the embedded Raft store; --store etcd:// cannot \
                     move it",
                    dir.display()
                )));
            }
            (Some(_), Some(given)) => me.etcd = Some(given.clone()),
            _ => {}
        }
        if me.name != config.name {
            return Err(DaemonError::Config(format!(
                "{} belongs to agent {}, not {}; use another --data-dir",
                dir.display(),
                me.name,
                config.name
            )));
        }
        let identity = Identity::load(&pki_dir, "node")?;
        let ca = if pki_dir.join(pki::CA_KEY_FILE).exists() {
            match ClusterCa::load(&pki_dir) {
                Ok(ca) => Some(ca),
                // After a CA rotation `ca.crt` is the new CA's: the key file is the retired
                // CA's. Signing uses the new CA's key sealed in the state.
                Err(pki::PkiError::KeyMismatch(_)) => {
                    tracing::info!(
                        "{} is the key of a CA rotated out: not used",
                        pki_dir.join(pki::CA_KEY_FILE).display()
                    );
                    None
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        tracing::info!(id = me.id, name = %me.name, "restarting from {}", dir.display());
        me.start = config.settings.clone();
        (me, identity, ca)
    } else if let Some(join_addr) = &config.join {
        let token = config.token.as_deref().ok_or_else(|| {
            DaemonError::Config("--join needs --token (run `smrmgr token` on a member)".into())
        })?;
        let (me, identity) = join(&config, join_addr, token, &pki_dir, &wg_public_key).await?;
        write_json(&node_path, &me)?;
        (me, identity, None)
    } else {
        let (me, identity, ca) = create_cluster(&config, &pki_dir)?;
        write_json(&node_path, &me)?;
        (me, identity, Some(ca))
    };

    let cluster_key_path = cluster_key_path(&config, &pki_dir)?;
    let cluster_key = if cluster_key_path.exists() {
        Some(pki::ClusterKey::load(&cluster_key_path)?)
    } else if let Some(file) = &config.cluster_key_file {
        return Err(DaemonError::Config(format!(
            "--cluster-key-file {}: no such file; put this cluster's key (SMRKEY-1-...) there \
             before starting the node",
            file.display()
        )));
    } else {
        None
    };
    let leaf_validity = crate::renewal::leaf_validity()?;
    // The API and Raft servers and the node client present what `live` holds at each new
    // connection: a renewed certificate is used without a restart.
    let live = pki::LiveIdentity::new(identity.clone())?;
    let peers = pki::PeerClient::live(&live, Duration::from_secs(10))?;
    let transport = Transport {
        client: peers.clone(),
        scheme: "https".into(),
    };
    let store = match &me.etcd {
        Some(settings) => {
            let etcd = settings.store_config()?;
            tracing::info!(endpoints = ?etcd.endpoints, prefix = %etcd.prefix, "state store: etcd");
            Store::open_etcd(&etcd, me.id, StoreConfig::default()).await?
        }
        None => Store::open(&dir.join("raft"), me.id, transport, StoreConfig::default()).await?,
    };
    let node = Arc::new(Node::new(
        me.id,
        me.name.clone(),
        store.clone(),
        ca,
        peers,
        config.docker_host.clone(),
        wireguard_key_path(&dir),
    ));
    node.set_pki(crate::node::certs::NodePki {
        cluster_key: cluster_key.clone(),
        live: live.clone(),
        leaf_validity,
    });
    // A restart naming another backend than the cluster's is refused, not ignored.
    if let Some(asked) = &config.backend
        && let Ok(state) = node.state(Consistency::Stale).await
        && let Some(network) = &state.network
        && network.backend != asked.as_str()
    {
        return Err(DaemonError::Config(format!(
            "the cluster runs the {} backend (fixed by the node that created it); --backend {asked} \
             cannot change it",
            network.backend
        )));
    }

    let api_tls = pki::api_server_config_live(&live)?;
    let raft_tls = pki::raft_server_config_live(&live)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let api_server = tokio::spawn(api::serve::serve_tls(
        api_listener,
        api_tls,
        api::router(node.clone()),
        stop_rx.clone(),
    ));
    let raft_router = store
        .rpc_router()
        .route_layer(middleware::from_fn(api::require_node));
    let raft_server = tokio::spawn(api::serve::serve_tls(
        raft_listener,
        raft_tls,
        raft_router,
        stop_rx.clone(),
    ));

    write_json(&node_path, &me)?;
    if !me.bootstrapped {
        if me.id == 1 && config.join.is_none() {
            finish_bootstrap(&node, &me, &config, &wg_public_key, cluster_key.as_ref()).await?;
        }
        me.bootstrapped = true;
        write_json(&node_path, &me)?;
    }
    // `smrmgr restore` or `start --force-new-cluster` left a state to start from.
    crate::recovery::apply_seed(&node, &dir, me.peer())
        .await
        .map_err(|e| DaemonError::Bootstrap(e.to_string()))?;

    let admin = Identity::load(&pki_dir, "admin")?;
    let context = Context {
        name: me.name.clone(),
        api_url: format!("https://{}", join_host_port(&me.ip, me.api_port)),
        ca_pem: admin.ca_pem.clone(),
        cert_pem: admin.cert_pem,
        key_pem: admin.key_pem,
    };
    context
        .save(&context_path(&dir))
        .map_err(|e| data_err(&dir, e))?;

    // An etcd-backed cluster has no Raft membership to keep.
    let reconciler = node
        .is_raft()
        .then(|| tokio::spawn(keep_membership(node.clone(), stop_rx.clone())));
    let labels = tokio::spawn(keep_labels(
        node.clone(),
        config.labels.clone(),
        stop_rx.clone(),
    ));
    // node.json's VTEP MAC is written by this agent; one that does not parse is refused, not
    // replaced by 00:00:00:00:00:00 (which would give every peer a wrong neighbour entry).
    let vtep_mac = crate::controllers::network::parse_mac(&me.vtep_mac).ok_or_else(|| {
        DaemonError::Config(format!(
            "node.json: vtep_mac {:?} is not a MAC address (aa:bb:cc:dd:ee:ff)",
            me.vtep_mac
        ))
    })?;
    let loops = tokio::spawn(crate::controllers::run_node(
        node.clone(),
        crate::controllers::NodeLoops {
            id: me.id,
            workloads: config.workloads,
            underlay_ip: me.ip.parse().unwrap_or(config.ip),
            wg_key_path: wireguard_key_path(&dir),
            wg_port: me.wg_port,
            iface: config.iface.clone(),
            vtep_mac,
            files_dir: dir.join("files"),
            gitops_cache: dir.join("gitops"),
            node_timeout: config.node_timeout,
        },
        stop_rx.clone(),
    ));
    let renewal = tokio::spawn(crate::renewal::run(
        node.clone(),
        live.clone(),
        crate::renewal::Renewal {
            pki_dir: pki_dir.clone(),
            name: me.name.clone(),
            sans: sans(&config),
            context_path: context_path(&dir),
            api_url: context.api_url.clone(),
        },
        stop_rx.clone(),
    ));
    let migration = tokio::spawn(crate::migration::run(
        node.clone(),
        cluster_key_path.clone(),
        stop_rx.clone(),
    ));
    let metrics = metrics_listener
        .map(|l| tokio::spawn(crate::metrics::serve(l, node.clone(), stop_rx.clone())));
    tracing::info!(id = me.id, name = %me.name, api = %context.api_url, "agent serving");

    crate::shutdown::stopped(&mut shutdown).await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(reconciler) = reconciler {
        let _ = reconciler.await;
    }
    let _ = loops.await;
    let _ = labels.await;
    let _ = renewal.await;
    let _ = migration.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    let _ = api_server.await;
    let _ = raft_server.await;
    store.shutdown().await;
    Ok(())
}

/// Where this node keeps the cluster key: `--cluster-key-file` (absolute), else in `pki/`.
fn cluster_key_path(config: &AgentConfig, pki_dir: &Path) -> Result<PathBuf, DaemonError> {
    match &config.cluster_key_file {
        Some(file) if !file.is_absolute() => Err(DaemonError::Config(format!(
            "--cluster-key-file {} must be an absolute path",
            file.display()
        ))),
        Some(file) => Ok(file.clone()),
        None => Ok(pki_dir.join(pki::CLUSTER_KEY_FILE)),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| data_err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| data_err(dir, e))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|e| data_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| data_err(path, e))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DaemonError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| data_err(path, e))?;
    write_private(path, &text).map_err(|e| data_err(path, e))
}

/// Binds `ip:port`; when `ip` is not on this host (a NAT-ed public address), all addresses.
async fn bind(ip: IpAddr, port: u16) -> Result<TcpListener, DaemonError> {
    let addr = SocketAddr::new(ip, port);
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            tracing::warn!("{ip} is not an address of this host; listening on {any}");
            TcpListener::bind(any)
                .await
                .map_err(|e| DaemonError::Listen {
                    addr: any,
                    reason: e.to_string(),
                })
        }
        Err(e) => Err(DaemonError::Listen {
            addr,
            reason: e.to_string(),
        }),
    }
}

/// The node certificate's names: its addresses (own and public), host and domain.
fn sans(config: &AgentConfig) -> Vec<String> {
    let mut sans = vec![
        config.ip.to_string(),
        config.public_ip.unwrap_or(config.ip).to_string(),
        config.host.clone(),
        config.domain.clone(),
    ];
    sans.sort();
    sans.dedup();
    sans
}

fn node_file(config: &AgentConfig, id: u64, bootstrapped: bool, vtep_mac: String) -> NodeFile {
    NodeFile {
        id,
        name: config.name.clone(),
        host: config.host.clone(),
        domain: config.domain.clone(),
        ip: config.ip.to_string(),
        public_ip: config
            .public_ip
            .filter(|p| *p != config.ip)
            .map(|p| p.to_string()),
        wg_port: config.wg_port,
        api_port: config.api_port,
        raft_port: config.raft_port,
        bootstrapped,
        vtep_mac,
        schedulable: config.workloads,
        etcd: config.etcd.clone(),
        start: config.settings.clone(),
    }
}

/// First node: a new CA, this node's and the admin's certificates, signed here.
fn create_cluster(
    config: &AgentConfig,
    pki_dir: &Path,
) -> Result<(NodeFile, Identity, ClusterCa), DaemonError> {
    let ca = ClusterCa::generate("smr")?;
    ca.save(pki_dir)?;
    // `smrmgr restore` made this cluster's key already: the secrets of the state it restores
    // are sealed with it.
    let key_path = cluster_key_path(config, pki_dir)?;
    let restored = key_path.exists() && crate::recovery::seed_path(&config.data_dir).exists();
    // A cluster of the first version had none (emulated for tests only: its migration is
    // tested from there).
    if !restored && !crate::migration::test_legacy_ca() {
        pki::ClusterKey::generate().save(&key_path)?;
    }
    let validity = crate::renewal::leaf_validity()?;
    let (key_pem, csr) = pki::new_key_and_csr(Role::Node, &config.name, &sans(config))?;
    let cert_pem =
        ca.sign_csr_valid_for(&csr, Role::Node, &config.name, &sans(config), validity)?;
    let identity = Identity {
        cert_pem,
        key_pem,
        ca_pem: ca.cert_pem().to_string(),
    };
    identity.save(pki_dir, "node")?;
    let admin_name = format!("admin@{}", config.name);
    let (key_pem, csr) = pki::new_key_and_csr(Role::Admin, &admin_name, &[])?;
    let cert_pem = ca.sign_csr_valid_for(&csr, Role::Admin, &admin_name, &[], validity)?;
    Identity {
        cert_pem,
        key_pem,
        ca_pem: ca.cert_pem().to_string(),
    }
    .save(pki_dir, "admin")?;
    tracing::info!(fingerprint = %ca.fingerprint(), "created the cluster CA");
    Ok((
        node_file(config, 1, false, mac_string(&overlay::generate_vtep_mac())),
        identity,
        ca,
    ))
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// First node, once its store runs: initialize Raft, record the CA, the network and this node.
async fn finish_bootstrap(
    node: &Node,
    me: &NodeFile,
    config: &AgentConfig,
    wg_public_key: &str,
    cluster_key: Option<&pki::ClusterKey>,
) -> Result<(), DaemonError> {
    let labels = &config.labels;
    let ca = node
        .ca
        .as_ref()
        .ok_or_else(|| DaemonError::Bootstrap("the CA key is missing".into()))?;
    node.bootstrap(me.peer()).await?;
    let ca_record = CaRecord {
        cert_pem: ca.cert_pem().to_string(),
        fingerprint: ca.fingerprint(),
        holder: me.id,
        key_sealed: cluster_key.map(|k| k.seal_ca(ca)).transpose()?,
        next: None,
        previous: None,
        key_migrating: false,
    };
    let network = NetworkSettings {
        cidr: config.cidr,
        subnet_len: config.subnet_len,
        backend: config
            .backend
            .unwrap_or(NetworkBackend::DEFAULT)
            .to_string(),
    };
    let commands = [
        Op::SetCa { ca: ca_record },
        Op::SetNetwork { network },
        Op::RegisterNode {
            node: me.record(labels, wg_public_key.to_string()),
        },
    ];
    // On etcd the state may hold a cluster already: read it up to date.
    let state = node
        .state(if node.is_raft() {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        })
        .await
        .map_err(|e| DaemonError::Bootstrap(e.to_string()))?;
    if let Some(existing) = &state.ca
        && existing.fingerprint != ca.fingerprint()
    {
        return Err(DaemonError::Bootstrap(format!(
            "the store already holds another cluster (CA {}); join it with --join/--token, or use \
             another --etcd-prefix",
            existing.fingerprint
        )));
    }
    let registered = state.nodes.values().any(|n| n.name == me.name);
    for op in commands {
        if registered && matches!(op, Op::RegisterNode { .. }) {
            continue;
        }
        let command = Command {
            op_id: new_op_id(),
            at_ms: now_ms(),
            op,
        };
        match node
            .propose_command(command)
            .await
            .map_err(|e| DaemonError::Bootstrap(e.to_string()))?
        {
            CommandResult::Rejected { reason } => return Err(DaemonError::Bootstrap(reason)),
            CommandResult::NodeRegistered { id } if id != me.id => {
                return Err(DaemonError::Bootstrap(format!(
                    "the first node was given id {id}, expected {}",
                    me.id
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Joining node: verify the cluster by the token's CA fingerprint, send CSRs, keep the certificates.
async fn join(
    config: &AgentConfig,
    join_addr: &str,
    token: &str,
    pki_dir: &Path,
    wg_public_key: &str,
) -> Result<(NodeFile, Identity), DaemonError> {
    let parsed: JoinToken = token
        .parse()
        .map_err(|e| DaemonError::Config(format!("--token: {e}")))?;
    let (node_key, node_csr) = pki::new_key_and_csr(Role::Node, &config.name, &sans(config))?;
    let admin_name = format!("admin@{}", config.name);
    let (admin_key, admin_csr) = pki::new_key_and_csr(Role::Admin, &admin_name, &[])?;
    let vtep_mac = mac_string(&overlay::generate_vtep_mac());
    let request = JoinRequest {
        token: token.to_string(),
        name: config.name.clone(),
        host: config.host.clone(),
        domain: config.domain.clone(),
        ip: config.ip.to_string(),
        public_ip: config.public_ip.map(|p| p.to_string()),
        wg_port: Some(config.wg_port),
        wg_public_key: Some(wg_public_key.to_string()),
        backend: config.backend.map(|b| b.to_string()),
        api_port: config.api_port,
        raft_port: config.raft_port,
        labels: config.labels.clone(),
        node_csr,
        admin_csr,
        vtep_mac: Some(vtep_mac.clone()),
        schedulable: config.workloads,
    };
    let client = pki::pinned_reqwest_client(&parsed.ca_fingerprint, Duration::from_secs(30))?;
    let url = format!("https://{join_addr}/api/v1/join");
    let join_err = |reason: String| DaemonError::Join {
        addr: join_addr.to_string(),
        reason,
    };
    let mut retry = api_types::retry::retry_until(
        Instant::now() + Duration::from_secs(30),
        Duration::from_millis(500),
        Duration::from_millis(500),
    );
    let response: JoinResponse = loop {
        let answer = client.post(&url).json(&request).send().await;
        let retryable = match answer {
            Ok(resp) if resp.status().is_success() => {
                break resp
                    .json()
                    .await
                    .map_err(|e| join_err(format!("bad answer: {e}")))?;
            }
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let message = serde_json::from_str::<crate::api::types::ErrorBody>(&body)
                    .map(|b| b.error.message)
                    .unwrap_or(body);
                // 503: not registered; 504: maybe registered. The same request again is the
                // same registration (its op_id derives from the CSR).
                if !matches!(status.as_u16(), 503 | 504) {
                    return Err(join_err(message));
                }
                message
            }
            Err(e) => error_chain(&e),
        };
        let Some(pause) = retry.next_pause() else {
            return Err(join_err(retryable));
        };
        tokio::time::sleep(pause).await;
    };
    let identity = Identity::new(response.node_cert, node_key, response.ca_pem.clone())
        .map_err(|e| join_err(format!("the certificate it sent is not usable: {e}")))?;
    if identity.ca_fingerprint()? != parsed.ca_fingerprint {
        return Err(join_err(
            "the CA it sent does not match the token's fingerprint".into(),
        ));
    }
    identity.save(pki_dir, "node")?;
    Identity::new(response.admin_cert, admin_key, response.ca_pem)?.save(pki_dir, "admin")?;
    if let Some(text) = &response.cluster_key {
        let key = pki::ClusterKey::from_text(text)
            .map_err(|e| join_err(format!("the cluster key it sent: {e}")))?;
        key.save(&cluster_key_path(config, pki_dir)?)?;
    }
    tracing::info!(id = response.id, "joined the cluster through {join_addr}");
    Ok((node_file(config, response.id, true, vtep_mac), identity))
}

/// Puts the labels this node was (re)started with into its registry record, once it is there.
async fn keep_labels(
    node: Arc<Node>,
    labels: BTreeMap<String, String>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Ok(state) = node.state(Consistency::Stale).await
            && let Some(record) = state.nodes.get(&node.id)
        {
            if record.labels == labels {
                return;
            }
            let op = Op::SetNodeLabels {
                id: node.id,
                labels: labels.clone(),
            };
            match node.propose(op, None).await {
                Ok(_) => {
                    tracing::info!(?labels, "node labels updated");
                    return;
                }
                Err(e) => tracing::warn!("updating this node's labels: {e}"),
            }
        }
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// On the leader, keeps the Raft membership equal to the node registry: registered nodes are added
/// (as learners, promoted by the voter policy), removed nodes are taken out.
async fn keep_membership(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut changes = node.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = changes.changed() => {},
            _ = tick.tick() => {},
        }
        node.update_membership().await;
    }
}
