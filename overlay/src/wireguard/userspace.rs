//! The userspace WireGuard device: boringtun's protocol core ([`Tunn`]) driving our own
//! TUN device and UDP socket, in-process (no UAPI socket).
//!
//! ```text
//!            +-- tx thread: TUN read (64 KB TSO segment, split) -> route by dst -> encrypt
//!            |              -> UDP send (GSO: one sendmsg per run of equal-size datagrams)
//!  TUN smr-wg+
//!            +-- rx thread: UDP recvmmsg (GRO) -> find peer (receiver index, or the static
//!            |              key of a handshake) -> decrypt -> source allowed? -> TUN write
//!            |              (TCP segments coalesced back into one GRO packet)
//!            +-- timer thread: every 100 ms each peer's timers (handshake retries, rekey,
//!                           keepalive), the rate limiter's count reset each second
//! ```
//!
//! Each peer's [`Tunn`] sits behind its own mutex, shared by the three threads; the peer
//! table behind a read-write lock that only configuration changes write. A peer's current
//! endpoint follows the authenticated source of its packets (roaming, NAT); packets that
//! do not authenticate (unknown key, bad MAC, unknown session) are dropped. Handshakes go
//! through one [`RateLimiter`]: under load it answers with cookie replies.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::Ipv4Net;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tun_rs::{
    DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, InterruptEvent, SyncDevice, VIRTIO_NET_HDR_LEN,
};

use super::{PeerStats, WgConfig, WgError, WgKey, WgOp, WgPeerConfig, WgPublicKey};

/// Handshakes per second above which the device answers with cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Largest inner packet handled (the TUN MTU is far below).
const MAX_PACKET: usize = 65535;
/// WireGuard data header + tag.
const DATA_OVERHEAD: usize = 32;
/// Socket buffers (forced past rmem_max/wmem_max, we have CAP_NET_ADMIN).
const SOCKET_BUFFER: usize = 8 << 20;
/// How often the blocking loops look at the stop flag.
const POLL_MS: u16 = 200;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> WgError {
    let context = context.into();
    move |source| WgError::Io { context, source }
}

/// The device's own key, its public half and the handshake rate limiter built on it.
struct Keys {
    secret: StaticSecret,
    public: PublicKey,
    limiter: Arc<RateLimiter>,
}

impl Keys {
    fn new(key: &WgKey) -> Keys {
        let secret = StaticSecret::from(key.0);
        let public = PublicKey::from(&secret);
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        Keys {
            secret,
            public,
            limiter,
        }
    }
}

/// One peer.
struct PeerState {
    public_key: WgPublicKey,
    /// Our local index for it: the high 24 bits of every receiver index it sends us.
    index: u32,
    tunn: Mutex<Tunn>,
    /// What was configured (the diff compares against this, not the roamed endpoint).
    config: Mutex<WgPeerConfig>,
    /// The current endpoint, encoded by [`encode_endpoint`] (0 = none).
    endpoint: AtomicU64,
}

fn encode_endpoint(e: Option<SocketAddrV4>) -> u64 {
    match e {
        None => 0,
        Some(e) => (1 << 48) | (u64::from(u32::from(*e.ip())) << 16) | u64::from(e.port()),
    }
}

fn decode_endpoint(v: u64) -> Option<SocketAddrV4> {
    (v != 0).then(|| SocketAddrV4::new(Ipv4Addr::from((v >> 16) as u32), v as u16))
}

