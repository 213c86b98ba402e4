//! Reading definitions: YAML text (multi-document), files, directory trees and packs, under
//! a size limit and a parser budget; and writing them back as YAML.
//!
//! Errors are placed with serde-saphyr's locations. To name the field, the same text is read
//! a second time (only when something failed) into a located tree of keys and values, and the
//! error's position, or the validator's field path, is looked up in it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::error::{DefinitionError, ErrorKind, suggest};
use super::validate::validate;
use super::{Object, ObjectKey};

/// Largest definition text accepted (one file or one API body).
pub const MAX_INPUT_BYTES: usize = 10 * 1024 * 1024;

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 500_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = 64;
    budget.max_documents = 1_000;
    budget.max_nodes = 200_000;
    budget.max_total_scalar_bytes = MAX_INPUT_BYTES * 2;
    let mut o = serde_saphyr::Options::default();
    o.budget = Some(budget);
    o.alias_limits.max_total_replayed_events = 100_000;
    o.alias_limits.max_replay_stack_depth = 16;
    o.with_snippet = false;
    o
}

/// Parses every document of `text` (documents separated by `---`; empty ones skipped) and
/// validates each object. `source` names the text in errors (usually the file name).
pub fn parse_str(source: &str, text: &str) -> Result<Vec<Object>, DefinitionError> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(DefinitionError::new(
            ErrorKind::TooLarge,
            "",
            format!(
                "{} bytes is more than the limit of {MAX_INPUT_BYTES}",
                text.len()
            ),
        )
        .with_file(source));
    }
    let objects: Vec<Object> = serde_saphyr::from_multiple_with_options(text, options())
        .map_err(|e| from_yaml_error(&e, text).with_file(source))?;
    for (i, obj) in objects.iter().enumerate() {
        validate(obj).map_err(|e| place(e, text, i).with_file(source))?;
    }
    let mut seen = BTreeMap::new();
    for (i, obj) in objects.iter().enumerate() {
        if let Some(first) = seen.insert(obj.key(), i) {
            let e = DefinitionError::invalid(
                "meta.name",
                format!(
                    "{} is defined twice (documents {} and {})",
                    obj.key(),
                    first + 1,
                    i + 1,
                ),
            );
            return Err(place(e, text, i).with_file(source));
        }
    }
    Ok(objects)
}

/// Serializes objects as multi-document YAML (`---` between documents) that [`parse_str`] reads back.
pub fn to_yaml(objects: &[Object]) -> Result<String, DefinitionError> {
    serde_saphyr::to_string_multiple(objects).map_err(|e| {
        DefinitionError::new(ErrorKind::Invalid, "", format!("cannot write YAML: {e}"))
    })
}

/// `Pack.yaml` of a pack folder.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackManifest {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Loads a file, a directory (recursively, `*.yaml`/`*.yml` in sorted path order, skipping
/// names that start with a dot such as `.github/`) or a pack (a folder with `Pack.yaml` and
/// `definitions/`). Directories met while walking that hold a `Pack.yaml` are read as packs,
/// with their variables' defaults. The same object twice is an error.
pub fn load_path(path: &Path) -> Result<Vec<Object>, DefinitionError> {
    Loader::new(&[])?.load(path)
}

/// Loads a pack: `Pack.yaml` (`name`, `version`) and every definition under `definitions/`,
/// rendered with the defaults of `definitions/variables.yaml`.
pub fn load_pack(dir: &Path) -> Result<(PackManifest, Vec<Object>), DefinitionError> {
    Loader::new(&[])?.pack(dir)
}

/// Reads definitions from files, directories and packs, putting `--set KEY=VALUE` overrides
/// into the packs' variables. [`Loader::finish`] refuses an override no template used, so a
/// misspelt `--set` is not silently ignored.
#[derive(Debug, Default)]
pub struct Loader {
    set: Vec<String>,
    used: BTreeSet<String>,
    packs: usize,
}

/// One pack rendered: its manifest and each definition file's text after templating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPack {
    pub manifest: PackManifest,
    /// `(file path, rendered text)`, in path order; `definitions/variables.yaml` is not one.
    pub files: Vec<(String, String)>,
}

