//! `skiffadm init`: make this machine the control plane (and, unless told otherwise, a node).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, PostParams};

use super::{
    agent_args, apply, check_cidr, check_node_name, common_actions, env_line, unit_action, Action,
    Network, NodeError, Paths, System, AGENT_UNIT, AGENT_UNIT_TEXT, CONTROL_PLANE_TAINT,
    DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR, SERVER_UNIT, SERVER_UNIT_TEXT,
};
use crate::token;

#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// Address (`host:port`) nodes and clients use to reach the API server; default
    /// `<advertise address>:6443`.
    #[arg(long)]
    pub control_plane_endpoint: Option<String>,
    /// This machine's address for the cluster (default: that of the default route).
    #[arg(long)]
    pub apiserver_advertise_address: Option<IpAddr>,
    /// The pod network; each node gets a /24 of it.
    #[arg(long, default_value = DEFAULT_POD_CIDR)]
    pub pod_network_cidr: String,
    /// The ClusterIP range.
    #[arg(long, default_value = DEFAULT_SERVICE_CIDR)]
    pub service_cidr: String,
    /// Port of this node's cluster DNS on its address (UDP and TCP); 0 turns it off. Pods
    /// always ask kube-dns' ClusterIP on 53.
    #[arg(long, default_value_t = super::DEFAULT_DNS_PORT)]
    pub cluster_dns_port: u16,
    /// Keep the cluster state in etcd (`http(s)://host:port`, comma-separated) instead of the
    /// embedded store.
    #[arg(long, value_delimiter = ',')]
    pub datastore_endpoint: Vec<String>,
    /// CA that signed etcd's serving certificate, for `https://` datastore endpoints; copied
    /// to /etc/skiff/pki/etcd/ca.crt (the server unit cannot read /root, /home or /tmp).
    #[arg(long, visible_alias = "datastore-cafile")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate the API server presents to etcd (copied to pki/etcd/client.crt).
    #[arg(long, visible_alias = "datastore-certfile")]
    pub etcd_certfile: Option<PathBuf>,
    /// Key of that client certificate (copied to pki/etcd/client.key, mode 0600).
    #[arg(long, visible_alias = "datastore-keyfile")]
    pub etcd_keyfile: Option<PathBuf>,
    /// Run only the control plane here, no node agent.
    #[arg(long)]
    pub control_plane_only: bool,
    /// Let ordinary pods run on this node (no control-plane taint).
    #[arg(long)]
    pub schedule_workloads: bool,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Checks whose errors are only reported (names as printed, or `all`).
    #[arg(long, value_delimiter = ',')]
    pub ignore_preflight_errors: Vec<String>,
    /// Seconds to wait for the API and the node to be ready.
    #[arg(long, default_value_t = 600)]
    pub wait: u64,
}

/// What init sets up, resolved from the flags and the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConfig {
    pub node: String,
    pub advertise: IpAddr,
    /// `host:port` written into kubeconfigs and the join command.
    pub endpoint: String,
    pub network: Network,
    pub datastore: Vec<String>,
    /// The etcd CA, client certificate and key, read from the files given.
    pub etcd_tls: Option<EtcdTlsFiles>,
    pub control_plane_only: bool,
    pub schedule_workloads: bool,
}

/// PEM contents of the files the API server uses to reach etcd over TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTlsFiles {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

// A private key never goes into a log line through `{:?}`.
impl std::fmt::Debug for EtcdTlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTlsFiles").finish_non_exhaustive()
    }
}

