//! The WireGuard backend: keys, the key file, and (in submodules) the peer diff and the
//! two device implementations.
//!
//! Each node makes its key pair locally; the private key lives only in
//! `<data-dir>/wireguard.key` (mode 0600, base64 as `wg genkey` writes it) and in the
//! device; the public key and endpoint travel in the node registry.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddrV4;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use boringtun::x25519;

pub mod kernel;
pub mod plan;
pub mod userspace;

pub use kernel::KernelWg;
pub use plan::{WgOp, WgPeerConfig, WgPlan, plan_wireguard};
pub use userspace::UserspaceWg;

/// WireGuard's default UDP port.
pub const WG_PORT: u16 = 51820;

/// Bytes WireGuard adds to an inner packet on an IPv4 underlay: the outer IPv4 header
/// (20), the UDP header (8), WireGuard's data header (type, receiver index, counter: 16)
/// and the Poly1305 tag (16). Endpoints are IPv4 only ([`WgPeer::endpoint`] is a
/// `SocketAddrV4`), so the 80 bytes `wg-quick` reserves for an IPv6 underlay would waste
/// 20 bytes of every packet. Inner packets are padded to a multiple of 16 only up to the
/// MTU, so an underlay of 1500 gives an overlay MTU of 1440 (itself a multiple of 16).
pub const WG_OVERHEAD: u32 = 60;

/// Persistent keepalive interval: keeps NAT mappings open (wg's recommended value).
pub const WG_KEEPALIVE_SECS: u16 = 25;

/// Name of the WireGuard device.
pub const WG_DEV: &str = "smr-wg";

/// WireGuard errors.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// A key in text form is not 32 bytes of base64.
    #[error("invalid WireGuard key: {0}")]
    InvalidKey(String),
    /// Reading or writing the key file failed.
    #[error("WireGuard key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file holds something that is not a key.
    #[error("WireGuard key file {path}: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    /// The WireGuard device could not be created or configured.
    #[error("WireGuard device: {0}")]
    Device(String),
    /// Netlink (kernel WireGuard) failure.
    #[error("{context}: {message}")]
    Netlink { context: String, message: String },
    /// Socket, TUN or thread I/O.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// A WireGuard private key (X25519, clamped as `wg genkey` makes it).
#[derive(Clone, PartialEq, Eq)]
pub struct WgKey(pub [u8; 32]);

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WgKey(<redacted>)")
    }
}

/// A WireGuard public key. Displays as base64, as `wg` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgPublicKey(pub [u8; 32]);

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({self})")
    }
}

fn decode_key(text: &str) -> Result<[u8; 32], WgError> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| WgError::InvalidKey(format!("not base64: {e}")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        WgError::InvalidKey(format!(
            "a key is 32 bytes (44 base64 characters), this one has {} bytes",
            bytes.len()
        ))
    })
}

impl FromStr for WgPublicKey {
    type Err = WgError;
    fn from_str(s: &str) -> Result<Self, WgError> {
        decode_key(s).map(WgPublicKey)
    }
}

impl WgKey {
    /// A fresh random key, clamped like `wg genkey`.
    pub fn generate() -> WgKey {
        let mut k: [u8; 32] = rand::random();
        k[0] &= 248;
        k[31] &= 127;
        k[31] |= 64;
        WgKey(k)
    }

    /// The matching public key.
    pub fn public_key(&self) -> WgPublicKey {
        let secret = x25519::StaticSecret::from(self.0);
        WgPublicKey(x25519::PublicKey::from(&secret).to_bytes())
    }

    /// Base64, the form of `wg genkey` and of the key file.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Parses the base64 form.
    pub fn from_base64(text: &str) -> Result<WgKey, WgError> {
        decode_key(text).map(WgKey)
    }
}

/// This node's WireGuard settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgConfig {
    pub private_key: WgKey,
    /// UDP port the device listens on ([`WG_PORT`] by default).
    pub listen_port: u16,
}

impl WgConfig {
    /// The settings with the default port.
    pub fn new(private_key: WgKey) -> WgConfig {
        WgConfig {
            private_key,
            listen_port: WG_PORT,
        }
    }
}

/// What the wireguard backend needs to know of a peer (from the node registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WgPeer {
    pub public_key: WgPublicKey,
    /// Where the peer is reached (its public address and WireGuard port).
    pub endpoint: SocketAddrV4,
}

/// What the device knows of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub public_key: WgPublicKey,
    /// The endpoint in use (the authenticated source of its last packet, or the configured one).
    pub endpoint: Option<SocketAddrV4>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A WireGuard device, kernel or userspace: the peers it holds and its statistics. The
