//! WireGuard conformance suite: one set of case functions run against each device
//! implementation through the real [`Overlay`]. Two network namespaces joined by a veth
//! pair play two VMs; each keeps one long-lived `Overlay` (the userspace device lives as
//! long as it) on a runtime whose threads are inside its namespace. The userspace run is
//! real here; the kernel run reports "skipped: no wireguard in this kernel" where the
//! kernel lacks WireGuard. Needs root.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use overlay::wireguard::{WG_DEV, WgOp};
use overlay::{Backend, Overlay, OverlayConfig, Peer, WgConfig, WgKey, WgPeer};

mod common;
use common::{enter, in_ns, run, sh};

static SEQ: AtomicU32 = AtomicU32::new(0);

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A "VM": a namespace with a thread that entered it and runs a multi-thread tokio
/// runtime (its workers are created there, so they are in the namespace too).
struct Vm {
    ns: String,
    ip: Ipv4Addr,
    node: u8,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    key: WgKey,
    overlay: Option<Arc<Overlay>>,
}

impl Vm {
    fn start(ns: String, ip: Ipv4Addr, node: u8) -> Vm {
        let (tx, rx) = mpsc::channel::<Job>();
        let n = ns.clone();
        let thread = std::thread::spawn(move || {
            enter(&n);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            while let Ok(job) = rx.recv() {
                rt.block_on(job());
            }
        });
        Vm {
            ns,
            ip,
            node,
            jobs: Some(tx),
            thread: Some(thread),
            key: WgKey::generate(),
            overlay: None,
        }
    }

    /// Runs `f` on the VM's runtime and waits for its result.
    fn run<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = tx.send(f().await);
            })
        });
        self.jobs
            .as_ref()
            .unwrap()
            .send(job)
            .expect("vm thread gone");
        rx.recv().expect("vm job panicked")
    }

    fn lease(&self) -> Ipv4Net {
        format!("10.42.{}.0/24", self.node).parse().unwrap()
    }

    fn config(&self) -> OverlayConfig {
        OverlayConfig {
            backend: Backend::WireGuard,
            lease: self.lease(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            underlay_ip: self.ip,
            iface: None,
            vtep_mac: [0x02, 0x5a, 0, 0, 0, self.node],
            wireguard: Some(WgConfig::new(self.key.clone())),
        }
    }

    /// This VM as the other one's peer.
    fn peer(&self) -> Peer {
        Peer {
            subnet: self.lease(),
            underlay: self.ip,
            vtep_mac: [0x02, 0x5a, 0, 0, 0, self.node],
            wireguard: Some(WgPeer {
                public_key: self.key.public_key(),
                endpoint: SocketAddrV4::new(self.ip, 51820),
            }),
            extra_subnets: vec![],
        }
    }

    /// Creates the overlay (with the implementation under test) and runs `setup`.
    fn setup(&mut self, imp: Impl) {
        let cfg = self.config();
        let o = self.run(move || async move {
            let o = Overlay::new(cfg).expect("overlay");
            let o = match imp {
                Impl::Userspace => o.prefer_userspace_wireguard(),
                Impl::Kernel => o,
            };
            o.setup().await.expect("setup");
            Arc::new(o)
        });
        assert_eq!(o.wireguard_impl(), Some(imp.name()));
        self.overlay = Some(o);
    }

    fn overlay(&self) -> Arc<Overlay> {
        self.overlay.clone().expect("set up")
    }

    fn reconcile(&self, peers: Vec<Peer>) -> overlay::ReconcileReport {
        let o = self.overlay();
        self.run(move || async move { o.reconcile(&peers).await.expect("reconcile") })
    }

    fn stats(&self) -> Vec<overlay::PeerStats> {
        let o = self.overlay();
        self.run(move || async move { o.peer_stats().await.expect("peer stats") })
    }

    fn ping(&self, target: &str) -> bool {
        run(&[
            "ip", "netns", "exec", &self.ns, "ping", "-c1", "-W1", target,
        ])
        .status
        .success()
    }

    /// Pings until it answers or 10 s pass.
    fn ping_until_ok(&self, target: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping(target) {
            assert!(
                Instant::now() < deadline,
                "ping {target} from {} never answered",
                self.ns
            );
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // The overlay (and its TUN device) goes with the runtime thread.
        if let Some(o) = self.overlay.take() {
            let _ = self.jobs.as_ref().map(|j| {
                j.send(Box::new(move || {
                    Box::pin(async move {
                        let _ = o.teardown().await;
                    })
                }))
            });
        }
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Userspace,
    Kernel,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Userspace => "userspace",
            Impl::Kernel => "kernel",
        }
    }
}

