//! Routes inside a container's network namespace, for a container on several networks.
//!
//! Docker (API 1.41) gives a container on several networks its default route through the
//! network whose name sorts first, whatever the order they were asked for in. smr wants the
//! definition's first network to carry the default route, and every other network's range
//! reached through that network's own gateway (so a container sends to `back` from its `back`
//! address). [`set_container_routes`] enters the namespace of the container's process in a
//! thread of its own (the namespace never leaks into the agent's threads) and replaces those
//! routes over netlink.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nix::sched::{CloneFlags, setns};
use rtnetlink::RouteMessageBuilder;

/// The routes a container should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRoutes {
    /// The gateway of its first network.
    pub default_via: Ipv4Addr,
    /// Each other network's range and gateway.
    pub ranges: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// Why the routes could not be set.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("entering the network namespace of pid {pid}: {source}")]
    Enter {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("route {route} in the namespace of pid {pid}: {source}")]
    Route {
        pid: u32,
        route: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("the namespace thread of pid {0} ended without an answer")]
    Lost(u32),
}

/// Replaces the default route and adds the ranges' routes in the network namespace of `pid`.
pub async fn set_container_routes(pid: u32, routes: ContainerRoutes) -> Result<(), NetnsError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(in_namespace(pid, &routes));
    });
    rx.await.map_err(|_| NetnsError::Lost(pid))?
}

fn in_namespace(pid: u32, routes: &ContainerRoutes) -> Result<(), NetnsError> {
    let enter = |source: std::io::Error| NetnsError::Enter { pid, source };
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(enter)?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| enter(e.into()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(enter)?;
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(enter)?;
        tokio::spawn(connection);
        let mut all = vec![(
            Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0"),
            routes.default_via,
        )];
        all.extend(routes.ranges.iter().copied());
        for (dst, via) in all {
            let message = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.network(), dst.prefix_len())
                .gateway(via)
                .build();
            handle
                .route()
                .add(message)
                .replace()
                .execute()
                .await
                .map_err(|source| NetnsError::Route {
                    pid,
                    route: format!("{dst} via {via}"),
                    source,
                })?;
        }
        Ok(())
    })
}
