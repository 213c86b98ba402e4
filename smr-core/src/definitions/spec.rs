//! Typed `spec` bodies, one per kind. Field names follow simplecontainer's YAML (camelCase,
//! plus its few snake_case keys such as `network_mode`); fields beyond simplecontainer
//! (`restart`, `limits`, `nodeSelector`, `rollingUpdate`) are optional. Every struct rejects
//! unknown keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::scalars::{AgentRef, DurationValue, ScalarError};
use super::{DataMap, Kind};

fn default_replicas() -> u32 {
    1
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The typed body of an object; the variant always matches the object's `kind`.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    Containers(Box<ContainersSpec>),
    Configuration(DataSpec),
    Secret(DataSpec),
    Resource(DataSpec),
    /// Boxed, as `Containers` and `Certkey`: every stored object holds a `Spec`, and an unboxed
    /// variant this large (300 bytes) made each small configuration object pay for it.
    Gitops(Box<GitopsSpec>),
    Httpauth(HttpAuthSpec),
    Certkey(Box<CertKeySpec>),
    Network(NetworkSpec),
    Volume(VolumeSpec),
    Custom(CustomSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Containers(_) => Kind::Containers,
            Spec::Configuration(_) => Kind::Configuration,
            Spec::Secret(_) => Kind::Secret,
            Spec::Resource(_) => Kind::Resource,
            Spec::Gitops(_) => Kind::Gitops,
            Spec::Httpauth(_) => Kind::Httpauth,
            Spec::Certkey(_) => Kind::Certkey,
            Spec::Network(_) => Kind::Network,
            Spec::Volume(_) => Kind::Volume,
            Spec::Custom(_) => Kind::Custom,
        }
    }

    pub fn as_containers(&self) -> Option<&ContainersSpec> {
        match self {
            Spec::Containers(c) => Some(c),
            _ => None,
        }
    }

    /// `data` of a configuration, secret or resource.
    pub fn data(&self) -> Option<&DataMap> {
        match self {
            Spec::Configuration(d) | Spec::Secret(d) | Spec::Resource(d) => Some(&d.data),
            _ => None,
        }
    }

    pub fn as_gitops(&self) -> Option<&GitopsSpec> {
        match self {
            Spec::Gitops(g) => Some(g),
            _ => None,
        }
    }
}

impl From<ContainersSpec> for Spec {
    fn from(c: ContainersSpec) -> Self {
        Spec::Containers(Box::new(c))
    }
}

impl From<GitopsSpec> for Spec {
    fn from(g: GitopsSpec) -> Self {
        Spec::Gitops(Box::new(g))
    }
}

impl From<CertKeySpec> for Spec {
    fn from(c: CertKeySpec) -> Self {
        Spec::Certkey(Box::new(c))
    }
}

impl Serialize for Spec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Spec::Containers(c) => c.serialize(s),
            Spec::Configuration(d) | Spec::Secret(d) | Spec::Resource(d) => d.serialize(s),
            Spec::Gitops(g) => g.serialize(s),
            Spec::Httpauth(h) => h.serialize(s),
            Spec::Certkey(c) => c.serialize(s),
            Spec::Network(n) => n.serialize(s),
            Spec::Volume(v) => v.serialize(s),
            Spec::Custom(c) => c.serialize(s),
        }
    }
}

/// Reads the spec of a known kind (the seed carries the kind read before `spec`).
pub(crate) struct SpecSeed(pub Kind);

impl<'de> serde::de::DeserializeSeed<'de> for SpecSeed {
    type Value = Spec;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Spec, D::Error> {
        Ok(match self.0 {
            Kind::Containers => Spec::Containers(Box::new(ContainersSpec::deserialize(d)?)),
            Kind::Configuration => Spec::Configuration(DataSpec::deserialize(d)?),
            Kind::Secret => Spec::Secret(DataSpec::deserialize(d)?),
            Kind::Resource => Spec::Resource(DataSpec::deserialize(d)?),
            Kind::Gitops => Spec::Gitops(Box::new(GitopsSpec::deserialize(d)?)),
            Kind::Httpauth => Spec::Httpauth(HttpAuthSpec::deserialize(d)?),
            Kind::Certkey => Spec::Certkey(Box::new(CertKeySpec::deserialize(d)?)),
            Kind::Network => Spec::Network(NetworkSpec::deserialize(d)?),
            Kind::Volume => Spec::Volume(VolumeSpec::deserialize(d)?),
            Kind::Custom => Spec::Custom(CustomSpec::deserialize(d)?),
        })
    }
}

