//! Cluster DNS end to end: skiff-server creates the kube-dns Service, a real skiff-agent serves
//! DNS on loopback from its watches, forwards other names to a fake upstream this test runs,
//! and announces itself as a kube-dns endpoint.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use skiff_e2e::{bin_dir, free_port, Server};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One UDP question; `None` when nothing came back within a second.
fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    sock.send_to(&q.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let m = Message::from_vec(&buf[..n]).ok()?;
    (m.metadata.id == q.metadata.id).then_some(m)
}

fn answers(m: &Option<Message>) -> Vec<String> {
    let mut v: Vec<String> = m
        .iter()
        .flat_map(|m| m.answers.iter().map(|r| r.data.to_string()))
        .collect();
    v.sort();
    v
}

/// A resolver on loopback that answers every question with 192.0.2.53, until the test ends.
fn fake_upstream() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.queries = req.queries.clone();
            if let Some(q) = req.queries.first() {
                resp.answers.push(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 53))),
                ));
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer);
        }
    });
    addr
}

const HEADLESS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-hand
  namespace: default
  labels: {kubernetes.io/service-name: db, endpointslice.kubernetes.io/managed-by: e2e}
addressType: IPv4
endpoints:
- addresses: ["10.244.1.5"]
  hostname: db-0
  conditions: {ready: true}
- addresses: ["10.244.2.6"]
  conditions: {ready: false}
ports: [{name: pg, port: 5432, protocol: TCP}]
"#;

#[test]
fn agent_serves_cluster_dns_from_the_api() {
    let s = Server::start();
    let svc = s.ok(&["get", "svc", "-n", "kube-system"]);
    assert!(
        svc.lines().any(|l| l.starts_with("kube-dns")
            && l.contains("10.96.0.10")
            && l.contains("53/UDP,53/TCP")),
        "{svc}"
    );
    s.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let web_ip = s.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let file = s.write_file("headless.yaml", HEADLESS);
    s.ok(&["apply", "-f", file.to_str().unwrap()]);

    let upstream = fake_upstream();
    let port = free_port();
    let dns: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = std::fs::File::create(s.dir.path().join("agent-dns.log")).unwrap();
    let _agent = Agent(
        Command::new(bin_dir().join("skiff-agent"))
            .arg("--kubeconfig")
            .arg(s.kubeconfig())
            .args(["--node-name", "dns-node", "--node-ip", "127.0.0.1"])
            .args(["--allow-missing-cgroup-controllers"])
            .args(["--cluster-dns-bind", &dns.to_string()])
            .args(["--cluster-dns-advertise", "127.0.0.1"])
            .args(["--dns-upstream", &upstream.to_string()])
            .arg("--root-dir")
            .arg(s.dir.path().join("agent-dns"))
            .arg("--pod-manifest-path")
            .arg(s.dir.path().join("agent-dns/manifests"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff-agent"),
    );

    eventually("web's ClusterIP in DNS", Duration::from_secs(30), || {
        answers(&ask(dns, "web.default.svc.cluster.local.", RecordType::A)) == [web_ip.clone()]
    });
    assert_eq!(
        answers(&ask(
            dns,
            "kubernetes.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.96.0.1"]
    );
    assert_eq!(
        answers(&ask(
            dns,
            "kube-dns.kube-system.svc.cluster.local.",
            RecordType::A
        )),
        ["10.96.0.10"]
    );
    // Headless: the ready endpoint only, its hostname, and SRV for the named port.
    assert_eq!(
        answers(&ask(dns, "db.default.svc.cluster.local.", RecordType::A)),
        ["10.244.1.5"]
    );
    assert_eq!(
        answers(&ask(
            dns,
            "db-0.db.default.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.1.5"]
    );
    assert_eq!(
        answers(&ask(
            dns,
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV
        )),
        ["0 100 5432 db-0.db.default.svc.cluster.local."]
    );
    let nx = ask(
        dns,
        "kubernetes.default.default.svc.cluster.local.",
        RecordType::A,
    )
    .unwrap();
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    // Outside names go to the upstream.
    assert_eq!(
        answers(&ask(dns, "www.example.org.", RecordType::A)),
        ["192.0.2.53"]
    );

    // The agent announces itself as a kube-dns endpoint.
    eventually(
        "the kube-dns EndpointSlice",
        Duration::from_secs(30),
        || {
            s.kubectl(&[
                "get",
                "endpointslice",
                "-n",
                "kube-system",
                "kube-dns-dns-node",
            ])
            .status
            .success()
        },
    );
    let slice = s.json(&[
        "get",
        "endpointslice",
        "-n",
        "kube-system",
        "kube-dns-dns-node",
    ]);
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "kube-dns"
    );
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["ports"][0]["port"], port);
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Node");

    // Changes follow the watches.
    s.ok(&["delete", "service", "web"]);
    eventually("web gone from DNS", Duration::from_secs(30), || {
        ask(dns, "web.default.svc.cluster.local.", RecordType::A)
            .is_some_and(|m| m.metadata.response_code == ResponseCode::NXDomain)
    });
}
