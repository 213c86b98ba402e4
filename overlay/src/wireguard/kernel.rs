//! The kernel WireGuard device, programmed over generic netlink (the `wireguard` family:
//! `WG_CMD_SET_DEVICE` / `WG_CMD_GET_DEVICE`), never with `wg` or `ip`.
//!
//! The link itself (`ip link add smr-wg type wireguard`) is created over rtnetlink by
//! [`crate::Kernel::create_wireguard`]; where that fails the overlay falls back to
//! [`super::UserspaceWg`]. Every message this module sends is built by a pure function
//! ([`set_device`], [`set_peer`], [`remove_peer`], [`get_device`]) that the unit tests
//! assert exactly, since the machines this is developed on have no WireGuard module.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use genetlink::GenetlinkHandle;
use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

use super::{PeerStats, WgConfig, WgDevice, WgError, WgOp, WgPeerConfig, WgPublicKey};

/// `WG_CMD_SET_DEVICE`: private key and listen port of `dev`.
pub fn set_device(dev: &str, cfg: &WgConfig) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(dev.to_string()),
            WireguardAttribute::PrivateKey(cfg.private_key.0),
            WireguardAttribute::ListenPort(cfg.listen_port),
        ],
    }
}

/// `WG_CMD_SET_DEVICE` adding or updating one peer; its allowed IPs replace the old ones.
pub fn set_peer(dev: &str, peer: &WgPeerConfig) -> WireguardMessage {
    let mut attrs = vec![
        WireguardPeerAttribute::PublicKey(peer.public_key.0),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
    ];
    if let Some(e) = peer.endpoint {
        attrs.push(WireguardPeerAttribute::Endpoint(SocketAddr::V4(e)));
    }
    // 0 turns keepalive off.
    attrs.push(WireguardPeerAttribute::PersistentKeepalive(
        peer.keepalive.unwrap_or(0),
    ));
    attrs.push(WireguardPeerAttribute::AllowedIps(
        peer.allowed_ips
            .iter()
            .map(|n| {
                WireguardAllowedIp(vec![
                    WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                    WireguardAllowedIpAttr::IpAddr(IpAddr::V4(n.network())),
                    WireguardAllowedIpAttr::Cidr(n.prefix_len()),
                ])
            })
            .collect(),
    ));
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(dev.to_string()),
            WireguardAttribute::Peers(vec![WireguardPeer(attrs)]),
        ],
    }
}

/// `WG_CMD_SET_DEVICE` removing one peer (`WGPEER_F_REMOVE_ME`).
pub fn remove_peer(dev: &str, key: &WgPublicKey) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(dev.to_string()),
            WireguardAttribute::Peers(vec![WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(key.0),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ])]),
        ],
    }
}

/// `WG_CMD_GET_DEVICE` (sent as a dump request).
pub fn get_device(dev: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(dev.to_string())],
    }
}

/// One peer of a `WG_CMD_GET_DEVICE` reply: as configured, and its statistics.
pub fn parse_peer(attrs: &[WireguardPeerAttribute]) -> Option<(WgPeerConfig, PeerStats)> {
    let mut key = None;
    let mut endpoint = None;
    let mut keepalive = None;
    let mut allowed = Vec::new();
    let mut last_handshake = None;
    let (mut rx, mut tx) = (0, 0);
    for a in attrs {
        match a {
            WireguardPeerAttribute::PublicKey(k) => key = Some(WgPublicKey(*k)),
            WireguardPeerAttribute::Endpoint(SocketAddr::V4(e)) => endpoint = Some(*e),
            WireguardPeerAttribute::PersistentKeepalive(k) if *k > 0 => keepalive = Some(*k),
            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 || t.nano_seconds > 0 => {
                last_handshake = SystemTime::UNIX_EPOCH.checked_add(Duration::new(
                    t.seconds.max(0) as u64,
                    t.nano_seconds.clamp(0, 999_999_999) as u32,
                ));
            }
            WireguardPeerAttribute::RxBytes(b) => rx = *b,
            WireguardPeerAttribute::TxBytes(b) => tx = *b,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    let mut addr = None;
                    let mut cidr = None;
                    for x in ip.iter() {
                        match x {
                            WireguardAllowedIpAttr::IpAddr(IpAddr::V4(a)) => addr = Some(*a),
                            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
                            _ => {}
                        }
                    }
                    if let (Some(a), Some(c)) = (addr, cidr)
                        && let Ok(n) = Ipv4Net::new(a, c)
                    {
                        allowed.push(n);
                    }
                }
            }
            _ => {}
        }
    }
    let public_key = key?;
    Some((
        WgPeerConfig {
            public_key,
            endpoint,
            allowed_ips: allowed,
            keepalive,
        },
        PeerStats {
            public_key,
            endpoint,
            last_handshake,
            rx_bytes: rx,
            tx_bytes: tx,
        },
    ))
}

