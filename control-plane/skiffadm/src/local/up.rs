//! `skiffadm up`: preflight, settings, the pod network's files, then the supervisor daemon;
//! returns once the API answers and the node is Ready, with the kubeconfigs written.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::checks::{self, Limits};
use super::layout::{self, Layout, Settings};
use super::supervisor::live_pid;
use super::{kubeconfig, network, processes, LocalError};

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Where the cluster keeps everything.
    #[arg(long, default_value = layout::DEFAULT_ROOT)]
    pub root_dir: PathBuf,
    /// API server port on 127.0.0.1 (first `up` only).
    #[arg(long)]
    pub port: Option<u16>,
    /// The node's name (first `up` only; default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's address, used in NodePort URLs (first `up` only; default: the address of
    /// the default route's interface, else 127.0.0.1).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// The pod bridge (first `up` only).
    #[arg(long)]
    pub bridge: Option<String>,
    /// The pod network; the node gets a /24 of it (first `up` only).
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// Where skiff-server, skiff-agent, skiff-shim and skiff-cni are (default: next to this
    /// skiffadm).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// A cluster of this many nodes on this host (first `up` only): server and agents each in
    /// a network namespace of their own (`skiff-lab`, `skiff-node-<i>`), joined by a bridge
    /// and the VxLAN overlay; the API is relayed to 127.0.0.1:--port. Without it: one node on
    /// the host's network.
    #[arg(long)]
    pub nodes: Option<usize>,
    /// How long to wait for the node to be Ready, in seconds.
    #[arg(long, default_value_t = 180)]
    pub wait: u64,
}

pub const DEFAULT_PORT: u16 = 6443;
pub const DEFAULT_BRIDGE: &str = "skiff0";
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const MASQ_CHAIN: &str = "SKIFF-LOCAL-MASQ";

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The address of the interface the default route leaves through, if there is one.
fn default_route_address() -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "-j", "route", "show", "default"])
        .output()
        .ok()?;
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let route = routes.as_array()?.first()?;
    if let Some(src) = route["prefsrc"].as_str() {
        return Some(src.to_string());
    }
    let dev = route["dev"].as_str()?;
    let out = Command::new("ip")
        .args(["-4", "-j", "addr", "show", "dev", dev])
        .output()
        .ok()?;
    let addrs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    addrs.as_array()?.first()?["addr_info"]
        .as_array()?
        .iter()
        .find_map(|a| a["local"].as_str().map(str::to_string))
}

