//! `skiffadm join`: make this machine a node of an existing cluster, trusting its CA only
//! after token discovery (see [`super::discovery`]); the agent's own TLS bootstrap then gets
//! the node's certificate.

use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use base64::Engine;

use super::discovery::{self, Discovered};
use super::init::{require_root, run_preflight, split_endpoint};
use super::{
    agent_args, apply, check_cidr, check_node_name, common_actions, env_line, unit_action, Action,
    Network, NodeError, Paths, System, AGENT_UNIT, AGENT_UNIT_TEXT, DEFAULT_POD_CIDR,
    DEFAULT_SERVICE_CIDR,
};
use crate::token;

#[derive(clap::Args, Debug, Clone)]
pub struct JoinArgs {
    /// The API server, `host:port`, as `skiffadm init` printed it.
    pub endpoint: String,
    /// The bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    #[arg(long)]
    pub token: String,
    /// `sha256:<hex>` of the cluster CA's public key, as `skiffadm init` printed it.
    #[arg(long)]
    pub discovery_token_ca_cert_hash: String,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's address for the cluster (default: that of the default route).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// The cluster's pod network (as given to init).
    #[arg(long, default_value = DEFAULT_POD_CIDR)]
    pub pod_network_cidr: String,
    /// The cluster's ClusterIP range (as given to init).
    #[arg(long, default_value = DEFAULT_SERVICE_CIDR)]
    pub service_cidr: String,
    /// Port of this node's cluster DNS on its address (UDP and TCP); 0 turns it off. Pods
    /// always ask kube-dns' ClusterIP on 53.
    #[arg(long, default_value_t = super::DEFAULT_DNS_PORT)]
    pub cluster_dns_port: u16,
    /// Checks whose errors are only reported (names as printed, or `all`).
    #[arg(long, value_delimiter = ',')]
    pub ignore_preflight_errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinConfig {
    pub endpoint: String,
    pub token_id: String,
    pub token_secret: String,
    pub pin: String,
    pub node: String,
    pub node_ip: IpAddr,
    pub network: Network,
}

/// Checks every flag before anything touches the network or the disk.
pub fn resolve(
    args: &JoinArgs,
    hostname: &str,
    default_ip: impl FnOnce() -> Result<IpAddr, NodeError>,
) -> Result<JoinConfig, NodeError> {
    split_endpoint("the API server address", &args.endpoint)?;
    let (token_id, token_secret) =
        token::parse(&args.token).map_err(|e| NodeError::Refused(format!("--token: {e}")))?;
    let pin = discovery::parse_pin(&args.discovery_token_ca_cert_hash)
        .map_err(|e| NodeError::Refused(e.to_string()))?;
    check_cidr("--pod-network-cidr", &args.pod_network_cidr)?;
    check_cidr("--service-cidr", &args.service_cidr)?;
    let node = args.node_name.clone().unwrap_or_else(|| hostname.into());
    check_node_name(&node)?;
    let node_ip = match args.node_ip {
        Some(ip) => ip,
        None => default_ip()?,
    };
    Ok(JoinConfig {
        endpoint: args.endpoint.clone(),
        token_id,
        token_secret,
        pin,
        node,
        node_ip,
        network: Network {
            pod_cidr: args.pod_network_cidr.clone(),
            service_cidr: args.service_cidr.clone(),
            dns_port: args.cluster_dns_port,
        },
    })
}

/// The kubeconfig the agent bootstraps with: the discovered CA, the address the admin gave
/// (the one this node is known to reach), and the token.
pub fn bootstrap_kubeconfig(endpoint: &str, ca_pem: &[u8], token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: https://{endpoint}\n    certificate-authority-data: {ca}\nusers:\n- name: tls-bootstrap-token-user\n  user:\n    token: {token}\ncontexts:\n- name: tls-bootstrap\n  context:\n    cluster: skiff\n    user: tls-bootstrap-token-user\ncurrent-context: tls-bootstrap\npreferences: {{}}\n"
    )
}

pub fn plan(
    paths: &Paths,
    cfg: &JoinConfig,
    discovered: &Discovered,
    source_bin_dir: &Path,
) -> Result<Vec<Action>, NodeError> {
    let mut out = common_actions(paths, source_bin_dir);
    out.push(Action::File {
        path: paths.bootstrap_kubeconfig(),
        contents: bootstrap_kubeconfig(
            &cfg.endpoint,
            &discovered.ca_pem,
            &format!("{}.{}", cfg.token_id, cfg.token_secret),
        ),
        mode: 0o600,
    });
    let mut args = agent_args(paths, &cfg.node, &cfg.node_ip.to_string(), &cfg.network)?;
    args.extend([
        "--bootstrap-kubeconfig".into(),
        paths.bootstrap_kubeconfig().display().to_string(),
    ]);
    out.push(Action::File {
        path: paths.agent_env(),
        contents: env_line("SKIFF_AGENT_ARGS", &args)?,
        mode: 0o644,
    });
    out.push(unit_action(paths, AGENT_UNIT, AGENT_UNIT_TEXT));
    out.push(Action::Systemctl(vec!["daemon-reload".into()]));
    Ok(out)
}

