//! Mapping typed definitions onto the scheduler's plain inputs, and rendering them into
//! container configurations (templates resolved; the files to mount returned, not written).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::container::{ContainerConfig, FileWrite, labels};
use crate::definitions::{self, ContainersSpec, Kind, ObjectKey, SpreadMode};
use crate::scheduler::{self, AgentRef, Spread, Workload};
use crate::state::{ClusterState, NodeId, StoredObject};

/// Why a replica cannot be rendered: names the field, object or key to fix. Its text is what the
/// replica's report shows (`blocked`).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0} is not a containers object")]
    NotContainers(ObjectKey),
    #[error("{0} does not exist")]
    Missing(ObjectKey),
    #[error("resource {object} has no key {key}")]
    NoResourceKey { object: ObjectKey, key: String },
    #[error("{object} has no key {key:?}")]
    NoKey { object: ObjectKey, key: String },
    #[error("volume at {0} needs hostPath or name")]
    VolumeSource(String),
    #[error("unclosed template in {0:?}")]
    Unclosed(String),
    #[error("template variable {0:?} is not defined")]
    UndefinedVariable(String),
    #[error("lookup {0:?} is not KIND/GROUP/NAME:KEY")]
    LookupSyntax(String),
    #[error("lookup {reference:?}: {source}")]
    LookupKey {
        reference: String,
        source: definitions::KeyError,
    },
    #[error("unknown template expression (( {0} ))")]
    UnknownExpression(String),
    #[error("unknown template function {0:?}")]
    UnknownFunction(String),
    #[error("base64decode: {0}")]
    Base64(#[source] base64::DecodeError),
    #[error("base64decode: the value is not UTF-8")]
    NotUtf8,
    /// A field whose value does not parse (`ports`, `limits.memory`).
    #[error("{field}: {source}")]
    Scalar {
        field: &'static str,
        source: definitions::ScalarError,
    },
    #[error("registryAuth: {0}")]
    RegistryAuth(#[source] crate::container::RegistryAuthError),
    /// An error inside a field (`envs`, `configuration.KEY`, `initContainer`, ...).
    #[error("{field}: {source}")]
    In {
        field: String,
        source: Box<RenderError>,
    },
}

impl RenderError {
    /// Puts an error inside `field`.
    fn within(field: impl Into<String>) -> impl FnOnce(RenderError) -> RenderError {
        let field = field.into();
        move |e| RenderError::In {
            field,
            source: Box::new(e),
        }
    }
}

/// The scheduler's view of a `containers` object, or `None` for other kinds.
pub fn workload_of(stored: &StoredObject) -> Option<Workload> {
    let spec = stored.object.spec.as_containers()?;
    let meta = &stored.object.meta;
    let mut workload = Workload::new(&meta.group, &meta.name, spec.replicas);
    workload.key = stored.object.key().to_string();
    workload.spread = spread_of(spec);
    workload.node_selector = spec.node_selector.clone();
    workload.generation = stored.template_generation;
    if let Some(rolling) = &spec.rolling_update {
        workload.max_unavailable = rolling.max_unavailable;
        workload.max_surge = rolling.max_surge;
    }
    Some(workload)
}

fn spread_of(spec: &ContainersSpec) -> Spread {
    match &spec.spread {
        Some(s) if s.spread == SpreadMode::Specific => Spread::Specific(
            s.agents
                .iter()
                .map(|a| match a {
                    definitions::AgentRef::Id(id) => AgentRef::Id(*id),
                    definitions::AgentRef::Name(name) => AgentRef::Name(name.clone()),
                })
                .collect(),
        ),
        _ => Spread::Uniform,
    }
}

/// The restart policy the node reconciler applies.
pub fn restart_of(spec: &ContainersSpec) -> scheduler::RestartPolicy {
    match spec.restart.as_ref().map(|r| r.policy).unwrap_or_default() {
        definitions::RestartMode::Always => scheduler::RestartPolicy::Always,
        definitions::RestartMode::OnFailure => scheduler::RestartPolicy::OnFailure,
        definitions::RestartMode::Never => scheduler::RestartPolicy::Never,
    }
}

/// Labels a node carries, for node selectors.
pub fn node_labels(labels: &BTreeMap<String, String>, name: &str) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels
        .entry("smr.io/node".into())
        .or_insert_with(|| name.to_string());
    labels
}

/// Where a replica runs and what it joins, beyond its definition.
#[derive(Clone, Debug)]
pub struct ReplicaContext<'a> {
    pub node: NodeId,
    /// Docker network to join (`cluster`), if the node has the overlay.
    pub network: Option<&'a str>,
    /// Resolvers for the container: this node's DNS server first, then the definition's.
    pub dns: Vec<String>,
    /// Where files mounted into containers go (the paths of the [`FileWrite`]s).
    pub files_dir: &'a Path,
}

