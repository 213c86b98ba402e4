//! Definitions: the objects users write in YAML (simplecontainer's format), parsed and validated.
//!
//! An [`Object`] is `kind`, `prefix`, `meta {group, name, labels}` and a typed [`Spec`] whose
//! variant matches the kind. [`parse_str`] reads multi-document YAML with serde-saphyr under a
//! resource budget, rejects unknown keys with the file, line, field path and a "did you mean"
//! hint, then runs [`validate`] on each object. [`load_path`] reads a file, a directory tree or
//! a pack; [`to_yaml`] writes objects back in the same shape. JSON (the store's format) uses
//! the same serde implementation, so `Object` round-trips through both.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize};

mod data_map;
mod error;
mod parse;
mod scalars;
mod spec;
mod validate;

#[cfg(test)]
mod tests;

pub use data_map::DataMap;
pub use error::{DefinitionError, ErrorKind};
pub use parse::{
    Loader, MAX_INPUT_BYTES, PackManifest, RenderedPack, load_pack, load_path, parse_str, to_yaml,
};
pub use scalars::{
    AgentRef, DurationValue, ScalarError, format_duration, is_template, parse_duration,
    parse_memory, template_lookups,
};
pub use spec::*;
pub use validate::{MAX_REPLICAS, is_dns_label, is_prefix, validate};

/// The prefix of every kind but `custom` (which takes any `DOMAIN/VERSION`, e.g.
/// `traefik.io/v1`); `simplecontainers.io/v1` (seen in simplecontainer's docs) is read as this one.
pub const PREFIX: &str = "simplecontainer.io/v1";
const PREFIX_ALIAS: &str = "simplecontainers.io/v1";

/// The kinds of object smr stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Containers,
    Configuration,
    Secret,
    Resource,
    Gitops,
    Httpauth,
    Certkey,
    Network,
    Volume,
    Custom,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Containers,
        Kind::Configuration,
        Kind::Secret,
        Kind::Resource,
        Kind::Gitops,
        Kind::Httpauth,
        Kind::Certkey,
        Kind::Network,
        Kind::Volume,
        Kind::Custom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Containers => "containers",
            Kind::Configuration => "configuration",
            Kind::Secret => "secret",
            Kind::Resource => "resource",
            Kind::Gitops => "gitops",
            Kind::Httpauth => "httpauth",
            Kind::Certkey => "certkey",
            Kind::Network => "network",
            Kind::Volume => "volume",
            Kind::Custom => "custom",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown kind {0:?} (expected one of containers, configuration, secret, resource, gitops, httpauth, certkey, network, volume, custom)"
)]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let singular = lower.strip_suffix('s').unwrap_or(&lower);
        Kind::ALL
            .into_iter()
            .find(|k| {
                k.as_str() == lower
                    || k.as_str().strip_suffix('s').unwrap_or(k.as_str()) == singular
            })
            .ok_or(UnknownKind(s.to_string()))
    }
}

/// The address of an object: `KIND/GROUP/NAME`, or `PREFIX/KIND/GROUP/NAME` for a `custom`
/// object under a prefix of its own (`traefik.io/v1/custom/proxy/routes`). Serializes as that
/// string. `prefix` is `None` for [`PREFIX`] (`simplecontainer.io/v1`), so the keys of the
/// built-in kinds, and of custom objects with the standard prefix, are `KIND/GROUP/NAME` as they
/// always were; it is never `Some(PREFIX)` (build keys with [`ObjectKey::new`],
/// [`Object::key`] or by parsing).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub group: String,
    pub name: String,
    /// Behind a pointer so that a key (held by many error types) grows by one word only.
    pub prefix: Option<Arc<String>>,
}

impl ObjectKey {
    /// A key with the standard prefix.
    pub fn new(kind: Kind, group: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            kind,
            group: group.into(),
            name: name.into(),
            prefix: None,
        }
    }

    /// The prefix of the object this key names (`simplecontainer.io/v1` unless another).
    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().map_or(PREFIX, String::as_str)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(prefix) = &self.prefix {
            write!(f, "{prefix}/")?;
        }
        write!(f, "{}/{}/{}", self.kind, self.group, self.name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("object address {0:?} is not KIND/GROUP/NAME or PREFIX/KIND/GROUP/NAME")]
    Shape(String),
    #[error(transparent)]
    Kind(#[from] UnknownKind),
    #[error(
        "object address {0:?}: only custom objects have a prefix other than simplecontainer.io/v1"
    )]
    Prefix(String),
}

/// The stored form of a prefix: `None` for the standard one (or its alias).
fn key_prefix(prefix: &str) -> Option<Arc<String>> {
    (prefix != PREFIX && prefix != PREFIX_ALIAS).then(|| Arc::new(prefix.to_string()))
}

