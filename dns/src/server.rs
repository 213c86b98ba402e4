//! The running DNS server: sockets, the hickory `Server` and `Catalog`, and the handle the
//! agent keeps to swap records and stop it.
//!
//! [`DnsServer::start`] binds UDP and TCP on every listen address (for port 0 the TCP
//! listener takes the port the kernel gave the UDP socket), builds a `Catalog` holding
//! the authoritative `private.` zone and, when upstreams are configured, a forwarding zone
//! for `.` (with no upstream, names outside `private.` get REFUSED). Records are swapped
//! with [`DnsHandle::set_records`] while the server keeps running.
//!
//! Dropping the [`DnsHandle`] aborts the server tasks; [`DnsHandle::shutdown`] stops them
//! gracefully.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverOpts};
use hickory_server::Server;
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::Catalog;
use tokio::net::{TcpListener, UdpSocket};

use crate::DnsError;
use crate::records::{RecordSet, ZONE};
use crate::stats::Counted;
use crate::zone::{ForwardZone, PrivateZone, Shared};

/// Idle time after which a TCP client connection is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts to find a port free for both UDP and TCP when asked for port 0.
const PORT_ZERO_ATTEMPTS: usize = 16;

/// How to run the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Addresses to bind, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// Where names outside `private.` are forwarded; empty means REFUSED for them.
    pub upstreams: Vec<SocketAddr>,
    /// TTL of the `private.` records and of negative answers (SOA minimum).
    pub ttl: u32,
    /// Deadline for one forwarded query; past it the client gets SERVFAIL.
    pub upstream_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            upstreams: Vec::new(),
            ttl: 5,
            upstream_timeout: Duration::from_secs(2),
        }
    }
}

/// Entry point; see [`DnsServer::start`].
pub struct DnsServer;

impl DnsServer {
    /// Binds every listen address (UDP and TCP) and starts serving an empty `private.` zone.
    /// Must be called inside a tokio runtime.
    pub async fn start(config: DnsConfig) -> Result<DnsHandle, DnsError> {
        if config.listen.is_empty() {
            return Err(DnsError::Config("no listen address".into()));
        }
        let origin =
            Name::from_ascii(format!("{ZONE}.")).map_err(|e| DnsError::Config(e.to_string()))?;
        let shared = Arc::new(Shared::new(RecordSet::default()));

        let mut catalog = Catalog::new();
        let private = PrivateZone::new(origin.clone(), shared.clone(), config.ttl)
            .map_err(DnsError::Config)?;
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(private)]);

        let mut sockets = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            sockets.push(bind_pair(*addr).await?);
        }
        let local_addrs: Vec<SocketAddr> = sockets.iter().map(|(_, _, a)| *a).collect();

        let upstreams: Vec<SocketAddr> = config
            .upstreams
            .iter()
            .copied()
            .filter(|u| !is_own_address(*u, &config.listen, &local_addrs))
            .collect();
        if upstreams.len() != config.upstreams.len() {
            tracing::warn!("dropped upstreams that point at this server itself");
        }
        if !upstreams.is_empty() {
            let forward = build_forwarder(&upstreams, config.upstream_timeout)?;
            catalog.upsert(
                LowerName::new(&Name::root()),
                vec![Arc::new(ForwardZone::new(forward, config.upstream_timeout))],
            );
        }

        let mut server = Server::new(Counted(catalog));
        for (udp, tcp, _) in sockets {
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        }
        tracing::info!(addrs = ?local_addrs, upstreams = ?upstreams, "dns server started");
        Ok(DnsHandle {
            server,
            shared,
            local_addrs,
        })
    }
}

/// A running server. Dropping it aborts the server's tasks.
pub struct DnsHandle {
    server: Server<Counted<Catalog>>,
    shared: Arc<Shared>,
    local_addrs: Vec<SocketAddr>,
}

impl DnsHandle {
    /// Replaces the served records atomically; queries in flight finish on the old set.
    pub fn set_records(&self, records: RecordSet) {
        self.shared.store(records);
    }

    /// The records served now.
    pub fn records(&self) -> RecordSet {
        self.shared.load().records.clone()
    }

    /// The bound addresses, one per listen address (UDP and TCP share it).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting queries and waits for the server tasks to end.
    pub async fn shutdown(mut self) -> Result<(), DnsError> {
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| DnsError::Server(e.to_string()))
    }
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let bind_err = |source| DnsError::Bind { addr, source };
    if addr.port() != 0 {
        let udp = UdpSocket::bind(addr).await.map_err(bind_err)?;
        let tcp = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local = udp.local_addr().map_err(bind_err)?;
        return Ok((udp, tcp, local));
    }
    let mut last = None;
    for _ in 0..PORT_ZERO_ATTEMPTS {
        let udp = UdpSocket::bind(addr).await.map_err(bind_err)?;
        let local = udp.local_addr().map_err(bind_err)?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp, local)),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_err(last.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}

/// True when sending to `upstream` would reach this very server.
fn is_own_address(upstream: SocketAddr, listen: &[SocketAddr], bound: &[SocketAddr]) -> bool {
    listen.iter().chain(bound).any(|own| {
        own.port() == upstream.port()
            && (own.ip() == upstream.ip()
                || (own.ip().is_unspecified() && is_local_candidate(upstream.ip())))
    })
}

fn is_local_candidate(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

fn build_forwarder(
    upstreams: &[SocketAddr],
    timeout: Duration,
) -> Result<ForwardZoneHandler, DnsError> {
    let name_servers = upstreams
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.attempts = 1;
    let config = ForwardConfig {
        name_servers,
        options: Some(options),
    };
    ForwardZoneHandler::builder_tokio(config)
        .build()
        .map_err(DnsError::Config)
}
