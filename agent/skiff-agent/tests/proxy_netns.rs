//! The service proxy against the real kernel, in namespaces this test creates: a "node" with a
//! pod bridge and three "pods" running busybox httpd (each answers with its own name), plus a
//! "client" outside the pod network joined to the node by a veth. The proxy's real apply code
//! drives iptables inside the node namespace (every command runs under `ip netns exec`), and
//! the checks are real connections. The host's own tables are never touched.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use skiff_agent::proxy::apply::Proxier;
use skiff_agent::proxy::kernel::{Backend, Iptables, Kernel};
use skiff_agent::proxy::model::{
    Endpoint, Model, NodeInfo, Protocol, ServicePort, ServicePortName,
};
use skiff_agent::proxy::render::{self, Table};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const NODE_PORT: u16 = 30080;

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces and server processes; everything goes away on drop, failure included.
struct Lab {
    tag: String,
    namespaces: Vec<String>,
    servers: Vec<Child>,
    _www: tempfile::TempDir,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("skpx-{}-{role}", self.tag)
    }

    fn exec(&self, role: &str, args: &[&str]) -> Output {
        let ns = self.ns(role);
        let mut full = vec!["ip", "netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    fn new(tag: &str) -> Lab {
        let www = tempfile::tempdir().unwrap();
        let mut lab = Lab {
            tag: format!("{tag}{}", std::process::id()),
            namespaces: vec![],
            servers: vec![],
            _www: www,
        };
        for role in ["node", "client", "p1", "p2", "p3"] {
            let ns = lab.ns(role);
            must(&["ip", "netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let node = lab.ns("node");
        let client = lab.ns("client");
        must(&["ip", "-n", &node, "link", "add", "br0", "type", "bridge"]);
        must(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            "10.244.1.1/24",
            "dev",
            "br0",
        ]);
        must(&["ip", "-n", &node, "link", "set", "br0", "up"]);
        for (i, pod) in ["p1", "p2", "p3"].iter().enumerate() {
            let pns = lab.ns(pod);
            let host_end = format!("v{pod}");
            must(&[
                "ip", "-n", &node, "link", "add", &host_end, "type", "veth", "peer", "name",
                "eth0", "netns", &pns,
            ]);
            must(&[
                "ip", "-n", &node, "link", "set", &host_end, "master", "br0", "up",
            ]);
            // Hairpin (a pod reaching itself through its service) needs the frame sent back
            // out of the port it came in on, as skiff-overlay's bridge config asks for.
            must(&[
                "ip",
                "-n",
                &node,
                "link",
                "set",
                &host_end,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ]);
            let addr = format!("10.244.1.{}/24", i + 2);
            must(&["ip", "-n", &pns, "addr", "add", &addr, "dev", "eth0"]);
            must(&["ip", "-n", &pns, "link", "set", "eth0", "up"]);
            must(&[
                "ip",
                "-n",
                &pns,
                "route",
                "add",
                "default",
                "via",
                "10.244.1.1",
            ]);
            let dir = lab._www.path().join(pod);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("index.html"), format!("{pod}\n")).unwrap();
            let child = Command::new("ip")
                .args([
                    "netns", "exec", &pns, "busybox", "httpd", "-f", "-p", "8080", "-h",
                ])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            lab.servers.push(child);
        }
        must(&[
            "ip", "-n", &node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
            "netns", &client,
        ]);
        must(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            "192.0.2.1/24",
            "dev",
            "up0",
        ]);
        must(&["ip", "-n", &node, "link", "set", "up0", "up"]);
        must(&[
            "ip",
            "-n",
            &node,
            "route",
            "add",
            "default",
            "via",
            "192.0.2.2",
        ]);
        must(&[
            "ip",
            "-n",
            &client,
            "addr",
            "add",
            "192.0.2.2/24",
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &client, "link", "set", "eth0", "up"]);
        must(&[
            "ip",
            "-n",
            &client,
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
        ]);
        let out = lab.exec("node", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        assert!(out.status.success());
        // The node routes service addresses back out of up0 (its default route): the ICMP
        // redirects that would cause use up the per-host ICMP budget the REJECT's
        // port-unreachable needs, and the client would see a timeout instead of a refusal.
        for key in ["all", "up0"] {
            let setting = format!("net.ipv4.conf.{key}.send_redirects=0");
            assert!(lab
                .exec("node", &["sysctl", "-qw", &setting])
                .status
                .success());
        }
        // Pod to pod through a service needs the bridge's frames to pass iptables, as on every
        // Kubernetes node; the setting is per namespace.
        let _ = lab.exec(
            "node",
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        );
        // Servers up before any check.
        for i in 2..=4 {
            let url = format!("http://10.244.1.{i}:8080/");
            let deadline = Instant::now() + Duration::from_secs(10);
            while lab.get("node", &url).is_err() {
                assert!(Instant::now() < deadline, "httpd at {url} never answered");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        lab
    }

    /// One HTTP GET with curl (Debian's busybox wget crashes with -q/-T); Ok(body) or
    /// Err(curl's message).
    fn get(&self, role: &str, url: &str) -> Result<String, String> {
        let out = self.exec(
            role,
            &["curl", "-sS", "--noproxy", "*", "--max-time", "3", url],
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Whether a connection to `url` from `role` is refused (not timed out, not answered).
    fn refused(&self, role: &str, url: &str) -> Result<(), String> {
        let out = self.exec(
            role,
            &["curl", "-sv", "--noproxy", "*", "--max-time", "3", url],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("Connection refused") {
            Ok(())
        } else {
            Err(format!("{url} from {role}: {}", err.trim()))
        }
    }

    fn kernel(&self, backend: Backend) -> Iptables {
        Iptables {
            backend,
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), self.ns("node")],
            conntrack: None,
        }
    }

    fn save(&self, backend: Backend) -> String {
        let k = self.kernel(backend);
        format!(
            "{}{}",
            k.save(Table::Nat).unwrap(),
            k.save(Table::Filter).unwrap()
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

fn endpoint(last: u8) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 244, 1, last),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        node: Some("node".into()),
    }
}

fn service(name: &str, ip: Ipv4Addr, node_port: Option<u16>, eps: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        id: ServicePortName {
            namespace: "default".into(),
            name: name.into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        },
        cluster_ip: ip,
        port: 80,
        node_port,
        external_ips: vec![],
        affinity_seconds: None,
        external_local: false,
        internal_local: false,
        endpoints: eps,
    }
}

fn model(web_endpoints: &[u8]) -> Model {
    let web = service(
        "web",
        CLUSTER_IP,
        Some(NODE_PORT),
        web_endpoints.iter().map(|i| endpoint(*i)).collect(),
    );
    let empty = service("empty", EMPTY_IP, None, vec![]);
    Model {
        node: NodeInfo {
            name: "node".into(),
            addresses: vec![NODE_IP],
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
        },
        services: [web, empty]
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect(),
    }
}

/// Which pods answer `url` from `role` in `n` requests.
fn answers(lab: &Lab, role: &str, url: &str, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| {
            lab.get(role, url)
                .unwrap_or_else(|e| panic!("GET {url} from {role}: {e}"))
        })
        .collect()
}

fn skip_reason(backend: Backend) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, iptables)".into());
    }
    let tool = match backend {
        Backend::Nft => "iptables-nft-restore",
        Backend::Legacy => "iptables-legacy-restore",
    };
    let found = ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists());
    if !found {
        return Some(format!("{tool} is not installed"));
    }
    if Command::new("busybox").arg("true").output().is_err() {
        return Some("busybox (httpd) is not installed".into());
    }
    if Command::new("curl").arg("--version").output().is_err() {
        return Some("curl is not installed".into());
    }
    None
}

