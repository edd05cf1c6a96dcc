//! Unit tests of the bridge logic against in-memory fakes of netlink, IPAM
//! and the firewall.
use super::*;
use crate::netlink::InstalledRoute;
use crate::spec::IpConfig;
use serde_json::json;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// veth peers created by the host fake, to appear in the container fake,
/// and the (host index → container index) pairs once they have.
#[derive(Default)]
struct Shared {
    pending: Vec<(String, Option<u32>, u32)>,
    pairs: HashMap<u32, u32>,
}
type Pending = Rc<RefCell<Shared>>;

/// An in-memory namespace: links, addresses and routes.
#[derive(Default)]
struct FakeNs {
    links: HashMap<String, Link>,
    addrs: HashMap<u32, Vec<Cidr>>,
    routes: HashMap<u32, Vec<InstalledRoute>>,
    next: u32,
    hairpin: HashSet<u32>,
    fail_route: bool,
    pending: Pending,
    /// True for the container side: it absorbs pending peers.
    container: bool,
}

impl FakeNs {
    fn new_link(&mut self, name: &str, bridge: bool, mtu: u32) -> Link {
        self.next += 1;
        let l = Link {
            index: self.next + 1,
            name: name.into(),
            mac: format!("02:00:00:00:00:{:02x}", self.next),
            mtu,
            up: false,
            is_bridge: bridge,
            master: None,
            peer_index: None,
        };
        self.links.insert(name.into(), l.clone());
        l
    }
    fn absorb(&mut self) {
        if !self.container {
            return;
        }
        let peers: Vec<_> = self.pending.borrow_mut().pending.drain(..).collect();
        for (name, mtu, host_idx) in peers {
            let l = self.new_link(&name, false, mtu.unwrap_or(1500));
            self.links.get_mut(&name).unwrap().peer_index = Some(host_idx);
            self.pending.borrow_mut().pairs.insert(host_idx, l.index);
        }
    }
    fn with_peer(&self, mut l: Link) -> Link {
        if !self.container {
            if let Some(c) = self.pending.borrow().pairs.get(&l.index) {
                l.peer_index = Some(*c);
            }
        }
        l
    }
    fn by_index(&mut self, i: u32) -> Result<&mut Link, NetlinkError> {
        self.links
            .values_mut()
            .find(|l| l.index == i)
            .ok_or(errno(libc::ENODEV))
    }
}

fn errno(e: i32) -> NetlinkError {
    NetlinkError::Request {
        op: "fake",
        target: String::new(),
        source: std::io::Error::from_raw_os_error(e),
    }
}

