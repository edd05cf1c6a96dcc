//! What a lab is: names, addresses and paths derived from a few settings, and the exact
//! command lines of its server and agents, so every start (and restart) runs the same thing.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::LabError;

/// The names Skiff's multi-call CNI binary answers to (it dispatches on argv[0]).
pub const PLUGIN_NAMES: [&str; 5] = [
    "bridge",
    "host-local",
    "loopback",
    "portmap",
    "skiff-overlay",
];

/// The underlay bridge inside the underlay namespace.
pub const BRIDGE: &str = "lab0";
/// Each node's end of its veth pair, inside the node namespace.
pub const NODE_IF: &str = "eth0";
/// The pod bridge inside each node namespace (namespaces keep the same name apart).
pub const POD_BRIDGE: &str = "skiff0";
/// The first node's address is the underlay network + this; node i gets + i more.
const FIRST_NODE_HOST: u32 = 11;
pub const MAX_NODES: usize = 200;
/// skiff-server's default ClusterIP range: node addresses inside it would be taken for
/// service addresses (the service proxy ignores such endpoints).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((ip.parse().ok()?, len))
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Prefix of every namespace and node name: `<name>-lab`, `<name>-node-<i>`.
    pub name: String,
    pub nodes: usize,
    /// The underlay /24: the bridge has .1, node i (from 1) has .(10 + i).
    pub underlay: Ipv4Addr,
    /// Everything on disk: `server/`, `nodes/<node>/`.
    pub root: PathBuf,
    /// skiff-server, skiff-agent, skiff-shim, skiff-cni.
    pub bin_dir: PathBuf,
    pub port: u16,
    pub cluster_cidr: String,
    /// Parent of the per-node cgroup roots; `None`: pods run in the agent's cgroup and
    /// limits are not enforced.
    pub cgroup_root: Option<PathBuf>,
    /// Registries the agents reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Resolvers the cluster DNS forwards other names to (default: the host's resolv.conf).
    pub dns_upstream: Vec<String>,
}

impl Spec {
    /// Checks what the kernel and the API server would otherwise reject later, with less
    /// helpful messages.
    pub fn validate(&self) -> Result<(), LabError> {
        let label_ok = !self.name.is_empty()
            && self.name.len() <= 40
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-')
            && !self.name.ends_with('-');
        if !label_ok {
            return Err(LabError::Invalid(format!(
                "lab name {:?}: use 1-40 lowercase letters, digits and '-' (it prefixes node names)",
                self.name
            )));
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(LabError::Invalid(format!(
                "--nodes {}: between 1 and {MAX_NODES}",
                self.nodes
            )));
        }
        if u32::from(self.underlay) & 0xff != 0 {
            return Err(LabError::Invalid(format!(
                "underlay {}: give the network address of a /24 (last octet 0)",
                self.underlay
            )));
        }
        let cluster = parse_cidr(&self.cluster_cidr).ok_or_else(|| {
            LabError::Invalid(format!(
                "cluster CIDR {:?} is not an IPv4 CIDR",
                self.cluster_cidr
            ))
        })?;
        for (what, net) in [
            ("the pod network", cluster),
            ("the service network 10.96.0.0/12", SERVICE_CIDR),
        ] {
            if overlaps((self.underlay, 24), net) {
                return Err(LabError::Invalid(format!(
                    "underlay {}/24 overlaps {what}",
                    self.underlay
                )));
            }
        }
        if !self.root.is_absolute() || self.root == Path::new("/") {
            return Err(LabError::Invalid(format!(
                "root dir {}: an absolute path other than /",
                self.root.display()
            )));
        }
        if self.port == 0 {
            return Err(LabError::Invalid("port 0 is not a port".into()));
        }
        Ok(())
    }

    pub fn underlay_netns(&self) -> String {
        format!("{}-lab", self.name)
    }

    /// Node `i` counts from 1; its network namespace has the node's name.
    pub fn node_name(&self, i: usize) -> String {
        format!("{}-node-{i}", self.name)
    }