fn scenario(backend: Backend, tag: &str) {
    if let Some(why) = skip_reason(backend) {
        println!("SKIPPED proxy_netns ({backend:?}): {why}");
        return;
    }
    let lab = Lab::new(tag);
    let mut proxier = Proxier::new(lab.kernel(backend));

    // Someone else's rule in the node's nat table: never flushed by the proxy.
    let out = lab.exec(
        "node",
        &[
            match backend {
                Backend::Nft => "iptables-nft",
                Backend::Legacy => "iptables-legacy",
            },
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-d",
            "198.51.100.9/32",
            "-j",
            "RETURN",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let full = model(&[2, 3, 4]);
    let report = proxier.sync(&full, false).unwrap();
    assert!(report.full);
    let saved = lab.save(backend);
    assert!(
        saved.contains("-A POSTROUTING -d 198.51.100.9/32 -j RETURN"),
        "{saved}"
    );
    // The kernel holds the rendered rules as rendered (probabilities are printed by
    // iptables with its own precision, so those lines are compared without them).
    let rendered = render::render(&full);
    for t in Table::ALL {
        for (chain, rules) in &rendered.table(t).chains {
            let held = proxier
                .kernel
                .chain_rules(t, chain)
                .unwrap()
                .unwrap_or_else(|| panic!("{chain} missing in {}", t.name()));
            assert_eq!(held.len(), rules.len(), "{chain}: {held:#?} vs {rules:#?}");
            for (h, r) in held.iter().zip(rules) {
                if r.contains("--probability") {
                    assert_eq!(
                        h.split(" --probability").next(),
                        r.split(" --probability").next()
                    );
                } else {
                    assert_eq!(h, r);
                }
            }
        }
    }
    for (table, chain, _) in render::JUMPS {
        let rules = proxier.kernel.chain_rules(table, chain).unwrap().unwrap();
        assert!(
            rules.iter().any(|r| r.contains("KUBE-")),
            "no jump in {chain}: {rules:?}"
        );
    }
    // Jumps are not duplicated by a second full sync.
    proxier.sync(&full, true).unwrap();
    let pre = proxier
        .kernel
        .chain_rules(Table::Nat, "PREROUTING")
        .unwrap()
        .unwrap();
    assert_eq!(
        pre.iter().filter(|r| r.contains("KUBE-SERVICES")).count(),
        1
    );

    let web = format!("http://{CLUSTER_IP}/");
    let all: std::collections::BTreeSet<String> =
        ["p1", "p2", "p3"].iter().map(|s| s.to_string()).collect();
    // From outside the pod network (masqueraded), from the node itself, from a pod (which
    // may land on itself: hairpin) — every backend answers.
    assert_eq!(
        answers(&lab, "client", &web, 30),
        all,
        "ClusterIP from the client"
    );
    assert_eq!(
        answers(&lab, "node", &web, 30),
        all,
        "ClusterIP from the node"
    );
    assert_eq!(answers(&lab, "p1", &web, 30), all, "ClusterIP from a pod");
    let np = format!("http://{NODE_IP}:{NODE_PORT}/");
    assert_eq!(
        answers(&lab, "client", &np, 30),
        all,
        "NodePort from the client"
    );
    assert_eq!(answers(&lab, "p2", &np, 30), all, "NodePort from a pod");

    // No endpoints: refused at once (an ICMP port unreachable), not a timeout.
    let empty = format!("http://{EMPTY_IP}/");
    lab.refused("client", &empty).unwrap();
    lab.refused("node", &empty).unwrap();
    lab.refused("p3", &empty).unwrap();

    // Scale down to p1 and p2: a partial sync, p3's chain goes, p3 gets nothing more.
    let two = model(&[2, 3]);
    let r = proxier.sync(&two, false).unwrap();
    assert!(!r.full);
    assert!(r.restore_bytes < report.restore_bytes);
    let web_id = two
        .services
        .values()
        .find(|s| s.id.name == "web")
        .unwrap()
        .id
        .clone();
    let gone = render::sep_chain(&web_id, &endpoint(4));
    assert!(!lab.save(backend).contains(&gone), "{gone} still there");
    let seen = answers(&lab, "client", &web, 30);
    assert_eq!(seen.len(), 2);
    assert!(!seen.contains("p3"), "{seen:?}");
    let seen = answers(&lab, "client", &np, 30);
    assert!(
        !seen.contains("p3"),
        "NodePort after the scale-down: {seen:?}"
    );
    // Back up by a partial sync too: p3's chain is written again and p3 answers.
    let r = proxier.sync(&full, false).unwrap();
    assert!(!r.full);
    assert_eq!(answers(&lab, "client", &web, 30), all, "after scaling up");
    proxier.sync(&two, false).unwrap();
    assert!(!answers(&lab, "p1", &web, 30).contains("p3"));

    // Down to none: the service's chains go and it refuses.
    let none = model(&[]);
    proxier.sync(&none, false).unwrap();
    let saved = lab.save(backend);
    assert!(!saved.contains(&render::svc_chain(&web_id)), "{saved}");
    lab.refused("client", &web).unwrap();
    proxier.sync(&two, false).unwrap();
    assert_eq!(answers(&lab, "client", &web, 20).len(), 2);

    // A restore the kernel refuses leaves the previous rules in place.
    let bad = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-NO-SUCH-CHAIN\nCOMMIT\n";
    let before = lab.save(backend);
    assert!(proxier.kernel.restore(bad).is_err());
    let strip = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&lab.save(backend)), strip(&before));
    assert_eq!(answers(&lab, "client", &web, 20).len(), 2);

    // Someone flushes the nat table: the canary says so, a full sync repairs it.
    let flush = lab.exec(
        "node",
        &[
            match backend {
                Backend::Nft => "iptables-nft",
                Backend::Legacy => "iptables-legacy",
            },
            "-t",
            "nat",
            "-F",
        ],
    );
    assert!(flush.status.success());
    assert!(!proxier.canary_present().unwrap());
    assert!(
        lab.get("client", &web).is_err(),
        "flushed rules should not route"
    );
    proxier.sync(&two, true).unwrap();
    assert!(proxier.canary_present().unwrap());
    assert_eq!(answers(&lab, "client", &web, 20).len(), 2);
}

