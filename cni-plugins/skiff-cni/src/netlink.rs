//! Synchronous rtnetlink: the few link, address and route operations the
//! plugins need, behind the [`NetOps`] trait so plugin logic can run against a
//! fake in unit tests.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::cidr::Cidr;

/// A failed netlink operation, with what was attempted and on which interface.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op} {target}: {source}")]
    Request {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("decoding netlink reply to {op}: {msg}")]
    Decode { op: &'static str, msg: String },
}

impl NetlinkError {
    /// The errno of a failed request, if it was one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What the plugins need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub is_bridge: bool,
    pub master: Option<u32>,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
}

/// A route as installed on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledRoute {
    pub dst: Cidr,
    pub gw: Option<IpAddr>,
}

/// Kernel network operations within one network namespace.
pub trait NetOps {
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError>;
    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError>;
    fn rename(&mut self, index: u32, name: &str) -> Result<(), NetlinkError>;
    fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<(), NetlinkError>;
    /// Creates a veth pair: `host` here, `peer` directly inside the namespace `peer_netns`.
    fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: RawFd,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError>;
    fn set_up(&mut self, index: u32, up: bool) -> Result<(), NetlinkError>;
    fn set_promisc(&mut self, index: u32) -> Result<(), NetlinkError>;
    fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError>;
    fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError>;
    fn del_link(&mut self, index: u32) -> Result<(), NetlinkError>;
    fn addrs(&mut self, index: u32) -> Result<Vec<Cidr>, NetlinkError>;
    fn add_addr(&mut self, index: u32, addr: Cidr) -> Result<(), NetlinkError>;
    fn routes(&mut self, index: u32) -> Result<Vec<InstalledRoute>, NetlinkError>;
    fn add_route(&mut self, index: u32, dst: Cidr, gw: Option<IpAddr>) -> Result<(), NetlinkError>;
}

/// A NETLINK_ROUTE socket bound to the namespace it was opened in.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Netlink {
            sock,
            seq: 0,
            buf: vec![0u8; 65536],
        })
    }

    /// Sends one request and collects the replies (for dumps) or the ACK. Public so that
    /// other rtnetlink users (the agent's overlay: VxLAN, neighbours, FDB) share this socket
    /// code instead of keeping a second copy.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        target: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        let req_err = |source| NetlinkError::Request {
            op,
            target: target.to_string(),
            source,
        };
        self.sock.send(&out, 0).map_err(req_err)?;
        let mut replies = Vec::new();
        loop {
            let n = {
                let mut slice = &mut self.buf[..];
                self.sock.recv(&mut slice, 0).map_err(req_err)?
            };
            let mut off = 0usize;
            while off < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| NetlinkError::Decode {
                    op,
                    msg: e.to_string(),
                })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(c) => {
                            return Err(req_err(io::Error::from_raw_os_error(-c.get())));
                        }
                    },
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                    }
                    _ => {}
                }
            }
        }
    }

    fn set_link(
        &mut self,
        msg: LinkMessage,
        op: &'static str,
        idx: u32,
    ) -> Result<(), NetlinkError> {
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            op,
            &format!("ifindex {idx}"),
        )
        .map(drop)
    }
}

fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_from_message(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: String::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        is_bridge: false,
        master: None,
        peer_index: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = mac_string(b),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Controller(v) => l.master = Some(*v),
            LinkAttribute::Link(v) => l.peer_index = Some(*v),
            LinkAttribute::LinkInfo(infos) => {
                l.is_bridge = infos
                    .iter()
                    .any(|i| matches!(i, NlLinkInfo::Kind(InfoKind::Bridge)));
            }
            _ => {}
        }
    }
    l
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