/// `kind: containers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainersSpec {
    #[serde(default)]
    pub image: String,
    /// Image tag; absent means `latest`. `tag: 1.37.0` stays the string "1.37.0".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<String>,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Command arguments (`command:` is accepted as an older spelling).
    #[serde(default, alias = "command", skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Docker labels put on each replica.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readiness: Vec<Readiness>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
    /// Template variables; values may be `(( .key ))` or `(( lookup "secret/g/n:k" ))`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configuration: BTreeMap<String, String>,
    /// Configuration objects merged into the template variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configurations: Vec<GroupName>,
    /// Keys of `resource` objects mounted as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    /// simplecontainer's node list: refused unless empty (use `spread: specific`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub privileged: bool,
    #[serde(
        default,
        rename = "network_mode",
        alias = "networkMode",
        skip_serializing_if = "Option::is_none"
    )]
    pub network_mode: Option<String>,
    /// A container run to completion before each replica starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<Box<ContainersSpec>>,
    // Beyond simplecontainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

impl Default for ContainersSpec {
    fn default() -> Self {
        ContainersSpec {
            image: String::new(),
            tag: None,
            registry_auth: None,
            replicas: default_replicas(),
            envs: Vec::new(),
            entrypoint: Vec::new(),
            args: Vec::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
            dns: Vec::new(),
            labels: BTreeMap::new(),
            readiness: Vec::new(),
            dependencies: Vec::new(),
            configuration: BTreeMap::new(),
            configurations: Vec::new(),
            resources: Vec::new(),
            spread: None,
            nodes: Vec::new(),
            capabilities: Vec::new(),
            user: None,
            group_add: Vec::new(),
            privileged: false,
            network_mode: None,
            init_container: None,
            restart: None,
            limits: None,
            node_selector: BTreeMap::new(),
            rolling_update: None,
        }
    }
}

impl ContainersSpec {
    /// `image:tag`, with `latest` when no tag is given and the image names none itself.
    pub fn image_ref(&self) -> String {
        let last = self.image.rsplit('/').next().unwrap_or(&self.image);
        match &self.tag {
            Some(tag) if !tag.is_empty() => format!("{}:{tag}", self.image),
            _ if last.contains(':') || self.image.contains('@') => self.image.clone(),
            _ => format!("{}:latest", self.image),
        }
    }
}

/// `{container: "3306", host: "0.0.0.0:8080"}`; numbers are read as strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// `"3306"` or `"53/udp"`.
    pub container: String,
    /// `"8080"`, `"0.0.0.0:8080"` or `"127.0.0.1:8080/udp"`; absent: not published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A transport protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

fn split_protocol(s: &str) -> Result<(&str, Protocol), ScalarError> {
    match s.split_once('/') {
        None => Ok((s, Protocol::Tcp)),
        Some((p, "tcp")) => Ok((p, Protocol::Tcp)),
        Some((p, "udp")) => Ok((p, Protocol::Udp)),
        Some((_, other)) => Err(ScalarError::Protocol(other.into())),
    }
}

fn parse_port(s: &str) -> Result<u16, ScalarError> {
    match s.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(ScalarError::PortRange(p)),
        Err(_) => Err(ScalarError::Port(s.into())),
    }
}

impl PortMapping {
    /// The container port and protocol.
    pub fn container_port(&self) -> Result<(u16, Protocol), ScalarError> {
        let (p, proto) = split_protocol(&self.container)?;
        Ok((parse_port(p)?, proto))
    }

