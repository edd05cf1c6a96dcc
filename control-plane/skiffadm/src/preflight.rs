//! `skiffadm preflight`: what a node needs before `init` or `join`, each check naming what it
//! found and how to fix it, with kubeadm's `--ignore-preflight-errors` escape hatch.

use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The name `--ignore-preflight-errors` takes (kubeadm's where one exists).
    pub check: &'static str,
    pub severity: Severity,
    pub message: String,
}

/// Where the checks look; tests point this at a fake tree.
pub struct Host {
    pub proc: PathBuf,
    pub etc: PathBuf,
    pub mounts: String,
    pub pid1_comm: String,
    pub path_dirs: Vec<PathBuf>,
    pub cpus: usize,
    /// Ports to probe by binding them, `(port, udp)`.
    pub ports: Vec<(u16, bool)>,
    /// Where the node's cluster DNS will listen (`<node-ip>:53`), probed on UDP and TCP: a
    /// resolver of the host bound to that address or to the wildcard would take it.
    pub dns: Option<std::net::SocketAddr>,
}

impl Host {
    pub fn real() -> Self {
        Self {
            proc: "/proc".into(),
            etc: "/etc".into(),
            mounts: std::fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
            pid1_comm: std::fs::read_to_string("/proc/1/comm")
                .unwrap_or_default()
                .trim()
                .to_string(),
            path_dirs: std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            ports: vec![(6443, false), (10250, false), (8472, true)],
            dns: None,
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn cgroup2_root(mounts: &str) -> Option<String> {
    let found: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then_some(f[1])
        })
        .collect();
    found
        .iter()
        .find(|p| **p == "/sys/fs/cgroup")
        .or(found.first())
        .map(|s| s.to_string())
}

fn port_free(port: u16, udp: bool) -> bool {
    if udp {
        std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok()
    } else {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    }
}

/// Runs every check; `cgroup_root_override` lets tests supply the cgroup v2 directory.
pub fn run(host: &Host, cgroup_dir_override: Option<&Path>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut err = |check: &'static str, message: String| {
        out.push(Finding {
            check,
            severity: Severity::Error,
            message,
        })
    };
    let swaps = read(&host.proc.join("swaps"));
    let devices: Vec<&str> = swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if !devices.is_empty() {
        err("Swap", format!("swap is on ({}): run `swapoff -a` and comment out swap lines in /etc/fstab (and `systemctl mask swap.target`) so it stays off", devices.join(", ")));
    }
    match cgroup2_root(&host.mounts) {
        None => err("SystemVerification", "no cgroup v2 hierarchy is mounted: boot with `systemd.unified_cgroup_hierarchy=1` on the kernel command line".into()),
        Some(root) => {
            let dir = cgroup_dir_override.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(&root));
            let controllers = read(&dir.join("cgroup.controllers"));
            let missing: Vec<&str> = ["cpu", "memory", "pids"].into_iter().filter(|c| !controllers.split_whitespace().any(|x| x == *c)).collect();
            if root != "/sys/fs/cgroup" {
                err("SystemVerification", format!("cgroup v2 is mounted at {root}, not as the unified hierarchy at /sys/fs/cgroup (hybrid mode): boot with `systemd.unified_cgroup_hierarchy=1`"));
            }
            if !missing.is_empty() {
                err("SystemVerification", format!("the cgroup v2 hierarchy at {root} lacks the controllers {missing:?} (they are bound to cgroup v1 or disabled): boot with `systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all`"));
            }
        }
    }
    if host.pid1_comm != "systemd" {
        err("SystemdPID1", format!("PID 1 is {:?}, not systemd: Skiff's units and the systemd cgroup driver need systemd as init", host.pid1_comm));
    }
    if host.cpus < 2 {
        err(
            "NumCPU",
            format!(
                "the number of available CPUs {} is less than the required 2",
                host.cpus
            ),
        );
    }
    let meminfo = read(&host.proc.join("meminfo"));
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if mem_kib < 1_700 * 1024 {
        err(
            "Mem",
            format!(
                "the system RAM ({} MB) is less than the minimum 1700 MB",
                mem_kib / 1024
            ),
        );
    }
    if read(&host.proc.join("sys/net/ipv4/ip_forward")) != "1" {
        err("FileContent--proc-sys-net-ipv4-ip_forward", "/proc/sys/net/ipv4/ip_forward is not 1: run `sysctl -w net.ipv4.ip_forward=1` and persist it in /etc/sysctl.d/99-skiff.conf".into());
    }
    if !host
        .proc
        .join("sys/net/bridge/bridge-nf-call-iptables")
        .exists()
    {
        err("FileExisting-br_netfilter", "the br_netfilter module is not loaded: run `modprobe br_netfilter` and add it to /etc/modules-load.d/skiff.conf".into());
    } else if read(&host.proc.join("sys/net/bridge/bridge-nf-call-iptables")) != "1" {
        err("FileContent--proc-sys-net-bridge-bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-iptables is not 1: run `sysctl -w net.bridge.bridge-nf-call-iptables=1`".into());
    }
    for binary in ["iptables", "iptables-restore", "ip"] {
        if !host.path_dirs.iter().any(|d| d.join(binary).is_file()) {
            err("FileExisting-iptables", format!("{binary} not found in PATH: install Debian's `iptables` and `iproute2` packages"));
        }
    }
    for (port, udp) in &host.ports {
        if !port_free(*port, *udp) {
            err("Port", format!("port {port}/{} is in use: stop whatever listens there (`ss -lntup | grep {port}`)", if *udp { "udp" } else { "tcp" }));
        }
    }
    if let Some(addr) = host.dns {
        let taken: Vec<&str> = [
            ("udp", std::net::UdpSocket::bind(addr).is_err()),
            ("tcp", std::net::TcpListener::bind(addr).is_err()),
        ]
        .into_iter()
        .filter_map(|(proto, taken)| taken.then_some(proto))
        .collect();
        if !taken.is_empty() {
            err("ClusterDNS", format!(
                "{addr} ({}) is in use, and the node's cluster DNS listens there: stop the DNS server that holds it (`ss -lntup | grep ':{} '`; systemd-resolved's 127.0.0.53 does not collide), or pass --cluster-dns-port with a free port (pods still ask 10.96.0.10:53)",
                taken.join(", "),
                addr.port()
            ));
        }
    }
    let hostname = read(&host.proc.join("sys/kernel/hostname"));
    if hostname.is_empty() || hostname == "localhost" {
        out.push(Finding {
            check: "Hostname",
            severity: Severity::Warning,
            message: format!(
                "hostname {hostname:?} is not unique: set one with `hostnamectl set-hostname NAME`"
            ),
        });
    }
    if read(&host.etc.join("machine-id")).is_empty() {
        out.push(Finding { check: "MachineID", severity: Severity::Warning, message: "/etc/machine-id is empty: VMs cloned from one image need `systemd-machine-id-setup` each".into() });
    }
    out
}

