//! Nodes run by systemd: `skiffadm init`, `join` and `reset`. What to write and which commands
//! to print are decided by pure functions over a [`Paths`] layout and the flags; the side
//! effects (files, systemctl, binaries) go through the [`System`] trait, so unit tests run
//! against a fake without root.

pub mod discovery;
pub mod init;
pub mod join;
pub mod reset;
pub mod system;

use std::path::{Path, PathBuf};

use serde_json::json;

pub use system::{RealSystem, System};

pub const SERVER_UNIT: &str = "skiff-server.service";
pub const AGENT_UNIT: &str = "skiff-agent.service";
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";
/// The binaries a node needs, installed next to each other (the agent finds skiff-shim
/// beside itself).
pub const BINARIES: [&str; 5] = [
    "skiff-server",
    "skiff-agent",
    "skiff-shim",
    "skiff-cni",
    "skiffadm",
];
/// The names skiff-cni answers to (it dispatches on argv[0]).
pub const CNI_PLUGINS: [&str; 5] = [
    "bridge",
    "host-local",
    "loopback",
    "portmap",
    "skiff-overlay",
];
pub const CONFLIST: &str = "10-skiff.conflist";
pub const BRIDGE: &str = "skiff0";
pub const VXLAN_DEVICE: &str = "skiff.1";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("{0}")]
    Refused(String),
}

impl NodeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a node's files live. [`Paths::standard`] is DESIGN.md's layout; tests root it in a
/// temp dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// Config and PKI (`/etc/skiff`).
    pub etc: PathBuf,
    /// State (`/var/lib/skiff`).
    pub state: PathBuf,
    /// Runtime files (`/run/skiff`).
    pub run: PathBuf,
    /// systemd units (`/etc/systemd/system`).
    pub unit_dir: PathBuf,
    /// Binaries (`/usr/local/bin`, where the units look).
    pub bin_dir: PathBuf,
    /// CNI plugin links (`/usr/libexec/skiff/cni`).
    pub cni_bin_dir: PathBuf,
}

impl Paths {
    pub fn standard() -> Self {
        Self::under(Path::new("/"))
    }

    pub fn under(root: &Path) -> Self {
        Self {
            etc: root.join("etc/skiff"),
            state: root.join("var/lib/skiff"),
            run: root.join("run/skiff"),
            unit_dir: root.join("etc/systemd/system"),
            bin_dir: root.join("usr/local/bin"),
            cni_bin_dir: root.join("usr/libexec/skiff/cni"),
        }
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.etc.join("pki")
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.etc.join("admin.kubeconfig")
    }
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.etc.join("agent.kubeconfig")
    }
    pub fn bootstrap_kubeconfig(&self) -> PathBuf {
        self.etc.join("bootstrap.kubeconfig")
    }
    pub fn server_env(&self) -> PathBuf {
        self.etc.join("skiff-server.env")
    }
    pub fn agent_env(&self) -> PathBuf {
        self.etc.join("skiff-agent.env")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.etc.join("cni/net.d")
    }
    pub fn server_data_dir(&self) -> PathBuf {
        self.state.join("server")
    }
    pub fn agent_root(&self) -> PathBuf {
        self.state.join("agent")
    }
    pub fn agent_cert_dir(&self) -> PathBuf {
        self.agent_root().join("pki")
    }
    pub fn subnet_file(&self) -> PathBuf {
        self.run.join("subnet.env")
    }
    pub fn cni_state_dir(&self) -> PathBuf {
        self.state.join("cni")
    }
}

/// One change to the machine. Plans are lists of these, so that tests can read what `init`
/// or `join` would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Dir(PathBuf),
    File {
        path: PathBuf,
        contents: String,
        mode: u32,
    },
    /// Copy a binary (through a temp file and a rename, so a running one is not disturbed).
    Binary {
        from: PathBuf,
        to: PathBuf,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    Systemctl(Vec<String>),
}

