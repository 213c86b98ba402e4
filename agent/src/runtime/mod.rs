//! The container runtime: Docker through bollard, behind the narrow [`Runtime`] trait the node
//! reconciler uses. The container model (configurations, what the engine shows, the [`labels`]
//! that mark a container as smr's) is `smr_core::container`; only containers labelled as smr's
//! are listed here, let alone touched.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;

use crate::credentials::Credentials;
pub use smr_core::container::{ContainerConfig, ContainerInfo, State, labels, parse_registry_auth};
pub use smr_core::networks::bridge::{BridgeConfig, NetworkInfo};
pub use smr_core::volume::{VolumeConfig, VolumeInfo};

pub(crate) mod networks;
pub(crate) mod volumes;

/// How long pulling one image may take before the create fails (and is retried).
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot reach Docker at {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container name {0} is already in use")]
    Conflict(String),
    #[error("image {image} is not on this node and could not be pulled: {reason}")]
    ImageMissing { image: String, reason: String },
    #[error("pulling image {image}")]
    Pulling { image: String },
    #[error("docker: {0}")]
    Docker(String),
}

/// The address `field` gives of container `c` on each of its Docker networks, by network name
/// (a network where it gives none, or not an IPv4 address, is left out).
fn per_network<C: FromIterator<(String, std::net::Ipv4Addr)>>(
    c: &bollard::models::ContainerInspectResponse,
    field: fn(&bollard::models::EndpointSettings) -> Option<&str>,
) -> C {
    c.network_settings
        .iter()
        .filter_map(|n| n.networks.as_ref())
        .flatten()
        .filter_map(|(name, ep)| Some((name.clone(), field(ep)?.parse().ok()?)))
        .collect()
}

pub fn docker_error(context: &str, e: bollard::errors::Error) -> RuntimeError {
    match &e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(format!("{context}: {message}")),
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::Conflict(format!("{context}: {message}")),
        _ => RuntimeError::Docker(format!("{context}: {e}")),
    }
}

