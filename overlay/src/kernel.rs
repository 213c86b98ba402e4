//! The kernel side of the overlay, behind the narrow [`Kernel`] trait.
//!
//! [`NetlinkKernel`] speaks rtnetlink (no `ip` binary): it finds the underlay interface,
//! creates/deletes the vxlan device, sets its address and brings it up, reads the
//! neighbours, FDB entries and routes the overlay manages (as plain [`Observed`] data for
//! the pure planner in [`crate::plan`]) and applies [`Op`]s. Everything happens in the
//! network namespace the netlink socket was opened in, so a caller that wants another
//! namespace opens the connection from a thread that entered it.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::plan::{FdbEntry, Mac, NeighEntry, Observed, Op, RouteEntry, VxlanLink, VxlanSpec};

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EACCES: i32 = 13;
const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;

/// Kernel errors.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel refused a change for lack of privilege.
    #[error("{context}: permission denied: the agent needs CAP_NET_ADMIN")]
    PermissionDenied { context: String },
    /// Any other netlink failure.
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// No interface holds the underlay address (or the named one does not exist).
    #[error("no interface {} holds underlay address {ip}", iface.as_deref().map(|i| format!("named {i}")).unwrap_or_else(|| "at all".into()))]
    NoUnderlay { ip: Ipv4Addr, iface: Option<String> },
    /// A device an op refers to does not exist.
    #[error("device {0} does not exist")]
    NoDevice(String),
    /// The kernel does not know a device type (no module for it).
    #[error("{context}: the kernel does not support it ({source})")]
    Unsupported {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Opening the netlink socket or writing /proc failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl KernelError {
    fn netlink(context: impl Into<String>, source: rtnetlink::Error) -> Self {
        let context = context.into();
        match errno(&source) {
            Some(EPERM) | Some(EACCES) => KernelError::PermissionDenied { context },
            _ => KernelError::Netlink { context, source },
        }
    }
}

/// The positive errno of a netlink error reply.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The interface holding the underlay address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// Every IPv4 address of the host with its prefix (for the host-gw same-L2 check).
    pub local_nets: Vec<Ipv4Net>,
}

/// What [`Kernel::observe`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserveScope {
    /// The vxlan device whose neighbours and FDB are read (`None` for host-gw).
    pub vxlan_dev: Option<String>,
    /// Routes whose destination lies inside this CIDR are read...
    pub cluster: Ipv4Net,
    /// ...except the route to the node's own lease (the Docker bridge's).
    pub own_lease: Ipv4Net,
}

/// The kernel operations the overlay needs. Futures are `Send` so a driver can run on
/// any tokio runtime.
pub trait Kernel {
    /// Finds the underlay interface: `iface` if given, else the one holding `ip`.
    fn underlay(
        &self,
        ip: Ipv4Addr,
        iface: Option<&str>,
    ) -> impl Future<Output = Result<Underlay, KernelError>> + Send;
    /// The device called `name`, if any.
    fn vxlan_link(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<VxlanLink>, KernelError>> + Send;
    /// Creates the vxlan device (learning off).
    fn create_vxlan(
        &self,
        spec: &VxlanSpec,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// Deletes the device `name`; `false` when it did not exist.
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<bool, KernelError>> + Send;
    /// Makes `addr` the only IPv4 address of `name` and brings it up; `true` if anything changed.
    fn ensure_address_up(
        &self,
        name: &str,
        addr: Ipv4Net,
    ) -> impl Future<Output = Result<bool, KernelError>> + Send;
    /// Reads the managed state.
    fn observe(
        &self,
        scope: &ObserveScope,
    ) -> impl Future<Output = Result<Observed, KernelError>> + Send;
    /// Applies one op.
    fn apply(&self, op: &Op) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// `net.ipv4.ip_forward=1`.
    fn enable_ip_forward(&self) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// The kind (`"wireguard"`, `"tun"`, `"vxlan"`, `""` when unknown) and MTU of the
    /// device called `name`, if any.
    fn link_kind(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LinkKind>, KernelError>> + Send;
    /// Creates a kernel WireGuard device (`ip link add NAME type wireguard`). Fails with
    /// [`KernelError::Unsupported`] when the kernel has no WireGuard.
    fn create_wireguard(
        &self,
        name: &str,
        mtu: u32,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;
}

/// A device's kind and MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkKind {
    pub kind: String,
    pub mtu: u32,
}

/// [`Kernel`] over an rtnetlink connection.
pub struct NetlinkKernel {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for NetlinkKernel {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl NetlinkKernel {
    /// Opens a netlink connection in the calling thread's network namespace. Must be
    /// called inside a tokio runtime (the connection task is spawned on it).
    pub fn new() -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| KernelError::Io {
            context: "opening a netlink socket".into(),
            source,
        })?;
        let conn = tokio::spawn(conn);
        Ok(NetlinkKernel { handle, conn })
    }

    async fn links(&self) -> Result<Vec<LinkMessage>, KernelError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| KernelError::netlink("listing links", e))
    }

    async fn index_of(&self, name: &str) -> Result<Option<u32>, KernelError> {
        Ok(self
            .links()
            .await?
            .iter()
            .find(|l| link_name(l) == Some(name))
            .map(|l| l.header.index))
    }

    async fn require_index(&self, name: &str) -> Result<u32, KernelError> {
        self.index_of(name)
            .await?
            .ok_or_else(|| KernelError::NoDevice(name.to_string()))
    }

    async fn addresses(&self) -> Result<Vec<AddressMessage>, KernelError> {
        self.handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| KernelError::netlink("listing addresses", e))
    }

