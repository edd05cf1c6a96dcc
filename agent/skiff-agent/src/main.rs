use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use skiff_agent::{node, preflight};

/// Skiff's node agent.
#[derive(Parser, Debug)]
#[command(name = "skiff-agent", version)]
struct Args {
    /// Credentials and address of the API server; made by TLS bootstrap if it is missing
    /// and --bootstrap-kubeconfig is given. Without it the agent runs static pods only
    /// (--pod-manifest-path), with no node API, DNS or service proxy.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Directory of static Pod manifests (YAML or JSON), run with or without an API server.
    #[arg(long, default_value = "/etc/skiff/manifests")]
    pod_manifest_path: PathBuf,
    /// How often the manifest directory is read again: `20s`, `500ms`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    file_check_frequency: std::time::Duration,
    /// Bootstrap-token credentials used to obtain this node's client certificate.
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// Where the bootstrapped client key and certificate are kept.
    #[arg(long, default_value = "/var/lib/skiff/agent/pki")]
    cert_dir: PathBuf,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The address other nodes and the control plane reach this node at.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: String,
    /// State of this agent; several agents on one host each need their own.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    root_dir: PathBuf,
    /// Refuse to start while swap is on, as kubelet does.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fail_swap_on: bool,
    /// Run on a cgroup v2 hierarchy that lacks cpu/memory/pids controllers (limits not enforced).
    #[arg(long)]
    allow_missing_cgroup_controllers: bool,
    /// Extra node labels, `key=value,…`.
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Reserved for the system: `cpu=500m,memory=1Gi`.
    #[arg(long, default_value = "")]
    system_reserved: String,
    /// The container runtime shim (default: `skiff-shim` next to this binary).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// cgroup v2 directory under which containers get their cgroups (cgroupfs driver;
    /// without it pods run in the agent's cgroup).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// `systemd` or `cgroupfs` (default: systemd when it runs the host).
    #[arg(long)]
    cgroup_driver: Option<skiff_agent::cgroups::Driver>,
    /// pids.max of every pod's cgroup; 0 or less: no limit.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pod_max_pids: i64,
    /// CNI network configuration; without a configuration pods only get loopback.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Where CNI plugin binaries are looked up.
    #[arg(long, value_delimiter = ',', default_value = "/usr/libexec/skiff/cni")]
    cni_bin_dir: Vec<PathBuf>,
    /// Container logs (CRI format), `<dir>/<ns>_<pod>_<uid>/<container>/0.log`.
    #[arg(long, default_value = "/var/log/pods")]
    pod_logs_dir: PathBuf,
    /// The cluster DNS service address written into pods' resolv.conf.
    #[arg(long, default_value = "10.96.0.10")]
    cluster_dns: String,
    /// HTTPS port of the node API (logs, exec, port-forward), bound to `--node-ip`.
    #[arg(long, default_value_t = 10250)]
    node_api_port: u16,
    /// CA whose client certificates the node API accepts (default: the kubeconfig's CA).
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Serve cluster DNS on this address, UDP and TCP (`<node-ip>:53`, `0.0.0.0:53`); off when unset.
    #[arg(long)]
    cluster_dns_bind: Option<std::net::SocketAddr>,
    /// The address announced as this node's kube-dns endpoint (default: the bound address, or
    /// --node-ip when bound to a wildcard; loopback ones only when given here).
    #[arg(long)]
    cluster_dns_advertise: Option<std::net::IpAddr>,
    /// Resolvers for names outside the cluster, `IP[:port]` (default: /etc/resolv.conf's).
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<String>,
    /// The cluster's DNS domain, served by the cluster DNS and searched by pods.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Registries reached over plain HTTP (loopback ones always are).
    #[arg(long, value_delimiter = ',')]
    insecure_registry: Vec<String>,
    /// Service proxy: `iptables` or `none` (default: iptables when --cni-conf-dir is set).
    #[arg(long)]
    proxy_mode: Option<String>,
    /// Pod network: service traffic from outside it is masqueraded; SKIFF_NETWORK in the
    /// subnet file.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// ClusterIP range; endpoints inside it are refused.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Subnet file for the skiff-overlay CNI plugin, written once the node has a podCIDR
    /// (default: the `subnetFile` of the configured skiff-overlay plugin, if there is one).
    #[arg(long)]
    subnet_file: Option<PathBuf>,
    /// MTU of pod interfaces written into the subnet file (default: the bridge's default).
    #[arg(long)]
    pod_mtu: Option<u32>,
    /// Pod network between nodes: `vxlan` (the skiff.1 overlay) or `none`.
    #[arg(long, default_value = "none")]
    overlay: String,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = match s.strip_suffix("ms") {
        Some(n) => (n, 1),
        None => (s.strip_suffix('s').unwrap_or(s), 1000),
    };
    match n.parse::<u64>() {
        Ok(n) if n > 0 => Ok(std::time::Duration::from_millis(n * unit)),
        _ => Err(format!(
            "{s:?} is not a positive duration like 20s or 500ms"
        )),
    }
}

