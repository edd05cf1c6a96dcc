//! cgroup v2 placement and limits, with two drivers:
//!
//! - cgroupfs: `linux.cgroupsPath` is a directory under a root given on the
//!   command line (`--cgroup-root`); the shim creates it, enables the
//!   controllers its limits need in the `cgroup.subtree_control` of every
//!   level below that root (never above it), and removes it at delete.
//! - systemd: `linux.cgroupsPath` is runc's `slice:prefix:name`; the init
//!   process goes into a transient scope `prefix-name.scope` under the
//!   slice, started over D-Bus with `Delegate=yes` (see [`systemd`]).
//!
//! Either way the limits of `linux.resources` are then written into the
//! container's cgroup. A limit whose controller this host lacks is not an
//! error (hosts such as CI machines have none): it is reported, with the
//! reason, in the container's state as not enforced.

use std::path::{Component, Path, PathBuf};

use nix::unistd::Pid;

use crate::error::{Result, ShimError};

pub mod systemd;

/// Controllers enabled even when no limit asks for them: memory for OOM
/// accounting (memory.events), cpu and memory for the agent's stats, pids
/// for pids.current.
const ALWAYS: &[&str] = &["cpu", "memory", "pids"];

/// Where cgroup2 is mounted, given the text of /proc/self/mounts; the canonical place wins
/// when several are listed (hybrid hosts mount it at /sys/fs/cgroup/unified too).
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    let found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .collect();
    found
        .iter()
        .find(|p| *p == Path::new("/sys/fs/cgroup"))
        .or(found.first())
        .cloned()
}

/// This process's cgroup2 mount point.
pub fn cgroup2_mount() -> Option<PathBuf> {
    cgroup2_mount_in(&std::fs::read_to_string("/proc/self/mounts").ok()?)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    /// The transient scope holding the cgroup, with the systemd driver.
    pub unit: Option<String>,
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

/// The controller an interface file belongs to ("memory.swap.max" →
/// "memory"); `None` for the core `cgroup.*` files, which always exist.
pub fn controller_of(file: &str) -> Option<&str> {
    match file.split_once('.') {
        Some(("cgroup", _)) | None => None,
        Some((c, _)) => Some(c),
    }
}

fn words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Controllers that could not be enabled for a cgroup, with the reason.
pub type Unavailable = Vec<(String, String)>;

/// Enable `wanted` controllers from `root` down to the parent of `dir`
/// (each level's `cgroup.subtree_control` decides what its children get).
/// Levels already enabled are left untouched, so an operator's root is only
/// written when something is missing. Returns what could not be enabled:
/// a controller missing from a level's `cgroup.controllers`, or a write the
/// kernel refused (e.g. a level that holds processes itself).
pub fn enable_controllers(root: &Path, dir: &Path, wanted: &[String]) -> Unavailable {
    let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let mut level = root.to_path_buf();
    let mut missing: Unavailable = Vec::new();
    for part in rel.components() {
        let available = words(&level.join("cgroup.controllers"));
        let enabled = words(&level.join("cgroup.subtree_control"));
        let ctl_file = level.join("cgroup.subtree_control");
        for c in wanted {
            if missing.iter().any(|(m, _)| m == c) || enabled.contains(c) {
                continue;
            }
            if !available.contains(c) {
                missing.push((
                    c.clone(),
                    format!(
                        "{c} controller absent (not in {})",
                        level.join("cgroup.controllers").display()
                    ),
                ));
                continue;
            }
            // One write per controller: a combined write fails as a whole.
            if let Err(e) = std::fs::write(&ctl_file, format!("+{c}")) {
                missing.push((
                    c.clone(),
                    format!(
                        "{c} controller could not be enabled in {}: {e}",
                        ctl_file.display()
                    ),
                ));
            }
        }
        level.push(part);
    }
    missing
}

/// The controllers `limits` need, plus [`ALWAYS`], without duplicates.
pub fn controllers_for(limits: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = ALWAYS.iter().map(|s| s.to_string()).collect();
    for (file, _) in limits {
        if let Some(c) = controller_of(file) {
            if !out.iter().any(|o| o == c) {
                out.push(c.to_string());
            }
        }
    }
    out
}

fn check_file_name(file: &str) -> Result<()> {
    if file.is_empty() || file.contains('/') || file.starts_with('.') || !file.contains('.') {
        return Err(ShimError::spec(
            "linux.resources.unified",
            format!("{file:?}: not a cgroup interface file"),
        ));
    }
    Ok(())
}

/// Write `limits` into the cgroup `dir`. A file that does not exist is not
/// written: its limit is returned as not enforced, with the reason (from
/// `unavailable` when enabling its controller failed higher up).
pub fn write_limits(
    dir: &Path,
    limits: &[(String, String)],
    unavailable: &Unavailable,
) -> Result<Vec<String>> {
    for (file, _) in limits {
        check_file_name(file)?;
    }
    let mut not_enforced = Vec::new();
    for (file, value) in limits {
        let p = dir.join(file);
        if p.exists() {
            std::fs::write(&p, value).map_err(|e| ShimError::io("write", &p, e))?;
            continue;
        }
        let why = match controller_of(file) {
            Some(c) => match unavailable.iter().find(|(m, _)| m == c) {
                Some((_, reason)) => reason.clone(),
                None if !words(&dir.join("cgroup.controllers"))
                    .iter()
                    .any(|w| w == c) =>
                {
                    format!("{c} controller not enabled for {}", dir.display())
                }
                None => format!("the kernel has no {file}"),
            },
            None => format!("the kernel has no {file}"),
        };
        not_enforced.push(format!("{file}={value}: {why}"));
    }
    Ok(not_enforced)
}

impl Cgroup {
    /// A cgroup known by its directory (from a container's saved state).
    pub fn at(path: PathBuf, unit: Option<String>) -> Self {
        Cgroup { path, unit }
    }

    /// Create the directory (and missing parents).
    pub fn create(root: &Path, cgroups_path: &Path) -> Result<Self> {
        let path = cgroup_dir(root, cgroups_path)?;
        std::fs::create_dir_all(&path).map_err(|e| ShimError::io("mkdir", &path, e))?;
        Ok(Cgroup { path, unit: None })
    }

    /// Create the directory under `root`, enabling the controllers the
    /// limits need (and cpu, memory, pids) on the way down, and write
    /// `limits`. Returns the limits that are not enforced, each with why.
    pub fn create_with_limits(
        root: &Path,
        cgroups_path: &Path,
        limits: &[(String, String)],
    ) -> Result<(Self, Vec<String>)> {
        for (file, _) in limits {
            check_file_name(file)?;
        }
        let cg = Cgroup::create(root, cgroups_path)?;
        let unavailable = enable_controllers(root, &cg.path, &controllers_for(limits));
        match write_limits(&cg.path, limits, &unavailable) {
            Ok(not_enforced) => Ok((cg, not_enforced)),
            Err(e) => {
                let _ = std::fs::remove_dir(&cg.path);
                Err(e)
            }
        }
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
        let ctl = words(&parent.join("cgroup.subtree_control"));
        ALWAYS.iter().all(|c| ctl.iter().any(|w| w == c))
    }

    /// Remove the cgroup (it must be empty of processes): a scope is stopped
    /// through systemd, which removes its directory; a directory is removed
    /// with a few retries, because the kernel frees a cgroup slightly after
    /// its last process is reaped.
    pub fn remove(&self) -> Result<()> {
        if let Some(unit) = &self.unit {
            systemd::stop_unit(unit)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount_in("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"),
            None
        );
    }
}