fn default_bin_dir() -> Result<PathBuf, LocalError> {
    let exe =
        std::env::current_exe().map_err(|e| LocalError::io(Path::new("/proc/self/exe"), e))?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The settings for this `up`: the recorded ones (flags that contradict them are refused,
/// since the cluster's certificates, node and pod IPs were made with them), or new ones.
pub fn resolve_settings(
    args: &UpArgs,
    recorded: Option<Settings>,
    limits: &Limits,
    detect_ip: impl FnOnce() -> Option<String>,
    default_bin: impl FnOnce() -> Result<PathBuf, LocalError>,
) -> Result<Settings, LocalError> {
    if let Some(mut s) = recorded {
        let conflicts: Vec<String> = [
            (
                "--port",
                args.port.map(|p| p.to_string()),
                s.port.to_string(),
            ),
            ("--node-name", args.node_name.clone(), s.node_name.clone()),
            ("--node-ip", args.node_ip.clone(), s.node_ip.clone()),
            ("--bridge", args.bridge.clone(), s.bridge.clone()),
            (
                "--cluster-cidr",
                args.cluster_cidr.clone(),
                s.cluster_cidr.clone(),
            ),
            (
                "--nodes",
                args.nodes.map(|n| n.to_string()),
                s.nodes
                    .map_or_else(|| "1 on the host network".into(), |n| n.to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(flag, given, had)| {
            given
                .filter(|g| *g != had)
                .map(|g| format!("{flag} {g} (it has {had})"))
        })
        .collect();
        if !conflicts.is_empty() {
            return Err(LocalError::Invalid(format!(
                "the cluster in {} was created with other settings: {}; `skiffadm delete --root-dir {}` first to change them",
                args.root_dir.display(),
                conflicts.join(", "),
                args.root_dir.display()
            )));
        }
        if let Some(b) = &args.bin_dir {
            s.bin_dir = b.clone();
        }
        return Ok(s);
    }
    if let Some(n) = args.nodes {
        if n == 0 || n > skiff_lab::spec::MAX_NODES {
            return Err(LocalError::Invalid(format!(
                "--nodes {n}: between 1 and {}",
                skiff_lab::spec::MAX_NODES
            )));
        }
        for (flag, given) in [
            ("--node-name", args.node_name.is_some()),
            ("--node-ip", args.node_ip.is_some()),
            ("--bridge", args.bridge.is_some()),
        ] {
            if given {
                return Err(LocalError::Invalid(format!(
                    "{flag} does not apply with --nodes: the lab names and addresses its nodes itself"
                )));
            }
        }
    }
    let lab_first = args.nodes.map(|n| skiff_lab::Spec {
        name: super::lab::NAME.into(),
        nodes: n,
        underlay: super::lab::UNDERLAY,
        root: args.root_dir.clone(),
        bin_dir: PathBuf::new(),
        port: super::lab::INNER_PORT,
        cluster_cidr: String::new(),
        cgroup_root: None,
        insecure_registries: vec![],
        dns_upstream: vec![],
    });
    let node_name = match &lab_first {
        Some(spec) => spec.node_name(1),
        None => args.node_name.clone().unwrap_or_else(hostname),
    };
    layout::validate_node_name(&node_name)?;
    let node_ip = match (&lab_first, &args.node_ip) {
        (Some(spec), _) => spec.node_ip(1).to_string(),
        (None, Some(ip)) => ip.clone(),
        (None, None) => detect_ip().unwrap_or_else(|| "127.0.0.1".into()),
    };
    node_ip.parse::<std::net::Ipv4Addr>().map_err(|_| {
        LocalError::Invalid(format!("--node-ip {node_ip:?} is not an IPv4 address"))
    })?;
    let bridge = match &lab_first {
        Some(_) => skiff_lab::spec::BRIDGE.to_string(),
        None => args.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.into()),
    };
    layout::validate_ifname(&bridge)?;
    let cluster_cidr = args
        .cluster_cidr
        .clone()
        .unwrap_or_else(|| DEFAULT_CLUSTER_CIDR.into());
    layout::validate_cluster_cidr(&cluster_cidr)?;
    let port = args.port.unwrap_or(DEFAULT_PORT);
    if port == 0 {
        return Err(LocalError::Invalid("--port 0 is not a port".into()));
    }
    Ok(Settings {
        port,
        node_name,
        node_ip,
        bridge,
        cluster_cidr,
        bin_dir: match &args.bin_dir {
            Some(b) => b.clone(),
            None => default_bin()?,
        },
        cgroup_root: match limits {
            Limits::Enforced(dir) => Some(dir.clone()),
            Limits::NotEnforced { .. } => None,
        },
        masq_chain: MASQ_CHAIN.into(),
        nodes: args.nodes,
        cluster_dns_bind: None,
    })
}

/// Where the single node's cluster DNS listens when port 53 of the node address is taken.
/// Pods never see this port: they ask 10.96.0.10:53 and the service proxy forwards to the
/// port the agent announces in its kube-dns EndpointSlice.
pub const DNS_FALLBACK_PORT: u16 = 10053;

/// Whether both a UDP socket and a TCP listener can be bound at `addr` right now.
pub fn dns_addr_free(addr: std::net::SocketAddr) -> bool {
    std::net::UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok()
}

/// Picks the cluster DNS address of a single node on the host's network: the node address
/// (never a loopback one, which pods cannot reach, and never a wildcard, so that a resolver
/// of the host on 127.0.0.53 or another address keeps its port), port 53 or, when a DNS
/// server of the host already holds it, [`DNS_FALLBACK_PORT`]. Returns the address and, when
/// it is not the plain one, the line that says why.
pub fn choose_dns_bind(
    node_ip: &str,
    free: impl Fn(std::net::SocketAddr) -> bool,
) -> Result<(Option<std::net::SocketAddr>, Option<String>), LocalError> {
    let ip: std::net::IpAddr = node_ip
        .parse()
        .map_err(|_| LocalError::Invalid(format!("node IP {node_ip:?} is not an IP address")))?;
    if ip.is_loopback() {
        return Ok((
            None,
            Some(format!(
                "cluster DNS is off: the node address {ip} is a loopback one, which pods cannot reach (give --node-ip on the first `up`)"
            )),
        ));
    }
    let standard = std::net::SocketAddr::new(ip, 53);
    if free(standard) {
        return Ok((Some(standard), None));
    }
    let fallback = std::net::SocketAddr::new(ip, DNS_FALLBACK_PORT);
    if free(fallback) {
        return Ok((
            Some(fallback),
            Some(format!(
                "{standard} is taken (a DNS server of this host?): cluster DNS listens on {fallback}; pods still ask 10.96.0.10:53"
            )),
        ));
    }
    Err(LocalError::Preflight(format!(
        "cluster DNS needs {standard} or {fallback} (UDP and TCP) and both are taken: stop what listens there (`ss -lntup | grep -E ':(53|{DNS_FALLBACK_PORT}) '`)"
    )))
}

/// The agent's node API port (skiff-agent's default).
pub const NODE_API_PORT: u16 = 10250;

/// Says which port is taken before anything starts, instead of a server that keeps
/// restarting on a bind error.
fn ports_free(settings: &Settings) -> Result<(), LocalError> {
    let checks = [
        (
            "127.0.0.1".to_string(),
            settings.port,
            "the API server (--port)",
        ),
        (settings.node_ip.clone(), NODE_API_PORT, "the node API"),
    ];
    for (ip, port, what) in checks {
        let addr: std::net::IpAddr = ip
            .parse()
            .map_err(|_| LocalError::Invalid(format!("{ip:?} is not an IP address")))?;
        if let Err(e) = std::net::TcpListener::bind((addr, port)) {
            return Err(LocalError::Preflight(format!(
                "{ip}:{port}, needed by {what}, is not available: {e}; is another cluster running here?"
            )));
        }
    }
    Ok(())
}

fn supervisor_running(layout: &Layout) -> Option<i32> {
    live_pid(&layout.supervisor_pid(), "local-supervise")
}

fn spawn_supervisor(layout: &Layout) -> Result<(), LocalError> {
    let exe =
        std::env::current_exe().map_err(|e| LocalError::io(Path::new("/proc/self/exe"), e))?;
    let log_path = layout.logs_dir().join("supervisor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| LocalError::io(&log_path, e))?;
    let err = log.try_clone().map_err(|e| LocalError::io(&log_path, e))?;
    let _ = std::fs::remove_file(layout.agent_hold());
    // The daemon calls setsid itself and is reparented to init when this process exits; the
    // handle is dropped on purpose.
    Command::new(exe)
        .arg("local-supervise")
        .arg("--root-dir")
        .arg(&layout.root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| LocalError::Tool {
            tool: "skiffadm local-supervise".into(),
            message: e.to_string(),
        })?;
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn logs_hint(layout: &Layout) -> String {
    let mut hint = format!("logs are in {}", layout.logs_dir().display());
    for name in ["supervisor", "server", "agent"] {
        let t = tail(&layout.logs_dir().join(format!("{name}.log")), 5);
        if !t.is_empty() {
            hint.push_str(&format!("\n--- {name}.log (last lines)\n{t}"));
        }
    }
    hint
}

/// Whether the node reports Ready=True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits for the server's kubeconfig, the API, a Ready node and the node's subnet file (pods
/// get no network before it); gives up early if the supervisor died.
pub async fn wait_ready(
    layout: &Layout,
    settings: &Settings,
    timeout: Duration,
) -> Result<Node, LocalError> {
    let deadline = Instant::now() + timeout;
    let timed_out = |what: &str| LocalError::Timeout {
        what: what.into(),
        secs: timeout.as_secs(),
        hint: logs_hint(layout),
    };
    let mut client = None;
    loop {
        if supervisor_running(layout).is_none() {
            return Err(LocalError::Tool {
                tool: "skiffadm local-supervise".into(),
                message: format!("the supervisor is not running; {}", logs_hint(layout)),
            });
        }
        if client.is_none() && layout.server_kubeconfig().exists() {
            client = super::client(layout).await.ok();
        }
        if let Some(c) = &client {
            let nodes: Api<Node> = Api::all(c.clone());
            if let Ok(Some(n)) = nodes.get_opt(&settings.node_name).await {
                if node_ready(&n) && layout.subnet_file().exists() {
                    return Ok(n);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(timed_out(if client.is_none() {
                "the API server's first start"
            } else {
                "node Ready with its pod subnet"
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `<root>/admin.kubeconfig` and the `skiff` context in the user's kubeconfig.
pub fn write_kubeconfigs(layout: &Layout) -> Result<PathBuf, LocalError> {
    let server = layout.server_kubeconfig();
    let text = std::fs::read_to_string(&server).map_err(|e| LocalError::io(&server, e))?;
    let creds = kubeconfig::credentials(&server, &text)?;
    super::write_atomic(
        &layout.admin_kubeconfig(),
        kubeconfig::standalone(&creds).as_bytes(),
        0o600,
    )?;
    let user = kubeconfig::user_kubeconfig_path()?;
    let existing = kubeconfig::read_optional(&user)?;
    let merged = kubeconfig::merged(&user, &existing, &creds)?;
    super::write_atomic(&user, merged.as_bytes(), 0o600)?;
    Ok(user)
}

fn print_summary(layout: &Layout, settings: &Settings, node: &Node, user_kc: &Path) {
    let cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .unwrap_or_else(|| "(not allocated)".into());
    println!(
        "Skiff local cluster is up (state in {})",
        layout.root.display()
    );
    println!("  API server   https://127.0.0.1:{}", settings.port);
    println!(
        "  node         {} ({}), Ready",
        settings.node_name, settings.node_ip
    );
    println!("  pod network  {cidr} on bridge {}", settings.bridge);
    match settings.cluster_dns_bind {
        Some(bind) => println!("  cluster DNS  10.96.0.10 (served on {bind})"),
        None => println!("  cluster DNS  off"),
    }
    println!(
        "kubectl: the context \"skiff\" is now current in {}",
        user_kc.display()
    );
    println!("  kubectl get nodes");
    println!(
        "  or, leaving that file alone: export KUBECONFIG={}",
        layout.admin_kubeconfig().display()
    );
}

pub async fn run(args: UpArgs) -> Result<(), LocalError> {
    let layout = Layout::new(&args.root_dir)?;
    super::require_root()?;
    let limits = checks::run(&skiff_agent::preflight::Host::default(), &layout.root)?;
    let recorded = Settings::load(&layout)?;
    let resuming = recorded.is_some();
    let settings = resolve_settings(
        &args,
        recorded,
        &limits,
        default_route_address,
        default_bin_dir,
    )?;
    let timeout = Duration::from_secs(args.wait);
    if let Some(n) = settings.nodes {
        return run_lab(&layout, &settings, n, &limits, resuming, timeout).await;
    }
    if let Some(pid) = supervisor_running(&layout) {
        println!(
            "The local cluster in {} is already up (supervisor pid {pid}).",
            layout.root.display()
        );
        let node = wait_ready(&layout, &settings, timeout).await?;
        let user_kc = write_kubeconfigs(&layout)?;
        print_summary(&layout, &settings, &node, &user_kc);
        return Ok(());
    }
    let missing = processes::missing_binaries(&settings.bin_dir);
    if !missing.is_empty() {
        return Err(LocalError::Preflight(format!(
            "{} not found in {}; build them (`cargo build --release --bins`) or pass --bin-dir",
            missing.join(", "),
            settings.bin_dir.display()
        )));
    }
    // Children of a supervisor that was killed would hold the port and the store.
    super::stop::stop_processes(&layout);
    ports_free(&settings)?;
    let mut settings = settings;
    let (dns, why) = choose_dns_bind(&settings.node_ip, dns_addr_free)?;
    settings.cluster_dns_bind = dns;
    println!("[local] {}", limits.line());
    if let Some(line) = why {
        println!("[local] {line}");
    }
    for dir in [
        layout.root.clone(),
        layout.logs_dir(),
        layout.run_dir(),
        layout.cni_conf_dir(),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| LocalError::io(&dir, e))?;
    }
    settings.save(&layout)?;
    network::install_plugins(&layout, &settings)?;
    network::write_conflist(&layout, &settings)?;
    if let Err(e) = network::ensure_masquerade(&settings) {
        println!(
            "[local] pods cannot reach beyond this host: masquerading could not be set up: {e}"
        );
    }
    println!(
        "[local] {} the control plane and the node (logs in {})",
        if resuming { "restarting" } else { "starting" },
        layout.logs_dir().display()
    );
    spawn_supervisor(&layout)?;
    // The supervisor writes its pid file right after it starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while supervisor_running(&layout).is_none() {
        if Instant::now() > deadline {
            return Err(LocalError::Tool {
                tool: "skiffadm local-supervise".into(),
                message: format!("did not start; {}", logs_hint(&layout)),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node = wait_ready(&layout, &settings, timeout).await?;
    let user_kc = write_kubeconfigs(&layout)?;
    print_summary(&layout, &settings, &node, &user_kc);
    Ok(())
}

/// `<root>/admin.kubeconfig` and the user's `skiff` context, through the relay on loopback.
fn write_lab_kubeconfigs(layout: &Layout, settings: &Settings) -> Result<PathBuf, LocalError> {
    let creds = super::lab::host_credentials(layout, settings)?;
    super::write_atomic(
        &layout.admin_kubeconfig(),
        kubeconfig::standalone(&creds).as_bytes(),
        0o600,
    )?;
    let user = kubeconfig::user_kubeconfig_path()?;
    let existing = kubeconfig::read_optional(&user)?;
    let merged = kubeconfig::merged(&user, &existing, &creds)?;
    super::write_atomic(&user, merged.as_bytes(), 0o600)?;
    Ok(user)
}

/// `up --nodes N`: the lab's namespaces and files, then the supervisor with the server, the
/// relay and N agents; returns once N nodes are Ready.
async fn run_lab(
    layout: &Layout,
    settings: &Settings,
    nodes: usize,
    limits: &Limits,
    resuming: bool,
    timeout: Duration,
) -> Result<(), LocalError> {
    let spec = super::lab::spec(layout, settings, nodes);
    let write = || write_lab_kubeconfigs(layout, settings);
    if let Some(pid) = supervisor_running(layout) {
        println!(
            "The local cluster in {} is already up (supervisor pid {pid}).",
            layout.root.display()
        );
        let (user_kc, _) = super::lab::wait_ready(layout, nodes, timeout, write).await?;
        super::lab::print_summary(layout, settings, &spec, &user_kc);
        return Ok(());
    }
    let missing = processes::missing_binaries(&settings.bin_dir);
    if !missing.is_empty() {
        return Err(LocalError::Preflight(format!(
            "{} not found in {}; build them (`cargo build --release --bins`) or pass --bin-dir",
            missing.join(", "),
            settings.bin_dir.display()
        )));
    }
    super::stop::stop_processes(layout);
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", settings.port)) {
        return Err(LocalError::Preflight(format!(
            "127.0.0.1:{}, needed by the API relay (--port), is not available: {e}; is another cluster running here?",
            settings.port
        )));
    }
    println!("[local] {}", limits.line());
    for dir in [layout.root.clone(), layout.logs_dir(), layout.run_dir()] {
        std::fs::create_dir_all(&dir).map_err(|e| LocalError::io(&dir, e))?;
    }
    settings.save(layout)?;
    super::lab::prepare(layout, settings, nodes)?;
    println!(
        "[local] {} the control plane and {nodes} nodes in network namespaces {} and {}…{} (logs in {})",
        if resuming { "restarting" } else { "starting" },
        spec.underlay_netns(),
        spec.node_netns(1),
        spec.node_netns(nodes),
        layout.logs_dir().display()
    );
    spawn_supervisor(layout)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while supervisor_running(layout).is_none() {
        if Instant::now() > deadline {
            return Err(LocalError::Tool {
                tool: "skiffadm local-supervise".into(),
                message: format!("did not start; {}", logs_hint(layout)),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (user_kc, _) = super::lab::wait_ready(layout, nodes, timeout, write).await?;
    super::lab::print_summary(layout, settings, &spec, &user_kc);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(root: &str) -> UpArgs {
        UpArgs {
            root_dir: root.into(),
            port: None,
            node_name: Some("box".into()),
            node_ip: None,
            bridge: None,
            cluster_cidr: None,
            bin_dir: Some("/opt/bin".into()),
            nodes: None,
            wait: 10,
        }
    }

    fn no_limits() -> Limits {
        Limits::NotEnforced {
            hierarchy: "/sys/fs/cgroup/unified".into(),
            missing: vec!["cpu".into()],
        }
    }

    fn resolve(a: &UpArgs, recorded: Option<Settings>) -> Result<Settings, LocalError> {
        resolve_settings(
            a,
            recorded,
            &no_limits(),
            || Some("192.0.2.7".into()),
            || Ok("/self".into()),
        )
    }

    #[test]
    fn dns_takes_port_53_of_the_node_address_when_it_is_free() {
        let (bind, why) = choose_dns_bind("192.0.2.7", |_| true).unwrap();
        assert_eq!(bind, Some("192.0.2.7:53".parse().unwrap()));
        assert_eq!(why, None);
    }

    #[test]
    fn dns_falls_back_to_another_port_when_a_host_resolver_holds_53() {
        let (bind, why) = choose_dns_bind("192.0.2.7", |a| a.port() != 53).unwrap();
        assert_eq!(bind, Some("192.0.2.7:10053".parse().unwrap()));
        let why = why.unwrap();
        assert!(why.contains("192.0.2.7:53 is taken"), "{why}");
        assert!(why.contains("10.96.0.10:53"), "{why}");
    }

    #[test]
    fn dns_with_both_ports_taken_is_refused_naming_them() {
        let e = choose_dns_bind("192.0.2.7", |_| false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("192.0.2.7:53") && e.contains("192.0.2.7:10053"),
            "{e}"
        );
    }

    #[test]
    fn dns_is_off_on_a_loopback_node_address() {
        let (bind, why) = choose_dns_bind("127.0.0.1", |_| true).unwrap();
        assert_eq!(bind, None);
        assert!(why.unwrap().contains("loopback"));
    }

    #[test]
    fn a_really_taken_port_is_seen_as_taken() {
        // A listener on an ephemeral loopback port stands in for a host DNS server.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!dns_addr_free(held.local_addr().unwrap()));
    }

    #[test]
    fn first_up_takes_defaults_and_flags() {
        let s = resolve(&args("/r"), None).unwrap();
        assert_eq!(s.port, 6443);
        assert_eq!(s.node_ip, "192.0.2.7");
        assert_eq!(s.bridge, "skiff0");
        assert_eq!(s.cluster_cidr, "10.244.0.0/16");
        assert_eq!(s.bin_dir, Path::new("/opt/bin"));
        assert_eq!(s.cgroup_root, None);
        let mut a = args("/r");
        a.bin_dir = None;
        let s = resolve_settings(
            &a,
            None,
            &Limits::Enforced("/cg/x".into()),
            || None,
            || Ok("/self".into()),
        )
        .unwrap();
        assert_eq!(s.node_ip, "127.0.0.1");
        assert_eq!(s.bin_dir, Path::new("/self"));
        assert_eq!(s.cgroup_root, Some("/cg/x".into()));
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_named() {
        for (tweak, flag) in [
            (
                Box::new(|a: &mut UpArgs| a.node_ip = Some("not-an-ip".into()))
                    as Box<dyn Fn(&mut UpArgs)>,
                "--node-ip",
            ),
            (
                Box::new(|a: &mut UpArgs| a.bridge = Some("x".repeat(16))),
                "--bridge",
            ),
            (
                Box::new(|a: &mut UpArgs| a.cluster_cidr = Some("10.0.0.0/30".into())),
                "--cluster-cidr",
            ),
            (
                Box::new(|a: &mut UpArgs| a.node_name = Some("UPPER".into())),
                "--node-name",
            ),
            (Box::new(|a: &mut UpArgs| a.port = Some(0)), "--port"),
        ] {
            let mut a = args("/r");
            tweak(&mut a);
            let e = resolve(&a, None).unwrap_err().to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
    }

    #[test]
    fn resuming_keeps_the_recorded_settings_and_refuses_contradictions() {
        let first = resolve(&args("/r"), None).unwrap();
        let mut again = args("/r");
        again.node_name = None;
        again.bin_dir = Some("/new/bin".into());
        let s = resolve(&again, Some(first.clone())).unwrap();
        assert_eq!(s.node_name, "box");
        assert_eq!(s.bin_dir, Path::new("/new/bin"), "binaries may move");
        let mut same = args("/r");
        same.port = Some(6443);
        assert!(resolve(&same, Some(first.clone())).is_ok());
        let mut other = args("/r");
        other.port = Some(7000);
        other.bridge = Some("br1".into());
        let e = resolve(&other, Some(first)).unwrap_err().to_string();
        assert!(e.contains("--port 7000 (it has 6443)"), "{e}");
        assert!(e.contains("--bridge br1 (it has skiff0)"), "{e}");
        assert!(e.contains("skiffadm delete"), "{e}");
    }
}
