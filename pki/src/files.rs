//! Atomic writes of PEM files (temporary file in the same directory, fsync, rename, fsync of
//! the directory) with the file mode set when the file is created, so a key is never readable
//! by others, not even for a moment.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::PkiError;

/// Mode of private key files.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of certificate files.
pub(crate) const CERT_MODE: u32 = 0o644;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(io("creating directory", dir))
}

/// Writes `contents` to `path` atomically with `mode`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp.{}.{unique}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        // The mode given to open() is filtered by the umask and ignored for an existing file.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io("setting permissions of", &tmp))?;
        f.write_all(contents).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io("renaming into", path))?;
        if let Ok(d) = File::open(dir) {
            // Makes the rename durable; not every file system supports fsync on a directory.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Where the next version of `path` waits while a pair is replaced ([`write_pair`]).
fn next_of(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    path.with_file_name(name)
}

fn rename_durable(from: &Path, to: &Path) -> Result<(), PkiError> {
    fs::rename(from, to).map_err(io("renaming into", to))?;
    if let Some(d) = to.parent().and_then(|d| File::open(d).ok()) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Replaces a private key and its certificate as one: both are written in full as `*.next`
/// first, then renamed over the old ones, the key first. A crash leaves one of three states,
/// each of which [`finish_pair`] resolves to a whole pair.
pub(crate) fn write_pair(key: (&Path, &[u8]), cert: (&Path, &[u8])) -> Result<(), PkiError> {
    let (key_next, cert_next) = (next_of(key.0), next_of(cert.0));
    write_atomic(&key_next, key.1, KEY_MODE)?;
    write_atomic(&cert_next, cert.1, CERT_MODE)?;
    rename_durable(&key_next, key.0)?;
    rename_durable(&cert_next, cert.0)
}

/// Finishes or undoes a [`write_pair`] that a crash interrupted:
/// - both `*.next` present: the new pair was written in full, nothing renamed yet: finish;
/// - only the certificate's: the key was renamed already: finish with the certificate;
/// - only the key's: the certificate's was never written: the old pair is whole; drop it.
pub(crate) fn finish_pair(key: &Path, cert: &Path) -> Result<(), PkiError> {
    let (key_next, cert_next) = (next_of(key), next_of(cert));
    match (key_next.exists(), cert_next.exists()) {
        (true, true) => {
            rename_durable(&key_next, key)?;
            rename_durable(&cert_next, cert)
        }
        (false, true) => rename_durable(&cert_next, cert),
        (true, false) => fs::remove_file(&key_next).map_err(io("removing", &key_next)),
        (false, false) => Ok(()),
    }
}

/// Reads a UTF-8 text file.
pub(crate) fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io("reading", path))
}
