//! The kernel operations the overlay needs, behind a trait so the device and entry
//! reconciliation runs against [`FakeKernel`] in unit tests; [`super::netlink`] is the real one.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::desired::{Fdb, Mac, Neigh, Plan, Route, State, Subnet};
use super::OverlayError;

/// The VxLAN device as the overlay wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mtu: u32,
    pub mac: Mac,
}

/// A link as found, with its VxLAN parameters when it is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    /// `Some` only for a VxLAN device.
    pub vxlan: Option<VxlanParams>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
}

pub trait OverlayKernel {
    fn link(&mut self, name: &str) -> Result<Option<LinkState>, OverlayError>;
    /// Creates the device (down) with learning off.
    fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), OverlayError>;
    fn delete_link(&mut self, index: u32) -> Result<(), OverlayError>;
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), OverlayError>;
    fn set_up(&mut self, index: u32) -> Result<(), OverlayError>;
    /// The MTU of the link holding `ip`, if any link does.
    fn mtu_of_address(&mut self, ip: Ipv4Addr) -> Result<Option<u32>, OverlayError>;
    fn addrs(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, OverlayError>;
    fn add_addr(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), OverlayError>;
    fn del_addr(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), OverlayError>;
    /// The routes (with a gateway), permanent neighbours and FDB entries on the device.
    fn entries(&mut self, index: u32) -> Result<State, OverlayError>;
    fn add_route(&mut self, index: u32, r: &Route) -> Result<(), OverlayError>;
    fn del_route(&mut self, index: u32, r: &Route) -> Result<(), OverlayError>;
    fn set_neigh(&mut self, index: u32, n: &Neigh) -> Result<(), OverlayError>;
    fn del_neigh(&mut self, index: u32, n: &Neigh) -> Result<(), OverlayError>;
    fn set_fdb(&mut self, index: u32, f: &Fdb) -> Result<(), OverlayError>;
    fn del_fdb(&mut self, index: u32, f: &Fdb) -> Result<(), OverlayError>;
}

/// What [`ensure_device`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChange {
    Unchanged,
    /// Missing (for instance deleted by hand) and created.
    Created,
    /// Present with other VxLAN parameters, or not a VxLAN device: replaced.
    Replaced,
    /// MTU, state or address fixed in place.
    Repaired,
}

/// Makes the device exist as `spec` says, up, with `own.net/32` as its only IPv4 address.
/// Returns its index.
pub fn ensure_device(
    k: &mut dyn OverlayKernel,
    spec: &VxlanSpec,
    own: Subnet,
) -> Result<(u32, DeviceChange), OverlayError> {
    let mut change = DeviceChange::Unchanged;
    let existing = k.link(&spec.name)?;
    let matches = |l: &LinkState| match &l.vxlan {
        Some(v) => {
            v.vni == Some(spec.vni)
                && v.local == Some(spec.local)
                && v.port.is_none_or(|p| p == spec.port)
                && v.learning != Some(true)
        }
        None => false,
    };
    let link = match existing {
        Some(l) if matches(&l) => l,
        other => {
            change = if let Some(l) = other {
                k.delete_link(l.index)?;
                DeviceChange::Replaced
            } else {
                DeviceChange::Created
            };
            k.create_vxlan(spec)?;
            k.link(&spec.name)?.ok_or_else(|| OverlayError::Vanished {
                name: spec.name.clone(),
            })?
        }
    };
    let repaired = |c: DeviceChange| {
        if c == DeviceChange::Unchanged {
            DeviceChange::Repaired
        } else {
            c
        }
    };
    if link.mtu != spec.mtu {
        k.set_mtu(link.index, spec.mtu)?;
        change = repaired(change);
    }
    let want = (own.net, 32u8);
    let addrs = k.addrs(link.index)?;
    if !addrs.contains(&want) {
        k.add_addr(link.index, want.0, want.1)?;
        change = repaired(change);
    }
    // The device is the overlay's alone: any other address is a former podCIDR's (the node
    // was given a new one), which would keep answering for a range now another node's.
    // Removed after the new one is in place, so the node never has no source address.
    for (ip, prefix) in addrs.into_iter().filter(|a| *a != want) {
        k.del_addr(link.index, ip, prefix)?;
        change = repaired(change);
    }
    if !link.up {
        k.set_up(link.index)?;
        change = repaired(change);
    }
    Ok((link.index, change))
}