impl PeerState {
    fn endpoint(&self) -> Option<SocketAddrV4> {
        decode_endpoint(self.endpoint.load(Ordering::Relaxed))
    }
    /// Follows the authenticated source of a packet (roaming).
    fn roam(&self, src: SocketAddrV4) {
        let v = encode_endpoint(Some(src));
        if self.endpoint.load(Ordering::Relaxed) != v {
            self.endpoint.store(v, Ordering::Relaxed);
            tracing::debug!(peer = %self.public_key, endpoint = %src, "wireguard peer endpoint moved");
        }
    }
    fn tunn(&self) -> std::sync::MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Peers {
    by_key: HashMap<WgPublicKey, Arc<PeerState>>,
    by_index: HashMap<u32, Arc<PeerState>>,
    /// Allowed IPs, longest prefix first.
    routes: Vec<(Ipv4Net, Arc<PeerState>)>,
}

impl Peers {
    fn lookup(&self, ip: Ipv4Addr) -> Option<&Arc<PeerState>> {
        self.routes
            .iter()
            .find(|(n, _)| n.contains(&ip))
            .map(|(_, p)| p)
    }
    fn rebuild_routes(&mut self) {
        let mut routes = Vec::new();
        for p in self.by_key.values() {
            let cfg = p.config.lock().unwrap_or_else(|e| e.into_inner());
            for n in &cfg.allowed_ips {
                routes.push((n.trunc(), p.clone()));
            }
        }
        routes.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.0.cmp(&b.0)));
        self.routes = routes;
    }
}

struct Shared {
    tun: SyncDevice,
    udp: UdpSocket,
    udp_state: UdpSocketState,
    intr: InterruptEvent,
    stop: AtomicBool,
    keys: RwLock<Keys>,
    peers: RwLock<Peers>,
    next_index: AtomicU32,
    listen_port: u16,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `fd` is readable (or writable) or `POLL_MS` passed.
fn wait_fd(fd: &impl AsFd, writable: bool) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let flags = if writable {
        PollFlags::POLLOUT
    } else {
        PollFlags::POLLIN
    };
    let mut fds = [PollFd::new(fd.as_fd(), flags)];
    let _ = poll(&mut fds, PollTimeout::from(POLL_MS));
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sends `contents` (one datagram, or `segment` sized datagrams with GSO) to `to`,
    /// waiting while the socket buffer is full.
    fn send(&self, to: SocketAddrV4, contents: &[u8], segment: Option<usize>) {
        let t = Transmit {
            destination: SocketAddr::V4(to),
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        loop {
            match self.udp_state.send(UdpSockRef::from(&self.udp), &t) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.stopped() => {
                    wait_fd(&self.udp, true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(%to, "wireguard send: {e}");
                    return;
                }
                Ok(()) => return,
            }
        }
    }

    fn max_segments(&self, seg: usize) -> usize {
        // A UDP send carries at most 64 KB, whatever the GSO segment count allows.
        self.udp_state
            .max_gso_segments()
            .min(65_000 / seg.max(1))
            .max(1)
    }
}

/// How long [`bind_udp`] waits for a port that a previous device of this process just released.
const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// Binds the WireGuard port. When a device is recreated, the previous one has just closed its
/// socket, but a child that another thread of the process forked at that moment (the agent runs
/// `iptables`, tests run `ip`) holds a copy of every descriptor until it calls exec, so for a
/// moment the port is still bound: EADDRINUSE is waited out for a bounded time, anything else
/// (and a port that stays taken, e.g. by another program) is an error.
fn bind_udp(port: u16) -> Result<UdpSocket, WgError> {
    let deadline = std::time::Instant::now() + BIND_PATIENCE;
    loop {
        match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.map_err(io_err(format!("binding UDP port {port}"))),
        }
    }
}

/// The userspace WireGuard device. Dropping it stops its threads and removes the TUN device.
pub struct UserspaceWg {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    name: String,
}

impl std::fmt::Debug for UserspaceWg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceWg")
            .field("name", &self.name)
            .finish()
    }
}