impl NetOps for FakeNs {
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        self.absorb();
        Ok(self.links.get(name).cloned().map(|l| self.with_peer(l)))
    }
    fn link_by_index(&mut self, i: u32) -> Result<Option<Link>, NetlinkError> {
        self.absorb();
        let l = self.links.values().find(|l| l.index == i).cloned();
        Ok(l.map(|l| self.with_peer(l)))
    }
    fn rename(&mut self, i: u32, name: &str) -> Result<(), NetlinkError> {
        let old = self.by_index(i)?.name.clone();
        let mut l = self.links.remove(&old).unwrap();
        l.name = name.into();
        self.links.insert(name.into(), l);
        Ok(())
    }
    fn add_bridge(&mut self, name: &str, mtu: Option<u32>) -> Result<(), NetlinkError> {
        if self.links.contains_key(name) {
            return Err(errno(libc::EEXIST));
        }
        self.new_link(name, true, mtu.unwrap_or(1500));
        Ok(())
    }
    fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        _fd: i32,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let h = self.new_link(host, false, mtu.unwrap_or(1500));
        self.pending
            .borrow_mut()
            .pending
            .push((peer.into(), mtu, h.index));
        Ok(())
    }
    fn set_up(&mut self, i: u32, up: bool) -> Result<(), NetlinkError> {
        self.by_index(i)?.up = up;
        Ok(())
    }
    fn set_promisc(&mut self, i: u32) -> Result<(), NetlinkError> {
        self.by_index(i).map(drop)
    }
    fn set_master(&mut self, i: u32, m: u32) -> Result<(), NetlinkError> {
        self.by_index(i)?.master = Some(m);
        Ok(())
    }
    fn set_hairpin(&mut self, i: u32, on: bool) -> Result<(), NetlinkError> {
        if on {
            self.hairpin.insert(i);
        }
        Ok(())
    }
    fn del_link(&mut self, i: u32) -> Result<(), NetlinkError> {
        let name = self.by_index(i)?.name.clone();
        self.links.remove(&name);
        self.addrs.remove(&i);
        self.routes.remove(&i);
        Ok(())
    }
    fn addrs(&mut self, i: u32) -> Result<Vec<Cidr>, NetlinkError> {
        Ok(self.addrs.get(&i).cloned().unwrap_or_default())
    }
    fn add_addr(&mut self, i: u32, a: Cidr) -> Result<(), NetlinkError> {
        let v = self.addrs.entry(i).or_default();
        if v.contains(&a) {
            return Err(errno(libc::EEXIST));
        }
        v.push(a);
        Ok(())
    }
    fn routes(&mut self, i: u32) -> Result<Vec<InstalledRoute>, NetlinkError> {
        Ok(self.routes.get(&i).cloned().unwrap_or_default())
    }
    fn add_route(&mut self, i: u32, dst: Cidr, gw: Option<IpAddr>) -> Result<(), NetlinkError> {
        if self.fail_route {
            return Err(errno(libc::ENETUNREACH));
        }
        self.routes
            .entry(i)
            .or_default()
            .push(InstalledRoute { dst, gw });
        Ok(())
    }
}

/// A fake IPAM handing out one fixed address.
#[derive(Default)]
struct FakeIpam {
    allocated: bool,
    dels: u32,
    fail: Option<u32>,
}

impl Ipam for FakeIpam {
    fn add(&mut self) -> Result<CniResult, CniError> {
        if let Some(c) = self.fail {
            return Err(CniError::new(c, "fake ipam failure"));
        }
        self.allocated = true;
        Ok(CniResult {
            ips: vec![IpConfig {
                interface: None,
                address: "10.244.0.5/24".parse().unwrap(),
                gateway: Some("10.244.0.1".parse().unwrap()),
            }],
            routes: vec![Route {
                dst: "10.96.0.0/12".parse().unwrap(),
                gw: None,
                mtu: None,
                priority: None,
            }],
            ..Default::default()
        })
    }
    fn del(&mut self) -> Result<(), CniError> {
        self.allocated = false;
        self.dels += 1;
        Ok(())
    }
    fn check(&mut self) -> Result<(), CniError> {
        if self.allocated {
            Ok(())
        } else {
            Err(CniError::new(code::CHECK_MISMATCH, "not allocated"))
        }
    }
    fn gc(&mut self) -> Result<(), CniError> {
        Ok(())
    }
    fn status(&mut self) -> Result<(), CniError> {
        Ok(())
    }
}

#[derive(Default)]
struct FakeFw {
    masq: HashMap<String, Vec<Cidr>>,
    forwarding: bool,
}

impl Firewall for FakeFw {
    fn add_masq(&mut self, n: &str, id: &str, a: &[Cidr]) -> Result<(), CniError> {
        self.masq.insert(format!("{n}/{id}"), a.to_vec());
        Ok(())
    }
    fn del_masq(&mut self, n: &str, id: &str, _known: Option<&[Cidr]>) -> Result<(), CniError> {
        self.masq.remove(&format!("{n}/{id}"));
        Ok(())
    }
    fn gc_masq(&mut self, _n: &str, _k: &HashSet<String>) -> Result<(), CniError> {
        Ok(())
    }
    fn enable_forwarding(&mut self, v4: bool, _v6: bool) -> Result<(), CniError> {
        self.forwarding |= v4;
        Ok(())
    }
}