pub async fn run(args: JoinArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let paths = Paths::standard();
    let mut sys = super::RealSystem;
    let cfg = resolve(&args, &super::hostname(), super::default_address)?;
    if !sys.systemd_is_init() {
        return Err(NodeError::Refused(super::init::no_systemd_message()).into());
    }
    if let Some(why) = super::init::already_set_up(&sys, &paths) {
        return Err(NodeError::Refused(why).into());
    }
    require_root()?;
    run_preflight(
        &args.ignore_preflight_errors,
        vec![(10250, false), (8472, true)],
        (cfg.network.dns_port != 0)
            .then(|| std::net::SocketAddr::new(cfg.node_ip, cfg.network.dns_port)),
    )?;
    let source = super::init::own_bin_dir()?;
    let missing = super::missing_binaries(&source);
    if !missing.is_empty() {
        return Err(NodeError::Refused(format!(
            "{} not found next to skiffadm in {}: they are installed from there. Nothing was changed.",
            missing.join(", "),
            source.display()
        ))
        .into());
    }
    println!("[join] discovering the cluster at {}", cfg.endpoint);
    let data = discovery::fetch_cluster_info(&cfg.endpoint).await?;
    let discovered =
        discovery::verify_cluster_info(&data, &cfg.token_id, &cfg.token_secret, &cfg.pin)?;
    println!(
        "[join] cluster-info is signed with token {:?} and its CA matches {}",
        cfg.token_id, cfg.pin
    );
    discovery::check_token_accepted(
        &bootstrap_kubeconfig(
            &cfg.endpoint,
            &discovered.ca_pem,
            &format!("{}.{}", cfg.token_id, cfg.token_secret),
        ),
        &cfg.token_id,
    )
    .await?;
    apply(&mut sys, &plan(&paths, &cfg, &discovered, &source)?)?;
    println!(
        "[join] starting {AGENT_UNIT} (TLS bootstrap: it requests node {}'s certificate)",
        cfg.node
    );
    sys.systemctl(&["enable", "--now", AGENT_UNIT])
        .map_err(|e| anyhow::anyhow!("{e}; fix the cause, then `skiffadm reset` and join again"))?;
    println!(
        "[join] node {} registered {:.1} s after join started; `kubectl get nodes` on the control plane shows it",
        cfg.node,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::system::fake::FakeSystem;

    const PIN: &str = "sha256:7b3683e0faee68aabcbdf55506671cea882db67f5c94994aab9def0a400948f7";

    fn args() -> JoinArgs {
        JoinArgs {
            endpoint: "10.88.0.11:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            discovery_token_ca_cert_hash: PIN.into(),
            node_name: None,
            node_ip: None,
            pod_network_cidr: DEFAULT_POD_CIDR.into(),
            service_cidr: DEFAULT_SERVICE_CIDR.into(),
            cluster_dns_port: super::super::DEFAULT_DNS_PORT,
            ignore_preflight_errors: vec![],
        }
    }

    fn ip() -> Result<IpAddr, NodeError> {
        Ok("10.88.0.12".parse().unwrap())
    }

    #[test]
    fn flags_resolve() {
        let cfg = resolve(&args(), "vm2", ip).unwrap();
        assert_eq!(cfg.token_id, "abcdef");
        assert_eq!(cfg.token_secret, "0123456789abcdef");
        assert_eq!(cfg.node, "vm2");
        assert_eq!(cfg.node_ip.to_string(), "10.88.0.12");
    }

    #[test]
    fn malformed_token_names_the_format() {
        let mut a = args();
        a.token = "abcdef:0123456789abcdef".into();
        let e = resolve(&a, "vm2", ip).unwrap_err().to_string();
        assert!(
            e.contains("--token") && e.contains("[a-z0-9]{6}.[a-z0-9]{16}"),
            "{e}"
        );
    }

    #[test]
    fn malformed_pin_and_endpoint_are_refused() {
        let mut a = args();
        a.discovery_token_ca_cert_hash = "7b36".into();
        let e = resolve(&a, "vm2", ip).unwrap_err().to_string();
        assert!(e.contains("sha256:<64 hex digits>"), "{e}");
        let mut a = args();
        a.endpoint = "10.88.0.11".into();
        assert!(resolve(&a, "vm2", ip)
            .unwrap_err()
            .to_string()
            .contains("host:port"));
    }

    #[test]
    fn plan_bootstraps_the_agent_with_the_discovered_ca() {
        let paths = Paths::under(Path::new("/r"));
        let cfg = resolve(&args(), "vm2", ip).unwrap();
        let d = Discovered {
            server: "https://10.88.0.11:6443".into(),
            ca_pem: b"CA".to_vec(),
        };
        let mut sys = FakeSystem::default();
        apply(
            &mut sys,
            &plan(&paths, &cfg, &d, Path::new("/opt/skiff/bin")).unwrap(),
        )
        .unwrap();
        let env = &sys.files[&paths.agent_env()];
        assert!(
            env.contains("--bootstrap-kubeconfig /r/etc/skiff/bootstrap.kubeconfig"),
            "{env}"
        );
        assert!(env.contains("--node-ip 10.88.0.12"), "{env}");
        assert!(sys.log.contains(&format!(
            "write {} 600",
            paths.bootstrap_kubeconfig().display()
        )));
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("b.kubeconfig");
        std::fs::write(&kc, &sys.files[&paths.bootstrap_kubeconfig()]).unwrap();
        let (server, ca) = skiff_agent::bootstrap::cluster_of(&kc).unwrap();
        assert_eq!(server, "https://10.88.0.11:6443");
        assert_eq!(ca, b"CA");
        assert!(!sys.files.contains_key(&paths.server_env()));
    }
}
