//! The cgroupfs driver: kubelet's directory names under a configurable root,
//! `kubepods/burstable/pod<uid>`, `kubepods/besteffort/pod<uid>`, `kubepods/pod<uid>`.
//! Controllers are enabled level by level below the root and never above it.

use std::path::{Path, PathBuf};

use skiff_shim::cgroup::{controllers_for, enable_controllers, write_limits};

use super::resources::{shares_to_weight, MIN_SHARES};
use super::{CgroupError, CgroupManager, Driver, PodCgroup, Resources};

#[derive(Debug, Clone)]
pub struct Cgroupfs {
    pub root: PathBuf,
}

impl Cgroupfs {
    fn rel_pod(pod: &PodCgroup) -> PathBuf {
        let mut p = PathBuf::from("kubepods");
        if let Some(q) = pod.qos_dir() {
            p.push(q);
        }
        p.push(format!("pod{}", pod.uid));
        p
    }

    fn mkdir(dir: &Path) -> Result<(), CgroupError> {
        match std::fs::create_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(CgroupError::io("mkdir", dir, e)),
        }
    }
}

/// The pids of a cgroup, from its cgroup.procs (empty when there is none).
fn procs(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Remove `dir` and the cgroups below it, deepest first. A cgroup with processes is
/// refused with their pids rather than with the kernel's bare EBUSY.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CgroupError::io("readdir", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| CgroupError::io("readdir", dir, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    let pids = procs(dir);
    if !pids.is_empty() {
        return Err(CgroupError::Busy {
            path: dir.to_path_buf(),
            pids,
        });
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CgroupError::io("rmdir", dir, e)),
    }
}

impl CgroupManager for Cgroupfs {
    fn driver(&self) -> Driver {
        Driver::Cgroupfs
    }

    fn shim_root(&self) -> PathBuf {
        self.root.clone()
    }

    fn cgroup_parent(&self, pod: &PodCgroup) -> String {
        Self::rel_pod(pod).display().to_string()
    }

    fn pod_dir(&self, pod: &PodCgroup) -> PathBuf {
        self.root.join(Self::rel_pod(pod))
    }

    fn container_dir(&self, pod: &PodCgroup, container_id: &str) -> PathBuf {
        self.pod_dir(pod).join(container_id)
    }

    fn ensure_pod(&self, pod: &PodCgroup, res: &Resources) -> Result<Vec<String>, CgroupError> {
        let mut not_enforced = Vec::new();
        // `--cgroup-root` names a directory of ours inside the hierarchy; make it on first use.
        Self::mkdir(&self.root)?;
        let mut dir = self.root.clone();
        let levels: Vec<PathBuf> = Self::rel_pod(pod)
            .components()
            .map(|c| PathBuf::from(c.as_os_str()))
            .collect();
        for (i, part) in levels.iter().enumerate() {
            dir.push(part);
            Self::mkdir(&dir)?;
            // BestEffort pods share the smallest weight, as kubelet's QoS cgroup does.
            let is_besteffort_level = i == 1 && pod.qos_dir() == Some("besteffort");
            if is_besteffort_level {
                let level = vec![(
                    "cpu.weight".to_string(),
                    shares_to_weight(MIN_SHARES).to_string(),
                )];
                let unavailable = enable_controllers(&self.root, &dir, &controllers_for(&level));
                write_limits(&dir, &level, &unavailable)?;
            }
        }
        let files = res.cgroup_files();
        // The pod's own subtree_control too, so that its containers get the controllers.
        let wanted = controllers_for(&files);
        let probe = dir.join("_");
        let unavailable = enable_controllers(&self.root, &probe, &wanted);
        not_enforced.extend(write_limits(&dir, &files, &unavailable)?);
        Ok(not_enforced)
    }

    fn remove_pod(&self, pod: &PodCgroup) -> Result<(), CgroupError> {
        remove_tree(&self.pod_dir(pod))
    }
}