impl UserspaceWg {
    /// Creates the TUN device `name` (MTU `mtu`, down, no address) and the UDP socket on
    /// `cfg.listen_port` in the calling thread's network namespace, and starts the threads.
    pub fn start(name: &str, mtu: u32, cfg: &WgConfig) -> Result<UserspaceWg, WgError> {
        let mtu = u16::try_from(mtu)
            .map_err(|_| WgError::Device(format!("MTU {mtu} is too large for a TUN device")))?;
        let tun = DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(true)
            .build_sync()
            .map_err(io_err(format!("creating TUN device {name}")))?;
        let udp = bind_udp(cfg.listen_port)?;
        let udp_state = UdpSocketState::new(UdpSockRef::from(&udp))
            .map_err(io_err("setting up the WireGuard UDP socket"))?;
        {
            use nix::sys::socket::{setsockopt, sockopt};
            // Best effort: without CAP_NET_ADMIN the default sizes stay.
            let _ = setsockopt(&udp, sockopt::RcvBufForce, &SOCKET_BUFFER);
            let _ = setsockopt(&udp, sockopt::SndBufForce, &SOCKET_BUFFER);
        }
        let shared = Arc::new(Shared {
            tun,
            udp,
            udp_state,
            intr: InterruptEvent::new().map_err(io_err("creating an interrupt event"))?,
            stop: AtomicBool::new(false),
            keys: RwLock::new(Keys::new(&cfg.private_key)),
            peers: RwLock::new(Peers::default()),
            next_index: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
            listen_port: cfg.listen_port,
        });
        let mut threads = Vec::new();
        for (what, f) in [
            ("tx", tx_loop as fn(&Shared)),
            ("rx", rx_loop as fn(&Shared)),
            ("timers", timer_loop as fn(&Shared)),
        ] {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("wg-{what}"))
                .spawn(move || f(&s))
                .map_err(io_err("starting a WireGuard thread"))?;
            threads.push(h);
        }
        Ok(UserspaceWg {
            shared,
            threads,
            name: name.to_string(),
        })
    }

    /// The UDP port the device listens on.
    pub fn listen_port(&self) -> u16 {
        self.shared.listen_port
    }

    /// Replaces the device's private key: every session is dropped, the next packet
    /// starts a handshake with the new key.
    pub fn set_private_key(&self, key: &WgKey) {
        let keys = Keys::new(key);
        let peers = read(&self.shared.peers);
        for p in peers.by_key.values() {
            p.tunn().set_static_private(
                keys.secret.clone(),
                keys.public,
                Some(keys.limiter.clone()),
            );
        }
        *write(&self.shared.keys) = keys;
        for p in peers.by_key.values() {
            if p.config
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keepalive
                .is_some()
            {
                self.initiate(p);
            }
        }
    }

    /// Sends a handshake initiation to `p` now (if it has an endpoint).
    fn initiate(&self, p: &PeerState) {
        let Some(to) = p.endpoint() else {
            return;
        };
        let mut buf = [0u8; 256];
        if let TunnResult::WriteToNetwork(pkt) =
            p.tunn().format_handshake_initiation(&mut buf, false)
        {
            self.shared.send(to, pkt, None);
        }
    }

    /// The peers as configured.
    pub fn peers(&self) -> Vec<WgPeerConfig> {
        let peers = read(&self.shared.peers);
        let mut out: Vec<WgPeerConfig> = peers
            .by_key
            .values()
            .map(|p| p.config.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        out.sort_by_key(|c| c.public_key);
        out
    }

    /// Applies one peer change.
    pub fn apply(&self, op: &WgOp) {
        let mut peers = write(&self.shared.peers);
        match op {
            WgOp::RemovePeer(k) => {
                if let Some(p) = peers.by_key.remove(k) {
                    peers.by_index.remove(&p.index);
                }
            }
            WgOp::AddPeer(c) | WgOp::UpdatePeer(c) => {
                let existing = peers.by_key.get(&c.public_key).cloned();
                match existing {
                    Some(p)
                        if p.config.lock().unwrap_or_else(|e| e.into_inner()).keepalive
                            == c.keepalive =>
                    {
                        *p.config.lock().unwrap_or_else(|e| e.into_inner()) = c.clone();
                        if c.endpoint.is_some() {
                            p.endpoint
                                .store(encode_endpoint(c.endpoint), Ordering::Relaxed);
                        }
                    }
                    _ => {
                        if let Some(old) = existing {
                            peers.by_index.remove(&old.index);
                        }
                        let index =
                            self.shared.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
                        let keys = read(&self.shared.keys);
                        let tunn = Tunn::new(
                            keys.secret.clone(),
                            PublicKey::from(c.public_key.0),
                            None,
                            c.keepalive,
                            index,
                            Some(keys.limiter.clone()),
                        );
                        let p = Arc::new(PeerState {
                            public_key: c.public_key,
                            index,
                            tunn: Mutex::new(tunn),
                            config: Mutex::new(c.clone()),
                            endpoint: AtomicU64::new(encode_endpoint(c.endpoint)),
                        });
                        peers.by_key.insert(c.public_key, p.clone());
                        peers.by_index.insert(index, p.clone());
                        // Like the kernel with persistent keepalive: shake hands now, so a
                        // peer holding a stale session of ours (we restarted) moves on.
                        if c.keepalive.is_some() {
                            self.initiate(&p);
                        }
                    }
                }
            }
        }
        peers.rebuild_routes();
    }

    /// Handshake age and byte counts of every peer.
    pub fn stats(&self) -> Vec<PeerStats> {
        let peers = read(&self.shared.peers);
        let now = SystemTime::now();
        let mut out: Vec<PeerStats> = peers
            .by_key
            .values()
            .map(|p| {
                let (since, tx, rx, _, _) = p.tunn().stats();
                PeerStats {
                    public_key: p.public_key,
                    endpoint: p.endpoint(),
                    last_handshake: since.and_then(|d| now.checked_sub(d)),
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                }
            })
            .collect();
        out.sort_by_key(|s| s.public_key);
        out
    }
}

