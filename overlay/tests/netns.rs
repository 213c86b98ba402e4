//! The overlay against the real kernel: two network namespaces joined by a veth pair
//! play two VMs; each runs its own `Overlay` (netlink opened from a thread that entered
//! the namespace) and pings the other through the tunnel. Needs root.

use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use overlay::{Backend, Op, Overlay, OverlayConfig, OverlayError, Peer, VXLAN_DEV};

mod common;
use common::{run, sh};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Two namespaces `a` and `b` joined by a veth pair (`va` in a, `vb` in b) carrying
/// 192.168.77.1/24 and 192.168.77.2/24. Deleted by name on drop, even on failure.
struct Testbed {
    a: String,
    b: String,
}

impl Testbed {
    fn new() -> Self {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let tb = Testbed {
            a: format!("smrov{id}a"),
            b: format!("smrov{id}b"),
        };
        let (va, vb) = (format!("sv{id}a"), format!("sv{id}b"));
        sh(&["ip", "netns", "add", &tb.a]);
        sh(&["ip", "netns", "add", &tb.b]);
        sh(&[
            "ip", "link", "add", &va, "netns", &tb.a, "type", "veth", "peer", "name", &vb, "netns",
            &tb.b,
        ]);
        for (ns, dev, ip) in [
            (&tb.a, &va, "192.168.77.1/24"),
            (&tb.b, &vb, "192.168.77.2/24"),
        ] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        tb
    }

    /// Runs `f` on a fresh thread inside namespace `ns` with its own tokio runtime.
    fn in_ns<T, F, Fut>(&self, ns: &str, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        common::in_ns_async(ns, f)
    }