fn parse_reserved(s: &str) -> anyhow::Result<(u64, u64)> {
    let (mut cpu, mut mem) = (0u64, 0u64);
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--system-reserved: {part:?} is not key=value"))?;
        match k {
            "cpu" => {
                cpu = match v.strip_suffix('m') {
                    Some(m) => m.parse()?,
                    None => (v.parse::<f64>()? * 1000.0) as u64,
                }
            }
            "memory" => {
                let (n, mult) = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)]
                    .iter()
                    .find_map(|(suffix, m)| v.strip_suffix(suffix).map(|n| (n, *m)))
                    .unwrap_or((v, 1));
                mem = n.parse::<u64>()? * mult;
            }
            other => anyhow::bail!("--system-reserved: unknown resource {other:?} (cpu, memory)"),
        }
    }
    Ok((cpu, mem))
}

fn main() -> anyhow::Result<()> {
    // `skiff-agent pause HOSTNAME` is a pod sandbox's holder process: it must stay
    // single-threaded, so it branches off before any runtime starts.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("pause") {
        skiff_agent::sandbox::pause_main(argv.get(2).map(String::as_str).unwrap_or("pod"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if argv.get(1).map(String::as_str) == Some("cgroups") {
        let out = skiff_agent::cgroups::cli::run(&argv[2..], runtime.handle().clone())?;
        println!("{out}");
        return Ok(());
    }
    if argv.get(1).map(String::as_str) == Some("images") {
        let args = <skiff_agent::images_cli::ImagesArgs as Parser>::parse_from(&argv[1..]);
        return Ok(runtime.block_on(skiff_agent::images_cli::run(args, &mut std::io::stdout()))?);
    }
    runtime.block_on(agent_main())
}

async fn agent_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let host = preflight::Host::default();
    if args.fail_swap_on {
        preflight::check_swap(&host)?;
    }
    let enforced = preflight::check_cgroups(&host, args.allow_missing_cgroup_controllers)?;
    if !enforced {
        tracing::warn!(
            "cgroup v2 controllers cpu/memory/pids are missing: pods run without enforced limits"
        );
    }
    let systemd_marker = std::path::Path::new(skiff_agent::cgroups::SYSTEMD_MARKER);
    let driver = skiff_agent::cgroups::select_driver(args.cgroup_driver, systemd_marker);
    preflight::check_cgroup_driver(driver, systemd_marker)?;
    // The pod manager creates pod cgroups through this (QoS parents, pod-level limits).
    let cgroup_manager = match (driver, &args.cgroup_root, &host.cgroup_root) {
        (skiff_agent::cgroups::Driver::Systemd, _, Some(mount)) => {
            Some(skiff_agent::cgroups::manager(
                driver,
                mount.clone(),
                mount.clone(),
                tokio::runtime::Handle::current(),
            ))
        }
        (skiff_agent::cgroups::Driver::Cgroupfs, Some(root), Some(mount)) => {
            Some(skiff_agent::cgroups::manager(
                driver,
                root.clone(),
                mount.clone(),
                tokio::runtime::Handle::current(),
            ))
        }
        _ => None,
    };
    match &cgroup_manager {
        Some(m) => {
            tracing::info!(driver = %m.driver(), root = %m.shim_root().display(), pod_max_pids = args.pod_max_pids, "cgroups")
        }
        None => {
            tracing::warn!(driver = %driver, "no cgroup root (--cgroup-root): pods run in the agent's cgroup")
        }
    }
    let enforced = enforced && cgroup_manager.is_some();
    std::fs::create_dir_all(&args.root_dir)
        .with_context(|| format!("creating {}", args.root_dir.display()))?;
    let name = args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string()
    });
    let mut labels = BTreeMap::new();
    for l in &args.node_labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--node-labels: {l:?} is not key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let Some(kubeconfig_path) = args.kubeconfig.clone() else {
        anyhow::ensure!(
            args.bootstrap_kubeconfig.is_none(),
            "--bootstrap-kubeconfig needs --kubeconfig (where the bootstrapped credentials go)"
        );
        tracing::info!("no --kubeconfig: running static pods only");
        return standalone(&args, name, cgroup_manager).await;
    };
    skiff_agent::bootstrap::ensure_kubeconfig(
        &kubeconfig_path,
        args.bootstrap_kubeconfig.as_deref(),
        &args.cert_dir,
        &name,
        std::time::Duration::from_secs(900),
    )
    .await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path)
        .with_context(|| format!("reading {}", kubeconfig_path.display()))?;
    let client_ca = skiff_agent::nodeapi::server::client_ca(
        &kubeconfig,
        &kubeconfig_path,
        args.client_ca_file.as_deref(),
    )?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    check_cluster_cgroup_driver(&client, driver).await?;
    spawn_certificate_rotation(kubeconfig_path.clone(), args.cert_dir.clone(), name.clone());
    let cfg = node::NodeConfig {
        name,
        ip: args.node_ip.clone(),
        root_dir: args.root_dir.clone(),
        labels,
        system_reserved: parse_reserved(&args.system_reserved)?,
        limits_enforced: enforced,
        node_api_port: args.node_api_port,
    };
    let facts = node::facts_from(
        std::path::Path::new("/proc"),
        std::path::Path::new("/etc"),
        &args.root_dir,
    );
    let manager = std::sync::Arc::new(pod_manager(
        &args,
        Some(client.clone()),
        cfg.name.clone(),
        facts.memory_bytes,
        cgroup_manager,
    )?);
    if let Some(bind) = args.cluster_dns_bind {
        let settings = skiff_agent::dns::Settings {
            bind,
            upstreams: args.dns_upstream.clone(),
            resolv_conf: "/etc/resolv.conf".into(),
            domain: args.cluster_domain.clone(),
            cluster_dns: args.cluster_dns.parse().ok(),
            node: cfg.name.clone(),
            node_ip: cfg.ip.parse().context("--node-ip is not an IP address")?,
            advertise: args.cluster_dns_advertise,
        };
        skiff_agent::dns::start(client.clone(), settings)
            .await
            .context("starting cluster DNS")?;
    }
    // Pods get a network only once the subnet file the overlay plugin reads exists.
    let subnet_file = args.subnet_file.clone().or_else(|| {
        let rt = manager.cni.as_ref()?;
        skiff_agent::subnet::overlay_subnet_file(&rt.load().ok()?.plugins)
    });
    let (subnet_client, subnet_node) = (client.clone(), cfg.name.clone());
    let overlay_mtu = start_overlay(&args, &client, &cfg.name)?;
    let (network, mtu) = (args.cluster_cidr.clone(), args.pod_mtu.or(overlay_mtu));
    tokio::spawn(async move {
        if let Some(path) = subnet_file {
            if let Err(e) = skiff_agent::subnet::wait_and_write(
                subnet_client,
                &subnet_node,
                &network,
                mtu,
                // The node masquerades pod traffic, so the bridge plugin must not.
                true,
                &path,
            )
            .await
            {
                tracing::error!(error = %e, "no pod subnet: pods are not started");
                return;
            }
        }
        skiff_agent::pods::run(manager).await
    });
    let node_ip: std::net::IpAddr = args
        .node_ip
        .parse()
        .with_context(|| format!("--node-ip {:?} is not an IP address", args.node_ip))?;
    let tls = skiff_agent::nodeapi::server::tls_config(
        &client_ca,
        &[cfg.name.clone(), "localhost".into()],
        &[node_ip],
    )?;
    let api_addr = std::net::SocketAddr::new(node_ip, args.node_api_port);
    let listener = skiff_agent::nodeapi::server::bind(api_addr).await?;
    tracing::info!(addr = %api_addr, "serving the node API");
    tokio::spawn(skiff_agent::nodeapi::server::serve(
        listener,
        tls,
        std::sync::Arc::new(skiff_agent::nodeapi::server::NodeApi {
            client: client.clone(),
            root: args.root_dir.clone(),
            shim_root: args.root_dir.join("shim"),
            logs_dir: args.pod_logs_dir.clone(),
            node_name: cfg.name.clone(),
            cgroup_root: args.cgroup_root.clone(),
        }),
    ));
    start_proxy(&args, &client, &cfg.name)?;
    node::register_and_heartbeat(client, cfg).await?;
    Ok(())
}