/// Reads the etcd TLS files: all three or none, only with `https://` endpoints (which need
/// them, as the store authenticates with a client certificate), each a PEM file.
pub fn etcd_tls(args: &InitArgs) -> Result<Option<EtcdTlsFiles>, NodeError> {
    let https = args
        .datastore_endpoint
        .iter()
        .any(|e| e.starts_with("https://"));
    let files = [
        ("--etcd-cafile", &args.etcd_cafile),
        ("--etcd-certfile", &args.etcd_certfile),
        ("--etcd-keyfile", &args.etcd_keyfile),
    ];
    let missing: Vec<&str> = files
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(f, _)| *f)
        .collect();
    if missing.len() == files.len() {
        if https {
            return Err(NodeError::Refused(
                "https:// datastore endpoints need --etcd-cafile, --etcd-certfile and --etcd-keyfile".into(),
            ));
        }
        return Ok(None);
    }
    if !missing.is_empty() {
        return Err(NodeError::Refused(format!(
            "etcd TLS needs all three of --etcd-cafile, --etcd-certfile and --etcd-keyfile; missing {}",
            missing.join(", ")
        )));
    }
    if !https {
        return Err(NodeError::Refused(
            "--etcd-cafile/--etcd-certfile/--etcd-keyfile were given but no --datastore-endpoint is https://".into(),
        ));
    }
    let read = |(flag, path): (&str, &Option<PathBuf>)| -> Result<String, NodeError> {
        let path = path.as_ref().expect("checked above");
        let text = std::fs::read_to_string(path).map_err(|e| {
            NodeError::Refused(format!("{flag} {}: cannot read it: {e}", path.display()))
        })?;
        if !text.contains("-----BEGIN ") {
            return Err(NodeError::Refused(format!(
                "{flag} {}: not a PEM file",
                path.display()
            )));
        }
        Ok(text)
    };
    Ok(Some(EtcdTlsFiles {
        ca: read(files[0])?,
        cert: read(files[1])?,
        key: read(files[2])?,
    }))
}

/// Splits `host:port` (`[v6]:port` too), checking the port.
pub fn split_endpoint(flag: &str, endpoint: &str) -> Result<(String, u16), NodeError> {
    let bad = |why: &str| {
        NodeError::Refused(format!(
            "{flag} {endpoint:?} is not host:port ({why}), e.g. 10.0.0.10:6443"
        ))
    };
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad("empty host or port 0"));
    }
    Ok((host.to_string(), port))
}

pub fn resolve(
    args: &InitArgs,
    hostname: &str,
    default_ip: impl FnOnce() -> Result<IpAddr, NodeError>,
) -> Result<InitConfig, NodeError> {
    check_cidr("--pod-network-cidr", &args.pod_network_cidr)?;
    check_cidr("--service-cidr", &args.service_cidr)?;
    let node = args.node_name.clone().unwrap_or_else(|| hostname.into());
    check_node_name(&node)?;
    for e in &args.datastore_endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(NodeError::Refused(format!(
                "--datastore-endpoint {e:?}: expected an etcd URL like https://10.0.0.5:2379"
            )));
        }
    }
    if args.control_plane_only && args.schedule_workloads {
        return Err(NodeError::Refused(
            "--schedule-workloads needs a node here; it contradicts --control-plane-only".into(),
        ));
    }
    let advertise = match args.apiserver_advertise_address {
        Some(ip) => ip,
        None => default_ip()?,
    };
    let endpoint = match &args.control_plane_endpoint {
        Some(e) => {
            split_endpoint("--control-plane-endpoint", e)?;
            e.clone()
        }
        None => match advertise {
            IpAddr::V6(v6) => format!("[{v6}]:6443"),
            v4 => format!("{v4}:6443"),
        },
    };
    Ok(InitConfig {
        node,
        advertise,
        endpoint,
        network: Network {
            pod_cidr: args.pod_network_cidr.clone(),
            service_cidr: args.service_cidr.clone(),
            dns_port: args.cluster_dns_port,
        },
        datastore: args.datastore_endpoint.clone(),
        etcd_tls: etcd_tls(args)?,
        control_plane_only: args.control_plane_only,
        schedule_workloads: args.schedule_workloads,
    })
}

pub fn server_args(paths: &Paths, cfg: &InitConfig) -> Result<Vec<String>, NodeError> {
    let (host, port) = split_endpoint("--control-plane-endpoint", &cfg.endpoint)?;
    let mut a = vec![
        "--pki-dir".into(),
        paths.pki_dir().display().to_string(),
        "--advertise-address".into(),
        cfg.advertise.to_string(),
        "--secure-port".into(),
        port.to_string(),
        "--service-cluster-ip-range".into(),
        cfg.network.service_cidr.clone(),
        "--cluster-cidr".into(),
        cfg.network.pod_cidr.clone(),
    ];
    if host != cfg.advertise.to_string() {
        a.extend(["--tls-san".into(), host]);
    }
    if !cfg.datastore.is_empty() {
        a.extend(["--datastore-endpoint".into(), cfg.datastore.join(",")]);
    }
    if cfg.etcd_tls.is_some() {
        let dir = paths.pki_dir().join("etcd");
        for (flag, file) in [
            ("--etcd-cafile", "ca.crt"),
            ("--etcd-certfile", "client.crt"),
            ("--etcd-keyfile", "client.key"),
        ] {
            a.extend([flag.into(), dir.join(file).display().to_string()]);
        }
    }
    Ok(a)
}

