//! The cluster's DNS names, computed from Services, EndpointSlices and Pods the way CoreDNS'
//! `kubernetes` plugin names them (the Kubernetes DNS specification):
//!
//! - `<svc>.<ns>.svc.<domain>`: the ClusterIPs, or for a headless service the addresses of its
//!   ready endpoints; an ExternalName service is a CNAME.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV for every named port.
//! - `<hostname>.<svc>.<ns>.svc.<domain>` (endpoints with a hostname: pods with hostname and
//!   subdomain) or `<a-b-c-d>.<svc>.<ns>.svc.<domain>` for the other endpoints of a headless
//!   service.
//! - `<a-b-c-d>.<ns>.pod.<domain>` for every pod IP (verified: only IPs a pod in that namespace has).
//! - PTR for ClusterIPs, headless endpoints and pod IPs.
//!
//! Every ancestor of a name down to the domain exists too (an empty non-terminal), so that a
//! query for e.g. `default.svc.<domain>` is NODATA and not NXDOMAIN.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Time to live of every answer, as CoreDNS' kubernetes plugin uses by default.
pub const TTL: u32 = 30;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("cluster domain {domain:?} is not a valid DNS name: {reason}")]
    BadDomain { domain: String, reason: String },
}

/// What the table knows about one queried name.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name exists and has records of the asked type (or a CNAME): answer them.
    Records(Vec<&'a RData>),
    /// The name exists, but without records of that type: NOERROR and no answers.
    NoData,
    /// The name is inside the cluster domain and does not exist.
    NxDomain,
    /// The table is not filled yet (the first list from the API server has not arrived).
    NotReady,
    /// Not a name the cluster answers for: forward it.
    NotOurs,
}

/// Names and their records, keyed by lower-case name without the final dot.
#[derive(Debug, Clone)]
pub struct Table {
    domain: String,
    origin: Name,
    names: HashMap<String, Vec<RData>>,
    synced: bool,
    serial: u32,
}

impl Table {
    /// A table that knows the domain but has seen no objects yet: it answers nothing inside the
    /// domain (SERVFAIL, so clients retry) rather than denying names that may exist.
    pub fn unsynced(domain: &str) -> Result<Table, RecordsError> {
        let domain = normalize(domain);
        let origin =
            Name::from_ascii(format!("{domain}.")).map_err(|e| RecordsError::BadDomain {
                domain: domain.clone(),
                reason: e.to_string(),
            })?;
        if domain.is_empty() {
            return Err(RecordsError::BadDomain {
                domain,
                reason: "empty".into(),
            });
        }
        Ok(Table {
            domain,
            origin,
            names: HashMap::new(),
            synced: false,
            serial: 0,
        })
    }

