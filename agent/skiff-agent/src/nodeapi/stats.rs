//! `/stats/summary`: kubelet's Summary API shape (what metrics-server reads) from /proc and,
//! for pods and containers, their cgroup v2 files. Counters are cumulative
//! (`usageCoreNanoSeconds`); a reader derives rates from two samples, as metrics-server does.
//! A value the host cannot give (a cgroup without the memory controller, no cgroups at all
//! without `--cgroup-root`) is left out rather than reported as zero.

use std::path::Path;

use serde_json::{json, Map, Value};

/// A pod of this node, as the summary reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub start_time: Option<String>,
    pub containers: Vec<String>,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// `key value` lines (cpu.stat, memory.stat, meminfo without units).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == key)
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// CPU time of the whole node from /proc/stat's `cpu` line, in nanoseconds.
pub fn node_cpu_ns(proc_stat: &str, ticks_per_second: u64) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| *x)
        .sum();
    Some(busy * (1_000_000_000 / ticks_per_second.max(1)))
}

fn cpu_json(time: &str, usage_ns: Option<u64>) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), json!(time));
    if let Some(n) = usage_ns {
        m.insert("usageCoreNanoSeconds".into(), json!(n));
    }
    Value::Object(m)
}

/// CPU and memory of one cgroup v2 directory.
pub fn cgroup_usage(dir: &Path, time: &str) -> (Value, Value) {
    let cpu = read(&dir.join("cpu.stat"))
        .and_then(|t| field(&t, "usage_usec"))
        .map(|us| us * 1000);
    let mut mem = Map::new();
    mem.insert("time".into(), json!(time));
    if let Some(usage) =
        read(&dir.join("memory.current")).and_then(|t| t.trim().parse::<u64>().ok())
    {
        mem.insert("usageBytes".into(), json!(usage));
        let stat = read(&dir.join("memory.stat")).unwrap_or_default();
        // kubelet's working set: usage less the inactive file cache.
        let inactive = field(&stat, "inactive_file").unwrap_or(0);
        mem.insert(
            "workingSetBytes".into(),
            json!(usage.saturating_sub(inactive)),
        );
        if let Some(anon) = field(&stat, "anon") {
            mem.insert("rssBytes".into(), json!(anon));
        }
    }
    (cpu_json(time, cpu), Value::Object(mem))
}