/// Everything Docker needs to run replica `index` of `stored` (a `containers` object) at slot
/// generation `generation`, and the files it mounts (resources, its `resolv.conf`, under
/// `ctx.files_dir`), which the caller writes before the container runs. Templates are resolved
/// here; a missing configuration, secret or key is an error naming it.
pub fn container_config(
    state: &ClusterState,
    stored: &StoredObject,
    index: u32,
    generation: u64,
    ctx: &ReplicaContext<'_>,
) -> Result<(ContainerConfig, Vec<FileWrite>), RenderError> {
    let key = stored.object.key();
    let spec = stored
        .object
        .spec
        .as_containers()
        .ok_or_else(|| RenderError::NotContainers(key.clone()))?;
    let name = scheduler::replica_name(&key.group, &key.name, index);
    let vars = template_vars(state, spec, &key)?;
    let env = spec
        .envs
        .iter()
        .map(|e| render(e, &vars, state))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RenderError::within("envs"))?;
    let render_all = |items: &[String], what: &str| {
        items
            .iter()
            .map(|a| render(a, &vars, state))
            .collect::<Result<Vec<_>, _>>()
            .map_err(RenderError::within(what))
    };
    let mut ports = Vec::new();
    for p in &spec.ports {
        let (port, proto) = p.container_port().map_err(|source| RenderError::Scalar {
            field: "ports",
            source,
        })?;
        let proto = match proto {
            definitions::Protocol::Tcp => "tcp",
            definitions::Protocol::Udp => "udp",
        };
        let host = p.host_binding().map_err(|source| RenderError::Scalar {
            field: "ports",
            source,
        })?;
        ports.push((
            port,
            proto.to_string(),
            host.and_then(|(ip, _)| ip.map(|i| i.to_string())),
            host.map(|(_, p)| p),
        ));
    }
    let mut binds = Vec::new();
    for v in &spec.volumes {
        let ro = if v.read_only { ":ro" } else { "" };
        let source = match (v.kind.as_deref(), &v.host_path, &v.name) {
            (Some("volume"), _, Some(name)) => name.clone(),
            (_, Some(host_path), _) => host_path.clone(),
            (_, None, Some(name)) => name.clone(),
            _ => {
                return Err(RenderError::VolumeSource(v.mount_point.clone()));
            }
        };
        binds.push(format!("{source}:{}{ro}", v.mount_point));
    }
    let mut files = Vec::new();
    let mut resources_hash = Sha256::new();
    for r in &spec.resources {
        let rkey = ObjectKey {
            kind: Kind::Resource,
            group: r.group.clone(),
            name: r.name.clone(),
            prefix: None,
        };
        let data = lookup_data(state, &rkey)?;
        let content = data.get(&r.key).ok_or_else(|| RenderError::NoResourceKey {
            object: rkey.clone(),
            key: r.key.clone(),
        })?;
        let content = render(content, &vars, state)
            .map_err(RenderError::within(format!("resource {rkey}")))?;
        let file_name: String = format!("{}-{}-{}", r.group, r.name, r.key)
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        let path = ctx.files_dir.join(&name).join(file_name);
        resources_hash.update(path.to_string_lossy().as_bytes());
        resources_hash.update(content.as_bytes());
        binds.push(format!("{}:{}:ro", path.display(), r.mount_point));
        files.push(FileWrite { path, content });
    }
    let mut container_labels: BTreeMap<String, String> = spec.labels.clone();
    container_labels.insert(labels::MANAGED.into(), "true".into());
    container_labels.insert(labels::OWNER.into(), key.to_string());
    container_labels.insert(labels::REPLICA.into(), index.to_string());
    container_labels.insert(labels::GENERATION.into(), generation.to_string());
    container_labels.insert(labels::NODE.into(), ctx.node.to_string());
    if !spec.resources.is_empty() {
        container_labels.insert(
            "io.smr.resources".into(),
            hex::encode(&resources_hash.finalize()[..8]),
        );
    }
    let limits = spec.limits.as_ref();
    let memory_bytes = limits
        .map(|l| l.memory_bytes())
        .transpose()
        .map_err(|source| RenderError::Scalar {
            field: "limits.memory",
            source,
        })?
        .flatten()
        .map(|b| b as i64);
    // Resolvers go into a resolv.conf of our own, mounted over the container's: Docker's
    // embedded resolver is not used (it needs iptables rules smr does not ask Docker for).
    let mut resolvers = ctx.dns.clone();
    resolvers.extend(spec.dns.iter().cloned());
    if !resolvers.is_empty() {
        let path = ctx.files_dir.join(&name).join("resolv.conf");
        let content: String = resolvers
            .iter()
            .map(|r| format!("nameserver {r}\n"))
            .collect::<String>()
            + "options ndots:1\n";
        binds.push(format!("{}:/etc/resolv.conf:ro", path.display()));
        files.push(FileWrite { path, content });
    }
    let dns = Vec::new();
    // The networks it joins (`spec.networks`, else `cluster`): the first carries the default
    // route, the others are connected before it starts.
    // Docker network and range of each.
    let joined: Vec<(String, Option<ipnet::Ipv4Net>)> = if spec.networks.is_empty() {
        ctx.network
            .map(|n| (n.to_string(), None))
            .into_iter()
            .collect()
    } else {
        let cidr = state.network.as_ref().map(|n| n.cidr.trunc());
        crate::networks::attachments(spec, state)
            .into_iter()
            .filter_map(|a| match a {
                crate::networks::Attachment::Cluster => ctx.network.map(|n| (n.to_string(), cidr)),
                other => Some((other.docker_name(), other.range(None))),
            })
            .collect()
    };
    if joined.len() > 1 && spec.network_mode.is_none() {
        let routes: Vec<String> = joined
            .iter()
            // Docker's own `bridge` (its range is Docker's): `bridge=`, a default route only.
            .map(|(name, range)| match range {
                Some(range) => format!("{name}={range}"),
                None => format!("{name}="),
            })
            .collect();
        container_labels.insert(labels::NETWORKS.into(), routes.join(","));
    }
    let joined: Vec<String> = joined.into_iter().map(|(name, _)| name).collect();
    let mut config = ContainerConfig {
        name: name.clone(),
        hostname: name,
        image: spec.image_ref(),
        env,
        entrypoint: (!spec.entrypoint.is_empty())
            .then(|| render_all(&spec.entrypoint, "entrypoint"))
            .transpose()?,
        cmd: (!spec.args.is_empty())
            .then(|| render_all(&spec.args, "args"))
            .transpose()?,
        ports,
        binds,
        labels: container_labels,
        cap_add: spec.capabilities.clone(),
        user: spec.user.clone(),
        group_add: spec.group_add.clone(),
        privileged: spec.privileged,
        network: spec
            .network_mode
            .clone()
            .or_else(|| joined.first().cloned()),
        dns,
        nano_cpus: limits.and_then(|l| l.cpus).map(|c| (c * 1e9) as i64),
        memory_bytes,
        registry_auth: spec
            .registry_auth
            .as_deref()
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                let a = render(a, &vars, state).map_err(RenderError::within("registryAuth"))?;
                crate::container::parse_registry_auth(&a).map_err(RenderError::RegistryAuth)
            })
            .transpose()?,
        // With `network_mode` (e.g. simplecontainer's `bridge`) the container is created on it
        // and connected to its networks as well; Docker then picks the default route.
        extra_networks: match spec.network_mode.as_deref() {
            Some(mode) if !spec.networks.is_empty() => {
                joined.iter().filter(|n| *n != mode).cloned().collect()
            }
            Some(_) => Vec::new(),
            None => joined.iter().skip(1).cloned().collect(),
        },
    };
    let hash = config.config_hash();
    config.labels.insert(labels::CONFIG_HASH.into(), hash);
    Ok((config, files))
}

