//! Model → iptables rules, in kube-proxy's layout (so `iptables-save` on a Skiff node reads like
//! one on a kubeadm node), and rules → `iptables-restore` input, either the whole ruleset or
//! only the chains that differ from what was applied last. Pure: no kernel, no clock.
//!
//! Rules are written in the form `iptables-save` prints them back (address masks, `-m tcp`,
//! `--set-xmark`), so a rendered chain can be compared with the kernel's copy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use super::model::{Endpoint, Model, NodeInfo, ServicePort, ServicePortName};

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const CANARY: &str = "KUBE-PROXY-CANARY";
/// The packet mark that asks KUBE-POSTROUTING to masquerade (kube-proxy's default bit 14).
pub const MASQ_MARK: &str = "0x4000";

/// Prefixes of the per-service chains; a chain with one of these that the current ruleset does
/// not name is stale and gets deleted on a full sync.
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// Jumps from the built-in chains into Skiff's (kube-proxy's list), as `iptables-save`
/// prints them; inserted first in their chain so other programs' rules cannot shadow services.
pub const JUMPS: [(Table, &str, &str); 8] = [
    (
        Table::Nat,
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        Table::Nat,
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        Table::Nat,
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
    ),
    (
        Table::Filter,
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    (
        Table::Filter,
        "FORWARD",
        "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
    ),
    (
        Table::Filter,
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    (
        Table::Filter,
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        Table::Filter,
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

/// One table's Skiff-owned chains: name → full rule lines (`-A NAME …`), in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    pub chains: BTreeMap<String, Vec<String>>,
}

impl TableRules {
    fn chain(&mut self, name: &str) -> &mut Vec<String> {
        self.chains.entry(name.to_string()).or_default()
    }
    fn rule(&mut self, chain: &str, rest: std::fmt::Arguments<'_>) {
        let mut line = format!("-A {chain} ");
        line.write_fmt(rest).expect("writing to a String");
        self.chain(chain).push(line);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub nat: TableRules,
    pub filter: TableRules,
}

impl Ruleset {
    pub fn table(&self, t: Table) -> &TableRules {
        match t {
            Table::Nat => &self.nat,
            Table::Filter => &self.filter,
        }
    }
    pub fn rule_count(&self) -> usize {
        Table::ALL
            .iter()
            .map(|t| self.table(*t).chains.values().map(Vec::len).sum::<usize>())
            .sum()
    }
}

/// kube-proxy's chain suffix: the first 16 base32 characters of sha256 of the parts.
fn hash16(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let mut s = BASE32.encode(&h.finalize());
    s.truncate(16);
    s
}

pub fn port_hash(id: &ServicePortName) -> String {
    hash16(&[&id.to_string(), id.protocol.as_str()])
}

pub fn svc_chain(id: &ServicePortName) -> String {
    format!("KUBE-SVC-{}", port_hash(id))
}
pub fn svl_chain(id: &ServicePortName) -> String {
    format!("KUBE-SVL-{}", port_hash(id))
}
pub fn ext_chain(id: &ServicePortName) -> String {
    format!("KUBE-EXT-{}", port_hash(id))
}
pub fn sep_chain(id: &ServicePortName, ep: &Endpoint) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&[&id.to_string(), id.protocol.as_str(), &ep.to_string()])
    )
}

/// The chains every service port adds lines to; every other chain a port renders is its own
/// (its name hashes the port's name), so no two ports write the same one.
pub const SHARED_CHAINS: [(Table, &str); 4] = [
    (Table::Nat, KUBE_SERVICES),
    (Table::Nat, KUBE_NODEPORTS),
    (Table::Filter, KUBE_SERVICES),
    (Table::Filter, KUBE_EXTERNAL_SERVICES),
];

fn is_shared(t: Table, chain: &str) -> bool {
    SHARED_CHAINS.iter().any(|(st, c)| *st == t && *c == chain)
}

/// A service port whose rules differ from the previous render; `None` on a side means the
/// port did not exist there.
#[derive(Debug, Clone)]
pub struct PortChange {
    pub id: ServicePortName,
    pub old: Option<(ServicePort, Arc<Ruleset>)>,
    pub new: Option<Arc<Ruleset>>,
}

/// What `RenderCache::update` changed.
#[derive(Debug, Clone, Default)]
pub struct RenderDelta {
    /// The node's settings changed, so the fixed chains may differ and every port was
    /// rendered again: only a full restore applies this.
    pub node_changed: bool,
    /// The node name the previous rules were rendered for.
    pub old_node: Option<String>,
    /// Sorted by port name, so the restore input is deterministic.
    pub ports: Vec<PortChange>,
}

/// The rendered rules of the last model, kept per service port: each port's own chains and
/// its lines in the shared chains behind an `Arc`. Updating it renders only ports whose inputs
/// changed and reports them, so a sync after one service changed costs one service (plus a
/// pass of cheap comparisons), not a rebuild and comparison of the whole ruleset.
#[derive(Debug, Default)]
pub struct RenderCache {
    node: Option<NodeInfo>,
    /// Rules that depend on the node only: the fixed chains and the shared chains (empty).
    base: Ruleset,
    /// The lines that must end nat KUBE-SERVICES (the jumps to KUBE-NODEPORTS).
    services_tail: Vec<String>,
    services: BTreeMap<ServicePortName, (ServicePort, Arc<Ruleset>)>,
    rules: usize,
}

impl RenderCache {
    pub fn len(&self) -> usize {
        self.services.len()
    }
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
    /// How many rules the whole ruleset holds.
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// Brings the cache to `model`, rendering only the ports that are new or differ.
    pub fn update(&mut self, model: &Model) -> RenderDelta {
        let mut delta = RenderDelta::default();
        // A port's rules depend on the node too (its name, CIDRs), so a node change renders
        // everything again; the old parts are kept aside to report what each port had.
        let mut previous = BTreeMap::new();
        if self.node.as_ref() != Some(&model.node) {
            delta.node_changed = true;
            delta.old_node = self.node.as_ref().map(|n| n.name.clone());
            previous = std::mem::take(&mut self.services);
            let (base, tail) = render_base(&model.node);
            self.base = base;
            self.services_tail = tail;
            self.node = Some(model.node.clone());
            self.rules = self.base.rule_count() + self.services_tail.len();
        } else {
            delta.old_node = Some(model.node.name.clone());
        }
        for sp in model.services.values() {
            match self.services.get_mut(&sp.id) {
                Some((seen, _)) if seen == sp => {}
                Some(entry) => {
                    let part = Arc::new(render_port(model, sp));
                    self.rules += part.rule_count();
                    let old = std::mem::replace(entry, (sp.clone(), part.clone()));
                    self.rules -= old.1.rule_count();
                    delta.ports.push(PortChange {
                        id: sp.id.clone(),
                        old: Some(old),
                        new: Some(part),
                    });
                }
                None => {
                    let part = Arc::new(render_port(model, sp));
                    self.rules += part.rule_count();
                    self.services
                        .insert(sp.id.clone(), (sp.clone(), part.clone()));
                    delta.ports.push(PortChange {
                        id: sp.id.clone(),
                        old: previous.remove(&sp.id),
                        new: Some(part),
                    });
                }
            }
        }
        for (id, old) in previous {
            delta.ports.push(PortChange {
                id,
                old: Some(old),
                new: None,
            });
        }
        // Every port of the model is in the cache now; anything more is a removed port.
        if self.services.len() > model.services.len() {
            let gone: Vec<ServicePortName> = self
                .services
                .keys()
                .filter(|id| !model.services.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                let old = self.services.remove(&id).expect("listed just above");
                self.rules -= old.1.rule_count();
                delta.ports.push(PortChange {
                    id,
                    old: Some(old),
                    new: None,
                });
            }
        }
        delta.ports.sort_by(|a, b| a.id.cmp(&b.id));
        delta
    }

    /// The whole ruleset of the cached model.
    pub fn ruleset(&self) -> Ruleset {
        let mut rs = self.base.clone();
        for (_, part) in self.services.values() {
            merge(&mut rs.nat, &part.nat);
            merge(&mut rs.filter, &part.filter);
        }
        rs.nat
            .chain(KUBE_SERVICES)
            .extend(self.services_tail.iter().cloned());
        rs
    }

    /// The lines of one shared chain, composed from every port in order.
    fn shared_lines(&self, t: Table, chain: &str) -> Vec<&String> {
        let mut out: Vec<&String> = self
            .base
            .table(t)
            .chains
            .get(chain)
            .into_iter()
            .flatten()
            .collect();
        for (_, part) in self.services.values() {
            out.extend(part.table(t).chains.get(chain).into_iter().flatten());
        }
        if t == Table::Nat && chain == KUBE_SERVICES {
            out.extend(self.services_tail.iter());
        }
        out
    }

    /// `iptables-restore --noflush` input that takes a kernel holding the previous render to
    /// this one, touching only the chains of the changed ports and the shared chains whose
    /// lines from those ports changed. `None` when the delta needs a full restore (the node
    /// changed). Chains a port no longer has are flushed and deleted in the same transaction:
    /// measured on nft, the `-X` lines cost nothing noticeable next to the commit itself.
    pub fn partial_text(&self, delta: &RenderDelta) -> Option<String> {
        if delta.node_changed {
            return None;
        }
        let empty = TableRules::default();
        let mut out = String::new();
        for t in Table::ALL {
            let mut changed: BTreeMap<&str, &[String]> = BTreeMap::new();
            let mut removed: BTreeSet<&str> = BTreeSet::new();
            let mut shared: BTreeSet<&str> = BTreeSet::new();
            for c in &delta.ports {
                let old = c.old.as_ref().map_or(&empty, |(_, p)| p.table(t));
                let new = c.new.as_ref().map_or(&empty, |p| p.table(t));
                for (name, lines) in &new.chains {
                    if old.chains.get(name) == Some(lines) {
                        continue;
                    }
                    if is_shared(t, name) {
                        shared.insert(name);
                    } else {
                        changed.insert(name, lines);
                    }
                }
                for name in old.chains.keys() {
                    if new.chains.contains_key(name) {
                        continue;
                    }
                    if is_shared(t, name) {
                        shared.insert(name);
                    } else {
                        removed.insert(name);
                    }
                }
            }
            if changed.is_empty() && removed.is_empty() && shared.is_empty() {
                continue;
            }
            let _ = writeln!(out, "*{}", t.name());
            for name in changed.keys().chain(shared.iter()).chain(removed.iter()) {
                let _ = writeln!(out, ":{name} - [0:0]");
            }
            for lines in changed.values() {
                for l in *lines {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            for name in &shared {
                for l in self.shared_lines(t, name) {
                    out.push_str(l);
                    out.push('\n');
                }
            }
            for name in &removed {
                let _ = writeln!(out, "-X {name}");
            }
            out.push_str("COMMIT\n");
        }
        Some(out)
    }
}

fn merge(into: &mut TableRules, part: &TableRules) {
    for (chain, lines) in &part.chains {
        match into.chains.get_mut(chain) {
            Some(have) => have.extend(lines.iter().cloned()),
            None => {
                into.chains.insert(chain.clone(), lines.clone());
            }
        }
    }
}

/// The whole ruleset for a model.
pub fn render(model: &Model) -> Ruleset {
    render_cached(model, &mut RenderCache::default())
}

/// `render`, reusing the rules of service ports that are the same as in the cache.
pub fn render_cached(model: &Model, cache: &mut RenderCache) -> Ruleset {
    cache.update(model);
    cache.ruleset()
}

fn render_port(model: &Model, sp: &ServicePort) -> Ruleset {
    let mut part = Ruleset::default();
    render_service(model, sp, &mut part);
    part
}

/// The chains that do not depend on any service, and the lines that end nat KUBE-SERVICES.
fn render_base(node: &NodeInfo) -> (Ruleset, Vec<String>) {
    let mut rs = Ruleset::default();
    let nat = &mut rs.nat;
    let filter = &mut rs.filter;
    for t in [&mut *nat, &mut *filter] {
        t.rule(CANARY, format_args!("-j RETURN"));
        t.chain(KUBE_SERVICES);
    }
    filter.chain(KUBE_EXTERNAL_SERVICES);
    nat.chain(KUBE_NODEPORTS);
    nat.rule(
        KUBE_MARK_MASQ,
        format_args!("-j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}"),
    );
    nat.rule(
        KUBE_POSTROUTING,
        format_args!("-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
    );
    // Clear the bit so a packet re-entering the stack (hairpin) is not masqueraded twice.
    nat.rule(
        KUBE_POSTROUTING,
        format_args!("-j MARK --set-xmark {MASQ_MARK}/0x0"),
    );
    nat.rule(
        KUBE_POSTROUTING,
        format_args!(
            "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE"
        ),
    );
    // Marked (service) traffic and replies are forwarded even under a default-DROP FORWARD.
    filter.rule(
        KUBE_FORWARD,
        format_args!(
            "-m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
        ),
    );
    filter.rule(
        KUBE_FORWARD,
        format_args!(
            "-m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ),
    );

    let nodeports = "kubernetes service nodeports; NOTE: this must be the last rule in this chain";
    let tail = if node.addresses.is_empty() {
        vec![format!(
            "-A {KUBE_SERVICES} -m comment --comment \"{nodeports}\" -m addrtype --dst-type LOCAL -j {KUBE_NODEPORTS}"
        )]
    } else {
        node.addresses
            .iter()
            .map(|a| {
                format!(
                    "-A {KUBE_SERVICES} -d {a}/32 -m comment --comment \"{nodeports}\" -j {KUBE_NODEPORTS}"
                )
            })
            .collect()
    };
    (rs, tail)
}

/// kube-proxy's spreading: rule i of n catches 1/(n-i) of what reaches it, so each endpoint
/// gets 1/n overall; the last rule has no condition.
fn probability(remaining: usize) -> String {
    format!("{:.10}", 1.0 / remaining as f64)
}

fn balance(
    nat: &mut TableRules,
    chain: &str,
    sp: &ServicePort,
    eps: &[&Endpoint],
    sep_names: &BTreeMap<&Endpoint, String>,
) {
    let id = &sp.id;
    if let Some(seconds) = sp.affinity_seconds {
        for ep in eps {
            let sep = &sep_names[*ep];
            nat.rule(
                chain,
                format_args!(
                    "-m comment --comment \"{id} -> {ep}\" -m recent --rcheck --seconds {seconds} --reap --name {sep} --mask 255.255.255.255 --rsource -j {sep}"
                ),
            );
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = &sep_names[*ep];
        if i + 1 < n {
            nat.rule(
                chain,
                format_args!(
                    "-m comment --comment \"{id} -> {ep}\" -m statistic --mode random --probability {} -j {sep}",
                    probability(n - i)
                ),
            );
        } else {
            nat.rule(
                chain,
                format_args!("-m comment --comment \"{id} -> {ep}\" -j {sep}"),
            );
        }
    }
}

fn render_service(model: &Model, sp: &ServicePort, rs: &mut Ruleset) {
    let id = &sp.id;
    let proto = id.protocol.as_str();
    let cidr = model.node.cluster_cidr;
    let cat = sp.categorize(&model.node.name);
    let has_endpoints = !cat.cluster.is_empty() || !cat.local.is_empty();
    let internal = if sp.internal_local {
        &cat.local
    } else {
        &cat.cluster
    };
    let external = if sp.external_local {
        &cat.local
    } else {
        &cat.cluster
    };
    let external_access = sp.externally_accessible();
    let svc = svc_chain(id);
    let svl = svl_chain(id);
    let ext = ext_chain(id);
    let uses_svc = !cat.cluster.is_empty() && (!sp.internal_local || external_access);
    let uses_svl =
        !cat.local.is_empty() && (sp.internal_local || (sp.external_local && external_access));
    let uses_ext = external_access && has_endpoints;
    let (cip, port) = (sp.cluster_ip, sp.port);

    // Cluster IP.
    if !internal.is_empty() {
        let target = if sp.internal_local { &svl } else { &svc };
        rs.nat.rule(
            KUBE_SERVICES,
            format_args!(
                "-d {cip}/32 -p {proto} -m comment --comment \"{id} cluster IP\" -m {proto} --dport {port} -j {target}"
            ),
        );
    } else {
        let what = if has_endpoints && sp.internal_local {
            "has no local endpoints"
        } else {
            "has no endpoints"
        };
        rs.filter.rule(
            KUBE_SERVICES,
            format_args!(
                "-d {cip}/32 -p {proto} -m comment --comment \"{id} {what}\" -m {proto} --dport {port} -j REJECT --reject-with icmp-port-unreachable"
            ),
        );
    }

    // External IPs and the node port go through KUBE-EXT; without endpoints they are refused,
    // with endpoints but none local under Local policy they are dropped (as kube-proxy does).
    let external_verdict = if !has_endpoints {
        Some((
            "has no endpoints",
            "REJECT --reject-with icmp-port-unreachable",
        ))
    } else if external.is_empty() {
        Some(("has no local endpoints", "DROP"))
    } else {
        None
    };
    for eip in &sp.external_ips {
        if uses_ext {
            rs.nat.rule(
                KUBE_SERVICES,
                format_args!(
                    "-d {eip}/32 -p {proto} -m comment --comment \"{id} external IP\" -m {proto} --dport {port} -j {ext}"
                ),
            );
        }
        if let Some((what, verdict)) = external_verdict {
            rs.filter.rule(
                KUBE_EXTERNAL_SERVICES,
                format_args!(
                    "-d {eip}/32 -p {proto} -m comment --comment \"{id} {what}\" -m {proto} --dport {port} -j {verdict}"
                ),
            );
        }
    }
    if let Some(np) = sp.node_port {
        if uses_ext {
            rs.nat.rule(
                KUBE_NODEPORTS,
                format_args!(
                    "-p {proto} -m comment --comment \"{id}\" -m {proto} --dport {np} -j {ext}"
                ),
            );
        }
        if let Some((what, verdict)) = external_verdict {
            rs.filter.rule(
                KUBE_EXTERNAL_SERVICES,
                format_args!(
                    "-p {proto} -m comment --comment \"{id} {what}\" -m addrtype --dst-type LOCAL -m {proto} --dport {np} -j {verdict}"
                ),
            );
        }
    }

    if uses_ext {
        if sp.external_local {
            // Pods and the node itself reach a Local service through every endpoint; only
            // traffic from outside keeps its source and stays on this node.
            if uses_svc {
                rs.nat.rule(
                    &ext,
                    format_args!(
                        "-s {cidr} -m comment --comment \"pod traffic for {id} external destinations\" -j {svc}"
                    ),
                );
                rs.nat.rule(
                    &ext,
                    format_args!(
                        "-m comment --comment \"masquerade LOCAL traffic for {id} external destinations\" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
                    ),
                );
                rs.nat.rule(
                    &ext,
                    format_args!(
                        "-m comment --comment \"route LOCAL traffic for {id} external destinations\" -m addrtype --src-type LOCAL -j {svc}"
                    ),
                );
            }
            if uses_svl {
                rs.nat.rule(&ext, format_args!("-j {svl}"));
            }
        } else {
            rs.nat.rule(
                &ext,
                format_args!(
                    "-m comment --comment \"masquerade traffic for {id} external destinations\" -j {KUBE_MARK_MASQ}"
                ),
            );
            rs.nat.rule(&ext, format_args!("-j {svc}"));
        }
    }

    let mut sep_names: BTreeMap<&Endpoint, String> = BTreeMap::new();
    let mut used: BTreeSet<&Endpoint> = BTreeSet::new();
    if uses_svc {
        used.extend(cat.cluster.iter().copied());
    }
    if uses_svl {
        used.extend(cat.local.iter().copied());
    }
    for ep in &used {
        sep_names.insert(ep, sep_chain(id, ep));
    }
    if uses_svc {
        // Traffic to the cluster IP from outside the pod network is masqueraded so that
        // replies come back through this node.
        rs.nat.rule(
            &svc,
            format_args!(
                "! -s {cidr} -d {cip}/32 -p {proto} -m comment --comment \"{id} cluster IP\" -m {proto} --dport {port} -j {KUBE_MARK_MASQ}"
            ),
        );
        balance(&mut rs.nat, &svc, sp, &cat.cluster, &sep_names);
    }
    if uses_svl {
        balance(&mut rs.nat, &svl, sp, &cat.local, &sep_names);
    }
    for (ep, sep) in &sep_names {
        let ip = ep.ip;
        // Hairpin: a pod reaching itself through the service must see the node as source.
        rs.nat.rule(
            sep,
            format_args!("-s {ip}/32 -m comment --comment \"{id}\" -j {KUBE_MARK_MASQ}"),
        );
        let recent = match sp.affinity_seconds {
            Some(_) => format!(" -m recent --set --name {sep} --mask 255.255.255.255 --rsource"),
            None => String::new(),
        };
        rs.nat.rule(
            sep,
            format_args!(
                "-p {proto} -m comment --comment \"{id}\"{recent} -m {proto} -j DNAT --to-destination {ep}"
            ),
        );
    }
}

/// `iptables-restore --noflush` input. With `applied` (what the kernel holds from the last
/// successful restore) only chains whose rules differ are written, and chains that disappeared
/// are deleted; without it every chain is written. `stale` names further chains to delete
/// (found in the kernel but not in `new`), `jumps` rules to insert into built-in chains
/// (`-I CHAIN …`). A declared chain is flushed by the restore; chains not named are left
/// alone, so rules of other programs are never touched.
pub fn restore_text(
    new: &Ruleset,
    applied: Option<&Ruleset>,
    stale: &[(Table, String)],
    jumps: &[(Table, String)],
) -> String {
    let mut out = String::new();
    for t in Table::ALL {
        let rules = new.table(t);
        let old = applied.map(|a| a.table(t));
        let changed: Vec<(&String, &Vec<String>)> = rules
            .chains
            .iter()
            .filter(|(name, lines)| old.and_then(|o| o.chains.get(*name)) != Some(*lines))
            .collect();
        let mut removed: BTreeSet<&str> = old
            .map(|o| {
                o.chains
                    .keys()
                    .filter(|k| !rules.chains.contains_key(*k))
                    .map(String::as_str)
                    .collect()
            })
            .unwrap_or_default();
        removed.extend(
            stale
                .iter()
                .filter(|(st, name)| *st == t && !rules.chains.contains_key(name))
                .map(|(_, n)| n.as_str()),
        );
        let inserts: Vec<&String> = jumps
            .iter()
            .filter(|(jt, _)| *jt == t)
            .map(|(_, l)| l)
            .collect();
        if changed.is_empty() && removed.is_empty() && inserts.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{}", t.name());
        for (name, _) in &changed {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        // Declaring a chain flushes it, so a removed chain loses its rules (and its jumps to
        // other removed chains) before any -X runs.
        for name in &removed {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for (_, lines) in &changed {
            for l in *lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        for name in &removed {
            let _ = writeln!(out, "-X {name}");
        }
        // After the rules, so the chains they jump to exist.
        for l in inserts {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::kernel::{FakeKernel, Kernel};
    use crate::proxy::model::{Ipv4Cidr, NodeInfo, Protocol};
    use std::net::Ipv4Addr;

    fn id(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
        ServicePortName {
            namespace: ns.into(),
            name: name.into(),
            port: port.into(),
            protocol,
        }
    }

    #[test]
    fn chain_names_hash_like_kube_proxy() {
        // Names every kubeadm cluster shows for its kubernetes and kube-dns services.
        assert_eq!(
            svc_chain(&id("default", "kubernetes", "https", Protocol::Tcp)),
            "KUBE-SVC-NPX46M4PTMTKRN6Y"
        );
        assert_eq!(
            svc_chain(&id("kube-system", "kube-dns", "dns", Protocol::Udp)),
            "KUBE-SVC-TCOU7JCQXEZGVUNU"
        );
        assert_eq!(
            svc_chain(&id("kube-system", "kube-dns", "dns-tcp", Protocol::Tcp)),
            "KUBE-SVC-ERIFXISQEP7F7OF4"
        );
        let i = id("default", "web", "", Protocol::Tcp);
        assert_eq!(svl_chain(&i)[9..], svc_chain(&i)[9..]);
        assert_eq!(ext_chain(&i)[9..], svc_chain(&i)[9..]);
        assert_ne!(
            svc_chain(&i),
            svc_chain(&id("default", "web", "", Protocol::Udp))
        );
        assert!(
            svc_chain(&i).len() <= 28,
            "iptables chain names are at most 28 bytes"
        );
    }

    fn ep(ip: [u8; 4], port: u16, node: &str) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::from(ip),
            port,
            ready: true,
            serving: true,
            terminating: false,
            node: Some(node.into()),
        }
    }

    fn model(ports: Vec<ServicePort>) -> Model {
        Model {
            node: NodeInfo {
                name: "n1".into(),
                addresses: vec![],
                cluster_cidr: "10.244.0.0/16".parse::<Ipv4Cidr>().unwrap(),
                service_cidr: "10.96.0.0/12".parse().unwrap(),
            },
            services: ports.into_iter().map(|p| (p.id.clone(), p)).collect(),
        }
    }

    fn web(endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            id: id("default", "web", "http", Protocol::Tcp),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 20),
            port: 80,
            node_port: None,
            external_ips: vec![],
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            endpoints,
        }
    }

    fn three() -> Vec<Endpoint> {
        vec![
            ep([10, 244, 1, 2], 8080, "n1"),
            ep([10, 244, 2, 2], 8080, "n2"),
            ep([10, 244, 3, 2], 8080, "n3"),
        ]
    }

    fn rules<'a>(t: &'a TableRules, chain: &str) -> &'a [String] {
        t.chains.get(chain).map(Vec::as_slice).unwrap_or(&[])
    }

    fn probability_of(line: &str) -> Option<f64> {
        let (_, rest) = line.split_once("--probability ")?;
        rest.split(' ').next()?.parse().ok()
    }

    #[test]
    fn cluster_ip_spreads_evenly_over_endpoints() {
        let sp = web(three());
        let rs = render(&model(vec![sp.clone()]));
        let svc = svc_chain(&sp.id);
        let services = rules(&rs.nat, KUBE_SERVICES);
        assert!(services[0].contains("-d 10.96.0.20/32 -p tcp"));
        assert!(services[0].ends_with(&format!("--dport 80 -j {svc}")));
        assert!(services.last().unwrap().contains("-j KUBE-NODEPORTS"));
        let chain = rules(&rs.nat, &svc);
        assert_eq!(chain.len(), 4);
        assert!(chain[0].starts_with(&format!("-A {svc} ! -s 10.244.0.0/16 -d 10.96.0.20/32")));
        assert!(chain[0].ends_with("-j KUBE-MARK-MASQ"));
        // The chance each endpoint is picked is 1/3: p0, (1-p0)p1, (1-p0)(1-p1).
        let p: Vec<Option<f64>> = chain[1..].iter().map(|l| probability_of(l)).collect();
        let (p0, p1) = (p[0].unwrap(), p[1].unwrap());
        assert_eq!(p[2], None, "the last endpoint takes whatever is left");
        for share in [p0, (1.0 - p0) * p1, (1.0 - p0) * (1.0 - p1)] {
            assert!((share - 1.0 / 3.0).abs() < 1e-6, "{share}");
        }
        // One SEP chain per endpoint: hairpin masquerade, then DNAT to the endpoint.
        for e in &sp.endpoints {
            let sep = sep_chain(&sp.id, e);
            let l = rules(&rs.nat, &sep);
            assert_eq!(l.len(), 2, "{l:?}");
            assert!(l[0].contains(&format!("-s {}/32", e.ip)) && l[0].ends_with("KUBE-MARK-MASQ"));
            assert!(l[1].ends_with(&format!("-j DNAT --to-destination {e}")));
            assert!(chain.iter().any(|r| r.ends_with(&format!("-j {sep}"))));
        }
        assert!(rules(&rs.filter, KUBE_SERVICES).is_empty());
    }

    #[test]
    fn no_endpoints_rejects_in_filter_and_writes_no_service_chain() {
        let mut sp = web(vec![]);
        sp.node_port = Some(30080);
        let rs = render(&model(vec![sp.clone()]));
        assert!(!rs.nat.chains.contains_key(&svc_chain(&sp.id)));
        assert!(!rs.nat.chains.contains_key(&ext_chain(&sp.id)));
        assert!(rules(&rs.nat, KUBE_NODEPORTS).is_empty());
        let reject = rules(&rs.filter, KUBE_SERVICES);
        assert_eq!(reject.len(), 1);
        assert!(reject[0].contains("-d 10.96.0.20/32") && reject[0].contains("has no endpoints"));
        assert!(reject[0].ends_with("-j REJECT --reject-with icmp-port-unreachable"));
        let ext = rules(&rs.filter, KUBE_EXTERNAL_SERVICES);
        assert_eq!(ext.len(), 1);
        assert!(ext[0].contains("--dport 30080") && ext[0].contains("REJECT"));
        // Not ready endpoints count as none.
        let mut down = three();
        for e in &mut down {
            e.ready = false;
            e.serving = false;
        }
        let rs2 = render(&model(vec![web(down)]));
        assert_eq!(rules(&rs2.filter, KUBE_SERVICES).len(), 1);
    }

    #[test]
    fn node_port_with_cluster_policy_masquerades_everything() {
        let mut sp = web(three());
        sp.node_port = Some(30080);
        let rs = render(&model(vec![sp.clone()]));
        let ext = ext_chain(&sp.id);
        let np = rules(&rs.nat, KUBE_NODEPORTS);
        assert_eq!(np.len(), 1);
        assert!(np[0].contains("-p tcp") && np[0].ends_with(&format!("--dport 30080 -j {ext}")));
        let e = rules(&rs.nat, &ext);
        assert_eq!(e.len(), 2);
        assert!(e[0].ends_with("-j KUBE-MARK-MASQ"));
        assert!(e[1].ends_with(&format!("-j {}", svc_chain(&sp.id))));
        assert!(rules(&rs.filter, KUBE_EXTERNAL_SERVICES).is_empty());
    }

    #[test]
    fn external_local_keeps_outside_traffic_on_local_endpoints() {
        let mut sp = web(three());
        sp.node_port = Some(30080);
        sp.external_local = true;
        let rs = render(&model(vec![sp.clone()]));
        let (svc, svl, ext) = (svc_chain(&sp.id), svl_chain(&sp.id), ext_chain(&sp.id));
        let e = rules(&rs.nat, &ext);
        assert!(e[0].starts_with(&format!("-A {ext} -s 10.244.0.0/16")) && e[0].ends_with(&svc));
        assert!(e.last().unwrap().ends_with(&format!("-j {svl}")));
        let local = rules(&rs.nat, &svl);
        assert_eq!(
            local.len(),
            1,
            "one local endpoint, no masquerade: {local:?}"
        );
        assert!(local[0].contains("10.244.1.2:8080"));
        // Only n2/n3 endpoints: external traffic is dropped, pods still use all endpoints.
        let mut remote = web(three()[1..].to_vec());
        remote.node_port = Some(30080);
        remote.external_local = true;
        let rs = render(&model(vec![remote.clone()]));
        assert!(!rs.nat.chains.contains_key(&svl));
        assert!(rules(&rs.nat, &ext).iter().all(|l| !l.contains(&svl)));
        let f = rules(&rs.filter, KUBE_EXTERNAL_SERVICES);
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("has no local endpoints") && f[0].ends_with("-j DROP"));
        assert!(
            rules(&rs.filter, KUBE_SERVICES).is_empty(),
            "cluster IP still works"
        );
    }

    #[test]
    fn internal_local_sends_the_cluster_ip_to_local_endpoints_only() {
        let mut sp = web(three());
        sp.internal_local = true;
        let rs = render(&model(vec![sp.clone()]));
        let svl = svl_chain(&sp.id);
        assert!(rules(&rs.nat, KUBE_SERVICES)[0].ends_with(&format!("-j {svl}")));
        assert!(!rs.nat.chains.contains_key(&svc_chain(&sp.id)));
        assert_eq!(
            rs.nat
                .chains
                .keys()
                .filter(|c| c.starts_with("KUBE-SEP-"))
                .count(),
            1
        );
        let mut remote = web(three()[1..].to_vec());
        remote.internal_local = true;
        let rs = render(&model(vec![remote]));
        let f = rules(&rs.filter, KUBE_SERVICES);
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("has no local endpoints") && f[0].contains("REJECT"));
    }

    #[test]
    fn client_ip_affinity_checks_recent_before_spreading() {
        let mut sp = web(three());
        sp.affinity_seconds = Some(600);
        let rs = render(&model(vec![sp.clone()]));
        let chain = rules(&rs.nat, &svc_chain(&sp.id));
        // masq, 3 recent checks, 3 spreading rules.
        assert_eq!(chain.len(), 7);
        for (i, e) in sp.endpoints.iter().enumerate() {
            let sep = sep_chain(&sp.id, e);
            assert!(chain[1 + i].contains(&format!("--rcheck --seconds 600 --reap --name {sep}")));
            let dnat = &rules(&rs.nat, &sep)[1];
            assert!(
                dnat.contains(&format!("-m recent --set --name {sep}")),
                "{dnat}"
            );
        }
    }

    #[test]
    fn external_ips_and_node_addresses() {
        let mut sp = web(three());
        sp.external_ips = vec![Ipv4Addr::new(192, 0, 2, 50)];
        let mut m = model(vec![sp.clone()]);
        m.node.addresses = vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)];
        let rs = render(&m);
        let s = rules(&rs.nat, KUBE_SERVICES);
        assert!(s.iter().any(|l| l.contains("-d 192.0.2.50/32")
            && l.contains("external IP")
            && l.ends_with(&ext_chain(&sp.id))));
        let np: Vec<_> = s
            .iter()
            .filter(|l| l.ends_with("-j KUBE-NODEPORTS"))
            .collect();
        assert_eq!(np.len(), 2);
        assert!(np[0].contains("-d 192.0.2.1/32"));
        assert!(s.last().unwrap().ends_with("-j KUBE-NODEPORTS"));
    }

    #[test]
    fn rendering_is_deterministic_and_independent_of_input_order() {
        let a = web(three());
        let mut b = web(three());
        b.id = id("other", "api", "", Protocol::Udp);
        b.cluster_ip = Ipv4Addr::new(10, 96, 0, 21);
        let x = render(&model(vec![a.clone(), b.clone()]));
        let y = render(&model(vec![b, a]));
        assert_eq!(
            restore_text(&x, None, &[], &[]),
            restore_text(&y, None, &[], &[])
        );
    }

    #[test]
    fn the_cache_gives_what_a_fresh_render_gives() {
        let mut cache = RenderCache::default();
        let a = web(three());
        let mut b = web(three());
        b.id = id("other", "api", "", Protocol::Udp);
        b.cluster_ip = Ipv4Addr::new(10, 96, 0, 21);
        let m1 = model(vec![a.clone(), b.clone()]);
        assert_eq!(render_cached(&m1, &mut cache), render(&m1));
        assert_eq!(cache.len(), 2);
        // One service changes, one goes: still identical to rendering from scratch.
        let mut a2 = a.clone();
        a2.endpoints.pop();
        let m2 = model(vec![a2]);
        assert_eq!(render_cached(&m2, &mut cache), render(&m2));
        assert_eq!(cache.len(), 1);
        // A node change (addresses, CIDRs) invalidates everything.
        let mut m3 = m2.clone();
        m3.node.cluster_cidr = "10.200.0.0/16".parse().unwrap();
        let r3 = render_cached(&m3, &mut cache);
        assert_eq!(r3, render(&m3));
        assert!(r3.nat.chains[&svc_chain(&a.id)][0].contains("! -s 10.200.0.0/16"));
    }

    #[test]
    fn full_text_declares_every_chain_before_any_rule() {
        let rs = render(&model(vec![web(three())]));
        let text = restore_text(&rs, None, &[], &[]);
        let tables: Vec<&str> = text.lines().filter(|l| l.starts_with('*')).collect();
        assert_eq!(tables, ["*nat", "*filter"]);
        assert_eq!(text.matches("COMMIT").count(), 2);
        for block in text.split("COMMIT\n").filter(|b| !b.is_empty()) {
            let lines: Vec<&str> = block.lines().collect();
            let first_rule = lines.iter().position(|l| l.starts_with("-A")).unwrap();
            let last_decl = lines.iter().rposition(|l| l.starts_with(':')).unwrap();
            assert!(last_decl < first_rule);
            let declared: BTreeSet<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix(':'))
                .map(|l| l.split(' ').next().unwrap())
                .collect();
            // Every jump target is a built-in target or a chain declared in this block.
            for l in block.lines().filter(|l| l.starts_with("-A")) {
                let target = l.split(" -j ").nth(1).unwrap().split(' ').next().unwrap();
                assert!(
                    [
                        "RETURN",
                        "MARK",
                        "MASQUERADE",
                        "ACCEPT",
                        "DNAT",
                        "REJECT",
                        "DROP"
                    ]
                    .contains(&target)
                        || declared.contains(target),
                    "{l}"
                );
            }
        }
        assert!(
            !text.contains(":INPUT") && !text.contains(":PREROUTING"),
            "built-ins untouched"
        );
    }

    #[test]
    fn partial_text_holds_only_changed_chains_and_deletes_removed_ones() {
        let before = render(&model(vec![web(three())]));
        assert_eq!(
            restore_text(&before, Some(&before), &[], &[]),
            "",
            "nothing changed"
        );
        // Scale 3 → 2: the SVC chain changes, one SEP goes, KUBE-SERVICES stays as it was.
        let sp = web(three()[..2].to_vec());
        let after = render(&model(vec![sp.clone()]));
        let text = restore_text(&after, Some(&before), &[], &[]);
        let svc = svc_chain(&sp.id);
        let gone = sep_chain(&sp.id, &three()[2]);
        assert!(text.starts_with("*nat\n"));
        assert!(!text.contains("*filter"), "{text}");
        assert!(text.contains(&format!(":{svc} - [0:0]")));
        assert!(text.contains(&format!(":{gone} - [0:0]\n")));
        assert!(text.contains(&format!("-X {gone}\n")));
        assert!(!text.contains(":KUBE-SERVICES"));
        let kept = sep_chain(&sp.id, &three()[0]);
        assert!(
            !text.contains(&format!(":{kept} ")),
            "unchanged SEP not rewritten"
        );
        assert!(!text.contains(&format!("-A {kept} ")));
        // Down to 0: the service's chains go, KUBE-SERVICES changes, filter gets a REJECT.
        let empty = render(&model(vec![web(vec![])]));
        let text = restore_text(&empty, Some(&after), &[], &[]);
        assert!(text.contains(&format!("-X {svc}")));
        assert!(text.contains(":KUBE-SERVICES - [0:0]"));
        assert!(text.contains("*filter") && text.contains("-j REJECT"));
        // Stale chains found in the kernel are deleted on a full sync too.
        let text = restore_text(
            &empty,
            None,
            &[(Table::Nat, "KUBE-SEP-OLDOLDOLDOLDOLDO".into())],
            &[(Table::Filter, "-I INPUT -j KUBE-EXTERNAL-SERVICES".into())],
        );
        let filter = text.split("*filter\n").nth(1).unwrap();
        assert!(
            filter.ends_with("-I INPUT -j KUBE-EXTERNAL-SERVICES\nCOMMIT\n"),
            "{filter}"
        );
        assert!(text.contains("-X KUBE-SEP-OLDOLDOLDOLDOLDO"));
    }

    /// `n` services named svc-0… with three endpoints each, every tenth with a node port.
    fn many(n: usize) -> Model {
        let ports = (0..n)
            .map(|i| {
                let mut sp = web((0..3)
                    .map(|j| ep([10, 244, (i / 200) as u8, (i % 200) as u8 + j], 8080, "n1"))
                    .collect());
                sp.id = id("ns", &format!("svc-{i}"), "http", Protocol::Tcp);
                sp.cluster_ip = Ipv4Addr::from(0x0a60_0100 + i as u32);
                sp.node_port = (i % 10 == 0).then_some(30000 + i as u16);
                sp
            })
            .collect();
        model(ports)
    }

    fn owned(k: &FakeKernel, t: Table) -> BTreeMap<String, Vec<String>> {
        k.tables[&t]
            .iter()
            .filter(|(name, _)| name.starts_with("KUBE-"))
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect()
    }

    /// Applies `m` to the cache and the fake kernel through a partial restore and checks the
    /// kernel then holds exactly a fresh render of `m`; returns the restore input.
    fn step(cache: &mut RenderCache, k: &mut FakeKernel, m: &Model) -> String {
        let delta = cache.update(m);
        let text = cache.partial_text(&delta).expect("same node: partial");
        if !text.is_empty() {
            k.restore(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        }
        let fresh = render(m);
        assert_eq!(cache.ruleset(), fresh);
        assert_eq!(cache.rule_count(), fresh.rule_count());
        for t in Table::ALL {
            assert_eq!(owned(k, t), fresh.table(t).chains, "{}", t.name());
        }
        text
    }

    #[test]
    fn partial_restores_keep_the_kernel_equal_to_a_fresh_render() {
        let mut m = many(60);
        let mut cache = RenderCache::default();
        let mut k = FakeKernel::default();
        let delta = cache.update(&m);
        assert!(delta.node_changed && delta.ports.len() == 60);
        k.restore(&restore_text(&cache.ruleset(), None, &[], &[]))
            .unwrap();
        let name = |i: usize| id("ns", &format!("svc-{i}"), "http", Protocol::Tcp);

        // Scale down: one SVC chain rewritten, one SEP chain deleted, nothing shared touched.
        let gone = m.services[&name(7)].endpoints[2].clone();
        m.services.get_mut(&name(7)).unwrap().endpoints.pop();
        let text = step(&mut cache, &mut k, &m);
        assert!(
            !text.contains(KUBE_SERVICES) && !text.contains("*filter"),
            "{text}"
        );
        assert!(text.contains(&format!("-X {}\n", sep_chain(&name(7), &gone))));
        let declared: Vec<&str> = text.lines().filter(|l| l.starts_with(':')).collect();
        assert_eq!(declared.len(), 2, "{text}");
        // Scale up with a new address, a node port service losing every endpoint (its
        // KUBE-EXT goes, KUBE-NODEPORTS loses its line, filter gets the REJECTs), a port
        // removed and one added, all in one sync.
        m.services
            .get_mut(&name(7))
            .unwrap()
            .endpoints
            .push(ep([10, 244, 99, 1], 8080, "n2"));
        m.services.get_mut(&name(20)).unwrap().endpoints.clear();
        m.services.remove(&name(33));
        let mut added = m.services[&name(1)].clone();
        added.id = name(1000);
        added.cluster_ip = Ipv4Addr::new(10, 96, 9, 9);
        m.services.insert(added.id.clone(), added);
        let text = step(&mut cache, &mut k, &m);
        for shared in [
            ":KUBE-SERVICES",
            ":KUBE-NODEPORTS",
            ":KUBE-EXTERNAL-SERVICES",
        ] {
            assert!(text.contains(shared), "{shared} not rewritten: {text}");
        }
        assert!(text.contains(&format!("-X {}", ext_chain(&name(20)))));
        assert!(text.contains(&format!("-X {}", svc_chain(&name(33)))));
        // The same model again: nothing to write.
        assert_eq!(step(&mut cache, &mut k, &m), "");
        // Back to endpoints for svc-20.
        m.services.get_mut(&name(20)).unwrap().endpoints = three();
        step(&mut cache, &mut k, &m);
        // A node change cannot be applied in parts.
        m.node.addresses = vec![Ipv4Addr::new(192, 0, 2, 1)];
        let delta = cache.update(&m);
        assert!(delta.node_changed && cache.partial_text(&delta).is_none());
        assert_eq!(cache.ruleset(), render(&m));
    }

    #[test]
    fn a_partial_restore_does_not_grow_with_the_number_of_services() {
        // The same endpoint change among 5 and among 2,000 services writes the same input.
        let change = |n: usize| {
            let mut m = many(n);
            let mut cache = RenderCache::default();
            cache.update(&m);
            let sp = m
                .services
                .get_mut(&id("ns", "svc-3", "http", Protocol::Tcp))
                .unwrap();
            sp.endpoints[2].ip = Ipv4Addr::new(10, 244, 250, 1);
            let delta = cache.update(&m);
            assert_eq!(delta.ports.len(), 1);
            cache.partial_text(&delta).unwrap()
        };
        let small = change(5);
        assert!(small.lines().count() > 3, "{small}");
        assert_eq!(small, change(2000));
    }
}