fn pod_manager(
    args: &Args,
    client: Option<kube::Client>,
    node: String,
    node_memory: u64,
    cgroup_manager: Option<std::sync::Arc<dyn skiff_agent::cgroups::CgroupManager>>,
) -> anyhow::Result<skiff_agent::pods::PodManager> {
    let agent_binary = std::env::current_exe()?;
    let shim = args
        .shim
        .clone()
        .unwrap_or_else(|| agent_binary.with_file_name("skiff-shim"));
    let images = skiff_images::ImageStore::open(args.root_dir.join("images"))?;
    let registry = skiff_images::RegistryClient::new(skiff_images::ClientConfig {
        insecure_registries: args.insecure_registry.clone(),
        ..Default::default()
    });
    let cni = args
        .cni_conf_dir
        .clone()
        .map(|conf_dir| skiff_agent::cni::Runtime {
            conf_dir,
            bin_dirs: args.cni_bin_dir.clone(),
            cache_dir: args.root_dir.join("cni-cache"),
            timeout: std::time::Duration::from_secs(30),
        });
    Ok(skiff_agent::pods::PodManager {
        client,
        node,
        node_ip: args.node_ip.clone(),
        root: args.root_dir.clone(),
        images,
        registry,
        shim,
        shim_cgroup_root: cgroup_manager
            .as_ref()
            .map(|m| m.shim_root())
            .or(args.cgroup_root.clone()),
        agent_binary,
        cni,
        cluster_dns: args.cluster_dns.clone(),
        cluster_domain: args.cluster_domain.clone(),
        logs_dir: args.pod_logs_dir.clone(),
        node_memory,
        cgroups: cgroup_manager,
        pod_max_pids: args.pod_max_pids,
        manifest_dir: Some(args.pod_manifest_path.clone()),
        file_check: args.file_check_frequency,
    })
}

