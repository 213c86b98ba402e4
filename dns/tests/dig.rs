//! Real queries with `dig` (Debian package dnsutils) against the server on loopback:
//! answers over UDP and TCP, NXDOMAIN and NODATA with the SOA, record swaps without restart,
//! forwarding to a second server and SERVFAIL from a dead upstream, and hostile input.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dns::{DnsConfig, DnsHandle, DnsServer, NodeInfo, RecordSet, ReplicaInfo, compute_records};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::process::Command;

/// One dig answer, whitespace-normalised.
#[derive(Debug)]
struct Reply {
    status: String,
    flags: Vec<String>,
    answers: Vec<String>,
    authority: Vec<String>,
}

impl Reply {
    fn answer_ips(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|l| l.rsplit(' ').next().map(str::to_owned))
            .collect()
    }
}

async fn dig(server: SocketAddr, args: &[&str]) -> Reply {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args([
            "+tries=1",
            "+time=5",
            "+noall",
            "+comments",
            "+answer",
            "+authority",
        ])
        .args(args)
        .output()
        .await
        .expect("dig runs (apt-get install dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut reply = Reply {
        status: String::new(),
        flags: Vec::new(),
        answers: Vec::new(),
        authority: Vec::new(),
    };
    let mut section = "";
    for line in text.lines() {
        let norm = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(rest) = norm.split("status: ").nth(1) {
            reply.status = rest.split(',').next().unwrap_or("").to_owned();
        } else if let Some(rest) = norm.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or("");
            reply.flags = flags.split(' ').map(str::to_owned).collect();
        } else if norm.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if norm.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if norm.is_empty() || norm.starts_with(';') {
            if norm.is_empty() {
                section = "";
            }
        } else if section == "answer" {
            reply.answers.push(norm);
        } else if section == "authority" {
            reply.authority.push(norm);
        }
    }
    assert!(
        !reply.status.is_empty(),
        "no reply from {server} for {args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    reply
}

fn replica(group: &str, name: &str, index: u32, ip: [u8; 4]) -> ReplicaInfo {
    ReplicaInfo {
        group: group.into(),
        name: name.into(),
        index,
        ip: Ipv4Addr::from(ip),
        ready: true,
    }
}

fn sample_records() -> RecordSet {
    compute_records(
        &[
            replica("busybox", "busybox", 1, [10, 10, 1, 2]),
            replica("busybox", "busybox", 2, [10, 10, 2, 2]),
        ],
        &[NodeInfo {
            name: "vm1".into(),
            ip: Ipv4Addr::new(192, 168, 50, 1),
        }],
    )
}

async fn start(upstreams: Vec<SocketAddr>, timeout: Duration) -> DnsHandle {
    let handle = DnsServer::start(DnsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        upstreams,
        ttl: 5,
        upstream_timeout: timeout,
    })
    .await
    .expect("server starts");
    handle.set_records(sample_records());
    handle
}

fn addr(handle: &DnsHandle) -> SocketAddr {
    handle.local_addrs()[0]
}

