//! Pack variables: `definitions/variables.yaml` gives defaults, `--set key=value` overrides them,
//! and the pack's definition files are templates over them (`{{ .key }}`, `{{ .a.b }}`, pipelines,
//! functions, `if`/`range`/`with`: see [`crate::template`]), rendered before the YAML is parsed,
//! as simplecontainer's packs are. Pure: text in, text out.
//!
//! Keys match case-insensitively (simplecontainer's reader lowercases them). Values keep their
//! YAML type (string, number, boolean, list, mapping); `--set` values are strings, as in
//! simplecontainer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// The file that holds a pack's variables, inside `definitions/`.
pub const VARIABLES_FILE: &str = "variables.yaml";

/// Why a pack's variables or templates cannot be used: the file, the 1-based line (0 when
/// unknown) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", if *.line > 0 { format!(":{}", .line) } else { String::new() })]
pub struct TemplateError {
    pub file: String,
    pub line: u64,
    pub message: String,
}

/// A variable's value: a string, a number (as written: `1.20` stays `1.20`), a boolean, a list
/// or a mapping of nested keys. A YAML null is the empty string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Number(String),
    Bool(bool),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

/// The variables of one pack: defaults from `variables.yaml`, then `--set` overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables {
    root: BTreeMap<String, Value>,
}

enum Raw {
    Text(String),
    /// A number: its text is taken from the source as written (`1.20` stays `1.20`, `0640`
    /// stays `0640`).
    Scalar,
    Bool(bool),
    List(Vec<Spanned<Raw>>),
    Map(Vec<(String, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value, list or mapping")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Raw, E> {
                Ok(Raw::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Raw, E> {
                Ok(Raw::Scalar)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Raw, E> {
                Ok(Raw::Scalar)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Raw, E> {
                Ok(Raw::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Raw, E> {
                Ok(Raw::Scalar)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
                Ok(Raw::Text(String::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
                Ok(Raw::Text(String::new()))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Raw, D2::Error> {
                Raw::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(x) = a.next_element()? {
                    items.push(x);
                }
                Ok(Raw::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(k) = a.next_key::<String>()? {
                    items.push((k, a.next_value()?));
                }
                Ok(Raw::Map(items))
            }
        }
        d.deserialize_any(V)
    }
}

fn convert(text: &str, node: Spanned<Raw>) -> Value {
    match node.value {
        Raw::Text(s) => Value::Text(s),
        Raw::Bool(b) => Value::Bool(b),
        Raw::Scalar => {
            let span = node.referenced.span();
            let raw = match (span.byte_offset(), span.byte_len()) {
                (Some(at), Some(len)) => usize::try_from(at)
                    .ok()
                    .zip(usize::try_from(len).ok())
                    .and_then(|(at, len)| text.get(at..at + len)),
                _ => None,
            };
            Value::Number(raw.unwrap_or_default().trim().to_string())
        }
        Raw::List(items) => Value::List(items.into_iter().map(|i| convert(text, i)).collect()),
        Raw::Map(items) => Value::Map(
            items
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), convert(text, v)))
                .collect(),
        ),
    }
}

impl Variables {
    /// Reads `variables.yaml` (a mapping; empty text means no defaults). `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Variables, TemplateError> {
        if text.trim().is_empty() {
            return Ok(Variables::default());
        }
        let err = |line: u64, message: String| TemplateError {
            file: file.to_string(),
            line,
            message,
        };
        let node: Option<Spanned<Raw>> = serde_saphyr::from_str(text).map_err(|e| {
            let line = e.location().map_or(0, |l| l.line());
            let msg = e.without_snippet().to_string();
            let msg = msg
                .find(" at line ")
                .map_or(msg.clone(), |i| msg[..i].to_string());
            err(line, msg)
        })?;
        match node.map(|n| convert(text, n)) {
            None => Ok(Variables::default()),
            Some(Value::Map(root)) => Ok(Variables { root }),
            Some(Value::Text(t)) if t.is_empty() => Ok(Variables::default()),
            Some(_) => Err(err(
                1,
                "variables must be a mapping of names to values".into(),
            )),
        }
    }

    /// Applies one `--set key=value` (`a.b=v` sets the nested key `b` of `a`).
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("--set {assignment:?} is not KEY=VALUE"))?;
        let parts: Vec<String> = key
            .trim()
            .split('.')
            .map(|p| p.trim().to_ascii_lowercase())
            .collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "--set {assignment:?}: {key:?} is not a variable name"
            ));
        }
        let mut map = &mut self.root;
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                map.insert(part.clone(), Value::Text(value.trim().to_string()));
                break;
            }
            let slot = map
                .entry(part.clone())
                .or_insert_with(|| Value::Map(BTreeMap::new()));
            if !matches!(slot, Value::Map(_)) {
                *slot = Value::Map(BTreeMap::new());
            }
            let Value::Map(inner) = slot else {
                unreachable!("made a mapping just above")
            };
            map = inner;
        }
        Ok(())
    }
}