impl NetOps for Netlink {
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0, "get link", name) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_message(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(
            RouteNetlinkMessage::GetLink(m),
            0,
            "get link",
            &format!("ifindex {index}"),
        ) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_message(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn rename(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.set_link(m, "rename link", index)
    }

    fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            "create bridge",
            name,
        )
        .map(drop)
    }

    fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: RawFd,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        if let Some(mtu) = mtu {
            p.attributes.push(LinkAttribute::Mtu(mtu));
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Veth),
            NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            "create veth pair",
            &format!("{host}/{peer}"),
        )
        .map(drop)
    }

    fn set_up(&mut self, index: u32, up: bool) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        self.set_link(m, if up { "set link up" } else { "set link down" }, index)
    }

    fn set_promisc(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Promisc;
        m.header.flags = LinkFlags::Promisc;
        self.set_link(m, "set promisc", index)
    }

    fn set_master(&mut self, index: u32, master: u32) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Controller(master));
        self.set_link(m, "set master", index)
    }

    fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::PortKind(InfoPortKind::Bridge),
            NlLinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            0,
            "set hairpin mode",
            &format!("ifindex {index}"),
        )
        .map(drop)
    }

    fn del_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(
            RouteNetlinkMessage::DelLink(m),
            0,
            "delete link",
            &format!("ifindex {index}"),
        )
        .map(drop)
    }

    fn addrs(&mut self, index: u32) -> Result<Vec<Cidr>, NetlinkError> {
        let m = AddressMessage::default();
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_DUMP,
            "list addresses",
            &format!("ifindex {index}"),
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                out.push(Cidr {
                    addr: ip,
                    prefix: a.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    fn add_addr(&mut self, index: u32, addr: Cidr) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(addr.addr);
        m.header.prefix_len = addr.prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr));
        m.attributes.push(AddressAttribute::Address(addr.addr));
        if addr.addr.is_ipv6() {
            // The IPAM plugin made the address unique: skip duplicate address
            // detection, which would keep it unusable for a second or more.
            m.header.flags = AddressHeaderFlags::Nodad;
        }
        if let (IpAddr::V4(_), true) = (addr.addr, addr.prefix < 31) {
            if let IpAddr::V4(b) = addr.last() {
                m.attributes.push(AddressAttribute::Broadcast(b));
            }
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            "add address",
            &format!("{addr} on ifindex {index}"),
        )
        .map(drop)
    }

    fn routes(&mut self, index: u32) -> Result<Vec<InstalledRoute>, NetlinkError> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = fam;
            let replies = self.request(
                RouteNetlinkMessage::GetRoute(m),
                NLM_F_DUMP,
                "list routes",
                &format!("ifindex {index}"),
            )?;
            for r in replies {
                let RouteNetlinkMessage::NewRoute(rt) = r else {
                    continue;
                };
                let oif = rt.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(o) => Some(*o),
                    _ => None,
                });
                if oif != Some(index) {
                    continue;
                }
                let dst = rt.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => route_ip(d),
                    _ => None,
                });
                let gw = rt.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => route_ip(g),
                    _ => None,
                });
                let unspecified: IpAddr = if fam == AddressFamily::Inet {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                };
                out.push(InstalledRoute {
                    dst: Cidr {
                        addr: dst.unwrap_or(unspecified),
                        prefix: rt.header.destination_prefix_length,
                    },
                    gw,
                });
            }
        }
        Ok(out)
    }

    fn add_route(&mut self, index: u32, dst: Cidr, gw: Option<IpAddr>) -> Result<(), NetlinkError> {
        let dst = dst.masked();
        let mut m = RouteMessage::default();
        m.header.address_family = family_of(dst.addr);
        m.header.destination_prefix_length = dst.prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        m.header.kind = RouteType::Unicast;
        if dst.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(route_addr(dst.addr)));
        }
        if let Some(gw) = gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        let target = match gw {
            Some(g) => format!("{dst} via {g} on ifindex {index}"),
            None => format!("{dst} on ifindex {index}"),
        };
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
            "add route",
            &target,
        )
        .map(drop)
    }
}
