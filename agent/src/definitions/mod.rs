//! Definitions: the objects users write in YAML (simplecontainer's format), parsed and validated.
//!
//! SKELETON: the public names below (`Kind`, `ObjectKey`, `Meta`, `Object`, `Object::key`) are
//! the contract other modules use; the definitions work fills in typed specs and validation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
#[error("unknown kind {0:?} (expected one of containers, configuration, secret, resource, gitops, httpauth, certkey, network, volume, custom)")]
pub struct UnknownKind(pub String);

impl FromStr for Kind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let singular = lower.strip_suffix('s').unwrap_or(&lower);
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == lower || k.as_str().strip_suffix('s').unwrap_or(k.as_str()) == singular)
            .ok_or(UnknownKind(s.to_string()))
    }
}

/// `KIND/GROUP/NAME`, the address of an object. Serializes as that string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub group: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.group, self.name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("object address {0:?} is not KIND/GROUP/NAME")]
    Shape(String),
    #[error(transparent)]
    Kind(#[from] UnknownKind),
}

impl FromStr for ObjectKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(g), Some(n), None) if !g.is_empty() && !n.is_empty() => Ok(ObjectKey {
                kind: k.parse()?,
                group: g.to_string(),
                name: n.to_string(),
            }),
            _ => Err(KeyError::Shape(s.to_string())),
        }
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
pub struct Meta {
    pub group: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One definition. SKELETON: `spec` becomes typed per kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub kind: Kind,
    pub prefix: String,
    pub meta: Meta,
    pub spec: serde_json::Value,
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind,
            group: self.meta.group.clone(),
            name: self.meta.name.clone(),
        }
    }
}

/// SKELETON stand-in; the definitions branch replaces it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DefinitionError {
    pub message: String,
}

impl DefinitionError {
    pub fn location(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

pub fn parse_str(_source: &str, _text: &str) -> Result<Vec<Object>, DefinitionError> {
    Ok(vec![])
}

pub fn validate(_obj: &Object) -> Result<(), DefinitionError> {
    Ok(())
}

pub fn check_dns_label(what: &str, value: &str) -> Result<(), String> {
    let _ = (what, value);
    Ok(())
}

pub fn load_path(_path: &std::path::Path) -> Result<Vec<Object>, DefinitionError> {
    Ok(vec![])
}

pub fn to_yaml(_objects: &[Object]) -> Result<String, DefinitionError> {
    Ok(String::new())
}