/// link itself (creation, address, routes) is the [`crate::Kernel`]'s business.
pub trait WgDevice {
    /// `"kernel"` or `"userspace"`.
    fn kind(&self) -> &'static str;
    /// Sets the private key and listen port.
    fn configure(&self, cfg: &WgConfig) -> impl Future<Output = Result<(), WgError>> + Send;
    /// The peers as configured.
    fn peers(&self) -> impl Future<Output = Result<Vec<WgPeerConfig>, WgError>> + Send;
    /// Applies one peer change.
    fn apply(&self, op: &WgOp) -> impl Future<Output = Result<(), WgError>> + Send;
    /// Handshake time, endpoint and byte counts of every peer.
    fn stats(&self) -> impl Future<Output = Result<Vec<PeerStats>, WgError>> + Send;
}

impl WgDevice for UserspaceWg {
    fn kind(&self) -> &'static str {
        "userspace"
    }
    async fn configure(&self, cfg: &WgConfig) -> Result<(), WgError> {
        if cfg.listen_port != self.listen_port() {
            return Err(WgError::Device(format!(
                "the userspace device listens on port {}; a new port needs a new device",
                self.listen_port()
            )));
        }
        self.set_private_key(&cfg.private_key);
        Ok(())
    }
    async fn peers(&self) -> Result<Vec<WgPeerConfig>, WgError> {
        Ok(UserspaceWg::peers(self))
    }
    async fn apply(&self, op: &WgOp) -> Result<(), WgError> {
        UserspaceWg::apply(self, op);
        Ok(())
    }
    async fn stats(&self) -> Result<Vec<PeerStats>, WgError> {
        Ok(UserspaceWg::stats(self))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WgError + '_ {
    move |source| WgError::KeyFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the key file at `path`, or creates it with a fresh key (mode 0600) when it does
/// not exist. A file readable by others is tightened to 0600 (with a warning).
pub fn load_or_create_key(path: &Path) -> Result<WgKey, WgError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = WgKey::from_base64(&text).map_err(|e| WgError::BadKeyFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            let mode = std::fs::metadata(path)
                .map_err(io_err(path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "WireGuard key file was readable by others: setting mode 0600"
                );
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io_err(path))?;
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = WgKey::generate();
            write_key(path, &key)?;
            Ok(key)
        }
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes `key` to `path` atomically (a 0600 temporary file in the same directory,
/// synced, then renamed over `path`).
pub fn write_key(path: &Path, key: &WgKey) -> Result<(), WgError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| WgError::BadKeyFile {
            path: path.to_path_buf(),
            reason: "not a file path".into(),
        })?;
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask cannot widen 0600, but be explicit in case the file system ignores mode.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(format!("{}\n", key.to_base64()).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trip_and_redaction() {
        let k = WgKey::generate();
        assert_eq!(WgKey::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(k.to_base64().len(), 44);
        assert_eq!(format!("{k:?}"), "WgKey(<redacted>)");
        let p = k.public_key();
        assert_eq!(p.to_string().parse::<WgPublicKey>().unwrap(), p);
        assert_ne!(WgKey::generate(), k);
    }

    #[test]
    fn public_key_matches_wg() {
        // RFC 7748 section 6.1: Alice's private key and her X25519 public key.
        let alice = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        assert_eq!(WgKey(alice).public_key(), WgPublicKey(public));
    }

    #[test]
    fn bad_keys_are_named() {
        assert_eq!(
            WgKey::from_base64("abc=").unwrap_err().to_string(),
            "invalid WireGuard key: a key is 32 bytes (44 base64 characters), this one has 2 bytes"
        );
        assert!(
            "not base64!"
                .parse::<WgPublicKey>()
                .unwrap_err()
                .to_string()
                .starts_with("invalid WireGuard key: not base64")
        );
    }

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let k = load_or_create_key(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", k.to_base64())
        );
        assert_eq!(load_or_create_key(&path).unwrap(), k);
    }

    #[test]
    fn key_file_rotation_is_atomic_and_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let old = load_or_create_key(&path).unwrap();
        let new = WgKey::generate();
        write_key(&path, &new).unwrap();
        assert_eq!(load_or_create_key(&path).unwrap(), new);
        assert_ne!(old, new);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("wireguard.key")]);
    }

    #[test]
    fn loose_key_file_is_tightened_and_garbage_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let k = WgKey::generate();
        std::fs::write(&path, k.to_base64()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_key(&path).unwrap(), k);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, "garbage").unwrap();
        let err = load_or_create_key(&path).unwrap_err().to_string();
        assert!(
            err.contains("wireguard.key: invalid WireGuard key"),
            "{err}"
        );
    }
}
