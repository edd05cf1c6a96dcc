//! The proxy's view of the cluster: one entry per service port, with the endpoints the
//! EndpointSlices give it, already filtered and categorised by kube-proxy's rules. Building it
//! is pure (API objects in, model and a list of problems out) so every edge case is a unit test.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label an EndpointSlice carries to name its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 CIDR (a.b.c.d/len)")]
    Syntax(String),
    #[error("{0:?}: prefix length above 32")]
    Length(String),
}

/// An IPv4 network such as 10.244.0.0/16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Cidr {
    fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(ip) & self.mask()) == (u32::from(self.addr) & self.mask())
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(s.into()))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        let len: u8 = len.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        if len > 32 {
            return Err(CidrError::Length(s.into()));
        }
        // Normalise so that the rendered `-s`/`! -s` argument is the network address.
        let mut cidr = Ipv4Cidr { addr, len };
        cidr.addr = Ipv4Addr::from(u32::from(addr) & cidr.mask());
        Ok(cidr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
    /// The lower-case spelling iptables and kube-proxy's chain hashes use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// kube-proxy's ServicePortName: what one set of chains is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    /// `namespace/name:port`, or `namespace/name` for an unnamed port, as kube-proxy prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub id: ServicePortName,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` and its timeout in seconds.
    pub affinity_seconds: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
    /// Every usable endpoint of the port, sorted, deduplicated by address.
    pub endpoints: Vec<Endpoint>,
}

/// Which endpoints traffic goes to, per kube-proxy's CategorizeEndpoints: ready ones, or when
/// none is ready the serving-and-terminating ones (so a rolling update does not drop traffic).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Categorized<'a> {
    pub cluster: Vec<&'a Endpoint>,
    pub local: Vec<&'a Endpoint>,
}

fn usable<'a>(eps: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = eps.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    eps.filter(|e| e.serving && e.terminating).collect()
}

impl ServicePort {
    pub fn categorize(&self, node: &str) -> Categorized<'_> {
        Categorized {
            cluster: usable(self.endpoints.iter()),
            local: usable(
                self.endpoints
                    .iter()
                    .filter(|e| e.node.as_deref() == Some(node)),
            ),
        }
    }
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

/// What the proxy knows about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The addresses NodePorts answer on; empty means every local address.
    pub addresses: Vec<Ipv4Addr>,
    pub cluster_cidr: Ipv4Cidr,
    pub service_cidr: Ipv4Cidr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub node: NodeInfo,
    pub services: BTreeMap<ServicePortName, ServicePort>,
}

/// The API object a problem is about (for its Event).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectId {
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Input the proxy could not use as given; the rest of the model is still built.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub object: ObjectId,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

fn port_u16(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// Addresses a DNAT must never point at: the API server's validation refuses them too, and a
/// service address as a backend would loop through the proxy again.
fn endpoint_address_problem(ip: Ipv4Addr, node: &NodeInfo) -> Option<&'static str> {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_link_local() || ip.is_multicast() {
        Some("is unspecified, loopback, link-local or multicast")
    } else if node.service_cidr.contains(ip) {
        Some("lies in the service CIDR")
    } else {
        None
    }
}