    pub fn node_netns(&self, i: usize) -> String {
        self.node_name(i)
    }

    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.underlay) + 1)
    }

    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.underlay) + FIRST_NODE_HOST - 1 + i as u32)
    }

    /// The veth end on the underlay bridge for node `i` (inside the underlay namespace).
    pub fn underlay_if(&self, i: usize) -> String {
        format!("n{i}")
    }

    pub fn server_dir(&self) -> PathBuf {
        self.root.join("server")
    }

    /// Written by skiff-server on its first start; it names the bridge address, which is
    /// what the agents use.
    pub fn server_kubeconfig(&self) -> PathBuf {
        self.server_dir().join("admin.kubeconfig")
    }

    pub fn server_url(&self) -> String {
        format!("https://{}:{}", self.bridge_ip(), self.port)
    }

    pub fn node_root(&self, i: usize) -> PathBuf {
        self.root.join("nodes").join(self.node_name(i))
    }

    pub fn node_cni_conf_dir(&self, i: usize) -> PathBuf {
        self.node_root(i).join("cni/net.d")
    }

    pub fn node_cni_bin_dir(&self, i: usize) -> PathBuf {
        self.node_root(i).join("cni/bin")
    }

    pub fn node_cni_state_dir(&self, i: usize) -> PathBuf {
        self.node_root(i).join("cni/state")
    }

    pub fn node_subnet_file(&self, i: usize) -> PathBuf {
        self.node_root(i).join("run/subnet.env")
    }

    pub fn node_pod_logs_dir(&self, i: usize) -> PathBuf {
        self.node_root(i).join("pod-logs")
    }

    pub fn node_manifests_dir(&self, i: usize) -> PathBuf {
        self.node_root(i).join("manifests")
    }

    pub fn node_cgroup_root(&self, i: usize) -> Option<PathBuf> {
        self.cgroup_root.as_ref().map(|r| r.join(self.node_name(i)))
    }

    fn netns_arg(netns: &str) -> OsString {
        OsString::from(format!("--net=/run/netns/{netns}"))
    }

    /// `nsenter --net=/run/netns/NS --` in front of `argv`.
    pub fn in_netns(netns: &str, argv: Vec<OsString>) -> Vec<OsString> {
        let mut full = vec![
            OsString::from("nsenter"),
            Self::netns_arg(netns),
            OsString::from("--"),
        ];
        full.extend(argv);
        full
    }

    /// skiff-server inside the underlay namespace. It binds every address there (the
    /// namespace has only loopback and the bridge) and advertises the bridge address, which
    /// is what its kubeconfig, the `kubernetes` Service's endpoints and the certificate name.
    pub fn server_argv(&self) -> Vec<OsString> {
        let argv = vec![
            self.bin_dir.join("skiff-server").into_os_string(),
            "--data-dir".into(),
            self.server_dir().into_os_string(),
            "--bind-address".into(),
            "0.0.0.0".into(),
            "--advertise-address".into(),
            self.bridge_ip().to_string().into(),
            "--secure-port".into(),
            self.port.to_string().into(),
            "--cluster-cidr".into(),
            self.cluster_cidr.clone().into(),
        ];
        Self::in_netns(&self.underlay_netns(), argv)
    }

    /// skiff-agent for node `i` inside its namespace: the overlay, the service proxy and
    /// the cluster DNS on, every path under the node's root dir.
    pub fn agent_argv(&self, i: usize) -> Vec<OsString> {
        let os = |p: PathBuf| p.into_os_string();
        let mut argv: Vec<OsString> = vec![
            os(self.bin_dir.join("skiff-agent")),
            "--kubeconfig".into(),
            os(self.server_kubeconfig()),
            "--node-name".into(),
            self.node_name(i).into(),
            "--node-ip".into(),
            self.node_ip(i).to_string().into(),
            "--root-dir".into(),
            os(self.node_root(i)),
            "--pod-logs-dir".into(),
            os(self.node_pod_logs_dir(i)),
            "--cni-conf-dir".into(),
            os(self.node_cni_conf_dir(i)),
            "--cni-bin-dir".into(),
            os(self.node_cni_bin_dir(i)),
            "--subnet-file".into(),
            os(self.node_subnet_file(i)),
            "--cluster-cidr".into(),
            self.cluster_cidr.clone().into(),
            "--shim".into(),
            os(self.bin_dir.join("skiff-shim")),
            "--overlay".into(),
            "vxlan".into(),
            "--proxy-mode".into(),
            "iptables".into(),
            "--cluster-dns-bind".into(),
            format!("{}:53", self.node_ip(i)).into(),
            // The node's own static pods, never the machine's /etc/skiff/manifests.
            "--pod-manifest-path".into(),
            os(self.node_manifests_dir(i)),
        ];
        match self.node_cgroup_root(i) {
            Some(dir) => {
                argv.push("--cgroup-driver".into());
                argv.push("cgroupfs".into());
                argv.push("--cgroup-root".into());
                argv.push(os(dir));
            }
            None => argv.push("--allow-missing-cgroup-controllers".into()),
        }
        if !self.insecure_registries.is_empty() {
            argv.push("--insecure-registry".into());
            argv.push(self.insecure_registries.join(",").into());
        }
        if !self.dns_upstream.is_empty() {
            argv.push("--dns-upstream".into());
            argv.push(self.dns_upstream.join(",").into());
        }
        Self::in_netns(&self.node_netns(i), argv)
    }

    /// The node's CNI network: skiff-overlay (the node's podCIDR from the subnet file the
    /// agent writes) delegating to bridge + host-local, then portmap; all state under the
    /// node's root.
    pub fn conflist(&self, i: usize) -> serde_json::Value {
        let state = self.node_cni_state_dir(i);
        json!({
            "cniVersion": "1.0.0",
            "name": "skiff",
            "plugins": [
                {
                    "type": "skiff-overlay",
                    "subnetFile": self.node_subnet_file(i),
                    "dataDir": state.join("overlay"),
                    "delegate": {
                        "bridge": POD_BRIDGE,
                        "ipam": {"dataDir": state.join("ipam")}
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    /// The node's directories, its CNI conflist and the plugin links to skiff-cni.
    pub fn write_node_files(&self, i: usize) -> Result<(), LabError> {
        let bin = self.node_cni_bin_dir(i);
        let conf = self.node_cni_conf_dir(i);
        for dir in [
            &bin,
            &conf,
            &self.node_root(i).join("run"),
            &self.node_manifests_dir(i),
        ] {
            std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
        }
        let target = self.bin_dir.join("skiff-cni");
        for name in PLUGIN_NAMES {
            let link = bin.join(name);
            // Replaced every time: the binaries may have moved since the last start.
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LabError::io(&link, e)),
            }
            std::os::unix::fs::symlink(&target, &link).map_err(|e| LabError::io(&link, e))?;
        }
        let path = conf.join("10-skiff.conflist");
        let text = serde_json::to_string_pretty(&self.conflist(i)).expect("JSON");
        std::fs::write(&path, text).map_err(|e| LabError::io(&path, e))?;
        if let Some(cg) = self.node_cgroup_root(i) {
            std::fs::create_dir_all(&cg).map_err(|e| LabError::io(&cg, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn spec() -> Spec {
        Spec {
            name: "t1".into(),
            nodes: 3,
            underlay: "10.250.0.0".parse().unwrap(),
            root: "/r".into(),
            bin_dir: "/b".into(),
            port: 6443,
            cluster_cidr: "10.244.0.0/16".into(),
            cgroup_root: None,
            insecure_registries: vec!["10.250.0.1:5000".into()],
            dns_upstream: vec![],
        }
    }

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
        argv.iter()
            .position(|a| a == name)
            .map(|i| argv[i + 1].as_str())
    }

    #[test]
    fn names_and_addresses_follow_the_node_index() {
        let s = spec();
        assert_eq!(s.underlay_netns(), "t1-lab");
        assert_eq!(s.node_name(2), "t1-node-2");
        assert_eq!(s.bridge_ip().to_string(), "10.250.0.1");
        assert_eq!(s.node_ip(1).to_string(), "10.250.0.11");
        assert_eq!(s.node_ip(3).to_string(), "10.250.0.13");
        assert_eq!(s.server_url(), "https://10.250.0.1:6443");
        assert_eq!(s.node_root(2), Path::new("/r/nodes/t1-node-2"));
    }

    #[test]
    fn server_runs_in_the_underlay_and_advertises_the_bridge() {
        let a = strings(&spec().server_argv());
        assert_eq!(&a[..3], ["nsenter", "--net=/run/netns/t1-lab", "--"]);
        assert_eq!(a[3], "/b/skiff-server");
        assert_eq!(flag(&a, "--advertise-address"), Some("10.250.0.1"));
        assert_eq!(flag(&a, "--data-dir"), Some("/r/server"));
    }

    #[test]
    fn each_agent_runs_in_its_node_namespace_with_its_own_state() {
        let s = spec();
        let a = strings(&s.agent_argv(2));
        assert_eq!(a[1], "--net=/run/netns/t1-node-2");
        assert_eq!(flag(&a, "--node-ip"), Some("10.250.0.12"));
        assert_eq!(flag(&a, "--root-dir"), Some("/r/nodes/t1-node-2"));
        assert_eq!(flag(&a, "--overlay"), Some("vxlan"));
        assert_eq!(flag(&a, "--proxy-mode"), Some("iptables"));
        assert_eq!(flag(&a, "--cluster-dns-bind"), Some("10.250.0.12:53"));
        assert_eq!(flag(&a, "--insecure-registry"), Some("10.250.0.1:5000"));
        assert!(a.contains(&"--allow-missing-cgroup-controllers".to_string()));
        assert_eq!(flag(&a, "--dns-upstream"), None);
        let mut with_cg = s.clone();
        with_cg.cgroup_root = Some("/sys/fs/cgroup/lab".into());
        let a = strings(&with_cg.agent_argv(1));
        assert_eq!(
            flag(&a, "--cgroup-root"),
            Some("/sys/fs/cgroup/lab/t1-node-1")
        );
        assert_eq!(
            flag(&strings(&s.agent_argv(1)), "--pod-manifest-path"),
            Some("/r/nodes/t1-node-1/manifests")
        );
        // No two agents share a path.
        let (one, two) = (strings(&s.agent_argv(1)), strings(&s.agent_argv(2)));
        for f in [
            "--root-dir",
            "--cni-conf-dir",
            "--subnet-file",
            "--pod-logs-dir",
            "--pod-manifest-path",
        ] {
            assert_ne!(flag(&one, f), flag(&two, f), "{f}");
        }
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        for (tweak, needle) in [
            (
                Box::new(|s: &mut Spec| s.name = "Bad_Name".into()) as Box<dyn Fn(&mut Spec)>,
                "lab name",
            ),
            (Box::new(|s: &mut Spec| s.nodes = 0), "--nodes"),
            (
                Box::new(|s: &mut Spec| s.underlay = "10.99.0.0".parse().unwrap()),
                "overlaps the service network",
            ),
            (
                Box::new(|s: &mut Spec| s.underlay = "10.244.3.0".parse().unwrap()),
                "overlaps the pod network",
            ),
            (
                Box::new(|s: &mut Spec| s.cluster_cidr = "10.244.0.0".into()),
                "not an IPv4 CIDR",
            ),
            (
                Box::new(|s: &mut Spec| s.underlay = "10.250.0.7".parse().unwrap()),
                "last octet",
            ),
            (Box::new(|s: &mut Spec| s.root = "rel".into()), "absolute"),
            (Box::new(|s: &mut Spec| s.port = 0), "port"),
        ] {
            let mut s = spec();
            tweak(&mut s);
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn node_files_link_the_plugins_and_keep_state_under_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.root = dir.path().to_path_buf();
        s.write_node_files(1).unwrap();
        s.write_node_files(1).unwrap();
        for name in PLUGIN_NAMES {
            assert_eq!(
                std::fs::read_link(s.node_cni_bin_dir(1).join(name)).unwrap(),
                Path::new("/b/skiff-cni")
            );
        }
        let text =
            std::fs::read_to_string(s.node_cni_conf_dir(1).join("10-skiff.conflist")).unwrap();
        let c: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            c["plugins"][0]["subnetFile"],
            s.node_subnet_file(1).display().to_string()
        );
        assert!(c["plugins"][0]["delegate"]["ipam"]["dataDir"]
            .as_str()
            .unwrap()
            .starts_with(&s.node_root(1).display().to_string()));
    }
}
