//! [`OverlayKernel`] over rtnetlink, on the CNI plugins' netlink socket code (skiff-cni's
//! [`Netlink`]): VxLAN link, addresses, onlink routes, permanent neighbours and VxLAN FDB.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use skiff_cni::cidr::Cidr;
use skiff_cni::netlink::{NetOps, Netlink, NetlinkError};

use super::desired::{Fdb, Mac, Neigh, Route, State, Subnet};
use super::kernel::{LinkState, OverlayKernel, VxlanParams, VxlanSpec};
use super::OverlayError;

/// The real kernel, in the namespace the socket was opened in.
pub struct NetlinkKernel {
    nl: Netlink,
}

impl NetlinkKernel {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<NetlinkKernel, OverlayError> {
        Ok(NetlinkKernel {
            nl: Netlink::open().map_err(nl("open netlink socket"))?,
        })
    }

    /// Uses a socket opened elsewhere (for instance inside another network namespace).
    pub fn from_socket(nl: Netlink) -> NetlinkKernel {
        NetlinkKernel { nl }
    }

    fn req(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        target: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, OverlayError> {
        self.nl.request(msg, flags, op, target).map_err(nl(op))
    }
}

fn nl(op: &'static str) -> impl Fn(NetlinkError) -> OverlayError {
    move |source| OverlayError::Netlink { op, source }
}

fn ignore_errno<T: Default>(r: Result<T, OverlayError>, errnos: &[i32]) -> Result<T, OverlayError> {
    match r {
        Err(OverlayError::Netlink { source, .. })
            if source.errno().is_some_and(|e| errnos.contains(&e)) =>
        {
            Ok(T::default())
        }
        other => other,
    }
}

fn mac_of(b: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(b).ok().map(Mac)
}

fn link_state(m: &LinkMessage) -> LinkState {
    let mut s = LinkState {
        index: m.header.index,
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        vxlan: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(b) => s.mac = mac_of(b),
            LinkAttribute::Mtu(v) => s.mtu = *v,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(v)) = i {
                        let mut p = VxlanParams {
                            vni: None,
                            local: None,
                            port: None,
                            learning: None,
                        };
                        for x in v {
                            match x {
                                InfoVxlan::Id(id) => p.vni = Some(*id),
                                InfoVxlan::Local(ip) => p.local = Some(*ip),
                                InfoVxlan::Port(port) => p.port = Some(*port),
                                InfoVxlan::Learning(l) => p.learning = Some(*l),
                                _ => {}
                            }
                        }
                        s.vxlan = Some(p);
                    }
                }
            }
            _ => {}
        }
    }
    s
}

fn neigh_msg(index: u32, family: AddressFamily) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unicast;
    m
}

fn route_msg(r: &Route, index: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = r.dst.prefix;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    // The gateway is the peer's podCIDR network address, which no local subnet covers: onlink
    // tells the kernel it is reachable on the device anyway (resolved by the neighbour entry).
    m.header.flags = RouteFlags::Onlink;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(r.dst.net)));
    m.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(r.gw)));
    m.attributes.push(RouteAttribute::Oif(index));
    m
}

