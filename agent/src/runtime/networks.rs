//! Docker bridge networks for `network` objects with `driver: bridge`
//! ([`smr_core::networks::bridge`]): listing the engine's networks with the containers connected
//! to them, creating and removing them.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};

use super::{DockerRuntime, RuntimeError, docker_error};
use smr_core::networks::bridge::{BridgeConfig, NetworkInfo};

impl DockerRuntime {
    /// Every network of the engine, with the names of the containers (any, in any state)
    /// connected to it.
    pub(super) async fn networks(&self) -> Result<Vec<NetworkInfo>, RuntimeError> {
        let listed = self
            .docker
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map_err(|e| docker_error("listing networks", e))?;
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, c) in self.all_containers().await? {
            for network in c
                .network_settings
                .and_then(|s| s.networks)
                .unwrap_or_default()
                .into_keys()
            {
                users.entry(network).or_default().push(name.clone());
            }
        }
        Ok(listed
            .into_iter()
            .map(|n| {
                let name = n.name.unwrap_or_default();
                NetworkInfo {
                    users: users.remove(&name).unwrap_or_default(),
                    labels: n.labels.unwrap_or_default().into_iter().collect(),
                    name,
                }
            })
            .collect())
    }

    pub(super) async fn make_network(&self, config: &BridgeConfig) -> Result<(), RuntimeError> {
        let request = NetworkCreateRequest {
            name: config.name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(config.subnet.to_string()),
                    gateway: Some(config.gateway.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.name".to_string(),
                config.bridge.clone(),
            )])),
            labels: Some(config.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .map(|_| ())
            .map_err(|e| docker_error(&format!("network {}", config.name), e))
    }

    pub(super) async fn drop_network(&self, name: &str) -> Result<(), RuntimeError> {
        self.docker
            .remove_network(name)
            .await
            .map_err(|e| docker_error(&format!("network {name}"), e))
    }
}

/// Creates a network in the table of an engine kept in memory (the fake runtime's and the
/// simulator's): refused like Docker's when the name is taken.
pub(crate) fn create_in_memory(
    table: &mut BTreeMap<String, NetworkInfo>,
    config: &BridgeConfig,
) -> Result<(), RuntimeError> {
    if table.contains_key(&config.name) {
        return Err(RuntimeError::Conflict(config.name.clone()));
    }
    let network = NetworkInfo {
        name: config.name.clone(),
        labels: config.labels.clone(),
        users: Vec::new(),
    };
    table.insert(config.name.clone(), network);
    Ok(())
}
