//! A 3-node cluster on this host (the `skiff-lab` code behind `skiffadm up --nodes N`),
//! driven by the real kubectl: pod-to-pod traffic across nodes over the VxLAN overlay, node ↔
//! pod, a ClusterIP Service reached from every node, NodePorts from the other nodes and from
//! the underlay, scaling, a Service without endpoints, cluster DNS (service names, search
//! path, headless, forwarding to an upstream the test runs), a flushed nat table repaired and
//! a removed node's overlay entries withdrawn on the others.
//!
//! Root only; every process and link lives in network namespaces this test creates, and the
//! `Cluster` guard removes them on drop, failure included.

use std::collections::BTreeSet;

use skiff_e2e::cluster::{missing_prerequisites, Cluster};

const OUTSIDE_NAME: &str = "outside.lab.test";
const OUTSIDE_IP: &str = "192.0.2.80";

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl exec POD -- argv…`: (success, stdout + stderr).
fn exec(c: &Cluster, pod: &str, argv: &[&str]) -> (bool, String) {
    let mut args = vec!["exec", pod, "--"];
    args.extend(argv);
    let out = c.kubectl(&args);
    (out.status.success(), text(&out))
}

fn http_get(c: &Cluster, pod: &str, url: &str) -> Option<String> {
    // Debian's static busybox wget crashes (SIGSEGV) with -T; `timeout` bounds it instead.
    let (ok, body) = exec(c, pod, &["busybox", "timeout", "10", "wget", "-qO-", url]);
    ok.then(|| body.trim().to_string())
}

/// Name → (IP, node) of the Running pods with `label`.
fn running_pods(c: &Cluster, label: &str) -> Vec<(String, String, String)> {
    let v = c.json(&["get", "pods", "-l", label]);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                p["status"]["podIP"].as_str()?.to_string(),
                p["spec"]["nodeName"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The names that answer on `url` from `pod`, asking until all of `want` were seen or the
/// attempts run out.
fn answers(c: &Cluster, pod: &str, url: &str, want: &BTreeSet<String>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..(want.len() * 12) {
        if let Some(name) = http_get(c, pod, url) {
            seen.insert(name);
        }
        if want.is_subset(&seen) {
            break;
        }
    }
    seen
}

fn iptables_nat(c: &Cluster, node: usize) -> String {
    text(&c.on_node(node, &["iptables-nft-save", "-t", "nat"]))
}

/// DNAT rules of the service `default/<svc>` on a node.
fn dnat_rules(c: &Cluster, node: usize, svc: &str) -> usize {
    let tag = format!("default/{svc}");
    iptables_nat(c, node)
        .lines()
        .filter(|l| {
            l.contains("-j DNAT") && l.split_whitespace().any(|w| w.trim_matches('"') == tag)
        })
        .count()
}

fn client_pod(name: &str, node: &str, image: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"role": "client"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]
        }
    })
    .to_string()
}

#[test]
fn three_nodes_services_dns_and_overlay() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        println!("SKIPPED cluster3: missing {}", missing.join(", "));
        return;
    }
    let name = format!("c3-{}", std::process::id());
    let mut c = Cluster::start(&name, 3, &[(OUTSIDE_NAME, OUTSIDE_IP)]);
    let nodes: Vec<String> = (1..=3).map(|i| c.spec.node_name(i)).collect();
    let node_ips: Vec<String> = (1..=3).map(|i| c.spec.node_ip(i).to_string()).collect();

    // Three Ready nodes, each with a podCIDR of its own.
    let mut cidrs = BTreeSet::new();
    for n in &nodes {
        let node = c.json(&["get", "node", n]);
        cidrs.insert(
            node["spec"]["podCIDR"]
                .as_str()
                .expect("podCIDR")
                .to_string(),
        );
    }
    assert_eq!(cidrs.len(), 3, "{cidrs:?}");
    assert_eq!(c.ready_nodes().len(), 3);

    let web = c.registry().push_busybox(
        "web",
        "1",
        &[
            "sh",
            "-c",
            "hostname > /var/www/index.html && exec httpd -f -p 80 -h /var/www",
        ],
    );
    let tools = c.registry().push_busybox("tools", "1", &["sleep", "3600"]);

    c.ok(&[
        "create",
        "deployment",
        "web",
        &format!("--image={web}"),
        "--replicas=3",
    ]);
    for (i, n) in nodes.iter().enumerate() {
        let manifest = client_pod(&format!("client-{}", i + 1), n, &tools);
        let out = c
            .kubectl_cmd(&["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut ch| {
                use std::io::Write;
                ch.stdin
                    .take()
                    .expect("stdin")
                    .write_all(manifest.as_bytes())?;
                ch.wait_with_output()
            })
            .expect("kubectl apply");
        assert!(out.status.success(), "{}", text(&out));
    }
    c.eventually("3 web pods Running on 3 nodes", 240, || {
        let pods = running_pods(&c, "app=web");
        pods.len() == 3 && pods.iter().map(|p| &p.2).collect::<BTreeSet<_>>().len() == 3
    });
    c.eventually("3 client pods Running", 240, || {
        running_pods(&c, "role=client").len() == 3
    });
    let pods = running_pods(&c, "app=web");
    let names: BTreeSet<String> = pods.iter().map(|p| p.0.clone()).collect();
    let node_index = |node: &str| nodes.iter().position(|n| n == node).expect("known node") + 1;

    // Pod → pod by pod IP, across nodes (TCP): every client reaches every web pod, each
    // answering with its own name.
    for i in 1..=3 {
        for (pod, ip, _) in &pods {
            let client = format!("client-{i}");
            let mut got = None;
            c.eventually(&format!("{client} → {pod} ({ip})"), 60, || {
                got = http_get(&c, &client, &format!("http://{ip}/"));
                got.is_some()
            });
            assert_eq!(got.as_deref(), Some(pod.as_str()));
        }
    }
    // Node → pod on other nodes, over the overlay.
    for (pod, ip, node) in &pods {
        let from = node_index(node) % 3 + 1;
        let out = c.on_node(from, &["curl", "-s", "-m", "5", &format!("http://{ip}/")]);
        assert_eq!(text(&out).trim(), pod, "node {from} → {pod}");
    }
    // Pod → node: a client asks the cluster DNS server bound on each node's address.
    for ip in &node_ips {
        let (ok, out) = exec(
            &c,
            "client-1",
            &["nslookup", "kubernetes.default.svc.cluster.local", ip],
        );
        assert!(
            ok && out.contains("10.96.0.1"),
            "client-1 → DNS on {ip}: {out}"
        );
    }
    // Pod → outside the cluster (the underlay's registry): only works masqueraded, since
    // the underlay has no route back to pod addresses.
    let bridge = c.spec.bridge_ip().to_string();
    let (ok, out) = exec(
        &c,
        "client-2",
        &[
            "busybox",
            "timeout",
            "10",
            "wget",
            "-qO-",
            &format!("http://{bridge}:5000/v2/"),
        ],
    );
    assert!(ok, "client-2 → {bridge}:5000: {out}");

    // ClusterIP: from a pod on each node, all three pods answer.
    c.ok(&["expose", "deployment", "web", "--port=80"]);
    let cluster_ip = c.json(&["get", "service", "web"])["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    for i in 1..=3 {
        let client = format!("client-{i}");
        c.eventually(
            &format!("{client} reaches all 3 pods via {cluster_ip}"),
            60,
            || answers(&c, &client, &format!("http://{cluster_ip}/"), &names) == names,
        );
    }

    // NodePort: every node's address answers, from the other nodes and from the underlay.
    c.ok(&[
        "expose",
        "deployment",
        "web",
        "--name=web-np",
        "--type=NodePort",
        "--port=80",
    ]);
    let node_port = c.json(&["get", "service", "web-np"])["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("nodePort");
    for (j, ip) in node_ips.iter().enumerate() {
        let url = format!("http://{ip}:{node_port}/");
        for from in (1..=3).filter(|k| *k != j + 1) {
            c.eventually(&format!("node {from} → {url}"), 60, || {
                let out = c.on_node(from, &["curl", "-s", "-m", "5", &url]);
                names.contains(text(&out).trim())
            });
        }
        c.eventually(&format!("underlay → {url}"), 60, || {
            let out = c.on_underlay(&["curl", "-s", "-m", "5", &url]);
            names.contains(text(&out).trim())
        });
    }

    // A Service with no endpoints refuses (REJECT), rather than letting the client time out.
    c.ok(&["create", "service", "clusterip", "empty", "--tcp=80:80"]);
    let empty_ip = c.json(&["get", "service", "empty"])["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    c.eventually("the empty service refuses", 60, || {
        let (ok, out) = exec(
            &c,
            "client-1",
            &[
                "busybox",
                "timeout",
                "20",
                "wget",
                "-qO-",
                &format!("http://{empty_ip}/"),
            ],
        );
        !ok && out.contains("refused")
    });

    // Cluster DNS from a pod: the search path, kubernetes.default, headless, and forwarding.
    let headless = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-headless"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}
    })
    .to_string();
    let out = c
        .kubectl_cmd(&["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin
                .take()
                .expect("stdin")
                .write_all(headless.as_bytes())?;
            ch.wait_with_output()
        })
        .expect("kubectl apply");
    assert!(out.status.success(), "{}", text(&out));
    // busybox's nslookup asks A and AAAA (and, for a dotless name, every search domain at
    // once) and exits 1 if any of them fails, so the answer lines decide, not the status.
    let lookup = |name: &str, want: &[&str]| {
        let mut last = String::new();
        c.eventually(&format!("nslookup {name} → {want:?}"), 60, || {
            let (_, out) = exec(&c, "client-3", &["nslookup", name]);
            last = out.clone();
            want.iter()
                .all(|w| out.contains(&format!("Address: {w}\n")))
        });
        last
    };
    let out = lookup("web.default.svc.cluster.local", &[&cluster_ip]);
    assert!(
        out.contains("Name:\tweb.default.svc.cluster.local"),
        "{out}"
    );
    // The search path: the short name is found as web.default.svc.cluster.local.
    let out = lookup("web", &[&cluster_ip]);
    assert!(
        out.contains("Name:\tweb.default.svc.cluster.local"),
        "{out}"
    );
    // busybox's nslookup searches only dotless names; its wget resolves through the C
    // library, which applies the search path (ndots:5) as every pod's resolver does.
    let (_, out) = exec(
        &c,
        "client-3",
        &[
            "busybox",
            "timeout",
            "10",
            "wget",
            "-O",
            "/dev/null",
            "https://kubernetes.default/",
        ],
    );
    assert!(
        out.contains("Connecting to kubernetes.default (10.96.0.1:443)"),
        "{out}"
    );
    assert_eq!(
        http_get(&c, "client-3", "http://web/").map(|n| names.contains(&n)),
        Some(true),
        "http://web/ through the search path"
    );
    lookup("kubernetes.default.svc.cluster.local", &["10.96.0.1"]);
    let pod_ips: Vec<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    lookup("web-headless.default.svc.cluster.local", &pod_ips);
    lookup(OUTSIDE_NAME, &[OUTSIDE_IP]);

    // Scale down: the endpoints and every node's rules follow.
    c.ok(&["scale", "deployment", "web", "--replicas=1"]);
    c.eventually("one web pod left", 120, || {
        running_pods(&c, "app=web").len() == 1
    });
    let left = running_pods(&c, "app=web")[0].0.clone();
    for i in 1..=3 {
        c.eventually(
            &format!("node {i} has one DNAT rule for default/web"),
            60,
            || dnat_rules(&c, i, "web") == 1,
        );
        let only: BTreeSet<String> = [left.clone()].into();
        let client = format!("client-{i}");
        assert_eq!(
            answers(&c, &client, &format!("http://{cluster_ip}/"), &names),
            only,
            "{client}"
        );
    }

    // Flushing a node's nat table by hand is repaired: the ClusterIP works from it again.
    let out = c.on_node(2, &["iptables-nft", "-t", "nat", "-F"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dnat_rules(&c, 2, "web"), 0, "the flush removed the rules");
    c.eventually("node 2's nat rules restored", 60, || {
        dnat_rules(&c, 2, "web") == 1
    });
    c.eventually("client-2 reaches the service after the repair", 60, || {
        http_get(&c, "client-2", &format!("http://{cluster_ip}/")).as_deref() == Some(left.as_str())
    });

    // Deleting the whole nat table (chains, canary and all) is repaired too: iptables-nft
    // then calls the missing canary chain "incompatible" rather than missing.
    let out = c.on_node(2, &["nft", "delete", "table", "ip", "nat"]);
    assert!(out.status.success(), "{}", text(&out));
    c.eventually("node 2's nat table rebuilt", 60, || {
        dnat_rules(&c, 2, "web") == 1
    });
    c.eventually("client-2 reaches the service after the rebuild", 60, || {
        http_get(&c, "client-2", &format!("http://{cluster_ip}/")).as_deref() == Some(left.as_str())
    });

    // Removing a node withdraws its route, neighbour and FDB entry on the others.
    let gone_cidr = c.json(&["get", "node", &nodes[2]])["spec"]["podCIDR"]
        .as_str()
        .expect("podCIDR")
        .to_string();
    let gone_ip = node_ips[2].clone();
    // Flannel's layout: the neighbour entry is the remote subnet's network address.
    let gone_net = format!("{} ", gone_cidr.split('/').next().expect("cidr"));
    let entries = |c: &Cluster, i: usize| {
        let routes = text(&c.on_node(i, &["ip", "route", "show", &gone_cidr]));
        let fdb = text(&c.on_node(i, &["bridge", "fdb", "show", "dev", "skiff.1"]));
        let neigh = text(&c.on_node(i, &["ip", "neigh", "show", "dev", "skiff.1"]));
        (routes, fdb, neigh)
    };
    for i in 1..=2 {
        let (routes, fdb, neigh) = entries(&c, i);
        assert!(
            routes.contains("skiff.1"),
            "node {i} route to {gone_cidr}: {routes}"
        );
        assert!(fdb.contains(&gone_ip), "node {i} fdb: {fdb}");
        assert!(neigh.contains(&gone_net), "node {i} neighbours: {neigh}");
    }
    c.remove_node(3);
    c.ok(&["delete", "node", &nodes[2]]);
    for i in 1..=2 {
        c.eventually(&format!("node {i} forgets {}", nodes[2]), 60, || {
            let (routes, fdb, neigh) = entries(&c, i);
            routes.trim().is_empty() && !fdb.contains(&gone_ip) && !neigh.contains(&gone_net)
        });
    }
}