fn pack_error(file: &str, line: u64, message: impl Into<String>) -> DefinitionError {
    DefinitionError::new(ErrorKind::Pack, "", message)
        .with_file(file)
        .at(line, 0)
}

impl Loader {
    /// A loader with `--set` overrides (each `KEY=VALUE`; `a.b=v` sets a nested key).
    pub fn new(set: &[String]) -> Result<Loader, DefinitionError> {
        let mut probe = gitops::pack::Variables::default();
        for s in set {
            probe
                .set(s)
                .map_err(|m| DefinitionError::new(ErrorKind::Pack, "", m).with_file("--set"))?;
        }
        Ok(Loader {
            set: set.to_vec(),
            ..Loader::default()
        })
    }

    /// Loads a file, a directory or a pack (see [`load_path`]).
    pub fn load(&mut self, path: &Path) -> Result<Vec<Object>, DefinitionError> {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
        let shown = path.display().to_string();
        let mut out = Vec::new();
        if meta.is_dir() {
            if path.join(PACK_FILE).is_file() {
                out = self.pack(path)?.1;
            } else {
                if path.file_name().is_some_and(|n| n == "definitions")
                    && let Some(parent) = path.parent()
                    && parent.join(PACK_FILE).is_file()
                {
                    return Err(pack_error(
                        &shown,
                        0,
                        format!(
                            "this is the definitions folder of a pack; apply the pack folder {} instead",
                            parent.display()
                        ),
                    ));
                }
                for unit in yaml_files(path)? {
                    match unit {
                        Unit::File(file) => out.extend(load_file(&file)?),
                        Unit::Pack(dir) => out.extend(self.pack(&dir)?.1),
                    }
                }
            }
        } else {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
            if name == PACK_FILE {
                return Err(pack_error(
                    &shown,
                    0,
                    format!(
                        "this is pack metadata; apply the pack folder {} instead",
                        folder.map_or(".".into(), |p| p.display().to_string())
                    ),
                ));
            }
            if name == gitops::pack::VARIABLES_FILE
                && let Some(pack) = folder.and_then(Path::parent)
                && pack.join(PACK_FILE).is_file()
            {
                return Err(pack_error(
                    &shown,
                    0,
                    format!(
                        "this is a pack's variables file; apply the pack folder {} instead",
                        pack.display()
                    ),
                ));
            }
            out = load_file(path)?;
        }
        let mut seen: BTreeMap<ObjectKey, usize> = BTreeMap::new();
        for (i, obj) in out.iter().enumerate() {
            if seen.insert(obj.key(), i).is_some() {
                return Err(DefinitionError::invalid(
                    "meta.name",
                    format!("{} is defined twice", obj.key()),
                )
                .with_file(&shown));
            }
        }
        Ok(out)
    }

    /// Loads one pack: its definitions rendered and parsed.
    pub fn pack(&mut self, dir: &Path) -> Result<(PackManifest, Vec<Object>), DefinitionError> {
        let rendered = self.render(dir)?;
        let mut objects = Vec::new();
        for (file, text) in &rendered.files {
            objects.extend(parse_str(file, text)?);
        }
        Ok((rendered.manifest, objects))
    }