    async fn apply_inner(&self, op: &Op) -> Result<(), KernelError> {
        let ctx = op.to_string();
        let nl = |e| KernelError::netlink(ctx.clone(), e);
        // Deleting something already gone is success.
        let gone =
            |e: &rtnetlink::Error| matches!(errno(e), Some(ENOENT) | Some(ESRCH) | Some(ENODEV));
        match op {
            Op::AddNeigh { dev, ip, mac } => {
                let idx = self.require_index(dev).await?;
                self.handle
                    .neighbours()
                    .add(idx, IpAddr::V4(*ip))
                    .link_layer_address(&mac.0)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl)
            }
            Op::DelNeigh { dev, ip } => {
                let Some(idx) = self.index_of(dev).await? else {
                    return Ok(());
                };
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Inet;
                msg.header.ifindex = idx;
                msg.attributes
                    .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*ip)));
                match self.handle.neighbours().del(msg).execute().await {
                    Err(e) if gone(&e) => Ok(()),
                    r => r.map_err(nl),
                }
            }
            Op::AddFdb { dev, mac, dst } => {
                let idx = self.require_index(dev).await?;
                self.handle
                    .neighbours()
                    .add_bridge(idx, &mac.0)
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .destination(IpAddr::V4(*dst))
                    .replace()
                    .execute()
                    .await
                    .map_err(nl)
            }
            Op::DelFdb { dev, mac, dst } => {
                let Some(idx) = self.index_of(dev).await? else {
                    return Ok(());
                };
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Bridge;
                msg.header.ifindex = idx;
                msg.header.flags = NeighbourFlags::Own;
                msg.header.state = NeighbourState::Permanent;
                msg.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                if let Some(d) = dst {
                    msg.attributes
                        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*d)));
                }
                match self.handle.neighbours().del(msg).execute().await {
                    Err(e) if gone(&e) => Ok(()),
                    r => r.map_err(nl),
                }
            }
            Op::AddRoute(r) => {
                let idx = self.require_index(&r.dev).await?;
                let msg = route_message(r, idx);
                self.handle
                    .route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl)
            }
            Op::DelRoute(r) => {
                let Some(idx) = self.index_of(&r.dev).await? else {
                    return Ok(());
                };
                let msg = route_message(r, idx);
                match self.handle.route().del(msg).execute().await {
                    Err(e) if gone(&e) => Ok(()),
                    r => r.map_err(nl),
                }
            }
        }
    }
}

fn route_message(r: &RouteEntry, oif: u32) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .output_interface(oif);
    if let Some(via) = r.via {
        b = b.gateway(via);
    }
    if r.onlink {
        b = b.onlink();
    }
    b.build()
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn mac_of(bytes: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(bytes).ok().map(Mac)
}