/// Everything init writes before starting a unit, in order.
pub fn plan(
    paths: &Paths,
    cfg: &InitConfig,
    source_bin_dir: &Path,
) -> Result<Vec<Action>, NodeError> {
    let mut out = common_actions(paths, source_bin_dir);
    out.push(Action::Dir(paths.pki_dir()));
    if let Some(tls) = &cfg.etcd_tls {
        let dir = paths.pki_dir().join("etcd");
        out.push(Action::Dir(dir.clone()));
        for (file, contents, mode) in [
            ("ca.crt", &tls.ca, 0o644),
            ("client.crt", &tls.cert, 0o644),
            ("client.key", &tls.key, 0o600),
        ] {
            out.push(Action::File {
                path: dir.join(file),
                contents: contents.clone(),
                mode,
            });
        }
    }
    // The server unit may write only here (ProtectSystem=strict), and the directory must
    // exist for systemd to set that up.
    out.push(Action::Dir(paths.server_data_dir()));
    out.push(Action::File {
        path: paths.server_env(),
        contents: env_line("SKIFF_SERVER_ARGS", &server_args(paths, cfg)?)?,
        mode: 0o644,
    });
    out.push(unit_action(paths, SERVER_UNIT, SERVER_UNIT_TEXT));
    if !cfg.control_plane_only {
        let args = agent_args(paths, &cfg.node, &cfg.advertise.to_string(), &cfg.network)?;
        out.push(Action::File {
            path: paths.agent_env(),
            contents: env_line("SKIFF_AGENT_ARGS", &args)?,
            mode: 0o644,
        });
        out.push(unit_action(paths, AGENT_UNIT, AGENT_UNIT_TEXT));
    }
    out.push(Action::Systemctl(vec!["daemon-reload".into()]));
    Ok(out)
}

/// The line a worker runs; network flags only when they differ from the defaults, which is
/// what join assumes.
pub fn join_command(endpoint: &str, token: &str, ca_hash: &str, net: &Network) -> String {
    let mut c = format!(
        "skiffadm join {endpoint} --token {token} --discovery-token-ca-cert-hash {ca_hash}"
    );
    if net.pod_cidr != DEFAULT_POD_CIDR {
        c += &format!(" --pod-network-cidr {}", net.pod_cidr);
    }
    if net.service_cidr != DEFAULT_SERVICE_CIDR {
        c += &format!(" --service-cidr {}", net.service_cidr);
    }
    if net.dns_port != super::DEFAULT_DNS_PORT {
        c += &format!(" --cluster-dns-port {}", net.dns_port);
    }
    c
}

/// Why this machine already belongs to a cluster, if it does.
pub fn already_set_up(sys: &dyn System, paths: &Paths) -> Option<String> {
    if sys.exists(&paths.server_env()) || sys.exists(&paths.admin_kubeconfig()) {
        return Some(format!(
            "this machine is already initialised as a control plane ({} exists); `skiffadm token create --print-join-command` prints a join command, `skiffadm reset` undoes init",
            paths.server_env().display()
        ));
    }
    if sys.exists(&paths.agent_env()) {
        return Some(format!(
            "this machine already is a node of a cluster ({} exists); run `skiffadm reset` first",
            paths.agent_env().display()
        ));
    }
    None
}

/// The refusal on a machine that systemd does not run.
pub fn no_systemd_message() -> String {
    let pid1 = std::fs::read_to_string("/proc/1/comm")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!("systemd is not running this machine (PID 1 is {pid1:?}): init and join install systemd units. For a single-node cluster without systemd, use `skiffadm up`. Nothing was changed.")
}

