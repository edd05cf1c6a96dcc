//! Applying rendered rules: a full restore first (and after any failure, on a period, or when
//! the canary chain shows the tables were flushed), then partial restores holding only the
//! chains that changed; jump rules from the built-in chains; conntrack clean-up for UDP flows
//! whose endpoint went away. `Schedule` decides when to sync (minimum interval to coalesce
//! bursts, periodic full resync, canary checks) and is pure so it is tested with fake clocks.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::kernel::{ConntrackFlush, Kernel, KernelError};
use super::model::{Endpoint, Model, Protocol, ServicePort, ServicePortName};
use super::render::{self, Table, CANARY, JUMPS, SERVICE_CHAIN_PREFIXES};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("restoring {what} ruleset ({rules} rules): {source}")]
    Restore {
        what: &'static str,
        rules: usize,
        source: KernelError,
    },
    #[error("reading the {table} table: {source}")]
    List {
        table: &'static str,
        source: KernelError,
    },
    #[error("checking the canary chain: {0}")]
    Canary(KernelError),
}

#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub full: bool,
    pub rules: usize,
    pub restore_bytes: usize,
    pub render: Duration,
    pub restore: Duration,
    pub conntrack_flushes: usize,
}

pub struct Proxier<K: Kernel> {
    pub kernel: K,
    /// The rules of the last model rendered, per service port.
    cache: render::RenderCache,
    /// Whether the kernel holds exactly what `cache` holds (the last restore succeeded); when
    /// not, the next sync is a full one.
    in_kernel: bool,
    /// UDP flows to delete once a restore has succeeded; kept across a failed one so that an
    /// endpoint removed in a failed sync still gets its flows cleared.
    pending_flushes: BTreeSet<ConntrackFlush>,
    conntrack_warned: bool,
}

/// The endpoints traffic of a port actually goes to (cluster-wide and local ones).
fn in_use<'a>(sp: &'a ServicePort, node: &str) -> BTreeSet<&'a Endpoint> {
    let c = sp.categorize(node);
    c.cluster.into_iter().chain(c.local).collect()
}

/// UDP has no connection to end: a flow NATed to a removed endpoint keeps being sent there
/// until its conntrack entry expires, and one created while the service had no endpoints
/// keeps bypassing the new DNAT. kube-proxy deletes both kinds; so does this.
pub fn conntrack_flushes(old: &Model, new: &Model) -> Vec<ConntrackFlush> {
    let mut out = BTreeSet::new();
    let ids: BTreeSet<&ServicePortName> = old.services.keys().chain(new.services.keys()).collect();
    for id in ids {
        port_conntrack_flushes(
            (old.services.get(id), &old.node.name),
            (new.services.get(id), &new.node.name),
            &mut out,
        );
    }
    out.into_iter().collect()
}

/// `conntrack_flushes` for one service port, given what it was and is (`None`: absent) and
/// the node name each side was categorised for.
pub fn port_conntrack_flushes(
    (old, old_node): (Option<&ServicePort>, &str),
    (new, new_node): (Option<&ServicePort>, &str),
    out: &mut BTreeSet<ConntrackFlush>,
) {
    if let Some(sp) = new.filter(|sp| sp.id.protocol == Protocol::Udp) {
        let now = in_use(sp, new_node);
        let before = old.map(|o| in_use(o, old_node)).unwrap_or_default();
        if before.is_empty() && !now.is_empty() && old.is_some() {
            out.insert(ConntrackFlush {
                orig_dst: Some(sp.cluster_ip),
                dport: None,
                dst_nat: None,
            });
            if let Some(np) = sp.node_port {
                out.insert(ConntrackFlush {
                    orig_dst: None,
                    dport: Some(np),
                    dst_nat: None,
                });
            }
        }
    }
    if let Some(sp) = old.filter(|sp| sp.id.protocol == Protocol::Udp) {
        let still: BTreeSet<(std::net::Ipv4Addr, u16)> = new
            .map(|n| in_use(n, new_node).iter().map(|e| (e.ip, e.port)).collect())
            .unwrap_or_default();
        for ep in in_use(sp, old_node) {
            if still.contains(&(ep.ip, ep.port)) {
                continue;
            }
            for dst in std::iter::once(sp.cluster_ip).chain(sp.external_ips.iter().copied()) {
                out.insert(ConntrackFlush {
                    orig_dst: Some(dst),
                    dport: None,
                    dst_nat: Some(ep.ip),
                });
            }
            if let Some(np) = sp.node_port {
                out.insert(ConntrackFlush {
                    orig_dst: None,
                    dport: Some(np),
                    dst_nat: Some(ep.ip),
                });
            }
        }
    }
}

