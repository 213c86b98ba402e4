//! Repository-relative paths: the one check every directory goes through before it is read.
//! Pure (std only), so it is available without the `git` feature.

use crate::error::GitError;

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
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}
