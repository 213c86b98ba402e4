//! Rules an object must keep after it parsed: names that can become DNS labels and
//! container names, the known prefix, sane replica counts, ports and spreads. Strings that
//! hold `(( ... ))` templates are resolved later and are not checked here.

use super::error::DefinitionError;
use super::scalars::{AgentRef, is_template};
use super::spec::*;
use super::{Object, PREFIX};

/// Most replicas one definition may ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// RFC 1123 label: 1..=63 of `a-z0-9-`, starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `DOMAIN/VERSION` as simplecontainer writes prefixes (`simplecontainer.io/v1`,
/// `traefik.io/v1`): a lowercase DNS name of at least two labels, `/`, then 1 to 63 of
/// `a-z0-9.-`.
pub fn is_prefix(s: &str) -> bool {
    let Some((domain, version)) = s.split_once('/') else {
        return false;
    };
    domain.len() <= 253
        && domain.split('.').count() >= 2
        && domain.split('.').all(is_dns_label)
        && !version.is_empty()
        && version.len() <= 63
        && version
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
}

fn label_error(path: &str, value: &str) -> DefinitionError {
    DefinitionError::invalid(
        path,
        format!(
            "{value:?} is not a DNS label (1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
        ),
    )
}

fn check_label(path: &str, value: &str) -> Result<(), DefinitionError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(label_error(path, value))
    }
}

fn non_empty(path: &str, value: &str) -> Result<(), DefinitionError> {
    if value.trim().is_empty() {
        Err(DefinitionError::invalid(path, "must not be empty"))
    } else {
        Ok(())
    }
}

/// Checks one object; the error carries the field path but no line (parse_str adds it).
pub fn validate(obj: &Object) -> Result<(), DefinitionError> {
    if obj.spec.kind() != obj.kind {
        return Err(DefinitionError::invalid(
            "kind",
            format!(
                "kind {} does not match a {} spec",
                obj.kind,
                obj.spec.kind()
            ),
        ));
    }
    if obj.kind == super::Kind::Custom {
        if !is_prefix(&obj.prefix) {
            return Err(DefinitionError::invalid(
                "prefix",
                format!(
                    "{:?} is not a prefix: write DOMAIN/VERSION, e.g. traefik.io/v1",
                    obj.prefix
                ),
            ));
        }
    } else if obj.prefix != PREFIX {
        return Err(DefinitionError::invalid(
            "prefix",
            format!(
                "unknown prefix {:?} for kind {}, expected {PREFIX} (only kind custom takes other prefixes)",
                obj.prefix, obj.kind
            ),
        ));
    }
    check_label("meta.group", &obj.meta.group)?;
    check_label("meta.name", &obj.meta.name)?;
    for key in obj.meta.labels.keys() {
        if key.is_empty() {
            return Err(DefinitionError::invalid(
                "meta.labels",
                "label keys must not be empty",
            ));
        }
    }
    match &obj.spec {
        Spec::Containers(c) => {
            // Replica names are `<group>-<name>-<index>` and must stay a DNS label.
            let longest = format!("{}-{}-{}", obj.meta.group, obj.meta.name, c.replicas.max(1));
            if longest.len() > 63 {
                return Err(DefinitionError::invalid(
                    "meta.name",
                    format!(
                        "replica name {longest:?} would be longer than 63 characters; shorten group or name"
                    ),
                ));
            }
            validate_containers(c, "spec", false)
        }
        Spec::Gitops(g) => validate_gitops(g),
        Spec::Configuration(_)
        | Spec::Secret(_)
        | Spec::Resource(_)
        | Spec::Httpauth(_)
        | Spec::Certkey(_)
        | Spec::Network(_)
        | Spec::Volume(_)
        | Spec::Custom(_) => Ok(()),
    }
}

