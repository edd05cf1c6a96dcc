//! cgroupfs placement on a cgroup v2 hierarchy: `linux.cgroupsPath` becomes
//! a directory under a root given on the command line (`--cgroup-root`),
//! the init process is moved into it before it sets anything up, and the
//! directory is removed at delete. Resource limits are not written: the
//! hierarchy on the hosts this runs on may have no controllers enabled, and
//! the shim reports that (see [`Cgroup::limits_enforced`]).

use std::path::{Component, Path, PathBuf};

use nix::unistd::Pid;

use crate::error::{Result, ShimError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
}

/// The directory for `cgroups_path` under `root`. Only plain relative
/// components are allowed (a leading "/" is relative to `root`), so the
/// shim never touches anything outside its root.
pub fn cgroup_dir(root: &Path, cgroups_path: &Path) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    let mut any = false;
    for c in cgroups_path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push(n);
                any = true;
            }
            _ => {
                return Err(ShimError::spec(
                    "linux.cgroupsPath",
                    format!("{} must not contain '..'", cgroups_path.display()),
                ))
            }
        }
    }
    if !any {
        return Err(ShimError::spec("linux.cgroupsPath", "empty path"));
    }
    Ok(out)
}

impl Cgroup {
    /// Create the directory (and missing parents).
    pub fn create(root: &Path, cgroups_path: &Path) -> Result<Self> {
        let path = cgroup_dir(root, cgroups_path)?;
        std::fs::create_dir_all(&path).map_err(|e| ShimError::io("mkdir", &path, e))?;
        Ok(Cgroup { path })
    }

    /// Create the directory under `root`, enabling the cpu, memory and
    /// pids controllers (those the hierarchy has) on the way down, and
    /// write `limits`. Returns the limits that could not be written
    /// because their controller is missing (not enforced).
    pub fn create_with_limits(
        root: &Path,
        cgroups_path: &Path,
        limits: &[(String, String)],
    ) -> Result<(Self, Vec<String>)> {
        let cg = Cgroup::create(root, cgroups_path)?;
        if limits.is_empty() {
            return Ok((cg, Vec::new()));
        }
        let mut dir = root.to_path_buf();
        let rel = cg
            .path
            .strip_prefix(root)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        for part in rel.components() {
            let available =
                std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            let want: Vec<String> = ["cpu", "memory", "pids"]
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !want.is_empty() {
                let p = dir.join("cgroup.subtree_control");
                std::fs::write(&p, want.join(" ")).map_err(|e| ShimError::io("write", p, e))?;
            }
            dir.push(part);
        }
        let mut not_enforced = Vec::new();
        for (file, value) in limits {
            if file.contains('/') || file.starts_with('.') {
                return Err(ShimError::spec(
                    "linux.resources.unified",
                    format!("{file}: not a cgroup interface file"),
                ));
            }
            let p = cg.path.join(file);
            if !p.exists() {
                not_enforced.push(format!("{file}={value}"));
                continue;
            }
            std::fs::write(&p, value).map_err(|e| ShimError::io("write", p, e))?;
        }
        Ok((cg, not_enforced))
    }

    /// Move a process in.
    pub fn add(&self, pid: Pid) -> Result<()> {
        let p = self.path.join("cgroup.procs");
        std::fs::write(&p, pid.to_string()).map_err(|e| ShimError::io("write", p, e))
    }

    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kill every process: cgroup.kill where the kernel has it, else one by one.
    pub fn kill_all(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let k = self.path.join("cgroup.kill");
        if sig == nix::sys::signal::Signal::SIGKILL && k.exists() {
            return std::fs::write(&k, "1").map_err(|e| ShimError::io("write", k, e));
        }
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
        }
        Ok(())
    }

    /// OOM kills counted in memory.events (0 without the memory controller).
    pub fn oom_kills(&self) -> u64 {
        parse_oom_kills(
            &std::fs::read_to_string(self.path.join("memory.events")).unwrap_or_default(),
        )
    }

    /// Whether memory, cpu and pids controllers are enabled for this cgroup.
    pub fn limits_enforced(&self) -> bool {
        let parent = self.path.parent().unwrap_or(&self.path);
        let ctl =
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        ["cpu", "memory", "pids"]
            .iter()
            .all(|c| ctl.split_whitespace().any(|w| w == *c))
    }

    /// Remove the directory (it must be empty of processes); a few retries
    /// because the kernel frees a cgroup slightly after its last process
    /// is reaped.
    pub fn remove(&self) -> Result<()> {
        let mut last = None;
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Err(ShimError::io(
            "rmdir",
            &self.path,
            last.expect("loop ran at least once"),
        ))
    }
}

/// The `oom_kill` counter of a memory.events file.
pub fn parse_oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
