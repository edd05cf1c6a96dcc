use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::json;

use super::resources::*;
use super::systemd::{container_scope, pod_slice, slice_chain, slice_properties, Bus};
use super::*;

fn container(
    name: &str,
    requests: serde_json::Value,
    limits: serde_json::Value,
) -> serde_json::Value {
    let mut r = json!({});
    if !requests.is_null() {
        r["requests"] = requests;
    }
    if !limits.is_null() {
        r["limits"] = limits;
    }
    json!({"name": name, "image": "busybox", "resources": r})
}

fn pod(containers: Vec<serde_json::Value>, init: Vec<serde_json::Value>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "uid": "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"},
        "spec": {"containers": containers, "initContainers": init}
    }))
    .unwrap()
}

fn ctr(v: serde_json::Value) -> Container {
    serde_json::from_value(v).unwrap()
}

#[test]
fn kubelet_cpu_conversions() {
    assert_eq!(milli_cpu_to_shares(0), 2);
    assert_eq!(milli_cpu_to_shares(1), 2);
    assert_eq!(milli_cpu_to_shares(100), 102);
    assert_eq!(milli_cpu_to_shares(250), 256);
    assert_eq!(milli_cpu_to_shares(1000), 1024);
    assert_eq!(milli_cpu_to_shares(500_000), 262_144);
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(102), 4);
    assert_eq!(shares_to_weight(256), 10);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(milli_cpu_to_quota(0, 100_000), 0);
    assert_eq!(milli_cpu_to_quota(5, 100_000), 1000);
    assert_eq!(milli_cpu_to_quota(250, 100_000), 25_000);
    assert_eq!(milli_cpu_to_quota(1500, 100_000), 150_000);
}

#[test]
fn qos_classes_like_kubelet() {
    let be = pod(vec![container("a", json!(null), json!(null))], vec![]);
    assert_eq!(qos_class(&be).unwrap(), QosClass::BestEffort);
    // Limits only: requests default to them.
    let g = pod(
        vec![container(
            "a",
            json!(null),
            json!({"cpu": "500m", "memory": "64Mi"}),
        )],
        vec![],
    );
    assert_eq!(qos_class(&g).unwrap(), QosClass::Guaranteed);
    let g2 = pod(
        vec![
            container(
                "a",
                json!({"cpu": "1", "memory": "1Gi"}),
                json!({"cpu": "1000m", "memory": "1Gi"}),
            ),
            container(
                "b",
                json!({"cpu": "100m", "memory": "10Mi"}),
                json!({"cpu": "100m", "memory": "10Mi"}),
            ),
        ],
        vec![container(
            "i",
            json!(null),
            json!({"cpu": "2", "memory": "1Gi"}),
        )],
    );
    assert_eq!(qos_class(&g2).unwrap(), QosClass::Guaranteed);
    // Requests below limits, a missing memory limit, or one unlimited container.
    let b1 = pod(
        vec![container(
            "a",
            json!({"cpu": "100m", "memory": "64Mi"}),
            json!({"cpu": "200m", "memory": "64Mi"}),
        )],
        vec![],
    );
    assert_eq!(qos_class(&b1).unwrap(), QosClass::Burstable);
    let b2 = pod(
        vec![container("a", json!(null), json!({"cpu": "1"}))],
        vec![],
    );
    assert_eq!(qos_class(&b2).unwrap(), QosClass::Burstable);
    let b3 = pod(
        vec![
            container("a", json!(null), json!({"cpu": "1", "memory": "1Gi"})),
            container("b", json!(null), json!(null)),
        ],
        vec![],
    );
    assert_eq!(qos_class(&b3).unwrap(), QosClass::Burstable);
    // Only cpu and memory count: an ephemeral-storage request alone is BestEffort.
    let be2 = pod(
        vec![container(
            "a",
            json!({"ephemeral-storage": "1Gi"}),
            json!(null),
        )],
        vec![],
    );
    assert_eq!(qos_class(&be2).unwrap(), QosClass::BestEffort);
    let bad = pod(
        vec![container("a", json!({"cpu": "lots"}), json!(null))],
        vec![],
    );
    let e = qos_class(&bad).unwrap_err().to_string();
    assert!(
        e.contains("container a") && e.contains("cpu") && e.contains("lots"),
        "{e}"
    );
}