fn validate_containers(c: &ContainersSpec, at: &str, is_init: bool) -> Result<(), DefinitionError> {
    non_empty(&format!("{at}.image"), &c.image)?;
    if let Some(tag) = &c.tag {
        non_empty(&format!("{at}.tag"), tag)?;
    }
    if c.replicas > MAX_REPLICAS {
        return Err(DefinitionError::invalid(
            format!("{at}.replicas"),
            format!(
                "{} replicas is more than the limit of {MAX_REPLICAS}",
                c.replicas
            ),
        ));
    }
    for (i, p) in c.ports.iter().enumerate() {
        if !is_template(&p.container) {
            p.container_port().map_err(|m| {
                DefinitionError::invalid(format!("{at}.ports[{i}].container"), m.to_string())
            })?;
        }
        if !p.host.as_deref().is_some_and(is_template) {
            p.host_binding().map_err(|m| {
                DefinitionError::invalid(format!("{at}.ports[{i}].host"), m.to_string())
            })?;
        }
    }
    for (i, v) in c.volumes.iter().enumerate() {
        check_absolute(&format!("{at}.volumes[{i}].mountPoint"), &v.mount_point)?;
        check_file_info(&format!("{at}.volumes[{i}].fileInfo"), v.file_info.as_ref())?;
        if let Some(sub) = &v.sub_path
            && !matches!(sub.trim(), "" | "/")
        {
            return Err(DefinitionError::invalid(
                format!("{at}.volumes[{i}].subPath"),
                "smr mounts the whole volume or host path; subPath is not supported (mount the sub-folder's host path instead)",
            ));
        }
    }
    if !c.nodes.is_empty() {
        return Err(DefinitionError::invalid(
            format!("{at}.nodes"),
            "smr does not read `nodes`; to run only on some nodes write spread: {spread: specific, agents: [NAMES]}",
        ));
    }
    for (i, n) in c.networks.iter().enumerate() {
        non_empty(&format!("{at}.networks[{i}].group"), &n.group)?;
        non_empty(&format!("{at}.networks[{i}].name"), &n.name)?;
    }
    for (i, r) in c.readiness.iter().enumerate() {
        validate_readiness(r, &format!("{at}.readiness[{i}]"))?;
    }
    for (i, d) in c.dependencies.iter().enumerate() {
        let p = format!("{at}.dependencies[{i}]");
        if let Some(prefix) = &d.prefix
            && prefix != PREFIX
            && prefix != super::PREFIX_ALIAS
            && !is_template(prefix)
        {
            return Err(DefinitionError::invalid(
                format!("{p}.prefix"),
                format!("unknown prefix {prefix:?}"),
            ));
        }
        check_label(&format!("{p}.group"), &d.group)?;
        if d.name != "*" {
            check_label(&format!("{p}.name"), &d.name)?;
        }
    }
    for (i, r) in c.configurations.iter().enumerate() {
        check_label(&format!("{at}.configurations[{i}].group"), &r.group)?;
        check_label(&format!("{at}.configurations[{i}].name"), &r.name)?;
    }
    for (i, r) in c.resources.iter().enumerate() {
        let p = format!("{at}.resources[{i}]");
        check_label(&format!("{p}.group"), &r.group)?;
        check_label(&format!("{p}.name"), &r.name)?;
        non_empty(&format!("{p}.key"), &r.key)?;
        check_absolute(&format!("{p}.mountPoint"), &r.mount_point)?;
        check_file_info(&format!("{p}.permissions"), r.file_info.as_ref())?;
    }
    if let Some(s) = &c.spread {
        if s.spread == SpreadMode::Specific && s.agents.is_empty() {
            return Err(DefinitionError::invalid(
                format!("{at}.spread.agents"),
                "spread: specific needs a list of agents",
            ));
        }
        for (i, a) in s.agents.iter().enumerate() {
            match a {
                AgentRef::Id(0) => {
                    return Err(DefinitionError::invalid(
                        format!("{at}.spread.agents[{i}]"),
                        "agent ids start at 1",
                    ));
                }
                AgentRef::Name(n) if n.trim().is_empty() => {
                    return Err(DefinitionError::invalid(
                        format!("{at}.spread.agents[{i}]"),
                        "must not be empty",
                    ));
                }
                _ => {}
            }
        }
    }
    if let Some(r) = &c.restart {
        let initial = r
            .initial_backoff
            .map(|d| d.get())
            .unwrap_or(RestartPolicy::DEFAULT_INITIAL_BACKOFF);
        let max = r
            .max_backoff
            .map(|d| d.get())
            .unwrap_or(RestartPolicy::DEFAULT_MAX_BACKOFF.max(initial));
        if initial.is_zero() {
            return Err(DefinitionError::invalid(
                format!("{at}.restart.initialBackoff"),
                "must be more than 0s",
            ));
        }
        if max < initial {
            return Err(DefinitionError::invalid(
                format!("{at}.restart.maxBackoff"),
                "must not be shorter than initialBackoff",
            ));
        }
    }
    if let Some(l) = &c.limits {
        if let Some(cpus) = l.cpus
            && !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0)
        {
            return Err(DefinitionError::invalid(
                format!("{at}.limits.cpus"),
                format!("{cpus} is not in (0, 1024]"),
            ));
        }
        if !l.memory.as_deref().is_some_and(is_template) {
            match l.memory_bytes() {
                Ok(Some(0)) => {
                    return Err(DefinitionError::invalid(
                        format!("{at}.limits.memory"),
                        "must be more than 0",
                    ));
                }
                Ok(_) => {}
                Err(m) => {
                    return Err(DefinitionError::invalid(
                        format!("{at}.limits.memory"),
                        m.to_string(),
                    ));
                }
            }
        }
    }
    if let Some(u) = &c.rolling_update
        && u.max_unavailable == 0
        && u.max_surge == 0
    {
        return Err(DefinitionError::invalid(
            format!("{at}.rollingUpdate"),
            "maxUnavailable and maxSurge cannot both be 0",
        ));
    }
    if c.node_selector.keys().any(|k| k.is_empty()) {
        return Err(DefinitionError::invalid(
            format!("{at}.nodeSelector"),
            "keys must not be empty",
        ));
    }
    if let Some(init) = &c.init_container {
        if is_init {
            return Err(DefinitionError::invalid(
                format!("{at}.initContainer"),
                "an init container cannot have its own",
            ));
        }
        validate_containers(init, &format!("{at}.initContainer"), true)?;
    }
    Ok(())
}