    /// The table for the given objects.
    pub fn build(
        domain: &str,
        services: &[&Service],
        slices: &[&EndpointSlice],
        pods: &[&Pod],
    ) -> Result<Table, RecordsError> {
        let mut t = Table::unsynced(domain)?;
        t.synced = true;
        // The SOA serial only has to grow between versions of the zone; seconds do.
        t.serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        t.insert(t.domain.clone(), None);
        let mut ptrs = Ptrs::default();
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            let (Some(ns), Some(svc)) = (
                s.metadata.namespace.as_deref(),
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
        for svc in services {
            let (Some(ns), Some(name)) = (
                svc.metadata.namespace.as_deref(),
                svc.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let slices = by_service
                .get(&(ns, name))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            t.add_service(ns, name, svc, slices, &mut ptrs);
        }
        for pod in pods {
            t.add_pod(pod, &mut ptrs);
        }
        for (ip, (_, target)) in ptrs.0 {
            if let Ok(name) = Name::from_ascii(format!("{target}.")) {
                let key = normalize(&Name::from(ip).to_ascii());
                t.names.entry(key).or_default().push(RData::PTR(PTR(name)));
            }
        }
        Ok(t)
    }

    /// Whether the table was built from the cluster's objects.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The SOA serial of this version of the zone.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The zone apex as a DNS name (`cluster.local.`).
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// How many names (with records or not) the table holds.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `name` (any case, with or without the final dot) is the domain or inside it.
    pub fn in_domain(&self, name: &str) -> bool {
        let n = normalize(name);
        n == self.domain
            || n.strip_suffix(&self.domain)
                .is_some_and(|rest| rest.ends_with('.'))
    }

    /// Looks `name` up for `qtype` (`ANY` returns everything the name has).
    pub fn lookup(&self, name: &str, qtype: RecordType) -> Lookup<'_> {
        let key = normalize(name);
        let ours = self.in_domain(&key);
        if ours && !self.synced {
            return Lookup::NotReady;
        }
        let Some(records) = self.names.get(&key) else {
            return if ours {
                Lookup::NxDomain
            } else {
                Lookup::NotOurs
            };
        };
        let matching: Vec<&RData> = records
            .iter()
            .filter(|r| {
                qtype == RecordType::ANY
                    || r.record_type() == qtype
                    || r.record_type() == RecordType::CNAME
            })
            .collect();
        if matching.is_empty() {
            Lookup::NoData
        } else {
            Lookup::Records(matching)
        }
    }

    /// Records of one type at `name`, for the additional section (targets of SRV answers).
    pub fn records_of(&self, name: &str, qtype: RecordType) -> impl Iterator<Item = &RData> {
        self.names
            .get(&normalize(name))
            .into_iter()
            .flatten()
            .filter(move |r| r.record_type() == qtype)
    }

    fn add_service(
        &mut self,
        ns: &str,
        name: &str,
        svc: &Service,
        slices: &[&EndpointSlice],
        ptrs: &mut Ptrs,
    ) {
        let Some(spec) = svc.spec.as_ref() else {
            return;
        };
        let base = format!("{}.{}.svc.{}", lower(name), lower(ns), self.domain);
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec
                .external_name
                .as_deref()
                .and_then(|e| Name::from_ascii(format!("{}.", e.trim_end_matches('.'))).ok())
            {
                self.insert(base, Some(RData::CNAME(CNAME(target))));
            }
            return;
        }
        let Ok(base_name) = Name::from_ascii(format!("{base}.")) else {
            return;
        };
        let mut ips: Vec<&str> = spec
            .cluster_ips
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.as_deref());
        }
        let headless = ips.contains(&"None");
        if !headless {
            // A Service whose ClusterIP is not allocated yet still exists: NODATA until it is.
            self.insert(base.clone(), None);
            for ip in ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                self.insert(base.clone(), Some(address(ip)));
                ptrs.offer(ip, Rank::Service, &base);
            }
            for port in spec.ports.iter().flatten() {
                let Some(pname) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let proto = port.protocol.as_deref().unwrap_or("TCP");
                let Ok(port_no) = u16::try_from(port.port) else {
                    continue;
                };
                self.insert(
                    format!("_{}._{}.{base}", lower(pname), lower(proto)),
                    Some(RData::SRV(SRV::new(0, 100, port_no, base_name.clone()))),
                );
            }
            return;
        }
        self.insert(base.clone(), None);
        let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
        let mut endpoints: Vec<(IpAddr, String)> = Vec::new();
        let mut ports: Vec<(String, String, u16)> = Vec::new();
        for slice in slices {
            for ep in &slice.endpoints {
                // `ready` unset means ready, as the EndpointSlice API defines.
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready && !publish_not_ready {
                    continue;
                }
                for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    let label = ep
                        .hostname
                        .as_deref()
                        .filter(|h| !h.is_empty())
                        .map(lower)
                        .unwrap_or_else(|| dashed(ip));
                    if !endpoints.contains(&(ip, label.clone())) {
                        endpoints.push((ip, label));
                    }
                }
            }
            for port in slice.ports.iter().flatten() {
                let (Some(pname), Some(p)) = (
                    port.name.as_deref().filter(|n| !n.is_empty()),
                    port.port.and_then(|p| u16::try_from(p).ok()),
                ) else {
                    continue;
                };
                let proto = lower(port.protocol.as_deref().unwrap_or("TCP"));
                let entry = (lower(pname), proto, p);
                if !ports.contains(&entry) {
                    ports.push(entry);
                }
            }
        }
        let weight = u16::try_from(100 / endpoints.len().max(1))
            .unwrap_or(1)
            .max(1);
        for (ip, label) in &endpoints {
            let ep_name = format!("{label}.{base}");
            self.insert(base.clone(), Some(address(*ip)));
            self.insert(ep_name.clone(), Some(address(*ip)));
            ptrs.offer(*ip, Rank::Endpoint, &ep_name);
            let Ok(target) = Name::from_ascii(format!("{ep_name}.")) else {
                continue;
            };
            for (pname, proto, p) in &ports {
                self.insert(
                    format!("_{pname}._{proto}.{base}"),
                    Some(RData::SRV(SRV::new(0, weight, *p, target.clone()))),
                );
            }
        }
    }

    fn add_pod(&mut self, pod: &Pod, ptrs: &mut Ptrs) {
        let Some(ns) = pod.metadata.namespace.as_deref() else {
            return;
        };
        let Some(status) = pod.status.as_ref() else {
            return;
        };
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let mut ips: Vec<&str> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .collect();
        if ips.is_empty() {
            ips.extend(status.pod_ip.as_deref());
        }
        for ip in ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            let name = format!("{}.{}.pod.{}", dashed(ip), lower(ns), self.domain);
            self.insert(name.clone(), Some(address(ip)));
            // A host-network pod has the node's address: it is not that address' owner.
            if !host_network {
                ptrs.offer(ip, Rank::Pod, &name);
            }
        }
    }

    /// Adds a record (or just the name) and every missing ancestor down to the domain.
    fn insert(&mut self, name: String, record: Option<RData>) {
        let mut parent = name.as_str();
        while let Some((_, rest)) = parent.split_once('.') {
            if rest.len() < self.domain.len() {
                break;
            }
            if !self.names.contains_key(rest) {
                self.names.insert(rest.to_string(), Vec::new());
            }
            parent = rest;
        }
        let records = self.names.entry(name).or_default();
        if let Some(r) = record {
            if !records.contains(&r) {
                records.push(r);
            }
        }
    }
}

