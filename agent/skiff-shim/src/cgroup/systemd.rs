//! The systemd cgroup driver of the shim: runc's `slice:prefix:name`
//! cgroupsPath becomes a transient scope `prefix-name.scope` in `slice`,
//! started with `Delegate=yes` so that the shim may write the limits into
//! the scope's own cgroup files afterwards.
//!
//! The D-Bus calls go through `busctl` (with `--timeout` on every call)
//! rather than a D-Bus library: the shim must stay single-threaded because it
//! clones the container's init, and the blocking API of the Rust D-Bus
//! library runs its connection on an executor thread. A child process keeps
//! the shim's own memory small as well. See docs/architecture.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::error::{Result, ShimError};

/// How long one D-Bus call, and the wait for a started scope's cgroup, may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

const FIELD: &str = "linux.cgroupsPath";

/// A parsed `slice:prefix:name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopePath {
    pub slice: String,
    pub scope: String,
}

fn valid_unit_chars(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '\\' | '@'))
}

/// Whether a cgroupsPath has the systemd form (no '/', exactly two ':').
pub fn is_systemd_form(path: &str) -> bool {
    !path.contains('/') && path.matches(':').count() == 2
}

impl ScopePath {
    /// Parse runc's systemd cgroupsPath: an empty slice means
    /// `system.slice`, an empty prefix gives the scope `name.scope`.
    pub fn parse(path: &str) -> Result<Self> {
        let parts: Vec<&str> = path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(ShimError::spec(
                FIELD,
                format!("{path:?}: the systemd driver expects slice:prefix:name"),
            ));
        };
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        if !slice.ends_with(".slice") || !valid_unit_chars(slice) {
            return Err(ShimError::spec(
                FIELD,
                format!("{slice:?} is not a slice unit name (NAME.slice)"),
            ));
        }
        if name.is_empty()
            || !valid_unit_chars(name)
            || (!prefix.is_empty() && !valid_unit_chars(prefix))
        {
            return Err(ShimError::spec(
                FIELD,
                format!("{path:?}: prefix and name must be non-empty unit name characters"),
            ));
        }
        let scope = if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        Ok(ScopePath {
            slice: slice.to_string(),
            scope,
        })
    }

    /// The scope's directory under the cgroup2 mount `root`.
    pub fn dir(&self, root: &Path) -> Result<PathBuf> {
        Ok(root.join(expand_slice(&self.slice)?).join(&self.scope))
    }
}

/// systemd's slice nesting: `a-b-c.slice` lives in
/// `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
pub fn expand_slice(slice: &str) -> Result<PathBuf> {
    let bad = |why: &str| ShimError::spec(FIELD, format!("slice {slice:?}: {why}"));
    let base = slice
        .strip_suffix(".slice")
        .ok_or_else(|| bad("does not end in .slice"))?;
    if base == "-" {
        return Ok(PathBuf::new());
    }
    if base.is_empty() || base.starts_with('-') || base.ends_with('-') || base.contains("--") {
        return Err(bad("dashes separate non-empty parent names"));
    }
    let mut out = PathBuf::new();
    let mut prefix = String::new();
    for part in base.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out)
}

/// Properties systemd knows for the limits it can express, so that a
/// `systemctl daemon-reload` does not reset what the shim wrote.
/// `CPUQuotaPerSecUSec` has a 10 ms granularity, rounded up as runc does.
pub fn unit_properties(limits: &[(String, String)]) -> Vec<[String; 3]> {
    let mut out = Vec::new();
    let prop = |n: &str, v: String| [n.to_string(), "t".to_string(), v];
    for (file, value) in limits {
        // "max" is systemd's infinity, which is u64::MAX on the bus.
        let num = match value.as_str() {
            "max" => Some(u64::MAX),
            v => v.parse::<u64>().ok(),
        };
        match (file.as_str(), num) {
            ("memory.max", Some(v)) => out.push(prop("MemoryMax", v.to_string())),
            ("memory.swap.max", Some(v)) => out.push(prop("MemorySwapMax", v.to_string())),
            ("pids.max", Some(v)) => out.push(prop("TasksMax", v.to_string())),
            ("cpu.weight", Some(v)) => out.push(prop("CPUWeight", v.to_string())),
            ("cpu.max", _) => {
                let mut it = value.split_whitespace();
                let quota = it.next().and_then(|q| q.parse::<u64>().ok());
                let period = it
                    .next()
                    .and_then(|p| p.parse::<u64>().ok())
                    .unwrap_or(100_000);
                if let Some(q) = quota {
                    let per_sec = (q * 1_000_000 / period.max(1)).div_ceil(10_000) * 10_000;
                    out.push(prop("CPUQuotaPerSecUSec", per_sec.to_string()));
                    out.push(prop("CPUQuotaPeriodUSec", period.to_string()));
                }
            }
            _ => {}
        }
    }
    out
}