/// Whether the findings stop `init`/`join`, given `--ignore-preflight-errors`.
pub fn blocking<'a>(findings: &'a [Finding], ignore: &[String]) -> Vec<&'a Finding> {
    let all = ignore.iter().any(|i| i.eq_ignore_ascii_case("all"));
    findings
        .iter()
        .filter(|f| {
            f.severity == Severity::Error
                && !all
                && !ignore.iter().any(|i| i.eq_ignore_ascii_case(f.check))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(dir: &Path, swap: bool, forward: &str) -> Host {
        let proc = dir.join("proc");
        std::fs::create_dir_all(proc.join("sys/net/ipv4")).unwrap();
        std::fs::create_dir_all(proc.join("sys/net/bridge")).unwrap();
        std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        let swaps = if swap {
            "Filename Type Size Used Priority\n/swap.img file 1 0 -2\n"
        } else {
            "Filename Type Size Used Priority\n"
        };
        std::fs::write(proc.join("swaps"), swaps).unwrap();
        std::fs::write(proc.join("meminfo"), "MemTotal: 4000000 kB\n").unwrap();
        std::fs::write(proc.join("sys/net/ipv4/ip_forward"), forward).unwrap();
        std::fs::write(proc.join("sys/net/bridge/bridge-nf-call-iptables"), "1").unwrap();
        std::fs::write(proc.join("sys/kernel/hostname"), "node-a").unwrap();
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("machine-id"), "abc").unwrap();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for b in ["iptables", "iptables-restore", "ip"] {
            std::fs::write(bin.join(b), "").unwrap();
        }
        let cg = dir.join("cgroup");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        Host {
            proc,
            etc,
            mounts: "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n".into(),
            pid1_comm: "systemd".into(),
            path_dirs: vec![bin],
            cpus: 2,
            ports: vec![],
            dns: None,
        }
    }

    #[test]
    fn a_good_host_passes_and_a_bad_one_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let good = fake(dir.path(), false, "1");
        assert_eq!(run(&good, Some(&dir.path().join("cgroup"))), vec![]);
        let bad_dir = tempfile::tempdir().unwrap();
        let mut bad = fake(bad_dir.path(), true, "0");
        bad.pid1_comm = "sh".into();
        bad.cpus = 1;
        bad.mounts = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n".into();
        std::fs::write(bad_dir.path().join("cgroup/cgroup.controllers"), "").unwrap();
        let findings = run(&bad, Some(&bad_dir.path().join("cgroup")));
        let checks: Vec<&str> = findings.iter().map(|f| f.check).collect();
        for c in [
            "Swap",
            "SystemVerification",
            "SystemdPID1",
            "NumCPU",
            "FileContent--proc-sys-net-ipv4-ip_forward",
        ] {
            assert!(checks.contains(&c), "{c} missing from {checks:?}");
        }
        assert!(findings
            .iter()
            .find(|f| f.check == "Swap")
            .unwrap()
            .message
            .contains("swapoff -a"));
        assert_eq!(blocking(&findings, &[]).len(), findings.len());
        assert!(blocking(&findings, &["all".into()]).is_empty());
        let rest = blocking(&findings, &["swap".into(), "NumCPU".into()]);
        assert!(rest
            .iter()
            .all(|f| f.check != "Swap" && f.check != "NumCPU"));
    }

    #[test]
    fn a_taken_port_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = fake(dir.path(), false, "1");
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        host.ports = vec![(taken.local_addr().unwrap().port(), false)];
        let findings = run(&host, Some(&dir.path().join("cgroup")));
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].check, "Port");
    }

    #[test]
    fn a_taken_cluster_dns_address_is_reported_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = fake(dir.path(), false, "1");
        // Only the UDP side is held: the finding names that protocol alone.
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        host.dns = Some(held.local_addr().unwrap());
        let findings = run(&host, Some(&dir.path().join("cgroup")));
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].check, "ClusterDNS");
        let m = &findings[0].message;
        assert!(
            m.contains("(udp)") && m.contains("--cluster-dns-port"),
            "{m}"
        );
        drop(held);
        assert_eq!(run(&host, Some(&dir.path().join("cgroup"))), vec![]);
    }
}