/// No API server: only the static pods run, under the same pod manager.
async fn standalone(
    args: &Args,
    name: String,
    cgroup_manager: Option<std::sync::Arc<dyn skiff_agent::cgroups::CgroupManager>>,
) -> anyhow::Result<()> {
    let facts = node::facts_from(
        std::path::Path::new("/proc"),
        std::path::Path::new("/etc"),
        &args.root_dir,
    );
    if args.cluster_dns_bind.is_some() || args.overlay != "none" || args.proxy_mode.is_some() {
        tracing::warn!("cluster DNS, overlay and service proxy need an API server; not started");
    }
    let manager = pod_manager(args, None, name, facts.memory_bytes, cgroup_manager)?;
    skiff_agent::pods::run(std::sync::Arc::new(manager)).await;
    Ok(())
}

/// Starts the VxLAN overlay controller if asked for; returns the pod MTU it implies.
fn start_overlay(args: &Args, client: &kube::Client, node: &str) -> anyhow::Result<Option<u32>> {
    use skiff_agent::overlay::{controller, desired::Subnet, netlink::NetlinkKernel};
    match args.overlay.as_str() {
        "none" => return Ok(None),
        "vxlan" => {}
        other => anyhow::bail!("--overlay: {other:?} is neither vxlan nor none"),
    }
    let node_ip = args
        .node_ip
        .parse()
        .context("--overlay vxlan needs an IPv4 --node-ip")?;
    let mut kernel = NetlinkKernel::open()?;
    let spec = controller::spec_from_kernel(&mut kernel, node_ip)?;
    let cfg = controller::OverlayConfig {
        node_name: node.to_string(),
        node_ip,
        cluster_cidr: Subnet::parse(&args.cluster_cidr).ok_or_else(|| {
            skiff_agent::overlay::OverlayError::BadClusterCidr(args.cluster_cidr.clone())
        })?,
        resync: std::time::Duration::from_secs(5),
        sysctl_root: "/proc/sys".into(),
    };
    let firewall = skiff_agent::proxy::kernel::Iptables::detect(vec![])
        .context("detecting the iptables backend")?;
    let client = client.clone();
    tokio::spawn(async move {
        if let Err(e) = controller::run(client, cfg, kernel, firewall).await {
            tracing::error!("overlay controller stopped: {e}");
        }
    });
    Ok(Some(spec.mtu))
}

