//! overlay-bench: pod-to-pod TCP throughput across two nodes of a lab cluster (the skiff.1
//! VxLAN overlay, through each pod's veth and bridge) against a bare VxLAN device between
//! the same two node namespaces, both measured with iperf3 (Debian) in the same run and
//! printed as a ratio (target ≥ 0.90); round-trip latency pod→pod against node→node on the
//! underlay. Root only; everything lives in namespaces the lab creates and is removed at
//! the end. `cargo build -p skiff-server -p skiff-agent -p skiff-shim -p skiff-cni` first.
//!
//! iperf3 runs inside each pod's network namespace (entered through its sandbox process), so
//! the pod image needs nothing but busybox.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use skiff_e2e::cluster::{missing_prerequisites, Cluster};

const BARE_DEV: &str = "bench.2";
const BARE_NET: &str = "192.168.77";

fn run(argv: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| format!("running {}", argv[0]))?;
    if !out.status.success() {
        bail!("{argv:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `argv` in the network namespace at `ns` (a /run/netns or /proc/<pid>/ns/net path).
fn in_ns<'a>(ns: &'a str, argv: &[&'a str]) -> Vec<String> {
    // Bounded: a stalled transfer must end the bench with an error, not hang it.
    let mut v = vec![
        "timeout".to_string(),
        "60".into(),
        "nsenter".into(),
        format!("--net={ns}"),
        "--".into(),
    ];
    v.extend(argv.iter().map(|s| s.to_string()));
    v
}

fn run_in(ns: &str, argv: &[&str]) -> anyhow::Result<String> {
    let v = in_ns(ns, argv);
    let refs: Vec<&str> = v.iter().map(String::as_str).collect();
    run(&refs)
}

/// One iperf3 run: receiver-side bits/s, the sender's retransmitted segments, and CPU
/// milliseconds per GB moved.
struct Sample {
    bps: f64,
    retransmits: u64,
    cpu_ms_per_gb: f64,
}

/// The machine's softirq time so far, in seconds. /proc/stat counts in USER_HZ, which is 100
/// on every Linux ABI.
fn softirq_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: u64 = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(7)?.parse().ok())
        .context("/proc/stat has no softirq column")?;
    Ok(ticks as f64 / 100.0)
}

/// One iperf3 run from `client_ns` to `server_ip`, the server in `server_ns`.
fn iperf(
    server_ns: &str,
    client_ns: &str,
    server_ip: &str,
    seconds: &str,
    streams: &str,
) -> anyhow::Result<Sample> {
    let server = in_ns(server_ns, &["iperf3", "-s", "-1", "-B", server_ip]);
    let mut child = Command::new(&server[0])
        .args(&server[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 -s (Debian package iperf3)")?;
    // The server needs a moment to listen; retry the client rather than sleeping blindly.
    let mut last = String::new();
    for _ in 0..50 {
        let softirq_before = softirq_seconds()?;
        match run_in(
            client_ns,
            &[
                "iperf3",
                "-c",
                server_ip,
                "-t",
                seconds,
                "-P",
                streams,
                "-J",
                "--connect-timeout",
                "2000",
            ],
        ) {
            Ok(json) => {
                let v: serde_json::Value = serde_json::from_str(&json)?;
                if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                    let _ = child.wait();
                    let softirq = softirq_seconds()? - softirq_before;
                    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
                    // Both iperf3 processes' CPU time plus the machine's softirq time (where
                    // most forwarding runs): unlike Gbit/s it barely depends on how much of a
                    // core the other builds leave, though their own softirq time counts too.
                    let end = &v["end"];
                    let cpu = &end["cpu_utilization_percent"];
                    let secs = end["sum_received"]["seconds"].as_f64().unwrap_or(0.0);
                    let bytes = end["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
                    let proc_pct = cpu["host_total"].as_f64().unwrap_or(0.0)
                        + cpu["remote_total"].as_f64().unwrap_or(0.0);
                    let cpu_s = proc_pct / 100.0 * secs + softirq;
                    let cpu_ms_per_gb = if bytes > 0.0 {
                        cpu_s * 1e3 / (bytes / 1e9)
                    } else {
                        f64::NAN
                    };
                    return Ok(Sample {
                        bps,
                        retransmits,
                        cpu_ms_per_gb,
                    });
                }
                // Typically "Connection refused": the server is not listening yet.
                last = v["error"].as_str().unwrap_or("no result").to_string();
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("iperf3 client never connected to {server_ip}: {last}")
}

/// IPv4 fragments made and reassemblies asked for in the namespace at `ns`: a pod MTU larger
/// than the overlay carries shows up here (and would make the comparison meaningless).
fn fragments(ns: &str) -> anyhow::Result<u64> {
    let out = run_in(ns, &["nstat", "-asz", "IpFragCreates", "IpReasmReqds"])?;
    Ok(out
        .lines()
        .filter(|l| l.starts_with("Ip"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum())
}

/// Best, median and worst of a non-empty set of figures.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (s[s.len() - 1], median, s[0])
}

/// `--rounds N`, `--seconds S` (per iperf3 run) and `--streams P` (iperf3's parallel
/// streams; with one, a run measures what one core can push through each path).
fn options() -> anyhow::Result<(usize, String, String)> {
    let mut rounds = 4usize;
    let mut seconds = "8".to_string();
    let mut streams = "1".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--rounds" => {
                rounds = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--rounds {value:?}: want a positive number"))?
            }
            "--seconds" => {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--seconds {value:?}: want a positive number"))?;
                seconds = value;
            }
            "--streams" => {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=128).contains(n))
                    .with_context(|| format!("--streams {value:?}: want 1 to 128"))?;
                streams = value;
            }
            other => {
                bail!("unknown option {other:?} (known: --rounds N, --seconds S, --streams P)")
            }
        }
    }
    Ok((rounds, seconds, streams))
}

/// Average round trip in ms of 10 pings (busybox ping, which works in any namespace).
fn ping_avg(ns: &str, ip: &str) -> anyhow::Result<f64> {
    let out = run_in(ns, &["busybox", "ping", "-q", "-c", "10", ip])?;
    // "round-trip min/avg/max = 0.061/0.083/0.121 ms"
    let nums = out
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|_| l.contains("round-trip")))
        .map(|(_, v)| v.trim_end_matches(" ms").to_string())
        .context("no round-trip line from ping")?;
    nums.split('/')
        .nth(1)
        .context("no average")?
        .parse()
        .context("average is not a number")
}