/// Which name an IP's PTR points to when several claim it (a pod IP behind a headless service
/// is better named by its endpoint name, like CoreDNS does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Service,
    Endpoint,
    Pod,
}

#[derive(Default)]
struct Ptrs(HashMap<IpAddr, (Rank, String)>);

impl Ptrs {
    /// Keeps the best-ranked claim; among equals the smallest name, so the result does not
    /// depend on the order objects were listed in.
    fn offer(&mut self, ip: IpAddr, rank: Rank, name: &str) {
        match self.0.get(&ip) {
            Some((r, n)) if (*r, n.as_str()) <= (rank, name) => {}
            _ => {
                self.0.insert(ip, (rank, name.to_string()));
            }
        }
    }
}

fn address(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// `10.244.1.5` → `10-244-1-5`; IPv6 colons become dashes too, as CoreDNS writes them.
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// Lower case, without the final dot: the table's key form.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports},
        }))
        .unwrap()
    }

    /// One slice of `svc`: endpoints are (ip, ready, hostname).
    pub fn slice(
        ns: &str,
        svc: &str,
        eps: &[(&str, Option<bool>, Option<&str>)],
        ports: serde_json::Value,
    ) -> EndpointSlice {
        let endpoints: Vec<_> = eps
            .iter()
            .map(|(ip, ready, host)| {
                json!({"addresses": [ip], "conditions": {"ready": ready}, "hostname": host})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-abc"), "namespace": ns,
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
        }))
        .unwrap()
    }

    pub fn pod(ns: &str, name: &str, ip: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": []},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .unwrap()
    }

    /// A cluster with a ClusterIP service, a headless one with a pod that has hostname +
    /// subdomain and a not-ready pod, an ExternalName service and a dual-stack service.
    pub fn cluster() -> Table {
        let web = service(
            "default",
            "web",
            "10.96.0.20",
            json!([{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 8080}]),
        );
        let kubernetes = service(
            "default",
            "kubernetes",
            "10.96.0.1",
            json!([{"name": "https", "port": 443}]),
        );
        let db = service("prod", "db", "None", json!([{"name": "pg", "port": 5432}]));
        let ext: Service = serde_json::from_value(json!({
            "metadata": {"name": "search", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "search.example.org"},
        }))
        .unwrap();
        let dual: Service = serde_json::from_value(json!({
            "metadata": {"name": "dual", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00::30"]},
        }))
        .unwrap();
        let db_slice = slice(
            "prod",
            "db",
            &[
                ("10.244.1.5", Some(true), Some("db-0")),
                ("10.244.2.6", None, None),
                ("10.244.2.7", Some(false), None),
            ],
            json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        );
        // A slice of the ClusterIP service: its endpoints must not leak into its A answer.
        let web_slice = slice(
            "default",
            "web",
            &[("10.244.1.9", Some(true), None)],
            json!([]),
        );
        let pods = [
            pod("prod", "db-0", "10.244.1.5"),
            pod("default", "web-1", "10.244.1.9"),
        ];
        Table::build(
            "cluster.local",
            &[&web, &kubernetes, &db, &ext, &dual],
            &[&db_slice, &web_slice],
            &pods.iter().collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn a(l: Lookup<'_>) -> Vec<String> {
        match l {
            Lookup::Records(r) => {
                let mut v: Vec<String> = r.iter().map(|r| r.to_string()).collect();
                v.sort();
                v
            }
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn cluster_ip_service_a_and_not_its_endpoints() {
        let t = cluster();
        assert_eq!(
            a(t.lookup("web.default.svc.cluster.local.", RecordType::A)),
            ["10.96.0.20"]
        );
        assert_eq!(
            a(t.lookup("kubernetes.default.svc.cluster.local", RecordType::A)),
            ["10.96.0.1"]
        );
    }

    #[test]
    fn headless_service_returns_ready_endpoints_only() {
        let t = cluster();
        assert_eq!(
            a(t.lookup("db.prod.svc.cluster.local", RecordType::A)),
            ["10.244.1.5", "10.244.2.6"]
        );
        // Endpoint names: the hostname when there is one, the dashed IP otherwise.
        assert_eq!(
            a(t.lookup("db-0.db.prod.svc.cluster.local", RecordType::A)),
            ["10.244.1.5"]
        );
        assert_eq!(
            a(t.lookup("10-244-2-6.db.prod.svc.cluster.local", RecordType::A)),
            ["10.244.2.6"]
        );
        assert_eq!(
            t.lookup("10-244-2-7.db.prod.svc.cluster.local", RecordType::A),
            Lookup::NxDomain
        );
    }

    #[test]
    fn publish_not_ready_addresses_includes_unready_endpoints() {
        let mut db = service("prod", "db", "None", json!([]));
        db.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let s = slice(
            "prod",
            "db",
            &[("10.244.2.7", Some(false), None)],
            json!([]),
        );
        let t = Table::build("cluster.local", &[&db], &[&s], &[]).unwrap();
        assert_eq!(
            a(t.lookup("db.prod.svc.cluster.local", RecordType::A)),
            ["10.244.2.7"]
        );
    }

    #[test]
    fn srv_for_named_ports_only() {
        let t = cluster();
        assert_eq!(
            a(t.lookup("_http._tcp.web.default.svc.cluster.local", RecordType::SRV)),
            ["0 100 80 web.default.svc.cluster.local."]
        );
        // The unnamed port 8080 has no SRV name; the `_tcp` level exists (empty non-terminal).
        assert_eq!(
            t.lookup("_tcp.web.default.svc.cluster.local", RecordType::SRV),
            Lookup::NoData
        );
        assert_eq!(
            a(t.lookup("_pg._tcp.db.prod.svc.cluster.local", RecordType::SRV)),
            [
                "0 50 5432 10-244-2-6.db.prod.svc.cluster.local.",
                "0 50 5432 db-0.db.prod.svc.cluster.local."
            ]
        );
        assert_eq!(
            t.lookup("_pg._udp.db.prod.svc.cluster.local", RecordType::SRV),
            Lookup::NxDomain
        );
    }

    #[test]
    fn ptr_for_service_endpoint_and_pod_ips() {
        let t = cluster();
        assert_eq!(
            a(t.lookup("20.0.96.10.in-addr.arpa.", RecordType::PTR)),
            ["web.default.svc.cluster.local."]
        );
        // A pod behind a headless service is named by its endpoint name.
        assert_eq!(
            a(t.lookup("5.1.244.10.in-addr.arpa", RecordType::PTR)),
            ["db-0.db.prod.svc.cluster.local."]
        );
        assert_eq!(
            a(t.lookup("9.1.244.10.in-addr.arpa", RecordType::PTR)),
            ["10-244-1-9.default.pod.cluster.local."]
        );
        // IPv6 ClusterIP, nibble form.
        let v6 = Name::from("fd00::30".parse::<IpAddr>().unwrap()).to_ascii();
        assert_eq!(
            a(t.lookup(&v6, RecordType::PTR)),
            ["dual.default.svc.cluster.local."]
        );
        // Other reverse names are not ours: they go upstream.
        assert_eq!(
            t.lookup("1.1.168.192.in-addr.arpa", RecordType::PTR),
            Lookup::NotOurs
        );
        assert_eq!(t.lookup("in-addr.arpa", RecordType::SOA), Lookup::NotOurs);
    }

    #[test]
    fn pod_a_records_are_verified() {
        let t = cluster();
        assert_eq!(
            a(t.lookup("10-244-1-9.default.pod.cluster.local", RecordType::A)),
            ["10.244.1.9"]
        );
        // The IP exists, but not in that namespace.
        assert_eq!(
            t.lookup("10-244-1-9.prod.pod.cluster.local", RecordType::A),
            Lookup::NxDomain
        );
    }

    #[test]
    fn nxdomain_versus_nodata() {
        let t = cluster();
        assert_eq!(
            t.lookup("nope.default.svc.cluster.local", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            t.lookup("web.default.svc.cluster.local", RecordType::AAAA),
            Lookup::NoData
        );
        assert_eq!(
            t.lookup("web.default.svc.cluster.local", RecordType::TXT),
            Lookup::NoData
        );
        for empty in [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "pod.cluster.local",
        ] {
            assert_eq!(t.lookup(empty, RecordType::A), Lookup::NoData, "{empty}");
        }
        assert_eq!(
            t.lookup("other.cluster.local", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(t.lookup("example.org", RecordType::A), Lookup::NotOurs);
        // A name merely ending in the domain's text is not inside it.
        assert_eq!(t.lookup("xcluster.local", RecordType::A), Lookup::NotOurs);
    }

    #[test]
    fn search_path_expansions() {
        let t = cluster();
        // `nslookup kubernetes.default` from a pod in `default` tries these in order.
        assert_eq!(
            t.lookup(
                "kubernetes.default.default.svc.cluster.local",
                RecordType::A
            ),
            Lookup::NxDomain
        );
        assert_eq!(
            a(t.lookup("kubernetes.default.svc.cluster.local", RecordType::A)),
            ["10.96.0.1"]
        );
        assert_eq!(
            t.lookup("example.org.default.svc.cluster.local", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            t.lookup("web.cluster.local", RecordType::A),
            Lookup::NxDomain
        );
    }

    #[test]
    fn dual_stack_and_external_name() {
        let t = cluster();
        assert_eq!(
            a(t.lookup("dual.default.svc.cluster.local", RecordType::A)),
            ["10.96.0.30"]
        );
        assert_eq!(
            a(t.lookup("dual.default.svc.cluster.local", RecordType::AAAA)),
            ["fd00::30"]
        );
        assert_eq!(
            a(t.lookup("search.default.svc.cluster.local", RecordType::A)),
            ["search.example.org."]
        );
    }

    #[test]
    fn case_insensitive() {
        let t = cluster();
        assert_eq!(
            a(t.lookup("WEB.Default.SVC.Cluster.Local.", RecordType::A)),
            ["10.96.0.20"]
        );
        let upper = service(
            "Default",
            "Web",
            "10.96.0.40",
            json!([{"name": "HTTP", "port": 80}]),
        );
        let t = Table::build("Cluster.Local", &[&upper], &[], &[]).unwrap();
        assert_eq!(
            a(t.lookup("web.default.svc.cluster.local", RecordType::A)),
            ["10.96.0.40"]
        );
        assert_eq!(
            a(t.lookup("_http._tcp.web.default.svc.cluster.local", RecordType::SRV)),
            ["0 100 80 web.default.svc.cluster.local."]
        );
    }

    #[test]
    fn unsynced_table_answers_nothing_inside_the_domain() {
        let t = Table::unsynced("cluster.local").unwrap();
        assert_eq!(
            t.lookup("web.default.svc.cluster.local", RecordType::A),
            Lookup::NotReady
        );
        assert_eq!(t.lookup("example.org", RecordType::A), Lookup::NotOurs);
    }

    #[test]
    fn bad_domain_is_an_error() {
        assert!(Table::unsynced("").is_err());
        assert!(Table::unsynced("a..b").is_err());
        let long = "x".repeat(70);
        let err = Table::unsynced(&long).unwrap_err().to_string();
        assert!(err.contains(&long), "{err}");
    }

    #[test]
    fn service_without_allocated_ip_and_odd_objects() {
        let pending = service("default", "pending", "", json!([]));
        let no_ns: Service =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {}})).unwrap();
        let bad_ip = pod("default", "p", "not-an-ip");
        let t = Table::build("cluster.local", &[&pending, &no_ns], &[], &[&bad_ip]).unwrap();
        assert_eq!(
            t.lookup("pending.default.svc.cluster.local", RecordType::A),
            Lookup::NoData
        );
    }
}
