//! The container model: what the node plan asks of a container engine and what it sees there,
//! as plain values. Every container smr creates carries [`labels`] that mark it as smr's, so
//! containers smr did not create are never listed, let alone touched. The engine itself (Docker)
//! is the agent's `runtime`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::credentials::Credentials;

/// The labels smr puts on its containers.
pub mod labels {
    pub const MANAGED: &str = "io.smr.managed";
    pub const OWNER: &str = "io.smr.owner";
    pub const REPLICA: &str = "io.smr.replica";
    pub const GENERATION: &str = "io.smr.generation";
    pub const NODE: &str = "io.smr.node";
    pub const CONFIG_HASH: &str = "io.smr.config-hash";
    /// On an init container (value: its replica's name) instead of [`MANAGED`].
    pub const INIT: &str = "io.smr.init";
    /// On a container of several networks: `<docker network>=<range>` for each, comma
    /// separated, the first carrying the default route.
    pub const NETWORKS: &str = "io.smr.networks";
}

/// What to run: everything Docker needs to create one replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    pub hostname: String,
    /// `image:tag`.
    pub image: String,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// (container port, protocol "tcp"/"udp", host address, host port).
    pub ports: Vec<(u16, String, Option<String>, Option<u16>)>,
    /// `source:target[:ro]` binds and named volumes, Docker's `-v` syntax.
    pub binds: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub cap_add: Vec<String>,
    pub user: Option<String>,
    pub group_add: Vec<String>,
    pub privileged: bool,
    /// Docker network to join (`cluster`), or the daemon's default.
    pub network: Option<String>,
    pub dns: Vec<String>,
    pub nano_cpus: Option<i64>,
    pub memory_bytes: Option<i64>,
    /// Credentials for pulling `image` (`registryAuth`); not part of the container's identity
    /// (not hashed, not serialised).
    #[serde(skip)]
    pub registry_auth: Option<Credentials>,
    /// Further Docker networks, connected before the container starts (`network` carries the
    /// default route). Not serialised when empty, so the hash of a container on one network
    /// stays what it was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_networks: Vec<String>,
}

/// A file a container mounts (a resource, its `resolv.conf`), rendered with its configuration:
/// the executor writes it (creating its directory) before the container runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileWrite {
    pub path: PathBuf,
    pub content: String,
}

/// A `registryAuth` value that is neither form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registryAuth is not USER:PASSWORD (plain or base64)")]
pub struct RegistryAuthError;

/// `registryAuth` as written: `USER:PASSWORD`, or that base64-encoded (the `auth` value of a
/// Docker `config.json`, e.g. looked up from a secret).
pub fn parse_registry_auth(text: &str) -> Result<Credentials, RegistryAuthError> {
    use base64::Engine;
    let text = text.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|d| d.contains(':'));
    let pair = decoded.as_deref().unwrap_or(text);
    match pair.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }),
        _ => Err(RegistryAuthError),
    }
}

impl ContainerConfig {
    /// A stable hash of everything that defines the container, to tell whether a running
    /// container still matches its definition.
    pub fn config_hash(&self) -> String {
        let mut canonical = self.clone();
        canonical.labels.remove(labels::CONFIG_HASH);
        let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
        hex::encode(&Sha256::digest(&bytes)[..12])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
    Removing,
}

/// What Docker says about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub state: State,
    pub exit_code: Option<i64>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Address per network name.
    pub ips: BTreeMap<String, Ipv4Addr>,
    pub image: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_plain_or_base64_and_never_shown() {
        let plain = parse_registry_auth("smr:p:ss").unwrap();
        assert_eq!(
            (plain.user.as_str(), plain.password.as_str()),
            ("smr", "p:ss")
        );
        // base64("smr:p:ss"), as in a Docker config.json.
        assert_eq!(parse_registry_auth(" c21yOnA6c3M= \n").unwrap(), plain);
        for bad in ["", "nocolon", ":pw", "user:", "Zm9v"] {
            let e = parse_registry_auth(bad).unwrap_err().to_string();
            assert!(e.contains("USER:PASSWORD"), "{bad}: {e}");
        }
        assert!(!format!("{plain:?}").contains("p:ss"));
        let config = ContainerConfig {
            registry_auth: Some(plain),
            ..Default::default()
        };
        assert!(!format!("{config:?}").contains("p:ss"));
        assert_eq!(
            config.config_hash(),
            ContainerConfig::default().config_hash(),
            "credentials are not part of the container's identity"
        );
    }
}