/// The init container of replica `index` and the files it mounts, if the definition has one: named `<replica>-init`,
/// labelled [`labels::INIT`] instead of [`labels::MANAGED`] (the reconciler runs it to
/// completion and removes it; it is not a replica). Unless it says otherwise it uses the
/// definition's template variables.
pub fn init_config(
    state: &ClusterState,
    stored: &StoredObject,
    index: u32,
    generation: u64,
    ctx: &ReplicaContext<'_>,
) -> Result<Option<(ContainerConfig, Vec<FileWrite>)>, RenderError> {
    let Some(spec) = stored.object.spec.as_containers() else {
        return Ok(None);
    };
    let Some(init) = &spec.init_container else {
        return Ok(None);
    };
    let mut init_spec = (**init).clone();
    if init_spec.configurations.is_empty() {
        init_spec.configurations = spec.configurations.clone();
    }
    if init_spec.configuration.is_empty() {
        init_spec.configuration = spec.configuration.clone();
    }
    init_spec.replicas = 1;
    init_spec.init_container = None;
    let mut as_object = stored.clone();
    as_object.object.spec = definitions::Spec::Containers(Box::new(init_spec));
    let (mut config, files) = container_config(state, &as_object, index, generation, ctx)
        .map_err(RenderError::within("initContainer"))?;
    let replica = config.name.clone();
    config.name = format!("{replica}-init");
    config.hostname = config.name.clone();
    config.labels.remove(labels::MANAGED);
    config.labels.insert(labels::INIT.into(), replica);
    Ok(Some((config, files)))
}

