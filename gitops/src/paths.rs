//! The pure rules of reading a repository: which `directoryPath` may be read (nothing that could
//! leave the repository), and what a pack's `Pack.yaml` must hold. No git here (the fuzz target
//! `git_path` builds this file alone).

use serde::Deserialize;

use crate::error::GitError;

/// `name` and `version` from a pack's `Pack.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackInfo {
    pub name: String,
    pub version: String,
}

/// Splits a `directoryPath` into components, refusing anything that could leave the
/// repository root. `""`, `"."` and `"/"`-free variants of the root give no components.
pub fn normalize_directory(path: &str) -> Result<Vec<String>, GitError> {
    let hostile = |reason| GitError::HostilePath {
        path: path.to_string(),
        reason,
    };
    if path.starts_with('/') || path.starts_with('~') {
        return Err(hostile("absolute paths are not allowed"));
    }
    if path.contains('\\') {
        return Err(hostile("backslashes are not allowed"));
    }
    if path.chars().any(char::is_control) {
        return Err(hostile("control characters are not allowed"));
    }
    if path.len() > 4096 {
        return Err(hostile("path is too long"));
    }
    let mut out = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(hostile("'..' is not allowed")),
            p if p.eq_ignore_ascii_case(".git") => {
                return Err(hostile("'.git' is not allowed"));
            }
            p if out.is_empty() && p.starts_with('~') => {
                // `./~user/x` would read as a home directory once normalized to `~user/x`.
                return Err(hostile("absolute paths are not allowed"));
            }
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}

/// A loose YAML scalar: `version: 1.2` and `version: "1.2.0"` are both accepted.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct PackYaml {
    name: Option<Scalar>,
    version: Option<Scalar>,
}

/// Parses `Pack.yaml`: `name` and `version` are required; other fields are ignored.
pub fn parse_pack(text: &str) -> Result<PackInfo, String> {
    let raw: PackYaml = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let name = raw
        .name
        .map(Scalar::into_string)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| "missing field name".to_string())?;
    let version = raw
        .version
        .map(Scalar::into_string)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| "missing field version".to_string())?;
    Ok(PackInfo { name, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile(path: &str) -> bool {
        matches!(normalize_directory(path), Err(GitError::HostilePath { .. }))
    }

    #[test]
    fn directory_normalization() {
        assert_eq!(normalize_directory("").unwrap(), Vec::<String>::new());
        assert_eq!(normalize_directory(".").unwrap(), Vec::<String>::new());
        assert_eq!(normalize_directory("./").unwrap(), Vec::<String>::new());
        assert_eq!(
            normalize_directory("apps//prod/./").unwrap(),
            vec!["apps".to_string(), "prod".to_string()]
        );
        assert_eq!(
            normalize_directory("a..b").unwrap(),
            vec!["a..b".to_string()]
        );
    }

    #[test]
    fn hostile_directories_refused() {
        for p in [
            "..",
            "../x",
            "a/../../b",
            "a/..",
            "/etc",
            "~/x",
            "./~",
            ".//~user/x",
            "a\\..\\b",
            ".git",
            "a/.GIT/hooks",
            "a\0b",
            "a\nb",
        ] {
            assert!(hostile(p), "{p:?} accepted");
        }
    }

    /// Exhaustive over short strings of path-ish characters: whatever is accepted resolves
    /// to plain components that cannot climb out of the repository.
    #[test]
    fn normalization_property() {
        let alphabet = ['.', '/', 'a', '\\', '~', 'G'];
        let mut inputs = vec![String::new()];
        for _ in 0..6 {
            let next: Vec<String> = inputs
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            for input in &next {
                if let Ok(parts) = normalize_directory(input) {
                    assert!(!input.starts_with('/'), "{input:?}");
                    for part in &parts {
                        assert!(!part.is_empty() && part != "." && part != "..", "{input:?}");
                        assert!(!part.contains('/') && !part.contains('\\'), "{input:?}");
                    }
                    assert_eq!(
                        parts.join("/"),
                        input
                            .split('/')
                            .filter(|p| !p.is_empty() && *p != ".")
                            .collect::<Vec<_>>()
                            .join("/"),
                        "{input:?}"
                    );
                    // Normalizing the normalized path changes nothing.
                    assert_eq!(
                        normalize_directory(&parts.join("/")).ok().as_ref(),
                        Some(&parts),
                        "{input:?}"
                    );
                }
            }
            inputs = next;
        }
    }

    #[test]
    fn pack_yaml() {
        assert_eq!(
            parse_pack("name: redis\nversion: 1.0.2\nextra: [1]\n").unwrap(),
            PackInfo {
                name: "redis".into(),
                version: "1.0.2".into()
            }
        );
        assert_eq!(parse_pack("name: x\nversion: 3\n").unwrap().version, "3");
        assert_eq!(
            parse_pack("version: 3\n").unwrap_err(),
            "missing field name"
        );
        assert!(parse_pack("name: [").is_err());
    }
}