pub fn run_preflight(
    ignore: &[String],
    ports: Vec<(u16, bool)>,
    dns: Option<std::net::SocketAddr>,
) -> Result<(), NodeError> {
    let mut host = crate::preflight::Host::real();
    host.ports = ports;
    host.dns = dns;
    let findings = crate::preflight::run(&host, None);
    let blocking = crate::preflight::blocking(&findings, ignore);
    for f in &findings {
        let level = if blocking.contains(&f) {
            "ERROR"
        } else {
            "WARNING"
        };
        println!("[preflight] {level} {}: {}", f.check, f.message);
    }
    if !blocking.is_empty() {
        return Err(NodeError::Refused(format!(
            "{} preflight check(s) failed; fix them or pass --ignore-preflight-errors=<check>,… (or all). Nothing was changed.",
            blocking.len()
        )));
    }
    println!("[preflight] checks passed");
    Ok(())
}

pub fn require_root() -> Result<(), NodeError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(NodeError::Refused(
            "this installs systemd units and changes the network: run it as root. Nothing was changed.".into(),
        ))
    }
}

/// The directory skiffadm runs from, where the other binaries are installed from.
pub fn own_bin_dir() -> Result<std::path::PathBuf, NodeError> {
    let exe = std::env::current_exe().map_err(|e| NodeError::io(Path::new("/proc/self/exe"), e))?;
    Ok(exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| "/".into()))
}

pub async fn wait_readyz(client: &kube::Client, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let req = http::Request::get("/readyz").body(Vec::new())?;
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) if Instant::now() > deadline => {
                anyhow::bail!("/readyz still says {body:?} after {timeout:?}; see `journalctl -u {SERVER_UNIT}`")
            }
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!("/readyz did not answer within {timeout:?} ({e}); see `journalctl -u {SERVER_UNIT}`")
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn wait_node_ready(
    client: &kube::Client,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(n)) = api.get_opt(node).await {
            if node_ready(&n) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("node {node} is not Ready after {timeout:?}; see `journalctl -u {AGENT_UNIT}` and `kubectl describe node {node}`");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Adds the control-plane label and (unless workloads may run here) its NoSchedule taint to
/// a Node, as kubeadm's mark-control-plane phase does, keeping its other taints. Returns
/// whether anything changed.
pub fn mark_control_plane(node: &mut Node, schedule_workloads: bool) -> bool {
    let mut changed = false;
    let labels = node.metadata.labels.get_or_insert_with(Default::default);
    if !labels.contains_key(CONTROL_PLANE_TAINT) {
        labels.insert(CONTROL_PLANE_TAINT.into(), String::new());
        changed = true;
    }
    if !schedule_workloads {
        let taints = node
            .spec
            .get_or_insert_with(Default::default)
            .taints
            .get_or_insert_with(Vec::new);
        if !taints
            .iter()
            .any(|t| t.key == CONTROL_PLANE_TAINT && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: CONTROL_PLANE_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
            changed = true;
        }
    }
    changed
}

/// Marks the node with a read-modify-write that carries the resourceVersion, so that a
/// concurrent writer of the taint list (the node lifecycle controller while the node becomes
/// Ready) makes it retry instead of one of the two losing its taint.
pub async fn mark_node(
    client: &kube::Client,
    node: &str,
    schedule_workloads: bool,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for _ in 0..20 {
        let mut n = api.get(node).await?;
        if !mark_control_plane(&mut n, schedule_workloads) {
            return Ok(());
        }
        match api.replace(node, &PostParams::default(), &n).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("node {node}: the control-plane taint did not stick after 20 attempts")
}

/// `kube-system/skiff-agent-config`: the configuration every node's agent must share.
pub async fn advertise_agent_config(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use skiff_agent::preflight::{
        AGENT_CONFIG_DRIVER_KEY, AGENT_CONFIG_NAME, AGENT_CONFIG_NAMESPACE,
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), AGENT_CONFIG_NAMESPACE);
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": AGENT_CONFIG_NAME, "namespace": AGENT_CONFIG_NAMESPACE},
        "data": {AGENT_CONFIG_DRIVER_KEY: "systemd"},
    });
    api.patch(
        AGENT_CONFIG_NAME,
        &kube::api::PatchParams::apply("skiffadm").force(),
        &kube::api::Patch::Apply(&patch),
    )
    .await
    .map_err(|e| anyhow::anyhow!("writing {AGENT_CONFIG_NAMESPACE}/{AGENT_CONFIG_NAME}: {e}"))?;
    Ok(())
}

