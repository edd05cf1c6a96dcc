use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use skiff_server::api::{ApiServer, Settings};
use skiff_server::auth::{AllowAuthenticated, TokenFile};
use skiff_server::{cache::Cache, lifecycle, pki, serve};
use skiff_store::{EmbeddedStore, Store};

/// Skiff's control plane: the Kubernetes API server.
#[derive(Parser, Debug)]
#[command(name = "skiff-server", version)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Port to serve HTTPS on.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// State: the store file, the PKI and the admin kubeconfig.
    #[arg(long, default_value = "/var/lib/skiff/server")]
    data_dir: PathBuf,
    /// The cluster's PKI (CA, serving and client certificates); default `<data-dir>/pki`.
    /// `skiffadm init` keeps it in /etc/skiff/pki, apart from the state.
    #[arg(long)]
    pki_dir: Option<PathBuf>,
    /// The address clients should use to reach this server (kubeconfig, `kubernetes` endpoints).
    #[arg(long, default_value = "127.0.0.1")]
    advertise_address: IpAddr,
    /// Extra names and addresses for the serving certificate.
    #[arg(long = "tls-san", value_delimiter = ',')]
    tls_sans: Vec<String>,
    /// Static bearer tokens: `token,user,uid[,"group1,group2"]` per line.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// ClusterIP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// NodePort range, `LOW-HIGH`.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Store the cluster state in etcd v3 instead of the embedded store: comma-separated
    /// `http://host:port` or `https://host:port` URLs (kube-apiserver's `--etcd-servers`).
    #[arg(long, value_delimiter = ',', visible_alias = "etcd-servers")]
    datastore_endpoint: Vec<String>,
    /// CA that signed etcd's serving certificate (for `https://` endpoints).
    #[arg(long, visible_alias = "etcd-cafile", requires_all = ["datastore_endpoint", "datastore_certfile", "datastore_keyfile"])]
    datastore_cafile: Option<PathBuf>,
    /// Client certificate presented to etcd.
    #[arg(long, visible_alias = "etcd-certfile", requires_all = ["datastore_endpoint", "datastore_cafile", "datastore_keyfile"])]
    datastore_certfile: Option<PathBuf>,
    /// Key of the client certificate.
    #[arg(long, visible_alias = "etcd-keyfile", requires_all = ["datastore_endpoint", "datastore_cafile", "datastore_certfile"])]
    datastore_keyfile: Option<PathBuf>,
    /// Controllers not to run (comma-separated names, or `all`): scheduler, replicaset,
    /// deployment, daemonset, endpoints, endpointslice, serviceaccount, nodelifecycle, nodeipam.
    #[arg(long, value_delimiter = ',')]
    disable: Vec<String>,
    /// A node whose Lease is not renewed for this many seconds becomes Ready=Unknown.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Seconds pods tolerate a not-ready or unreachable node unless they say otherwise.
    #[arg(long, default_value_t = 300)]
    default_eviction_toleration: u64,
    /// Pod network of the cluster; each node gets a /24 of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The longest lifetime of certificates issued for CertificateSigningRequests (agents'
    /// client certificates), and the lifetime of those that ask for none: `8760h`, `30m`, `60s`.
    #[arg(long, default_value = "8760h", value_parser = parse_signing_duration)]
    cluster_signing_duration: std::time::Duration,
}

/// A duration as kube-controller-manager's flags take it, in whole `h`, `m` or `s` units,
/// combined (`1h30m`); at least a second.
fn parse_signing_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration like 8760h, 30m or 90s");
    let (mut total, mut digits) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

fn node_port_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let (lo, hi) = s
        .split_once('-')
        .context("--service-node-port-range: expected LOW-HIGH")?;
    let (lo, hi): (u16, u16) = (lo.parse()?, hi.parse()?);
    anyhow::ensure!(
        lo <= hi,
        "--service-node-port-range: LOW must not exceed HIGH"
    );
    Ok((lo, hi))
}

fn local_ips() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("ip")];
    if let Ok(out) = std::process::Command::new("hostname").arg("-I").output() {
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(ip) = word.parse() {
                ips.push(ip);
            }
        }
    }
    ips
}