    /// Renders one pack's definition files (what `smrctl template` shows) without parsing them.
    pub fn render(&mut self, dir: &Path) -> Result<RenderedPack, DefinitionError> {
        let manifest_path = dir.join(PACK_FILE);
        if !manifest_path.is_file() {
            return Err(pack_error(
                &dir.display().to_string(),
                0,
                format!("not a pack: there is no {PACK_FILE} here"),
            ));
        }
        let text = read_limited(&manifest_path)?;
        let source = manifest_path.display().to_string();
        let manifest: PackManifest = serde_saphyr::from_str_with_options(&text, options())
            .map_err(|e| from_yaml_error(&e, &text).with_file(&source))?;
        if manifest.name.trim().is_empty() {
            return Err(
                DefinitionError::new(ErrorKind::Pack, "name", "must not be empty")
                    .with_file(&source),
            );
        }
        let defs = dir.join("definitions");
        if !defs.is_dir() {
            return Err(DefinitionError::new(
                ErrorKind::Pack,
                "",
                "a pack needs a definitions/ folder",
            )
            .with_file(&dir.display().to_string()));
        }
        let variables_path = defs.join(gitops::pack::VARIABLES_FILE);
        let mut vars = if variables_path.is_file() {
            let shown = variables_path.display().to_string();
            gitops::pack::Variables::parse(&shown, &read_limited(&variables_path)?)
                .map_err(|e| pack_error(&e.file, e.line, e.message))?
        } else {
            gitops::pack::Variables::default()
        };
        for s in &self.set {
            vars.set(s)
                .map_err(|m| DefinitionError::new(ErrorKind::Pack, "", m).with_file("--set"))?;
        }
        let mut files = Vec::new();
        for unit in yaml_files(&defs)? {
            let file = match unit {
                Unit::File(f) if f == variables_path => continue,
                Unit::File(f) => f,
                Unit::Pack(p) => {
                    return Err(pack_error(
                        &p.display().to_string(),
                        0,
                        "a pack inside a pack's definitions is not supported",
                    ));
                }
            };
            let shown = file.display().to_string();
            let (text, used) = gitops::pack::render(&shown, &read_limited(&file)?, &vars)
                .map_err(|e| pack_error(&e.file, e.line, e.message))?;
            self.used.extend(used);
            files.push((shown, text));
        }
        self.packs += 1;
        Ok(RenderedPack { manifest, files })
    }

    /// Refuses `--set` values that no pack template used (or that were given without a pack).
    pub fn finish(&self) -> Result<(), DefinitionError> {
        for s in &self.set {
            let key = s.split_once('=').map_or(s.as_str(), |(k, _)| k).trim();
            if self.packs == 0 {
                return Err(pack_error(
                    "--set",
                    0,
                    format!("--set {key}: --set fills pack variables, and no pack was given"),
                ));
            }
            if !gitops::pack::is_used(key, &self.used) {
                return Err(pack_error(
                    "--set",
                    0,
                    format!("--set {key}: no template of the pack uses {{{{ .{key} }}}}"),
                ));
            }
        }
        Ok(())
    }
}

fn load_file(path: &Path) -> Result<Vec<Object>, DefinitionError> {
    let text = read_limited(path)?;
    parse_str(&path.display().to_string(), &text)
}

fn read_limited(path: &Path) -> Result<String, DefinitionError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
    if meta.len() > MAX_INPUT_BYTES as u64 {
        return Err(DefinitionError::new(
            ErrorKind::TooLarge,
            "",
            format!(
                "{} bytes is more than the limit of {MAX_INPUT_BYTES}",
                meta.len()
            ),
        )
        .with_file(&path.display().to_string()));
    }
    std::fs::read_to_string(path).map_err(|e| io_error(path, &e))
}

fn io_error(path: &Path, e: &std::io::Error) -> DefinitionError {
    DefinitionError::new(ErrorKind::Io, "", e.to_string()).with_file(&path.display().to_string())
}

const PACK_FILE: &str = "Pack.yaml";

/// What a directory walk found: a definition file, or a folder that is a pack.
enum Unit {
    File(PathBuf),
    Pack(PathBuf),
}

/// YAML files under `dir`, sorted by path; sub-folders holding a `Pack.yaml` are packs. Names
/// starting with a dot (`.github/`, `.git/`, `.env.yaml`) are skipped. Symbolic links to
/// folders are not followed.
fn yaml_files(dir: &Path) -> Result<Vec<Unit>, DefinitionError> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, &e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| io_error(dir, &e))?;
    entries.sort();
    for p in entries {
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        let link = std::fs::symlink_metadata(&p).map_err(|e| io_error(&p, &e))?;
        if link.is_dir() {
            if p.join(PACK_FILE).is_file() {
                out.push(Unit::Pack(p));
            } else {
                out.extend(yaml_files(&p)?);
            }
        } else if p.is_file()
            && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        {
            out.push(Unit::File(p));
        }
    }
    Ok(out)
}