impl Drop for UserspaceWg {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.shared.intr.trigger();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::info!(dev = %self.name, "userspace WireGuard device stopped");
    }
}

/// Destination IPv4 address of an IP packet.
fn dst_v4(pkt: &[u8]) -> Option<Ipv4Addr> {
    (pkt.len() >= 20 && pkt[0] >> 4 == 4).then(|| Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]))
}

/// A run of equal-size datagrams to one endpoint waiting in the send buffer.
struct Run {
    to: SocketAddrV4,
    start: usize,
    seg: usize,
    count: usize,
    /// A shorter last datagram was added: nothing more can join.
    closed: bool,
}

fn tx_loop(s: &Shared) {
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET];
    let mut bufs = vec![vec![0u8; MAX_PACKET]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    // Room for a full 64 KB run of datagrams plus one handshake.
    let mut out = vec![0u8; 2 * (MAX_PACKET + 2048)];
    while !s.stopped() {
        let n = match s
            .tun
            .recv_multiple_intr(&mut original, &mut bufs, &mut sizes, 0, &s.intr)
        {
            Ok(n) => n,
            Err(_) if s.stopped() => return,
            Err(e) => {
                tracing::debug!("wireguard tun read: {e}");
                // EBADFD / EIO: the device is gone (deleted).
                if matches!(e.raw_os_error(), Some(77) | Some(5)) {
                    // Wait for the owner to rebuild us rather than spin.
                    std::thread::sleep(Duration::from_millis(u64::from(POLL_MS)));
                }
                continue;
            }
        };
        let peers = read(&s.peers);
        let mut used = 0;
        let mut run: Option<Run> = None;
        let flush = |run: &mut Option<Run>, out: &[u8], used: usize| {
            if let Some(r) = run.take() {
                let seg = (r.count > 1).then_some(r.seg);
                s.send(r.to, &out[r.start..used], seg);
            }
        };
        for i in 0..n {
            let pkt = &bufs[i][..sizes[i]];
            let Some(peer) = dst_v4(pkt).and_then(|d| peers.lookup(d)) else {
                continue;
            };
            let Some(to) = peer.endpoint() else {
                continue;
            };
            let len = pkt.len() + DATA_OVERHEAD;
            let joins = run.as_ref().is_some_and(|r| {
                r.to == to && !r.closed && len <= r.seg && r.count < s.max_segments(r.seg)
            });
            if !joins {
                flush(&mut run, &out, used);
            }
            if out.len() - used < len.max(148) {
                flush(&mut run, &out, used);
                used = 0;
            }
            let res = peer.tunn().encapsulate(pkt, &mut out[used..]);
            match res {
                TunnResult::WriteToNetwork(p) if p.first() == Some(&4) && p.len() == len => {
                    match run.as_mut() {
                        Some(r) => {
                            r.count += 1;
                            r.closed = len < r.seg;
                        }
                        None => {
                            run = Some(Run {
                                to,
                                start: used,
                                seg: len,
                                count: 1,
                                closed: false,
                            })
                        }
                    }
                    used += len;
                }
                TunnResult::WriteToNetwork(p) => {
                    // A handshake initiation (no session yet): the packet waits in the Tunn.
                    let p = p.to_vec();
                    flush(&mut run, &out, used);
                    s.send(to, &p, None);
                }
                TunnResult::Err(e) => tracing::trace!("wireguard encapsulate: {e:?}"),
                _ => {}
            }
        }
        flush(&mut run, &out, used);
    }
}