pub fn apply(sys: &mut dyn System, actions: &[Action]) -> Result<(), NodeError> {
    for a in actions {
        match a {
            Action::Dir(p) => sys.create_dir(p)?,
            Action::File {
                path,
                contents,
                mode,
            } => sys.write_file(path, contents.as_bytes(), *mode)?,
            Action::Binary { from, to } => sys.install_binary(from, to)?,
            Action::Symlink { target, link } => sys.symlink(target, link)?,
            Action::Systemctl(args) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                sys.systemctl(&args)?
            }
        }
    }
    Ok(())
}

/// The network settings a node's agent runs with; the same on every node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub pod_cidr: String,
    pub service_cidr: String,
    /// Port of the node's cluster DNS on its own address; 0: the node serves no DNS. Pods
    /// never see it: they ask kube-dns' ClusterIP on 53 and the proxy forwards here.
    pub dns_port: u16,
}

/// The cluster DNS port of a node (`--cluster-dns-port`); 53 like every cluster DNS.
pub const DEFAULT_DNS_PORT: u16 = 53;

/// kube-dns' ClusterIP, the 10th address of the service range, as skiff-server (and kubeadm)
/// place it; pods get it as their nameserver.
pub fn cluster_dns_ip(service_cidr: &str) -> Result<std::net::Ipv4Addr, NodeError> {
    check_cidr("--service-cidr", service_cidr)?;
    let (ip, len) = service_cidr.split_once('/').expect("checked above");
    let ip: std::net::Ipv4Addr = ip.parse().expect("checked above");
    let len: u32 = len.parse().expect("checked above");
    let network = u32::from(ip) & (u32::MAX.checked_shl(32 - len).unwrap_or(0));
    if len > 28 {
        return Err(NodeError::Refused(format!(
            "--service-cidr {service_cidr:?} is too small: kube-dns takes its 10th address; use a /28 or larger"
        )));
    }
    Ok(std::net::Ipv4Addr::from(network + 10))
}

pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// Checks an IPv4 CIDR such as `10.244.0.0/16`, naming the flag when it is not one.
pub fn check_cidr(flag: &str, cidr: &str) -> Result<(), NodeError> {
    let bad = || {
        NodeError::Refused(format!(
            "{flag} {cidr:?} is not an IPv4 CIDR like 10.244.0.0/16"
        ))
    };
    let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
    ip.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    match len.parse::<u8>() {
        Ok(n) if n <= 30 => Ok(()),
        _ => Err(bad()),
    }
}