fn vxlan_of(l: &LinkMessage) -> VxlanLink {
    let mut out = VxlanLink {
        index: l.header.index,
        up: l.header.flags.contains(LinkFlags::Up),
        ..VxlanLink::default()
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::Mtu(m) => out.mtu = Some(*m),
            LinkAttribute::Address(a) => out.mac = mac_of(a),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Vxlan) => out.is_vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(vx)) => {
                            for v in vx {
                                match v {
                                    InfoVxlan::Id(id) => out.vni = Some(*id),
                                    InfoVxlan::Port(p) => out.port = Some(*p),
                                    InfoVxlan::Learning(b) => out.learning = Some(*b),
                                    InfoVxlan::Local(ip) => out.local = Some(*ip),
                                    InfoVxlan::Link(i) => out.link = Some(*i),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn kind_of(l: &LinkMessage) -> LinkKind {
    let mut out = LinkKind {
        kind: String::new(),
        mtu: 0,
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::Mtu(m) => out.mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        out.kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The IPv4 address and prefix of an address message.
fn addr_of(a: &AddressMessage) -> Option<Ipv4Net> {
    if a.header.family != AddressFamily::Inet {
        return None;
    }
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let address = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    Ipv4Net::new(local.or(address)?, a.header.prefix_len).ok()
}

fn route_of(r: &RouteMessage, names: &HashMap<u32, String>) -> Option<RouteEntry> {
    if r.header.address_family != AddressFamily::Inet || r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut via = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(RouteEntry {
        dst: Ipv4Net::new(dst, r.header.destination_prefix_length).ok()?,
        via,
        dev: oif.and_then(|i| names.get(&i).cloned()).unwrap_or_default(),
        onlink: r.header.flags.contains(RouteFlags::Onlink),
    })
}

impl Kernel for NetlinkKernel {
    async fn underlay(&self, ip: Ipv4Addr, iface: Option<&str>) -> Result<Underlay, KernelError> {
        let links = self.links().await?;
        let addrs = self.addresses().await?;
        let local_nets: Vec<Ipv4Net> = addrs.iter().filter_map(addr_of).collect();
        let index = match iface {
            Some(name) => links
                .iter()
                .find(|l| link_name(l) == Some(name))
                .map(|l| l.header.index),
            None => addrs
                .iter()
                .find(|a| addr_of(a).map(|n| n.addr()) == Some(ip))
                .map(|a| a.header.index),
        };
        let link = index.and_then(|i| links.iter().find(|l| l.header.index == i));
        let Some(link) = link else {
            return Err(KernelError::NoUnderlay {
                ip,
                iface: iface.map(str::to_string),
            });
        };
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500);
        Ok(Underlay {
            name: link_name(link).unwrap_or_default().to_string(),
            index: link.header.index,
            mtu,
            local_nets,
        })
    }

    async fn vxlan_link(&self, name: &str) -> Result<Option<VxlanLink>, KernelError> {
        Ok(self
            .links()
            .await?
            .iter()
            .find(|l| link_name(l) == Some(name))
            .map(vxlan_of))
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<(), KernelError> {
        let msg = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.link)
            .port(spec.port)
            .local(spec.local)
            .learning(false)
            .mtu(spec.mtu)
            .address(spec.mac.0.to_vec())
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| KernelError::netlink(format!("creating vxlan device {}", spec.name), e))
    }

    async fn delete_link(&self, name: &str) -> Result<bool, KernelError> {
        let Some(idx) = self.index_of(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(idx).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(KernelError::netlink(format!("deleting device {name}"), e)),
        }
    }

    async fn ensure_address_up(&self, name: &str, addr: Ipv4Net) -> Result<bool, KernelError> {
        let links = self.links().await?;
        let Some(link) = links.iter().find(|l| link_name(l) == Some(name)) else {
            return Err(KernelError::NoDevice(name.to_string()));
        };
        let idx = link.header.index;
        let mut changed = false;
        let mut present = false;
        for a in self.addresses().await? {
            if a.header.index != idx {
                continue;
            }
            match addr_of(&a) {
                Some(n) if n == addr => present = true,
                Some(n) => {
                    self.handle.address().del(a).execute().await.map_err(|e| {
                        KernelError::netlink(format!("removing {n} from {name}"), e)
                    })?;
                    changed = true;
                }
                None => {}
            }
        }
        if !present {
            self.handle
                .address()
                .add(idx, IpAddr::V4(addr.addr()), addr.prefix_len())
                .execute()
                .await
                .map_err(|e| KernelError::netlink(format!("adding {addr} to {name}"), e))?;
            changed = true;
        }
        if !link.header.flags.contains(LinkFlags::Up) {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(|e| KernelError::netlink(format!("bringing {name} up"), e))?;
            changed = true;
        }
        Ok(changed)
    }

    async fn observe(&self, scope: &ObserveScope) -> Result<Observed, KernelError> {
        let links = self.links().await?;
        let names: HashMap<u32, String> = links
            .iter()
            .filter_map(|l| Some((l.header.index, link_name(l)?.to_string())))
            .collect();
        let mut out = Observed::default();

        let vx_index = scope.vxlan_dev.as_deref().and_then(|dev| {
            links
                .iter()
                .find(|l| link_name(l) == Some(dev))
                .map(|l| l.header.index)
        });
        if let Some(vx) = vx_index {
            let neighs: Vec<NeighbourMessage> = self
                .handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Inet)
                .execute()
                .try_collect()
                .await
                .map_err(|e| KernelError::netlink("listing neighbours", e))?;
            for n in neighs.iter().filter(|n| n.header.ifindex == vx) {
                let ip = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                });
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(m) => mac_of(m),
                    _ => None,
                });
                if let Some(ip) = ip {
                    out.neighs.push(NeighEntry {
                        ip,
                        mac,
                        permanent: n.header.state == NeighbourState::Permanent,
                    });
                }
            }

            let fdb: Vec<NeighbourMessage> = self
                .handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute()
                .try_collect()
                .await
                .map_err(|e| KernelError::netlink("listing fdb entries", e))?;
            for n in fdb
                .iter()
                .filter(|n| n.header.ifindex == vx && n.header.flags.contains(NeighbourFlags::Own))
            {
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(m) => mac_of(m),
                    _ => None,
                });
                // In AF_BRIDGE messages the kernel's NDA_DST decodes as raw bytes.
                let dst = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    _ => None,
                });
                if let Some(mac) = mac {
                    out.fdb.push(FdbEntry { mac, dst });
                }
            }
        }

        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| KernelError::netlink("listing routes", e))?;
        let cluster = scope.cluster.trunc();
        let own = scope.own_lease.trunc();
        out.routes = routes
            .iter()
            .filter_map(|r| route_of(r, &names))
            .filter(|r| {
                r.dst.prefix_len() >= cluster.prefix_len()
                    && cluster.contains(&r.dst.network())
                    && r.dst != own
            })
            .collect();
        Ok(out)
    }

    async fn apply(&self, op: &Op) -> Result<(), KernelError> {
        self.apply_inner(op).await
    }

    async fn link_kind(&self, name: &str) -> Result<Option<LinkKind>, KernelError> {
        Ok(self
            .links()
            .await?
            .iter()
            .find(|l| link_name(l) == Some(name))
            .map(kind_of))
    }

    async fn create_wireguard(&self, name: &str, mtu: u32) -> Result<(), KernelError> {
        let msg = rtnetlink::LinkWireguard::new(name).mtu(mtu).build();
        let context = format!("creating wireguard device {name}");
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            // "Unknown device type": no wireguard module (EOPNOTSUPP).
            Err(e) if errno(&e) == Some(EOPNOTSUPP) => {
                Err(KernelError::Unsupported { context, source: e })
            }
            Err(e) => Err(KernelError::netlink(context, e)),
        }
    }

    async fn enable_ip_forward(&self) -> Result<(), KernelError> {
        const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
        let io = |source| KernelError::Io {
            context: format!("setting {PATH}"),
            source,
        };
        // Read first: a read-only /proc is fine when forwarding is already on.
        if std::fs::read_to_string(PATH).map_err(io)?.trim() == "1" {
            return Ok(());
        }
        std::fs::write(PATH, "1\n").map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                KernelError::PermissionDenied {
                    context: format!("setting {PATH}"),
                }
            } else {
                io(e)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;
    use std::num::NonZeroI32;

    fn nl_err(errno: i32) -> rtnetlink::Error {
        let mut m = ErrorMessage::default();
        m.code = NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(m)
    }

    #[test]
    fn eperm_names_the_capability() {
        let e = KernelError::netlink("creating vxlan device smr.1", nl_err(EPERM));
        assert_eq!(
            e.to_string(),
            "creating vxlan device smr.1: permission denied: the agent needs CAP_NET_ADMIN"
        );
        assert!(matches!(
            KernelError::netlink("x", nl_err(ENODEV)),
            KernelError::Netlink { .. }
        ));
    }
}
