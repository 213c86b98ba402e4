//! A [`Runtime`] that counts the failed calls of the one it wraps (`smr_docker_errors_total`).

use std::time::Duration;

use crate::runtime::{
    BridgeConfig, ContainerConfig, ContainerInfo, ExecOutput, NetworkInfo, Runtime, RuntimeError,
    VolumeConfig, VolumeInfo,
};

/// Wraps the reconciler's runtime; every call goes through unchanged.
pub struct Metered<R>(pub R);

/// The `kind` label of an error; `None` for what is not a failure (an image being pulled).
fn kind(e: &RuntimeError) -> Option<&'static str> {
    Some(match e {
        RuntimeError::Unreachable { .. } => "unreachable",
        RuntimeError::NotFound(_) => "not_found",
        RuntimeError::Conflict(_) => "conflict",
        RuntimeError::ImageMissing { .. } => "image_missing",
        RuntimeError::Pulling { .. } => return None,
        RuntimeError::Docker(_) => "docker",
    })
}

fn counted<T>(op: &'static str, result: Result<T, RuntimeError>) -> Result<T, RuntimeError> {
    if let Err(e) = &result
        && let Some(kind) = kind(e)
    {
        super::docker_error(op, kind);
    }
    result
}

impl<R: Runtime> Runtime for Metered<R> {
    async fn list_managed(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        counted("list", self.0.list_managed().await)
    }

    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        counted("create", self.0.create(config).await)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        counted("start", self.0.start(id).await)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        counted("stop", self.0.stop(id, grace).await)
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        counted("remove", self.0.remove(id).await)
    }

    async fn run_to_completion(
        &self,
        config: &ContainerConfig,
    ) -> Result<(i64, String), RuntimeError> {
        counted("run_init", self.0.run_to_completion(config).await)
    }

    async fn exec(&self, id: &str, cmd: &[String]) -> Result<ExecOutput, RuntimeError> {
        counted("exec", self.0.exec(id, cmd).await)
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        counted("list_volumes", self.0.list_volumes().await)
    }

    async fn create_volume(&self, config: &VolumeConfig) -> Result<(), RuntimeError> {
        counted("create_volume", self.0.create_volume(config).await)
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        counted("remove_volume", self.0.remove_volume(name).await)
    }

    async fn list_networks(&self) -> Result<Vec<NetworkInfo>, RuntimeError> {
        counted("list_networks", self.0.list_networks().await)
    }

    async fn create_network(&self, config: &BridgeConfig) -> Result<(), RuntimeError> {
        counted("create_network", self.0.create_network(config).await)
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        counted("remove_network", self.0.remove_network(name).await)
    }
}