fn rx_loop(s: &Shared) {
    let batch = quinn_udp::BATCH_SIZE;
    let mut rbufs = vec![vec![0u8; 65536]; batch];
    let mut metas = vec![RecvMeta::default(); batch];
    let mut tunbufs: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
        .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + MAX_PACKET))
        .collect();
    let mut gro = GROTable::default();
    let mut scratch = vec![0u8; MAX_PACKET + 2048];
    while !s.stopped() {
        let n = {
            let mut iovs: Vec<IoSliceMut<'_>> =
                rbufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            match s
                .udp_state
                .recv(UdpSockRef::from(&s.udp), &mut iovs, &mut metas)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(&s.udp, false);
                    continue;
                }
                Err(e) => {
                    tracing::debug!("wireguard udp receive: {e}");
                    continue;
                }
            }
        };
        let peers = read(&s.peers);
        let keys = read(&s.keys);
        let mut ntun = 0;
        for (m, meta) in metas.iter().enumerate().take(n) {
            let SocketAddr::V4(src) = meta.addr else {
                continue;
            };
            let stride = meta.stride.max(1);
            for dgram in rbufs[m][..meta.len].chunks(stride) {
                let buf = &mut tunbufs[ntun];
                if handle_datagram(s, &peers, &keys, src, dgram, buf, &mut scratch) {
                    ntun += 1;
                    if ntun == tunbufs.len() {
                        write_tun(s, &mut gro, &mut tunbufs[..ntun]);
                        ntun = 0;
                    }
                }
            }
        }
        if ntun > 0 {
            write_tun(s, &mut gro, &mut tunbufs[..ntun]);
        }
    }
}

fn write_tun(s: &Shared, gro: &mut GROTable, bufs: &mut [Vec<u8>]) {
    if let Err(e) = s.tun.send_multiple(gro, bufs, VIRTIO_NET_HDR_LEN) {
        tracing::debug!("wireguard tun write: {e}");
    }
}

