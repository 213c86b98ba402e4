//! Where a client finds its context (API address, CA, admin identity): shared by smrctl and
//! smrmgr, which records the context smrctl uses by default.

use std::path::PathBuf;

/// Default data directory of an agent.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/smr";

/// The file where `smrmgr start` records the context smrctl uses by default.
pub fn default_context_pointer() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/root/.config"));
    base.join("smr").join("context")
}

/// The folder of named contexts (`smrctl context import` / `use` / `list`), beside the pointer:
/// `~/.config/smr/contexts/NAME.json`.
pub fn contexts_dir() -> PathBuf {
    default_context_pointer().with_file_name("contexts")
}

/// Which context smrctl uses: `--context`, else `$SMR_CONTEXT`, else the one `smrmgr start`
/// recorded, else `/var/lib/smr/admin.context`.
pub fn resolve_context(flag: Option<PathBuf>) -> PathBuf {
    if let Some(path) = flag {
        return path;
    }
    if let Some(path) = std::env::var_os("SMR_CONTEXT") {
        return PathBuf::from(path);
    }
    if let Ok(text) = std::fs::read_to_string(default_context_pointer()) {
        let path = text.trim();
        if !path.is_empty() {
            return PathBuf::from(path);
        }
    }
    PathBuf::from(DEFAULT_DATA_DIR).join("admin.context")
}