#[derive(Default)]
struct FakeReaper(Vec<(u32, String)>);

impl Reaper for FakeReaper {
    fn delete_later(&mut self, index: u32, name: &str) -> Result<(), CniError> {
        self.0.push((index, name.into()));
        Ok(())
    }
}

fn env() -> Env {
    Env {
        command: Command::Add,
        container_id: "c1".into(),
        netns: "/run/netns/c1".into(),
        ifname: "eth0".into(),
        args: vec![],
        path: vec![],
    }
}

fn conf(extra: Value) -> BridgeConf {
    let mut v = json!({"cniVersion": "1.0.0", "name": "pods", "type": "bridge", "bridge": "skiff0",
        "ipam": {"type": "host-local"}});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    BridgeConf::parse(&v).unwrap()
}

struct World {
    host: FakeNs,
    cont: FakeNs,
    ipam: FakeIpam,
    fw: FakeFw,
}

impl World {
    fn new() -> World {
        let pending = Pending::default();
        World {
            host: FakeNs {
                pending: pending.clone(),
                ..Default::default()
            },
            cont: FakeNs {
                pending,
                container: true,
                ..Default::default()
            },
            ipam: FakeIpam::default(),
            fw: FakeFw::default(),
        }
    }
    fn add(&mut self, c: &BridgeConf) -> Result<CniResult, CniError> {
        add(
            &env(),
            c,
            &mut self.host,
            &mut self.cont,
            -1,
            &mut self.ipam,
            &mut self.fw,
        )
    }
}

#[test]
fn add_builds_bridge_veth_addresses_routes() {
    let mut w = World::new();
    let c =
        conf(json!({"isDefaultGateway": true, "ipMasq": true, "hairpinMode": true, "mtu": 1400}));
    let r = w.add(&c).unwrap();
    let br = w.host.links["skiff0"].clone();
    assert!(br.is_bridge && br.up);
    assert_eq!(br.mtu, 1400);
    assert_eq!(r.interfaces.len(), 3);
    assert_eq!(r.interfaces[0].name, "skiff0");
    assert!(r.interfaces[1].name.starts_with("veth"));
    let hv = w.host.links[&r.interfaces[1].name].clone();
    assert_eq!(hv.master, Some(br.index));
    assert!(hv.up && w.host.hairpin.contains(&hv.index));
    assert_eq!(r.interfaces[2].sandbox, "/run/netns/c1");
    let eth0 = w.cont.links["eth0"].clone();
    assert!(eth0.up);
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(
        w.cont.addrs[&eth0.index],
        vec!["10.244.0.5/24".parse().unwrap()]
    );
    // IPAM route with the gateway filled in, plus the default route.
    let routes = &w.cont.routes[&eth0.index];
    assert!(routes
        .iter()
        .any(|x| x.dst.to_string() == "10.96.0.0/12" && x.gw.unwrap().to_string() == "10.244.0.1"));
    assert!(routes.iter().any(|x| x.dst.to_string() == "0.0.0.0/0"));
    assert_eq!(r.routes.len(), 2);
    assert_eq!(r.ips[0].interface, Some(2));
    // isDefaultGateway implies the gateway address on the bridge.
    assert_eq!(
        w.host.addrs[&br.index],
        vec!["10.244.0.1/24".parse().unwrap()]
    );
    assert!(w.fw.forwarding);
    assert!(w.fw.masq.contains_key("pods/c1"));
}

#[test]
fn second_add_reuses_bridge_and_gateway() {
    let mut w = World::new();
    let c = conf(json!({"isGateway": true}));
    w.add(&c).unwrap();
    w.cont = FakeNs {
        pending: w.host.pending.clone(),
        container: true,
        ..Default::default()
    };
    w.add(&c).unwrap();
    let br = w.host.links["skiff0"].clone();
    assert_eq!(w.host.addrs[&br.index].len(), 1);
    assert_eq!(w.host.links.values().filter(|l| l.is_bridge).count(), 1);
}