impl OverlayKernel for NetlinkKernel {
    fn link(&mut self, name: &str) -> Result<Option<LinkState>, OverlayError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let r = self.req(RouteNetlinkMessage::GetLink(m), 0, "get link", name);
        let replies = ignore_errno(r, &[libc::ENODEV])?;
        Ok(replies.iter().find_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => Some(link_state(l)),
            _ => None,
        }))
    }

    fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), OverlayError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        m.attributes.push(LinkAttribute::Mtu(spec.mtu));
        m.attributes
            .push(LinkAttribute::Address(spec.mac.0.to_vec()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                InfoVxlan::Local(spec.local),
                InfoVxlan::Port(spec.port),
                // Peers are programmed from the Node list; learning from traffic would let a
                // stale or spoofed source override them.
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.req(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            "create vxlan device",
            &spec.name,
        )
        .map(drop)
    }

    fn delete_link(&mut self, index: u32) -> Result<(), OverlayError> {
        self.nl.del_link(index).map_err(nl("delete link"))
    }

    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), OverlayError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.req(
            RouteNetlinkMessage::SetLink(m),
            0,
            "set mtu",
            &format!("ifindex {index}"),
        )
        .map(drop)
    }

    fn set_up(&mut self, index: u32) -> Result<(), OverlayError> {
        self.nl.set_up(index, true).map_err(nl("set link up"))
    }

    fn mtu_of_address(&mut self, ip: Ipv4Addr) -> Result<Option<u32>, OverlayError> {
        let links = self.req(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            "list links",
            "all",
        )?;
        for l in links {
            let RouteNetlinkMessage::NewLink(l) = l else {
                continue;
            };
            let addrs = self
                .nl
                .addrs(l.header.index)
                .map_err(nl("list addresses"))?;
            if addrs.iter().any(|a| a.addr == IpAddr::V4(ip)) {
                return Ok(Some(link_state(&l).mtu));
            }
        }
        Ok(None)
    }

    fn addrs(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, OverlayError> {
        Ok(self
            .nl
            .addrs(index)
            .map_err(nl("list addresses"))?
            .into_iter()
            .filter_map(|c| match c.addr {
                IpAddr::V4(v) => Some((v, c.prefix)),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    fn add_addr(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), OverlayError> {
        let c = Cidr {
            addr: IpAddr::V4(ip),
            prefix,
        };
        ignore_errno(
            self.nl.add_addr(index, c).map_err(nl("add address")),
            &[libc::EEXIST],
        )
    }

    fn del_addr(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), OverlayError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        // Gone already (removed by hand between the listing and now) is what was wanted.
        ignore_errno(
            self.req(
                RouteNetlinkMessage::DelAddress(m),
                0,
                "delete address",
                &format!("{ip}/{prefix} on ifindex {index}"),
            )
            .map(drop),
            &[libc::EADDRNOTAVAIL],
        )
    }

    fn entries(&mut self, index: u32) -> Result<State, OverlayError> {
        let mut s = State::default();
        for r in self.nl.routes(index).map_err(nl("list routes"))? {
            if let (IpAddr::V4(dst), Some(IpAddr::V4(gw))) = (r.dst.addr, r.gw) {
                s.routes.insert(Route {
                    dst: Subnet {
                        net: dst,
                        prefix: r.dst.prefix,
                    },
                    gw,
                });
            }
        }
        for family in [AddressFamily::Inet, AddressFamily::Bridge] {
            let mut q = NeighbourMessage::default();
            q.header.family = family;
            let replies = self.req(
                RouteNetlinkMessage::GetNeighbour(q),
                NLM_F_DUMP,
                "list neighbours",
                &format!("ifindex {index}"),
            )?;
            for r in replies {
                let RouteNetlinkMessage::NewNeighbour(n) = r else {
                    continue;
                };
                if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
                    continue;
                }
                let mac = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLocalAddress(b) => mac_of(b),
                    _ => None,
                });
                let dst = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(*v),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    _ => None,
                });
                let (Some(mac), Some(ip)) = (mac, dst) else {
                    continue;
                };
                if family == AddressFamily::Inet {
                    s.neighs.insert(Neigh { ip, mac });
                } else {
                    s.fdb.insert(Fdb { mac, dst: ip });
                }
            }
        }
        Ok(s)
    }

    fn add_route(&mut self, index: u32, r: &Route) -> Result<(), OverlayError> {
        let m = route_msg(r, index);
        self.req(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            "add route",
            &format!("{} via {} onlink", r.dst, r.gw),
        )
        .map(drop)
    }

    fn del_route(&mut self, index: u32, r: &Route) -> Result<(), OverlayError> {
        let m = route_msg(r, index);
        let res = self.req(
            RouteNetlinkMessage::DelRoute(m),
            0,
            "delete route",
            &format!("{} via {}", r.dst, r.gw),
        );
        ignore_errno(res.map(drop), &[libc::ESRCH])
    }

    fn set_neigh(&mut self, index: u32, n: &Neigh) -> Result<(), OverlayError> {
        let mut m = neigh_msg(index, AddressFamily::Inet);
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                n.ip,
            )));
        m.attributes
            .push(NeighbourAttribute::LinkLocalAddress(n.mac.0.to_vec()));
        self.req(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            "set neighbour",
            &format!("{} lladdr {}", n.ip, n.mac),
        )
        .map(drop)
    }

    fn del_neigh(&mut self, index: u32, n: &Neigh) -> Result<(), OverlayError> {
        let mut m = neigh_msg(index, AddressFamily::Inet);
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                n.ip,
            )));
        let res = self.req(
            RouteNetlinkMessage::DelNeighbour(m),
            0,
            "delete neighbour",
            &n.ip.to_string(),
        );
        ignore_errno(res.map(drop), &[libc::ENOENT])
    }

    fn set_fdb(&mut self, index: u32, f: &Fdb) -> Result<(), OverlayError> {
        let mut m = neigh_msg(index, AddressFamily::Bridge);
        // NTF_SELF: the entry belongs to the VxLAN device's own table, not a bridge above it.
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLocalAddress(f.mac.0.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                f.dst,
            )));
        self.req(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            "set fdb entry",
            &format!("{} dst {}", f.mac, f.dst),
        )
        .map(drop)
    }

    fn del_fdb(&mut self, index: u32, f: &Fdb) -> Result<(), OverlayError> {
        let mut m = neigh_msg(index, AddressFamily::Bridge);
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLocalAddress(f.mac.0.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                f.dst,
            )));
        let res = self.req(
            RouteNetlinkMessage::DelNeighbour(m),
            0,
            "delete fdb entry",
            &format!("{} dst {}", f.mac, f.dst),
        );
        ignore_errno(res.map(drop), &[libc::ENOENT])
    }
}