    /// Ping from `ns` until it answers or 10 s pass.
    fn ping_until_ok(&self, ns: &str, target: &str, source: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut args = vec!["ip", "netns", "exec", ns, "ping", "-c1", "-W1"];
        if let Some(s) = source {
            args.extend(["-I", s]);
        }
        args.push(target);
        loop {
            let out = run(&args);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ping {target} from {ns} never answered: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end (and with it the pair), its vxlan
        // device and its iptables rules.
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

const MAC_A: [u8; 6] = [0x02, 0x5a, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0x5a, 0, 0, 0, 2];

fn cfg(backend: Backend, node: u8, mac: [u8; 6]) -> OverlayConfig {
    OverlayConfig {
        backend,
        lease: net(&format!("10.42.{node}.0/24")),
        cluster_cidr: net("10.42.0.0/16"),
        underlay_ip: Ipv4Addr::new(192, 168, 77, node),
        iface: None,
        vtep_mac: mac,
        wireguard: None,
    }
}

fn peer(node: u8, mac: [u8; 6]) -> Peer {
    Peer {
        subnet: net(&format!("10.42.{node}.0/24")),
        underlay: Ipv4Addr::new(192, 168, 77, node),
        vtep_mac: mac,
        wireguard: None,
        extra_subnets: vec![],
    }
}

/// `setup` then `reconcile(peers)` in `ns` with a fresh `Overlay` (state lives in the kernel).
fn setup_and_reconcile(
    tb: &Testbed,
    ns: &str,
    cfg: OverlayConfig,
    peers: Vec<Peer>,
) -> Result<overlay::ReconcileReport, OverlayError> {
    tb.in_ns(ns, move || async move {
        let o = Overlay::new(cfg)?;
        o.setup().await?;
        o.reconcile(&peers).await
    })
}

fn reconcile(
    tb: &Testbed,
    ns: &str,
    cfg: OverlayConfig,
    peers: Vec<Peer>,
) -> overlay::ReconcileReport {
    tb.in_ns(ns, move || async move {
        Overlay::new(cfg)?.reconcile(&peers).await
    })
    .expect("reconcile")
}

#[test]
fn vxlan_two_nodes() {
    let tb = Testbed::new();
    let (a, b) = (tb.a.clone(), tb.b.clone());
    let ca = cfg(Backend::Vxlan, 1, MAC_A);
    let cb = cfg(Backend::Vxlan, 2, MAC_B);

    let ra =
        setup_and_reconcile(&tb, &a, ca.clone(), vec![peer(2, MAC_B), peer(1, MAC_A)]).unwrap();
    assert!(!ra.device_recreated, "setup created the device already");
    assert_eq!(ra.ops.len(), 3, "{:?}", ra.ops);
    assert!(matches!(ra.ops[0], Op::AddFdb { .. }));
    let rb = setup_and_reconcile(&tb, &b, cb.clone(), vec![peer(1, MAC_A)]).unwrap();
    assert_eq!(rb.ops.len(), 3);

    // The device as specified.
    let link = sh(&["ip", "-d", "-n", &a, "link", "show", VXLAN_DEV]);
    for want in [
        "mtu 1450",
        "02:5a:00:00:00:01",
        "vxlan id 1",
        "local 192.168.77.1",
        "dstport 8472",
        "nolearning",
        "UP",
    ] {
        assert!(link.contains(want), "{want} missing in {link}");
    }
    let addr = sh(&["ip", "-n", &a, "-4", "addr", "show", "dev", VXLAN_DEV]);
    assert!(addr.contains("inet 10.42.1.0/32"), "{addr}");
    assert_eq!(
        sh(&[
            "ip",
            "netns",
            "exec",
            &a,
            "cat",
            "/proc/sys/net/ipv4/ip_forward"
        ])
        .trim(),
        "1"
    );

    // Exactly the entries flannel would make.
    let neigh = sh(&["ip", "-n", &a, "neigh", "show", "dev", VXLAN_DEV]);
    assert!(
        neigh.contains("10.42.2.0 lladdr 02:5a:00:00:00:02 PERMANENT"),
        "{neigh}"
    );
    let fdb = sh(&["bridge", "-n", &a, "fdb", "show", "dev", VXLAN_DEV]);
    assert!(
        fdb.contains("02:5a:00:00:00:02 dst 192.168.77.2 self permanent"),
        "{fdb}"
    );
    let route = sh(&["ip", "-n", &a, "route", "show", "10.42.2.0/24"]);
    assert_eq!(
        route.trim(),
        "10.42.2.0/24 via 10.42.2.0 dev smr.1 proto static onlink",
        "{route}"
    );

    // Through the tunnel.
    tb.ping_until_ok(&a, "10.42.2.0", None);

    // Converged: no churn.
    let again = reconcile(&tb, &a, ca.clone(), vec![peer(2, MAC_B)]);
    assert!(again.is_noop(), "{again:?}");

    // Peer removed: its entries disappear.
    let gone = reconcile(&tb, &a, ca.clone(), vec![]);
    assert_eq!(gone.ops.len(), 3, "{:?}", gone.ops);
    assert!(
        gone.ops
            .iter()
            .all(|o| matches!(o, Op::DelRoute(_) | Op::DelNeigh { .. } | Op::DelFdb { .. }))
    );
    assert!(!sh(&["ip", "-n", &a, "neigh", "show", "dev", VXLAN_DEV]).contains("10.42.2.0"));
    assert!(
        !sh(&["bridge", "-n", &a, "fdb", "show", "dev", VXLAN_DEV]).contains("02:5a:00:00:00:02")
    );
    assert_eq!(
        sh(&["ip", "-n", &a, "route", "show", "10.42.2.0/24"]).trim(),
        ""
    );
    assert!(reconcile(&tb, &a, ca.clone(), vec![]).is_noop());

    // Back, then the device deleted by hand: recreated with its entries.
    assert_eq!(
        reconcile(&tb, &a, ca.clone(), vec![peer(2, MAC_B)])
            .ops
            .len(),
        3
    );
    sh(&["ip", "-n", &a, "link", "del", VXLAN_DEV]);
    let re = reconcile(&tb, &a, ca.clone(), vec![peer(2, MAC_B)]);
    assert!(re.device_recreated);
    assert_eq!(re.ops.len(), 3, "{:?}", re.ops);
    tb.ping_until_ok(&a, "10.42.2.0", None);

    // A changed parameter (MTU) also recreates it.
    sh(&["ip", "-n", &a, "link", "set", VXLAN_DEV, "mtu", "1400"]);
    let re = reconcile(&tb, &a, ca.clone(), vec![peer(2, MAC_B)]);
    assert!(re.device_recreated);
    assert!(sh(&["ip", "-n", &a, "link", "show", VXLAN_DEV]).contains("mtu 1450"));
    assert!(reconcile(&tb, &a, ca.clone(), vec![peer(2, MAC_B)]).is_noop());

    // Masquerade rules are there, then teardown removes them and the device.
    let chain = sh(&[
        "ip", "netns", "exec", &a, "iptables", "-t", "nat", "-S", "SMR-MASQ",
    ]);
    assert!(
        chain.contains("-A SMR-MASQ -s 10.42.0.0/16 -d 10.42.0.0/16 -j RETURN"),
        "{chain}"
    );
    assert!(
        chain.contains("-A SMR-MASQ -s 10.42.1.0/24 ! -d 10.42.0.0/16 -j MASQUERADE"),
        "{chain}"
    );
    let post = sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "iptables",
        "-t",
        "nat",
        "-S",
        "POSTROUTING",
    ]);
    assert!(post.contains("-A POSTROUTING -j SMR-MASQ"), "{post}");
    // A second setup changes nothing in iptables (checked before insert).
    tb.in_ns(&a, {
        let ca = ca.clone();
        move || async move { Overlay::new(ca)?.setup().await }
    })
    .unwrap();
    let post2 = sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "iptables",
        "-t",
        "nat",
        "-S",
        "POSTROUTING",
    ]);
    assert_eq!(post, post2);

    tb.in_ns(
        &a,
        move || async move { Overlay::new(ca)?.teardown().await },
    )
    .unwrap();
    assert!(
        !run(&["ip", "-n", &a, "link", "show", VXLAN_DEV])
            .status
            .success()
    );
    assert!(
        !run(&[
            "ip", "netns", "exec", &a, "iptables", "-t", "nat", "-S", "SMR-MASQ"
        ])
        .status
        .success()
    );
    let post3 = sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "iptables",
        "-t",
        "nat",
        "-S",
        "POSTROUTING",
    ]);
    assert!(!post3.contains("SMR-MASQ"), "{post3}");
    assert_eq!(
        sh(&["ip", "-n", &a, "route", "show", "10.42.2.0/24"]).trim(),
        ""
    );
}