/// Pulls `image` to completion; the daemon's own error when it fails.
async fn pull(
    docker: &Docker,
    image: &str,
    credentials: Option<bollard::auth::DockerCredentials>,
) -> Result<(), String> {
    let options = bollard::query_parameters::CreateImageOptionsBuilder::new()
        .from_image(image)
        .build();
    let mut progress = docker.create_image(Some(options), None, credentials);
    while let Some(step) = progress.next().await {
        let step = step.map_err(|e| e.to_string())?;
        if let Some(message) = step.error_detail.and_then(|d| d.message) {
            return Err(message);
        }
    }
    // A pull that "succeeds" without the image (e.g. another platform) still leaves it missing.
    docker
        .inspect_image(image)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The operations the node reconciler needs from a container engine.
pub trait Runtime: Send + Sync + 'static {
    /// Every container smr manages on this engine, in any state.
    fn list_managed(&self)
    -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;
    /// Creates (not starts) a container; returns its id.
    fn create(
        &self,
        config: &ContainerConfig,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    fn stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Runs an init container to completion and removes it: its exit code and the end of its
    /// log. A leftover container of the same name is removed first if it is an init container.
    fn run_to_completion(
        &self,
        config: &ContainerConfig,
    ) -> impl Future<Output = Result<(i64, String), RuntimeError>> + Send;
    /// Runs a command in a running container and waits for it.
    fn exec(
        &self,
        id: &str,
        cmd: &[String],
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send;
    /// Every named volume on this engine (smr's or not), with the containers that mount it.
    fn list_volumes(&self) -> impl Future<Output = Result<Vec<VolumeInfo>, RuntimeError>> + Send;
    /// Creates a named volume ([`smr_core::volume`]).
    fn create_volume(
        &self,
        config: &VolumeConfig,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a named volume; the engine refuses while a container mounts it.
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Every network on this engine (smr's or not), with the containers connected to it.
    fn list_networks(&self) -> impl Future<Output = Result<Vec<NetworkInfo>, RuntimeError>> + Send;
    /// Creates a bridge network ([`smr_core::networks::bridge`]).
    fn create_network(
        &self,
        config: &BridgeConfig,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a network; the engine refuses while a container is connected to it.
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}

/// [`Runtime`] over a Docker engine.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    host: String,
    /// Pulls in progress or recently failed, by image: a pull runs in the background so the
    /// reconciler goes on while a large image downloads.
    pulls: Arc<Mutex<HashMap<String, Pull>>>,
}

enum Pull {
    Running,
    Failed { reason: String, at: Instant },
}

/// How long a failed pull is reported before the next attempt.
const PULL_RETRY: Duration = Duration::from_secs(10);

fn rfc3339_ms(text: Option<&str>) -> Option<u64> {
    let text = text?;
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    if t.year() < 1971 {
        return None;
    }
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

impl DockerRuntime {
    /// Connects to `host` (`unix:///path`, `tcp://host:port`; default `DOCKER_HOST` or the local
    /// socket) and negotiates the API version with the engine.
    pub async fn connect(host: Option<&str>) -> Result<DockerRuntime, RuntimeError> {
        let host = host
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let unreachable = |reason: String| RuntimeError::Unreachable {
            host: host.clone(),
            reason,
        };
        let docker = if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(&host, 120, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(unreachable(
                "use unix:///path/to/docker.sock or tcp://host:port".into(),
            ));
        }
        .map_err(|e| unreachable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(DockerRuntime {
            docker,
            host,
            pulls: Arc::default(),
        })
    }

    /// Ok when the daemon has `image` (`name:tag` or `name@digest`). Otherwise starts pulling
    /// it in the background (once) and answers [`RuntimeError::Pulling`] until the pull is over;
    /// a failed pull is answered [`RuntimeError::ImageMissing`] for [`PULL_RETRY`], then tried
    /// again.
    async fn ensure_image(
        &self,
        image: &str,
        auth: Option<&Credentials>,
    ) -> Result<(), RuntimeError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let mut pulls = self.pulls.lock().unwrap_or_else(|e| e.into_inner());
        match pulls.get(image) {
            Some(Pull::Running) => {
                return Err(RuntimeError::Pulling {
                    image: image.to_string(),
                });
            }
            Some(Pull::Failed { reason, at }) if at.elapsed() < PULL_RETRY => {
                return Err(RuntimeError::ImageMissing {
                    image: image.to_string(),
                    reason: reason.clone(),
                });
            }
            _ => {}
        }
        pulls.insert(image.to_string(), Pull::Running);
        let (docker, table, name) = (self.docker.clone(), self.pulls.clone(), image.to_string());
        let credentials = auth.map(|a| bollard::auth::DockerCredentials {
            username: Some(a.user.clone()),
            password: Some(a.password.clone()),
            ..Default::default()
        });
        tokio::spawn(async move {
            tracing::info!(image = %name, "pulling");
            let outcome = tokio::time::timeout(PULL_TIMEOUT, pull(&docker, &name, credentials))
                .await
                .unwrap_or_else(|_| Err(format!("the pull took longer than {PULL_TIMEOUT:?}")));
            let mut pulls = table.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Ok(()) => {
                    tracing::info!(image = %name, "pulled");
                    pulls.remove(&name);
                }
                Err(reason) => {
                    tracing::warn!(image = %name, "pull failed: {reason}");
                    let at = Instant::now();
                    pulls.insert(name, Pull::Failed { reason, at });
                }
            }
        });
        Err(RuntimeError::Pulling {
            image: image.to_string(),
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// For a container on several networks ([`labels::NETWORKS`]): the default route through
    /// its first network, each other network's range through that network's gateway (Docker
    /// picks the default route by network name). A failure stops the container's start: it is
    /// retried like any failed start.
    async fn route_networks(&self, id: &str) -> Result<(), RuntimeError> {
        let c = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| docker_error(id, e))?;
        let Some(wanted) = c
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(labels::NETWORKS))
        else {
            return Ok(());
        };
        let gateways: HashMap<String, std::net::Ipv4Addr> =
            per_network(&c, |ep| ep.gateway.as_deref());
        // `name=` (Docker's own `bridge`, whose range is Docker's): a gateway, no range route.
        let mut routes: Vec<(Option<ipnet::Ipv4Net>, std::net::Ipv4Addr)> = Vec::new();
        for entry in wanted.split(',') {
            let Some((name, range)) = entry.split_once('=') else {
                continue;
            };
            let range = match range {
                "" => Ok(None),
                r => r.parse::<ipnet::Ipv4Net>().map(Some),
            };
            let (Some(gateway), Ok(range)) = (gateways.get(name), range) else {
                return Err(RuntimeError::Docker(format!(
                    "{id}: no gateway on network {name} for the routes of its networks"
                )));
            };
            routes.push((range, *gateway));
        }
        let Some(&(_, default_via)) = routes.first() else {
            return Ok(());
        };
        let pid = c.state.as_ref().and_then(|s| s.pid).unwrap_or(0);
        if pid <= 0 {
            return Ok(());
        }
        let routes = overlay::netns::ContainerRoutes {
            default_via,
            ranges: routes[1..]
                .iter()
                .filter_map(|(range, via)| Some(((*range)?, *via)))
                .collect(),
        };
        overlay::netns::set_container_routes(pid as u32, routes)
            .await
            .map_err(|e| RuntimeError::Docker(e.to_string()))
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let c = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| docker_error(id, e))?;
        let state = c.state.clone().unwrap_or_default();
        let status = state.status.map(|s| s.to_string()).unwrap_or_default();
        let ips = per_network(&c, |ep| ep.ip_address.as_deref());
        Ok(ContainerInfo {
            id: c.id.clone().unwrap_or_default(),
            name: c
                .name
                .clone()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            labels: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.clone())
                .map(|l| l.into_iter().collect())
                .unwrap_or_default(),
            state: match status.as_str() {
                "running" => State::Running,
                "restarting" => State::Restarting,
                "paused" => State::Paused,
                "exited" => State::Exited,
                "dead" => State::Dead,
                "removing" => State::Removing,
                _ => State::Created,
            },
            exit_code: state.exit_code,
            started_ms: rfc3339_ms(state.started_at.as_deref()),
            finished_ms: rfc3339_ms(state.finished_at.as_deref()),
            ips,
            image: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.image.clone())
                .unwrap_or_default(),
        })
    }

    /// The log of a container (stdout and stderr), the last `tail` lines or all.
    pub async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<u8>, RuntimeError> {
        let tail = tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into());
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(|e| docker_error(id, e))?.into_bytes());
        }
        Ok(out)
    }
}

