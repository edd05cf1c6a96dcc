//! Local mode end to end, as a user runs it: `skiffadm up` → node Ready → `skiffadm image
//! load` → a Deployment of busybox httpd and a NodePort Service through kubectl → pods Running
//! with IPs from the node's podCIDR, answering curl on their pod IPs → `down` → `up` resumes
//! with the same pods → `delete` leaves nothing behind.
//!
//! Root only. The whole cluster runs inside a network namespace this test creates (its pod
//! bridge, veths, iptables rules and API port live there), with a non-default root dir, bridge
//! name and pod network, and HOME pointing at a temp dir, so it never meets a user's cluster
//! or kubeconfig. A guard deletes everything on drop, failure included.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use skiff_e2e::bin_dir;
use skiff_e2e::registry::populate_busybox;

const BRIDGE: &str = "sklm0";
const CLUSTER_CIDR: &str = "10.251.0.0/16";
const IMAGE: &str = "skiff.local/lm-httpd:1";

struct Env {
    netns: String,
    root: PathBuf,
    home: PathBuf,
    tmp: tempfile::TempDir,
}

impl Env {
    /// A command run inside the test's network namespace, with the test's HOME.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program)
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG");
        c
    }

    fn skiffadm(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(bin_dir().join("skiffadm"));
        c.args(args).arg("--root-dir").arg(&self.root);
        c.output().expect("run skiffadm")
    }

    fn skiffadm_ok(&self, args: &[&str]) -> String {
        let out = self.skiffadm(args);
        assert!(
            out.status.success(),
            "skiffadm {args:?} failed\nstdout:\n{}\nstderr:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["supervisor", "server", "agent"] {
            let text = std::fs::read_to_string(self.root.join(format!("logs/{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s += &format!(
                "--- {name}.log\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        s
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.cmd("kubectl");
        c.arg("--kubeconfig")
            .arg(self.root.join("admin.kubeconfig"))
            .args(args);
        match stdin {
            None => c.output().expect("run kubectl"),
            Some(input) => {
                use std::io::Write;
                let mut child = c
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("run kubectl");
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            }
        }
    }

    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a, None)).expect("kubectl JSON")
    }

    fn curl(&self, url: &str) -> Option<String> {
        let out = self
            .cmd("curl")
            .args(["-sS", "--max-time", "5", url])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn links(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "-j", "link", "show"])
            .output()
            .expect("ip link");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    fn nat_rules(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "iptables",
                "-w",
                "-t",
                "nat",
                "-S",
            ])
            .output()
            .expect("iptables");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pause processes the agent recorded and still alive.
    fn live_sandboxes(&self) -> Vec<i64> {
        std::fs::read_dir(self.root.join("agent/sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
                let pid = v["pid"].as_i64()?;
                Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
            })
            .collect()
    }
}

