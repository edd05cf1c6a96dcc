//! Service proxy benchmark (root; not a test). In fresh network namespaces it measures
//!   1. a full sync of N services × 3 endpoints through the proxy (render + restore + jumps)
//!      against `iptables-restore` alone on the same rules file, in the same run;
//!   2. a partial sync after one service's endpoints change, beside the full-sync time.
//!
//! `cargo run --release -p skiff-agent --example proxy_bench -- [--services N] [--backend nft|legacy]`
//!
//! The bench thread enters each namespace itself (setns) and runs the tools directly, as the
//! agent does on a node; `ip netns exec` would add its own mount-namespace setup to every
//! restore.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use skiff_agent::proxy::apply::Proxier;
use skiff_agent::proxy::kernel::{Backend, Iptables};
use skiff_agent::proxy::model::{
    self, Endpoint, Model, NodeInfo, Protocol, ServicePort, ServicePortName,
};
use skiff_agent::proxy::render;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("skpx-bench-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip netns add {name} failed (root needed)");
        Netns(name)
    }
    fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.0]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
    /// Runs `f` with this thread (and so the processes it starts) in the namespace.
    fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("own netns");
        let ns = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("netns file");
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the bench namespace");
        let out = f();
        setns(&home, CloneFlags::CLONE_NEWNET).expect("setns back");
        out
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn endpoint(i: usize, j: usize, generation: usize) -> Endpoint {
    // 10.244.0.0/16 holds 65k addresses: spread endpoints over it by service and slot.
    let n = (i * 3 + j + generation * 7) % 65_000 + 2;
    Endpoint {
        ip: Ipv4Addr::new(10, 244, (n / 256) as u8, (n % 256) as u8),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        node: Some(format!("node-{}", j)),
    }
}

fn model(services: usize) -> Model {
    let mut out = std::collections::BTreeMap::new();
    for i in 0..services {
        let id = ServicePortName {
            namespace: format!("ns-{}", i % 50),
            name: format!("svc-{i}"),
            port: "http".into(),
            protocol: Protocol::Tcp,
        };
        let ip = 0x0a60_0000u32 + 10 + i as u32; // 10.96.0.10 onwards
        let sp = ServicePort {
            id: id.clone(),
            cluster_ip: Ipv4Addr::from(ip),
            port: 80,
            node_port: (i % 10 == 0).then(|| 30000 + (i / 10) as u16),
            external_ips: vec![],
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            endpoints: (0..3).map(|j| endpoint(i, j, 0)).collect(),
        };
        out.insert(id, sp);
    }
    Model {
        node: NodeInfo {
            name: "node-0".into(),
            addresses: vec![],
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            service_cidr: "10.96.0.0/12".parse().expect("cidr"),
        },
        services: out,
    }
}

