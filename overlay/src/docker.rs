//! The Docker `cluster` network: a bridge whose subnet is the node's lease.
//!
//! The decision is pure ([`decide`]): keep a network we made for the same subnet, create
//! one when none exists, and refuse (never delete) a conflicting one. Talking to Docker
//! goes through the narrow [`DockerNetworks`] trait; [`BollardNetworks`] is the real one.

use std::collections::HashMap;
use std::future::Future;

use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use ipnet::Ipv4Net;

/// Default name of the overlay's Docker network.
pub const CLUSTER_NETWORK: &str = "cluster";
/// Label marking networks smr created.
pub const MANAGED_LABEL: &str = "io.smr.managed";
/// Default Linux bridge name of the cluster network.
pub const BRIDGE_NAME: &str = "smr-cluster";

/// Docker network errors.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker: {context}: {source}")]
    Api {
        context: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "a Docker network named {name} already exists ({reason}); smr will not touch it: remove it (docker network rm {name}) or free the name"
    )]
    Conflict { name: String, reason: String },
}

/// The network smr wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNetworkSpec {
    pub name: String,
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub bridge: String,
}

impl ClusterNetworkSpec {
    /// The default spec: network `cluster`, bridge `smr-cluster`.
    pub fn new(subnet: Ipv4Net, mtu: u32) -> Self {
        ClusterNetworkSpec {
            name: CLUSTER_NETWORK.into(),
            subnet: subnet.trunc(),
            mtu,
            bridge: BRIDGE_NAME.into(),
        }
    }

    /// `<subnet>.1`.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        let n = u32::from(self.subnet.network());
        std::net::Ipv4Addr::from(n.saturating_add(1))
    }
}

/// What Docker reports of an existing network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkInfo {
    pub name: String,
    pub driver: String,
    pub subnets: Vec<String>,
    pub labels: HashMap<String, String>,
}

/// What to do about the cluster network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkAction {
    Keep,
    Create,
}

/// Pure decision for [`ensure_cluster_network`].
pub fn decide(
    existing: Option<&NetworkInfo>,
    want: &ClusterNetworkSpec,
) -> Result<NetworkAction, DockerError> {
    let Some(n) = existing else {
        return Ok(NetworkAction::Create);
    };
    let conflict = |reason: String| DockerError::Conflict {
        name: want.name.clone(),
        reason,
    };
    if n.labels.get(MANAGED_LABEL).map(String::as_str) != Some("true") {
        return Err(conflict(format!("it lacks the label {MANAGED_LABEL}=true")));
    }
    let subnet = want.subnet.to_string();
    if n.subnets != [subnet.clone()] {
        return Err(conflict(format!(
            "its subnet is [{}], the node's lease is {subnet}",
            n.subnets.join(", ")
        )));
    }
    if n.driver != "bridge" {
        return Err(conflict(format!("its driver is {}, not bridge", n.driver)));
    }
    Ok(NetworkAction::Keep)
}

/// The Docker calls the cluster network needs.
pub trait DockerNetworks {
    fn inspect(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<NetworkInfo>, DockerError>> + Send;
    fn create(
        &self,
        spec: &ClusterNetworkSpec,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;
}

/// Ensures the cluster network exists as `want` says; returns what was done.
pub async fn ensure_cluster_network<D: DockerNetworks>(
    docker: &D,
    want: &ClusterNetworkSpec,
) -> Result<NetworkAction, DockerError> {
    let existing = docker.inspect(&want.name).await?;
    let action = decide(existing.as_ref(), want)?;
    if action == NetworkAction::Create {
        docker.create(want).await?;
    }
    Ok(action)
}

/// [`DockerNetworks`] over bollard.
#[derive(Debug, Clone)]
pub struct BollardNetworks {
    pub docker: Docker,
}

impl BollardNetworks {
    /// Connects to the local engine and negotiates the API version (Debian's engine
    /// speaks 1.41).
    pub async fn connect() -> Result<Self, DockerError> {
        let api = |context: &str| {
            let context = context.to_string();
            move |source| DockerError::Api { context, source }
        };
        let docker = Docker::connect_with_local_defaults().map_err(api("connecting"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(api("negotiating the API version"))?;
        Ok(BollardNetworks { docker })
    }
}

impl DockerNetworks for BollardNetworks {
    async fn inspect(&self, name: &str) -> Result<Option<NetworkInfo>, DockerError> {
        match self.docker.inspect_network(name, None).await {
            Ok(n) => {
                // Docker matches ids and id prefixes too; only an exact name counts.
                if n.name.as_deref() != Some(name) {
                    return Ok(None);
                }
                Ok(Some(NetworkInfo {
                    name: n.name.unwrap_or_default(),
                    driver: n.driver.unwrap_or_default(),
                    subnets: n
                        .ipam
                        .and_then(|i| i.config)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|c| c.subnet)
                        .collect(),
                    labels: n.labels.unwrap_or_default(),
                }))
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(source) => Err(DockerError::Api {
                context: format!("inspecting network {name}"),
                source,
            }),
        }
    }

    async fn create(&self, spec: &ClusterNetworkSpec) -> Result<(), DockerError> {
        let options = HashMap::from([
            (
                "com.docker.network.driver.mtu".to_string(),
                spec.mtu.to_string(),
            ),
            (
                "com.docker.network.bridge.name".to_string(),
                spec.bridge.clone(),
            ),
        ]);
        let req = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(spec.subnet.to_string()),
                    gateway: Some(spec.gateway().to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            options: Some(options),
            labels: Some(HashMap::from([(
                MANAGED_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        };
        self.docker
            .create_network(req)
            .await
            .map(|_| ())
            .map_err(|source| DockerError::Api {
                context: format!("creating network {}", spec.name),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ClusterNetworkSpec {
        ClusterNetworkSpec::new("10.10.3.0/24".parse().unwrap(), 1450)
    }
    fn ours() -> NetworkInfo {
        NetworkInfo {
            name: "cluster".into(),
            driver: "bridge".into(),
            subnets: vec!["10.10.3.0/24".into()],
            labels: HashMap::from([(MANAGED_LABEL.to_string(), "true".to_string())]),
        }
    }

    #[test]
    fn gateway_is_dot_one() {
        assert_eq!(spec().gateway().to_string(), "10.10.3.1");
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, &spec()).unwrap(), NetworkAction::Create);
        assert_eq!(decide(Some(&ours()), &spec()).unwrap(), NetworkAction::Keep);

        let other_subnet = NetworkInfo {
            subnets: vec!["10.10.4.0/24".into()],
            ..ours()
        };
        let e = decide(Some(&other_subnet), &spec())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "a Docker network named cluster already exists (its subnet is [10.10.4.0/24], the node's lease is 10.10.3.0/24); smr will not touch it: remove it (docker network rm cluster) or free the name"
        );
        let foreign = NetworkInfo {
            labels: HashMap::new(),
            ..ours()
        };
        assert!(
            decide(Some(&foreign), &spec())
                .unwrap_err()
                .to_string()
                .contains("lacks the label io.smr.managed=true")
        );
    }
}
