//! The overlay's kernel code against the real kernel, with no cluster: two "node" namespaces
//! joined by a veth (the underlay), each with a pod bridge and one "pod" namespace, plus an
//! "outside" namespace reachable only from node A. Each node's overlay pass (device, routes,
//! neighbours, FDB, firewall chains) runs inside its namespace through a netlink socket opened
//! there and `ip netns exec` for iptables; the checks are real pings and TCP connections.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use skiff_agent::overlay::controller::{device_spec, pass, spec_from_kernel};
use skiff_agent::overlay::desired::{Mac, Peer, Subnet};
use skiff_agent::overlay::kernel::{DeviceChange, VxlanSpec};
use skiff_agent::overlay::netlink::NetlinkKernel;
use skiff_agent::proxy::kernel::Iptables;

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Node {
    role: &'static str,
    ip: Ipv4Addr,
    subnet: Subnet,
}

const NET: &str = "10.244.0.0/16";

fn nodes() -> [Node; 2] {
    [
        Node {
            role: "a",
            ip: "172.30.9.1".parse().unwrap(),
            subnet: Subnet::parse("10.244.1.0/24").unwrap(),
        },
        Node {
            role: "b",
            ip: "172.30.9.2".parse().unwrap(),
            subnet: Subnet::parse("10.244.2.0/24").unwrap(),
        },
    ]
}

fn pod_ip(n: &Node) -> String {
    let o = n.subnet.net.octets();
    format!("{}.{}.{}.2", o[0], o[1], o[2])
}

