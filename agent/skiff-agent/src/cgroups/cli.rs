//! `skiff-agent cgroups ensure-pod|remove-pod|stats [--driver D] [--cgroup-root DIR]
//! [--pod-max-pids N] POD.json`: one pod's cgroup made, removed or read by the same code
//! the pod manager uses, for operators and for the VM lab (where systemd and real
//! controllers exist). Prints JSON.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::{
    manager, pod_resources, select_driver, CgroupError, Driver, PodCgroup, SYSTEMD_MARKER,
};

pub const USAGE: &str = "usage: skiff-agent cgroups ensure-pod|remove-pod|stats [--driver systemd|cgroupfs] [--cgroup-root DIR] [--pod-max-pids N] POD.json";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("{path}: {message}")]
    Pod { path: PathBuf, message: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

struct Args {
    cmd: String,
    driver: Option<Driver>,
    cgroup_root: Option<PathBuf>,
    pod_max_pids: i64,
    pod: PathBuf,
}

fn parse(argv: &[String]) -> Result<Args, CliError> {
    let usage = |m: String| CliError::Usage(m);
    let mut it = argv.iter();
    let cmd = it
        .next()
        .ok_or_else(|| usage("missing command".into()))?
        .clone();
    let (mut driver, mut cgroup_root, mut pod_max_pids, mut pod) = (None, None, -1, None);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| usage(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--driver" => driver = Some(value()?.parse().map_err(usage)?),
            "--cgroup-root" => cgroup_root = Some(PathBuf::from(value()?)),
            "--pod-max-pids" => {
                let v = value()?;
                pod_max_pids = v
                    .parse()
                    .map_err(|_| usage(format!("--pod-max-pids {v:?} is not a number")))?;
            }
            s if s.starts_with('-') => return Err(usage(format!("unknown option {s}"))),
            s if pod.is_none() => pod = Some(PathBuf::from(s)),
            s => return Err(usage(format!("unexpected argument {s}"))),
        }
    }
    Ok(Args {
        cmd,
        driver,
        cgroup_root,
        pod_max_pids,
        pod: pod.ok_or_else(|| usage("missing POD.json".into()))?,
    })
}

/// Run the subcommand; `rt` drives the systemd driver's D-Bus calls.
pub fn run(argv: &[String], rt: tokio::runtime::Handle) -> Result<String, CliError> {
    let args = parse(argv)?;
    let text = std::fs::read_to_string(&args.pod).map_err(|e| CliError::Pod {
        path: args.pod.clone(),
        message: e.to_string(),
    })?;
    let pod: Pod = serde_json::from_str(&text).map_err(|e| CliError::Pod {
        path: args.pod.clone(),
        message: e.to_string(),
    })?;
    let driver = select_driver(args.driver, std::path::Path::new(SYSTEMD_MARKER));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mount = skiff_shim::cgroup::cgroup2_mount_in(&mounts)
        .ok_or_else(|| CliError::Usage("no cgroup2 hierarchy is mounted".into()))?;
    let root = match (driver, args.cgroup_root) {
        (Driver::Cgroupfs, Some(r)) => r,
        (Driver::Cgroupfs, None) => {
            return Err(CliError::Usage(
                "the cgroupfs driver needs --cgroup-root".into(),
            ))
        }
        (Driver::Systemd, _) => mount.clone(),
    };
    let m = manager(driver, root, mount, rt);
    let pc = PodCgroup::for_pod(&pod)?;
    let out = match args.cmd.as_str() {
        "ensure-pod" => {
            let res = pod_resources(&pod, args.pod_max_pids)?;
            let not_enforced = m.ensure_pod(&pc, &res)?;
            json!({
                "driver": driver.to_string(),
                "qosClass": pc.qos.as_str(),
                "cgroupParent": m.cgroup_parent(&pc),
                "dir": m.pod_dir(&pc),
                "limits": res.cgroup_files(),
                "limitsNotEnforced": not_enforced,
            })
        }
        "remove-pod" => {
            m.remove_pod(&pc)?;
            json!({"driver": driver.to_string(), "removed": m.pod_dir(&pc)})
        }
        "stats" => {
            let s = m.pod_stats(&pc)?;
            json!({
                "dir": m.pod_dir(&pc),
                "cpuUsageUsec": s.cpu_usage_usec,
                "cpuNrThrottled": s.cpu_nr_throttled,
                "memoryUsageBytes": s.memory_usage_bytes,
                "memoryWorkingSetBytes": s.memory_working_set_bytes,
                "pidsCurrent": s.pids_current,
            })
        }
        other => return Err(CliError::Usage(format!("unknown command {other:?}"))),
    };
    Ok(out.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn arguments() {
        let a = parse(&argv(
            "ensure-pod --driver cgroupfs --cgroup-root /x --pod-max-pids 9 p.json",
        ))
        .unwrap();
        assert_eq!(a.cmd, "ensure-pod");
        assert_eq!(a.driver, Some(Driver::Cgroupfs));
        assert_eq!(a.cgroup_root, Some(PathBuf::from("/x")));
        assert_eq!(a.pod_max_pids, 9);
        assert_eq!(a.pod, PathBuf::from("p.json"));
        for (bad, why) in [
            ("", "missing command"),
            ("stats", "missing POD.json"),
            ("stats --driver v1 p", "systemd or cgroupfs"),
            ("stats --cgroup-root", "needs a value"),
            ("stats --pod-max-pids x p", "not a number"),
            ("stats --nope p", "unknown option"),
            ("stats a b", "unexpected argument"),
        ] {
            let e = parse(&argv(bad)).err().unwrap().to_string();
            assert!(e.contains(why) && e.contains("usage:"), "{bad}: {e}");
        }
    }

    #[test]
    fn ensure_and_remove_with_cgroupfs() {
        let d = tempfile::tempdir().unwrap();
        let pod = d.path().join("pod.json");
        std::fs::write(
            &pod,
            r#"{"metadata": {"uid": "1234-ab"}, "spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Mi"}}}]}}"#,
        )
        .unwrap();
        let root = d.path().join("cg");
        std::fs::create_dir(&root).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut a = argv("ensure-pod --driver cgroupfs --cgroup-root");
        a.push(root.display().to_string());
        a.push(pod.display().to_string());
        let out: serde_json::Value =
            serde_json::from_str(&run(&a, rt.handle().clone()).unwrap()).unwrap();
        assert_eq!(out["qosClass"], "Guaranteed");
        assert_eq!(out["cgroupParent"], "kubepods/pod1234-ab");
        assert_eq!(out["limitsNotEnforced"].as_array().unwrap().len(), 3);
        assert!(root.join("kubepods/pod1234-ab").is_dir());
        a[0] = "remove-pod".into();
        run(&a, rt.handle().clone()).unwrap();
        assert!(!root.join("kubepods/pod1234-ab").exists());
        a[0] = "stats".into();
        let e = run(&a, rt.handle().clone()).unwrap_err().to_string();
        assert!(e.contains("cpu.stat"), "{e}");
        std::fs::write(&pod, "{").unwrap();
        let e = run(&a, rt.handle().clone()).unwrap_err().to_string();
        assert!(e.contains("pod.json"), "{e}");
    }
}