// The server's request path is allocation-heavy (JSON trees, managed fields, watch fan-out);
// under scale_bench glibc's malloc/free took about half of its CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let service_cidr: skiff_server::api::ipnet_lite::Ipv4Net = args
        .service_cluster_ip_range
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--service-cluster-ip-range: {e}"))?;
    let node_ports = node_port_range(&args.service_node_port_range)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut dns = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    if !hostname.is_empty() {
        dns.push(hostname);
    }
    let mut ips = local_ips();
    ips.push(service_cidr.nth(1).into());
    ips.push(args.advertise_address);
    for san in &args.tls_sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(san.clone()),
        }
    }
    ips.sort();
    ips.dedup();
    let pki = pki::ClusterPki::load_or_create(
        &args
            .pki_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("pki")),
        &dns,
        &ips,
    )?;
    let admin = pki.admin()?;
    let server_url = format!(
        "https://{}:{}",
        match args.advertise_address {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        },
        args.secure_port
    );
    let kubeconfig_path = args.data_dir.join("admin.kubeconfig");
    pki::write_kubeconfig(
        &kubeconfig_path,
        &pki::kubeconfig(&server_url, &pki.ca.cert_pem, "kubernetes-admin", &admin),
    )?;

    let store: Arc<dyn Store> = if args.datastore_endpoint.is_empty() {
        Arc::new(EmbeddedStore::open(args.data_dir.join("state.redb"))?)
    } else {
        let read = |flag: &str, path: &Option<PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
            path.as_ref()
                .map(|p| std::fs::read(p).with_context(|| format!("{flag} {}", p.display())))
                .transpose()
        };
        let tls = match (
            read("--etcd-cafile", &args.datastore_cafile)?,
            read("--etcd-certfile", &args.datastore_certfile)?,
            read("--etcd-keyfile", &args.datastore_keyfile)?,
        ) {
            (Some(ca_pem), Some(cert_pem), Some(key_pem)) => Some(skiff_store::EtcdTls {
                ca_pem,
                cert_pem,
                key_pem,
            }),
            _ => None,
        };
        Arc::new(skiff_store::EtcdStore::connect(&args.datastore_endpoint, tls).await?)
    };
    tracing::info!("store open");
    let cache = Cache::start(store.clone()).await?;
    tracing::info!(revision = cache.revision(), "watch cache loaded");
    let tokens = match &args.token_auth_file {
        Some(p) => TokenFile::load(p)?,
        None => TokenFile::default(),
    };
    let api = Arc::new(ApiServer {
        store,
        cache,
        tokens,
        authorizer: Box::new(AllowAuthenticated),
        settings: Settings {
            service_cidr,
            node_port_range: node_ports,
        },
        allocation: tokio::sync::Mutex::new(()),
        myself: std::sync::OnceLock::new(),
        node_tls: Some(Arc::new(
            skiff_server::api::node_proxy::client_config(&pki.client(
                "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client",
                &["system:masters"],
            )?)
            .map_err(|e| anyhow::anyhow!("the kubelet client certificate: {e}"))?,
        )),
    });
    let _ = api.myself.set(Arc::downgrade(&api));
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        lifecycle::bootstrap(&api, &args.advertise_address.to_string(), args.secure_port),
    )
    .await
    .context("creating the system namespaces and the kubernetes Service took over 60 s: the store does not deliver its writes back through its watch")??;
    tracing::info!("system objects in place");
    skiff_server::bootstrap::spawn_cluster_info_signer(
        api.clone(),
        server_url.clone(),
        pki.ca.cert_pem.clone(),
    );
    skiff_server::csr::spawn_signer(
        api.clone(),
        pki.ca.clone(),
        pki.dir.clone(),
        args.cluster_signing_duration,
    );

    let tls = serve::tls_config(&pki)?;
    let addr = SocketAddr::new(args.bind_address, args.secure_port);
    let listener = serve::bind(addr).await?;
    tracing::info!(%addr, kubeconfig = %kubeconfig_path.display(), "serving the Kubernetes API");

    for name in &args.disable {
        anyhow::ensure!(
            name == "all" || skiff_controllers::CONTROLLERS.contains(&name.as_str()),
            "--disable: unknown controller {name:?}; known: {}",
            skiff_controllers::CONTROLLERS.join(", ")
        );
    }
    if !args.disable.iter().any(|d| d == "all") {
        // The controllers reach this server over loopback like any client, with their own
        // certificate (kube-controller-manager's identity).
        let identity = pki.client("controller-manager", "system:kube-controller-manager", &[])?;
        let loopback = match args.bind_address {
            IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(a) if a.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        };
        let url = format!("https://{loopback}:{}", args.secure_port);
        let path = args.data_dir.join("controller-manager.kubeconfig");
        pki::write_kubeconfig(
            &path,
            &pki::kubeconfig(
                &url,
                &pki.ca.cert_pem,
                "system:kube-controller-manager",
                &identity,
            ),
        )?;
        let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        let settings = skiff_controllers::Settings {
            node_monitor_grace: std::time::Duration::from_secs(args.node_monitor_grace_period),
            default_eviction_toleration: std::time::Duration::from_secs(
                args.default_eviction_toleration,
            ),
            cluster_cidr: args.cluster_cidr.clone(),
            node_cidr_mask: 24,
        };
        let ctx = skiff_controllers::Context::new(client, "skiff-controller-manager", settings);
        let identity = format!(
            "{}_{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim(),
            uuid::Uuid::new_v4()
        );
        tokio::spawn(skiff_controllers::run_with_leader_election(
            ctx,
            identity,
            args.disable.clone(),
        ));
    }
    if let Err(e) = skiff_daemon::sd_notify::ready() {
        tracing::warn!(error = %e, "telling systemd we are ready");
    }
    serve::serve(listener, tls, api).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_signing_duration;

    #[test]
    fn signing_durations_parse_like_kube_flags() {
        let secs = |s| parse_signing_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("8760h"), Ok(8760 * 3600));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("60s"), Ok(60));
        for bad in ["", "60", "0s", "1d", "h", "-5s", "99999999999999999999h"] {
            let e = parse_signing_duration(bad).unwrap_err();
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
    }
}