#[test]
fn host_gw_two_nodes() {
    let tb = Testbed::new();
    let (a, b) = (tb.a.clone(), tb.b.clone());
    // Something owning an address in each lease, like the Docker bridge would.
    for (ns, ip) in [(&a, "10.42.1.1/24"), (&b, "10.42.2.1/24")] {
        sh(&["ip", "-n", ns, "link", "add", "smrdummy", "type", "bridge"]);
        sh(&["ip", "-n", ns, "addr", "add", ip, "dev", "smrdummy"]);
        sh(&["ip", "-n", ns, "link", "set", "smrdummy", "up"]);
    }
    let ca = cfg(Backend::HostGw, 1, MAC_A);
    let cb = cfg(Backend::HostGw, 2, MAC_B);
    let ra = setup_and_reconcile(&tb, &a, ca.clone(), vec![peer(2, MAC_B)]).unwrap();
    assert_eq!(ra.ops.len(), 1, "{:?}", ra.ops);
    let rb = setup_and_reconcile(&tb, &b, cb, vec![peer(1, MAC_A)]).unwrap();
    assert_eq!(rb.ops.len(), 1);
    let dev_a = format!("sv{}", a.trim_start_matches("smrov"));
    let route = sh(&["ip", "-n", &a, "route", "show", "10.42.2.0/24"]);
    assert_eq!(
        route.trim(),
        format!("10.42.2.0/24 via 192.168.77.2 dev {dev_a} proto static")
    );
    assert!(
        !run(&["ip", "-n", &a, "link", "show", VXLAN_DEV])
            .status
            .success()
    );

    tb.ping_until_ok(&a, "10.42.2.1", Some("10.42.1.1"));
    assert!(reconcile(&tb, &a, ca.clone(), vec![peer(2, MAC_B)]).is_noop());

    // A peer behind a router is refused with a clear error.
    let far = Peer {
        underlay: Ipv4Addr::new(10, 99, 0, 5),
        ..peer(3, [0x02, 0, 0, 0, 0, 3])
    };
    let err = tb
        .in_ns(&a, {
            let ca = ca.clone();
            move || async move { Overlay::new(ca)?.reconcile(&[far]).await }
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("peer underlay 10.99.0.5 is in none of the local networks"),
        "{err}"
    );

    // Peer removed: its route goes; the own lease's route stays.
    let gone = reconcile(&tb, &a, ca.clone(), vec![]);
    assert_eq!(gone.ops.len(), 1);
    assert_eq!(
        sh(&["ip", "-n", &a, "route", "show", "10.42.2.0/24"]).trim(),
        ""
    );
    assert!(sh(&["ip", "-n", &a, "route", "show", "10.42.1.0/24"]).contains("smrdummy"));

    tb.in_ns(
        &a,
        move || async move { Overlay::new(ca)?.teardown().await },
    )
    .unwrap();
    assert!(sh(&["ip", "-n", &a, "route", "show", "10.42.1.0/24"]).contains("smrdummy"));
}

const NO_CAP_CHILD: &str = "SMR_OVERLAY_NO_CAP_CHILD";

/// Runs itself again inside a namespace without CAP_NET_ADMIN: setup must say so.
#[test]
fn missing_cap_net_admin_is_named() {
    if std::env::var_os(NO_CAP_CHILD).is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(async { Overlay::new(cfg(Backend::Vxlan, 1, MAC_A))?.setup().await })
            .unwrap_err();
        assert!(
            err.to_string().contains("the agent needs CAP_NET_ADMIN"),
            "{err}"
        );
        return;
    }
    let tb = Testbed::new();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &tb.a,
            "setpriv",
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
        ])
        .arg(exe)
        .args(["--exact", "missing_cap_net_admin_is_named", "--nocapture"])
        .env(NO_CAP_CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed: {text}");
    assert!(text.contains("1 passed"), "child ran nothing: {text}");
    assert!(
        !run(&["ip", "-n", &tb.a, "link", "show", VXLAN_DEV])
            .status
            .success()
    );
}
