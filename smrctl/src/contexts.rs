//! Named contexts: `smrctl context list | use NAME | import FILE | export [FILE]`.
//!
//! A context is one JSON file (API URL, cluster CA, client certificate and key). Imported ones
//! live in a folder (`~/.config/smr/contexts/NAME.json`, mode 0600); `use` points smrctl's
//! default at one of them by writing the same pointer file `smrmgr start` writes.

use std::path::{Path, PathBuf};

use api_types::client::{Context, write_private};

/// Where named contexts live and which one is the default.
#[derive(Debug, Clone)]
pub struct Store {
    /// `.../contexts/`
    pub dir: PathBuf,
    /// The file holding the default context's path.
    pub pointer: PathBuf,
}

/// One line of `context list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub api_url: String,
    pub path: PathBuf,
    pub current: bool,
}

/// A context name: a file name that is safe to use (no path, no leading dot).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Store {
    /// The user's store (`~/.config/smr`).
    pub fn user() -> Store {
        Store {
            dir: api_types::context::contexts_dir(),
            pointer: api_types::context::default_context_pointer(),
        }
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Copies the context in `file` into the store as `name` (default: the context's own name).
    /// Refuses to overwrite a different context of the same name unless `force`.
    pub fn import(&self, file: &Path, name: Option<&str>, force: bool) -> Result<String, String> {
        let ctx = Context::load(file).map_err(|e| e.to_string())?;
        // The certificates must at least make a client.
        api_types::client::Client::from_context(&ctx).map_err(|e| e.to_string())?;
        let name = name.unwrap_or(&ctx.name).to_string();
        if !valid_name(&name) {
            return Err(format!(
                "{name:?} is not a context name (letters, digits, '-', '_', '.'); give one with --name"
            ));
        }
        let target = self.path_of(&name);
        if !force
            && let Ok(existing) = Context::load(&target)
            && (existing.api_url != ctx.api_url || existing.cert_pem != ctx.cert_pem)
        {
            return Err(format!(
                "a different context named {name} exists ({}); use --name or --force",
                existing.api_url
            ));
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let ctx = Context {
            name: name.clone(),
            ..ctx
        };
        ctx.save(&target).map_err(|e| e.to_string())?;
        Ok(name)
    }

    /// Makes the named context smrctl's default.
    pub fn use_context(&self, name: &str) -> Result<PathBuf, String> {
        let path = self.path_of(name);
        if !valid_name(name) || !path.is_file() {
            let known: Vec<String> = self.list(None)?.into_iter().map(|e| e.name).collect();
            return Err(format!(
                "no context named {name:?} (known: {})",
                if known.is_empty() {
                    "none; import one with `smrctl context import FILE`".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        Context::load(&path).map_err(|e| e.to_string())?;
        if let Some(parent) = self.pointer.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let text = format!("{}\n", path.display());
        write_private(&self.pointer, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.pointer.display()))?;
        Ok(path)
    }

    /// The stored contexts by name, and the one in use (`current`: the resolved context path)
    /// when it is not one of them.
    pub fn list(&self, current: Option<&Path>) -> Result<Vec<Entry>, String> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.with_current(out, current);
            }
            Err(e) => return Err(format!("cannot read {}: {e}", self.dir.display())),
        };
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot read {}: {e}", self.dir.display()))?
                .path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let api_url = Context::load(&path)
                .map(|c| c.api_url)
                .unwrap_or_else(|e| format!("(unreadable: {e})"));
            out.push(Entry {
                name: name.to_string(),
                api_url,
                current: current.is_some_and(|c| same_file(c, &path)),
                path,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        self.with_current(out, current)
    }

    fn with_current(
        &self,
        mut out: Vec<Entry>,
        current: Option<&Path>,
    ) -> Result<Vec<Entry>, String> {
        if let Some(c) = current
            && !out.iter().any(|e| e.current)
            && let Ok(ctx) = Context::load(c)
        {
            out.insert(
                0,
                Entry {
                    name: ctx.name,
                    api_url: ctx.api_url,
                    path: c.to_path_buf(),
                    current: true,
                },
            );
        }
        Ok(out)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The context at `from` as one file's text (API URL, CA, client certificate and key), for a
/// colleague's `smrctl context import`. `name` renames it.
pub fn export(from: &Path, name: Option<&str>) -> Result<String, String> {
    let mut ctx = Context::load(from).map_err(|e| e.to_string())?;
    if let Some(name) = name {
        if !valid_name(name) {
            return Err(format!("{name:?} is not a context name"));
        }
        ctx.name = name.to_string();
    }
    serde_json::to_string_pretty(&ctx)
        .map(|t| t + "\n")
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("prod-eu.1"));
        assert!(!valid_name(""));
        assert!(!valid_name("../x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
    }
}