fn soa_serial(line: &str) -> u32 {
    // "private. 5 IN SOA ns.private. hostmaster.private. SERIAL 3600 600 86400 5"
    line.split(' ').nth(6).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_udp_and_tcp() {
    let handle = start(vec![], Duration::from_secs(1)).await;
    let server = addr(&handle);
    for transport in ["+notcp", "+tcp"] {
        let r = dig(
            server,
            &[transport, "cluster.busybox.busybox-busybox-2.private", "A"],
        )
        .await;
        assert_eq!(r.status, "NOERROR");
        assert!(r.flags.contains(&"aa".to_owned()), "{r:?}");
        assert_eq!(
            r.answers,
            vec!["cluster.busybox.busybox-busybox-2.private. 5 IN A 10.10.2.2"]
        );

        let r = dig(
            server,
            &[transport, "CLUSTER.busybox-busybox-1.Private", "A"],
        )
        .await;
        assert_eq!(r.status, "NOERROR");
        assert_eq!(r.answer_ips(), vec!["10.10.1.2"]);

        let r = dig(server, &[transport, "cluster.busybox.busybox.private", "A"]).await;
        assert_eq!(r.answer_ips(), vec!["10.10.1.2", "10.10.2.2"]);

        let r = dig(server, &[transport, "vm1.node.private", "A"]).await;
        assert_eq!(r.answers, vec!["vm1.node.private. 5 IN A 192.168.50.1"]);
    }
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_carry_the_soa() {
    let handle = start(vec![], Duration::from_secs(1)).await;
    let server = addr(&handle);

    let r = dig(server, &["cluster.busybox.busybox-busybox-9.private", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    assert!(r.answers.is_empty());
    assert_eq!(r.authority.len(), 1, "{r:?}");
    assert!(
        r.authority[0].starts_with("private. 5 IN SOA ns.private. hostmaster.private. "),
        "{r:?}"
    );
    assert!(r.authority[0].ends_with(" 3600 600 86400 5"), "{r:?}");

    // Known name, other type: NOERROR, no answers, SOA in authority.
    for qtype in ["AAAA", "MX", "TXT"] {
        let r = dig(server, &["+tcp", "vm1.node.private", qtype]).await;
        assert_eq!(r.status, "NOERROR", "{qtype}");
        assert!(r.answers.is_empty(), "{qtype}: {r:?}");
        assert!(r.authority[0].contains(" IN SOA "), "{qtype}: {r:?}");
    }

    // Empty non-terminal: NODATA, not NXDOMAIN.
    let r = dig(server, &["node.private", "A"]).await;
    assert_eq!(r.status, "NOERROR");
    assert!(r.answers.is_empty());

    // Hostile labels inside the zone: NXDOMAIN, no crash.
    for name in [r"a\000b.private", r"under_score.private", r"x\.y.private"] {
        let r = dig(server, &[name, "A"]).await;
        assert_eq!(r.status, "NXDOMAIN", "{name}");
    }

    // The apex SOA itself.
    let r = dig(server, &["private", "SOA"]).await;
    assert_eq!(r.status, "NOERROR");
    assert!(r.flags.contains(&"aa".to_owned()));
    assert_eq!(r.answers.len(), 1);
    assert!(r.answers[0].starts_with("private. 5 IN SOA ns.private. hostmaster.private. "));

    // Apex, other type: NODATA with SOA.
    let r = dig(server, &["private", "NS"]).await;
    assert_eq!(r.status, "NOERROR");
    assert!(r.answers.is_empty());
    assert!(r.authority[0].contains(" IN SOA "));

    // No upstream configured: names outside private. are refused.
    let r = dig(server, &["www.example.com", "A"]).await;
    assert_eq!(r.status, "REFUSED");
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_change_without_restart() {
    let handle = start(vec![], Duration::from_secs(1)).await;
    let server = addr(&handle);
    let before = dig(server, &["private", "SOA"]).await;
    let name = "cluster.busybox.busybox-busybox-3.private";
    assert_eq!(dig(server, &[name, "A"]).await.status, "NXDOMAIN");

    let mut replicas = vec![
        replica("busybox", "busybox", 1, [10, 10, 1, 2]),
        replica("busybox", "busybox", 3, [10, 10, 3, 7]),
    ];
    replicas.push(ReplicaInfo {
        ready: false,
        ..replica("busybox", "busybox", 2, [10, 10, 2, 2])
    });
    handle.set_records(compute_records(&replicas, &[]));
    assert_eq!(handle.records().len(), 5);
    assert_eq!(handle.local_addrs(), &[server]);

    let r = dig(server, &["+tcp", name, "A"]).await;
    assert_eq!(r.answer_ips(), vec!["10.10.3.7"]);
    let r = dig(server, &["cluster.busybox.busybox.private", "A"]).await;
    assert_eq!(r.answer_ips(), vec!["10.10.1.2", "10.10.3.7"]);
    // The replica that is no longer ready is gone, and so is the node.
    let r = dig(server, &["cluster.busybox-busybox-2.private", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    let r = dig(server, &["vm1.node.private", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");

    let after = dig(server, &["private", "SOA"]).await;
    assert!(soa_serial(&after.answers[0]) > soa_serial(&before.answers[0]));
    handle.shutdown().await.unwrap();
}

/// A UDP socket and a TCP listener on the same loopback port. The kernel picks
/// the UDP port without regard to TCP, where another test may hold that number,
/// so a taken TCP port means trying another one.
async fn udp_and_tcp_on_one_port() -> (UdpSocket, TcpListener, SocketAddr) {
    let mut last = None;
    for _ in 0..32 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = udp.local_addr().unwrap();
        match TcpListener::bind(local).await {
            Ok(tcp) => return (udp, tcp, local),
            Err(e) => last = Some(e),
        }
    }
    panic!("no loopback port free for both UDP and TCP: {last:?}");
}

/// A plain hickory server authoritative for `example.com.` on a loopback port.
async fn example_com_upstream() -> (Server<Catalog>, SocketAddr) {
    let origin = Name::from_ascii("example.com.").unwrap();
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        Name::from_ascii("ns.example.com.").unwrap(),
        Name::from_ascii("admin.example.com.").unwrap(),
        1,
        3600,
        600,
        86400,
        60,
    );
    assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1));
    let www = Name::from_ascii("www.example.com.").unwrap();
    assert!(zone.upsert_mut(
        Record::from_rdata(www, 60, RData::A(A(Ipv4Addr::new(203, 0, 113, 80)))),
        1
    ));
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
    let mut server = Server::new(catalog);
    let (udp, tcp, local) = udp_and_tcp_on_one_port().await;
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    (server, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_other_names_upstream() {
    let (mut upstream, upstream_addr) = example_com_upstream().await;
    let handle = start(vec![upstream_addr], Duration::from_secs(2)).await;
    let server = addr(&handle);

    for transport in ["+notcp", "+tcp"] {
        let r = dig(server, &[transport, "www.example.com", "A"]).await;
        assert_eq!(r.status, "NOERROR", "{r:?}");
        assert!(r.flags.contains(&"ra".to_owned()), "{r:?}");
        assert!(!r.flags.contains(&"aa".to_owned()), "{r:?}");
        assert_eq!(r.answer_ips(), vec!["203.0.113.80"]);
    }
    let r = dig(server, &["nope.example.com", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN", "{r:?}");
    // private. still answered locally.
    let r = dig(server, &["vm1.node.private", "A"]).await;
    assert_eq!(r.answer_ips(), vec!["192.168.50.1"]);

    handle.shutdown().await.unwrap();
    upstream.shutdown_gracefully().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_within_timeout_when_upstream_is_dead() {
    // A silent upstream: the port is bound (UDP and TCP) but nobody ever answers.
    let (_silent_udp, _silent_tcp, silent) = udp_and_tcp_on_one_port().await;
    // A closed port: bound then released.
    let closed = {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.local_addr().unwrap()
    };
    for upstream in [silent, closed] {
        let timeout = Duration::from_millis(700);
        let handle = start(vec![upstream], timeout).await;
        let server = addr(&handle);
        let t0 = Instant::now();
        let r = dig(server, &["www.example.com", "A"]).await;
        let elapsed = t0.elapsed();
        assert_eq!(r.status, "SERVFAIL", "upstream {upstream}: {r:?}");
        assert!(
            elapsed < timeout + Duration::from_secs(2),
            "took {elapsed:?} with upstream {upstream}"
        );
        // The private zone is unaffected.
        let r = dig(server, &["+tcp", "vm1.node.private", "A"]).await;
        assert_eq!(r.answer_ips(), vec!["192.168.50.1"]);
        handle.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_pointing_at_ourselves_are_dropped() {
    // Listening on a fixed port and forwarding to the same address would loop forever.
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let own = probe.local_addr().unwrap();
    drop(probe);
    let handle = match DnsServer::start(DnsConfig {
        listen: vec![own],
        upstreams: vec![own],
        ..DnsConfig::default()
    })
    .await
    {
        Ok(h) => h,
        // The port was taken in between; nothing to test then.
        Err(dns::DnsError::Bind { .. }) => return,
        Err(e) => panic!("{e}"),
    };
    let r = dig(own, &["www.example.com", "A"]).await;
    assert_eq!(r.status, "REFUSED");
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_garbage_udp_and_truncated_tcp() {
    let handle = start(vec![], Duration::from_secs(1)).await;
    let server = addr(&handle);

    // Garbage datagrams: empty, short, random, a header claiming many records, a
    // compression pointer loop, a response (reflection attempt).
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 11],
        vec![0xff; 12],
        vec![
            0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        // one question whose name is a pointer to itself
        vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1],
        // a response message
        vec![0, 2, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0xaa; 4096],
    ];
    let mut x: u32 = 0x9e37_79b9;
    for len in 0..200usize {
        let mut p = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            p.push(x as u8);
        }
        payloads.push(p);
    }
    for p in &payloads {
        sock.send_to(p, server).await.unwrap();
    }

    // Truncated TCP frames, some held open, some closed mid-frame.
    let mut held = Vec::new();
    for frame in [
        vec![0x00],                      // half a length prefix
        vec![0x00, 0x40, 1, 2, 3],       // length 64, 3 bytes
        vec![0xff, 0xff, 0, 0, 0, 0],    // length 65535, 4 bytes
        vec![0x00, 0x00],                // zero-length message
        vec![0x00, 0x05, 1, 2, 3, 4, 5], // complete but garbage
    ] {
        let mut s = TcpStream::connect(server).await.unwrap();
        s.write_all(&frame).await.unwrap();
        held.push(s);
        let mut s = TcpStream::connect(server).await.unwrap();
        s.write_all(&frame).await.unwrap();
        drop(s);
    }

    // Normal queries still work, over both transports, while the bad connections are open.
    for transport in ["+notcp", "+tcp"] {
        let r = dig(server, &[transport, "vm1.node.private", "A"]).await;
        assert_eq!(r.answer_ips(), vec!["192.168.50.1"], "{transport}");
    }
    drop(held);
    let r = dig(server, &["cluster.busybox.busybox.private", "A"]).await;
    assert_eq!(r.answer_ips().len(), 2);

    let mut set = BTreeMap::new();
    for (n, ips) in handle.records().iter() {
        set.insert(n.to_owned(), ips.to_vec());
    }
    assert_eq!(set.len(), 6);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_truncate_over_udp_and_complete_over_tcp() {
    let handle = start(vec![], Duration::from_secs(1)).await;
    let server = addr(&handle);
    let replicas: Vec<ReplicaInfo> = (1..=100)
        .map(|i| replica("big", "web", i, [10, 20, 0, i as u8]))
        .collect();
    handle.set_records(compute_records(&replicas, &[]));

    let r = dig(
        server,
        &["+noedns", "+ignore", "cluster.big.web.private", "A"],
    )
    .await;
    assert!(r.flags.contains(&"tc".to_owned()), "{r:?}");
    assert!(r.answers.len() < 100);
    let r = dig(server, &["+tcp", "cluster.big.web.private", "A"]).await;
    assert!(!r.flags.contains(&"tc".to_owned()), "{r:?}");
    assert_eq!(r.answers.len(), 100);
    handle.shutdown().await.unwrap();
}

#[test]
fn handle_can_move_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<DnsHandle>();
    send_sync::<RecordSet>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_every_listen_address_and_reports_bind_errors() {
    let handle = DnsServer::start(DnsConfig {
        listen: vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.2:0".parse().unwrap(),
        ],
        ..DnsConfig::default()
    })
    .await
    .expect("server starts");
    handle.set_records(sample_records());
    assert_eq!(handle.local_addrs().len(), 2);
    for server in handle.local_addrs().to_vec() {
        for transport in ["+notcp", "+tcp"] {
            let r = dig(server, &[transport, "vm1.node.private", "A"]).await;
            assert_eq!(r.answer_ips(), vec!["192.168.50.1"], "{server} {transport}");
        }
    }

    // The same address again is taken: a Bind error naming it, not a panic.
    let taken = handle.local_addrs()[0];
    let err = DnsServer::start(DnsConfig {
        listen: vec![taken],
        ..DnsConfig::default()
    })
    .await
    .err()
    .expect("second bind fails");
    assert!(
        matches!(err, dns::DnsError::Bind { addr, .. } if addr == taken),
        "{err}"
    );
    assert!(matches!(
        DnsServer::start(DnsConfig::default()).await.err(),
        Some(dns::DnsError::Config(_))
    ));
    handle.shutdown().await.unwrap();
}
