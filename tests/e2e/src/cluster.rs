//! A multi-node cluster on this host for the tests, built by the same code as
//! `skiffadm up --nodes N` (the `skiff-lab` crate): skiff-server in an underlay network
//! namespace, one skiff-agent per node namespace (overlay, service proxy, cluster DNS on), a
//! registry and an upstream resolver on the underlay bridge. kubectl runs inside the underlay
//! namespace. The guard removes everything on drop, failure included: pods, agents, server,
//! containers, mounts, namespaces.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use skiff_lab::Spec;

use crate::agent::eventually;
use crate::bin_dir;
use crate::registry::Registry;

pub const REGISTRY_PORT: u16 = 5000;

pub struct Cluster {
    pub spec: Spec,
    agents: Vec<Option<Child>>,
    server: Option<Child>,
    registry: Option<Registry>,
    resolver: Option<Child>,
    dir: tempfile::TempDir,
}

/// What a cluster test needs that this host may lack; empty when it has everything.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !crate::agent::is_root() {
        missing.push("root".to_string());
    }
    for tool in [
        "nsenter",
        "ip",
        "iptables-nft-restore",
        "docker-registry",
        "skopeo",
        "umoci",
        "dnsmasq",
        "curl",
        "nft",
        "kubectl",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            missing.push(tool.to_string());
        }
    }
    if !std::path::Path::new("/usr/bin/busybox").is_file() {
        missing.push("busybox-static".to_string());
    }
    for b in ["skiff-server", "skiff-agent", "skiff-shim", "skiff-cni"] {
        if !bin_dir().join(b).is_file() {
            missing.push(format!("{} (cargo build)", bin_dir().join(b).display()));
        }
    }
    missing
}

fn spawn(argv: &[OsString], log: &std::path::Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    Command::new(&argv[0])
        .args(&argv[1..])
        .env("NO_COLOR", "1")
        // netlink-packet-route warns about every kernel attribute newer than itself.
        .env("RUST_LOG", "info,netlink_packet_route=error")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0].to_string_lossy()))
}

fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Cluster {
    /// `nodes` nodes named `<name>-node-<i>`, all Ready, with a registry at
    /// `<bridge>:5000` and a resolver at `<bridge>:53` that answers `upstream_records`
    /// (`(name, IPv4)`) and nothing else, as the cluster DNS's upstream.
    pub fn start(name: &str, nodes: usize, upstream_records: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = Spec {
            name: name.into(),
            nodes,
            underlay: "10.250.0.0".parse().expect("ip"),
            root: dir.path().join("lab"),
            bin_dir: std::fs::canonicalize(bin_dir()).expect("bin dir"),
            port: 6443,
            cluster_cidr: "10.244.0.0/16".into(),
            cgroup_root: None,
            insecure_registries: vec![],
            dns_upstream: vec![],
        };
        let bridge = spec.bridge_ip().to_string();
        let spec = Spec {
            insecure_registries: vec![format!("{bridge}:{REGISTRY_PORT}")],
            dns_upstream: vec![format!("{bridge}:53")],
            ..spec
        };
        let mut c = Cluster {
            agents: (0..nodes).map(|_| None).collect(),
            server: None,
            registry: None,
            resolver: None,
            spec,
            dir,
        };
        skiff_lab::net::create(&c.spec).expect("lab network");
        for i in 1..=nodes {
            c.spec.write_node_files(i).expect("node files");
        }
        c.registry = Some(Registry::start_in(
            &c.spec.underlay_netns(),
            &bridge,
            REGISTRY_PORT,
        ));
        let mut resolver: Vec<OsString> = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--pid-file=",
            "--log-facility=-",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        resolver.push(format!("--listen-address={bridge}").into());
        for (name, ip) in upstream_records {
            resolver.push(format!("--address=/{name}/{ip}").into());
        }
        c.resolver = Some(spawn(
            &Spec::in_netns(&c.spec.underlay_netns(), resolver),
            &c.log("resolver"),
        ));
        c.server = Some(spawn(&c.spec.server_argv(), &c.log("server")));
        c.wait_server();
        for i in 1..=nodes {
            c.start_agent(i);
        }
        c.wait_nodes_ready(nodes);
        c
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    pub fn registry(&self) -> &Registry {
        self.registry.as_ref().expect("registry")
    }

    fn wait_server(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(Ok(Some(status))) = self.server.as_mut().map(Child::try_wait) {
                panic!(
                    "skiff-server exited with {status}:\n{}",
                    tail(&self.log("server"), 30)
                );
            }
            if self.spec.server_kubeconfig().exists()
                && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "skiff-server did not become ready:\n{}",
                tail(&self.log("server"), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_nodes_ready(&self, n: usize) {
        // Generous: on a loaded 2-core machine the first start of debug agents is slow.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let ready = self.ready_nodes();
            if ready.len() >= n {
                return;
            }
            if Instant::now() > deadline {
                let mut logs = String::new();
                for i in 1..=self.spec.nodes {
                    logs += &format!(
                        "--- agent {i}\n{}\n",
                        tail(&self.log(&format!("agent-{i}")), 15)
                    );
                }
                panic!("only {ready:?} of {n} nodes Ready\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Names of the nodes whose Ready condition is True.
    pub fn ready_nodes(&self) -> Vec<String> {
        let out = self.kubectl(&["get", "nodes", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    pub fn start_agent(&mut self, i: usize) {
        let child = spawn(&self.spec.agent_argv(i), &self.log(&format!("agent-{i}")));
        self.agents[i - 1] = Some(child);
    }

    /// Stops node `i`'s agent (SIGTERM, then SIGKILL) and removes what it left: its pods'
    /// containers, mounts and the node's network namespace.
    pub fn remove_node(&mut self, i: usize) {
        if let Some(mut child) = self.agents[i - 1].take() {
            let _ = signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut errors = Vec::new();
        skiff_lab::sweep::node(&self.spec, i, &mut errors);
        skiff_lab::net::delete_node(&self.spec, i, &mut errors);
        assert!(errors.is_empty(), "removing node {i}: {errors:?}");
    }

    fn netns_cmd(netns: &str, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(program);
        c
    }

    /// kubectl inside the underlay namespace, with the server's admin credentials.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Self::netns_cmd(&self.spec.underlay_netns(), "kubectl");
        c.args(args)
            .env("KUBECONFIG", self.spec.server_kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .env("HOME", self.dir.path());
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("run kubectl")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&full)).expect("kubectl printed JSON")
    }

    /// `argv` run inside node `i`'s network namespace.
    pub fn on_node(&self, i: usize, argv: &[&str]) -> Output {
        Self::netns_cmd(&self.spec.node_netns(i), argv[0])
            .args(&argv[1..])
            .output()
            .expect("nsenter")
    }

    /// `argv` run inside the underlay namespace (neither a node nor the host).
    pub fn on_underlay(&self, argv: &[&str]) -> Output {
        Self::netns_cmd(&self.spec.underlay_netns(), argv[0])
            .args(&argv[1..])
            .output()
            .expect("nsenter")
    }

    /// The last lines of every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for name in std::iter::once("server".to_string())
            .chain((1..=self.spec.nodes).map(|i| format!("agent-{i}")))
        {
            s += &format!("--- {name}\n{}\n", tail(&self.log(&name), 25));
        }
        s
    }

    /// Waits for `check`; on timeout, fails with the logs.
    pub fn eventually(&self, what: &str, secs: u64, check: impl FnMut() -> bool) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            eventually(what, Duration::from_secs(secs), check)
        }));
        if result.is_err() {
            panic!("timed out waiting for: {what}\n{}", self.logs());
        }
    }
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            // A debugging aid: keep the failed lab for inspection this many seconds.
            if let Some(secs) = std::env::var("SKIFF_E2E_HOLD_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
            {
                let release = self.dir.path().join("release");
                eprintln!(
                    "holding the lab {} ({}) for {secs} s or until {} exists",
                    self.spec.name,
                    self.spec.root.display(),
                    release.display()
                );
                let until = Instant::now() + Duration::from_secs(secs);
                while Instant::now() < until && !release.exists() {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        if self.server.is_some() && self.agents.iter().any(Option::is_some) {
            // Through the agents first, so CNI DEL and unmounts run as in normal life.
            let _ = self
                .kubectl_cmd(&[
                    "delete",
                    "pod",
                    "--all",
                    "--all-namespaces",
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                ])
                .output();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline
                && (1..=self.spec.nodes).any(|i| {
                    std::fs::read_dir(self.spec.node_root(i).join("sandboxes"))
                        .is_ok_and(|mut d| d.next().is_some())
                })
            {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for child in self.agents.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        if let Some(mut r) = self.resolver.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        drop(self.registry.take());
        let mut errors = Vec::new();
        skiff_lab::sweep::all(&self.spec, &mut errors);
        skiff_lab::net::delete(&self.spec, &mut errors);
        if !errors.is_empty() {
            eprintln!("cluster cleanup: {}", errors.join("; "));
        }
    }
}
