//! Reading definition files straight out of a commit's tree, without a work tree: nothing
//! is ever written to disk, so a hostile repository cannot plant files or links on the host.
//!
//! Rules: the directory path must stay inside the repository (no `..`, no absolute path);
//! symbolic links (tree mode 120000) on the way to or inside the scanned directories are
//! refused, never followed; submodules (mode 160000) are ignored; each file and the total
//! are size-capped (sizes are read from object headers before any blob is loaded); files
//! must be UTF-8. A directory holding `Pack.yaml` is a pack: its `definitions/**` are read, with
//! `definitions/variables.yaml` put into their `{{ .name }}` templates. Entries whose name starts
//! with a dot (`.github/`) are skipped.

use git2::{ObjectType, Oid, Repository, Tree};

use crate::error::GitError;
use crate::paths::{PackInfo, normalize_directory, parse_pack};

/// Size caps applied while reading a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single definition file, in bytes.
    pub max_file_bytes: usize,
    /// Largest sum of all definition files (and `Pack.yaml`), in bytes.
    pub max_total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One definition file, its path relative to the spec's directory (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// Definition files read from one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// Full sha of the commit the files come from.
    pub commit: String,
    /// Sorted by path.
    pub files: Vec<SourceFile>,
    /// Set when the directory is a pack.
    pub pack: Option<PackInfo>,
}

const MODE_TREE: i32 = 0o040000;
const MODE_LINK: i32 = 0o120000;
const MODE_COMMIT: i32 = 0o160000;
const PACK_FILE: &str = "Pack.yaml";
const PACK_DEFINITIONS: &str = "definitions";

fn is_yaml(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml")
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Reads the definition files of `directory` at `commit_id`.
pub(crate) fn read_commit(
    repo: &Repository,
    commit_id: Oid,
    directory: &str,
    limits: Limits,
    url: &str,
) -> Result<Checkout, GitError> {
    let parts = normalize_directory(directory)?;
    let other = |e: git2::Error| GitError::Other {
        url: url.to_string(),
        detail: crate::spec::redact_text(e.message()),
    };
    let commit = repo.find_commit(commit_id).map_err(other)?;
    let sha = commit_id.to_string();
    let not_found = || GitError::DirectoryNotFound {
        url: url.to_string(),
        directory: directory.to_string(),
        commit: sha.clone(),
    };
    let mut tree = commit.tree().map_err(other)?;
    let mut walked = String::new();
    for part in &parts {
        let (mode, id) = match tree.get_name(part) {
            Some(entry) => (entry.filemode(), entry.id()),
            None => return Err(not_found()),
        };
        walked = join(&walked, part);
        if mode == MODE_LINK {
            return Err(GitError::Symlink {
                url: url.to_string(),
                path: walked,
            });
        }
        if mode != MODE_TREE {
            return Err(not_found());
        }
        tree = repo.find_tree(id).map_err(other)?;
    }

    let mut reader = Reader {
        repo,
        limits,
        url,
        total: 0,
        files: Vec::new(),
        base: walked,
    };
    let pack = match tree.get_name(PACK_FILE) {
        Some(_) => Some(reader.read_pack(&tree, "")?),
        None => {
            reader.walk(&tree, "")?;
            None
        }
    };
    let mut files = reader.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Checkout {
        commit: sha,
        files,
        pack,
    })
}

/// A pack's `definitions/variables.yaml` is not a definition: its values (the defaults; a
/// gitops object gives no overrides) are put into the other files' `{{ .name }}` templates.
fn render_pack(
    files: Vec<SourceFile>,
    url: &str,
    base: &str,
    pack_dir: &str,
) -> Result<Vec<SourceFile>, GitError> {
    let variables_path = join(
        pack_dir,
        &format!("{PACK_DEFINITIONS}/{}", crate::pack::VARIABLES_FILE),
    );
    let bad = |e: crate::pack::TemplateError| GitError::BadPack {
        url: url.to_string(),
        path: join(base, &e.file),
        detail: if e.line > 0 {
            format!("line {}: {}", e.line, e.message)
        } else {
            e.message
        },
    };
    let (vars, files): (Vec<SourceFile>, Vec<SourceFile>) =
        files.into_iter().partition(|f| f.path == variables_path);
    let vars = match vars.first() {
        Some(f) => crate::pack::Variables::parse(&f.path, &f.text).map_err(bad)?,
        None => crate::pack::Variables::default(),
    };
    files
        .into_iter()
        .map(|f| {
            let (text, _) = crate::pack::render(&f.path, &f.text, &vars).map_err(bad)?;
            Ok(SourceFile { path: f.path, text })
        })
        .collect()
}

struct Reader<'r> {
    repo: &'r Repository,
    limits: Limits,
    url: &'r str,
    total: usize,
    files: Vec<SourceFile>,
    /// Path of the spec's directory inside the repository (for error messages).
    base: String,
}

