//! `skiffadm reset`: undo init or join — units, pods, the pod network's links and iptables
//! chains, cgroups, mounts and Skiff's directories — and nothing else. Teardown goes on past
//! errors and reports them all at the end; running it twice is harmless.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{NodeError, Paths, AGENT_UNIT, BRIDGE, SERVER_UNIT, VXLAN_DEVICE};
use crate::local::{network, stop};

/// Prefixes of the iptables chains Skiff's agent and CNI plugins make.
pub const CHAIN_PREFIXES: [&str; 2] = ["KUBE-", "SKIFF-"];
/// The systemd cgroup driver's slice for pods (pods of both QoS classes live below it).
pub const PODS_SLICE: &str = "kubepods.slice";

/// The directories reset removes, deepest first, and the unit files.
pub fn removals(paths: &Paths) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let dirs = vec![
        paths.run.clone(),
        paths.state.clone(),
        paths.etc.clone(),
        // Only the plugin links init/join made; the binaries stay, as kubeadm leaves kubelet.
        paths.cni_bin_dir.clone(),
    ];
    let units = vec![
        paths.unit_dir.join(AGENT_UNIT),
        paths.unit_dir.join(SERVER_UNIT),
    ];
    (dirs, units)
}

/// The veths plugged into Skiff's bridge, from `ip -o link show master <bridge>`.
pub fn bridge_ports(ip_output: &str) -> Vec<String> {
    ip_output
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

fn systemctl_quiet(args: &[&str]) {
    let _ = Command::new("systemctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

fn delete_link(name: &str, errors: &mut Vec<String>) {
    if network::link_exists(name) {
        match Command::new("ip").args(["link", "del", name]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => errors.push(format!(
                "ip link del {name}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => errors.push(format!("ip link del {name}: {e}")),
        }
    }
}

fn remove_dir(dir: &Path, errors: &mut Vec<String>) {
    if !dir.exists() {
        return;
    }
    let mounted = skiff_lab::sweep::mounts_under(dir);
    if !mounted.is_empty() {
        // Never recurse into a mount: it could reach outside Skiff's tree.
        errors.push(format!(
            "{} kept: still mounted under it: {mounted:?}",
            dir.display()
        ));
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        errors.push(format!("removing {}: {e}", dir.display()));
    }
}

pub fn run() -> anyhow::Result<()> {
    super::init::require_root()?;
    let paths = Paths::standard();
    let mut errors = Vec::new();
    let systemd = super::System::systemd_is_init(&super::RealSystem);
    if systemd {
        for unit in [AGENT_UNIT, SERVER_UNIT] {
            systemctl_quiet(&["disable", "--now", unit]);
        }
        println!("[reset] stopped and disabled {AGENT_UNIT} and {SERVER_UNIT}");
    }
    let agent = paths.agent_root();
    stop::remove_sandboxes_in(
        &agent,
        &paths.cni_conf_dir(),
        &paths.cni_bin_dir,
        &mut errors,
    );
    skiff_lab::sweep::remove_containers_in(
        &paths.bin_dir.join("skiff-shim"),
        &agent.join("shim"),
        &mut errors,
    );
    if systemd {
        // Whatever the shims left in the pods' slice goes with it.
        systemctl_quiet(&["stop", PODS_SLICE]);
    }
    for root in [&paths.state, &paths.run] {
        for pid in skiff_lab::sweep::processes_under(root) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            stop::wait_gone(pid, Duration::from_secs(5));
        }
    }
    for root in [&paths.state, &paths.run] {
        for m in skiff_lab::sweep::mounts_under(root) {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                errors.push(format!("umount {}: {e}", m.display()));
            }
        }
    }
    println!("[reset] removed pods, containers and mounts");
    if let Ok(o) = Command::new("ip")
        .args(["-o", "link", "show", "master", BRIDGE])
        .output()
    {
        for port in bridge_ports(&String::from_utf8_lossy(&o.stdout)) {
            delete_link(&port, &mut errors);
        }
    }
    delete_link(BRIDGE, &mut errors);
    delete_link(VXLAN_DEVICE, &mut errors);
    network::remove_chains(&CHAIN_PREFIXES, &mut errors);
    println!(
        "[reset] removed links {BRIDGE}, {VXLAN_DEVICE} and the KUBE-*/SKIFF-* iptables chains"
    );
    let cgroup = Path::new("/sys/fs/cgroup").join(PODS_SLICE);
    let mut cg_errors = Vec::new();
    skiff_lab::sweep::remove_cgroup_tree(&cgroup, &mut cg_errors);
    // The slice may already be gone (stopped above), which is the good case.
    errors.extend(
        cg_errors
            .into_iter()
            .filter(|e| !e.contains("No such file")),
    );
    let (dirs, units) = removals(&paths);
    for dir in &dirs {
        remove_dir(dir, &mut errors);
    }
    for unit in &units {
        match std::fs::remove_file(unit) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(NodeError::io(unit, e).to_string()),
        }
    }
    if systemd {
        systemctl_quiet(&["daemon-reload"]);
        systemctl_quiet(&["reset-failed", AGENT_UNIT, SERVER_UNIT]);
    }
    println!(
        "[reset] removed {} and the units",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if errors.is_empty() {
        println!(
            "[reset] done; $HOME/.kube/config is left alone (remove it if it names this cluster)"
        );
        Ok(())
    } else {
        anyhow::bail!("reset left things behind:\n  {}", errors.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_skiffs_directories() {
        let (dirs, units) = removals(&Paths::standard());
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "/run/skiff",
                "/var/lib/skiff",
                "/etc/skiff",
                "/usr/libexec/skiff/cni"
            ]
        );
        assert_eq!(
            units,
            [
                PathBuf::from("/etc/systemd/system/skiff-agent.service"),
                PathBuf::from("/etc/systemd/system/skiff-server.service")
            ]
        );
    }

    #[test]
    fn bridge_ports_are_read_from_ip_link() {
        let out = "7: veth1a2b3c4d@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue master skiff0 state UP mode DEFAULT group default \\    link/ether 2a:1b:00:00:00:01 brd ff:ff:ff:ff:ff:ff link-netns cni-1\n9: vethffff0000@if2: <BROADCAST> mtu 1450 master skiff0\n";
        assert_eq!(bridge_ports(out), ["veth1a2b3c4d", "vethffff0000"]);
        assert!(bridge_ports("").is_empty());
    }

    #[test]
    fn chain_cleanup_covers_skiffs_chains_and_leaves_others() {
        let save = "*nat\n:POSTROUTING ACCEPT [0:0]\n:SKIFF-OVERLAY-POSTRTG - [0:0]\n:KUBE-SERVICES - [0:0]\n:DOCKER - [0:0]\n-A POSTROUTING -j SKIFF-OVERLAY-POSTRTG\n-A POSTROUTING -j DOCKER\nCOMMIT\n";
        let text = network::chains_cleanup("nat", save, &CHAIN_PREFIXES).unwrap();
        assert!(
            text.contains("-D POSTROUTING -j SKIFF-OVERLAY-POSTRTG\n"),
            "{text}"
        );
        assert!(
            text.contains("-X SKIFF-OVERLAY-POSTRTG\n") && text.contains("-X KUBE-SERVICES\n"),
            "{text}"
        );
        assert!(!text.contains("DOCKER"), "{text}");
    }
}