fn list(expected: &[&str]) -> String {
    if expected.is_empty() {
        "no fields are allowed here".into()
    } else {
        format!("expected one of {}", expected.join(", "))
    }
}

/// Turns a serde-saphyr error into a placed definition error with the field path.
fn from_yaml_error(e: &serde_saphyr::Error, text: &str) -> DefinitionError {
    use serde_saphyr::Error as E;
    let mut inner = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let (kind, message, suggestion) = match inner {
        E::SerdeUnknownField {
            field, expected, ..
        } => (
            ErrorKind::UnknownField,
            list(expected),
            suggest(field, expected.iter().copied()),
        ),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => (
            ErrorKind::InvalidValue,
            format!("unknown value {variant:?}, {}", list(expected)),
            suggest(variant, expected.iter().copied()),
        ),
        E::SerdeMissingField { .. } => (
            ErrorKind::MissingField,
            "required field is missing".to_string(),
            None,
        ),
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => (
            ErrorKind::InvalidType,
            format!("expected {}, found {unexpected}", readable_type(expected)),
            None,
        ),
        E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => (
            ErrorKind::InvalidValue,
            format!("invalid value {unexpected}, expected {expected}"),
            None,
        ),
        E::Unexpected { expected, .. } => (
            ErrorKind::InvalidType,
            format!("expected {}", readable_type(expected)),
            None,
        ),
        E::InvalidScalar { ty, .. } => (
            ErrorKind::InvalidType,
            format!("expected {}", readable_type(ty)),
            None,
        ),
        E::Message { msg, .. } => (ErrorKind::InvalidValue, msg.clone(), None),
        E::DuplicateMappingKey { key, .. } => (
            ErrorKind::Syntax,
            match key {
                Some(k) => format!("key {k:?} is given twice in the same mapping"),
                None => "a key is given twice in the same mapping".to_string(),
            },
            None,
        ),
        E::Budget { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => (
            ErrorKind::Budget,
            format!(
                "document too large or too deeply aliased: {}",
                strip_location(inner)
            ),
            None,
        ),
        _ => (ErrorKind::Syntax, strip_location(inner), None),
    };
    let mut out = DefinitionError::new(kind, "", message);
    out.suggestion = suggestion;
    if let E::DuplicateMappingKey {
        key: Some(key),
        location,
    } = inner
        && location.line() > 0
    {
        let at = (location.line(), location.column());
        out = out.at(at.0, at.1);
        out.path = Located::read_with(text, serde_saphyr::DuplicateKeyPolicy::FirstWins)
            .and_then(|tree| tree.earlier_key(at, key))
            .unwrap_or_default();
        return out;
    }
    if let E::Message { msg, .. } = inner
        && let Some(field) = msg
            .strip_prefix("duplicate field `")
            .and_then(|m| m.strip_suffix('`'))
        && let Some(loc) = e.location()
        && let Some(tree) = Located::read(text)
        && let Some(spelled) = tree.alias_clash((loc.line(), loc.column()), field)
    {
        return spelled;
    }
    if let Some(loc) = e.location()
        && loc.line() > 0
    {
        out = out.at(loc.line(), loc.column());
        if !matches!(kind, ErrorKind::Syntax | ErrorKind::Budget)
            && let Some(tree) = Located::read(text)
        {
            let at = (loc.line(), loc.column());
            out.path = match inner {
                E::SerdeMissingField { field, .. } => tree.missing_path(at, field),
                _ => tree.path_at(at, kind == ErrorKind::UnknownField),
            };
        }
        if kind == ErrorKind::InvalidType
            && !out.message.contains(", found ")
            && let Some(found) = scalar_at(text, loc.line(), loc.column())
        {
            out.message = format!("{}, found {found:?}", out.message);
        }
    }
    out
}

/// serde's and serde-saphyr's type names in words.
fn readable_type(t: &str) -> String {
    match t {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "string scalar" | "a string" => "a string".into(),
        "boolean" | "a boolean" => "true or false".into(),
        "mapping start" => "a mapping".into(),
        "sequence start" => "a list".into(),
        other => other.into(),
    }
}

/// The plain scalar written at a position (for "found ..." in type errors).
fn scalar_at(text: &str, line: u64, column: u64) -> Option<String> {
    let l = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let rest: String = l
        .chars()
        .skip(usize::try_from(column).ok()?.checked_sub(1)?)
        .collect();
    let value: String = rest
        .chars()
        .take_while(|c| !matches!(c, ',' | '}' | ']' | '#'))
        .collect();
    let value = value.trim();
    (!value.is_empty() && !value.starts_with(['[', '{', '-']))
        .then(|| value.chars().take(60).collect())
}

/// The error's text without serde-saphyr's trailing " at line X, column Y ..." part.
fn strip_location(e: &serde_saphyr::Error) -> String {
    let s = e.without_snippet().to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Puts a validation error (which knows its field path) at the field's line in document `doc`.
fn place(mut e: DefinitionError, text: &str, doc: usize) -> DefinitionError {
    if let Some(tree) = Located::read(text)
        && let Some((line, col)) = tree.position_of(doc, &e.path)
    {
        e = e.at(line, col);
    }
    e
}

type Pos = (u64, u64);

/// One key or sequence item of the located tree.
struct Entry {
    doc: usize,
    path: String,
    key: Option<Pos>,
    value: Pos,
}

/// All keys and values of a YAML stream with their positions, in document order.
struct Located {
    entries: Vec<Entry>,
}

enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Node, D2::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = a.next_element()? {
                    items.push(x);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(k) = a.next_key()? {
                    items.push((k, a.next_value()?));
                }
                Ok(Node::Map(items))
            }
        }
        d.deserialize_any(V)
    }
}

