//! `skiffadm up --nodes N`: local mode with N nodes on this host, built by `skiff-lab` (the
//! same code the end-to-end tests use). skiff-server runs in the `skiff-lab` network
//! namespace on the underlay bridge, each agent in its own namespace `skiff-node-<i>`; the
//! supervisor runs them all plus a relay that puts the API on the host's 127.0.0.1:<port>,
//! so the host's kubectl works without the host getting any address or route of the lab.
//! Nothing else touches the host's network: no bridge, no iptables rule.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use skiff_lab::Spec;

use super::layout::{Layout, Settings};
use super::LocalError;

/// Prefix of the lab's namespaces and node names: `skiff-lab`, `skiff-node-<i>`.
pub const NAME: &str = "skiff";
/// The underlay /24 (outside the default pod and service networks).
pub const UNDERLAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 250, 0, 0);
/// The API server's port inside the underlay namespace.
pub const INNER_PORT: u16 = 6443;

fn lab_error(e: skiff_lab::LabError) -> LocalError {
    LocalError::Tool {
        tool: "skiff-lab".into(),
        message: e.to_string(),
    }
}

pub fn spec(layout: &Layout, s: &Settings, nodes: usize) -> Spec {
    Spec {
        name: NAME.into(),
        nodes,
        underlay: UNDERLAY,
        root: layout.root.clone(),
        bin_dir: s.bin_dir.clone(),
        port: INNER_PORT,
        cluster_cidr: s.cluster_cidr.clone(),
        cgroup_root: s.cgroup_root.clone(),
        insecure_registries: vec![],
        dns_upstream: vec![],
    }
}

/// The relay's command line: `skiffadm local-relay`, listening on the host's loopback and
/// connecting inside the underlay namespace. It names the root dir so `delete` finds it.
pub fn relay_command(layout: &Layout, s: &Settings, spec: &Spec) -> Vec<OsString> {
    let exe = std::env::current_exe().unwrap_or_else(|_| s.bin_dir.join("skiffadm"));
    vec![
        exe.into_os_string(),
        "local-relay".into(),
        "--listen".into(),
        format!("127.0.0.1:{}", s.port).into(),
        "--netns".into(),
        format!("/run/netns/{}", spec.underlay_netns()).into(),
        "--to".into(),
        format!("127.0.0.1:{}", spec.port).into(),
        "--root-dir".into(),
        layout.root.clone().into_os_string(),
    ]
}

/// Every supervised process: `server`, `relay`, `agent-1` … `agent-N`.
pub fn commands(layout: &Layout, s: &Settings, nodes: usize) -> BTreeMap<String, Vec<OsString>> {
    let spec = spec(layout, s, nodes);
    let mut m = BTreeMap::from([
        ("server".to_string(), spec.server_argv()),
        ("relay".to_string(), relay_command(layout, s, &spec)),
    ]);
    for i in 1..=nodes {
        m.insert(format!("agent-{i}"), spec.agent_argv(i));
    }
    m
}

/// The namespaces, the underlay bridge and each node's files (idempotent: `up` after
/// `down` finds them in place).
pub fn prepare(layout: &Layout, s: &Settings, nodes: usize) -> Result<(), LocalError> {
    let spec = spec(layout, s, nodes);
    spec.validate().map_err(lab_error)?;
    skiff_lab::net::create(&spec).map_err(lab_error)?;
    for i in 1..=nodes {
        spec.write_node_files(i).map_err(lab_error)?;
    }
    Ok(())
}

/// Containers, processes, mounts, cgroups and namespaces of the lab.
pub fn remove(layout: &Layout, s: &Settings, nodes: usize, errors: &mut Vec<String>) {
    let spec = spec(layout, s, nodes);
    skiff_lab::sweep::all(&spec, errors);
    skiff_lab::net::delete(&spec, errors);
}

/// The server's kubeconfig with the relay's address: what the host's kubectl uses.
pub fn host_credentials(
    layout: &Layout,
    s: &Settings,
) -> Result<super::kubeconfig::Credentials, LocalError> {
    let path = layout.server_kubeconfig();
    let text = std::fs::read_to_string(&path).map_err(|e| LocalError::io(&path, e))?;
    let mut creds = super::kubeconfig::credentials(&path, &text)?;
    match creds.cluster.as_mapping_mut() {
        Some(m) => {
            m.insert(
                "server".into(),
                format!("https://127.0.0.1:{}", s.port).into(),
            );
        }
        None => {
            return Err(LocalError::Invalid(format!(
                "{}: the cluster entry is not a mapping",
                path.display()
            )))
        }
    }
    Ok(creds)
}

fn ready(n: &Node) -> bool {
    super::up::node_ready(n)
}