/// Owner, group and mode of mounted files are not set by smr: asking for them is refused
/// rather than ignored.
fn check_file_info(path: &str, info: Option<&FileInfo>) -> Result<(), DefinitionError> {
    match info {
        Some(info) if !info.is_empty() => Err(DefinitionError::invalid(
            path,
            "smr does not set the owner, group or mode of mounted files yet (a resource file is \
             mounted read-only as the agent wrote it, owned by root; a volume keeps its own); \
             remove this field",
        )),
        _ => Ok(()),
    }
}

fn check_absolute(path: &str, value: &str) -> Result<(), DefinitionError> {
    if value.starts_with('/') || is_template(value) {
        Ok(())
    } else {
        Err(DefinitionError::invalid(
            path,
            format!("{value:?} is not an absolute path"),
        ))
    }
}

fn validate_readiness(r: &Readiness, at: &str) -> Result<(), DefinitionError> {
    non_empty(&format!("{at}.name"), &r.name)?;
    match r.check_type() {
        ReadinessType::Http => {
            let url = r.url.as_deref().unwrap_or("");
            if url.is_empty() {
                return Err(DefinitionError::invalid(
                    format!("{at}.url"),
                    "an http readiness check needs a url",
                ));
            }
            if !r.command.is_empty() {
                return Err(DefinitionError::invalid(
                    format!("{at}.command"),
                    "give either url or command, not both",
                ));
            }
            if !(is_template(url) || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(DefinitionError::invalid(
                    format!("{at}.url"),
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            if let Some(m) = &r.method {
                const METHODS: [&str; 7] =
                    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
                if !is_template(m) && !METHODS.contains(&m.to_ascii_uppercase().as_str()) {
                    return Err(DefinitionError::invalid(
                        format!("{at}.method"),
                        format!("unknown HTTP method {m:?}"),
                    ));
                }
            }
        }
        ReadinessType::Command => {
            if r.command.is_empty() {
                return Err(DefinitionError::invalid(
                    format!("{at}.command"),
                    "a command readiness check needs a command",
                ));
            }
            if r.url.is_some() {
                return Err(DefinitionError::invalid(
                    format!("{at}.url"),
                    "give either url or command, not both",
                ));
            }
        }
    }
    Ok(())
}

fn validate_gitops(g: &GitopsSpec) -> Result<(), DefinitionError> {
    non_empty("spec.repoURL", &g.repo_url)?;
    if let Some(dir) = &g.directory_path {
        gitops::normalize_directory(super::spec::repo_directory(dir))
            .map_err(|e| DefinitionError::invalid("spec.directoryPath", e.to_string()))?;
    }
    if let Some(i) = g.pooling_interval
        && i.get().is_zero()
    {
        return Err(DefinitionError::invalid(
            "spec.poolingInterval",
            "must be more than 0s",
        ));
    }
    for (field, r) in [
        ("certKeyRef", &g.cert_key_ref),
        ("httpAuthRef", &g.http_auth_ref),
    ] {
        if let Some(r) = r {
            check_label(&format!("spec.{field}.group"), &r.group)?;
            check_label(&format!("spec.{field}.name"), &r.name)?;
        }
    }
    if let Some(r) = &g.webhook_secret_ref {
        check_label("spec.webhookSecretRef.group", &r.group)?;
        check_label("spec.webhookSecretRef.name", &r.name)?;
    }
    Ok(())
}
