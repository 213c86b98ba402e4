//! One node of the WireGuard benchmark (`bench/wireguard.sh`): runs the real [`Overlay`]
//! with the wireguard backend (userspace device) in the network namespace it is started
//! in, with one peer, until its standard input closes.
//!
//! ```text
//! wg_bench_node UNDERLAY_IP LEASE KEY_B64 PEER_UNDERLAY PEER_LEASE PEER_PUBLIC_B64
//! ```

use std::io::Read;
use std::net::SocketAddrV4;

use overlay::wireguard::WG_PORT;
use overlay::{Backend, Overlay, OverlayConfig, Peer, WgConfig, WgKey, WgPeer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 6 {
        return Err("usage: wg_bench_node UNDERLAY_IP LEASE KEY_B64 PEER_UNDERLAY PEER_LEASE PEER_PUBLIC_B64".into());
    }
    let lease = a[1].parse()?;
    let peer_ip = a[3].parse()?;
    let cfg = OverlayConfig {
        backend: Backend::WireGuard,
        lease,
        cluster_cidr: "10.42.0.0/16".parse()?,
        underlay_ip: a[0].parse()?,
        iface: None,
        vtep_mac: [2, 0, 0, 0, 0, 1],
        wireguard: Some(WgConfig::new(WgKey::from_base64(&a[2])?)),
    };
    let peer = Peer {
        subnet: a[4].parse()?,
        underlay: peer_ip,
        vtep_mac: [2, 0, 0, 0, 0, 2],
        wireguard: Some(WgPeer {
            public_key: a[5].parse()?,
            endpoint: SocketAddrV4::new(peer_ip, WG_PORT),
        }),
        extra_subnets: vec![],
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let o = Overlay::new(cfg)?.prefer_userspace_wireguard();
        o.setup().await?;
        o.reconcile(&[peer]).await?;
        println!("ready");
        // Run until the benchmark closes our standard input.
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await?;
        o.teardown().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