pub async fn run(args: InitArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let paths = Paths::standard();
    let mut sys = super::RealSystem;
    if !sys.systemd_is_init() {
        return Err(NodeError::Refused(no_systemd_message()).into());
    }
    if let Some(why) = already_set_up(&sys, &paths) {
        if sys.exists(&paths.server_env()) {
            println!("[init] {why}");
            return Ok(());
        }
        return Err(NodeError::Refused(why).into());
    }
    require_root()?;
    let cfg = resolve(&args, &super::hostname(), super::default_address)?;
    let ports = if cfg.control_plane_only {
        vec![(split_endpoint("", &cfg.endpoint)?.1, false)]
    } else {
        vec![
            (split_endpoint("", &cfg.endpoint)?.1, false),
            (10250, false),
            (8472, true),
        ]
    };
    let dns = (!cfg.control_plane_only && cfg.network.dns_port != 0)
        .then(|| std::net::SocketAddr::new(cfg.advertise, cfg.network.dns_port));
    run_preflight(&args.ignore_preflight_errors, ports, dns)?;
    let source = own_bin_dir()?;
    let missing = super::missing_binaries(&source);
    if !missing.is_empty() {
        return Err(NodeError::Refused(format!(
            "{} not found next to skiffadm in {}: they are installed from there. Nothing was changed.",
            missing.join(", "),
            source.display()
        ))
        .into());
    }
    println!(
        "[init] control plane {} at {}, node {}",
        cfg.advertise, cfg.endpoint, cfg.node
    );
    apply(&mut sys, &plan(&paths, &cfg, &source)?)?;
    let hint = "fix the cause, then `skiffadm reset` and init again";
    println!("[init] starting {SERVER_UNIT}");
    sys.systemctl(&["enable", "--now", SERVER_UNIT])
        .map_err(|e| anyhow::anyhow!("{e}; {hint}"))?;

    // The server made the PKI on its first start; the admin and node credentials come from
    // the same CA.
    let pki = skiff_server::pki::ClusterPki::load_or_create(&paths.pki_dir(), &[], &[])?;
    let server_url = format!("https://{}", cfg.endpoint);
    let admin = pki.admin()?;
    sys.write_file(
        &paths.admin_kubeconfig(),
        skiff_server::pki::kubeconfig(&server_url, &pki.ca.cert_pem, "kubernetes-admin", &admin)
            .as_bytes(),
        0o600,
    )?;
    let (client, kc) = crate::client(&paths.admin_kubeconfig()).await?;
    wait_readyz(&client, Duration::from_secs(args.wait)).await?;
    println!(
        "[init] API server ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Every agent that joins checks its cgroup driver against this (init needs systemd, so
    // the cluster's driver is systemd), as kubeadm publishes kube-system/kubelet-config.
    advertise_agent_config(&client).await?;

    if !cfg.control_plane_only {
        let node_cert = skiff_server::pki::issue_client_cert(
            &pki.ca,
            &pki.dir,
            &format!("system:node:{}", cfg.node),
            &["system:nodes"],
        )?;
        let cert_dir = paths.agent_cert_dir();
        let cert = cert_dir.join(skiff_agent::bootstrap::CERT_FILE);
        let key = cert_dir.join(skiff_agent::bootstrap::KEY_FILE);
        sys.write_file(&key, node_cert.key_pem.as_bytes(), 0o600)?;
        sys.write_file(&cert, node_cert.cert_pem.as_bytes(), 0o600)?;
        sys.write_file(
            &paths.agent_kubeconfig(),
            skiff_agent::bootstrap::node_kubeconfig(
                &server_url,
                pki.ca.cert_pem.as_bytes(),
                &cert,
                &key,
            )
            .as_bytes(),
            0o600,
        )?;
        println!("[init] starting {AGENT_UNIT}");
        sys.systemctl(&["enable", "--now", AGENT_UNIT])
            .map_err(|e| anyhow::anyhow!("{e}; {hint}"))?;
        wait_node_ready(&client, &cfg.node, Duration::from_secs(args.wait)).await?;
        // After Ready: the lifecycle controller writes the taint list while a node is not
        // ready yet; from then on it leaves taints it does not own alone.
        mark_node(&client, &cfg.node, cfg.schedule_workloads).await?;
        println!(
            "[init] node {} Ready {:.1} s after init started{}",
            cfg.node,
            started.elapsed().as_secs_f64(),
            if cfg.schedule_workloads {
                ""
            } else {
                " (tainted node-role.kubernetes.io/control-plane:NoSchedule)"
            }
        );
    }

    let tok = token::generate();
    token::create(&client, &tok, 24 * 3600, "made by skiffadm init").await?;
    let (_, ca) = token::kubeconfig_ca(&kc)?;
    let hash = token::ca_cert_hash(&ca)?;
    println!();
    println!("Your Skiff control plane is up.");
    println!();
    println!("To use kubectl as a regular user:");
    println!("  mkdir -p $HOME/.kube");
    println!(
        "  sudo cp -i {} $HOME/.kube/config",
        paths.admin_kubeconfig().display()
    );
    println!("  sudo chown $(id -u):$(id -g) $HOME/.kube/config");
    println!(
        "As root: export KUBECONFIG={}",
        paths.admin_kubeconfig().display()
    );
    println!();
    println!("Join workers by running this on each as root (the token lives 24 h):");
    println!();
    println!(
        "  {}",
        join_command(&cfg.endpoint, &tok, &hash, &cfg.network)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::system::fake::FakeSystem;

    fn args() -> InitArgs {
        InitArgs {
            control_plane_endpoint: None,
            apiserver_advertise_address: None,
            pod_network_cidr: DEFAULT_POD_CIDR.into(),
            service_cidr: DEFAULT_SERVICE_CIDR.into(),
            cluster_dns_port: super::super::DEFAULT_DNS_PORT,
            datastore_endpoint: vec![],
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            control_plane_only: false,
            schedule_workloads: false,
            node_name: None,
            ignore_preflight_errors: vec![],
            wait: 600,
        }
    }

    fn ip() -> Result<IpAddr, NodeError> {
        Ok("10.88.0.11".parse().unwrap())
    }

    #[test]
    fn defaults_come_from_the_machine() {
        let cfg = resolve(&args(), "vm1", ip).unwrap();
        assert_eq!(cfg.node, "vm1");
        assert_eq!(cfg.endpoint, "10.88.0.11:6443");
        assert_eq!(cfg.network.pod_cidr, DEFAULT_POD_CIDR);
        let mut a = args();
        a.control_plane_endpoint = Some("cp.lab:7443".into());
        a.node_name = Some("master".into());
        let cfg = resolve(&a, "vm1", ip).unwrap();
        assert_eq!(
            (cfg.node.as_str(), cfg.endpoint.as_str()),
            ("master", "cp.lab:7443")
        );
    }

    #[test]
    fn bad_flags_are_refused_before_anything_is_looked_up() {
        let never = || -> Result<IpAddr, NodeError> { panic!("not reached") };
        for (change, word) in [
            (
                Box::new(|a: &mut InitArgs| a.pod_network_cidr = "10.0.0.0".into())
                    as Box<dyn Fn(&mut InitArgs)>,
                "--pod-network-cidr",
            ),
            (
                Box::new(|a: &mut InitArgs| a.service_cidr = "x".into()),
                "--service-cidr",
            ),
            (
                Box::new(|a: &mut InitArgs| a.node_name = Some("Bad_Name".into())),
                "node name",
            ),
            (
                Box::new(|a: &mut InitArgs| a.datastore_endpoint = vec!["10.0.0.5:2379".into()]),
                "--datastore-endpoint",
            ),
            (
                Box::new(|a: &mut InitArgs| {
                    a.control_plane_only = true;
                    a.schedule_workloads = true
                }),
                "--schedule-workloads",
            ),
        ] {
            let mut a = args();
            change(&mut a);
            let e = resolve(&a, "vm1", never).unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
        let mut a = args();
        a.control_plane_endpoint = Some("cp.lab".into());
        let e = resolve(&a, "vm1", ip).unwrap_err().to_string();
        assert!(
            e.contains("--control-plane-endpoint") && e.contains("host:port"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_split() {
        assert_eq!(
            split_endpoint("f", "10.0.0.1:6443").unwrap(),
            ("10.0.0.1".into(), 6443)
        );
        assert_eq!(
            split_endpoint("f", "[fd00::1]:6443").unwrap(),
            ("fd00::1".into(), 6443)
        );
        assert!(split_endpoint("f", "10.0.0.1:0").is_err());
        assert!(split_endpoint("f", "10.0.0.1:http").is_err());
        assert!(split_endpoint("f", ":6443").is_err());
    }

    #[test]
    fn server_flags_name_the_endpoint_and_the_store() {
        let paths = Paths::under(Path::new("/r"));
        let mut a = args();
        a.control_plane_endpoint = Some("cp.lab:7443".into());
        a.datastore_endpoint = vec![
            "https://10.0.0.5:2379".into(),
            "https://10.0.0.6:2379".into(),
        ];
        let e = resolve(&a, "vm1", ip).unwrap_err().to_string();
        assert!(e.contains("need --etcd-cafile"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let pem = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("-----BEGIN {name}-----\n")).unwrap();
            Some(p)
        };
        a.etcd_cafile = pem("ca");
        a.etcd_certfile = pem("cert");
        let e = resolve(&a, "vm1", ip).unwrap_err().to_string();
        assert!(e.contains("missing --etcd-keyfile"), "{e}");
        a.etcd_keyfile = Some(dir.path().join("absent"));
        let e = resolve(&a, "vm1", ip).unwrap_err().to_string();
        assert!(e.contains("--etcd-keyfile") && e.contains("absent"), "{e}");
        a.etcd_keyfile = pem("key");
        let cfg = resolve(&a, "vm1", ip).unwrap();
        assert_eq!(cfg.etcd_tls.as_ref().unwrap().key, "-----BEGIN key-----\n");
        let s = server_args(&paths, &cfg).unwrap().join(" ");
        for flag in [
            "--etcd-cafile /r/etc/skiff/pki/etcd/ca.crt",
            "--etcd-certfile /r/etc/skiff/pki/etcd/client.crt",
            "--etcd-keyfile /r/etc/skiff/pki/etcd/client.key",
        ] {
            assert!(s.contains(flag), "{s}");
        }
        let plan = plan(&paths, &cfg, Path::new("/src")).unwrap();
        assert!(plan
            .iter()
            .any(|a| matches!(a, Action::File { path, mode: 0o600, .. }
            if path.ends_with("pki/etcd/client.key"))));
        let mut plain_etcd = args();
        plain_etcd.datastore_endpoint = vec!["http://10.0.0.5:2379".into()];
        plain_etcd.etcd_cafile = a.etcd_cafile.clone();
        plain_etcd.etcd_certfile = a.etcd_certfile.clone();
        plain_etcd.etcd_keyfile = a.etcd_keyfile.clone();
        let e = resolve(&plain_etcd, "vm1", ip).unwrap_err().to_string();
        assert!(e.contains("no --datastore-endpoint is https://"), "{e}");
        assert!(s.contains("--pki-dir /r/etc/skiff/pki"), "{s}");
        assert!(s.contains("--advertise-address 10.88.0.11"), "{s}");
        assert!(s.contains("--secure-port 7443"), "{s}");
        assert!(s.contains("--tls-san cp.lab"), "{s}");
        assert!(
            s.contains("--datastore-endpoint https://10.0.0.5:2379,https://10.0.0.6:2379"),
            "{s}"
        );
        let plain = resolve(&args(), "vm1", ip).unwrap();
        assert!(!server_args(&paths, &plain)
            .unwrap()
            .join(" ")
            .contains("--tls-san"));
    }

    #[test]
    fn plan_writes_config_then_reloads_systemd() {
        let paths = Paths::under(Path::new("/r"));
        let cfg = resolve(&args(), "vm1", ip).unwrap();
        let mut sys = FakeSystem::default();
        apply(
            &mut sys,
            &plan(&paths, &cfg, Path::new("/opt/skiff/bin")).unwrap(),
        )
        .unwrap();
        let server_env = &sys.files[&paths.server_env()];
        assert!(
            server_env.starts_with("SKIFF_SERVER_ARGS=\"--pki-dir /r/etc/skiff/pki "),
            "{server_env}"
        );
        let agent_env = &sys.files[&paths.agent_env()];
        assert!(
            agent_env.contains("--node-name vm1 --node-ip 10.88.0.11"),
            "{agent_env}"
        );
        assert!(agent_env.contains("--overlay vxlan"), "{agent_env}");
        assert!(sys.files.contains_key(&paths.unit_dir.join(SERVER_UNIT)));
        assert!(sys.files.contains_key(&paths.unit_dir.join(AGENT_UNIT)));
        assert!(sys
            .files
            .contains_key(&paths.cni_conf_dir().join(super::super::CONFLIST)));
        assert!(sys.log.contains(
            &"install /opt/skiff/bin/skiff-agent /r/usr/local/bin/skiff-agent".to_string()
        ));
        assert_eq!(sys.log.last().unwrap(), "systemctl daemon-reload");
        // Units are started by run(), after everything is in place; the plan starts none.
        assert!(!sys.log.iter().any(|l| l.contains("--now")));

        let mut cp_only = cfg.clone();
        cp_only.control_plane_only = true;
        let actions = plan(&paths, &cp_only, Path::new("/opt/skiff/bin")).unwrap();
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::File { path, .. } if *path == paths.agent_env())));
    }

    #[test]
    fn second_init_is_recognised() {
        let paths = Paths::under(Path::new("/r"));
        let mut sys = FakeSystem::default();
        assert_eq!(already_set_up(&sys, &paths), None);
        sys.files.insert(paths.agent_env(), String::new());
        assert!(already_set_up(&sys, &paths)
            .unwrap()
            .contains("already is a node"));
        sys.files.insert(paths.server_env(), String::new());
        assert!(already_set_up(&sys, &paths)
            .unwrap()
            .contains("already initialised"));
    }

    #[test]
    fn join_command_carries_non_default_networks_only() {
        let net = Network {
            pod_cidr: DEFAULT_POD_CIDR.into(),
            service_cidr: DEFAULT_SERVICE_CIDR.into(),
            dns_port: super::super::DEFAULT_DNS_PORT,
        };
        assert_eq!(
            join_command("10.88.0.11:6443", "abcdef.0123456789abcdef", "sha256:00", &net),
            "skiffadm join 10.88.0.11:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00"
        );
        let net = Network {
            pod_cidr: "10.10.0.0/16".into(),
            service_cidr: DEFAULT_SERVICE_CIDR.into(),
            dns_port: super::super::DEFAULT_DNS_PORT,
        };
        assert!(join_command("h:1", "t", "h", &net).ends_with(" --pod-network-cidr 10.10.0.0/16"));
        let net = Network {
            pod_cidr: DEFAULT_POD_CIDR.into(),
            service_cidr: DEFAULT_SERVICE_CIDR.into(),
            dns_port: 5353,
        };
        assert!(join_command("h:1", "t", "h", &net).ends_with(" --cluster-dns-port 5353"));
    }

    #[test]
    fn control_plane_taint_unless_workloads_are_wanted() {
        let mut n = Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                taints: Some(vec![Taint {
                    key: "node.kubernetes.io/not-ready".into(),
                    effect: "NoExecute".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(mark_control_plane(&mut n, false));
        let taints = n.spec.as_ref().unwrap().taints.clone().unwrap();
        assert_eq!(taints.len(), 2, "{taints:?}");
        assert_eq!(taints[1].key, CONTROL_PLANE_TAINT);
        assert_eq!(taints[1].effect, "NoSchedule");
        assert_eq!(n.metadata.labels.as_ref().unwrap()[CONTROL_PLANE_TAINT], "");
        // Marking twice changes nothing.
        assert!(!mark_control_plane(&mut n, false));

        let mut w = Node::default();
        assert!(mark_control_plane(&mut w, true));
        assert!(w.spec.and_then(|s| s.taints).unwrap_or_default().is_empty());
    }
}