/// Waits for the server's kubeconfig, then for `nodes` Ready nodes through the relay.
pub async fn wait_ready(
    layout: &Layout,
    nodes: usize,
    timeout: Duration,
    write_kubeconfigs: impl Fn() -> Result<PathBuf, LocalError>,
) -> Result<(PathBuf, Vec<Node>), LocalError> {
    let deadline = Instant::now() + timeout;
    let timed_out = |what: &str| LocalError::Timeout {
        what: what.into(),
        secs: timeout.as_secs(),
        hint: format!("logs are in {}", layout.logs_dir().display()),
    };
    while !layout.server_kubeconfig().exists() {
        if Instant::now() > deadline {
            return Err(timed_out("the API server's first start"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let user_kc = write_kubeconfigs()?;
    let client = super::client(layout).await?;
    let api: Api<Node> = Api::all(client);
    loop {
        if let Ok(list) = api.list(&Default::default()).await {
            let ready: Vec<Node> = list.items.into_iter().filter(ready).collect();
            if ready.len() >= nodes {
                return Ok((user_kc, ready));
            }
        }
        if Instant::now() > deadline {
            return Err(timed_out(&format!("{nodes} nodes Ready")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn print_summary(layout: &Layout, s: &Settings, spec: &Spec, user_kc: &Path) {
    println!(
        "Skiff local cluster with {} nodes is up (state in {})",
        spec.nodes,
        layout.root.display()
    );
    println!(
        "  API server   https://127.0.0.1:{} (relayed to {} in netns {})",
        s.port,
        spec.server_url(),
        spec.underlay_netns()
    );
    for i in 1..=spec.nodes {
        println!(
            "  node         {} ({}), netns {}",
            spec.node_name(i),
            spec.node_ip(i),
            spec.node_netns(i)
        );
    }
    println!(
        "  reach nodes and pods with: ip netns exec {} <command>",
        spec.node_netns(1)
    );
    println!(
        "kubectl: the context \"skiff\" is now current in {}",
        user_kc.display()
    );
    println!(
        "  or: export KUBECONFIG={}",
        layout.admin_kubeconfig().display()
    );
}

/// `skiffadm status` of a lab: each process, the API through the relay, the Ready nodes.
/// Fails unless everything is up.
pub async fn status(layout: &Layout, s: &Settings, nodes: usize) -> Result<(), LocalError> {
    use super::supervisor::live_pid;
    println!(
        "Local cluster with {nodes} nodes in {}",
        layout.root.display()
    );
    let mut healthy = true;
    let mut line = |name: &str, pid: Option<i32>| {
        healthy &= pid.is_some();
        match pid {
            Some(p) => println!("  {name:<13} running (pid {p})"),
            None => println!("  {name:<13} stopped"),
        }
    };
    line(
        "supervisor",
        live_pid(&layout.supervisor_pid(), "local-supervise"),
    );
    line(
        "skiff-server",
        live_pid(&layout.child_pid("server"), "skiff-server"),
    );
    line(
        "api relay",
        live_pid(&layout.child_pid("relay"), "local-relay"),
    );
    for i in 1..=nodes {
        line(
            &format!("agent-{i}"),
            live_pid(&layout.child_pid(&format!("agent-{i}")), "skiff-agent"),
        );
    }
    let api = format!("https://127.0.0.1:{}", s.port);
    let listed = match super::client(layout).await {
        Ok(c) => {
            let nodes_api: Api<Node> = Api::all(c);
            tokio::time::timeout(Duration::from_secs(5), nodes_api.list(&Default::default()))
                .await
                .map_err(|_| "no answer within 5 s".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        }
        Err(e) => Err(e.to_string()),
    };
    match listed {
        Ok(list) => {
            println!("  {:<13} reachable at {api}", "API");
            let ready = list.items.iter().filter(|n| ready(n)).count();
            println!("  {:<13} {ready} of {nodes} Ready", "nodes");
            healthy &= ready >= nodes;
        }
        Err(e) => {
            println!("  {:<13} unreachable at {api}: {e}", "API");
            healthy = false;
        }
    }
    if healthy {
        Ok(())
    } else {
        Err(LocalError::NotRunning(layout.root.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            port: 7443,
            node_name: "skiff-node-1".into(),
            node_ip: "10.250.0.11".into(),
            bridge: skiff_lab::spec::BRIDGE.into(),
            cluster_cidr: "10.244.0.0/16".into(),
            bin_dir: "/opt/bin".into(),
            cgroup_root: None,
            masq_chain: super::super::up::MASQ_CHAIN.into(),
            nodes: Some(3),
            cluster_dns_bind: None,
        }
    }

    #[test]
    fn supervises_server_relay_and_one_agent_per_node() {
        let l = Layout::new(Path::new("/r")).unwrap();
        let c = commands(&l, &settings(), 3);
        let names: Vec<&str> = c.keys().map(String::as_str).collect();
        assert_eq!(names, ["agent-1", "agent-2", "agent-3", "relay", "server"]);
        let relay: Vec<String> = c["relay"]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(relay[1], "local-relay");
        assert!(relay.contains(&"127.0.0.1:7443".to_string()));
        assert!(relay.contains(&"/run/netns/skiff-lab".to_string()));
        assert!(relay.contains(&"127.0.0.1:6443".to_string()));
        let agent: Vec<String> = c["agent-2"]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(agent[1], "--net=/run/netns/skiff-node-2");
        assert!(agent.contains(&"/r/nodes/skiff-node-2".to_string()));
    }

    #[test]
    fn host_kubeconfig_points_at_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path()).unwrap();
        std::fs::create_dir_all(l.server_dir()).unwrap();
        std::fs::write(
            l.server_kubeconfig(),
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.250.0.1:6443\n    certificate-authority-data: Q0E=\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        )
        .unwrap();
        let creds = host_credentials(&l, &settings()).unwrap();
        assert_eq!(creds.cluster["server"], "https://127.0.0.1:7443");
        assert_eq!(creds.cluster["certificate-authority-data"], "Q0E=");
    }
}