/// The API objects the agent's reflectors would hold for `model(services)`: what the controller
/// turns into a model before every sync.
fn api_objects(services: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = Vec::with_capacity(services);
    let mut slices = Vec::with_capacity(services);
    for i in 0..services {
        let (ns, name) = (format!("ns-{}", i % 50), format!("svc-{i}"));
        let ip = Ipv4Addr::from(0x0a60_0000u32 + 10 + i as u32);
        let node_port = (i % 10 == 0).then(|| 30000 + (i / 10) as u16);
        let mut port = serde_json::json!({"name": "http", "port": 80, "protocol": "TCP"});
        if let Some(np) = node_port {
            port["nodePort"] = np.into();
        }
        svcs.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {
                    "type": if node_port.is_some() { "NodePort" } else { "ClusterIP" },
                    "clusterIP": ip.to_string(),
                    "ports": [port],
                },
            }))
            .expect("a Service"),
        );
        let endpoints: Vec<serde_json::Value> = (0..3)
            .map(|j| {
                let e = endpoint(i, j, 0);
                serde_json::json!({
                    "addresses": [e.ip.to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": e.node,
                })
            })
            .collect();
        slices.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "namespace": ns,
                    "name": format!("{name}-abcde"),
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }))
            .expect("an EndpointSlice"),
        );
    }
    (svcs, slices)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("proxy_bench needs root (network namespaces, iptables)");
        std::process::exit(2);
    }
    let services: usize = arg("--services")
        .map(|s| s.parse().expect("--services N"))
        .unwrap_or(5000);
    let rounds: usize = arg("--rounds")
        .map(|s| s.parse().expect("--rounds N"))
        .unwrap_or(3);
    let probe = Netns::new("probe");
    let backend = match arg("--backend").as_deref() {
        Some("nft") => Backend::Nft,
        Some("legacy") => Backend::Legacy,
        Some(other) => panic!("--backend {other}: nft or legacy"),
        None => {
            Iptables::detect(probe.prefix())
                .expect("detect backend")
                .backend
        }
    };
    drop(probe);
    let restore_tool = match backend {
        Backend::Nft => "iptables-nft-restore",
        Backend::Legacy => "iptables-legacy-restore",
    };
    let m = model(services);
    // The controller builds the model from its stores before each sync; that is part of the
    // time from an EndpointSlice change to new rules, so it is timed here too.
    let (svc_objects, slice_objects) = api_objects(services);
    let mut builds = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        let (built, problems) =
            model::build(svc_objects.iter(), slice_objects.iter(), m.node.clone());
        builds.push(t.elapsed());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(built, m, "the API objects describe the bench's model");
    }
    // Exactly what the proxy's first sync restores into an empty namespace: every chain and
    // every jump from the built-in chains.
    let jumps: Vec<_> = render::JUMPS
        .iter()
        .map(|(t, chain, rule)| (*t, format!("-I {chain} {rule}")))
        .collect();
    let text = render::restore_text(&render::render(&m), None, &[], &jumps);
    println!(
        "proxy_bench: {services} services x 3 endpoints, backend {backend:?}, {} rules, {} KiB restore input, {rounds} rounds",
        text.lines().filter(|l| l.starts_with("-A")).count(),
        text.len() / 1024
    );
    let load_start = load_average();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &text).expect("writing the rules file");

    let (mut proxy_total, mut proxy_render, mut alone) = (vec![], vec![], vec![]);
    let (mut partial, mut partial_render, mut partial_restore) = (vec![], vec![], vec![]);
    let mut additions = vec![];
    for round in 0..rounds {
        // iptables-restore alone, same file, fresh namespace.
        let ns = Netns::new(&format!("alone{round}"));
        let input = std::fs::File::open(file.path()).expect("rules file");
        let (took, ok) = ns.enter(|| {
            let t = Instant::now();
            let ok = Command::new(restore_tool)
                .arg("--noflush")
                .stdin(Stdio::from(input))
                .status()
                .expect("running iptables-restore")
                .success();
            (t.elapsed(), ok)
        });
        alone.push(took);
        assert!(ok, "{restore_tool} failed");
        drop(ns);

        // The proxy: model → render → restore (+ listing chains and adding the jumps).
        let ns = Netns::new(&format!("proxy{round}"));
        let kernel = Iptables {
            backend,
            prefix: vec![],
            conntrack: None,
        };
        let mut proxier = Proxier::new(kernel);
        ns.enter(|| {
            let t = Instant::now();
            let report = proxier.sync(&m, true).expect("full sync");
            proxy_total.push(t.elapsed());
            proxy_render.push(report.render);

            // One service's endpoints change: a partial sync.
            let mut changed = m.clone();
            for g in 1..=5 {
                let sp = changed
                    .services
                    .values_mut()
                    .nth((round * 997 + g * 131) % services)
                    .expect("a service");
                let i = sp.cluster_ip.to_bits() as usize;
                sp.endpoints = (0..3).map(|j| endpoint(i, j, g)).collect();
                let t = Instant::now();
                let r = proxier.sync(&changed, false).expect("partial sync");
                partial.push(t.elapsed());
                partial_render.push(r.render);
                partial_restore.push(r.restore);
                assert!(!r.full);
            }
            // A new service: its chains plus the whole KUBE-SERVICES chain, which gains a line.
            let mut added = changed.services.values().next().expect("a service").clone();
            added.id.name = format!("added-{round}");
            added.cluster_ip = Ipv4Addr::new(10, 100, 0, round as u8 + 1);
            changed.services.insert(added.id.clone(), added);
            let t = Instant::now();
            let r = proxier.sync(&changed, false).expect("partial sync");
            additions.push(t.elapsed());
            assert!(!r.full);
        });
        drop(ns);
    }
    let (total, render_t, alone) = (median(proxy_total), median(proxy_render), median(alone));
    let best_partial = partial.iter().min().copied().unwrap_or_default();
    let worst_partial = partial.iter().max().copied().unwrap_or_default();
    let partials = partial.len();
    let partial = median(partial);
    println!("iptables-restore alone (same file):  {:8.1} ms", ms(alone));
    println!(
        "proxy full sync (read+render+restore): {:8.1} ms  (render {:.1} ms)  ratio {:.3}  [target <= 1.2]",
        ms(total),
        ms(render_t),
        total.as_secs_f64() / alone.as_secs_f64()
    );
    println!(
        "proxy partial sync, one service changed: {:8.1} ms  (render+diff {:.1} ms, restore {:.1} ms; {:.1}% of the full sync)  [target <= 100 ms]",
        ms(partial),
        ms(median(partial_render)),
        ms(median(partial_restore)),
        100.0 * partial.as_secs_f64() / total.as_secs_f64()
    );
    println!(
        "  partial sync adding one service (KUBE-SERVICES rewritten): median {:.1} ms",
        ms(median(additions))
    );
    println!(
        "  model built from {services} Services + EndpointSlices before each sync: median {:.1} ms",
        ms(median(builds))
    );
    println!(
        "  {partials} partial syncs: best {:.1} ms, median {:.1} ms, worst {:.1} ms; load average {} at the start, {} at the end",
        ms(best_partial),
        ms(partial),
        ms(worst_partial),
        load_start,
        load_average()
    );
}
