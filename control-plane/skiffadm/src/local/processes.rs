//! The command lines of the two supervised processes, built from the layout and settings
//! alone so that every restart runs exactly the same thing.

use std::ffi::OsString;
use std::path::Path;

use super::layout::{Layout, Settings};

/// The binaries local mode runs, found in the settings' bin dir.
pub const BINARIES: [&str; 4] = ["skiff-server", "skiff-agent", "skiff-shim", "skiff-cni"];

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

fn bin(settings: &Settings, name: &str) -> OsString {
    os(settings.bin_dir.join(name))
}

pub fn server_command(layout: &Layout, s: &Settings) -> Vec<OsString> {
    vec![
        bin(s, "skiff-server"),
        os("--data-dir"),
        os(layout.server_dir()),
        // Loopback only: a local cluster is not exposed to the network.
        os("--bind-address"),
        os("127.0.0.1"),
        os("--advertise-address"),
        os("127.0.0.1"),
        os("--secure-port"),
        os(s.port.to_string()),
        os("--cluster-cidr"),
        os(&s.cluster_cidr),
    ]
}

pub fn agent_command(layout: &Layout, s: &Settings) -> Vec<OsString> {
    let mut argv = vec![
        bin(s, "skiff-agent"),
        os("--kubeconfig"),
        os(layout.server_kubeconfig()),
        os("--node-name"),
        os(&s.node_name),
        os("--node-ip"),
        os(&s.node_ip),
        os("--root-dir"),
        os(layout.agent_dir()),
        // The node's own static-pod directory, not the machine's /etc/skiff/manifests
        // (which belongs to a node `skiffadm init` set up).
        os("--pod-manifest-path"),
        os(layout.agent_dir().join("manifests")),
        os("--pod-logs-dir"),
        os(layout.pod_logs_dir()),
        os("--cni-conf-dir"),
        os(layout.cni_conf_dir()),
        os("--cni-bin-dir"),
        os(layout.cni_bin_dir()),
        os("--subnet-file"),
        os(layout.subnet_file()),
        os("--cluster-cidr"),
        os(&s.cluster_cidr),
        os("--shim"),
        bin(s, "skiff-shim"),
    ];
    match &s.cgroup_root {
        Some(root) => {
            argv.push(os("--cgroup-root"));
            argv.push(os(root));
        }
        None => argv.push(os("--allow-missing-cgroup-controllers")),
    }
    if let Some(bind) = s.cluster_dns_bind {
        argv.push(os("--cluster-dns-bind"));
        argv.push(os(bind.to_string()));
    }
    argv
}

/// Binaries missing from `dir`, by name.
pub fn missing_binaries(dir: &Path) -> Vec<&'static str> {
    BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn settings(cgroup_root: Option<PathBuf>) -> Settings {
        Settings {
            port: 7443,
            node_name: "box".into(),
            node_ip: "192.0.2.10".into(),
            bridge: "skiff0".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            bin_dir: "/opt/skiff/bin".into(),
            cgroup_root,
            masq_chain: "SKIFF-LOCAL-MASQ".into(),
            nodes: None,
            cluster_dns_bind: None,
        }
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    fn after<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
        argv.iter()
            .position(|a| a == flag)
            .map(|i| argv[i + 1].as_str())
    }

    #[test]
    fn server_runs_on_loopback_with_the_chosen_port_and_store() {
        let l = Layout::new(Path::new("/r")).unwrap();
        let argv = strings(server_command(&l, &settings(None)));
        assert_eq!(argv[0], "/opt/skiff/bin/skiff-server");
        assert_eq!(after(&argv, "--data-dir"), Some("/r/server"));
        assert_eq!(after(&argv, "--secure-port"), Some("7443"));
        assert_eq!(after(&argv, "--bind-address"), Some("127.0.0.1"));
        assert_eq!(after(&argv, "--cluster-cidr"), Some("10.244.0.0/16"));
    }

    #[test]
    fn agent_paths_all_live_under_the_root() {
        let l = Layout::new(Path::new("/r")).unwrap();
        let argv = strings(agent_command(&l, &settings(None)));
        for flag in [
            "--kubeconfig",
            "--root-dir",
            "--pod-logs-dir",
            "--cni-conf-dir",
            "--cni-bin-dir",
            "--subnet-file",
        ] {
            assert!(
                after(&argv, flag).is_some_and(|p| p.starts_with("/r/")),
                "{flag} in {argv:?}"
            );
        }
        assert_eq!(after(&argv, "--node-ip"), Some("192.0.2.10"));
        assert_eq!(after(&argv, "--shim"), Some("/opt/skiff/bin/skiff-shim"));
        assert!(argv.contains(&"--allow-missing-cgroup-controllers".to_string()));
        assert!(!argv.contains(&"--cgroup-root".to_string()));
        let with_cgroups = strings(agent_command(
            &l,
            &settings(Some("/sys/fs/cgroup/skiff-local".into())),
        ));
        assert_eq!(
            after(&with_cgroups, "--cgroup-root"),
            Some("/sys/fs/cgroup/skiff-local")
        );
        assert!(!with_cgroups.contains(&"--allow-missing-cgroup-controllers".to_string()));
    }

    #[test]
    fn cluster_dns_is_served_only_where_up_chose_an_address() {
        let l = Layout::new(Path::new("/r")).unwrap();
        let off = strings(agent_command(&l, &settings(None)));
        assert_eq!(after(&off, "--cluster-dns-bind"), None);
        let mut s = settings(None);
        s.cluster_dns_bind = Some("192.0.2.10:10053".parse().unwrap());
        let on = strings(agent_command(&l, &s));
        assert_eq!(after(&on, "--cluster-dns-bind"), Some("192.0.2.10:10053"));
    }

    #[test]
    fn reports_missing_binaries() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(missing_binaries(dir.path()), BINARIES.to_vec());
        for b in ["skiff-server", "skiff-shim"] {
            std::fs::write(dir.path().join(b), "").unwrap();
        }
        assert_eq!(
            missing_binaries(dir.path()),
            vec!["skiff-agent", "skiff-cni"]
        );
    }
}
