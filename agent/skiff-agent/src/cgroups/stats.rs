//! Usage read back from a cgroup v2 directory, for the node's `/stats/summary`: cpu time
//! from cpu.stat, memory usage and working set (kubelet's and cAdvisor's: memory.current
//! less the inactive file cache, which the kernel reclaims first).

use std::path::Path;

use super::CgroupError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Total cpu time in microseconds (cpu.stat `usage_usec`, present without the cpu
    /// controller too).
    pub cpu_usage_usec: u64,
    /// Throttled periods (cpu.stat `nr_throttled`), with the cpu controller.
    pub cpu_nr_throttled: Option<u64>,
    /// memory.current, with the memory controller.
    pub memory_usage_bytes: Option<u64>,
    /// memory.current minus memory.stat `inactive_file`.
    pub memory_working_set_bytes: Option<u64>,
    /// pids.current, with the pids controller.
    pub pids_current: Option<u64>,
}

/// The value of `key` in a flat-keyed file such as cpu.stat or memory.stat.
pub fn flat_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// kubelet's working set: usage less inactive file pages, never below zero.
pub fn working_set(current: u64, memory_stat: &str) -> u64 {
    current.saturating_sub(flat_key(memory_stat, "inactive_file").unwrap_or(0))
}

fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CgroupError::io("read", path, e)),
    }
}

fn single(path: &Path) -> Result<Option<u64>, CgroupError> {
    let Some(text) = read_opt(path)? else {
        return Ok(None);
    };
    let t = text.trim();
    if t == "max" {
        return Ok(Some(u64::MAX));
    }
    t.parse().map(Some).map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        message: format!("{t:?} is not a number"),
    })
}

/// Read the stats of the cgroup `dir`; a missing cpu.stat means the cgroup is gone.
pub fn read_stats(dir: &Path) -> Result<CgroupStats, CgroupError> {
    let cpu_path = dir.join("cpu.stat");
    let cpu =
        std::fs::read_to_string(&cpu_path).map_err(|e| CgroupError::io("read", &cpu_path, e))?;
    let cpu_usage_usec = flat_key(&cpu, "usage_usec").ok_or_else(|| CgroupError::Parse {
        path: cpu_path.clone(),
        message: "no usage_usec line".into(),
    })?;
    let memory_usage_bytes = single(&dir.join("memory.current"))?;
    let memory_stat = read_opt(&dir.join("memory.stat"))?.unwrap_or_default();
    Ok(CgroupStats {
        cpu_usage_usec,
        cpu_nr_throttled: flat_key(&cpu, "nr_throttled"),
        memory_usage_bytes,
        memory_working_set_bytes: memory_usage_bytes.map(|c| working_set(c, &memory_stat)),
        pids_current: single(&dir.join("pids.current"))?,
    })
}