/// Two VMs on a veth pair (192.168.78.1 and .2), each with its overlay set up and the
/// other as its peer.
fn pair(imp: Impl) -> (Vm, Vm) {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let id = format!("{}{}", std::process::id() % 100_000, n);
    let (na, nb) = (format!("smrwg{id}a"), format!("smrwg{id}b"));
    sh(&["ip", "netns", "add", &na]);
    let mut a = Vm::start(na.clone(), Ipv4Addr::new(192, 168, 78, 1), 1);
    sh(&["ip", "netns", "add", &nb]);
    let mut b = Vm::start(nb.clone(), Ipv4Addr::new(192, 168, 78, 2), 2);
    let (va, vb) = (format!("sw{id}a"), format!("sw{id}b"));
    sh(&[
        "ip", "link", "add", &va, "netns", &na, "type", "veth", "peer", "name", &vb, "netns", &nb,
    ]);
    for (ns, dev, ip) in [(&na, &va, "192.168.78.1/24"), (&nb, &vb, "192.168.78.2/24")] {
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    a.setup(imp);
    b.setup(imp);
    let ra = a.reconcile(vec![b.peer()]);
    assert_eq!(
        ra.wg_ops,
        vec![WgOp::AddPeer(
            overlay::wireguard::plan::peer_config(&b.peer()).unwrap()
        )]
    );
    b.reconcile(vec![a.peer()]);
    (a, b)
}

/// Whether this kernel can make a wireguard link (tried in a scratch namespace).
fn kernel_has_wireguard() -> bool {
    let ns = format!("smrwgk{}", std::process::id());
    sh(&["ip", "netns", "add", &ns]);
    let ok = run(&[
        "ip",
        "-n",
        &ns,
        "link",
        "add",
        "wgprobe",
        "type",
        "wireguard",
    ])
    .status
    .success();
    let _ = run(&["ip", "netns", "del", &ns]);
    ok
}

/// Runs `case` against `imp`, or says why not.
fn conformance(imp: Impl, case: fn(Impl)) {
    if imp == Impl::Kernel && !kernel_has_wireguard() {
        println!("skipped: no wireguard in this kernel");
        return;
    }
    case(imp);
}

// ---- the cases ----

/// Pings both ways, a second reconcile changes nothing, stats show the handshake.
fn case_ping_and_no_churn(imp: Impl) {
    let (a, b) = pair(imp);
    a.ping_until_ok("10.42.2.0");
    b.ping_until_ok("10.42.1.0");
    assert!(a.reconcile(vec![b.peer()]).is_noop());
    assert!(b.reconcile(vec![a.peer()]).is_noop());
    let s = a.stats();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].public_key, b.key.public_key());
    assert_eq!(s[0].endpoint, Some(SocketAddrV4::new(b.ip, 51820)));
    assert!(s[0].last_handshake.is_some());
    assert!(s[0].rx_bytes > 0 && s[0].tx_bytes > 0, "{s:?}");
    // The device MTU is the underlay's (veth: 1500) minus the overhead.
    let mtu = a.run({
        let o = a.overlay();
        move || async move { o.mtu().await.unwrap() }
    });
    assert_eq!(mtu, 1440);
    assert!(sh(&["ip", "-n", &a.ns, "link", "show", WG_DEV]).contains("mtu 1440"));
}