impl Reader<'_> {
    fn other(&self, e: git2::Error) -> GitError {
        GitError::Other {
            url: self.url.to_string(),
            detail: crate::spec::redact_text(e.message()),
        }
    }

    fn walk(&mut self, tree: &Tree<'_>, prefix: &str) -> Result<(), GitError> {
        for entry in tree.iter() {
            let name = match entry.name() {
                Ok(name) => name.to_string(),
                Err(_) => {
                    return Err(GitError::NotUtf8 {
                        url: self.url.to_string(),
                        path: join(
                            &join(&self.base, prefix),
                            &String::from_utf8_lossy(entry.name_bytes()),
                        ),
                    });
                }
            };
            // `.github/`, `.git*` files and other dot entries are not definitions.
            if name.starts_with('.') {
                continue;
            }
            let path = join(prefix, &name);
            match entry.filemode() {
                MODE_LINK => {
                    return Err(GitError::Symlink {
                        url: self.url.to_string(),
                        path: join(&self.base, &path),
                    });
                }
                MODE_COMMIT => {} // submodule: ignored
                MODE_TREE => {
                    let sub = self.repo.find_tree(entry.id()).map_err(|e| self.other(e))?;
                    // A folder holding a Pack.yaml is a pack, as at the top.
                    if sub.get_name(PACK_FILE).is_some() {
                        self.read_pack(&sub, &path)?;
                    } else {
                        self.walk(&sub, &path)?;
                    }
                }
                _ if entry.kind() == Some(ObjectType::Blob) && is_yaml(&name) => {
                    let text = self.read_blob(entry.id(), &path)?;
                    self.files.push(SourceFile { path, text });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads the pack whose folder is `tree` (at `prefix`): `Pack.yaml`, then `definitions/**`
    /// rendered with `definitions/variables.yaml`.
    fn read_pack(&mut self, tree: &Tree<'_>, prefix: &str) -> Result<PackInfo, GitError> {
        let url = self.url;
        let entry = tree.get_name(PACK_FILE).ok_or_else(|| GitError::BadPack {
            url: url.to_string(),
            path: join(&self.base, &join(prefix, PACK_FILE)),
            detail: "missing".into(),
        })?;
        let manifest = join(prefix, PACK_FILE);
        if entry.filemode() == MODE_LINK {
            return Err(GitError::Symlink {
                url: url.to_string(),
                path: join(&self.base, &manifest),
            });
        }
        let text = self.read_blob(entry.id(), &manifest)?;
        let info = parse_pack(&text).map_err(|detail| GitError::BadPack {
            url: url.to_string(),
            path: join(&self.base, &manifest),
            detail,
        })?;
        let defs_path = join(prefix, PACK_DEFINITIONS);
        match tree.get_name(PACK_DEFINITIONS) {
            Some(defs) if defs.filemode() == MODE_TREE => {
                let sub = self.repo.find_tree(defs.id()).map_err(|e| self.other(e))?;
                let outside = std::mem::take(&mut self.files);
                let walked = self.walk(&sub, &defs_path);
                let inside = std::mem::replace(&mut self.files, outside);
                walked?;
                let rendered = render_pack(inside, url, &self.base, prefix)?;
                self.files.extend(rendered);
            }
            Some(defs) if defs.filemode() == MODE_LINK => {
                return Err(GitError::Symlink {
                    url: url.to_string(),
                    path: join(&self.base, &defs_path),
                });
            }
            _ => {}
        }
        Ok(info)
    }

    /// Reads one blob after checking its size from the object header.
    fn read_blob(&mut self, id: Oid, path: &str) -> Result<String, GitError> {
        let odb = self.repo.odb().map_err(|e| self.other(e))?;
        let (size, _) = odb.read_header(id).map_err(|e| self.other(e))?;
        let full = join(&self.base, path);
        if size > self.limits.max_file_bytes {
            return Err(GitError::FileTooLarge {
                url: self.url.to_string(),
                path: full,
                size,
                limit: self.limits.max_file_bytes,
            });
        }
        self.total = self.total.saturating_add(size);
        if self.total > self.limits.max_total_bytes {
            return Err(GitError::TotalTooLarge {
                url: self.url.to_string(),
                limit: self.limits.max_total_bytes,
            });
        }
        let blob = self.repo.find_blob(id).map_err(|e| self.other(e))?;
        String::from_utf8(blob.content().to_vec()).map_err(|_| GitError::NotUtf8 {
            url: self.url.to_string(),
            path: full,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_names() {
        assert!(is_yaml("a.yaml"));
        assert!(is_yaml("a.YML"));
        assert!(!is_yaml("a.yaml.txt"));
        assert!(!is_yaml("yaml"));
    }
}
