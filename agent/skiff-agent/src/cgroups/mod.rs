//! Pod cgroups (cgroup v2 only) behind a [`CgroupManager`] picked at start, as youki's
//! libcgroups and kubelet do: the `cgroupfs` driver makes directories under a root, the
//! `systemd` driver asks systemd for transient slices. Either way the layout is
//! kubelet's: `kubepods` → `burstable` | `besteffort` (Guaranteed pods sit directly under
//! `kubepods`) → the pod → its containers, the last created by skiff-shim from the
//! bundle's `linux.cgroupsPath` (a directory path, or `slice:skiff:id` for systemd).
//!
//! Every method does blocking work: call it from a blocking thread
//! (`tokio::task::spawn_blocking`), as the pod manager does for setup and teardown.

pub mod cgroupfs;
pub mod cli;
pub mod resources;
pub mod stats;
pub mod systemd;

use std::path::{Path, PathBuf};

pub use cgroupfs::Cgroupfs;
pub use resources::{container_resources, pod_resources, qos_class, QosClass, Resources};
pub use stats::{read_stats, CgroupStats};
pub use systemd::Systemd;

use k8s_openapi::api::core::v1::{Container, Pod};

/// Present while systemd manages the host (sd_booted()'s test).
pub const SYSTEMD_MARKER: &str = "/run/systemd/system";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{owner}: resource {resource}: {message}")]
    Quantity {
        owner: String,
        resource: String,
        message: String,
    },
    #[error("cgroup {path} still has processes ({pids}); kill them before removing it")]
    Busy { path: PathBuf, pids: String },
    #[error("the systemd cgroup driver needs systemd as init, but {marker} does not exist; start with --cgroup-driver=cgroupfs")]
    SystemdNotRunning { marker: PathBuf },
    #[error("systemd over D-Bus ({bus}): {call}: {message}")]
    Dbus {
        bus: String,
        call: String,
        message: String,
    },
    #[error("systemd over D-Bus ({bus}): {call}: no answer within {timeout:?}")]
    Timeout {
        bus: String,
        call: String,
        timeout: std::time::Duration,
    },
    #[error("pod uid {0:?}: not usable in a cgroup name")]
    BadUid(String),
    #[error("{0}")]
    Shim(#[from] skiff_shim::ShimError),
}

impl CgroupError {
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        CgroupError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "systemd" => Ok(Driver::Systemd),
            "cgroupfs" => Ok(Driver::Cgroupfs),
            other => Err(format!(
                "{other:?}: the cgroup driver is systemd or cgroupfs"
            )),
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::Systemd => "systemd",
            Driver::Cgroupfs => "cgroupfs",
        })
    }
}

/// The driver asked for, else systemd where it runs the host, else cgroupfs.
pub fn select_driver(asked: Option<Driver>, systemd_marker: &Path) -> Driver {
    asked.unwrap_or(if systemd_marker.exists() {
        Driver::Systemd
    } else {
        Driver::Cgroupfs
    })
}

/// Where a pod's cgroup goes: its uid and QoS class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub uid: String,
    pub qos: QosClass,
}

impl PodCgroup {
    pub fn new(uid: &str, qos: QosClass) -> Result<Self, CgroupError> {
        // A uid is a UUID; anything else could escape the hierarchy or break unit names.
        if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(CgroupError::BadUid(uid.to_string()));
        }
        Ok(PodCgroup {
            uid: uid.to_string(),
            qos,
        })
    }

    pub fn for_pod(pod: &Pod) -> Result<Self, CgroupError> {
        PodCgroup::new(pod.metadata.uid.as_deref().unwrap_or(""), qos_class(pod)?)
    }

    /// The QoS level's name: `burstable`, `besteffort`, or none for Guaranteed.
    pub fn qos_dir(&self) -> Option<&'static str> {
        match self.qos {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// The bundle's `linux.cgroupsPath` for a container in a pod whose cgroup is `parent`
/// ([`CgroupManager::cgroup_parent`]): systemd's `slice:skiff:id` under a slice, a
/// directory path otherwise.
pub fn container_cgroups_path(parent: &str, container_id: &str) -> String {
    if parent.ends_with(".slice") {
        format!("{parent}:skiff:{container_id}")
    } else {
        format!("{}/{container_id}", parent.trim_end_matches('/'))
    }
}

/// The pod's resources for a container's bundle: `linux.resources` as JSON.
pub fn bundle_resources(c: &Container) -> Result<serde_json::Value, CgroupError> {
    Ok(container_resources(c)?.to_oci())
}

pub trait CgroupManager: Send + Sync {
    fn driver(&self) -> Driver;

    /// What skiff-shim gets as `--cgroup-root`.
    fn shim_root(&self) -> PathBuf;

    /// The pod's cgroup as bundles name their parent (see [`container_cgroups_path`]).
    fn cgroup_parent(&self, pod: &PodCgroup) -> String;

    /// The pod cgroup's directory.
    fn pod_dir(&self, pod: &PodCgroup) -> PathBuf;

    /// The directory skiff-shim makes for a container.
    fn container_dir(&self, pod: &PodCgroup, container_id: &str) -> PathBuf;

    /// Create the QoS parents and the pod's cgroup with the pod-level limits (again on
    /// every call: limits are updated in place). Returns the limits not enforced, each
    /// as `file=value: why`.
    fn ensure_pod(&self, pod: &PodCgroup, res: &Resources) -> Result<Vec<String>, CgroupError>;

    /// Remove the pod's cgroup once its containers are gone. Missing is fine.
    fn remove_pod(&self, pod: &PodCgroup) -> Result<(), CgroupError>;

    /// Remove a pod's cgroup knowing only its uid (teardown after the pod object is
    /// gone): every QoS place is tried, missing ones are fine.
    fn remove_pod_by_uid(&self, uid: &str) -> Result<(), CgroupError> {
        for qos in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            self.remove_pod(&PodCgroup::new(uid, qos)?)?;
        }
        Ok(())
    }

    fn pod_stats(&self, pod: &PodCgroup) -> Result<CgroupStats, CgroupError> {
        read_stats(&self.pod_dir(pod))
    }

    fn container_stats(
        &self,
        pod: &PodCgroup,
        container_id: &str,
    ) -> Result<CgroupStats, CgroupError> {
        read_stats(&self.container_dir(pod, container_id))
    }
}

/// The manager for `driver`: cgroupfs under `cgroup_root`, systemd on the cgroup2 mount
/// `cgroup2_mount` through the system bus, driven from the runtime `rt`.
pub fn manager(
    driver: Driver,
    cgroup_root: PathBuf,
    cgroup2_mount: PathBuf,
    rt: tokio::runtime::Handle,
) -> std::sync::Arc<dyn CgroupManager> {
    match driver {
        Driver::Cgroupfs => std::sync::Arc::new(Cgroupfs { root: cgroup_root }),
        Driver::Systemd => std::sync::Arc::new(Systemd::new(cgroup2_mount, rt)),
    }
}

#[cfg(test)]
mod tests;