#[test]
fn container_resources_like_kubelet() {
    // Guaranteed: shares and quota from 500m, memory.max 64 MiB, no swap.
    let r = container_resources(&ctr(container(
        "a",
        json!(null),
        json!({"cpu": "500m", "memory": "64Mi"}),
    )))
    .unwrap();
    assert_eq!(r.cpu_shares, Some(512));
    assert_eq!(r.cpu_weight(), Some(20));
    assert_eq!(r.cpu_quota, Some(50_000));
    assert_eq!(r.cpu_period, Some(100_000));
    assert_eq!(r.memory_limit, Some(64 << 20));
    assert_eq!(
        r.to_oci(),
        json!({
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "memory": {"limit": 67108864},
            "unified": {"memory.swap.max": "0"}
        })
    );
    assert_eq!(
        r.cgroup_files(),
        vec![
            ("cpu.weight".to_string(), "20".to_string()),
            ("cpu.max".to_string(), "50000 100000".to_string()),
            ("memory.max".to_string(), "67108864".to_string()),
            ("memory.swap.max".to_string(), "0".to_string()),
        ]
    );
    // Burstable: request 250m → 256 shares, no limit → no quota, no memory.max.
    let r = container_resources(&ctr(container(
        "a",
        json!({"cpu": "250m", "memory": "1Gi"}),
        json!(null),
    )))
    .unwrap();
    assert_eq!(
        (r.cpu_shares, r.cpu_quota, r.memory_limit),
        (Some(256), None, None)
    );
    // A zero request with a limit takes the limit's shares.
    let r = container_resources(&ctr(container(
        "a",
        json!({"cpu": "0"}),
        json!({"cpu": "2"}),
    )))
    .unwrap();
    assert_eq!((r.cpu_shares, r.cpu_quota), (Some(2048), Some(200_000)));
    // BestEffort: the minimum.
    let r = container_resources(&ctr(container("a", json!(null), json!(null)))).unwrap();
    assert_eq!((r.cpu_shares, r.cpu_weight()), (Some(2), Some(1)));
    assert_eq!(
        bundle_resources(&ctr(container("a", json!(null), json!(null)))).unwrap(),
        json!({"cpu": {"shares": 2}, "unified": {"memory.swap.max": "0"}})
    );
    // A tiny limit still gets kubelet's 1 ms minimum quota.
    let r = container_resources(&ctr(container("a", json!(null), json!({"cpu": "1m"})))).unwrap();
    assert_eq!(r.cpu_quota, Some(1000));
}

#[test]
fn pod_resources_like_kubelet() {
    // Guaranteed: sums of the app containers; the init container's larger cpu wins.
    let g = pod(
        vec![
            container("a", json!(null), json!({"cpu": "500m", "memory": "64Mi"})),
            container("b", json!(null), json!({"cpu": "250m", "memory": "32Mi"})),
        ],
        vec![container(
            "i",
            json!(null),
            json!({"cpu": "1", "memory": "16Mi"}),
        )],
    );
    let r = pod_resources(&g, 1024).unwrap();
    assert_eq!(r.cpu_shares, Some(1024));
    assert_eq!(r.cpu_quota, Some(100_000));
    assert_eq!(r.cpu_period, Some(100_000));
    assert_eq!(r.memory_limit, Some(96 << 20));
    assert_eq!(r.pids_limit, Some(1024));
    // Burstable with every limit declared: quota and memory.max.
    let b = pod(
        vec![
            container(
                "a",
                json!({"cpu": "100m", "memory": "10Mi"}),
                json!({"cpu": "200m", "memory": "20Mi"}),
            ),
            container(
                "b",
                json!({"cpu": "100m"}),
                json!({"cpu": "300m", "memory": "30Mi"}),
            ),
        ],
        vec![],
    );
    let r = pod_resources(&b, 0).unwrap();
    assert_eq!(r.cpu_shares, Some(204));
    assert_eq!(r.cpu_quota, Some(50_000));
    assert_eq!(r.memory_limit, Some(50 << 20));
    assert_eq!(r.pids_limit, None);
    // Burstable with a container without limits: shares only.
    let b = pod(
        vec![
            container(
                "a",
                json!({"cpu": "100m"}),
                json!({"cpu": "200m", "memory": "20Mi"}),
            ),
            container("b", json!(null), json!(null)),
        ],
        vec![],
    );
    let r = pod_resources(&b, 0).unwrap();
    assert_eq!(
        (r.cpu_shares, r.cpu_quota, r.memory_limit),
        (Some(102), None, None)
    );
    // BestEffort: the minimum shares.
    let be = pod(vec![container("a", json!(null), json!(null))], vec![]);
    let r = pod_resources(&be, 100).unwrap();
    assert_eq!(
        (r.cpu_shares, r.cpu_quota, r.memory_limit, r.pids_limit),
        (Some(2), None, None, Some(100))
    );
    // The pod overhead counts too.
    let mut o = pod(
        vec![container(
            "a",
            json!(null),
            json!({"cpu": "500m", "memory": "64Mi"}),
        )],
        vec![],
    );
    o.spec.as_mut().unwrap().overhead =
        Some(serde_json::from_value(json!({"cpu": "100m", "memory": "16Mi"})).unwrap());
    let r = pod_resources(&o, 0).unwrap();
    assert_eq!(
        (r.cpu_shares, r.cpu_quota, r.memory_limit),
        (Some(614), Some(60_000), Some(80 << 20))
    );
}