fn pos(l: &serde_saphyr::Location) -> Pos {
    (l.line(), l.column())
}

/// Other spellings the definitions accept for a field (serde aliases beyond a change of case).
const ALIASES: &[(&str, &str)] = &[
    ("args", "command"),
    ("network_mode", "networkMode"),
    ("cpus", "cpu"),
    ("driver_opts", "driverOpts"),
    ("fileInfo", "permissions"),
    ("file_info", "permissions"),
    ("file_info", "fileInfo"),
];

fn same_field(field: &str, key: &str) -> bool {
    field.eq_ignore_ascii_case(key)
        || ALIASES
            .iter()
            .any(|(f, a)| f.eq_ignore_ascii_case(field) && a.eq_ignore_ascii_case(key))
}

impl Located {
    fn read(text: &str) -> Option<Located> {
        Self::read_with(text, serde_saphyr::DuplicateKeyPolicy::Error)
    }

    fn read_with(text: &str, duplicates: serde_saphyr::DuplicateKeyPolicy) -> Option<Located> {
        let mut o = options();
        o.duplicate_keys = duplicates;
        let docs: Vec<Spanned<Node>> = serde_saphyr::from_multiple_with_options(text, o).ok()?;
        let mut entries = Vec::new();
        for (doc, node) in docs.iter().enumerate() {
            Self::walk(doc, "", &node.value, &mut entries);
        }
        Some(Located { entries })
    }

    fn walk(doc: usize, at: &str, node: &Node, out: &mut Vec<Entry>) {
        match node {
            Node::Scalar => {}
            Node::Map(items) => {
                for (k, v) in items {
                    let path = if at.is_empty() {
                        k.value.clone()
                    } else {
                        format!("{at}.{}", k.value)
                    };
                    out.push(Entry {
                        doc,
                        path: path.clone(),
                        key: Some(pos(&k.referenced)),
                        value: pos(&v.referenced),
                    });
                    Self::walk(doc, &path, &v.value, out);
                }
            }
            Node::Seq(items) => {
                for (i, v) in items.iter().enumerate() {
                    let path = format!("{at}[{i}]");
                    out.push(Entry {
                        doc,
                        path: path.clone(),
                        key: None,
                        value: pos(&v.referenced),
                    });
                    Self::walk(doc, &path, &v.value, out);
                }
            }
        }
    }

