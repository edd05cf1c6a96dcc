//! Checks made before the agent starts, like kubelet's: each failure names what was found
//! and how to fix it.

use std::path::{Path, PathBuf};

/// Where the checks look; tests point these at fake files.
pub struct Host {
    pub proc_swaps: PathBuf,
    /// The cgroup v2 mount: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified`
    /// on a hybrid one (like this project's CI machine), none on a v1-only host.
    pub cgroup_root: Option<PathBuf>,
}

impl Default for Host {
    fn default() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        Self {
            proc_swaps: "/proc/swaps".into(),
            cgroup_root: skiff_shim::cgroup::cgroup2_mount_in(&mounts),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error("swap is on ({0}); turn it off with `swapoff -a` and remove swap entries from /etc/fstab, or start with --fail-swap-on=false")]
    SwapOn(String),
    #[error("no cgroup v2 hierarchy is mounted{0}; boot with systemd.unified_cgroup_hierarchy=1")]
    NoCgroupV2(String),
    #[error("the cgroup v2 hierarchy at {root} lacks the controllers {missing:?}; limits cannot be enforced. Enable them (they may be bound to cgroup v1), or start with --allow-missing-cgroup-controllers to run pods without enforced limits")]
    MissingControllers { root: String, missing: Vec<String> },
    #[error("--cgroup-driver=systemd, but systemd is not running on this host ({0} does not exist); start with --cgroup-driver=cgroupfs --cgroup-root DIR")]
    DriverMismatch(String),
    #[error("this agent's cgroup driver is {own}, but the cluster's {origin} says {advertised}: start it with --cgroup-driver={advertised} (every node of a cluster uses one driver, as with kubeadm's kubelet-config)")]
    ClusterDriverMismatch {
        own: crate::cgroups::Driver,
        advertised: String,
        origin: String,
    },
}

/// Where the control plane advertises the nodes' configuration (`skiffadm init` writes it),
/// as kubeadm keeps the kubelet's in `kube-system/kubelet-config`.
pub const AGENT_CONFIG_NAMESPACE: &str = "kube-system";
pub const AGENT_CONFIG_NAME: &str = "skiff-agent-config";
pub const AGENT_CONFIG_DRIVER_KEY: &str = "cgroupDriver";

/// The agent's driver against the one the cluster advertises (none advertised: any driver).
pub fn check_cluster_cgroup_driver(
    own: crate::cgroups::Driver,
    advertised: Option<&str>,
) -> Result<(), PreflightError> {
    match advertised.map(str::trim) {
        None | Some("") => Ok(()),
        Some(a) if a == own.to_string() => Ok(()),
        Some(a) => Err(PreflightError::ClusterDriverMismatch {
            own,
            advertised: a.to_string(),
            origin: format!(
                "ConfigMap {AGENT_CONFIG_NAMESPACE}/{AGENT_CONFIG_NAME} ({AGENT_CONFIG_DRIVER_KEY})"
            ),
        }),
    }
}

/// kubelet's driver check: the systemd driver needs systemd as init, which
/// `systemd_marker` (`/run/systemd/system`) shows.
pub fn check_cgroup_driver(
    driver: crate::cgroups::Driver,
    systemd_marker: &Path,
) -> Result<(), PreflightError> {
    if driver == crate::cgroups::Driver::Systemd && !systemd_marker.exists() {
        return Err(PreflightError::DriverMismatch(
            systemd_marker.display().to_string(),
        ));
    }
    Ok(())
}

/// Active swap devices, from /proc/swaps (a header line, then one line per device).
pub fn active_swap(swaps: &Path) -> Vec<String> {
    std::fs::read_to_string(swaps)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

pub fn check_swap(host: &Host) -> Result<(), PreflightError> {
    let devices = active_swap(&host.proc_swaps);
    if devices.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::SwapOn(devices.join(", ")))
    }
}

/// What the cgroup v2 hierarchy offers: `Err` if there is none, else the missing controllers.
pub fn cgroup_controllers(host: &Host) -> Result<Vec<String>, PreflightError> {
    let root = host
        .cgroup_root
        .as_ref()
        .ok_or_else(|| PreflightError::NoCgroupV2(String::new()))?;
    let file = root.join("cgroup.controllers");
    let text = std::fs::read_to_string(&file).map_err(|_| {
        PreflightError::NoCgroupV2(format!(" ({} has no cgroup.controllers)", root.display()))
    })?;
    let present: Vec<&str> = text.split_whitespace().collect();
    Ok(["cpu", "memory", "pids"]
        .iter()
        .filter(|c| !present.contains(c))
        .map(|c| c.to_string())
        .collect())
}