fn busctl_base() -> Vec<String> {
    [
        "--system",
        "--quiet",
        &format!("--timeout={}", CALL_TIMEOUT.as_secs()),
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// busctl's arguments for StartTransientUnit of the scope holding `pid`.
pub fn start_scope_args(sp: &ScopePath, pid: Pid, limits: &[(String, String)]) -> Vec<String> {
    let mut props: Vec<[String; 3]> = vec![
        [
            "Description".into(),
            "s".into(),
            format!("skiff container {}", sp.scope),
        ],
        ["Slice".into(), "s".into(), sp.slice.clone()],
        ["Delegate".into(), "b".into(), "true".into()],
        ["DefaultDependencies".into(), "b".into(), "false".into()],
    ];
    props.extend(unit_properties(limits));
    let mut a = busctl_base();
    a.extend([
        "StartTransientUnit".to_string(),
        "ssa(sv)a(sa(sv))".to_string(),
        sp.scope.clone(),
        "fail".to_string(),
        (props.len() + 1).to_string(),
        "PIDs".to_string(),
        "au".to_string(),
        "1".to_string(),
        pid.to_string(),
    ]);
    for p in props {
        a.extend(p);
    }
    a.push("0".to_string());
    a
}

/// Refuse early, with the fix, where systemd does not manage the host.
pub fn check_running() -> Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        return Err(ShimError::Init(
            "systemd cgroup driver: systemd is not running as init on this host \
             (/run/systemd/system is missing); use the cgroupfs driver (a plain \
             cgroupsPath and --cgroup-root)"
                .into(),
        ));
    }
    Ok(())
}

fn busctl(args: &[String]) -> Result<String> {
    let out = Command::new("busctl").args(args).output().map_err(|e| {
        ShimError::Init(format!(
            "systemd cgroup driver: running busctl: {e} (is systemd installed?)"
        ))
    })?;
    if !out.status.success() {
        return Err(ShimError::Init(format!(
            "systemd cgroup driver: busctl {}: {}",
            args.get(7).map(String::as_str).unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Start the scope with `pid` in it and wait until the kernel shows the pid
/// in the scope's cgroup (the job completes asynchronously).
pub fn start_scope(
    root: &Path,
    sp: &ScopePath,
    pid: Pid,
    limits: &[(String, String)],
) -> Result<PathBuf> {
    check_running()?;
    let dir = sp.dir(root)?;
    busctl(&start_scope_args(sp, pid, limits))?;
    let deadline = Instant::now() + CALL_TIMEOUT;
    let mut nap = Duration::from_millis(1);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.lines().any(|l| l.trim() == pid.to_string()) {
            return Ok(dir);
        }
        if Instant::now() > deadline {
            return Err(ShimError::Init(format!(
                "systemd cgroup driver: {} started but pid {pid} did not appear in {} within {:?}",
                sp.scope,
                dir.join("cgroup.procs").display(),
                CALL_TIMEOUT
            )));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

/// Stop a scope; one that is already gone (systemd collects empty scopes) is fine.
pub fn stop_unit(unit: &str) -> Result<()> {
    let mut a = busctl_base();
    a.extend(
        ["StopUnit", "ss", unit, "fail"]
            .iter()
            .map(|s| s.to_string()),
    );
    match busctl(&a) {
        Ok(_) => Ok(()),
        Err(ShimError::Init(m)) if m.contains("not loaded") || m.contains("NoSuchUnit") => Ok(()),
        Err(e) => Err(e),
    }
}