impl FromStr for ObjectKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts: Vec<&str> = s.split('/').collect();
        // simplecontainer's long forms put the category `kind` before the kind:
        // `kind/KIND/GROUP/NAME` and `PREFIX/kind/KIND/GROUP/NAME`.
        match parts.len() {
            4 if parts[0] == "kind" => {
                parts.remove(0);
            }
            6 if parts[2] == "kind" => {
                parts.remove(2);
            }
            _ => {}
        }
        let (prefix, rest) = match parts.len() {
            3 => (None, &parts[..]),
            5 => {
                let prefix = format!("{}/{}", parts[0], parts[1]);
                if !is_prefix(&prefix) {
                    return Err(KeyError::Shape(s.to_string()));
                }
                (key_prefix(&prefix), &parts[2..])
            }
            _ => return Err(KeyError::Shape(s.to_string())),
        };
        let (g, n) = (rest[1], rest[2]);
        if g.is_empty() || n.is_empty() {
            return Err(KeyError::Shape(s.to_string()));
        }
        let kind: Kind = rest[0].parse()?;
        if prefix.is_some() && kind != Kind::Custom {
            return Err(KeyError::Prefix(s.to_string()));
        }
        Ok(ObjectKey {
            kind,
            group: g.to_string(),
            name: n.to_string(),
            prefix,
        })
    }
}

/// An address as users write it: `KIND/GROUP/NAME`, or `PREFIX/KIND/GROUP/NAME` with a two-part
/// prefix (`traefik.io/v1/custom/traefik/dynamic`), or simplecontainer's long forms with the
/// category `kind` (`kind/containers/GROUP/NAME`, `traefik.io/v1/kind/custom/GROUP/NAME`). The prefix is part of the key: a custom
/// object is found under the prefix it was applied with (`custom/GROUP/NAME` is the one with
/// `simplecontainer.io/v1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The prefix as written, if one was.
    pub prefix: Option<String>,
    pub key: ObjectKey,
}

impl FromStr for Address {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key: ObjectKey = s.parse()?;
        let parts = s.split('/').count();
        let prefix = (parts >= 5).then(|| key.prefix().to_string());
        Ok(Address { prefix, key })
    }
}

impl Address {
    /// Whether `obj` is what this address names.
    pub fn matches(&self, obj: &Object) -> bool {
        obj.key() == self.key
    }
}

impl Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub group: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One definition. Serialized as `{kind, prefix, meta, spec}` with `spec` in the kind's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub kind: Kind,
    pub prefix: String,
    pub meta: Meta,
    pub spec: Spec,
}

impl Object {
    /// An object with the standard prefix; `kind` follows the spec.
    pub fn new(group: impl Into<String>, name: impl Into<String>, spec: impl Into<Spec>) -> Self {
        let spec = spec.into();
        Object {
            kind: spec.kind(),
            prefix: PREFIX.to_string(),
            meta: Meta {
                group: group.into(),
                name: name.into(),
                labels: BTreeMap::new(),
            },
            spec,
        }
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind,
            group: self.meta.group.clone(),
            name: self.meta.name.clone(),
            prefix: key_prefix(&self.prefix),
        }
    }

    /// `PREFIX/KIND/GROUP/NAME`, e.g. `traefik.io/v1/custom/traefik/dynamic`.
    pub fn address(&self) -> String {
        let key = self.key();
        format!("{}/{}/{}/{}", self.prefix, key.kind, key.group, key.name)
    }
}

impl Serialize for Object {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Object", 4)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("prefix", &self.prefix)?;
        st.serialize_field("meta", &self.meta)?;
        st.serialize_field("spec", &self.spec)?;
        st.end()
    }
}

const OBJECT_FIELDS: &[&str] = &["kind", "prefix", "meta", "spec"];
const KIND_NAMES: &[&str] = &[
    "containers",
    "configuration",
    "secret",
    "resource",
    "gitops",
    "httpauth",
    "certkey",
    "network",
    "volume",
    "custom",
];

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Object;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a definition with kind, prefix, meta and spec")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                let mut kind: Option<Kind> = None;
                let mut prefix: Option<String> = None;
                let mut meta: Option<Meta> = None;
                let mut spec: Option<Spec> = None;
                // simplecontainer keeps a containers definition's init container beside `spec`.
                let mut init: Option<ContainersSpec> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "kind" => {
                            let text: String = map.next_value()?;
                            kind = Some(
                                text.parse()
                                    .map_err(|_| de::Error::unknown_variant(&text, KIND_NAMES))?,
                            );
                        }
                        "prefix" => prefix = Some(map.next_value()?),
                        "meta" => meta = Some(map.next_value()?),
                        "spec" => {
                            // Errors made with `invalid_type` carry serde-saphyr's position of the key.
                            let k = kind.ok_or_else(|| {
                                de::Error::invalid_type(
                                    de::Unexpected::Other("`spec` before `kind`"),
                                    &"`kind` first",
                                )
                            })?;
                            spec = Some(map.next_value_seed(spec::SpecSeed(k))?);
                        }
                        "initContainer" if kind == Some(Kind::Containers) => {
                            init = Some(map.next_value()?)
                        }
                        other => return Err(de::Error::unknown_field(other, OBJECT_FIELDS)),
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
                let meta = meta.ok_or_else(|| de::Error::missing_field("meta"))?;
                let mut spec = spec.ok_or_else(|| de::Error::missing_field("spec"))?;
                if let (Some(init), Spec::Containers(c)) = (init, &mut spec) {
                    if c.init_container.is_some() {
                        return Err(de::Error::invalid_type(
                            de::Unexpected::Other("initContainer beside and inside spec"),
                            &"one initContainer",
                        ));
                    }
                    c.init_container = Some(Box::new(init));
                }
                let prefix = match prefix {
                    None => PREFIX.to_string(),
                    Some(p) if p == PREFIX_ALIAS => PREFIX.to_string(),
                    Some(p) => p,
                };
                Ok(Object {
                    kind,
                    prefix,
                    meta,
                    spec,
                })
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}