#[test]
fn existing_ifname_is_refused_without_side_effects() {
    let mut w = World::new();
    w.cont.new_link("eth0", false, 1500);
    let e = w.add(&conf(json!({}))).unwrap_err();
    assert_eq!(e.code, code::INTERFACE_EXISTS);
    assert!(!w.ipam.allocated);
    assert!(!w.host.links.keys().any(|k| k.starts_with("veth")));
}

#[test]
fn non_bridge_with_bridge_name_is_invalid_config() {
    let mut w = World::new();
    w.host.new_link("skiff0", false, 1500);
    assert_eq!(
        w.add(&conf(json!({}))).unwrap_err().code,
        code::INVALID_CONFIG
    );
}

#[test]
fn ipam_failure_removes_veth_and_keeps_code() {
    let mut w = World::new();
    w.ipam.fail = Some(code::RANGE_EXHAUSTED);
    let e = w.add(&conf(json!({}))).unwrap_err();
    assert_eq!(e.code, code::RANGE_EXHAUSTED);
    assert!(!w.cont.links.contains_key("eth0"));
}

#[test]
fn late_failure_releases_ip_and_veth() {
    let mut w = World::new();
    w.cont.fail_route = true;
    let e = w.add(&conf(json!({"ipMasq": true}))).unwrap_err();
    assert_eq!(e.code, code::NETLINK);
    assert!(!w.ipam.allocated);
    assert_eq!(w.ipam.dels, 1);
    assert!(!w.cont.links.contains_key("eth0"));
    assert!(w.fw.masq.is_empty());
}

#[test]
fn del_is_idempotent_and_works_without_netns() {
    let mut w = World::new();
    let mut r = FakeReaper::default();
    let c = conf(json!({"ipMasq": true, "syncTeardown": true}));
    w.add(&c).unwrap();
    del(
        &env(),
        &c,
        &mut w.host,
        Some(&mut w.cont),
        &mut w.ipam,
        &mut w.fw,
        &mut r,
    )
    .unwrap();
    assert!(!w.cont.links.contains_key("eth0"));
    assert!(w.fw.masq.is_empty());
    del(
        &env(),
        &c,
        &mut w.host,
        Some(&mut w.cont),
        &mut w.ipam,
        &mut w.fw,
        &mut r,
    )
    .unwrap();
    del(
        &env(),
        &c,
        &mut w.host,
        None,
        &mut w.ipam,
        &mut w.fw,
        &mut r,
    )
    .unwrap();
    assert_eq!(w.ipam.dels, 3);
    assert!(r.0.is_empty());
}

#[test]
fn del_keeps_going_after_an_ipam_failure() {
    let mut w = World::new();
    let mut r = FakeReaper::default();
    let c = conf(json!({"ipMasq": true, "syncTeardown": true}));
    w.add(&c).unwrap();
    struct Failing;
    impl Ipam for Failing {
        fn add(&mut self) -> Result<CniResult, CniError> {
            unreachable!("DEL only")
        }
        fn del(&mut self) -> Result<(), CniError> {
            Err(CniError::new(code::TRY_AGAIN_LATER, "store busy"))
        }
        fn check(&mut self) -> Result<(), CniError> {
            Ok(())
        }
        fn gc(&mut self) -> Result<(), CniError> {
            Ok(())
        }
        fn status(&mut self) -> Result<(), CniError> {
            Ok(())
        }
    }
    let e = del(
        &env(),
        &c,
        &mut w.host,
        Some(&mut w.cont),
        &mut Failing,
        &mut w.fw,
        &mut r,
    )
    .unwrap_err();
    assert_eq!(e.code, code::TRY_AGAIN_LATER);
    assert!(!w.cont.links.contains_key("eth0"), "link removed anyway");
    assert!(w.fw.masq.is_empty(), "rules removed anyway");
}