fn pc(qos: QosClass) -> PodCgroup {
    PodCgroup::new("0f1e2d3c-aaaa-bbbb-cccc-123456789abc", qos).unwrap()
}

#[test]
fn names_per_driver() {
    assert_eq!(
        pod_slice(&pc(QosClass::Burstable)),
        "kubepods-burstable-pod0f1e2d3c_aaaa_bbbb_cccc_123456789abc.slice"
    );
    assert_eq!(
        pod_slice(&pc(QosClass::Guaranteed)),
        "kubepods-pod0f1e2d3c_aaaa_bbbb_cccc_123456789abc.slice"
    );
    assert_eq!(
        slice_chain(&pc(QosClass::BestEffort)),
        vec![
            "kubepods.slice",
            "kubepods-besteffort.slice",
            "kubepods-besteffort-pod0f1e2d3c_aaaa_bbbb_cccc_123456789abc.slice"
        ]
    );
    assert_eq!(slice_chain(&pc(QosClass::Guaranteed)).len(), 2);
    assert_eq!(container_scope("u-web"), "skiff-u-web.scope");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let sd = Systemd::new("/sys/fs/cgroup".into(), rt.handle().clone());
    let p = pc(QosClass::Burstable);
    assert_eq!(
        sd.container_dir(&p, "u-web"),
        Path::new("/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_aaaa_bbbb_cccc_123456789abc.slice/skiff-u-web.scope")
    );
    let parent = sd.cgroup_parent(&p);
    // What the shim parses back into the same scope.
    let path = container_cgroups_path(&parent, "u-web");
    let scope = skiff_shim::cgroup::systemd::ScopePath::parse(&path).unwrap();
    assert_eq!(
        scope.dir(Path::new("/sys/fs/cgroup")).unwrap(),
        sd.container_dir(&p, "u-web")
    );
    let fs = Cgroupfs { root: "/cg".into() };
    assert_eq!(
        fs.cgroup_parent(&p),
        "kubepods/burstable/pod0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
    );
    assert_eq!(
        fs.cgroup_parent(&pc(QosClass::Guaranteed)),
        "kubepods/pod0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
    );
    assert_eq!(
        container_cgroups_path(&fs.cgroup_parent(&p), "u-web"),
        "kubepods/burstable/pod0f1e2d3c-aaaa-bbbb-cccc-123456789abc/u-web"
    );
    assert_eq!(
        skiff_shim::cgroup::cgroup_dir(
            Path::new("/cg"),
            Path::new(&container_cgroups_path(&fs.cgroup_parent(&p), "u-web"))
        )
        .unwrap(),
        fs.container_dir(&p, "u-web")
    );
    assert!(PodCgroup::new("../etc", QosClass::Burstable).is_err());
    assert!(PodCgroup::new("", QosClass::Burstable).is_err());
    assert_eq!(
        select_driver(Some(Driver::Cgroupfs), Path::new("/")),
        Driver::Cgroupfs
    );
    let d = tempfile::tempdir().unwrap();
    assert_eq!(select_driver(None, d.path()), Driver::Systemd);
    assert_eq!(
        select_driver(None, &d.path().join("none")),
        Driver::Cgroupfs
    );
    assert!("systemd".parse::<Driver>().is_ok() && "v1".parse::<Driver>().is_err());
}