/// Whether resource limits are enforced on this node; refuses to start where kubelet would.
pub fn check_cgroups(host: &Host, allow_missing: bool) -> Result<bool, PreflightError> {
    let missing = cgroup_controllers(host)?;
    if missing.is_empty() {
        return Ok(true);
    }
    if allow_missing {
        return Ok(false);
    }
    let root = host
        .cgroup_root
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Err(PreflightError::MissingControllers { root, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(dir: &Path, swaps: &str, controllers: Option<&str>) -> Host {
        std::fs::write(dir.join("swaps"), swaps).unwrap();
        let cg = dir.join("cgroup");
        std::fs::create_dir_all(&cg).unwrap();
        if let Some(c) = controllers {
            std::fs::write(cg.join("cgroup.controllers"), c).unwrap();
        }
        Host {
            proc_swaps: dir.join("swaps"),
            cgroup_root: Some(cg),
        }
    }

    #[test]
    fn swap_refuses_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(
            dir.path(),
            "Filename Type Size Used Priority\n/swapfile file 1024 0 -2\n",
            Some("cpu memory pids"),
        );
        let err = check_swap(&h).unwrap_err();
        assert_eq!(err, PreflightError::SwapOn("/swapfile".into()));
        assert!(err.to_string().contains("swapoff -a"));
        let h = host(
            dir.path(),
            "Filename Type Size Used Priority\n",
            Some("cpu memory pids"),
        );
        assert!(check_swap(&h).is_ok());
    }

    #[test]
    fn cgroup_controllers_decide_enforcement() {
        let dir = tempfile::tempdir().unwrap();
        let full = host(dir.path(), "", Some("cpuset cpu io memory pids"));
        assert_eq!(check_cgroups(&full, false), Ok(true));
        let bare = host(dir.path(), "", Some(""));
        assert!(
            matches!(check_cgroups(&bare, false), Err(PreflightError::MissingControllers { ref missing, .. }) if missing.len() == 3)
        );
        assert_eq!(check_cgroups(&bare, true), Ok(false));
        let none_dir = tempfile::tempdir().unwrap();
        let none = host(none_dir.path(), "", None);
        assert!(matches!(
            check_cgroups(&none, true),
            Err(PreflightError::NoCgroupV2(_))
        ));
        let v1_only = Host {
            proc_swaps: none.proc_swaps.clone(),
            cgroup_root: None,
        };
        assert!(matches!(
            check_cgroups(&v1_only, true),
            Err(PreflightError::NoCgroupV2(_))
        ));
    }

    #[test]
    fn systemd_driver_needs_systemd() {
        use crate::cgroups::Driver;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("run-systemd-system");
        assert_eq!(check_cgroup_driver(Driver::Cgroupfs, &marker), Ok(()));
        let err = check_cgroup_driver(Driver::Systemd, &marker).unwrap_err();
        assert!(
            matches!(err, PreflightError::DriverMismatch(ref m) if m.ends_with("run-systemd-system"))
        );
        assert!(err.to_string().contains("--cgroup-driver=cgroupfs"));
        std::fs::create_dir(&marker).unwrap();
        assert_eq!(check_cgroup_driver(Driver::Systemd, &marker), Ok(()));
    }

    #[test]
    fn the_cluster_driver_must_match_when_advertised() {
        use crate::cgroups::Driver;
        assert!(check_cluster_cgroup_driver(Driver::Cgroupfs, None).is_ok());
        assert!(check_cluster_cgroup_driver(Driver::Systemd, Some("systemd")).is_ok());
        assert!(check_cluster_cgroup_driver(Driver::Systemd, Some(" systemd\n")).is_ok());
        let err = check_cluster_cgroup_driver(Driver::Cgroupfs, Some("systemd")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("cgroupfs")
                && text.contains("--cgroup-driver=systemd")
                && text.contains("kube-system/skiff-agent-config"),
            "{text}"
        );
    }
}