#[test]
fn del_defers_pair_deletion_to_reaper() {
    let mut w = World::new();
    let mut r = FakeReaper::default();
    let c = conf(json!({"ipMasq": true}));
    let res = w.add(&c).unwrap();
    del(
        &env(),
        &c,
        &mut w.host,
        Some(&mut w.cont),
        &mut w.ipam,
        &mut w.fw,
        &mut r,
    )
    .unwrap();
    // eth0's name is free at once, the interface is down, the host end is queued.
    assert!(!w.cont.links.contains_key("eth0"));
    let parked: Vec<&Link> = w
        .cont
        .links
        .values()
        .filter(|l| l.name.starts_with("skdel"))
        .collect();
    assert_eq!(parked.len(), 1);
    assert!(!parked[0].up);
    assert_eq!(r.0.len(), 1);
    assert_eq!(r.0[0].1, res.interfaces[1].name);
    assert!(w.fw.masq.is_empty());
    assert!(!w.ipam.allocated);
}

#[test]
fn del_does_not_defer_for_a_foreign_pair() {
    let mut w = World::new();
    let mut r = FakeReaper::default();
    let c = conf(json!({}));
    w.add(&c).unwrap();
    // The host end left the bridge: not ours to hand over.
    let hv = w
        .host
        .links
        .values_mut()
        .find(|l| l.name.starts_with("veth"))
        .unwrap();
    hv.master = None;
    del(
        &env(),
        &c,
        &mut w.host,
        Some(&mut w.cont),
        &mut w.ipam,
        &mut w.fw,
        &mut r,
    )
    .unwrap();
    assert!(r.0.is_empty());
    assert!(w
        .cont
        .links
        .values()
        .all(|l| !l.name.starts_with("skdel") && l.name != "eth0"));
}

#[test]
fn check_detects_removed_address_and_route() {
    let mut w = World::new();
    let base = json!({"isDefaultGateway": true});
    let r = w.add(&conf(base.clone())).unwrap();
    let mut with_prev = base.clone();
    with_prev["prevResult"] = r.to_value("1.0.0");
    let c = conf(with_prev);
    check(&env(), &c, &mut w.host, &mut w.cont, &mut w.ipam).unwrap();
    let idx = w.cont.links["eth0"].index;
    w.cont
        .routes
        .get_mut(&idx)
        .unwrap()
        .retain(|x| x.dst.prefix != 0);
    let e = check(&env(), &c, &mut w.host, &mut w.cont, &mut w.ipam).unwrap_err();
    assert_eq!(e.code, code::CHECK_MISMATCH);
    assert!(e.msg.contains("route"), "{e}");
    w.cont.addrs.get_mut(&idx).unwrap().clear();
    let e = check(&env(), &c, &mut w.host, &mut w.cont, &mut w.ipam).unwrap_err();
    assert!(e.msg.contains("10.244.0.5/24"), "{e}");
    let no_prev = conf(base);
    assert_eq!(
        check(&env(), &no_prev, &mut w.host, &mut w.cont, &mut w.ipam)
            .unwrap_err()
            .code,
        code::INVALID_CONFIG
    );
}

#[test]
fn config_validation() {
    let bad = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge", "mtu": "x"});
    assert_eq!(
        BridgeConf::parse(&bad).unwrap_err().code,
        code::INVALID_CONFIG
    );
    let bad = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge", "mtu": 10});
    assert_eq!(
        BridgeConf::parse(&bad).unwrap_err().code,
        code::INVALID_CONFIG
    );
    let bad = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge", "bridge": "a/b"});
    assert_eq!(
        BridgeConf::parse(&bad).unwrap_err().code,
        code::INVALID_CONFIG
    );
    let both = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge", "hairpinMode": true, "promiscMode": true});
    assert_eq!(
        BridgeConf::parse(&both).unwrap_err().code,
        code::INVALID_CONFIG
    );
    let ok = json!({"cniVersion": "1.0.0", "name": "p", "type": "bridge"});
    let c = BridgeConf::parse(&ok).unwrap();
    assert_eq!(c.bridge, "cni0");
    assert_eq!(c.ipam_type().unwrap_err().code, code::INVALID_CONFIG);
}