#[test]
fn proxy_in_netns_nft() {
    scenario(Backend::Nft, "n");
}

#[test]
fn proxy_in_netns_legacy() {
    scenario(Backend::Legacy, "l");
}

const UDP_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);

/// A UDP service on port 53 whose endpoints answer on 5353 with their pod's name.
fn udp_model(pods: &[u8]) -> Model {
    let mut dns = service(
        "dns",
        UDP_IP,
        None,
        pods.iter()
            .map(|i| Endpoint {
                port: 5353,
                ..endpoint(*i)
            })
            .collect(),
    );
    dns.id.port = "dns".into();
    dns.id.protocol = Protocol::Udp;
    dns.port = 53;
    let mut m = model(&[]);
    m.services = [(dns.id.clone(), dns)].into_iter().collect();
    m
}

/// One datagram from the client's fixed source port (so every query is the same conntrack
/// flow) to the UDP service; the answering pod's name, or None after 2 s of silence.
fn udp_ask(lab: &Lab) -> Option<String> {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',40053))\n\
         s.settimeout(2)\ns.sendto(b'who',('{UDP_IP}',53))\n\
         try:\n    print(s.recvfrom(100)[0].decode())\nexcept socket.timeout:\n    pass\n"
    );
    let out = lab.exec("client", &["python3", "-c", &script]);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!answer.is_empty()).then_some(answer)
}