/// The node's addresses the API reports (InternalIP and ExternalIP, IPv4).
pub fn node_addresses(node: &Node) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: NodeInfo,
) -> (Model, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut out: BTreeMap<ServicePortName, ServicePort> = BTreeMap::new();
    for svc in services {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let object = ObjectId {
            kind: "Service",
            namespace: ns.clone(),
            name: name.clone(),
        };
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ip = match spec.cluster_ip.as_deref() {
            None | Some("") | Some("None") => continue, // headless: DNS only
            Some(ip) => match ip.parse::<Ipv4Addr>() {
                Ok(ip) => ip,
                Err(_) => {
                    // An IPv6 primary family: this proxy programs iptables (IPv4) only.
                    if ip.parse::<std::net::Ipv6Addr>().is_err() {
                        problems.push(Problem {
                            object: object.clone(),
                            message: format!("clusterIP {ip:?} is not an IP address"),
                        });
                    }
                    continue;
                }
            },
        };
        let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let is_node_port = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let mut external_ips = Vec::new();
        for ip in spec.external_ips.iter().flatten() {
            match ip.parse::<Ipv4Addr>() {
                Ok(ip) => external_ips.push(ip),
                Err(_) if ip.parse::<std::net::Ipv6Addr>().is_ok() => {}
                Err(_) => problems.push(Problem {
                    object: object.clone(),
                    message: format!("externalIPs: {ip:?} is not an IP address"),
                }),
            }
        }
        for sp in spec.ports.iter().flatten() {
            let port_name = sp.name.clone().unwrap_or_default();
            let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
                problems.push(Problem {
                    object: object.clone(),
                    message: format!(
                        "port {port_name:?}: unknown protocol {:?}",
                        sp.protocol.as_deref().unwrap_or_default()
                    ),
                });
                continue;
            };
            let Some(port) = port_u16(sp.port) else {
                problems.push(Problem {
                    object: object.clone(),
                    message: format!("port {port_name:?}: {} is not a port number", sp.port),
                });
                continue;
            };
            let id = ServicePortName {
                namespace: ns.clone(),
                name: name.clone(),
                port: port_name.clone(),
                protocol,
            };
            // Chains are keyed by name and protocol: a second port with both equal would
            // share (and overwrite) the first one's chains, so it is refused, first one wins.
            if out.contains_key(&id) {
                problems.push(Problem {
                    object: object.clone(),
                    message: format!(
                        "port name {port_name:?} ({}) is used by more than one port; port {port} ignored",
                        protocol.as_str()
                    ),
                });
                continue;
            }
            let node_port = if is_node_port {
                sp.node_port.and_then(port_u16)
            } else {
                None
            };
            out.insert(
                id.clone(),
                ServicePort {
                    id,
                    cluster_ip,
                    port,
                    node_port,
                    external_ips: external_ips.clone(),
                    affinity_seconds,
                    external_local: spec.external_traffic_policy.as_deref() == Some("Local")
                        && (is_node_port || !external_ips.is_empty()),
                    internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                    endpoints: Vec::new(),
                },
            );
        }
    }

    // Endpoints, keyed by (namespace, service) then matched to ports by name and protocol.
    for slice in slices {
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        if slice.address_type != "IPv4" {
            continue;
        }
        let object = ObjectId {
            kind: "EndpointSlice",
            namespace: ns.clone(),
            name: slice.metadata.name.clone().unwrap_or_default(),
        };
        for sp in slice.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
                continue;
            };
            let id = ServicePortName {
                namespace: ns.clone(),
                name: svc.clone(),
                port: sp.name.clone().unwrap_or_default(),
                protocol,
            };
            let Some(entry) = out.get_mut(&id) else {
                continue;
            };
            let Some(port) = sp.port.and_then(port_u16) else {
                problems.push(Problem {
                    object: object.clone(),
                    message: format!("port {:?} has no usable port number", id.port),
                });
                continue;
            };
            for ep in &slice.endpoints {
                let Some(addr) = ep.addresses.first() else {
                    continue;
                };
                let Ok(ip) = addr.parse::<Ipv4Addr>() else {
                    problems.push(Problem {
                        object: object.clone(),
                        message: format!("address {addr:?} is not an IPv4 address"),
                    });
                    continue;
                };
                if let Some(why) = endpoint_address_problem(ip, &node) {
                    problems.push(Problem {
                        object: object.clone(),
                        message: format!("endpoint {ip} {why}; ignored"),
                    });
                    continue;
                }
                let c = ep.conditions.clone().unwrap_or_default();
                // The API says a missing condition means ready (serving follows ready).
                let ready = c.ready.unwrap_or(true);
                entry.endpoints.push(Endpoint {
                    ip,
                    port,
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                    node: ep.node_name.clone(),
                });
            }
        }
    }
    for sp in out.values_mut() {
        // One endpoint may appear in two slices while the controller moves it: the first
        // one seen counts (the sort is stable, so dedup keeps it).
        sp.endpoints.sort_by_key(|e| (e.ip, e.port));
        sp.endpoints.dedup_by_key(|e| (e.ip, e.port));
        sp.endpoints.sort();
    }
    (
        Model {
            node,
            services: out,
        },
        problems,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn node_info() -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            addresses: vec![],
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
        }
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn web(ports: serde_json::Value) -> Service {
        svc(json!({"metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.20", "ports": ports}}))
    }

    fn web_slice(ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
        slice(
            json!({"metadata": {"namespace": "default", "name": "web-abc",
                "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints}),
        )
    }

    #[test]
    fn cidr_parsing_and_membership() {
        let c: Ipv4Cidr = "10.244.3.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert!(c.contains("10.244.200.1".parse().unwrap()));
        assert!(!c.contains("10.245.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn port_names_print_like_kube_proxy() {
        let mut id = ServicePortName {
            namespace: "default".into(),
            name: "kubernetes".into(),
            port: "https".into(),
            protocol: Protocol::Tcp,
        };
        assert_eq!(id.to_string(), "default/kubernetes:https");
        id.port.clear();
        assert_eq!(id.to_string(), "default/kubernetes");
    }

    #[test]
    fn endpoints_match_ports_by_name_and_protocol() {
        let s = web(json!([
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "dns", "port": 53, "protocol": "UDP"}
        ]));
        let sl = web_slice(
            json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                   {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            json!([{"addresses": ["10.244.1.3"], "conditions": {"ready": true}, "nodeName": "n1"},
                   {"addresses": ["10.244.2.3"], "conditions": {"ready": true}, "nodeName": "n2"}]),
        );
        let (m, problems) = build(&[s], &[sl], node_info());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.services.len(), 2);
        let http = m.services.values().find(|p| p.id.port == "http").unwrap();
        assert_eq!(http.port, 80);
        assert_eq!(
            http.endpoints
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>(),
            ["10.244.1.3:8080", "10.244.2.3:8080"]
        );
        let dns = m.services.values().find(|p| p.id.port == "dns").unwrap();
        assert_eq!(dns.id.protocol, Protocol::Udp);
        assert_eq!(dns.endpoints[0].port, 5353);
    }

    #[test]
    fn a_port_name_shared_by_two_ports_keeps_the_first_and_says_so() {
        let s = web(json!([
            {"name": "http", "port": 80},
            {"name": "http", "port": 81},
            {"name": "http", "port": 82, "protocol": "UDP"}
        ]));
        let (m, problems) = build(&[s], &[], node_info());
        assert_eq!(m.services.len(), 2, "TCP and UDP 'http' are distinct");
        let tcp = m
            .services
            .values()
            .find(|p| p.id.protocol == Protocol::Tcp)
            .unwrap();
        assert_eq!(tcp.port, 80);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("more than one port"),
            "{}",
            problems[0]
        );
        assert_eq!(problems[0].object.to_string(), "Service default/web");
    }

    #[test]
    fn endpoint_outside_the_cluster_cidr_is_kept_but_bad_addresses_are_refused() {
        let s = web(json!([{"name": "http", "port": 80}]));
        let sl = web_slice(
            json!([{"name": "http", "port": 80}]),
            json!([{"addresses": ["192.0.2.10"]},
                   {"addresses": ["127.0.0.1"]},
                   {"addresses": ["10.96.0.30"]},
                   {"addresses": ["169.254.1.1"]},
                   {"addresses": ["not-an-ip"]}]),
        );
        let (m, problems) = build(&[s], &[sl], node_info());
        let sp = m.services.values().next().unwrap();
        assert_eq!(sp.endpoints.len(), 1);
        assert_eq!(sp.endpoints[0].ip, Ipv4Addr::new(192, 0, 2, 10));
        assert!(sp.endpoints[0].ready, "missing conditions mean ready");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.message.contains("service CIDR")));
    }

    #[test]
    fn a_named_target_port_no_pod_declares_gives_no_endpoints() {
        // Our EndpointSlice controller (like kube's) then writes endpoints without that port.
        let s = web(json!([{"name": "http", "port": 80, "targetPort": "web"}]));
        let sl = web_slice(json!([]), json!([{"addresses": ["10.244.1.3"]}]));
        let (m, problems) = build(&[s], &[sl], node_info());
        assert!(problems.is_empty());
        assert!(m.services.values().next().unwrap().endpoints.is_empty());
    }

    #[test]
    fn terminating_endpoints_are_used_only_when_nothing_is_ready() {
        let s = web(json!([{"name": "http", "port": 80}]));
        let eps = json!([
            {"addresses": ["10.244.1.3"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n1"},
            {"addresses": ["10.244.1.4"], "conditions": {"ready": false, "serving": false, "terminating": false}, "nodeName": "n1"},
            {"addresses": ["10.244.2.5"], "conditions": {"ready": true}, "nodeName": "n2"}
        ]);
        let (m, _) = build(
            std::slice::from_ref(&s),
            &[web_slice(json!([{"name": "http", "port": 80}]), eps)],
            node_info(),
        );
        let sp = m.services.values().next().unwrap();
        let c = sp.categorize("n1");
        assert_eq!(c.cluster.len(), 1);
        assert_eq!(c.cluster[0].ip, Ipv4Addr::new(10, 244, 2, 5));
        assert_eq!(
            c.local.len(),
            1,
            "no local ready one: the serving terminating one"
        );
        assert_eq!(c.local[0].ip, Ipv4Addr::new(10, 244, 1, 3));
        let (m, _) = build(
            &[s],
            &[web_slice(
                json!([{"name": "http", "port": 80}]),
                json!([{"addresses": ["10.244.1.4"], "conditions": {"ready": false, "serving": false}}]),
            )],
            node_info(),
        );
        let c = m.services.values().next().unwrap().categorize("n1");
        assert!(c.cluster.is_empty() && c.local.is_empty());
    }

    #[test]
    fn policies_affinity_nodeport_and_skipped_kinds() {
        let services = vec![
            svc(json!({"metadata": {"namespace": "a", "name": "np"},
                "spec": {"type": "NodePort", "clusterIP": "10.96.0.40", "externalTrafficPolicy": "Local",
                    "internalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                    "ports": [{"port": 80, "nodePort": 30080}]}})),
            svc(json!({"metadata": {"namespace": "a", "name": "aff"},
                "spec": {"clusterIP": "10.96.0.41", "sessionAffinity": "ClientIP",
                    "externalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30081}]}})),
            svc(json!({"metadata": {"namespace": "a", "name": "headless"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})),
            svc(json!({"metadata": {"namespace": "a", "name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "example.invalid"}})),
            svc(json!({"metadata": {"namespace": "a", "name": "v6"},
                "spec": {"clusterIP": "fd00::1", "ports": [{"port": 80}]}})),
            svc(json!({"metadata": {"namespace": "a", "name": "bad"},
                "spec": {"clusterIP": "10.96.0.42", "ports": [{"port": 80, "protocol": "ICMP"}]}})),
        ];
        let (m, problems) = build(&services, &[], node_info());
        assert_eq!(m.services.len(), 2);
        let np = m.services.values().find(|p| p.id.name == "np").unwrap();
        assert_eq!(np.node_port, Some(30080));
        assert_eq!(np.affinity_seconds, Some(60));
        assert!(np.external_local && np.internal_local);
        assert!(np.externally_accessible());
        let aff = m.services.values().find(|p| p.id.name == "aff").unwrap();
        assert_eq!(aff.affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
        assert_eq!(aff.node_port, None, "a ClusterIP service has no node port");
        assert!(
            !aff.external_local,
            "Local means nothing without external access"
        );
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("ICMP"));
    }

    #[test]
    fn node_addresses_come_from_status() {
        let n: Node = serde_json::from_value(json!({"metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "192.168.5.2"},
                {"type": "InternalIP", "address": "fd00::2"},
                {"type": "ExternalIP", "address": "198.51.100.7"}]}}))
        .unwrap();
        assert_eq!(
            node_addresses(&n),
            vec![
                Ipv4Addr::new(192, 168, 5, 2),
                Ipv4Addr::new(198, 51, 100, 7)
            ]
        );
    }

    #[test]
    fn duplicate_endpoints_across_slices_count_once() {
        let s = web(json!([{"name": "http", "port": 80}]));
        let a = web_slice(
            json!([{"name": "http", "port": 80}]),
            json!([{"addresses": ["10.244.1.3"]}]),
        );
        let mut b = a.clone();
        b.metadata.name = Some("web-def".into());
        let (m, _) = build(
            std::slice::from_ref(&s),
            &[a.clone(), b.clone()],
            node_info(),
        );
        assert_eq!(m.services.values().next().unwrap().endpoints.len(), 1);
        // The copy in the first slice seen counts, whatever the other one says.
        b.endpoints[0].conditions = Some(Default::default());
        b.endpoints[0].conditions.as_mut().unwrap().ready = Some(false);
        for (slices, ready) in [([a.clone(), b.clone()], true), ([b, a], false)] {
            let (m, _) = build(std::slice::from_ref(&s), &slices, node_info());
            let eps = &m.services.values().next().unwrap().endpoints;
            assert_eq!(eps.len(), 1);
            assert_eq!(eps[0].ready, ready);
        }
    }
}