    /// The host binding: optional address and port. `None` when not published.
    pub fn host_binding(&self) -> Result<Option<(Option<std::net::IpAddr>, u16)>, ScalarError> {
        let Some(host) = &self.host else {
            return Ok(None);
        };
        let (h, _) = split_protocol(host)?;
        if h.is_empty() {
            return Ok(None);
        }
        match h.rsplit_once(':') {
            None => Ok(Some((None, parse_port(h)?))),
            Some((addr, port)) => {
                let addr = addr.trim_start_matches('[').trim_end_matches(']');
                let ip = addr
                    .parse()
                    .map_err(|_| ScalarError::Address(addr.into()))?;
                Ok(Some((Some(ip), parse_port(port)?)))
            }
        }
    }
}

/// A volume mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `bind`/`hostPath`, `volume`, `tmpfs`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    pub mount_point: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// Refused unless empty: smr does not set the owner or mode of mounted paths (yet).
    #[serde(
        default,
        alias = "permissions",
        alias = "Permissions",
        skip_serializing_if = "Option::is_none"
    )]
    pub file_info: Option<FileInfo>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub read_only: bool,
}

/// Ownership and mode of a mounted file (simplecontainer's `fileInfo`, or `permissions` on a
/// resource). `permissions` is a number (`420`) or an octal string (`"0644"`, `"0o644"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileInfo {
    #[serde(default, alias = "Owner", skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    #[serde(default, alias = "Group", skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    #[serde(
        default,
        alias = "Permissions",
        deserialize_with = "file_mode",
        serialize_with = "write_file_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub permissions: Option<u32>,
}

impl FileInfo {
    /// True when nothing is asked for (`fileInfo: {}`).
    pub fn is_empty(&self) -> bool {
        self.owner.is_none() && self.group.is_none() && self.permissions.is_none()
    }
}

/// Written as an octal string (`"0640"`), which [`file_mode`] reads back from YAML and JSON.
fn write_file_mode<S: serde::Serializer>(mode: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match mode {
        Some(m) => s.collect_str(&format_args!("0{m:o}")),
        None => s.serialize_none(),
    }
}

/// A file mode: a number as written (`420`), or a string read as octal when it starts with `0`
/// or `0o` (`"0644"`, `"0o644"`), as Go's YAML reader (simplecontainer's) reads `0644`.
fn file_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<u32>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a file mode such as \"0644\" or 420")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Option<u32>, E> {
            match u32::try_from(v) {
                Ok(m) if m <= 0o7777 => Ok(Some(m)),
                _ => Err(E::custom(format!("file mode {v} is more than 0o7777"))),
            }
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Option<u32>, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("file mode {v} is negative")))
                .and_then(|v| self.visit_u64(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Option<u32>, E> {
            let t = v.trim();
            let octal = t
                .strip_prefix("0o")
                .or_else(|| t.strip_prefix("0O"))
                .or_else(|| t.strip_prefix('0').filter(|r| !r.is_empty()));
            let parsed = match octal {
                Some(digits) => u64::from_str_radix(digits, 8),
                None if t == "0" => Ok(0),
                None => t.parse::<u64>(),
            };
            match parsed {
                Ok(m) => self.visit_u64(m),
                Err(_) => Err(E::custom(format!(
                    "{v:?} is not a file mode (write it like \"0644\")"
                ))),
            }
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Option<u32>, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<u32>, E> {
            Ok(None)
        }
    }
    // A string request hands over the scalar as written, so `0640` keeps its leading zero
    // (asked for "any", the YAML reader would make it the number 640).
    d.deserialize_str(V)
}

/// `{group, name}` naming a network, e.g. `{group: internal, name: cluster}` for the overlay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkRef {
    pub group: String,
    pub name: String,
}

/// `{group, name}` of another object of a kind implied by the field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GroupName {
    #[serde(alias = "Group")]
    pub group: String,
    #[serde(alias = "Name")]
    pub name: String,
}

/// A reference to another object: optional prefix, group, name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    #[serde(default, alias = "Prefix", skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(alias = "Group")]
    pub group: String,
    #[serde(alias = "Name")]
    pub name: String,
}

/// One key of a `resource` object mounted as a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceMount {
    #[serde(alias = "Group")]
    pub group: String,
    #[serde(alias = "Name")]
    pub name: String,
    #[serde(alias = "Key")]
    pub key: String,
    #[serde(alias = "MountPoint")]
    pub mount_point: String,
    /// simplecontainer writes it `permissions` here. Refused unless empty: smr mounts resource
    /// files read-only as written (owner root, mode 0644) and does not change either (yet).
    #[serde(
        default,
        alias = "permissions",
        alias = "Permissions",
        alias = "FileInfo",
        skip_serializing_if = "Option::is_none"
    )]
    pub file_info: Option<FileInfo>,
}