/// The kernel WireGuard device `name`.
pub struct KernelWg {
    name: String,
    handle: GenetlinkHandle,
    conn: tokio::task::JoinHandle<()>,
    /// The endpoint we configured per peer: the kernel reports the roamed one, which
    /// must not look like a difference to the diff.
    configured: Mutex<HashMap<WgPublicKey, SocketAddrV4>>,
}

impl Drop for KernelWg {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn nl_err(context: &str, message: impl std::fmt::Display) -> WgError {
    WgError::Netlink {
        context: context.to_string(),
        message: message.to_string(),
    }
}

impl KernelWg {
    /// Opens a generic netlink connection in the calling thread's network namespace
    /// (inside a tokio runtime) for the existing kernel device `name`.
    pub fn new(name: &str) -> Result<KernelWg, WgError> {
        let (conn, handle, _) = genetlink::new_connection().map_err(|source| WgError::Io {
            context: "opening a generic netlink socket".into(),
            source,
        })?;
        Ok(KernelWg {
            name: name.to_string(),
            handle,
            conn: tokio::spawn(conn),
            configured: Mutex::new(HashMap::new()),
        })
    }

    async fn request(
        &self,
        msg: WireguardMessage,
        dump: bool,
    ) -> Result<Vec<WireguardMessage>, WgError> {
        let context = format!("{:?} on {}", msg.cmd, self.name);
        let mut nl = NetlinkMessage::from(GenlMessage::from_payload(msg));
        nl.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        let mut handle = self.handle.clone();
        let mut replies = handle.request(nl).await.map_err(|e| nl_err(&context, e))?;
        let mut out = Vec::new();
        while let Some(r) = replies.next().await {
            match r.map_err(|e| nl_err(&context, e))?.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(nl_err(&context, e.to_io()));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    async fn dump(&self) -> Result<Vec<(WgPeerConfig, PeerStats)>, WgError> {
        let mut out = Vec::new();
        for m in self.request(get_device(&self.name), true).await? {
            for a in m.attributes {
                if let WireguardAttribute::Peers(peers) = a {
                    out.extend(peers.iter().filter_map(|p| parse_peer(p)));
                }
            }
        }
        Ok(out)
    }
}

impl WgDevice for KernelWg {
    fn kind(&self) -> &'static str {
        "kernel"
    }
    async fn configure(&self, cfg: &WgConfig) -> Result<(), WgError> {
        self.request(set_device(&self.name, cfg), false)
            .await
            .map(drop)
    }
    async fn peers(&self) -> Result<Vec<WgPeerConfig>, WgError> {
        let configured = self
            .configured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(self
            .dump()
            .await?
            .into_iter()
            .map(|(mut c, _)| {
                if let Some(e) = configured.get(&c.public_key) {
                    c.endpoint = Some(*e);
                }
                c
            })
            .collect())
    }
    async fn apply(&self, op: &WgOp) -> Result<(), WgError> {
        let msg = match op {
            WgOp::AddPeer(c) | WgOp::UpdatePeer(c) => set_peer(&self.name, c),
            WgOp::RemovePeer(k) => remove_peer(&self.name, k),
        };
        self.request(msg, false).await?;
        let mut configured = self.configured.lock().unwrap_or_else(|e| e.into_inner());
        match op {
            WgOp::AddPeer(c) | WgOp::UpdatePeer(c) => match c.endpoint {
                Some(e) => configured.insert(c.public_key, e),
                None => configured.remove(&c.public_key),
            },
            WgOp::RemovePeer(k) => configured.remove(k),
        };
        Ok(())
    }
    async fn stats(&self) -> Result<Vec<PeerStats>, WgError> {
        Ok(self.dump().await?.into_iter().map(|(_, s)| s).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::WgKey;
    use netlink_packet_core::Emitable;
    use netlink_packet_wireguard::WireguardTimeSpec;

    fn peer() -> WgPeerConfig {
        WgPeerConfig {
            public_key: WgPublicKey([7; 32]),
            endpoint: Some("203.0.113.10:51820".parse().unwrap()),
            allowed_ips: vec!["10.42.2.0/24".parse().unwrap()],
            keepalive: Some(25),
        }
    }

    #[test]
    fn device_message() {
        let cfg = WgConfig {
            private_key: WgKey([1; 32]),
            listen_port: 51999,
        };
        assert_eq!(
            set_device("smr-wg", &cfg),
            WireguardMessage {
                cmd: WireguardCmd::SetDevice,
                attributes: vec![
                    WireguardAttribute::IfName("smr-wg".into()),
                    WireguardAttribute::PrivateKey([1; 32]),
                    WireguardAttribute::ListenPort(51999),
                ],
            }
        );
    }

    #[test]
    fn peer_messages() {
        assert_eq!(
            set_peer("smr-wg", &peer()),
            WireguardMessage {
                cmd: WireguardCmd::SetDevice,
                attributes: vec![
                    WireguardAttribute::IfName("smr-wg".into()),
                    WireguardAttribute::Peers(vec![WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey([7; 32]),
                        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                        WireguardPeerAttribute::Endpoint("203.0.113.10:51820".parse().unwrap()),
                        WireguardPeerAttribute::PersistentKeepalive(25),
                        WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
                            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                            WireguardAllowedIpAttr::IpAddr("10.42.2.0".parse().unwrap()),
                            WireguardAllowedIpAttr::Cidr(24),
                        ])]),
                    ])]),
                ],
            }
        );
        assert_eq!(
            remove_peer("smr-wg", &WgPublicKey([7; 32])),
            WireguardMessage {
                cmd: WireguardCmd::SetDevice,
                attributes: vec![
                    WireguardAttribute::IfName("smr-wg".into()),
                    WireguardAttribute::Peers(vec![WireguardPeer(vec![
                        WireguardPeerAttribute::PublicKey([7; 32]),
                        WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
                    ])]),
                ],
            }
        );
        assert_eq!(
            get_device("smr-wg"),
            WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::IfName("smr-wg".into())],
            }
        );
    }

    /// The bytes of a peer removal, laid out by hand from the kernel's uapi
    /// (`include/uapi/linux/wireguard.h`): the genl header, then the attributes.
    #[test]
    fn remove_peer_bytes_follow_the_uapi() {
        let genl = GenlMessage::from_payload(remove_peer("smr-wg", &WgPublicKey([7; 32])));
        let mut bytes = vec![0u8; genl.buffer_len()];
        genl.emit(&mut bytes);
        let mut want = vec![
            1, 1, 0, 0, // cmd WG_CMD_SET_DEVICE = 1, version 1, reserved
            11, 0, 2, 0, // WGDEVICE_A_IFNAME = 2, len 4 + "smr-wg\0"
        ];
        want.extend(b"smr-wg\0\0"); // padded to 4
        // WGDEVICE_A_PEERS = 8 | NLA_F_NESTED, one peer (nested, index 0).
        want.extend([52, 0, 0x08, 0x80, 48, 0, 0x00, 0x80]);
        want.extend([36, 0, 1, 0]); // WGPEER_A_PUBLIC_KEY = 1
        want.extend([7; 32]);
        want.extend([8, 0, 3, 0, 1, 0, 0, 0]); // WGPEER_A_FLAGS = 3: WGPEER_F_REMOVE_ME
        assert_eq!(bytes, want);
    }

    #[test]
    fn reply_peers_are_parsed() {
        let attrs = vec![
            WireguardPeerAttribute::PublicKey([7; 32]),
            WireguardPeerAttribute::Endpoint("198.51.100.20:40000".parse().unwrap()),
            WireguardPeerAttribute::PersistentKeepalive(25),
            WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                seconds: 1_700_000_000,
                nano_seconds: 5,
            }),
            WireguardPeerAttribute::RxBytes(100),
            WireguardPeerAttribute::TxBytes(200),
            WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
                WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
                WireguardAllowedIpAttr::IpAddr("10.42.2.0".parse().unwrap()),
                WireguardAllowedIpAttr::Cidr(24),
            ])]),
        ];
        let (cfg, stats) = parse_peer(&attrs).unwrap();
        assert_eq!(
            cfg,
            WgPeerConfig {
                endpoint: Some("198.51.100.20:40000".parse().unwrap()),
                ..peer()
            }
        );
        assert_eq!(
            stats,
            PeerStats {
                public_key: WgPublicKey([7; 32]),
                endpoint: Some("198.51.100.20:40000".parse().unwrap()),
                last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
                rx_bytes: 100,
                tx_bytes: 200,
            }
        );
        // A peer that never shook hands has a zero timestamp and no keepalive.
        let (cfg, stats) = parse_peer(&[
            WireguardPeerAttribute::PublicKey([8; 32]),
            WireguardPeerAttribute::PersistentKeepalive(0),
            WireguardPeerAttribute::LastHandshake(WireguardTimeSpec::default()),
        ])
        .unwrap();
        assert_eq!(cfg.keepalive, None);
        assert_eq!(stats.last_handshake, None);
        assert!(parse_peer(&[WireguardPeerAttribute::RxBytes(1)]).is_none());
    }
}