/// The namespaces; all deleted on drop (their links, vxlan device and iptables go with them).
struct Lab {
    tag: String,
    namespaces: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("skov-{}-{role}", self.tag)
    }

    fn exec(&self, role: &str, args: &[&str]) -> Output {
        let ns = self.ns(role);
        let mut full = vec!["ip", "netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    fn new() -> Lab {
        let mut lab = Lab {
            tag: std::process::id().to_string(),
            namespaces: vec![],
        };
        for role in ["a", "b", "pa", "pb", "out"] {
            let ns = lab.ns(role);
            must(&["ip", "netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let (a, b, out) = (lab.ns("a"), lab.ns("b"), lab.ns("out"));
        must(&[
            "ip", "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &b,
        ]);
        for n in nodes() {
            let ns = lab.ns(n.role);
            let pns = lab.ns(&format!("p{}", n.role));
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", n.ip),
                "dev",
                "eth0",
            ]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            must(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
            // The pod bridge as skiff-overlay's bridge plugin makes it: gateway .1 on skiff0.
            let o = n.subnet.net.octets();
            let gw = format!("{}.{}.{}.1", o[0], o[1], o[2]);
            must(&["ip", "-n", &ns, "link", "add", "skiff0", "type", "bridge"]);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{gw}/24"),
                "dev",
                "skiff0",
            ]);
            must(&["ip", "-n", &ns, "link", "set", "skiff0", "up"]);
            must(&[
                "ip", "-n", &ns, "link", "add", "vpod", "mtu", "1450", "type", "veth", "peer",
                "name", "eth0", "netns", &pns,
            ]);
            must(&[
                "ip", "-n", &ns, "link", "set", "vpod", "master", "skiff0", "up",
            ]);
            must(&[
                "ip",
                "-n",
                &pns,
                "addr",
                "add",
                &format!("{}/24", pod_ip(&n)),
                "dev",
                "eth0",
            ]);
            must(&["ip", "-n", &pns, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", &pns, "route", "add", "default", "via", &gw]);
        }
        // "Outside the cluster": a network only node A is on, which has no route to pods.
        must(&[
            "ip", "-n", &a, "link", "add", "ext", "type", "veth", "peer", "name", "eth0", "netns",
            &out,
        ]);
        must(&[
            "ip",
            "-n",
            &a,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "ext",
        ]);
        must(&["ip", "-n", &a, "link", "set", "ext", "up"]);
        must(&[
            "ip",
            "-n",
            &out,
            "addr",
            "add",
            "198.51.100.7/24",
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &out, "link", "set", "eth0", "up"]);
        lab
    }

    fn kernel(&self, role: &str) -> NetlinkKernel {
        let path = format!("/run/netns/{}", self.ns(role));
        let f = skiff_cni::netns::open(Path::new(&path)).unwrap();
        NetlinkKernel::from_socket(skiff_cni::netns::netlink_in(&f, Path::new(&path)).unwrap())
    }

    fn iptables(&self, role: &str) -> Iptables {
        let ns = self.ns(role);
        Iptables::detect(vec!["ip".into(), "netns".into(), "exec".into(), ns]).unwrap()
    }

    fn ping(&self, role: &str, dst: &str) -> bool {
        self.exec(role, &["busybox", "ping", "-c", "1", "-W", "2", dst])
            .status
            .success()
    }

    /// A TCP connection from `from` to a one-shot busybox nc server in `to`; true when the
    /// server received the client's line.
    fn tcp(&self, from: &str, to: &str, to_ip: &str) -> bool {
        let ns = self.ns(to);
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns, "busybox", "nc", "-l", "-p", "5555"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The server may not listen yet on the first try: retry the client a few times.
        let mut sent = false;
        for _ in 0..20 {
            let ns_from = self.ns(from);
            let st = Command::new("ip")
                .args([
                    "netns", "exec", &ns_from, "busybox", "nc", "-w", "2", to_ip, "5555",
                ])
                .stdin(std::fs::File::open("/proc/sys/kernel/ostype").unwrap())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if st.success() {
                sent = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if !sent {
            let _ = server.kill();
        }
        let out = server.wait_with_output().unwrap();
        sent && String::from_utf8_lossy(&out.stdout).contains("Linux")
    }
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, vxlan, iptables)".into());
    }
    for tool in ["ip", "bridge", "busybox", "iptables-restore"] {
        if !run(&["sh", "-c", &format!("command -v {tool}")])
            .status
            .success()
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn peer_of(n: &Node) -> Peer {
    Peer {
        name: n.role.into(),
        subnet: n.subnet,
        vtep_mac: Mac::for_node(n.ip),
        public_ip: n.ip,
    }
}

#[test]
fn overlay_between_two_node_namespaces() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED overlay_netns: {why}");
        return;
    }
    let lab = Lab::new();
    let [na, nb] = nodes();
    let net = Subnet::parse(NET).unwrap();
    let mut ka = lab.kernel("a");
    let mut kb = lab.kernel("b");
    let mut fa = lab.iptables("a");
    let mut fb = lab.iptables("b");
    let spec_a: VxlanSpec = spec_from_kernel(&mut ka, na.ip).unwrap();
    assert_eq!(spec_a, device_spec(na.ip, 1500));
    let spec_b = spec_from_kernel(&mut kb, nb.ip).unwrap();

    let r = pass(&mut ka, &mut fa, &spec_a, net, na.subnet, &[peer_of(&nb)]).unwrap();
    assert_eq!(r.device, Some(DeviceChange::Created));
    let r = pass(&mut kb, &mut fb, &spec_b, net, nb.subnet, &[peer_of(&na)]).unwrap();
    assert_eq!(r.device, Some(DeviceChange::Created));

    // The device as the design says.
    let link = String::from_utf8_lossy(
        &lab.exec("a", &["ip", "-d", "link", "show", "skiff.1"])
            .stdout,
    )
    .into_owned();
    for want in [
        "mtu 1450",
        "vxlan id 1",
        "local 172.30.9.1",
        "dstport 8472",
        "nolearning",
        "0e:5f:ac:1e:09:01",
    ] {
        assert!(link.contains(want), "{want:?} missing in {link}");
    }
    let addr = must(&["ip", "-n", &lab.ns("a"), "addr", "show", "dev", "skiff.1"]);
    assert!(addr.contains("10.244.1.0/32"), "{addr}");
    let route = must(&["ip", "-n", &lab.ns("a"), "route", "show", "dev", "skiff.1"]);
    assert_eq!(
        route.trim(),
        "10.244.2.0/24 via 10.244.2.0 onlink",
        "{route}"
    );
    let neigh = must(&["ip", "-n", &lab.ns("a"), "neigh", "show", "dev", "skiff.1"]);
    assert!(
        neigh.contains("10.244.2.0 lladdr 0e:5f:ac:1e:09:02 PERMANENT"),
        "{neigh}"
    );
    let fdb = must(&[
        "bridge",
        "-n",
        &lab.ns("a"),
        "fdb",
        "show",
        "dev",
        "skiff.1",
    ]);
    assert!(
        fdb.contains("0e:5f:ac:1e:09:02 dst 172.30.9.2 self permanent"),
        "{fdb}"
    );

    // A second pass changes nothing.
    let r = pass(&mut ka, &mut fa, &spec_a, net, na.subnet, &[peer_of(&nb)]).unwrap();
    assert_eq!(r.device, Some(DeviceChange::Unchanged));
    assert!(r.plan.is_empty() && !r.firewall_written, "{r:?}");

    // Pod to pod across nodes, both ways, ICMP and TCP, without NAT.
    assert!(lab.ping("pa", &pod_ip(&nb)), "pod a → pod b");
    assert!(lab.ping("pb", &pod_ip(&na)), "pod b → pod a");
    assert!(lab.tcp("pa", "pb", &pod_ip(&nb)), "TCP pod a → pod b");
    let nat = must(&[
        "ip",
        "netns",
        "exec",
        &lab.ns("a"),
        "iptables",
        "-t",
        "nat",
        "-L",
        "SKIFF-OVERLAY-POSTRTG",
        "-n",
        "-v",
        "-x",
    ]);
    let masq_before = masquerade_packets(&nat);
    // Node to pod and pod to node.
    assert!(lab.ping("a", &pod_ip(&nb)), "node a → pod b");
    assert!(lab.ping("pb", &na.ip.to_string()), "pod b → node a");
    // Pod to outside: only masquerade makes this work (outside has no route to pods).
    assert!(lab.ping("pa", "198.51.100.7"), "pod a → outside");
    let nat = must(&[
        "ip",
        "netns",
        "exec",
        &lab.ns("a"),
        "iptables",
        "-t",
        "nat",
        "-L",
        "SKIFF-OVERLAY-POSTRTG",
        "-n",
        "-v",
        "-x",
    ]);
    assert_eq!(masq_before, 0, "pod-to-pod traffic was masqueraded:\n{nat}");
    assert!(masquerade_packets(&nat) > 0, "{nat}");

    // Node b leaves: its route, neighbour and FDB entries go from a.
    let r = pass(&mut ka, &mut fa, &spec_a, net, na.subnet, &[]).unwrap();
    assert_eq!(
        (
            r.plan.del_routes.len(),
            r.plan.del_neighs.len(),
            r.plan.del_fdb.len()
        ),
        (1, 1, 1)
    );
    assert_eq!(
        must(&["ip", "-n", &lab.ns("a"), "route", "show", "dev", "skiff.1"]).trim(),
        ""
    );
    assert!(
        !must(&["ip", "-n", &lab.ns("a"), "neigh", "show", "dev", "skiff.1"])
            .contains("10.244.2.0")
    );
    assert!(!must(&[
        "bridge",
        "-n",
        &lab.ns("a"),
        "fdb",
        "show",
        "dev",
        "skiff.1"
    ])
    .contains("172.30.9.2"));

    // skiff.1 deleted by hand comes back with the same MAC, and traffic flows again.
    let r = pass(&mut ka, &mut fa, &spec_a, net, na.subnet, &[peer_of(&nb)]).unwrap();
    assert_eq!(r.plan.add_routes.len(), 1);
    must(&["ip", "-n", &lab.ns("a"), "link", "del", "skiff.1"]);
    let r = pass(&mut ka, &mut fa, &spec_a, net, na.subnet, &[peer_of(&nb)]).unwrap();
    assert_eq!(r.device, Some(DeviceChange::Created));
    assert_eq!(r.plan.add_fdb.len(), 1);
    assert!(
        lab.ping("pa", &pod_ip(&nb)),
        "pod a → pod b after the repair"
    );

    // Node a is given another podCIDR: skiff.1 carries the new .0/32 and nothing else.
    let moved = Subnet::parse("10.244.7.0/24").unwrap();
    let r = pass(&mut ka, &mut fa, &spec_a, net, moved, &[peer_of(&nb)]).unwrap();
    assert_eq!(r.device, Some(DeviceChange::Repaired));
    let addr = must(&[
        "ip",
        "-n",
        &lab.ns("a"),
        "-4",
        "addr",
        "show",
        "dev",
        "skiff.1",
    ]);
    assert!(addr.contains("10.244.7.0/32"), "{addr}");
    assert!(!addr.contains("10.244.1.0"), "old address kept:\n{addr}");
    let r = pass(&mut ka, &mut fa, &spec_a, net, moved, &[peer_of(&nb)]).unwrap();
    assert_eq!(r.device, Some(DeviceChange::Unchanged));
}

/// Packets counted on the MASQUERADE rules of an `iptables -L -v -x` listing.
fn masquerade_packets(listing: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.contains("MASQUERADE"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