#[test]
fn systemd_properties_of_a_pod_slice() {
    let r = Resources {
        cpu_shares: Some(1024),
        cpu_quota: Some(15_000),
        cpu_period: Some(100_000),
        memory_limit: Some(1 << 20),
        pids_limit: Some(100),
        ..Default::default()
    };
    use zbus::zvariant::Value;
    let p = slice_properties(&r);
    let names: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "CPUWeight",
            "CPUQuotaPerSecUSec",
            "CPUQuotaPeriodUSec",
            "MemoryMax",
            "TasksMax"
        ]
    );
    // Every value is a D-Bus uint64 ("t"), as systemd requires for these properties.
    assert_eq!(p[0].1, Value::U64(39));
    assert_eq!(p[1].1, Value::U64(150_000));
    assert_eq!(p[2].1, Value::U64(100_000));
    assert_eq!(p[3].1, Value::U64(1 << 20));
    assert_eq!(p[4].1, Value::U64(100));
    // Below systemd's 10 ms granularity the quota rounds up.
    let small = Resources {
        cpu_quota: Some(1000),
        cpu_period: Some(100_000),
        ..Default::default()
    };
    assert_eq!(slice_properties(&small)[0].1, Value::U64(10_000));
}

#[test]
fn systemd_driver_errors_are_clear() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = pc(QosClass::Burstable);
    let res = Resources::default();
    // No systemd: refused before any call, naming the fix.
    let sd = Systemd::new(d.path().into(), rt.handle().clone())
        .with_bus(Bus::System, d.path().join("no-systemd"));
    let e = sd.ensure_pod(&p, &res).unwrap_err().to_string();
    assert!(
        e.contains("no-systemd") && e.contains("--cgroup-driver=cgroupfs"),
        "{e}"
    );
    // systemd "running" but its bus unreachable: the address and the call are named.
    let addr = format!("unix:path={}", d.path().join("no-bus").display());
    let sd = Systemd::new(d.path().into(), rt.handle().clone())
        .with_bus(Bus::Address(addr.clone()), d.path().into());
    let e = sd.ensure_pod(&p, &res).unwrap_err().to_string();
    assert!(e.contains(&addr) && e.contains("connect"), "{e}");
    let e = sd.remove_pod(&p).unwrap_err().to_string();
    assert!(e.contains("connect"), "{e}");
}

/// A fake cgroup v2 hierarchy: the root offers cpu, memory and pids, and each level
/// created gets `cgroup.controllers` and the interface files the kernel would show.
fn fake_level(dir: &Path, controllers: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
    for f in ["cpu.weight", "cpu.max", "memory.max", "pids.max"] {
        if controllers.contains(f.split('.').next().unwrap()) {
            std::fs::write(dir.join(f), "").unwrap();
        }
    }
}

#[test]
fn cgroupfs_driver_on_a_fake_hierarchy() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cg");
    fake_level(&root, "cpu memory pids");
    let fs = Cgroupfs { root: root.clone() };
    let p = pc(QosClass::BestEffort);
    // The kernel would make these files on mkdir; the fake has them beforehand.
    fake_level(&root.join("kubepods"), "cpu memory pids");
    fake_level(&root.join("kubepods/besteffort"), "cpu memory pids");
    fake_level(&fs.pod_dir(&p), "cpu memory");
    let r = Resources {
        cpu_shares: Some(2),
        memory_limit: Some(4096),
        pids_limit: Some(64),
        ..Default::default()
    };
    let missing = fs.ensure_pod(&p, &r).unwrap();
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap();
    let pod_rel = "kubepods/besteffort/pod0f1e2d3c-aaaa-bbbb-cccc-123456789abc";
    assert_eq!(read(&format!("{pod_rel}/cpu.weight")), "1");
    assert_eq!(read(&format!("{pod_rel}/memory.max")), "4096");
    assert_eq!(read("kubepods/besteffort/cpu.weight"), "1");
    // One write per controller; the fake keeps the last.
    assert_eq!(read("cgroup.subtree_control"), "+pids");
    assert_eq!(read("kubepods/cgroup.subtree_control"), "+pids");
    // The pod level lacks pids: for its children, and for its own pids.max.
    assert_eq!(
        read(&format!("{pod_rel}/cgroup.subtree_control")),
        "+memory"
    );
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert!(
        missing[0].starts_with("pids.max=64: pids controller absent (not in ")
            && missing[0].contains(pod_rel),
        "{missing:?}"
    );
    // Stats read back from the pod's files.
    std::fs::write(fs.pod_dir(&p).join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 2\nthrottled_usec 10\n").unwrap();
    std::fs::write(fs.pod_dir(&p).join("memory.current"), "10485760\n").unwrap();
    std::fs::write(
        fs.pod_dir(&p).join("memory.stat"),
        "anon 4096\nfile 8192\nactive_file 1024\ninactive_file 2097152\n",
    )
    .unwrap();
    let s = fs.pod_stats(&p).unwrap();
    assert_eq!(s.cpu_usage_usec, 1500);
    assert_eq!(s.cpu_nr_throttled, Some(2));
    assert_eq!(s.memory_usage_bytes, Some(10 << 20));
    assert_eq!(s.memory_working_set_bytes, Some((10 << 20) - (2 << 20)));
    assert_eq!(s.pids_current, None);
    assert!(fs
        .container_stats(&p, "gone")
        .unwrap_err()
        .to_string()
        .contains("gone/cpu.stat"));
}

