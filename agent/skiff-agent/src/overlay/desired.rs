//! The overlay's desired kernel state as a pure function of the Node list, and the diff
//! against what the kernel holds. Flannel's vxlan backend model: per remote node one onlink
//! route to its podCIDR via the podCIDR's network address, one permanent neighbour entry
//! (that address → the node's VTEP MAC) and one FDB entry (VTEP MAC → the node's public IP).

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

/// Node annotation holding the VTEP's MAC address.
pub const ANNOTATION_VTEP_MAC: &str = "skiff.io/vtep-mac";
/// Node annotation holding the underlay address VxLAN packets are sent to.
pub const ANNOTATION_PUBLIC_IP: &str = "skiff.io/public-ip";

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a MAC address (six hex bytes joined by ':')"
            ));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC address (byte {p:?})"));
            }
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (byte {p:?})"))?;
        }
        Ok(Mac(out))
    }
}

impl Mac {
    /// A locally administered unicast MAC derived from the node IP. The device keeps the same
    /// MAC when it is recreated, so peers' neighbour and FDB entries stay right meanwhile.
    pub fn for_node(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x0e, 0x5f, o[0], o[1], o[2], o[3]])
    }
}

/// An IPv4 prefix, kept masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Option<Subnet> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok()?;
        if prefix > 32 {
            return None;
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(Subnet {
            net: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// What the overlay needs to know about one other node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub subnet: Subnet,
    pub vtep_mac: Mac,
    pub public_ip: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Subnet,
    pub gw: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neigh {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fdb {
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

/// The overlay entries on the VxLAN device (desired or installed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub routes: BTreeSet<Route>,
    pub neighs: BTreeSet<Neigh>,
    pub fdb: BTreeSet<Fdb>,
}

/// What to change to go from the installed state to the desired one. Removals are applied
/// before additions, so an entry whose value changed is replaced, never duplicated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub del_routes: Vec<Route>,
    pub del_neighs: Vec<Neigh>,
    pub del_fdb: Vec<Fdb>,
    pub add_routes: Vec<Route>,
    pub add_neighs: Vec<Neigh>,
    pub add_fdb: Vec<Fdb>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

/// Why a node is left out of the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Not ready yet (no podCIDR or its agent has not published its VTEP): normal for a moment.
    NotReady { node: String },
    /// Set but unusable: worth a warning.
    Bad { node: String, reason: String },
}

/// The other nodes that take part in the overlay, and those left out with why.
pub fn peers(nodes: &[Node], me: &str) -> (Vec<Peer>, Vec<Skipped>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        if name == me || n.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ann = n.metadata.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
        let cidr = n.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
        let (Some(cidr), Some(mac), Some(ip)) =
            (cidr, get(ANNOTATION_VTEP_MAC), get(ANNOTATION_PUBLIC_IP))
        else {
            skipped.push(Skipped::NotReady { node: name });
            continue;
        };
        let bad = |reason: String| Skipped::Bad {
            node: name.clone(),
            reason,
        };
        let Some(subnet) = Subnet::parse(cidr) else {
            skipped.push(bad(format!("podCIDR {cidr:?} is not an IPv4 CIDR")));
            continue;
        };
        let vtep_mac = match mac.parse::<Mac>() {
            Ok(m) => m,
            Err(e) => {
                skipped.push(bad(format!("annotation {ANNOTATION_VTEP_MAC}: {e}")));
                continue;
            }
        };
        let Ok(public_ip) = ip.parse::<Ipv4Addr>() else {
            skipped.push(bad(format!(
                "annotation {ANNOTATION_PUBLIC_IP}: {ip:?} is not an IPv4 address"
            )));
            continue;
        };
        out.push(Peer {
            name,
            subnet,
            vtep_mac,
            public_ip,
        });
    }
    (out, skipped)
}

/// The entries the device must hold for these peers. A peer whose podCIDR overlaps our own
/// or an earlier peer's is dropped: two routes for one prefix cannot both be right.
pub fn desired(peers: &[Peer], own: Subnet) -> (State, Vec<Skipped>) {
    let mut s = State::default();
    let mut skipped = Vec::new();
    let mut taken = vec![own];
    for p in peers {
        if taken.iter().any(|t| overlaps(*t, p.subnet)) {
            skipped.push(Skipped::Bad {
                node: p.name.clone(),
                reason: format!("podCIDR {} overlaps another node's", p.subnet),
            });
            continue;
        }
        taken.push(p.subnet);
        s.routes.insert(Route {
            dst: p.subnet,
            gw: p.subnet.net,
        });
        s.neighs.insert(Neigh {
            ip: p.subnet.net,
            mac: p.vtep_mac,
        });
        s.fdb.insert(Fdb {
            mac: p.vtep_mac,
            dst: p.public_ip,
        });
    }
    (s, skipped)
}

fn overlaps(a: Subnet, b: Subnet) -> bool {
    let p = a.prefix.min(b.prefix);
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    u32::from(a.net) & mask == u32::from(b.net) & mask
}

/// The changes that turn `installed` into `want`.
pub fn diff(want: &State, installed: &State) -> Plan {
    fn minus<T: Ord + Copy>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> Vec<T> {
        a.difference(b).copied().collect()
    }
    Plan {
        del_routes: minus(&installed.routes, &want.routes),
        del_neighs: minus(&installed.neighs, &want.neighs),
        del_fdb: minus(&installed.fdb, &want.fdb),
        add_routes: minus(&want.routes, &installed.routes),
        add_neighs: minus(&want.neighs, &installed.neighs),
        add_fdb: minus(&want.fdb, &installed.fdb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(name: &str, cidr: Option<&str>, mac: Option<&str>, ip: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        let mut ann = BTreeMap::new();
        if let Some(m) = mac {
            ann.insert(ANNOTATION_VTEP_MAC.to_string(), m.to_string());
        }
        if let Some(i) = ip {
            ann.insert(ANNOTATION_PUBLIC_IP.to_string(), i.to_string());
        }
        n.metadata.annotations = Some(ann);
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidr: cidr.map(str::to_string),
            ..Default::default()
        });
        n
    }

    fn sub(s: &str) -> Subnet {
        Subnet::parse(s).unwrap()
    }

    #[test]
    fn mac_parse_and_format() {
        let m: Mac = "0e:5f:ac:1e:00:0b".parse().unwrap();
        assert_eq!(m.to_string(), "0e:5f:ac:1e:00:0b");
        assert_eq!(Mac::for_node("172.30.0.11".parse().unwrap()), m);
        assert!("0e:5f:ac:1e:00".parse::<Mac>().is_err());
        assert!("0e:5f:ac:1e:00:zz".parse::<Mac>().is_err());
        assert!("0e:5f:ac:1e:00:abc".parse::<Mac>().is_err());
    }

    #[test]
    fn subnet_parse_masks() {
        assert_eq!(sub("10.244.1.7/24").to_string(), "10.244.1.0/24");
        assert!(Subnet::parse("10.244.1.0/33").is_none());
        assert!(Subnet::parse("fd00::/64").is_none());
        assert!(Subnet::parse("10.244.1.0").is_none());
    }

    #[test]
    fn peers_skip_self_unready_and_bad_nodes() {
        let nodes = vec![
            node(
                "me",
                Some("10.244.0.0/24"),
                Some("0e:5f:00:00:00:01"),
                Some("172.30.0.1"),
            ),
            node(
                "b",
                Some("10.244.1.0/24"),
                Some("0e:5f:00:00:00:02"),
                Some("172.30.0.2"),
            ),
            node("c", None, Some("0e:5f:00:00:00:03"), Some("172.30.0.3")),
            node("d", Some("10.244.3.0/24"), None, None),
            node("e", Some("10.244.4.0/24"), Some("nope"), Some("172.30.0.5")),
            node(
                "f",
                Some("10.244.5.0/24"),
                Some("0e:5f:00:00:00:06"),
                Some("x"),
            ),
            node(
                "g",
                Some("nonsense"),
                Some("0e:5f:00:00:00:07"),
                Some("172.30.0.7"),
            ),
        ];
        let (p, skipped) = peers(&nodes, "me");
        assert_eq!(
            p,
            vec![Peer {
                name: "b".into(),
                subnet: sub("10.244.1.0/24"),
                vtep_mac: "0e:5f:00:00:00:02".parse().unwrap(),
                public_ip: "172.30.0.2".parse().unwrap(),
            }]
        );
        let names: Vec<(String, bool)> = skipped
            .iter()
            .map(|s| match s {
                Skipped::NotReady { node } => (node.clone(), false),
                Skipped::Bad { node, .. } => (node.clone(), true),
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("c".into(), false),
                ("d".into(), false),
                ("e".into(), true),
                ("f".into(), true),
                ("g".into(), true)
            ]
        );
    }

    fn peer(name: &str, cidr: &str, mac: u8, ip: &str) -> Peer {
        Peer {
            name: name.into(),
            subnet: sub(cidr),
            vtep_mac: Mac([0x0e, 0x5f, 0, 0, 0, mac]),
            public_ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn one_route_neigh_and_fdb_entry_per_peer() {
        let ps = vec![
            peer("b", "10.244.1.0/24", 2, "172.30.0.2"),
            peer("c", "10.244.2.0/24", 3, "172.30.0.3"),
        ];
        let (s, skipped) = desired(&ps, sub("10.244.0.0/24"));
        assert!(skipped.is_empty());
        assert_eq!(s.routes.len(), 2);
        assert!(s.routes.contains(&Route {
            dst: sub("10.244.2.0/24"),
            gw: "10.244.2.0".parse().unwrap()
        }));
        assert!(s.neighs.contains(&Neigh {
            ip: "10.244.1.0".parse().unwrap(),
            mac: Mac([0x0e, 0x5f, 0, 0, 0, 2])
        }));
        assert!(s.fdb.contains(&Fdb {
            mac: Mac([0x0e, 0x5f, 0, 0, 0, 3]),
            dst: "172.30.0.3".parse().unwrap()
        }));
    }

    #[test]
    fn overlapping_subnets_are_refused() {
        let ps = vec![
            peer("b", "10.244.0.0/25", 2, "172.30.0.2"),
            peer("c", "10.244.2.0/24", 3, "172.30.0.3"),
            peer("d", "10.244.2.0/23", 4, "172.30.0.4"),
        ];
        let (s, skipped) = desired(&ps, sub("10.244.0.0/24"));
        assert_eq!(s.routes.len(), 1);
        assert_eq!(skipped.len(), 2);
    }

    #[test]
    fn diff_adds_removes_and_replaces() {
        let own = sub("10.244.0.0/24");
        let before = desired(
            &[
                peer("b", "10.244.1.0/24", 2, "172.30.0.2"),
                peer("c", "10.244.2.0/24", 3, "172.30.0.3"),
            ],
            own,
        )
        .0;
        assert!(diff(&before, &before).is_empty());
        let from_empty = diff(&before, &State::default());
        assert_eq!(from_empty.add_routes.len(), 2);
        assert_eq!(from_empty.add_fdb.len(), 2);
        assert!(from_empty.del_neighs.is_empty());

        // c leaves; b's VTEP got a new MAC and moved to another public IP.
        let after = desired(&[peer("b", "10.244.1.0/24", 9, "172.30.0.9")], own).0;
        let plan = diff(&after, &before);
        assert_eq!(
            plan.del_routes,
            vec![Route {
                dst: sub("10.244.2.0/24"),
                gw: "10.244.2.0".parse().unwrap()
            }]
        );
        assert!(plan.add_routes.is_empty());
        assert_eq!(plan.del_neighs.len(), 2);
        assert_eq!(
            plan.add_neighs,
            vec![Neigh {
                ip: "10.244.1.0".parse().unwrap(),
                mac: Mac([0x0e, 0x5f, 0, 0, 0, 9])
            }]
        );
        assert_eq!(plan.del_fdb.len(), 2);
        assert_eq!(
            plan.add_fdb,
            vec![Fdb {
                mac: Mac([0x0e, 0x5f, 0, 0, 0, 9]),
                dst: "172.30.0.9".parse().unwrap()
            }]
        );
    }
}