/// How many containers are inspected at once when listing.
const INSPECT_CONCURRENCY: usize = 8;

/// Force-removes a container when dropped (in a task of the current runtime).
struct RemoveOnDrop {
    docker: Docker,
    id: String,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let (docker, id) = (self.docker.clone(), std::mem::take(&mut self.id));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let options = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                let _ = docker.remove_container(&id, Some(options)).await;
            });
        }
    }
}

impl Runtime for DockerRuntime {
    async fn list_managed(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{}=true", labels::MANAGED)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| docker_error("listing containers", e))?;
        // Inspected a few at a time, in the listed order.
        let ids: Vec<String> = summaries.into_iter().filter_map(|s| s.id).collect();
        let mut inspected = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(INSPECT_CONCURRENCY) {
            inspected
                .extend(futures::future::join_all(chunk.iter().map(|id| self.inspect(id))).await);
        }
        let mut infos = Vec::with_capacity(inspected.len());
        for result in inspected {
            match result {
                Ok(info) => infos.push(info),
                // Removed between the list and the inspect.
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(infos)
    }

    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        self.ensure_image(&config.image, config.registry_auth.as_ref())
            .await?;
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for (port, proto, host_ip, host_port) in &config.ports {
            let key = format!("{port}/{proto}");
            exposed.push(key.clone());
            if let Some(host_port) = host_port {
                port_bindings.insert(
                    key,
                    Some(vec![PortBinding {
                        host_ip: host_ip.clone(),
                        host_port: Some(host_port.to_string()),
                    }]),
                );
            }
        }
        let host_config = HostConfig {
            binds: (!config.binds.is_empty()).then(|| config.binds.clone()),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            cap_add: (!config.cap_add.is_empty()).then(|| config.cap_add.clone()),
            group_add: (!config.group_add.is_empty()).then(|| config.group_add.clone()),
            privileged: Some(config.privileged),
            network_mode: config.network.clone(),
            dns: (!config.dns.is_empty()).then(|| config.dns.clone()),
            nano_cpus: config.nano_cpus,
            memory: config.memory_bytes,
            ..Default::default()
        };
        let body = ContainerCreateBody {
            hostname: Some(config.hostname.clone()),
            image: Some(config.image.clone()),
            env: Some(config.env.clone()),
            entrypoint: config.entrypoint.clone(),
            cmd: config.cmd.clone(),
            user: config.user.clone(),
            labels: Some(config.labels.clone().into_iter().collect()),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&config.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| docker_error(&config.name, e))?;
        // Docker's API 1.41 takes one network at creation; the others are connected before the
        // container starts (the first one keeps the default route).
        for network in &config.extra_networks {
            let request = bollard::models::NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: None,
            };
            if let Err(e) = self.docker.connect_network(network, request).await {
                let _ = self.remove(&created.id).await;
                return Err(docker_error(&config.name, e));
            }
        }
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| docker_error(id, e))?;
        self.route_networks(id).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let options = StopContainerOptionsBuilder::new()
            .t(grace.as_secs() as i32)
            .build();
        match self.docker.stop_container(id, Some(options)).await {
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            other => other.map_err(|e| docker_error(id, e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        self.docker
            .remove_container(id, Some(options))
            .await
            .map_err(|e| docker_error(id, e))
    }

    async fn run_to_completion(
        &self,
        config: &ContainerConfig,
    ) -> Result<(i64, String), RuntimeError> {
        if let Ok(old) = self.docker.inspect_container(&config.name, None).await {
            let is_init = old
                .config
                .and_then(|c| c.labels)
                .is_some_and(|l| l.contains_key(labels::INIT));
            if !is_init {
                return Err(RuntimeError::Conflict(format!(
                    "{}: the name is taken by a container smr does not manage",
                    config.name
                )));
            }
            self.remove(&config.name).await?;
        }
        let id = self.create(config).await?;
        // Removed however this ends, also when the caller drops (aborts) this future.
        let _remove = RemoveOnDrop {
            docker: self.docker.clone(),
            id: id.clone(),
        };
        async {
            self.start(&id).await?;
            let mut wait = self.docker.wait_container(&id, None);
            let mut code = -1;
            while let Some(status) = wait.next().await {
                match status {
                    Ok(s) => code = s.status_code,
                    // A non-zero exit comes as an error carrying the code.
                    Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => {
                        code = c
                    }
                    Err(e) => return Err(docker_error(&id, e)),
                }
            }
            let log = self.logs(&id, Some(5)).await.unwrap_or_default();
            Ok((code, String::from_utf8_lossy(&log).trim_end().to_string()))
        }
        .await
    }

    async fn exec(&self, id: &str, cmd: &[String]) -> Result<ExecOutput, RuntimeError> {
        let exec = self
            .docker
            .create_exec(
                id,
                bollard::exec::CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| docker_error(id, e))?;
        let mut output = Vec::new();
        if let bollard::exec::StartExecResults::Attached {
            output: mut stream, ..
        } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| docker_error(id, e))?
        {
            while let Some(chunk) = stream.next().await {
                output.extend_from_slice(&chunk.map_err(|e| docker_error(id, e))?.into_bytes());
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| docker_error(id, e))?;
        Ok(ExecOutput {
            exit_code: inspected.exit_code.unwrap_or(-1),
            output: String::from_utf8_lossy(&output).into_owned(),
        })
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        self.volumes().await
    }

    async fn create_volume(&self, config: &VolumeConfig) -> Result<(), RuntimeError> {
        self.make_volume(config).await
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.drop_volume(name).await
    }

    async fn list_networks(&self) -> Result<Vec<NetworkInfo>, RuntimeError> {
        self.networks().await
    }

    async fn create_network(&self, config: &BridgeConfig) -> Result<(), RuntimeError> {
        self.make_network(config).await
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.drop_network(name).await
    }
}