fn pod_manifest(name: &str, node: &str, image: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}]
        }
    })
    .to_string()
}

/// The pod's IP and the path of its network namespace.
fn pod_netns(c: &Cluster, node: usize, pod: &str) -> anyhow::Result<(String, String)> {
    for _ in 0..600 {
        let out = c.kubectl(&["get", "pod", pod, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let (Some("Running"), Some(ip), Some(uid)) = (
            v["status"]["phase"].as_str(),
            v["status"]["podIP"].as_str(),
            v["metadata"]["uid"].as_str(),
        ) {
            if let Some(sb) = skiff_agent::sandbox::find(&c.spec.node_root(node), uid)? {
                return Ok((ip.to_string(), format!("/proc/{}/ns/net", sb.pid)));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("pod {pod} did not run")
}

/// A VxLAN device like the overlay's (same MTU, UDP checksums off as the kernel's default)
/// but with its own VNI, port and addresses, and nothing else: no bridge, no veth, no
/// iptables of Skiff's in the way.
fn bare_vxlan(c: &Cluster, node: usize, peer: usize, mtu: &str) -> anyhow::Result<()> {
    let ns = format!("/run/netns/{}", c.spec.node_netns(node));
    let local = c.spec.node_ip(node).to_string();
    let remote = c.spec.node_ip(peer).to_string();
    let addr = format!("{BARE_NET}.{node}/24");
    for argv in [
        vec![
            "ip",
            "link",
            "add",
            BARE_DEV,
            "type",
            "vxlan",
            "id",
            "2",
            "local",
            &local,
            "dstport",
            "4790",
            "nolearning",
        ],
        vec!["ip", "link", "set", BARE_DEV, "mtu", mtu, "up"],
        vec!["ip", "addr", "add", &addr, "dev", BARE_DEV],
        vec![
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            BARE_DEV,
            "dst",
            &remote,
        ],
    ] {
        run_in(&ns, &argv)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let (rounds, seconds, streams) = options()?;
    let mut missing = missing_prerequisites();
    if Command::new("iperf3").arg("--version").output().is_err() {
        missing.push("iperf3".into());
    }
    if !missing.is_empty() {
        bail!("overlay-bench needs: {}", missing.join(", "));
    }
    println!("overlay-bench: starting a 2-node lab");
    let c = Cluster::start(&format!("ob-{}", std::process::id()), 2, &[]);
    let image = c.registry().push_busybox("tools", "1", &["sleep", "3600"]);
    for (i, name) in [(1, "bench-a"), (2, "bench-b")] {
        let manifest = pod_manifest(name, &c.spec.node_name(i), &image);
        let mut child = c
            .kubectl_cmd(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(manifest.as_bytes())?;
        if !child.wait()?.success() {
            bail!("kubectl apply {name} failed");
        }
    }
    let (_, ns_a) = pod_netns(&c, 1, "bench-a")?;
    let (ip_b, ns_b) = pod_netns(&c, 2, "bench-b")?;
    let pod_mtu = run_in(&ns_a, &["ip", "-o", "link", "show", "eth0"])?;
    println!(
        "overlay-bench: pods running; measuring (pod eth0: {})",
        pod_mtu
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .unwrap_or("?")
    );
    let node_ns = |i: usize| format!("/run/netns/{}", c.spec.node_netns(i));
    // Through netlink: /sys shows the host's devices, not the namespace's.
    let link = run_in(&node_ns(1), &["ip", "-j", "link", "show", "skiff.1"])?;
    let link: serde_json::Value = serde_json::from_str(&link)?;
    let mtu = link[0]["mtu"]
        .as_u64()
        .context("skiff.1 has no MTU")?
        .to_string();
    bare_vxlan(&c, 1, 2, &mtu)?;
    bare_vxlan(&c, 2, 1, &mtu)?;

    // Alternate the two, and swap which goes first each round, so neither gets the quieter
    // moments of a machine shared with other builds. Best-of estimates what the path can do
    // when it has a core; the paired ratios show how much the noise moves it.
    let namespaces = [node_ns(1), node_ns(2), ns_a.clone(), ns_b.clone()];
    let frag_count = || -> anyhow::Result<u64> {
        namespaces
            .iter()
            .map(|ns| fragments(ns))
            .sum::<anyhow::Result<u64>>()
    };
    let frags_before = frag_count()?;
    let mut overlay = Vec::new();
    let mut bare = Vec::new();
    let mut paired = Vec::new();
    let (mut cpu_o, mut cpu_b) = (Vec::new(), Vec::new());
    let (mut retr_o, mut retr_b) = (0, 0);
    for round in 1..=rounds {
        let measure_overlay = || iperf(&ns_b, &ns_a, &ip_b, &seconds, &streams);
        let measure_bare = || {
            iperf(
                &node_ns(2),
                &node_ns(1),
                &format!("{BARE_NET}.2"),
                &seconds,
                &streams,
            )
        };
        let (o, b) = if round % 2 == 1 {
            let o = measure_overlay()?;
            (o, measure_bare()?)
        } else {
            let b = measure_bare()?;
            (measure_overlay()?, b)
        };
        println!(
            "overlay-bench: round {round} of {rounds}: overlay {:.2} Gbit/s, bare {:.2} Gbit/s, ratio {:.2}; CPU per GB {:.0} / {:.0} ms",
            o.bps / 1e9,
            b.bps / 1e9,
            o.bps / b.bps,
            o.cpu_ms_per_gb,
            b.cpu_ms_per_gb
        );
        paired.push(o.bps / b.bps);
        cpu_o.push(o.cpu_ms_per_gb);
        cpu_b.push(b.cpu_ms_per_gb);
        retr_o += o.retransmits;
        retr_b += b.retransmits;
        overlay.push(o.bps / 1e9);
        bare.push(b.bps / 1e9);
    }
    let frags = frag_count()? - frags_before;
    let (o_best, o_med, o_min) = spread(&overlay);
    let (b_best, b_med, b_min) = spread(&bare);
    let (p_best, p_med, p_min) = spread(&paired);
    let lat_pod = ping_avg(&ns_a, &ip_b)?;
    let lat_under = ping_avg(&node_ns(1), &c.spec.node_ip(2).to_string())?;
    println!(
        "pod→pod over skiff.1 (iperf3 -t {seconds} -P {streams}, {rounds} rounds): best {o_best:.2}, median {o_med:.2}, worst {o_min:.2} Gbit/s; {retr_o} retransmits"
    );
    println!(
        "bare VxLAN node→node, same namespaces, MTU {mtu}: best {b_best:.2}, median {b_med:.2}, worst {b_min:.2} Gbit/s; {retr_b} retransmits"
    );
    let ratio = o_best / b_best;
    println!(
        "ratio overlay / bare VxLAN (best of each): {ratio:.2} (target ≥ 0.90: {}); per round: median {p_med:.2}, range {p_min:.2}–{p_best:.2}",
        if ratio >= 0.9 { "met" } else { "not met" }
    );
    let (_, co, _) = spread(&cpu_o);
    let (_, cb, _) = spread(&cpu_b);
    println!(
        "CPU per GB (both iperf3 processes + softirq, median): pod→pod {co:.0} ms, bare {cb:.0} ms ({:.2}×)",
        co / cb
    );
    println!("IPv4 fragments and reassemblies on both nodes and pods during the runs: {frags}");
    println!(
        "round trip pod→pod {lat_pod:.3} ms, node→node on the underlay {lat_under:.3} ms (+{:.3} ms)",
        lat_pod - lat_under
    );
    Ok(())
}