/// The service proxy runs where pods have a network; without CNI there is nothing to route to.
fn start_proxy(args: &Args, client: &kube::Client, node: &str) -> anyhow::Result<()> {
    use skiff_agent::proxy;
    let default = if args.cni_conf_dir.is_some() {
        "iptables"
    } else {
        "none"
    };
    match args.proxy_mode.as_deref().unwrap_or(default) {
        "none" => return Ok(()),
        "iptables" => {}
        other => anyhow::bail!("--proxy-mode: {other:?} is neither iptables nor none"),
    }
    let kernel =
        proxy::kernel::Iptables::detect(vec![]).context("detecting the iptables backend")?;
    if kernel.conntrack.is_none() {
        tracing::warn!(
            "conntrack tool not found: stale UDP flows of removed endpoints are not cleared"
        );
    }
    tracing::info!(backend = ?kernel.backend, "service proxy: iptables mode");
    let cfg = proxy::controller::ProxyConfig {
        node_name: node.to_string(),
        cluster_cidr: args.cluster_cidr.parse().context("--cluster-cidr")?,
        service_cidr: args.service_cidr.parse().context("--service-cidr")?,
        pacing: Default::default(),
    };
    let client = client.clone();
    tokio::spawn(async move {
        if let Err(e) = proxy::controller::run(client, cfg, kernel).await {
            tracing::error!("service proxy stopped: {e}");
        }
    });
    Ok(())
}

/// Renews the node's client certificate when it is due. The API client has the old one loaded,
/// so the agent then re-executes itself (same PID, so systemd sees no restart; pods are
/// unaffected, as by any agent restart) and comes back with the new one.
fn spawn_certificate_rotation(kubeconfig: PathBuf, cert_dir: PathBuf, node: String) {
    tokio::spawn(async move {
        loop {
            match skiff_agent::bootstrap::rotate_when_due(&kubeconfig, &cert_dir, &node).await {
                Ok(None) => return,
                Ok(Some(_)) => {
                    use std::os::unix::process::CommandExt;
                    tracing::info!("re-executing to use the renewed client certificate");
                    let err = std::process::Command::new("/proc/self/exe")
                        .args(std::env::args_os().skip(1))
                        .exec();
                    tracing::error!(error = %err, "re-exec failed; the renewed certificate is used at the next restart");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "client certificate renewal failed; retrying in 60 s");
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                }
            }
        }
    });
}

/// Refuses to run with another cgroup driver than the one the cluster advertises (issue 8:
/// a node on the wrong driver would place pods where its siblings do not look for them).
async fn check_cluster_cgroup_driver(
    client: &kube::Client,
    driver: skiff_agent::cgroups::Driver,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: kube::Api<ConfigMap> =
        kube::Api::namespaced(client.clone(), preflight::AGENT_CONFIG_NAMESPACE);
    let advertised = api
        .get_opt(preflight::AGENT_CONFIG_NAME)
        .await
        .with_context(|| {
            format!(
                "reading the cluster's agent configuration {}/{}",
                preflight::AGENT_CONFIG_NAMESPACE,
                preflight::AGENT_CONFIG_NAME
            )
        })?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(preflight::AGENT_CONFIG_DRIVER_KEY).cloned());
    preflight::check_cluster_cgroup_driver(driver, advertised.as_deref())?;
    if let Some(a) = advertised {
        tracing::info!(driver = %a, "cgroup driver matches the cluster's");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_reserved;

    #[test]
    fn system_reserved() {
        assert_eq!(parse_reserved("").unwrap(), (0, 0));
        assert_eq!(
            parse_reserved("cpu=500m,memory=1Gi").unwrap(),
            (500, 1 << 30)
        );
        assert_eq!(parse_reserved("cpu=2").unwrap(), (2000, 0));
        assert!(parse_reserved("gpu=1").is_err());
        assert!(parse_reserved("cpu").is_err());
    }
}
