//! Pack variables: `definitions/variables.yaml` gives defaults, `--set key=value` overrides them,
//! and `{{ .key }}` (or `{{ .a.b }}` for nested keys) in the pack's definition files is replaced
//! by the value before the YAML is parsed, as simplecontainer's packs do. Pure: text in, text out.
//!
//! Only variable references are understood; any other template action (`{{ if }}`, pipelines,
//! functions) is refused with the file and line, never left in or silently dropped. Keys match
//! case-insensitively (simplecontainer's reader lowercases them). `{{- ` and ` -}}` trim the
//! white space before and after, `{{/* ... */}}` is a comment.

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

/// A variable's value: text (numbers and booleans as written), or a mapping of nested keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
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
    /// A number, boolean or null: its text is taken from the source as written (`1.20` stays
    /// `1.20`, `0640` stays `0640`).
    Scalar,
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
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Raw, E> {
                Ok(Raw::Scalar)
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
        Raw::Scalar => {
            let span = node.referenced.span();
            let raw = match (span.byte_offset(), span.byte_len()) {
                (Some(at), Some(len)) => usize::try_from(at)
                    .ok()
                    .zip(usize::try_from(len).ok())
                    .and_then(|(at, len)| text.get(at..at + len)),
                _ => None,
            };
            Value::Text(raw.unwrap_or_default().trim().to_string())
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

    fn lookup(&self, path: &[&str]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        let mut at = self.root.get(&first.to_ascii_lowercase())?;
        for part in rest {
            match at {
                Value::Map(m) => at = m.get(&part.to_ascii_lowercase())?,
                _ => return None,
            }
        }
        Some(at)
    }
}

/// Replaces every `{{ .name }}` of `text` by its value. Returns the rendered text and the
/// (lowercased, dotted) names it used. `file` names the text in errors.
pub fn render(
    file: &str,
    text: &str,
    vars: &Variables,
) -> Result<(String, BTreeSet<String>), TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut used = BTreeSet::new();
    let mut rest = text;
    let line_of = |at: &str| -> u64 {
        let consumed = text.len() - at.len();
        text[..consumed].matches('\n').count() as u64 + 1
    };
    while let Some(start) = rest.find("{{") {
        let line = line_of(&rest[start..]);
        let err = |message: String| TemplateError {
            file: file.to_string(),
            line,
            message,
        };
        let mut before = &rest[..start];
        let after_open = &rest[start + 2..];
        let Some(end) = after_open.find("}}") else {
            return Err(err("`{{` is not closed by `}}`".into()));
        };
        let mut action = &after_open[..end];
        let mut next = &after_open[end + 2..];
        if let Some(a) = action.strip_prefix('-')
            && a.starts_with(char::is_whitespace)
        {
            before = before.trim_end();
            action = a;
        }
        if let Some(a) = action.strip_suffix('-')
            && a.ends_with(char::is_whitespace)
        {
            next = next.trim_start();
            action = a;
        }
        out.push_str(before);
        let action = action.trim();
        if action.starts_with("/*") && action.ends_with("*/") {
            rest = next;
            continue;
        }
        let Some(name) = action.strip_prefix('.') else {
            return Err(err(format!(
                "`{{{{ {action} }}}}`: only variables (`{{{{ .name }}}}`) are supported in pack templates"
            )));
        };
        let path: Vec<&str> = name.split('.').collect();
        if name.is_empty()
            || path.iter().any(|p| {
                p.is_empty()
                    || !p
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            })
        {
            return Err(err(format!(
                "`{{{{ {action} }}}}`: only variables (`{{{{ .name }}}}`) are supported in pack templates"
            )));
        }
        let dotted = name.to_ascii_lowercase();
        match vars.lookup(&path) {
            Some(Value::Text(v)) => out.push_str(v),
            Some(Value::Map(_)) => {
                return Err(err(format!(
                    "variable `{name}` is a mapping; name one of its keys (`{{{{ .{name}.KEY }}}}`)"
                )));
            }
            Some(Value::List(_)) => {
                return Err(err(format!(
                    "variable `{name}` is a list; only single values can be put in a template"
                )));
            }
            None => {
                return Err(err(format!(
                    "variable `{name}` is not defined (give it in definitions/{VARIABLES_FILE} or with --set {name}=VALUE)"
                )));
            }
        }
        used.insert(dotted);
        rest = next;
    }
    out.push_str(rest);
    Ok((out, used))
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
        let e = render("a.yaml", "\n\n{{ if .a }}x{{ end }}", &v).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("only variables"), "{e}");
        let e = render("a.yaml", "{{ .a | upper }}", &v).unwrap_err();
        assert!(e.message.contains("only variables"), "{e}");
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
