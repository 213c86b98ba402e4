//! `smrmgr backup` and `smrmgr restore`: the file written atomically, and what a restore takes
//! from the backup (its network) before it starts the agent.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

use smr_core::backup::Backup;

use crate::start::StartSettings;

/// Writes `bytes` to `path` atomically and privately: a new file (mode 0600) beside it, synced,
/// renamed over `path`, the directory synced. A crash leaves the old file or the new one, never
/// a part; the temporary file is removed on an error.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// One line about a backup, for people.
pub fn describe(backup: &Backup) -> String {
    let h = &backup.header;
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(h.taken_ms);
    let age = std::time::SystemTime::now()
        .duration_since(when)
        .map(|d| format!("{}s ago", d.as_secs()))
        .unwrap_or_else(|_| "in the future".into());
    format!(
        "cluster {} ({} store), revision {}, index {}, term {}, {} object(s), taken by {} {age}",
        h.cluster_id, h.store, h.revision, h.index, h.term, h.objects, h.taken_by
    )
}

/// The restore's start settings: the backup's cluster network (cidr, subnet length, backend) in
/// place of flags not given; a given flag that differs is refused (the objects' addresses and
/// the nodes' overlay follow the network).
pub fn with_backup_network(
    mut settings: StartSettings,
    backup: &Backup,
) -> Result<StartSettings, String> {
    let Some(network) = &backup.state.network else {
        return Ok(settings);
    };
    let mut conflicts = Vec::new();
    match settings.cidr {
        Some(cidr) if cidr != network.cidr => {
            conflicts.push(format!("--cidr {cidr} (the backup's is {})", network.cidr))
        }
        _ => settings.cidr = Some(network.cidr),
    }
    match settings.subnet_len {
        Some(len) if len != network.subnet_len => conflicts.push(format!(
            "--subnet-len {len} (the backup's is {})",
            network.subnet_len
        )),
        _ => settings.subnet_len = Some(network.subnet_len),
    }
    match &settings.backend {
        Some(backend) if *backend != network.backend => conflicts.push(format!(
            "--backend {backend} (the backup's is {})",
            network.backend
        )),
        _ => settings.backend = Some(network.backend.clone()),
    }
    if conflicts.is_empty() {
        Ok(settings)
    } else {
        Err(format!(
            "a restored cluster keeps the backup's network: leave out {}",
            conflicts.join(", ")
        ))
    }
}

/// The arguments of the `smrmgr start` a background restore runs: `args` (without the program)
/// with `restore FILE` turned into `start`, and the network flags the restore took from the
/// backup added where they were not given.
pub fn start_args_for_restore(
    args: &[OsString],
    file: &OsString,
    settings: &StartSettings,
) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut file_dropped = false;
    let mut command_seen = false;
    // `--backup-key-file` is restore's alone (used before the agent starts).
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
        } else if command_seen && arg == "--backup-key-file" {
            skip_value = true;
        } else if command_seen && arg.to_string_lossy().starts_with("--backup-key-file=") {
            // Dropped with its value.
        } else if !command_seen && arg == "restore" {
            out.push("start".into());
            command_seen = true;
        } else if command_seen && !file_dropped && arg == file {
            file_dropped = true;
        } else {
            out.push(arg.clone());
        }
    }
    let given = |flag: &str| {
        args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        })
    };
    if let (false, Some(cidr)) = (given("--cidr"), settings.cidr) {
        out.extend(["--cidr".into(), cidr.to_string().into()]);
    }
    if let (false, Some(len)) = (given("--subnet-len"), settings.subnet_len) {
        out.extend(["--subnet-len".into(), len.to_string().into()]);
    }
    if let (false, Some(backend)) = (given("--backend"), &settings.backend) {
        out.extend(["--backend".into(), backend.into()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_background_restore_starts_the_agent_with_the_backups_network() {
        let settings = StartSettings {
            cidr: Some("10.20.0.0/16".parse().unwrap()),
            subnet_len: Some(24),
            backend: Some("vxlan".into()),
            ..StartSettings::default()
        };
        let args = os(&[
            "restore",
            "b.smr",
            "-a",
            "x",
            "--subnet-len",
            "24",
            "--backup-key-file",
            "/old.key",
            "--data-dir",
            "/d",
            "--backup-key-file=/old.key",
        ]);
        assert_eq!(
            start_args_for_restore(&args, &"b.smr".into(), &settings),
            os(&[
                "start",
                "-a",
                "x",
                "--subnet-len",
                "24",
                "--data-dir",
                "/d",
                "--cidr",
                "10.20.0.0/16",
                "--backend",
                "vxlan"
            ])
        );
    }

    #[test]
    fn the_backup_file_is_written_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.smr");
        std::fs::write(&path, b"old").unwrap();
        write_atomic_private(&path, b"new content").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing else is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