    /// The field at a position: the key there (unknown fields point at keys), else the
    /// outermost value starting there, else the nearest entry before it.
    fn path_at(&self, at: Pos, prefer_key: bool) -> String {
        let by_key = self.entries.iter().find(|e| e.key == Some(at));
        let by_value = self.entries.iter().find(|e| e.value == at);
        let hit = if prefer_key {
            by_key.or(by_value)
        } else {
            by_value.or(by_key)
        };
        if let Some(e) = hit {
            return e.path.clone();
        }
        self.entries
            .iter()
            .rfind(|e| e.key.unwrap_or(e.value) <= at)
            .map(|e| e.path.clone())
            .unwrap_or_default()
    }

    /// The path of the first copy of `key` written before `at` (a duplicate key's path).
    fn earlier_key(&self, at: Pos, key: &str) -> Option<String> {
        self.entries
            .iter()
            .rfind(|e| {
                e.key.is_some_and(|k| k < at)
                    && (e.path == key || e.path.ends_with(&format!(".{key}")))
            })
            .map(|e| e.path.clone())
    }

    /// serde's "duplicate field `args`" when a field is written under two of its names
    /// (`command` and `args`): both spellings, placed at the later one.
    fn alias_clash(&self, at: Pos, field: &str) -> Option<DefinitionError> {
        // serde-saphyr places the error at the mapping holding both keys (or at a key in it).
        let holder = self
            .entries
            .iter()
            .find(|e| e.value == at)
            .map(|e| e.path.clone())
            .or_else(|| {
                let p = self.path_at(at, true);
                Some(p.rfind('.').map_or(String::new(), |i| p[..i].to_string()))
            })?;
        let doc = self
            .entries
            .iter()
            .find(|e| e.path == holder && (e.value == at || e.key == Some(at)))
            .map(|e| e.doc);
        let children: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| doc.is_none_or(|d| e.doc == d))
            .filter(|e| match e.path.strip_prefix(&holder) {
                Some(rest) if holder.is_empty() => !rest.contains(['.', '[']),
                Some(rest) => rest
                    .strip_prefix('.')
                    .is_some_and(|r| !r.contains(['.', '['])),
                None => false,
            })
            .filter(|e| {
                let name = e.path.rsplit('.').next().unwrap_or(&e.path);
                same_field(field, name)
            })
            .collect();
        let [first, second, ..] = children.as_slice() else {
            return None;
        };
        let name = |e: &Entry| e.path.rsplit('.').next().unwrap_or(&e.path).to_string();
        let (line, column) = second.key.unwrap_or(second.value);
        let hint = if field == "args" {
            " (smr reads `command` as `args`): write the program as `entrypoint` and its arguments as `args`"
        } else {
            "; give only one"
        };
        Some(
            DefinitionError::new(
                ErrorKind::InvalidValue,
                second.path.clone(),
                format!(
                    "`{}` and `{}` are two names of the same field{hint}",
                    name(first),
                    name(second)
                ),
            )
            .at(line, column),
        )
    }

    /// The path of a missing field: serde-saphyr places the error at the last key read in
    /// the mapping (or at the mapping itself), so the field is that key's sibling.
    fn missing_path(&self, at: Pos, field: &str) -> String {
        let join = |p: &str| {
            if p.is_empty() {
                field.to_string()
            } else {
                format!("{p}.{field}")
            }
        };
        if let Some(e) = self.entries.iter().find(|e| e.key == Some(at)) {
            let parent = e.path.rfind('.').map_or("", |i| &e.path[..i]);
            return join(parent);
        }
        match self.entries.iter().find(|e| e.value == at) {
            Some(e) => join(&e.path),
            None => field.to_string(),
        }
    }

    /// Where `path` (or its nearest present parent) is written in document `doc`.
    fn position_of(&self, doc: usize, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.doc == doc && e.path == p) {
                return Some(e.key.unwrap_or(e.value));
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
            if p.is_empty() {
                return None;
            }
        }
    }
}
