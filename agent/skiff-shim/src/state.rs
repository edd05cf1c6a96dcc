//! On-disk state of a container under `--root`: `<root>/<id>/state.json`
//! written once at create, `started` written by `start`, `exit.json`
//! written by the monitor when the init process ends. The status is derived
//! from these files and from whether the init process is still alive, the way
//! runc derives it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Saved {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    /// Start time of the init process (field 22 of /proc/PID/stat), to tell
    /// it from a later process that reuses the pid.
    pub pid_start_time: u64,
    /// The process that waits for the init process and records its exit.
    pub monitor_pid: i32,
    pub monitor_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default)]
    pub cgroup_path: Option<PathBuf>,
    /// The transient scope of the systemd cgroup driver, stopped at delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    /// `linux.resources` limits that could not be applied (no cgroup, or
    /// its controller is missing on this host).
    #[serde(default)]
    pub limits_not_enforced: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    /// Exit code as a shell reports it: the code, or 128 + signal.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished: String,
    /// The cgroup's memory.events counted an OOM kill.
    #[serde(default)]
    pub oom_killed: bool,
}

/// What `state` prints (runc's fields plus the exit record).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits_not_enforced: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

/// The directory of one container's state.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub id: String,
    pub dir: PathBuf,
}

/// Container ids become directory names: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ShimError::container(
            id,
            "invalid id (use letters, digits, '-', '_', '.', '+')",
        ))
    }
}

impl StateDir {
    pub fn new(root: &Path, id: &str) -> Result<Self> {
        validate_id(id)?;
        Ok(StateDir {
            id: id.to_string(),
            dir: root.join(id),
        })
    }

    pub fn exists(&self) -> bool {
        self.dir.join("state.json").exists()
    }

    pub fn fifo(&self) -> PathBuf {
        self.dir.join("exec.fifo")
    }

    pub fn load(&self) -> Result<Saved> {
        let p = self.dir.join("state.json");
        let bytes = std::fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ShimError::container(&self.id, "does not exist")
            } else {
                ShimError::io("read", &p, e)
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ShimError::Bundle {
            path: p,
            msg: format!("corrupt state: {e}"),
        })
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let dst = self.dir.join(name);
        std::fs::write(&tmp, bytes).map_err(|e| ShimError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| ShimError::io("rename", &dst, e))
    }

    pub fn save(&self, s: &Saved) -> Result<()> {
        self.write_atomic("state.json", &serde_json::to_vec(s).expect("serialisable"))
    }

    pub fn mark_started(&self) -> Result<()> {
        self.write_atomic("started", now_rfc3339().as_bytes())
    }

    pub fn started(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("started")).ok()
    }

    pub fn save_exit(&self, e: &ExitInfo) -> Result<()> {
        self.write_atomic("exit.json", &serde_json::to_vec(e).expect("serialisable"))
    }

    pub fn exit(&self) -> Option<ExitInfo> {
        let b = std::fs::read(self.dir.join("exit.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ShimError::io("remove", &self.dir, e)),
        }
    }

    /// Current status, derived like runc: an exit record or a dead init
    /// means stopped; a live init still waiting on the exec fifo is created.
    pub fn status(&self, s: &Saved) -> Status {
        if self.exit().is_some() {
            return Status::Stopped;
        }
        if !process_alive(s.pid, s.pid_start_time) {
            return Status::Stopped;
        }
        if self.fifo().exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    pub fn report(&self) -> Result<Report> {
        let s = self.load()?;
        let status = self.status(&s);
        let mut exit = self.exit();
        // The init just died and its monitor is writing the record: give
        // it a moment, so that "stopped" comes with the exit code.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while status == Status::Stopped
            && exit.is_none()
            && process_alive(s.monitor_pid, s.monitor_start_time)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
            exit = self.exit();
        }
        Ok(Report {
            oci_version: s.oci_version.clone(),
            id: s.id.clone(),
            pid: if status == Status::Stopped { 0 } else { s.pid },
            status,
            bundle: s.bundle.clone(),
            rootfs: s.rootfs.clone(),
            created: s.created.clone(),
            owner: String::new(),
            started: self.started(),
            finished: exit.as_ref().map(|e| e.finished.clone()),
            exit_code: exit.as_ref().map(|e| e.exit_code),
            oom_killed: exit.as_ref().map(|e| e.oom_killed).unwrap_or(false),
            signal: exit.and_then(|e| e.signal),
            limits_not_enforced: s.limits_not_enforced.clone(),
        })
    }
}

/// Start time of a process in clock ticks since boot, from /proc/PID/stat.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&s)
}

/// Field 22 of a /proc/PID/stat line (the command may contain spaces and
/// parentheses: count from the last ')').
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive, is the same process (start time) and is not a zombie.
pub fn process_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state_zombie = s
        .rfind(')')
        .and_then(|i| s[i + 1..].split_whitespace().next())
        .map(|st| st == "Z" || st == "X")
        .unwrap_or(true);
    !state_zombie && parse_start_time(&s) == Some(start_time)
}

/// Days since 1970-01-01 to a (year, month, day) civil date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 UTC timestamp with nanoseconds, as CRI logs and runc use.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, mo, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        d.subsec_nanos()
    )
}

pub fn now_rfc3339() -> String {
    rfc3339_nano(SystemTime::now())
}