/// A TCP transfer of 64 MB arrives whole and in order (many packets, several GSO runs).
fn case_tcp_transfer(imp: Impl) {
    let (a, b) = pair(imp);
    a.ping_until_ok("10.42.2.0");
    const LEN: usize = 64 << 20;
    let listener = in_ns(&b.ns, || {
        TcpListener::bind("10.42.2.0:5201").expect("listen")
    });
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).expect("read");
        got
    });
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let started = Instant::now();
    in_ns(&a.ns, move || {
        let mut c = TcpStream::connect("10.42.2.0:5201").expect("connect");
        c.write_all(&sent).expect("write");
    });
    let got = server.join().expect("server");
    println!(
        "{imp:?}: 64 MB through the tunnel in {:?}",
        started.elapsed()
    );
    assert!(
        got == data,
        "the transfer arrived damaged ({} bytes)",
        got.len()
    );
}

/// Datagrams to the WireGuard port from a host without a valid key get no answer and
/// reach nothing: a handshake initiation signed by an unknown key, and a forged data packet.
fn case_unknown_key_dropped(imp: Impl) {
    let (a, b) = pair(imp);
    a.ping_until_ok("10.42.2.0");
    let before = b.stats();
    let stranger = WgKey::generate();
    let b_public = b.key.public_key().0;
    let answers = in_ns(&a.ns, move || {
        use boringtun::noise::{Tunn, TunnResult};
        use boringtun::x25519::{PublicKey, StaticSecret};
        let sock = UdpSocket::bind("192.168.78.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut t = Tunn::new(
            StaticSecret::from(stranger.0),
            // b's real public key: only the initiator's key is unknown to b.
            PublicKey::from(b_public),
            None,
            None,
            1,
            None,
        );
        let mut buf = vec![0u8; 2048];
        let mut answers = 0;
        for _ in 0..3 {
            if let TunnResult::WriteToNetwork(p) = t.format_handshake_initiation(&mut buf, true) {
                sock.send_to(p, "192.168.78.2:51820").unwrap();
            }
            // A data packet naming a made-up session.
            let mut forged = vec![4u8, 0, 0, 0];
            forged.extend([0x11; 12]);
            forged.extend([0x22; 64]);
            sock.send_to(&forged, "192.168.78.2:51820").unwrap();
            let mut r = [0u8; 256];
            if sock.recv_from(&mut r).is_ok() {
                answers += 1;
            }
        }
        answers
    });
    assert_eq!(answers, 0, "the device answered a host without a valid key");
    let after = b.stats();
    assert_eq!(after.len(), 1, "no peer appears for an unknown key");
    assert_eq!(after[0].public_key, before[0].public_key);
    // Authenticated traffic still flows.
    b.ping_until_ok("10.42.1.0");
}

/// Rotating a's key: once b knows the new public key, traffic resumes after one handshake.
fn case_key_change(imp: Impl) {
    let (mut a, b) = pair(imp);
    a.ping_until_ok("10.42.2.0");
    let new = WgKey::generate();
    let o = a.overlay();
    let k = new.clone();
    a.run(move || async move { o.set_private_key(k).await.expect("set key") });
    a.key = new;
    let old_key = b.stats()[0].public_key;
    let r = b.reconcile(vec![a.peer()]);
    assert_eq!(
        r.wg_ops,
        vec![
            WgOp::RemovePeer(old_key),
            WgOp::AddPeer(overlay::wireguard::plan::peer_config(&a.peer()).unwrap())
        ]
    );
    let started = Instant::now();
    a.ping_until_ok("10.42.2.0");
    println!(
        "{imp:?}: traffic resumed {:?} after the key change",
        started.elapsed()
    );
    b.ping_until_ok("10.42.1.0");
    assert!(b.stats()[0].last_handshake.is_some());
}

/// Removing a peer removes it and its route; its packets are then dropped.
fn case_peer_removal(imp: Impl) {
    let (a, b) = pair(imp);
    a.ping_until_ok("10.42.2.0");
    let r = b.reconcile(vec![]);
    assert_eq!(r.wg_ops, vec![WgOp::RemovePeer(a.key.public_key())]);
    assert_eq!(r.ops.len(), 1, "{:?}", r.ops);
    assert!(b.stats().is_empty());
    assert!(!sh(&["ip", "-n", &b.ns, "route"]).contains("10.42.1.0/24"));
    assert!(!a.ping("10.42.2.0"), "a removed peer still gets through");
}