#[test]
fn cgroupfs_removal() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cg");
    std::fs::create_dir_all(&root).unwrap();
    let fs = Cgroupfs { root: root.clone() };
    let p = pc(QosClass::Guaranteed);
    // A hierarchy without any controller: directories only, nothing reported as enforced.
    let r = pod_resources(
        &pod(
            vec![container(
                "a",
                json!(null),
                json!({"cpu": "1", "memory": "1Mi"}),
            )],
            vec![],
        ),
        0,
    )
    .unwrap();
    let missing = fs.ensure_pod(&p, &r).unwrap();
    assert_eq!(missing.len(), 3, "{missing:?}");
    assert!(
        missing.iter().all(|m| m.contains("controller absent")),
        "{missing:?}"
    );
    assert!(fs.pod_dir(&p).is_dir());
    // A leftover container cgroup goes too, deepest first.
    std::fs::create_dir(fs.container_dir(&p, "c1")).unwrap();
    // With a process inside, removal is refused with its pid.
    std::fs::write(fs.container_dir(&p, "c1").join("cgroup.procs"), "4242\n").unwrap();
    let e = fs.remove_pod(&p).unwrap_err().to_string();
    assert!(e.contains("4242") && e.contains("c1"), "{e}");
    std::fs::remove_file(fs.container_dir(&p, "c1").join("cgroup.procs")).unwrap();
    fs.remove_pod(&p).unwrap();
    assert!(!fs.pod_dir(&p).exists());
    assert!(root.join("kubepods").is_dir(), "the QoS level stays");
    fs.remove_pod(&p).unwrap();
    // By uid alone: whichever QoS level holds it.
    let b = pc(QosClass::BestEffort);
    std::fs::create_dir_all(fs.pod_dir(&b)).unwrap();
    fs.remove_pod_by_uid(&b.uid).unwrap();
    assert!(!fs.pod_dir(&b).exists());
    assert!(root.join("kubepods/besteffort").is_dir());
    assert!(fs.remove_pod_by_uid("../x").is_err());
}

#[test]
fn stats_parsing() {
    assert_eq!(
        stats::flat_key("usage_usec 12\nnr_throttled 3\n", "nr_throttled"),
        Some(3)
    );
    assert_eq!(stats::flat_key("usage_usec 12\n", "user_usec"), None);
    assert_eq!(stats::working_set(100, "inactive_file 30\n"), 70);
    assert_eq!(stats::working_set(100, "inactive_file 300\n"), 0);
    assert_eq!(stats::working_set(100, ""), 100);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("cpu.stat"), "user_usec 1\n").unwrap();
    assert!(read_stats(d.path())
        .unwrap_err()
        .to_string()
        .contains("usage_usec"));
    std::fs::write(d.path().join("cpu.stat"), "usage_usec 7\n").unwrap();
    std::fs::write(d.path().join("memory.current"), "lots\n").unwrap();
    assert!(read_stats(d.path())
        .unwrap_err()
        .to_string()
        .contains("memory.current"));
    std::fs::write(d.path().join("memory.current"), "50\n").unwrap();
    let s = read_stats(d.path()).unwrap();
    assert_eq!(
        (
            s.cpu_usage_usec,
            s.memory_working_set_bytes,
            s.cpu_nr_throttled
        ),
        (7, Some(50), None)
    );
}