impl Variables {
    #[cfg(test)]
    pub(crate) fn root_for_tests(&self) -> BTreeMap<String, Value> {
        self.root.clone()
    }
}

/// Renders one pack template (see [`crate::template`]): variables, pipelines, the functions
/// of [`crate::template::FUNCTIONS`], `if`/`range`/`with`. Returns the rendered text and the
/// (lowercased, dotted) variables it read. `file` names the text in errors.
pub fn render(
    file: &str,
    text: &str,
    vars: &Variables,
) -> Result<(String, BTreeSet<String>), TemplateError> {
    crate::template::execute(text, &vars.root).map_err(|(line, message)| TemplateError {
        file: file.to_string(),
        line,
        message,
    })
}

/// Whether the `--set` key `key` (dotted) was used by a template: the key itself or any key
/// under it (`--set image=...` when templates read `.image.tag` counts).
pub fn is_used(key: &str, used: &BTreeSet<String>) -> bool {
    let key = key.trim().to_ascii_lowercase();
    used.iter().any(|u| {
        *u == key || u.starts_with(&format!("{key}.")) || key.starts_with(&format!("{u}."))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Variables {
        Variables::parse("variables.yaml", text).unwrap()
    }

    #[test]
    fn renders_values_as_written() {
        let v = vars(
            "image: nginx\nversion: 1.20\nmode: 0640\nreplicas: 2\ndebug: false\nnet:\n  Name: front\n",
        );
        let (out, used) = render(
            "a.yaml",
            "image: {{ .image }}\ntag: \"{{.version}}\"\nx: {{ .mode }} {{ .replicas }} {{ .debug }} {{ .net.name }}\n",
            &v,
        )
        .unwrap();
        assert_eq!(out, "image: nginx\ntag: \"1.20\"\nx: 0640 2 false front\n");
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            ["debug", "image", "mode", "net.name", "replicas", "version"]
        );
    }

    #[test]
    fn set_overrides_and_creates() {
        let mut v = vars("image: nginx\nnet: {name: front}\n");
        v.set("image=caddy").unwrap();
        v.set("NET.name = back").unwrap();
        v.set("extra.deep.key=1").unwrap();
        let (out, _) = render(
            "a.yaml",
            "{{ .image }} {{ .net.name }} {{ .extra.deep.key }}",
            &v,
        )
        .unwrap();
        assert_eq!(out, "caddy back 1");
        assert!(v.set("novalue").is_err());
        assert!(v.set("a..b=1").is_err());
    }

    #[test]
    fn trimming_and_comments() {
        let v = vars("a: x\n");
        let (out, _) = render("a.yaml", "k: [ {{- .a -}} ]{{/* note */}}\n", &v).unwrap();
        assert_eq!(out, "k: [x]\n");
    }

    #[test]
    fn errors_name_the_file_line_and_variable() {
        let v = vars("a: x\nm: {k: v}\nl: [1, 2]\n");
        let e = render("defs/app.yaml", "one\ntwo {{ .missing }}\n", &v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "defs/app.yaml:2: variable `missing` is not defined (give it in definitions/variables.yaml or with --set missing=VALUE)"
        );
        let e = render("a.yaml", "{{ .m }}", &v).unwrap_err();
        assert!(e.message.contains("is a mapping"), "{e}");
        let e = render("a.yaml", "{{ .l }}", &v).unwrap_err();
        assert!(e.message.contains("is a list"), "{e}");
        let e = render("a.yaml", "\n\n{{ if .a }}x{{ en }}", &v).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(
            e.message.contains("function \"en\" is not supported"),
            "{e}"
        );
        assert_eq!(render("a.yaml", "{{ .a | upper }}", &v).unwrap().0, "X");
        let e = render("a.yaml", "x {{ .a", &v).unwrap_err();
        assert!(e.message.contains("not closed"), "{e}");
        let e = Variables::parse("variables.yaml", "- a\n- b\n").unwrap_err();
        assert!(e.message.contains("mapping"), "{e}");
        let e = Variables::parse("variables.yaml", "a: [\n").unwrap_err();
        assert!(e.line >= 1, "{e}");
        assert_eq!(Variables::parse("v", "").unwrap(), Variables::default());
        assert_eq!(
            Variables::parse("v", "# only a comment\n").unwrap(),
            Variables::default()
        );
    }

    #[test]
    fn text_without_templates_is_unchanged() {
        let t = "rule: \"Host(`a.test`)\"\nargs: ['{', '}']\n";
        assert_eq!(render("a", t, &Variables::default()).unwrap().0, t);
    }

    #[test]
    fn used_keys() {
        let used: BTreeSet<String> = ["image.tag".to_string(), "name".to_string()].into();
        assert!(is_used("image", &used));
        assert!(is_used("IMAGE.tag", &used));
        assert!(is_used("name", &used));
        assert!(!is_used("nam", &used));
        assert!(!is_used("other", &used));
    }
}