/// Applies `plan` on the device, removals first.
pub fn apply(k: &mut dyn OverlayKernel, index: u32, plan: &Plan) -> Result<(), OverlayError> {
    for r in &plan.del_routes {
        k.del_route(index, r)?;
    }
    for n in &plan.del_neighs {
        k.del_neigh(index, n)?;
    }
    for f in &plan.del_fdb {
        k.del_fdb(index, f)?;
    }
    // FDB and neighbour entries before the route, so the first packet routed finds them.
    for f in &plan.add_fdb {
        k.set_fdb(index, f)?;
    }
    for n in &plan.add_neighs {
        k.set_neigh(index, n)?;
    }
    for r in &plan.add_routes {
        k.add_route(index, r)?;
    }
    Ok(())
}

/// An in-memory kernel: links by name, each with its addresses and overlay entries.
#[derive(Debug, Default)]
pub struct FakeKernel {
    pub links: BTreeMap<String, FakeLink>,
    /// Address → MTU of the link holding it (the underlay).
    pub underlay: BTreeMap<Ipv4Addr, u32>,
    pub next_index: u32,
    /// Every mutating call, for tests that check nothing more than needed was done.
    pub calls: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FakeLink {
    pub state: LinkState,
    pub addrs: Vec<(Ipv4Addr, u8)>,
    pub entries: State,
}

impl FakeKernel {
    fn by_index(&mut self, index: u32) -> Result<&mut FakeLink, OverlayError> {
        self.links
            .values_mut()
            .find(|l| l.state.index == index)
            .ok_or(OverlayError::Fake {
                msg: format!("no link with index {index}"),
            })
    }
}

impl OverlayKernel for FakeKernel {
    fn link(&mut self, name: &str) -> Result<Option<LinkState>, OverlayError> {
        Ok(self.links.get(name).map(|l| l.state.clone()))
    }
    fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), OverlayError> {
        if self.links.contains_key(&spec.name) {
            return Err(OverlayError::Fake {
                msg: format!("{} exists", spec.name),
            });
        }
        self.next_index += 1;
        self.calls.push(format!("create {}", spec.name));
        self.links.insert(
            spec.name.clone(),
            FakeLink {
                state: LinkState {
                    index: self.next_index,
                    mac: Some(spec.mac),
                    mtu: spec.mtu,
                    up: false,
                    vxlan: Some(VxlanParams {
                        vni: Some(spec.vni),
                        local: Some(spec.local),
                        port: Some(spec.port),
                        learning: Some(false),
                    }),
                },
                addrs: vec![],
                entries: State::default(),
            },
        );
        Ok(())
    }
    fn delete_link(&mut self, index: u32) -> Result<(), OverlayError> {
        self.calls.push(format!("delete {index}"));
        self.links.retain(|_, l| l.state.index != index);
        Ok(())
    }
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), OverlayError> {
        self.calls.push(format!("mtu {index} {mtu}"));
        self.by_index(index)?.state.mtu = mtu;
        Ok(())
    }
    fn set_up(&mut self, index: u32) -> Result<(), OverlayError> {
        self.calls.push(format!("up {index}"));
        self.by_index(index)?.state.up = true;
        Ok(())
    }
    fn mtu_of_address(&mut self, ip: Ipv4Addr) -> Result<Option<u32>, OverlayError> {
        Ok(self.underlay.get(&ip).copied())
    }
    fn addrs(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, OverlayError> {
        Ok(self.by_index(index)?.addrs.clone())
    }
    fn add_addr(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), OverlayError> {
        self.calls.push(format!("addr {index} {ip}/{prefix}"));
        self.by_index(index)?.addrs.push((ip, prefix));
        Ok(())
    }
    fn del_addr(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), OverlayError> {
        self.calls.push(format!("addr del {index} {ip}/{prefix}"));
        self.by_index(index)?.addrs.retain(|a| *a != (ip, prefix));
        Ok(())
    }
    fn entries(&mut self, index: u32) -> Result<State, OverlayError> {
        Ok(self.by_index(index)?.entries.clone())
    }
    fn add_route(&mut self, index: u32, r: &Route) -> Result<(), OverlayError> {
        self.calls.push(format!("route add {}", r.dst));
        if !self.by_index(index)?.entries.routes.insert(*r) {
            return Err(OverlayError::Fake {
                msg: format!("route {} exists", r.dst),
            });
        }
        Ok(())
    }
    fn del_route(&mut self, index: u32, r: &Route) -> Result<(), OverlayError> {
        self.calls.push(format!("route del {}", r.dst));
        self.by_index(index)?.entries.routes.remove(r);
        Ok(())
    }
    fn set_neigh(&mut self, index: u32, n: &Neigh) -> Result<(), OverlayError> {
        self.calls.push(format!("neigh set {}", n.ip));
        let e = &mut self.by_index(index)?.entries;
        e.neighs.retain(|x| x.ip != n.ip);
        e.neighs.insert(*n);
        Ok(())
    }
    fn del_neigh(&mut self, index: u32, n: &Neigh) -> Result<(), OverlayError> {
        self.calls.push(format!("neigh del {}", n.ip));
        self.by_index(index)?
            .entries
            .neighs
            .retain(|x| x.ip != n.ip);
        Ok(())
    }
    fn set_fdb(&mut self, index: u32, f: &Fdb) -> Result<(), OverlayError> {
        self.calls.push(format!("fdb set {}", f.mac));
        let e = &mut self.by_index(index)?.entries;
        e.fdb.retain(|x| x.mac != f.mac);
        e.fdb.insert(*f);
        Ok(())
    }
    fn del_fdb(&mut self, index: u32, f: &Fdb) -> Result<(), OverlayError> {
        self.calls.push(format!("fdb del {}", f.mac));
        self.by_index(index)?.entries.fdb.remove(f);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::desired::{desired, diff, Peer};
    use super::*;

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "skiff.1".into(),
            vni: 1,
            port: 8472,
            local: "172.30.0.1".parse().unwrap(),
            mtu: 1450,
            mac: Mac::for_node("172.30.0.1".parse().unwrap()),
        }
    }

    fn own() -> Subnet {
        Subnet::parse("10.244.0.0/24").unwrap()
    }

    #[test]
    fn creates_then_leaves_a_good_device_alone() {
        let mut k = FakeKernel::default();
        let (idx, c) = ensure_device(&mut k, &spec(), own()).unwrap();
        assert_eq!(c, DeviceChange::Created);
        let l = &k.links["skiff.1"];
        assert!(l.state.up);
        assert_eq!(l.addrs, vec![("10.244.0.0".parse().unwrap(), 32)]);
        let calls = k.calls.len();
        let (idx2, c) = ensure_device(&mut k, &spec(), own()).unwrap();
        assert_eq!((idx2, c), (idx, DeviceChange::Unchanged));
        assert_eq!(k.calls.len(), calls);
    }

    #[test]
    fn repairs_mtu_down_state_and_address() {
        let mut k = FakeKernel::default();
        let (idx, _) = ensure_device(&mut k, &spec(), own()).unwrap();
        let l = k.links.get_mut("skiff.1").unwrap();
        l.state.up = false;
        l.state.mtu = 9000;
        l.addrs.clear();
        let (_, c) = ensure_device(&mut k, &spec(), own()).unwrap();
        assert_eq!(c, DeviceChange::Repaired);
        let l = &k.links["skiff.1"];
        assert_eq!((l.state.index, l.state.mtu, l.state.up), (idx, 1450, true));
        assert_eq!(l.addrs.len(), 1);
    }

    #[test]
    fn the_address_moves_with_the_pod_cidr() {
        let mut k = FakeKernel::default();
        let (idx, _) = ensure_device(&mut k, &spec(), own()).unwrap();
        // A stray address someone added by hand goes as well.
        k.links
            .get_mut("skiff.1")
            .unwrap()
            .addrs
            .push(("192.0.2.7".parse().unwrap(), 24));
        k.calls.clear();
        let moved = Subnet::parse("10.244.9.0/24").unwrap();
        let (idx2, c) = ensure_device(&mut k, &spec(), moved).unwrap();
        assert_eq!((idx2, c), (idx, DeviceChange::Repaired));
        assert_eq!(
            k.links["skiff.1"].addrs,
            vec![("10.244.9.0".parse().unwrap(), 32)]
        );
        // The new address first, so the node always has one to send from.
        assert_eq!(
            k.calls,
            vec![
                format!("addr {idx} 10.244.9.0/32"),
                format!("addr del {idx} 10.244.0.0/32"),
                format!("addr del {idx} 192.0.2.7/24"),
            ]
        );
        k.calls.clear();
        assert_eq!(
            ensure_device(&mut k, &spec(), moved).unwrap().1,
            DeviceChange::Unchanged
        );
        assert!(k.calls.is_empty());
    }

    #[test]
    fn replaces_a_device_with_other_parameters_and_recreates_a_deleted_one() {
        let mut k = FakeKernel::default();
        let (idx, _) = ensure_device(&mut k, &spec(), own()).unwrap();
        k.links
            .get_mut("skiff.1")
            .unwrap()
            .state
            .vxlan
            .as_mut()
            .unwrap()
            .vni = Some(7);
        let (idx2, c) = ensure_device(&mut k, &spec(), own()).unwrap();
        assert_eq!(c, DeviceChange::Replaced);
        assert_ne!(idx, idx2);
        k.links.get_mut("skiff.1").unwrap().state.vxlan = None;
        assert_eq!(
            ensure_device(&mut k, &spec(), own()).unwrap().1,
            DeviceChange::Replaced
        );
        k.links.clear();
        let (_, c) = ensure_device(&mut k, &spec(), own()).unwrap();
        assert_eq!(c, DeviceChange::Created);
        assert_eq!(k.links["skiff.1"].state.mac, Some(spec().mac));
    }

    #[test]
    fn apply_converges_and_removes_a_departed_peer() {
        let mut k = FakeKernel::default();
        let (idx, _) = ensure_device(&mut k, &spec(), own()).unwrap();
        let peer = |n: &str, c: &str, m: u8, ip: &str| Peer {
            name: n.into(),
            subnet: Subnet::parse(c).unwrap(),
            vtep_mac: Mac([0x0e, 0x5f, 0, 0, 0, m]),
            public_ip: ip.parse().unwrap(),
        };
        let two = desired(
            &[
                peer("b", "10.244.1.0/24", 2, "172.30.0.2"),
                peer("c", "10.244.2.0/24", 3, "172.30.0.3"),
            ],
            own(),
        )
        .0;
        let plan = diff(&two, &k.entries(idx).unwrap());
        apply(&mut k, idx, &plan).unwrap();
        assert_eq!(k.entries(idx).unwrap(), two);
        assert!(diff(&two, &k.entries(idx).unwrap()).is_empty());
        let one = desired(&[peer("b", "10.244.1.0/24", 2, "172.30.0.2")], own()).0;
        k.calls.clear();
        let plan = diff(&one, &k.entries(idx).unwrap());
        apply(&mut k, idx, &plan).unwrap();
        assert_eq!(k.entries(idx).unwrap(), one);
        assert_eq!(
            k.calls,
            vec![
                "route del 10.244.2.0/24",
                "neigh del 10.244.2.0",
                "fdb del 0e:5f:00:00:00:03"
            ]
        );
    }
}