fn lookup_data<'s>(
    state: &'s ClusterState,
    key: &ObjectKey,
) -> Result<&'s crate::definitions::DataMap, RenderError> {
    state
        .objects
        .get(key)
        .and_then(|o| o.object.spec.data())
        .ok_or_else(|| RenderError::Missing(key.clone()))
}

/// Template variables: the listed `configurations` objects' data, then `configuration` (rendered).
fn template_vars(
    state: &ClusterState,
    spec: &ContainersSpec,
    owner: &ObjectKey,
) -> Result<BTreeMap<String, String>, RenderError> {
    let mut vars = BTreeMap::new();
    for c in &spec.configurations {
        let key = ObjectKey {
            kind: Kind::Configuration,
            group: c.group.clone(),
            name: c.name.clone(),
            prefix: None,
        };
        vars.extend(
            lookup_data(state, &key)
                .map_err(RenderError::within("configurations"))?
                .clone(),
        );
    }
    // A configuration object named like the definition is merged too (simplecontainer's habit).
    let own = ObjectKey {
        kind: Kind::Configuration,
        group: owner.group.clone(),
        name: owner.name.clone(),
        prefix: None,
    };
    if let Ok(data) = lookup_data(state, &own) {
        for (k, v) in data {
            vars.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let mut rendered = BTreeMap::new();
    for (k, v) in &spec.configuration {
        rendered.insert(
            k.clone(),
            render(v, &vars, state).map_err(RenderError::within(format!("configuration.{k}")))?,
        );
    }
    vars.extend(rendered);
    Ok(vars)
}

/// Replaces every `(( ... ))` in `text`: `.key` (a template variable) or
/// `lookup "KIND/GROUP/NAME:KEY"`, optionally piped through `base64decode` or `base64encode`.
pub fn render(
    text: &str,
    vars: &BTreeMap<String, String>,
    state: &ClusterState,
) -> Result<String, RenderError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("((") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("))")
            .ok_or_else(|| RenderError::Unclosed(text.to_string()))?;
        out.push_str(&evaluate(after[..end].trim(), vars, state)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn evaluate(
    expr: &str,
    vars: &BTreeMap<String, String>,
    state: &ClusterState,
) -> Result<String, RenderError> {
    let mut stages = expr.split('|').map(str::trim);
    let head = stages.next().unwrap_or_default();
    let mut value = if let Some(var) = head.strip_prefix('.') {
        vars.get(var)
            .cloned()
            .ok_or_else(|| RenderError::UndefinedVariable(var.to_string()))?
    } else if let Some(arg) = head.strip_prefix("lookup") {
        let reference = arg.trim().trim_matches('"');
        let (object, field) = reference
            .rsplit_once(':')
            .ok_or_else(|| RenderError::LookupSyntax(reference.to_string()))?;
        let key: ObjectKey = object.parse().map_err(|source| RenderError::LookupKey {
            reference: reference.to_string(),
            source,
        })?;
        lookup_data(state, &key)?
            .get(field)
            .cloned()
            .ok_or_else(|| RenderError::NoKey {
                object: key.clone(),
                key: field.to_string(),
            })?
    } else {
        return Err(RenderError::UnknownExpression(expr.to_string()));
    };
    for stage in stages {
        value = match stage {
            "base64decode" => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.trim())
                    .map_err(RenderError::Base64)?;
                String::from_utf8(bytes).map_err(|_| RenderError::NotUtf8)?
            }
            "base64encode" => base64::engine::general_purpose::STANDARD.encode(value.as_bytes()),
            other => return Err(RenderError::UnknownFunction(other.to_string())),
        };
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(yaml: &str) -> StoredObject {
        let object = definitions::parse_str("t.yaml", yaml)
            .expect("valid")
            .remove(0);
        StoredObject {
            object,
            generation: 4,
            template_generation: 2,
            revision: 1,
            created_ms: 0,
            updated_ms: 0,
            owner: None,
        }
    }

    #[test]
    fn workload_follows_the_spec() {
        let w = workload_of(&stored(
            "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\nspec:\n  image: busybox\n  replicas: 3\n  spread:\n    spread: specific\n    agents: [1, smr-agent-2]\n  nodeSelector:\n    disk: ssd\n  rollingUpdate:\n    maxUnavailable: 2\n",
        ))
        .expect("containers");
        assert_eq!(w.key, "containers/g/n");
        assert_eq!(w.replicas, 3);
        assert_eq!(w.generation, 2, "replicas roll on the template generation");
        assert_eq!(
            w.spread,
            Spread::Specific(vec![AgentRef::Id(1), AgentRef::Name("smr-agent-2".into())])
        );
        assert_eq!(w.node_selector.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(w.max_unavailable, 2);
    }

    #[test]
    fn other_kinds_are_not_workloads() {
        let s = stored(
            "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\nspec:\n  data:\n    a: b\n",
        );
        assert!(workload_of(&s).is_none());
    }
}