impl<K: Kernel> Proxier<K> {
    pub fn new(kernel: K) -> Self {
        Proxier {
            kernel,
            cache: render::RenderCache::default(),
            in_kernel: false,
            pending_flushes: BTreeSet::new(),
            conntrack_warned: false,
        }
    }

    /// Make the next sync a full one.
    pub fn invalidate(&mut self) {
        self.in_kernel = false;
    }

    /// Brings the kernel to `model`: a full restore when asked, first, after a failure or when
    /// the node changed; otherwise one holding only what changed since the last sync, whose
    /// cost (rendering, comparing, writing) follows the number of changed ports, not the
    /// number of services.
    pub fn sync(&mut self, model: &Model, full: bool) -> Result<SyncReport, SyncError> {
        let started = Instant::now();
        let delta = self.cache.update(model);
        let old_node = delta.old_node.as_deref().unwrap_or(&model.node.name);
        for c in &delta.ports {
            port_conntrack_flushes(
                (c.old.as_ref().map(|(sp, _)| sp), old_node),
                (model.services.get(&c.id), &model.node.name),
                &mut self.pending_flushes,
            );
        }
        let partial = if full || !self.in_kernel {
            None
        } else {
            self.cache.partial_text(&delta)
        };
        let full = partial.is_none();
        let text = match partial {
            Some(text) => text,
            None => self.full_text()?,
        };
        let render_time = started.elapsed();
        let restore_started = Instant::now();
        if !text.is_empty() {
            // A table may or may not have been applied if this fails: only a full sync is
            // safe next.
            self.in_kernel = false;
            self.kernel
                .restore(&text)
                .map_err(|source| SyncError::Restore {
                    what: if full { "full" } else { "partial" },
                    rules: text.lines().filter(|l| l.starts_with("-A")).count(),
                    source,
                })?;
        }
        self.in_kernel = true;
        let restore_time = restore_started.elapsed();
        let mut flushed = 0;
        let flushes = std::mem::take(&mut self.pending_flushes);
        if !flushes.is_empty() && !self.kernel.conntrack_available() {
            if !self.conntrack_warned {
                tracing::warn!(
                    "the conntrack tool is not installed: UDP flows to removed endpoints are not cleared"
                );
                self.conntrack_warned = true;
            }
        } else {
            for f in &flushes {
                match self.kernel.conntrack_delete(f) {
                    Ok(()) => flushed += 1,
                    Err(e) => tracing::warn!(?f, "deleting conntrack entries: {e}"),
                }
            }
        }
        Ok(SyncReport {
            full,
            rules: self.cache.rule_count(),
            restore_bytes: text.len(),
            render: render_time,
            restore: restore_time,
            conntrack_flushes: flushed,
        })
    }

