//! Serves generated `*.private` records, for benchmarks (bench/dns.sh) and manual poking.
//!
//! ```text
//! cargo run -p dns --example serve -- [LISTEN] [REPLICAS] [--hosts-out FILE] [--queries-out FILE] [--upstream ADDR]
//! ```
//!
//! Generates REPLICAS ready replicas (definitions of up to 100 replicas each, in groups of
//! ten definitions), serves them on LISTEN (default 127.0.0.1:5353) until SIGINT/SIGTERM, and
//! optionally writes the same names as a hosts file (for dnsmasq `--addn-hosts`) and as a
//! dnsperf query file (one `NAME A` per name).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dns::{DnsConfig, DnsServer, ReplicaInfo, compute_records};

type BoxError = Box<dyn std::error::Error>;

fn generate(replicas: u32) -> Vec<ReplicaInfo> {
    (0..replicas)
        .map(|i| {
            let definition = i / 100;
            ReplicaInfo {
                group: format!("g{}", definition / 10),
                name: format!("app{definition}"),
                index: i % 100 + 1,
                ip: Ipv4Addr::from(0x0a00_0000 | (i + 1)),
                ready: true,
            }
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut positional = Vec::new();
    let mut hosts_out = None;
    let mut queries_out = None;
    let mut upstreams = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hosts-out" => hosts_out = args.next(),
            "--queries-out" => queries_out = args.next(),
            "--upstream" => upstreams.push(args.next().ok_or("--upstream needs ADDR")?.parse()?),
            _ => positional.push(arg),
        }
    }
    let listen: SocketAddr = positional
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5353)));
    let replicas: u32 = positional
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);

    let records = compute_records(&generate(replicas), &[]);
    if let Some(path) = hosts_out {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (name, ips) in records.iter() {
            for ip in ips {
                writeln!(f, "{ip} {name}")?;
            }
        }
        f.flush()?;
    }
    if let Some(path) = queries_out {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (name, _) in records.iter() {
            writeln!(f, "{name} A")?;
        }
        f.flush()?;
    }

    let handle = DnsServer::start(DnsConfig {
        listen: vec![listen],
        upstreams,
        ttl: 5,
        upstream_timeout: Duration::from_secs(2),
    })
    .await?;
    let names = records.len();
    handle.set_records(records);
    println!(
        "serving {names} names from {replicas} replicas on {:?}",
        handle.local_addrs()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.shutdown().await?;
    Ok(())
}