/// Leaves nothing behind even when an assertion fails: `skiffadm delete` first, then by
/// force (processes naming the root, recorded sandboxes, mounts under it), then the netns.
impl Drop for Env {
    fn drop(&mut self) {
        if self.root.exists() {
            let out = self.skiffadm(&["delete"]);
            if !out.status.success() {
                eprintln!(
                    "cleanup: skiffadm delete: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        for pid in self.live_sandboxes() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let root = self.root.display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if pid != std::process::id() && String::from_utf8_lossy(&cmdline).contains(&root) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|t| t.starts_with(&root))
            .collect();
        mounts.reverse();
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !nix_is_root() {
        missing.push("root".to_string());
    }
    for tool in [
        "ip", "iptables", "nsenter", "kubectl", "curl", "umoci", "skopeo",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(tool.to_string());
        }
    }
    if !Path::new("/usr/bin/busybox").exists() {
        missing.push("/usr/bin/busybox (busybox-static)".into());
    }
    for b in [
        "skiffadm",
        "skiff-server",
        "skiff-agent",
        "skiff-shim",
        "skiff-cni",
    ] {
        if !bin_dir().join(b).exists() {
            missing.push(format!(
                "{} (cargo build --bins)",
                bin_dir().join(b).display()
            ));
        }
    }
    missing
}

fn nix_is_root() -> bool {
    // The e2e crate has no nix dependency; `id -u` says the same.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A docker-archive tarball of busybox httpd, as `skopeo copy … docker-archive:` writes it.
fn build_image(dir: &Path) -> PathBuf {
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let layout = dir.join("layout").display().to_string();
    let bundle = dir.join("bundle").display().to_string();
    let image = format!("{layout}:1");
    run(&["umoci", "init", "--layout", &layout]);
    run(&["umoci", "new", "--image", &image]);
    run(&["umoci", "unpack", "--rootless", "--image", &image, &bundle]);
    populate_busybox(&dir.join("bundle/rootfs"));
    std::fs::write(
        dir.join("bundle/rootfs/var/www/index.html"),
        "Hello from Skiff\n",
    )
    .unwrap();
    run(&["umoci", "repack", "--image", &image, &bundle]);
    run(&[
        "umoci",
        "config",
        "--image",
        &image,
        "--config.workingdir",
        "/",
        "--config.env",
        "PATH=/bin",
        "--config.cmd",
        "httpd",
        "--config.cmd",
        "-f",
        "--config.cmd",
        "-p",
        "--config.cmd",
        "80",
        "--config.cmd",
        "-h",
        "--config.cmd",
        "/var/www",
    ]);
    let tar = dir.join("demo.tar");
    run(&[
        "skopeo",
        "copy",
        "--quiet",
        &format!("oci:{image}"),
        &format!("docker-archive:{}:{IMAGE}", tar.display()),
    ]);
    tar
}

const DEMO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: demo}
  template:
    metadata:
      labels: {app: demo}
    spec:
      containers:
      - name: httpd
        image: skiff.local/lm-httpd:1
        command: ["sh", "-c", "echo \"Hello from Skiff, pod $(hostname)\" > /var/www/index.html && exec httpd -f -p 80 -h /var/www"]
---
apiVersion: v1
kind: Service
metadata:
  name: demo
spec:
  type: NodePort
  selector: {app: demo}
  ports:
  - port: 80
"#;

/// Pod name → IP once both demo pods run with an IP, or panics with what was seen.
fn wait_demo_running(env: &Env, timeout: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let pods = env.json(&["get", "pods", "-l", "app=demo"]);
        let running: Vec<(String, String)> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["status"]["podIP"]
                        .as_str()
                        .filter(|s| !s.is_empty())?
                        .to_string(),
                ))
            })
            .collect();
        if running.len() == 2 {
            return running;
        }
        assert!(
            Instant::now() < deadline,
            "demo pods not Running with IPs: {}\n{}",
            serde_json::to_string_pretty(&pods["items"]).unwrap(),
            env.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, prefix) = cidr.split_once('/').unwrap();
    let prefix: u32 = prefix.parse().unwrap();
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let net: std::net::Ipv4Addr = net.parse().unwrap();
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[test]
fn up_load_deploy_curl_down_up_delete() {
    if skiff_e2e::use_etcd() {
        println!("SKIPPED local_mode: local mode always runs the embedded store");
        return;
    }
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        println!("SKIPPED local_mode: missing {}", missing.join(", "));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let netns = format!("skiff-lm-{}", std::process::id());
    let status = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .unwrap();
    assert!(status.success(), "ip netns add {netns}");
    let env = Env {
        netns: netns.clone(),
        root: tmp.path().join("cluster"),
        home: tmp.path().join("home"),
        tmp,
    };
    // Loopback, and a default route as a real host has one — into a veth pair whose both ends
    // stay in the namespace, so nothing can leave it. (Without any route, connecting to a
    // ClusterIP fails before the service proxy's DNAT is consulted.)
    for args in [
        vec!["link", "set", "lo", "up"],
        vec![
            "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
        ],
        vec!["link", "set", "uplink0", "up"],
        vec!["link", "set", "uplink1", "up"],
        vec!["addr", "add", "192.0.2.1/24", "dev", "uplink0"],
        vec!["route", "add", "default", "dev", "uplink0"],
    ] {
        let ok = Command::new("ip")
            .arg("-n")
            .arg(&netns)
            .args(&args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args:?}");
    }
    // The user already has a kubeconfig with another cluster: it must survive.
    std::fs::create_dir_all(env.home.join(".kube")).unwrap();
    let other = "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster:\n    server: https://127.0.0.9:1\nusers:\n- name: other\n  user:\n    token: t\ncontexts:\n- name: other\n  context:\n    cluster: other\n    user: other\ncurrent-context: other\n";
    std::fs::write(env.home.join(".kube/config"), other).unwrap();

    let bin = bin_dir().display().to_string();
    let up_args = [
        "up",
        "--port",
        "7443",
        "--node-name",
        "lm-node",
        // The namespace's "primary" address, as `up` would find on a real host.
        "--node-ip",
        "192.0.2.1",
        "--bridge",
        BRIDGE,
        "--cluster-cidr",
        CLUSTER_CIDR,
        "--bin-dir",
        &bin,
        "--wait",
        "240",
    ];
    let out = env.skiffadm_ok(&up_args);
    assert!(out.contains("cgroup limits"), "{out}");
    assert!(out.contains("node         lm-node"), "{out}");
    assert!(
        out.contains("cluster DNS  10.96.0.10 (served on 192.0.2.1:53)"),
        "{out}"
    );

    // The node is Ready and has a podCIDR inside the cluster network.
    let node = env.json(&["get", "node", "lm-node"]);
    let pod_cidr = node["spec"]["podCIDR"]
        .as_str()
        .expect("podCIDR")
        .to_string();
    assert!(
        in_cidr(pod_cidr.split('/').next().unwrap(), CLUSTER_CIDR),
        "{pod_cidr}"
    );
    let subnet = std::fs::read_to_string(env.root.join("run/subnet.env")).unwrap();
    assert!(
        subnet.contains(&format!("SKIFF_SUBNET={pod_cidr}\n")),
        "{subnet}"
    );

    // The user's kubeconfig: ours added and current, theirs kept.
    let kc: serde_json::Value = {
        let out = env
            .cmd("kubectl")
            .args(["config", "view", "-o", "json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(kc["current-context"], "skiff");
    let contexts: Vec<&str> = kc["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        contexts.contains(&"other") && contexts.contains(&"skiff"),
        "{contexts:?}"
    );
    // kubectl with the merged kubeconfig reaches the cluster.
    let out = env
        .cmd("kubectl")
        .args(["get", "nodes", "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node/lm-node");

    // `up` again: already up, nothing restarted.
    let sup_pid = std::fs::read_to_string(env.root.join("run/supervisor.pid")).unwrap();
    let again = env.skiffadm_ok(&up_args);
    assert!(again.contains("already up"), "{again}");
    assert_eq!(
        std::fs::read_to_string(env.root.join("run/supervisor.pid")).unwrap(),
        sup_pid
    );

    // Image load into the running node, then the demo.
    let tar = build_image(&env.tmp.path().join("image"));
    let loaded = env.skiffadm_ok(&["image", "load", tar.to_str().unwrap()]);
    assert!(loaded.contains(&format!("Loaded {IMAGE}")), "{loaded}");
    env.kubectl_ok(&["apply", "-f", "-"], Some(DEMO));
    let pods = wait_demo_running(&env, Duration::from_secs(180));
    for (name, ip) in &pods {
        assert!(
            in_cidr(ip, &pod_cidr),
            "{name} has {ip}, outside {pod_cidr}"
        );
        let page = env.curl(&format!("http://{ip}/")).unwrap_or_default();
        assert_eq!(page, format!("Hello from Skiff, pod {name}\n"), "curl {ip}");
    }
    let status = env.skiffadm(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains("lm-node Ready") && text.contains("2 running sandbox"),
        "{text}"
    );
    let url = env.skiffadm_ok(&["service", "demo", "--url"]);
    assert!(url.trim().starts_with("http://192.0.2.1:3"), "{url}");
    // The agent's service proxy routes the Service (inside this test's namespace).
    let cluster_ip = env.kubectl_ok(
        &["get", "service", "demo", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    for target in [format!("http://{cluster_ip}/"), format!("{}/", url.trim())] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let page = loop {
            match env.curl(&target) {
                Some(p) => break p,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
                None => panic!(
                    "{target} never answered\n{}\n{}",
                    env.nat_rules(),
                    env.logs()
                ),
            }
        };
        assert!(
            page.starts_with("Hello from Skiff, pod demo-"),
            "{target}: {page}"
        );
        println!("{target} -> {}", page.trim());
    }
    // Cluster DNS: `up` serves it on the node address and pods ask 10.96.0.10, which the
    // service proxy forwards there.
    let client = &pods[0].0;
    let resolv = env.kubectl_ok(&["exec", client, "--", "cat", "/etc/resolv.conf"], None);
    assert!(
        resolv.contains("nameserver 10.96.0.10\n")
            && resolv
                .contains("search default.svc.cluster.local svc.cluster.local cluster.local\n"),
        "{resolv}"
    );
    let api_ip = env.kubectl_ok(
        &[
            "get",
            "service",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    // busybox's nslookup asks A and AAAA and exits 1 when either has no answer, so the answer
    // lines decide. A dotless name goes through the search path.
    for (name, want) in [
        ("demo", cluster_ip.as_str()),
        ("demo.default.svc.cluster.local", cluster_ip.as_str()),
        ("kubernetes.default.svc.cluster.local", api_ip.as_str()),
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = env.kubectl(&["exec", client, "--", "nslookup", name], None);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains(&format!("Address: {want}\n")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nslookup {name} in {client} never gave {want}: {text}{}\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                env.nat_rules(),
                env.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // `kubernetes.default` has a dot, which busybox's nslookup does not search; wget resolves
    // through the C library's search path (ndots:5) as any program in a pod does. (Debian's
    // static busybox wget crashes with -T; `timeout` bounds it instead.)
    let out = env.kubectl(
        &[
            "exec",
            client,
            "--",
            "busybox",
            "timeout",
            "10",
            "wget",
            "-O",
            "/dev/null",
            "https://kubernetes.default/",
        ],
        None,
    );
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Connecting to kubernetes.default ({api_ip}:443)")),
        "{text}"
    );

    let wrong = env.skiffadm(&["service", "kubernetes", "--url"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("ClusterIP"));

    // The supervisor restarts a killed agent; the pods are not disturbed.
    let agent_pid = std::fs::read_to_string(env.root.join("run/agent.pid")).unwrap();
    assert!(Command::new("kill")
        .args(["-9", agent_pid.trim()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = std::fs::read_to_string(env.root.join("run/agent.pid")).unwrap_or_default();
        if !now.is_empty() && now != agent_pid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent not restarted\n{}",
            env.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let supervisor_log = std::fs::read_to_string(env.root.join("logs/supervisor.log")).unwrap();
    assert!(
        supervisor_log.contains("agent: exited (signal: 9"),
        "{supervisor_log}"
    );
    assert_eq!(wait_demo_running(&env, Duration::from_secs(60)).len(), 2);

    // down: control plane and agent stop, the pods keep serving.
    env.skiffadm_ok(&["down"]);
    assert!(!env.skiffadm(&["status"]).status.success());
    assert!(env.kubectl(&["get", "nodes"], None).status.code() != Some(0));
    assert_eq!(env.live_sandboxes().len(), 2);
    // `skiff-agent images` on the stopped node's store, and on a scratch store of its own.
    let agent_images = |root: &Path, args: &[&str]| {
        let out = Command::new(bin_dir().join("skiff-agent"))
            .arg("images")
            .arg("--root-dir")
            .arg(root)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skiff-agent images {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(agent_images(&env.root.join("agent"), &["list"]).contains(IMAGE));
    let scratch = env.tmp.path().join("scratch-agent");
    let tar_s = tar.to_str().unwrap();
    assert!(agent_images(&scratch, &["import", tar_s]).contains(&format!("imported {IMAGE}")));
    let list = agent_images(&scratch, &["list"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains(IMAGE), "{list}");
    assert!(agent_images(&scratch, &["rm", IMAGE]).contains(&format!("removed {IMAGE}")));
    assert_eq!(agent_images(&scratch, &["list"]).lines().count(), 1);

    // up resumes: same objects, same pods, same IPs.
    env.skiffadm_ok(&["up", "--bin-dir", &bin, "--wait", "240"]);
    let after = wait_demo_running(&env, Duration::from_secs(120));
    let mut before_sorted = pods.clone();
    before_sorted.sort();
    let mut after_sorted = after.clone();
    after_sorted.sort();
    assert_eq!(
        before_sorted, after_sorted,
        "the same pods, with the same IPs"
    );
    for (name, ip) in &after {
        let page = env.curl(&format!("http://{ip}/")).unwrap_or_default();
        assert_eq!(page, format!("Hello from Skiff, pod {name}\n"));
    }

    // delete: nothing left.
    let sandboxes = env.live_sandboxes();
    env.skiffadm_ok(&["delete"]);
    assert!(!env.root.exists(), "root dir removed");
    for pid in sandboxes {
        // Killed pause processes are reaped by init, which may take a moment; a zombie holds
        // no namespace.
        let deadline = Instant::now() + Duration::from_secs(10);
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true)
        };
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(gone(), "pause process {pid} still running");
    }
    let mut links = env.links();
    links.sort();
    assert_eq!(
        links,
        ["lo", "uplink0", "uplink1"],
        "no bridge, no pod veths"
    );
    let nat = env.nat_rules();
    assert!(!nat.contains("SKIFF-LOCAL-MASQ"), "{nat}");
    assert!(!nat.contains("KUBE-"), "service proxy chains left: {nat}");
    let root = env.root.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&root), "mounts left under {root}");
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&root))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let kc = std::fs::read_to_string(env.home.join(".kube/config")).unwrap();
    assert!(!kc.contains("7443"), "skiff entries removed: {kc}");
    assert!(kc.contains("127.0.0.9"), "other cluster kept: {kc}");
    // A second delete has nothing to do.
    let again = env.skiffadm_ok(&["delete"]);
    assert!(again.contains("Nothing to delete"), "{again}");
}
