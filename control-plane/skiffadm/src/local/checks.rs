//! Local mode's preflight: the agent's own swap and cgroup checks, read the same way, so
//! `up` refuses exactly where the agent would and otherwise reports limits that cannot be
//! enforced in one line instead of refusing.

use std::path::{Path, PathBuf};

use skiff_agent::preflight::{self, Host, PreflightError};

use super::LocalError;

/// What the host's cgroups allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limits {
    /// Pods get cgroups under this directory.
    Enforced(PathBuf),
    /// The cgroup v2 hierarchy lacks these controllers.
    NotEnforced {
        hierarchy: PathBuf,
        missing: Vec<String>,
    },
}

impl Limits {
    /// The one line `up` and `status` print.
    pub fn line(&self) -> String {
        match self {
            Limits::Enforced(dir) => format!(
                "cgroup limits: enforced (pod cgroups under {})",
                dir.display()
            ),
            Limits::NotEnforced { hierarchy, missing } => format!(
                "cgroup limits: NOT enforced: the cgroup v2 hierarchy at {} lacks {}; pods run without cpu/memory/pids limits",
                hierarchy.display(),
                missing.join(", ")
            ),
        }
    }
}

/// A stable per-root name, so that two local clusters with different roots never share a
/// cgroup directory.
pub fn cgroup_dir_name(root: &Path) -> String {
    // FNV-1a: stable across builds, unlike the std hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in root.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("skiff-local-{:08x}", h as u32)
}

/// Refuses on swap (with the fix) and on a host without cgroup v2; reports missing
/// controllers as not-enforced limits.
pub fn run(host: &Host, root: &Path) -> Result<Limits, LocalError> {
    preflight::check_swap(host).map_err(|e| LocalError::Preflight(e.to_string()))?;
    match preflight::cgroup_controllers(host) {
        Ok(missing) => {
            let hierarchy = host.cgroup_root.clone().unwrap_or_default();
            if missing.is_empty() {
                Ok(Limits::Enforced(hierarchy.join(cgroup_dir_name(root))))
            } else {
                Ok(Limits::NotEnforced { hierarchy, missing })
            }
        }
        Err(e @ PreflightError::NoCgroupV2(_)) => Err(LocalError::Preflight(e.to_string())),
        Err(e) => Err(LocalError::Preflight(e.to_string())),
    }
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

    const NO_SWAP: &str = "Filename\tType\tSize\tUsed\tPriority\n";

    #[test]
    fn swap_is_refused_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let h = host(
            d.path(),
            &format!("{NO_SWAP}/swapfile file 1024 0 -2\n"),
            Some("cpu memory pids"),
        );
        let e = run(&h, Path::new("/r")).unwrap_err().to_string();
        assert!(e.contains("/swapfile") && e.contains("swapoff -a"), "{e}");
    }

    #[test]
    fn missing_controllers_are_one_line_not_a_refusal() {
        let d = tempfile::tempdir().unwrap();
        let h = host(d.path(), NO_SWAP, Some("io"));
        let l = run(&h, Path::new("/r")).unwrap();
        assert_eq!(
            l,
            Limits::NotEnforced {
                hierarchy: d.path().join("cgroup"),
                missing: vec!["cpu".into(), "memory".into(), "pids".into()]
            }
        );
        let line = l.line();
        assert!(
            !line.contains('\n') && line.contains("NOT enforced"),
            "{line}"
        );
    }

    #[test]
    fn full_controllers_enforce_under_a_per_root_dir() {
        let d = tempfile::tempdir().unwrap();
        let h = host(d.path(), NO_SWAP, Some("cpuset cpu io memory pids"));
        let a = run(&h, Path::new("/r1")).unwrap();
        let b = run(&h, Path::new("/r2")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, run(&h, Path::new("/r1")).unwrap());
        assert!(matches!(a, Limits::Enforced(p) if p.starts_with(d.path().join("cgroup"))));
    }

    #[test]
    fn no_cgroup_v2_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let h = host(d.path(), NO_SWAP, None);
        assert!(run(&h, Path::new("/r")).is_err());
    }
}
