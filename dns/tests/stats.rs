//! The answer counters (`dns::stats`), against real queries by `dig` over UDP and TCP. Its own
//! test binary: the counters are process-wide, so no other server answers while it counts.

use std::net::Ipv4Addr;

use dns::{DnsConfig, DnsServer, NodeInfo, compute_records};
use tokio::process::Command;

async fn dig(server: std::net::SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+tries=1", "+time=5", "+short"])
        .args(args)
        .output()
        .await
        .expect("dig runs (apt-get install dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn count(result: &str) -> u64 {
    dns::stats::query_counts()
        .iter()
        .find(|(r, _)| *r == result)
        .map(|(_, n)| *n)
        .expect("a counted result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_counted_by_response_code() {
    let handle = DnsServer::start(DnsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..DnsConfig::default()
    })
    .await
    .expect("server starts");
    handle.set_records(compute_records(
        &[],
        &[NodeInfo {
            name: "vm1".into(),
            ip: Ipv4Addr::new(192, 168, 50, 1),
        }],
    ));
    let server = handle.local_addrs()[0];
    let before: Vec<u64> = ["noerror", "nxdomain", "refused"].map(count).to_vec();

    assert_eq!(
        dig(server, &["+notcp", "vm1.node.private", "A"])
            .await
            .trim(),
        "192.168.50.1"
    );
    assert_eq!(
        dig(server, &["+tcp", "vm1.node.private", "A"]).await.trim(),
        "192.168.50.1"
    );
    dig(server, &["vm9.node.private", "A"]).await;
    // No upstream: other names are refused.
    dig(server, &["www.example.com", "A"]).await;

    let after: Vec<u64> = ["noerror", "nxdomain", "refused"].map(count).to_vec();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(delta, vec![2, 1, 1], "noerror, nxdomain, refused");
    handle.shutdown().await.unwrap();
}
