//! Docker named volumes for the `volume` kind ([`smr_core::volume`]): listing them with the
//! containers that mount them, creating and removing them.

use std::collections::{BTreeMap, HashMap};

use bollard::models::VolumeCreateRequest;
use bollard::query_parameters::ListContainersOptionsBuilder;

use super::{DockerRuntime, RuntimeError, docker_error};
use smr_core::volume::{VolumeConfig, VolumeInfo};

impl DockerRuntime {
    /// Every volume of the engine, with the names of the containers (any, in any state) that
    /// mount it.
    pub(super) async fn volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        let listed = self
            .docker
            .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
            .await
            .map_err(|e| docker_error("listing volumes", e))?;
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, c) in self.all_containers().await? {
            for m in c.mounts.unwrap_or_default() {
                if let Some(volume) = m.name {
                    users.entry(volume).or_default().push(name.clone());
                }
            }
        }
        Ok(listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| VolumeInfo {
                users: users.remove(&v.name).unwrap_or_default(),
                labels: v.labels.into_iter().collect(),
                name: v.name,
            })
            .collect())
    }

    pub(super) async fn make_volume(&self, config: &VolumeConfig) -> Result<(), RuntimeError> {
        let request = VolumeCreateRequest {
            name: Some(config.name.clone()),
            driver: Some(config.driver.clone()),
            driver_opts: Some(
                config
                    .driver_opts
                    .clone()
                    .into_iter()
                    .collect::<HashMap<_, _>>(),
            ),
            labels: Some(config.labels.clone().into_iter().collect::<HashMap<_, _>>()),
            ..Default::default()
        };
        self.docker
            .create_volume(request)
            .await
            .map(|_| ())
            .map_err(|e| docker_error(&format!("volume {}", config.name), e))
    }

    pub(super) async fn drop_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.docker
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
            .map_err(|e| docker_error(&format!("volume {name}"), e))
    }
}

/// Creates a volume in the table of an engine kept in memory (the fake runtime's and the
/// simulator's): refused like Docker's when the name is taken; no container mounts it yet.
pub(crate) fn create_in_memory(
    table: &mut BTreeMap<String, VolumeInfo>,
    config: &VolumeConfig,
) -> Result<(), RuntimeError> {
    if table.contains_key(&config.name) {
        return Err(RuntimeError::Conflict(config.name.clone()));
    }
    let volume = VolumeInfo {
        name: config.name.clone(),
        labels: config.labels.clone(),
        users: Vec::new(),
    };
    table.insert(config.name.clone(), volume);
    Ok(())
}

impl DockerRuntime {
    /// Every container of the engine (any state), by name: who uses a volume or a network.
    pub(super) async fn all_containers(
        &self,
    ) -> Result<Vec<(String, bollard::models::ContainerSummary)>, RuntimeError> {
        let options = ListContainersOptionsBuilder::new().all(true).build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| docker_error("listing containers", e))?;
        Ok(containers
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default();
                (name, c)
            })
            .collect())
    }
}