    /// Every chain, plus the deletion of owned chains the kernel holds but the model does not
    /// (services deleted while no agent ran, or left by a previous one) and the jumps from the
    /// built-in chains that are missing; one read per table finds both, and the restore fixes
    /// them in the same transaction.
    fn full_text(&mut self) -> Result<String, SyncError> {
        let new = self.cache.ruleset();
        let mut stale = Vec::new();
        let mut jumps = Vec::new();
        for t in Table::ALL {
            let dump = self.kernel.dump(t).map_err(|source| SyncError::List {
                table: t.name(),
                source,
            })?;
            stale.extend(
                dump.chains
                    .iter()
                    .filter(|c| SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)))
                    .filter(|c| !new.table(t).chains.contains_key(*c))
                    .map(|c| (t, c.clone())),
            );
            jumps.extend(
                JUMPS
                    .iter()
                    .filter(|(jt, chain, rule)| {
                        *jt == t && !dump.rules.contains(&format!("-A {chain} {rule}"))
                    })
                    .map(|(jt, chain, rule)| (*jt, format!("-I {chain} {rule}"))),
            );
        }
        Ok(render::restore_text(&new, None, &stale, &jumps))
    }

    /// Whether both canary chains still exist with their rule: if someone flushed a table or
    /// deleted its chains, the next sync must rewrite everything.
    pub fn canary_present(&mut self) -> Result<bool, SyncError> {
        for t in Table::ALL {
            let rules = self
                .kernel
                .chain_rules(t, CANARY)
                .map_err(SyncError::Canary)?;
            if rules.is_none_or(|r| r.is_empty()) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Changes arriving within this interval of the last sync wait for it (kube-proxy's
    /// minSyncPeriod), so a burst costs one restore.
    pub min_interval: Duration,
    /// A full restore this often, repairing anything changed behind the proxy's back.
    pub full_interval: Duration,
    pub canary_interval: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            min_interval: Duration::from_millis(250),
            full_interval: Duration::from_secs(300),
            canary_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Sync { full: bool },
    CheckCanary,
    Wait(Duration),
}

/// When to do what; the caller reports back what happened.
#[derive(Debug)]
pub struct Schedule {
    pacing: Pacing,
    dirty: bool,
    force_full: bool,
    last_sync: Option<Instant>,
    last_full: Option<Instant>,
    last_canary: Instant,
}

impl Schedule {
    pub fn new(pacing: Pacing, now: Instant) -> Self {
        Schedule {
            pacing,
            dirty: true,
            force_full: true,
            last_sync: None,
            last_full: None,
            last_canary: now,
        }
    }

    pub fn changed(&mut self) {
        self.dirty = true;
    }

    pub fn next(&self, now: Instant) -> Step {
        let p = &self.pacing;
        let full_due = self.force_full
            || self
                .last_full
                .is_none_or(|t| now.saturating_duration_since(t) >= p.full_interval);
        if self.dirty || full_due {
            if let Some(last) = self.last_sync {
                let since = now.saturating_duration_since(last);
                if since < p.min_interval {
                    return Step::Wait(p.min_interval - since);
                }
            }
            return Step::Sync { full: full_due };
        }
        let since_canary = now.saturating_duration_since(self.last_canary);
        if since_canary >= p.canary_interval {
            return Step::CheckCanary;
        }
        let until_full = self
            .last_full
            .map(|t| {
                p.full_interval
                    .saturating_sub(now.saturating_duration_since(t))
            })
            .unwrap_or_default();
        Step::Wait((p.canary_interval - since_canary).min(until_full))
    }

    pub fn synced(&mut self, now: Instant, full: bool, ok: bool) {
        self.last_sync = Some(now);
        if ok {
            self.dirty = false;
            if full {
                self.force_full = false;
                self.last_full = Some(now);
                self.last_canary = now;
            }
        } else {
            // Retried after the minimum interval, as a full sync.
            self.force_full = true;
        }
    }

    pub fn canary_checked(&mut self, now: Instant, present: bool) {
        self.last_canary = now;
        if !present {
            self.force_full = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::kernel::FakeKernel;
    use crate::proxy::model::{NodeInfo, ServicePortName};
    use crate::proxy::render::{sep_chain, svc_chain, Ruleset, KUBE_SERVICES};
    use std::net::Ipv4Addr;

    fn ep(last: u8, node: &str) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 1, last),
            port: 53,
            ready: true,
            serving: true,
            terminating: false,
            node: Some(node.into()),
        }
    }

    fn port(name: &str, protocol: Protocol, eps: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            id: ServicePortName {
                namespace: "default".into(),
                name: name.into(),
                port: String::new(),
                protocol,
            },
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            node_port: None,
            external_ips: vec![],
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            endpoints: eps,
        }
    }

    fn model(ports: Vec<ServicePort>) -> Model {
        Model {
            node: NodeInfo {
                name: "n1".into(),
                addresses: vec![],
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                service_cidr: "10.96.0.0/12".parse().unwrap(),
            },
            services: ports.into_iter().map(|p| (p.id.clone(), p)).collect(),
        }
    }

    fn kernel_matches(k: &FakeKernel, rs: &Ruleset) {
        for t in Table::ALL {
            let chains = &k.tables[&t];
            for (name, rules) in &rs.table(t).chains {
                assert_eq!(chains.get(name), Some(rules), "{name}");
            }
            let owned: Vec<&String> = chains
                .keys()
                .filter(|c| SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)))
                .collect();
            for c in owned {
                assert!(rs.table(t).chains.contains_key(c), "stale {c} left");
            }
        }
    }

    #[test]
    fn first_sync_is_full_then_partial_and_the_kernel_follows() {
        let mut p = Proxier::new(FakeKernel::default());
        // A chain from a previous run and a chain of someone else.
        p.kernel
            .restore("*nat\n:KUBE-SVC-AAAAAAAAAAAAAAAA - [0:0]\n:OTHER - [0:0]\n-A OTHER -j RETURN\nCOMMIT\n")
            .unwrap();
        let m1 = model(vec![port(
            "dns",
            Protocol::Tcp,
            vec![ep(2, "n1"), ep(3, "n2")],
        )]);
        let r = p.sync(&m1, false).unwrap();
        assert!(r.full);
        kernel_matches(&p.kernel, &render::render(&m1));
        assert!(!p.kernel.tables[&Table::Nat].contains_key("KUBE-SVC-AAAAAAAAAAAAAAAA"));
        assert_eq!(
            p.kernel.tables[&Table::Nat]["OTHER"],
            vec!["-A OTHER -j RETURN".to_string()],
            "foreign chains untouched"
        );
        let jumps_held = |k: &FakeKernel| {
            JUMPS
                .iter()
                .map(|(t, chain, rule)| {
                    let line = format!("-A {chain} {rule}");
                    k.tables[t][*chain].iter().filter(|r| **r == line).count()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(jumps_held(&p.kernel), vec![1; JUMPS.len()]);
        p.sync(&m1, true).unwrap();
        assert_eq!(jumps_held(&p.kernel), vec![1; JUMPS.len()], "never doubled");
        assert!(p.canary_present().unwrap());

        let m2 = model(vec![port("dns", Protocol::Tcp, vec![ep(2, "n1")])]);
        let r = p.sync(&m2, false).unwrap();
        assert!(!r.full);
        let text = p.kernel.restores.last().unwrap();
        assert!(!text.contains(KUBE_SERVICES), "{text}");
        kernel_matches(&p.kernel, &render::render(&m2));
        let sp = &m1.services.values().next().unwrap();
        assert!(!p.kernel.tables[&Table::Nat].contains_key(&sep_chain(&sp.id, &ep(3, "n2"))));

        // Nothing changed: no restore at all.
        let before = p.kernel.restores.len();
        p.sync(&m2, false).unwrap();
        assert_eq!(p.kernel.restores.len(), before);
    }

    #[test]
    fn a_failed_restore_keeps_the_old_rules_and_forces_a_full_sync() {
        let mut p = Proxier::new(FakeKernel::default());
        let m1 = model(vec![port("dns", Protocol::Tcp, vec![ep(2, "n1")])]);
        p.sync(&m1, false).unwrap();
        let kept = p.kernel.tables.clone();
        p.kernel.fail_next_restore = true;
        let m2 = model(vec![port("dns", Protocol::Tcp, vec![ep(4, "n1")])]);
        let e = p.sync(&m2, false).unwrap_err();
        assert!(e.to_string().contains("partial"), "{e}");
        assert_eq!(p.kernel.tables, kept);
        let r = p.sync(&m2, false).unwrap();
        assert!(r.full, "after a failure the next sync rewrites everything");
        kernel_matches(&p.kernel, &render::render(&m2));
    }

    #[test]
    fn a_flushed_table_is_noticed_by_the_canary() {
        let mut p = Proxier::new(FakeKernel::default());
        let m = model(vec![port("dns", Protocol::Tcp, vec![ep(2, "n1")])]);
        p.sync(&m, false).unwrap();
        assert!(p.canary_present().unwrap());
        // `iptables -t nat -F`: chains stay, rules go.
        for rules in p.kernel.tables.get_mut(&Table::Nat).unwrap().values_mut() {
            rules.clear();
        }
        assert!(!p.canary_present().unwrap());
        p.sync(&m, true).unwrap();
        assert!(p.canary_present().unwrap());
        kernel_matches(&p.kernel, &render::render(&m));
        // `iptables -t filter -X` after -F: chains gone.
        p.kernel.tables.get_mut(&Table::Filter).unwrap().clear();
        assert!(!p.canary_present().unwrap());
    }

    #[test]
    fn udp_endpoint_removal_flushes_its_conntrack_entries() {
        let mut p = Proxier::new(FakeKernel {
            conntrack: true,
            ..Default::default()
        });
        let mut udp = port("dns", Protocol::Udp, vec![ep(2, "n1"), ep(3, "n1")]);
        udp.node_port = Some(30053);
        let tcp = port("web", Protocol::Tcp, vec![ep(2, "n1"), ep(3, "n1")]);
        p.sync(&model(vec![udp.clone(), tcp.clone()]), false)
            .unwrap();
        let (mut udp2, mut tcp2) = (udp.clone(), tcp.clone());
        udp2.endpoints.pop();
        tcp2.endpoints.pop();
        let r = p.sync(&model(vec![udp2.clone(), tcp2]), false).unwrap();
        assert_eq!(
            p.kernel.conntrack_deleted,
            vec![
                ConntrackFlush {
                    orig_dst: None,
                    dport: Some(30053),
                    dst_nat: Some(Ipv4Addr::new(10, 244, 1, 3))
                },
                ConntrackFlush {
                    orig_dst: Some(Ipv4Addr::new(10, 96, 0, 10)),
                    dport: None,
                    dst_nat: Some(Ipv4Addr::new(10, 244, 1, 3))
                },
            ]
        );
        assert_eq!(r.conntrack_flushes, 2);
        // 0 → 1 endpoints: flows that hit the REJECT are cleared too.
        let mut empty = udp2.clone();
        empty.endpoints.clear();
        p.sync(&model(vec![empty]), false).unwrap();
        p.kernel.conntrack_deleted.clear();
        p.sync(&model(vec![udp2]), false).unwrap();
        assert!(p.kernel.conntrack_deleted.contains(&ConntrackFlush {
            orig_dst: Some(Ipv4Addr::new(10, 96, 0, 10)),
            dport: None,
            dst_nat: None
        }));
    }

    #[test]
    fn flushes_owed_by_a_failed_sync_run_after_the_next_good_one() {
        let mut p = Proxier::new(FakeKernel {
            conntrack: true,
            ..Default::default()
        });
        let udp = port("dns", Protocol::Udp, vec![ep(2, "n1"), ep(3, "n1")]);
        p.sync(&model(vec![udp.clone()]), false).unwrap();
        let mut less = udp.clone();
        less.endpoints.pop();
        p.kernel.fail_next_restore = true;
        p.sync(&model(vec![less.clone()]), false).unwrap_err();
        assert!(
            p.kernel.conntrack_deleted.is_empty(),
            "nothing before rules"
        );
        // The model does not change again, so only the owed flush says 10.244.1.3 went.
        let r = p.sync(&model(vec![less]), false).unwrap();
        assert!(r.full);
        assert_eq!(
            p.kernel.conntrack_deleted,
            vec![ConntrackFlush {
                orig_dst: Some(Ipv4Addr::new(10, 96, 0, 10)),
                dport: None,
                dst_nat: Some(Ipv4Addr::new(10, 244, 1, 3))
            }]
        );
    }

    #[test]
    fn a_node_change_is_applied_by_a_full_sync() {
        let mut p = Proxier::new(FakeKernel::default());
        let mut m = model(vec![port("dns", Protocol::Tcp, vec![ep(2, "n1")])]);
        p.sync(&m, false).unwrap();
        m.node.addresses = vec![Ipv4Addr::new(192, 0, 2, 1)];
        let r = p.sync(&m, false).unwrap();
        assert!(r.full);
        kernel_matches(&p.kernel, &render::render(&m));
        assert!(p.kernel.tables[&Table::Nat][KUBE_SERVICES]
            .iter()
            .any(|l| l.starts_with("-A KUBE-SERVICES -d 192.0.2.1/32")));
        assert_eq!(r.rules, render::render(&m).rule_count());
    }

    #[test]
    fn without_conntrack_nothing_is_deleted() {
        let mut p = Proxier::new(FakeKernel::default());
        let udp = port("dns", Protocol::Udp, vec![ep(2, "n1"), ep(3, "n1")]);
        p.sync(&model(vec![udp.clone()]), false).unwrap();
        let mut less = udp;
        less.endpoints.pop();
        let r = p.sync(&model(vec![less.clone()]), false).unwrap();
        assert_eq!(r.conntrack_flushes, 0);
        assert!(p.kernel.conntrack_deleted.is_empty());
        assert!(p.kernel.tables[&Table::Nat].contains_key(&svc_chain(&less.id)));
    }

    #[test]
    fn schedule_coalesces_resyncs_and_reacts_to_the_canary() {
        let pacing = Pacing {
            min_interval: Duration::from_millis(500),
            full_interval: Duration::from_secs(60),
            canary_interval: Duration::from_secs(5),
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Schedule::new(pacing, t0);
        assert_eq!(s.next(t0), Step::Sync { full: true });
        s.synced(t0, true, true);
        assert_eq!(s.next(at(100)), Step::Wait(Duration::from_millis(4900)));
        s.changed();
        s.changed();
        assert_eq!(s.next(at(100)), Step::Wait(Duration::from_millis(400)));
        assert_eq!(s.next(at(500)), Step::Sync { full: false });
        s.synced(at(500), false, true);
        assert_eq!(s.next(at(5000)), Step::CheckCanary);
        s.canary_checked(at(5000), true);
        assert_eq!(s.next(at(5001)), Step::Wait(Duration::from_millis(4999)));
        s.canary_checked(at(10_000), false);
        assert_eq!(s.next(at(10_000)), Step::Sync { full: true });
        s.synced(at(10_000), true, false);
        assert_eq!(s.next(at(10_100)), Step::Wait(Duration::from_millis(400)));
        assert_eq!(
            s.next(at(10_500)),
            Step::Sync { full: true },
            "a failure retries in full"
        );
        s.synced(at(10_500), true, true);
        assert_eq!(
            s.next(at(70_500)),
            Step::Sync { full: true },
            "periodic full resync"
        );
    }
}