/// The summary. `cgroup_root` is the shim's `--cgroup-root` (pods live in
/// `skiff/pod<uid>/<uid>-<container>` under it).
pub fn summary(
    node_name: &str,
    proc_root: &Path,
    fs_root: &Path,
    cgroup_root: Option<&Path>,
    pods: &[PodInfo],
    now: &str,
) -> Value {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let stat = read(&proc_root.join("stat")).unwrap_or_default();
    let meminfo = read(&proc_root.join("meminfo")).unwrap_or_default();
    let kib = |k: &str| field(&meminfo, k).map(|v| v * 1024);
    let mut memory = Map::new();
    memory.insert("time".into(), json!(now));
    if let (Some(total), Some(available)) = (kib("MemTotal:"), kib("MemAvailable:")) {
        memory.insert("availableBytes".into(), json!(available));
        memory.insert(
            "usageBytes".into(),
            json!(total - kib("MemFree:").unwrap_or(available)),
        );
        memory.insert(
            "workingSetBytes".into(),
            json!(total.saturating_sub(available)),
        );
    }
    let boot = field(&stat, "btime")
        .and_then(|s| jiff::Timestamp::from_second(s as i64).ok())
        .map(|t| t.to_string());
    let mut node = json!({
        "nodeName": node_name,
        "cpu": cpu_json(now, node_cpu_ns(&stat, ticks)),
        "memory": Value::Object(memory),
    });
    if let Some(b) = boot {
        node["startTime"] = json!(b);
    }
    if let Ok(s) = nix::sys::statvfs::statvfs(fs_root) {
        let (cap, avail, free) = (
            s.blocks() * s.fragment_size(),
            s.blocks_available() * s.fragment_size(),
            s.blocks_free() * s.fragment_size(),
        );
        node["fs"] = json!({"time": now, "capacityBytes": cap, "availableBytes": avail, "usedBytes": cap - free});
    }
    let pods: Vec<Value> = pods
        .iter()
        .map(|p| {
            let pod_dir = cgroup_root.map(|r| r.join("skiff").join(format!("pod{}", p.uid)));
            let containers: Vec<Value> = p
                .containers
                .iter()
                .map(|c| {
                    let mut v = json!({"name": c});
                    if let Some(d) = &pod_dir {
                        let (cpu, mem) = cgroup_usage(&d.join(format!("{}-{c}", p.uid)), now);
                        v["cpu"] = cpu;
                        v["memory"] = mem;
                    }
                    v
                })
                .collect();
            let mut v = json!({
                "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                "containers": containers,
            });
            if let Some(t) = &p.start_time {
                v["startTime"] = json!(t);
            }
            if let Some(d) = &pod_dir {
                let (cpu, mem) = cgroup_usage(d, now);
                v["cpu"] = cpu;
                v["memory"] = mem;
            }
            v
        })
        .collect();
    json!({"node": node, "pods": pods})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_cpu_counts_busy_time_only() {
        let stat = "cpu  100 5 50 1000 30 2 3 4 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\nbtime 1700000000\n";
        // (100 + 5 + 50 + 2 + 3 + 4) ticks at 100 Hz = 1.64 s.
        assert_eq!(node_cpu_ns(stat, 100), Some(1_640_000_000));
        assert_eq!(node_cpu_ns("nothing", 100), None);
    }

    #[test]
    fn summary_from_fake_proc_and_cgroups() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        std::fs::create_dir_all(&proc_root).unwrap();
        std::fs::write(
            proc_root.join("stat"),
            "cpu  1 0 1 10 0 0 0 0\nbtime 1700000000\n",
        )
        .unwrap();
        std::fs::write(
            proc_root.join("meminfo"),
            "MemTotal:       1000 kB\nMemFree:         300 kB\nMemAvailable:    600 kB\n",
        )
        .unwrap();
        let cg = dir.path().join("cg");
        let pod = cg.join("skiff/podu1");
        std::fs::create_dir_all(pod.join("u1-web")).unwrap();
        std::fs::write(pod.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n").unwrap();
        std::fs::write(pod.join("memory.current"), "4096\n").unwrap();
        std::fs::write(pod.join("memory.stat"), "anon 1024\ninactive_file 1000\n").unwrap();
        // The container's cgroup has no memory controller: its memory is left out.
        std::fs::write(pod.join("u1-web/cpu.stat"), "usage_usec 7\n").unwrap();
        let pods = vec![PodInfo {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            start_time: Some("2026-01-01T00:00:00Z".into()),
            containers: vec!["web".into()],
        }];
        let now = "2026-01-01T00:01:00Z";
        let s = summary("n1", &proc_root, dir.path(), Some(&cg), &pods, now);
        assert_eq!(s["node"]["nodeName"], "n1");
        assert_eq!(s["node"]["startTime"], "2023-11-14T22:13:20Z");
        assert_eq!(s["node"]["memory"]["availableBytes"], 600 * 1024);
        assert_eq!(s["node"]["memory"]["workingSetBytes"], 400 * 1024);
        assert_eq!(s["node"]["memory"]["usageBytes"], 700 * 1024);
        assert!(s["node"]["fs"]["capacityBytes"].as_u64().unwrap() > 0);
        let p = &s["pods"][0];
        assert_eq!(
            p["podRef"],
            json!({"name": "web", "namespace": "default", "uid": "u1"})
        );
        assert_eq!(p["cpu"]["usageCoreNanoSeconds"], 2_500_000);
        assert_eq!(p["memory"]["workingSetBytes"], 3096);
        assert_eq!(p["memory"]["rssBytes"], 1024);
        let c = &p["containers"][0];
        assert_eq!(c["cpu"]["usageCoreNanoSeconds"], 7000);
        assert_eq!(c["memory"], json!({"time": now}));
        let bare = summary("n1", &proc_root, dir.path(), None, &pods, now);
        assert!(
            bare["pods"][0].get("cpu").is_none(),
            "no cgroups, no pod usage"
        );
    }
}