/// The pod network's CNI configuration: skiff-overlay (which reads the node's subnet from
/// the file the agent writes) delegating to bridge + host-local, then portmap.
pub fn conflist(paths: &Paths) -> String {
    let state = paths.cni_state_dir();
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "skiff",
        "plugins": [
            {
                "type": "skiff-overlay",
                "subnetFile": paths.subnet_file(),
                "dataDir": state.join("overlay"),
                "delegate": {
                    "bridge": BRIDGE,
                    "ipam": {"dataDir": state.join("ipam")}
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    serde_json::to_string_pretty(&v).expect("JSON") + "\n"
}

/// The agent's flags (`SKIFF_AGENT_ARGS`) other than its kubeconfig, which the unit names.
pub fn agent_args(
    paths: &Paths,
    node: &str,
    node_ip: &str,
    net: &Network,
) -> Result<Vec<String>, NodeError> {
    let s = |p: PathBuf| p.display().to_string();
    let mut args = vec![
        "--node-name".into(),
        node.into(),
        "--node-ip".into(),
        node_ip.into(),
        "--root-dir".into(),
        s(paths.agent_root()),
        "--cert-dir".into(),
        s(paths.agent_cert_dir()),
        "--cni-conf-dir".into(),
        s(paths.cni_conf_dir()),
        "--cni-bin-dir".into(),
        s(paths.cni_bin_dir.clone()),
        "--subnet-file".into(),
        s(paths.subnet_file()),
        "--overlay".into(),
        "vxlan".into(),
        "--cluster-cidr".into(),
        net.pod_cidr.clone(),
        "--service-cidr".into(),
        net.service_cidr.clone(),
        "--cluster-dns".into(),
        cluster_dns_ip(&net.service_cidr)?.to_string(),
    ];
    if net.dns_port != 0 {
        let ip: std::net::IpAddr = node_ip.parse().map_err(|_| {
            NodeError::Refused(format!("node address {node_ip:?} is not an IP address"))
        })?;
        args.extend([
            "--cluster-dns-bind".into(),
            std::net::SocketAddr::new(ip, net.dns_port).to_string(),
        ]);
    }
    Ok(args)
}

/// An environment file line `NAME="a b c"` for systemd's EnvironmentFile (`$NAME` in
/// ExecStart splits on spaces, so no value may contain one).
pub fn env_line(name: &str, args: &[String]) -> Result<String, NodeError> {
    if let Some(bad) = args
        .iter()
        .find(|a| a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"'))
    {
        return Err(NodeError::Refused(format!(
            "{bad:?} cannot go into {name}: values may not be empty or contain spaces or quotes"
        )));
    }
    Ok(format!("{name}=\"{}\"\n", args.join(" ")))
}

/// Binaries, CNI plugin links, CNI config and the state directories: what every node gets.
pub fn common_actions(paths: &Paths, source_bin_dir: &Path) -> Vec<Action> {
    let mut out = vec![
        Action::Dir(paths.etc.clone()),
        Action::Dir(paths.state.clone()),
        Action::Dir(paths.run.clone()),
        Action::Dir(paths.bin_dir.clone()),
        Action::Dir(paths.cni_bin_dir.clone()),
    ];
    // Running from the install dir already (a second run, or a package): nothing to copy.
    if source_bin_dir != paths.bin_dir {
        for b in BINARIES {
            out.push(Action::Binary {
                from: source_bin_dir.join(b),
                to: paths.bin_dir.join(b),
            });
        }
    }
    for p in CNI_PLUGINS {
        out.push(Action::Symlink {
            target: paths.bin_dir.join("skiff-cni"),
            link: paths.cni_bin_dir.join(p),
        });
    }
    out.push(Action::File {
        path: paths.cni_conf_dir().join(CONFLIST),
        contents: conflist(paths),
        mode: 0o644,
    });
    out
}

/// Binaries missing next to skiffadm (they are installed from there).
pub fn missing_binaries(dir: &Path) -> Vec<&'static str> {
    BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect()
}

/// The unit files shipped in the repository, built into skiffadm.
pub const SERVER_UNIT_TEXT: &str = include_str!("../../../../systemd/skiff-server.service");
pub const AGENT_UNIT_TEXT: &str = include_str!("../../../../systemd/skiff-agent.service");

pub fn unit_action(paths: &Paths, name: &str, text: &str) -> Action {
    Action::File {
        path: paths.unit_dir.join(name),
        contents: text.to_string(),
        mode: 0o644,
    }
}

/// This host's name as the kernel has it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The IPv4 address of the interface the default route leaves by: what other nodes reach
/// this one at. A UDP `connect` only picks the route; no packet is sent.
pub fn default_address() -> Result<std::net::IpAddr, NodeError> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| NodeError::Command {
        command: "bind a UDP socket".into(),
        message: e.to_string(),
    })?;
    let refused = || {
        NodeError::Refused(
            "this host has no default IPv4 route, so its address cannot be guessed: pass it (--apiserver-advertise-address for init, --node-ip for join)".into(),
        )
    };
    socket.connect("192.0.2.1:9").map_err(|_| refused())?;
    let ip = socket.local_addr().map_err(|_| refused())?.ip();
    if ip.is_unspecified() || ip.is_loopback() {
        return Err(refused());
    }
    Ok(ip)
}

/// A node name must be a DNS subdomain (it becomes the Node object's name).
pub fn check_node_name(name: &str) -> Result<(), NodeError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(NodeError::Refused(format!(
            "node name {name:?} is not a lowercase DNS name (a-z, 0-9, '-', '.'): pass --node-name"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_dns_is_the_tenth_address_of_the_service_range() {
        assert_eq!(
            cluster_dns_ip("10.96.0.0/12").unwrap().to_string(),
            "10.96.0.10"
        );
        // A range given with host bits set still counts from its network address.
        assert_eq!(
            cluster_dns_ip("172.20.5.7/16").unwrap().to_string(),
            "172.20.0.10"
        );
        assert!(cluster_dns_ip("10.96.0.0/29")
            .unwrap_err()
            .to_string()
            .contains("/28"));
    }

    #[test]
    fn agents_serve_dns_on_their_own_address_unless_the_port_is_zero() {
        let paths = Paths::standard();
        let mut net = Network {
            pod_cidr: DEFAULT_POD_CIDR.into(),
            service_cidr: "10.100.0.0/16".into(),
            dns_port: DEFAULT_DNS_PORT,
        };
        let flag = |args: &[String], f: &str| {
            args.iter()
                .position(|a| a == f)
                .map(|i| args[i + 1].clone())
        };
        let args = agent_args(&paths, "vm2", "10.88.0.12", &net).unwrap();
        assert_eq!(
            flag(&args, "--cluster-dns-bind").as_deref(),
            Some("10.88.0.12:53")
        );
        assert_eq!(flag(&args, "--cluster-dns").as_deref(), Some("10.100.0.10"));
        net.dns_port = 0;
        let args = agent_args(&paths, "vm2", "10.88.0.12", &net).unwrap();
        assert_eq!(flag(&args, "--cluster-dns-bind"), None);
        assert_eq!(flag(&args, "--cluster-dns").as_deref(), Some("10.100.0.10"));
    }

    #[test]
    fn cidrs_and_names_are_checked() {
        assert!(check_cidr("--pod-network-cidr", "10.244.0.0/16").is_ok());
        for bad in ["10.244.0.0", "10.244.0/16", "10.244.0.0/33", "fd00::/64"] {
            let e = check_cidr("--pod-network-cidr", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--pod-network-cidr") && e.contains(bad), "{e}");
        }
        assert!(check_node_name("vm1").is_ok());
        assert!(check_node_name("worker-1.lab").is_ok());
        for bad in ["", "VM1", "-a", "a..b", "a_b"] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_lines_refuse_what_systemd_would_split() {
        assert_eq!(
            env_line("X", &["--a".into(), "1".into()]).unwrap(),
            "X=\"--a 1\"\n"
        );
        assert!(env_line("X", &["a b".into()]).is_err());
        assert!(env_line("X", &["".into()]).is_err());
    }

    #[test]
    fn conflist_points_into_the_layout() {
        let paths = Paths::under(Path::new("/r"));
        let v: serde_json::Value = serde_json::from_str(&conflist(&paths)).unwrap();
        assert_eq!(v["plugins"][0]["type"], "skiff-overlay");
        assert_eq!(v["plugins"][0]["subnetFile"], "/r/run/skiff/subnet.env");
        assert_eq!(v["plugins"][0]["delegate"]["bridge"], BRIDGE);
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn binaries_are_copied_only_from_elsewhere() {
        let paths = Paths::under(Path::new("/r"));
        let copies = |src: &Path| {
            common_actions(&paths, src)
                .into_iter()
                .filter(|a| matches!(a, Action::Binary { .. }))
                .count()
        };
        assert_eq!(copies(Path::new("/opt/skiff/bin")), BINARIES.len());
        assert_eq!(copies(&paths.bin_dir), 0);
        assert!(
            common_actions(&paths, Path::new("/x")).contains(&Action::Symlink {
                target: "/r/usr/local/bin/skiff-cni".into(),
                link: "/r/usr/libexec/skiff/cni/skiff-overlay".into(),
            })
        );
    }
}