fn conntrack_tool() -> Option<std::path::PathBuf> {
    [
        "/usr/sbin/conntrack",
        "/sbin/conntrack",
        "/usr/bin/conntrack",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

/// kube-proxy deletes the conntrack entries of UDP flows to a removed endpoint: otherwise a
/// client that keeps its source port (a resolver, a metrics agent) keeps talking to the old
/// pod until the entry times out. The first half shows that the stale flow is real here.
#[test]
fn udp_flows_to_a_removed_endpoint_are_cleared() {
    let backend = Backend::Nft;
    if let Some(why) = skip_reason(backend) {
        println!("SKIPPED udp conntrack: {why}");
        return;
    }
    let Some(tool) = conntrack_tool() else {
        println!("SKIPPED udp conntrack: the conntrack tool is not installed (tests/packages.txt has it)");
        return;
    };
    if Command::new("python3").arg("-V").output().is_err() {
        println!("SKIPPED udp conntrack: python3 is not installed");
        return;
    }
    let mut lab = Lab::new("u");
    for pod in ["p1", "p2"] {
        let server = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0',5353))\nwhile True:\n    d,a=s.recvfrom(100)\n    \
             s.sendto(b'{pod}',a)\n"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ns(pod), "python3", "-c", &server])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        lab.servers.push(child);
    }
    let first_answer = |lab: &Lab| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(a) = udp_ask(lab) {
                return a;
            }
            assert!(Instant::now() < deadline, "the UDP service never answered");
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // Without the conntrack tool the proxy cannot clear the flow: it stays on p1.
    let mut blind = Proxier::new(lab.kernel(backend));
    blind.sync(&udp_model(&[2]), false).unwrap();
    assert_eq!(first_answer(&lab), "p1");
    let report = blind.sync(&udp_model(&[3]), false).unwrap();
    assert_eq!(report.conntrack_flushes, 0);
    assert_eq!(
        udp_ask(&lab).as_deref(),
        Some("p1"),
        "the old flow outlives the rule change when nobody deletes it"
    );

    // With it, the flow to the removed endpoint goes and the next datagram reaches p2.
    let mut kernel = lab.kernel(backend);
    kernel.conntrack = Some(tool);
    let mut proxier = Proxier::new(kernel);
    proxier.sync(&udp_model(&[2]), false).unwrap();
    assert_eq!(udp_ask(&lab).as_deref(), Some("p1"));
    let report = proxier.sync(&udp_model(&[3]), false).unwrap();
    assert!(report.conntrack_flushes > 0, "{report:?}");
    assert_eq!(udp_ask(&lab).as_deref(), Some("p2"));
}