/// A peer whose published endpoint is wrong (NAT) is reached at the authenticated
/// source of its packets.
fn case_roaming(imp: Impl) {
    let (a, b) = pair(imp);
    let mut wrong = a.peer();
    wrong.wireguard.as_mut().unwrap().endpoint =
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 78, 99), 51820);
    b.reconcile(vec![wrong.clone()]);
    // b cannot reach a first; a's traffic teaches b where a is.
    a.ping_until_ok("10.42.2.0");
    b.ping_until_ok("10.42.1.0");
    let s = b.stats();
    assert_eq!(s[0].endpoint, Some(SocketAddrV4::new(a.ip, 51820)));
    // Following the source is not a configuration change: no churn.
    assert!(b.reconcile(vec![wrong]).is_noop());
}

/// A deleted device is recreated by the next reconcile; a stale device of the wrong
/// kind found at setup is replaced.
fn case_device_repair(imp: Impl) {
    let (a, b) = pair(imp);
    a.ping_until_ok("10.42.2.0");
    sh(&["ip", "-n", &b.ns, "link", "del", WG_DEV]);
    let r = b.reconcile(vec![a.peer()]);
    assert!(r.device_recreated, "{r:?}");
    a.ping_until_ok("10.42.2.0");
    assert!(b.reconcile(vec![a.peer()]).is_noop());
    // Something else under the device's name (a stale device of another kind) is replaced.
    sh(&["ip", "-n", &b.ns, "link", "del", WG_DEV]);
    sh(&[
        "ip", "-n", &b.ns, "link", "add", WG_DEV, "type", "veth", "peer", "name", "wgstale",
    ]);
    assert!(b.reconcile(vec![a.peer()]).device_recreated);
    a.ping_until_ok("10.42.2.0");
}

#[test]
fn userspace_ping_and_no_churn() {
    conformance(Impl::Userspace, case_ping_and_no_churn);
}
#[test]
fn userspace_tcp_transfer() {
    conformance(Impl::Userspace, case_tcp_transfer);
}
#[test]
fn userspace_unknown_key_dropped() {
    conformance(Impl::Userspace, case_unknown_key_dropped);
}
#[test]
fn userspace_key_change() {
    conformance(Impl::Userspace, case_key_change);
}
#[test]
fn userspace_peer_removal() {
    conformance(Impl::Userspace, case_peer_removal);
}
#[test]
fn userspace_roaming() {
    conformance(Impl::Userspace, case_roaming);
}
#[test]
fn userspace_device_repair() {
    conformance(Impl::Userspace, case_device_repair);
}
/// Without a preference the overlay takes the kernel's WireGuard where the kernel has it
/// and falls back to the userspace device where it does not.
#[test]
fn implementation_is_chosen_by_the_kernel() {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let ns = format!("smrwg{}{}c", std::process::id() % 100_000, n);
    sh(&["ip", "netns", "add", &ns]);
    let vm = Vm::start(ns.clone(), Ipv4Addr::new(127, 0, 0, 1), 3);
    sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    let cfg = vm.config();
    let chosen = vm.run(move || async move {
        let o = Overlay::new(cfg).expect("overlay");
        o.setup().await.expect("setup");
        let chosen = o.wireguard_impl();
        o.teardown().await.expect("teardown");
        chosen
    });
    let want = if kernel_has_wireguard() {
        "kernel"
    } else {
        "userspace"
    };
    assert_eq!(chosen, Some(want));
}

#[test]
fn kernel_conformance() {
    for case in [
        case_ping_and_no_churn,
        case_tcp_transfer,
        case_unknown_key_dropped,
        case_key_change,
        case_peer_removal,
        case_roaming,
        case_device_repair,
    ] {
        conformance(Impl::Kernel, case);
    }
}