/// Handles one received datagram; `true` when it left an inner packet in `buf` (behind
/// room for the virtio header) for the TUN device.
fn handle_datagram(
    s: &Shared,
    peers: &Peers,
    keys: &Keys,
    src: SocketAddrV4,
    dgram: &[u8],
    buf: &mut Vec<u8>,
    scratch: &mut [u8],
) -> bool {
    let Ok(packet) = Tunn::parse_incoming_packet(dgram) else {
        return false;
    };
    let peer = match packet {
        Packet::HandshakeInit(ref p) => {
            // Cheap MAC check (and a cookie reply under load) before any Diffie-Hellman.
            match keys
                .limiter
                .verify_packet(Some(IpAddr::V4(*src.ip())), dgram, scratch)
            {
                Ok(_) => {}
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    s.send(src, cookie, None);
                    return false;
                }
                Err(_) => return false,
            }
            let Ok(half) = parse_handshake_anon(&keys.secret, &keys.public, p) else {
                return false;
            };
            peers.by_key.get(&WgPublicKey(half.peer_static_public))
        }
        Packet::HandshakeResponse(ref p) => peers.by_index.get(&(p.receiver_idx >> 8)),
        Packet::PacketCookieReply(ref p) => peers.by_index.get(&(p.receiver_idx >> 8)),
        Packet::PacketData(ref p) => peers.by_index.get(&(p.receiver_idx >> 8)),
    };
    let Some(peer) = peer else {
        tracing::trace!(%src, "wireguard: packet from an unknown peer dropped");
        return false;
    };
    // The plaintext is never longer than the datagram; a handshake reply needs 92 bytes.
    // (Sizing to the datagram keeps the zero-fill per packet small.)
    buf.resize(VIRTIO_NET_HDR_LEN + dgram.len().max(256), 0);
    let mut tunn = peer.tunn();
    match tunn.decapsulate(
        Some(IpAddr::V4(*src.ip())),
        dgram,
        &mut buf[VIRTIO_NET_HDR_LEN..],
    ) {
        TunnResult::WriteToNetwork(p) => {
            s.send(src, p, None);
            // Packets queued while the handshake ran.
            while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], scratch) {
                s.send(src, p, None);
            }
            peer.roam(src);
            false
        }
        TunnResult::WriteToTunnelV4(p, inner_src) => {
            let len = p.len();
            let start = p.as_ptr() as usize - buf.as_ptr() as usize;
            drop(tunn);
            // Crypto-key routing: the inner source must be one of the peer's allowed IPs.
            if !peers
                .lookup(inner_src)
                .is_some_and(|owner| Arc::ptr_eq(owner, peer))
            {
                tracing::trace!(%inner_src, peer = %peer.public_key, "wireguard: source not allowed");
                return false;
            }
            peer.roam(src);
            if start != VIRTIO_NET_HDR_LEN {
                buf.copy_within(start..start + len, VIRTIO_NET_HDR_LEN);
            }
            buf.truncate(VIRTIO_NET_HDR_LEN + len);
            buf[..VIRTIO_NET_HDR_LEN].fill(0);
            true
        }
        TunnResult::Done => {
            // A keepalive or a cookie reply, authenticated.
            peer.roam(src);
            false
        }
        TunnResult::WriteToTunnelV6(..) => false,
        TunnResult::Err(e) => {
            tracing::trace!(%src, "wireguard decapsulate: {e:?}");
            false
        }
    }
}

fn timer_loop(s: &Shared) {
    let mut buf = vec![0u8; 2048];
    let mut last_reset = Instant::now();
    while !s.stopped() {
        std::thread::sleep(Duration::from_millis(100));
        if last_reset.elapsed() >= Duration::from_secs(1) {
            read(&s.keys).limiter.reset_count();
            last_reset = Instant::now();
        }
        let peers: Vec<Arc<PeerState>> = read(&s.peers).by_key.values().cloned().collect();
        for p in peers {
            let mut tunn = p.tunn();
            if let TunnResult::WriteToNetwork(pkt) = tunn.update_timers(&mut buf)
                && let Some(to) = p.endpoint()
            {
                s.send(to, pkt, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_encoding_round_trips() {
        for e in [
            None,
            Some(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 51820)),
            Some(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            Some(SocketAddrV4::new(Ipv4Addr::BROADCAST, 65535)),
        ] {
            assert_eq!(decode_endpoint(encode_endpoint(e)), e);
        }
    }
}
