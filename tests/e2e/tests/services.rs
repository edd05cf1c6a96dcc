//! The service proxy's control loop against a real skiff-server: Services and EndpointSlices
//! written with kubectl become kube-proxy-style rules in a network namespace this test
//! creates (the proxy's iptables commands run inside it), follow endpoint changes, are
//! repaired after someone flushes the nat table, and go when the Service goes. Input the proxy
//! cannot use becomes a Warning Event. Pods and traffic are covered by skiff-agent's
//! proxy_netns test; a full cluster test waits for agents in their own namespaces.

use std::process::Command;
use std::time::{Duration, Instant};

use skiff_agent::proxy::apply::Pacing;
use skiff_agent::proxy::controller::{run, ProxyConfig};
use skiff_agent::proxy::kernel::{Backend, Iptables};
use skiff_e2e::Server;

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn save(ns: &str) -> String {
    let mut out = String::new();
    for table in ["nat", "filter"] {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "iptables-nft-save", "-t", table])
            .output()
            .expect("iptables-nft-save");
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    out
}

/// Waits for `check`; on giving up, shows the namespace's rules as they were.
fn eventually(ns: &str, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}\n{}",
            save(ns)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const SERVICE: &str = r#"{"apiVersion": "v1", "kind": "Service",
  "metadata": {"name": "web", "namespace": "default"},
  "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}"#;

fn slice(addresses: &[&str]) -> String {
    let endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-manual", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
    .to_string()
}

#[test]
fn services_and_slices_become_rules_in_the_nodes_namespace() {
    if !std::fs::metadata("/usr/sbin/iptables-nft-restore").is_ok_and(|m| m.is_file())
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout != b"0\n")
            .unwrap_or(true)
    {
        println!("SKIPPED services e2e: needs root and iptables-nft (Debian's iptables package)");
        return;
    }
    let server = Server::start();
    let ns = Netns(format!("skpx-e2e-{}", std::process::id()));
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kubeconfig = server.kubeconfig();
    let client = runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    });
    let kernel = Iptables {
        backend: Backend::Nft,
        prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns.0.clone()],
        conntrack: None,
    };
    let cfg = ProxyConfig {
        node_name: "proxy-node".into(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        pacing: Pacing {
            min_interval: Duration::from_millis(100),
            full_interval: Duration::from_secs(300),
            canary_interval: Duration::from_millis(500),
        },
    };
    let proxy = runtime.spawn(run(client, cfg, kernel));

    // The built-in `kubernetes` service shows up first (with or without endpoints).
    eventually(&ns.0, "rules for the kubernetes service", || {
        save(&ns.0).contains("default/kubernetes:https")
    });

    server.ok(&[
        "create",
        "-f",
        server.write_file("svc.json", SERVICE).to_str().unwrap(),
    ]);
    let ip = server.json(&["get", "service", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    // No endpoints yet: a REJECT in the filter table.
    eventually(&ns.0, "a REJECT for the service without endpoints", || {
        save(&ns.0)
            .lines()
            .any(|l| l.contains(&format!("-d {ip}/32")) && l.contains("has no endpoints"))
    });

    let file = server.write_file(
        "slice.json",
        &slice(&["10.244.1.2", "10.244.2.2", "127.0.0.1"]),
    );
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    eventually(&ns.0, "DNAT to both endpoints", || {
        let s = save(&ns.0);
        s.contains("--to-destination 10.244.1.2:8080")
            && s.contains("--to-destination 10.244.2.2:8080")
            && !s.contains("default/web:http has no endpoints")
    });
    assert!(
        !save(&ns.0).contains("127.0.0.1:8080"),
        "a loopback endpoint is never DNAT'ed to"
    );
    eventually(&ns.0, "a Warning event on the slice", || {
        let events = server.json(&["get", "events"]);
        events["items"].as_array().unwrap().iter().any(|e| {
            e["reason"] == "IgnoredByServiceProxy"
                && e["involvedObject"]["name"] == "web-manual"
                && e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("127.0.0.1")
        })
    });

    // Scale down by hand: the removed endpoint's chain goes.
    let file = server.write_file("slice.json", &slice(&["10.244.1.2"]));
    server.ok(&["apply", "-f", file.to_str().unwrap()]);
    eventually(&ns.0, "the removed endpoint's rules gone", || {
        let s = save(&ns.0);
        !s.contains("10.244.2.2:8080") && s.contains("10.244.1.2:8080")
    });

    // Someone flushes the nat table: the canary notices and everything comes back.
    assert!(Command::new("ip")
        .args(["netns", "exec", &ns.0, "iptables-nft", "-t", "nat", "-F"])
        .status()
        .unwrap()
        .success());
    eventually(&ns.0, "the nat table restored", || {
        let s = save(&ns.0);
        s.contains("--to-destination 10.244.1.2:8080")
            && s.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")
    });

    server.ok(&["delete", "service", "web"]);
    eventually(&ns.0, "the service's rules gone", || {
        let s = save(&ns.0);
        !s.contains(&format!("-d {ip}/32")) && !s.contains("10.244.1.2:8080")
    });
    assert!(!proxy.is_finished(), "the proxy loop keeps running");
    proxy.abort();
}