/// How a readiness check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadinessType {
    Http,
    Command,
}

/// A readiness check: an HTTP request (`url`, `method`, `body`) or a `command` in the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ReadinessType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub body: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationValue>,
}

impl Readiness {
    /// The effective check type: explicit `type`, else `command` when given, else http.
    pub fn check_type(&self) -> ReadinessType {
        match self.kind {
            Some(k) => k,
            None if !self.command.is_empty() => ReadinessType::Command,
            None => ReadinessType::Http,
        }
    }
}

/// Wait for another definition (`name: "*"` means every definition of the group) to be ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    pub group: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationValue>,
}

/// How replicas are spread over agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpreadMode {
    /// Round-robin over all agents. `spread: ""` (simplecontainer's "not set") means this too.
    #[default]
    #[serde(alias = "")]
    Uniform,
    /// Only over the listed agents.
    Specific,
}

/// `spread: {spread: uniform|specific, agents: [1, 2]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    #[serde(default)]
    pub spread: SpreadMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentRef>,
}

/// When a stopped replica is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Restart policy with exponential backoff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestartPolicy {
    #[serde(default)]
    pub policy: RestartMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_backoff: Option<DurationValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<DurationValue>,
    /// Give up after this many consecutive failures; absent: never give up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

impl RestartPolicy {
    pub const DEFAULT_INITIAL_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
    pub const DEFAULT_MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(300);
}

/// CPU and memory limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Number of CPUs, fractions allowed (`0.5`).
    #[serde(default, alias = "cpu", skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// `"512Mi"`, `"1G"`, or bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

impl Limits {
    pub fn memory_bytes(&self) -> Result<Option<u64>, ScalarError> {
        self.memory
            .as_deref()
            .map(super::scalars::parse_memory)
            .transpose()
    }
}

/// Rolling update: how many replicas may be down, and how many extra may run, while replacing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollingUpdate {
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: u32,
    #[serde(default)]
    pub max_surge: u32,
}

fn default_max_unavailable() -> u32 {
    1
}

impl Default for RollingUpdate {
    fn default() -> Self {
        RollingUpdate {
            max_unavailable: default_max_unavailable(),
            max_surge: 0,
        }
    }
}

/// `kind: configuration`, `secret` and `resource`: a string map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    #[serde(default)]
    pub data: DataMap,
}

/// `kind: gitops`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitopsSpec {
    #[serde(default, rename = "repoURL")]
    pub repo_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_path: Option<String>,
    /// simplecontainer's spelling of "polling interval".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_interval: Option<DurationValue>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub automatic_sync: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_key_ref: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_auth_ref: Option<ObjectRef>,
    /// A secret whose key `key` (default `webhook`) holds the HMAC secret for push webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<SecretKeyRef>,
}

/// A `directoryPath` as a path inside the repository: simplecontainer writes it with a leading
/// `/` (`/tests/minimal`) meaning the repository root, so that slash is dropped here. `..`,
/// `~` and the like are still refused by the gitops crate.
pub fn repo_directory(directory_path: &str) -> &str {
    directory_path.trim_start_matches('/')
}

/// One key of a `secret` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub group: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `kind: httpauth`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthSpec {
    #[serde(default, alias = "Username")]
    pub username: String,
    #[serde(default, alias = "Password")]
    pub password: String,
}

/// `kind: certkey`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertKeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_store_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_store_password: Option<String>,
}

/// `kind: network`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default, alias = "Driver", skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(
        default,
        rename = "ipv4AddressPool",
        alias = "ipv4addresspool",
        alias = "IPV4AddressPool",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_address_pool: Option<String>,
}

/// `kind: volume`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(
        default,
        rename = "driver_opts",
        alias = "driverOpts",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub driver_opts: BTreeMap<String, String>,
}

/// `kind: custom`: a free-form map.
pub type CustomSpec = BTreeMap<String, serde_json::Value>;
