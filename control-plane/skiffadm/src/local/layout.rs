//! Where local mode keeps everything, and the settings the first `up` chose. Every later
//! command reads the settings back, so `up` after `down` resumes with the same port, node
//! name and networks, and `delete` knows which bridge and chains to remove.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LocalError;

pub const DEFAULT_ROOT: &str = "/var/lib/skiff-local";

/// Paths under the root dir.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Result<Layout, LocalError> {
        if !root.is_absolute() {
            return Err(LocalError::Invalid(format!(
                "--root-dir {} must be an absolute path",
                root.display()
            )));
        }
        if root == Path::new("/") {
            return Err(LocalError::Invalid(
                "--root-dir / would put the cluster's state over the whole file system".into(),
            ));
        }
        Ok(Layout {
            root: root.to_path_buf(),
        })
    }
    pub fn settings(&self) -> PathBuf {
        self.root.join("local.json")
    }
    pub fn server_dir(&self) -> PathBuf {
        self.root.join("server")
    }
    /// Written by skiff-server on its first start; the agent uses it.
    pub fn server_kubeconfig(&self) -> PathBuf {
        self.server_dir().join("admin.kubeconfig")
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("admin.kubeconfig")
    }
    pub fn agent_dir(&self) -> PathBuf {
        self.root.join("agent")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.agent_dir().join("images")
    }
    pub fn shim_dir(&self) -> PathBuf {
        self.agent_dir().join("shim")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.logs_dir().join("pods")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn supervisor_pid(&self) -> PathBuf {
        self.run_dir().join("supervisor.pid")
    }
    pub fn child_pid(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("{name}.pid"))
    }
    /// While this file exists the supervisor keeps the agent stopped (image loads).
    pub fn agent_hold(&self) -> PathBuf {
        self.run_dir().join("agent.hold")
    }
    pub fn subnet_file(&self) -> PathBuf {
        self.run_dir().join("subnet.env")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni/net.d")
    }
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.root.join("cni/bin")
    }
    pub fn cni_state_dir(&self) -> PathBuf {
        self.root.join("cni/state")
    }
}

/// What the first `up` decided; fixed for the cluster's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub port: u16,
    pub node_name: String,
    pub node_ip: String,
    pub bridge: String,
    pub cluster_cidr: String,
    pub bin_dir: PathBuf,
    /// `None` when the host's cgroup v2 hierarchy lacks controllers: limits are not enforced.
    pub cgroup_root: Option<PathBuf>,
    /// Chain in the nat table that masquerades pod traffic leaving the pod network.
    pub masq_chain: String,
    /// `Some(N)`: a multi-node lab (`up --nodes N`): server and agents in network namespaces
    /// of their own, nothing on the host's network but the API relay on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<usize>,
    /// Where the single node's cluster DNS listens (`<node-ip>:53`, or the fallback port when a
    /// DNS server of the host holds 53); chosen again at every `up`. `None`: DNS off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_dns_bind: Option<std::net::SocketAddr>,
}

impl Settings {
    pub fn load(layout: &Layout) -> Result<Option<Settings>, LocalError> {
        let path = layout.settings();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| LocalError::Invalid(format!("{} is not valid: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LocalError::io(&path, e)),
        }
    }

    pub fn save(&self, layout: &Layout) -> Result<(), LocalError> {
        let path = layout.settings();
        let text = serde_json::to_string_pretty(self).expect("settings serialise");
        super::write_atomic(&path, text.as_bytes(), 0o644)
    }

    /// Loads the settings or says the cluster was never set up here.
    pub fn require(layout: &Layout) -> Result<Settings, LocalError> {
        Self::load(layout)?.ok_or_else(|| LocalError::NotCreated(layout.root.clone()))
    }
}

/// A bridge name the kernel accepts (IFNAMSIZ, no slashes or spaces).
pub fn validate_ifname(name: &str) -> Result<(), LocalError> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(LocalError::Invalid(format!(
            "--bridge {name:?}: an interface name is 1-15 characters of letters, digits, '-', '_', '.'"
        )));
    }
    Ok(())
}

/// An IPv4 CIDR with a prefix that leaves room for a /24 per node.
pub fn validate_cluster_cidr(cidr: &str) -> Result<(), LocalError> {
    let bad = || {
        LocalError::Invalid(format!(
            "--cluster-cidr {cidr:?}: expected an IPv4 network such as 10.244.0.0/16 (prefix 8-23)"
        ))
    };
    let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u32 = prefix.parse().map_err(|_| bad())?;
    if !(8..=23).contains(&prefix) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - prefix);
    if u32::from(addr) & !mask != 0 {
        return Err(LocalError::Invalid(format!(
            "--cluster-cidr {cidr}: host bits are set (the network is {}/{prefix})",
            std::net::Ipv4Addr::from(u32::from(addr) & mask)
        )));
    }
    Ok(())
}

/// A DNS-1123 subdomain, as Node names must be.
pub fn validate_node_name(name: &str) -> Result<(), LocalError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(LocalError::Invalid(format!(
            "--node-name {name:?}: a node name is lower-case letters, digits, '-' and '.' (DNS-1123)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_dir_must_be_absolute_and_not_slash() {
        assert!(Layout::new(Path::new("relative/dir")).is_err());
        assert!(Layout::new(Path::new("/")).is_err());
        let l = Layout::new(Path::new("/var/lib/skiff-local")).unwrap();
        assert_eq!(
            l.server_kubeconfig(),
            Path::new("/var/lib/skiff-local/server/admin.kubeconfig")
        );
    }

    #[test]
    fn interface_names() {
        assert!(validate_ifname("skiff0").is_ok());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("a-very-long-bridge-name").is_err());
        assert!(validate_ifname("br/0").is_err());
    }

    #[test]
    fn cluster_cidrs() {
        assert!(validate_cluster_cidr("10.244.0.0/16").is_ok());
        assert!(validate_cluster_cidr("10.250.0.0/20").is_ok());
        assert!(validate_cluster_cidr("10.244.0.0/24").is_err());
        assert!(validate_cluster_cidr("10.244.1.0/16").is_err());
        assert!(validate_cluster_cidr("10.244.0.0").is_err());
        assert!(validate_cluster_cidr("fd00::/64").is_err());
    }

    #[test]
    fn node_names() {
        assert!(validate_node_name("node-1.lab").is_ok());
        assert!(validate_node_name("Node_1").is_err());
        assert!(validate_node_name("-x").is_err());
        assert!(validate_node_name("").is_err());
    }

    #[test]
    fn settings_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path()).unwrap();
        assert_eq!(Settings::load(&l).unwrap(), None);
        assert!(Settings::require(&l).is_err());
        let s = Settings {
            port: 6443,
            node_name: "n".into(),
            node_ip: "127.0.0.1".into(),
            bridge: "skiff0".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            bin_dir: "/usr/bin".into(),
            cgroup_root: None,
            masq_chain: "SKIFF-LOCAL-MASQ".into(),
            nodes: None,
            cluster_dns_bind: Some("192.0.2.10:53".parse().unwrap()),
        };
        s.save(&l).unwrap();
        assert_eq!(Settings::load(&l).unwrap(), Some(s));
    }
}
