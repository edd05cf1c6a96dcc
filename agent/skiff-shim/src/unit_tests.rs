//! Unit tests that need no root: spec → plan translation, the mount
//! sequence through the fake Syscall, state files, helpers.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use crate::error::ShimError;
use crate::plan::{build_plan, load_spec, parse_mount_options, DeviceKind, MountKind, Plan};
use crate::rootfs::{finish_rootfs, mask_path, prepare_rootfs, readonly_path, secure_join};
use crate::state::{
    parse_start_time, rfc3339_nano, validate_id, ExitInfo, Saved, StateDir, Status,
};
use crate::syscall::{Call, FakeSyscall, FileKind};

/// A config like `runc spec` writes (terminal off), edited by each test.
fn runc_like() -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

struct Bundle {
    dir: tempfile::TempDir,
}

impl Bundle {
    fn new(cfg: &serde_json::Value) -> Bundle {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        Bundle { dir }
    }
    fn path(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap()
    }
    fn plan(&self) -> crate::Result<Plan> {
        let spec = load_spec(&self.path())?;
        build_plan(&self.path(), &spec)
    }
}

fn plan_of(cfg: serde_json::Value) -> crate::Result<Plan> {
    Bundle::new(&cfg).plan()
}

fn err_text<T>(r: crate::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn runc_spec_namespaces_are_all_new() {
    let p = plan_of(runc_like()).unwrap();
    assert_eq!(
        p.namespaces.new,
        CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNS
    );
    assert!(p.namespaces.join.is_empty());
    assert!(p.namespaces.has_mount_ns());
    assert_eq!(
        crate::process::split_namespace_flags(&p),
        (p.namespaces.new, CloneFlags::empty())
    );
}

#[test]
fn runc_spec_mounts_flags_and_data() {
    let p = plan_of(runc_like()).unwrap();
    assert_eq!(p.mounts.len(), 6);
    let dev = &p.mounts[1];
    assert_eq!(dev.destination, Path::new("/dev"));
    assert_eq!(
        dev.kind,
        MountKind::Fs {
            fstype: "tmpfs".into(),
            source: "tmpfs".into()
        }
    );
    assert_eq!(dev.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
    assert_eq!(dev.data, "mode=755,size=65536k");
    let pts = &p.mounts[2];
    assert_eq!(pts.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
    assert_eq!(pts.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
    let sys = &p.mounts[5];
    assert_eq!(
        sys.flags,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV | MsFlags::MS_RDONLY
    );
    assert_eq!(sys.data, "");
}

#[test]
fn runc_spec_process_caps_rlimits() {
    let p = plan_of(runc_like()).unwrap();
    let c = p.process.caps.as_ref().unwrap();
    let want: caps::CapsHashSet = [
        caps::Capability::CAP_AUDIT_WRITE,
        caps::Capability::CAP_KILL,
        caps::Capability::CAP_NET_BIND_SERVICE,
    ]
    .into_iter()
    .collect();
    assert_eq!(c.bounding, want);
    assert_eq!(c.effective, want);
    assert_eq!(c.ambient, want);
    assert!(c.inheritable.is_empty());
    assert_eq!(p.process.rlimits.len(), 1);
    assert_eq!(p.process.rlimits[0].resource, libc::RLIMIT_NOFILE as i32);
    assert_eq!(
        (p.process.rlimits[0].soft, p.process.rlimits[0].hard),
        (1024, 1024)
    );
    assert!(p.process.no_new_privileges);
    assert!(p.root_readonly);
    assert_eq!(p.hostname.as_deref(), Some("runc"));
    assert_eq!(p.rootfs_propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    assert_eq!(p.process.args, vec!["sh".to_string()]);
}

#[test]
fn no_capabilities_means_untouched() {
    let mut c = runc_like();
    c["process"].as_object_mut().unwrap().remove("capabilities");
    let p = plan_of(c).unwrap();
    assert!(p.process.caps.is_none());
}

#[test]
fn mount_options_set_and_clear() {
    let o = |v: &[&str]| parse_mount_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let (set, _, prop, data) = o(&["ro", "rw", "nosuid", "rbind", "rslave", "size=1k"]);
    assert_eq!(set, MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC);
    assert_eq!(prop, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
    assert_eq!(data, vec!["size=1k".to_string()]);
    let (set, clear, prop, _) = o(&["exec", "noexec", "private"]);
    assert_eq!(set, MsFlags::MS_NOEXEC);
    assert!(clear.is_empty());
    assert_eq!(prop, vec![MsFlags::MS_PRIVATE]);
}

#[test]
fn bind_mount_resolves_relative_source_and_remounts_ro() {
    let mut c = runc_like();
    c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro", "rprivate"]}
    ));
    let b = Bundle::new(&c);
    std::fs::create_dir(b.path().join("data")).unwrap();
    let p = b.plan().unwrap();
    let m = p.mounts.last().unwrap();
    assert_eq!(
        m.kind,
        MountKind::Bind {
            source: b.path().join("data"),
            recursive: true
        }
    );
    assert!(m.bind_needs_remount());
    assert_eq!(m.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
}

#[test]
fn bind_mount_missing_source_names_field_and_path() {
    let mut c = runc_like();
    c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/data", "type": "bind", "source": "/nonexistent/skiff-x", "options": ["bind"]}
    ));
    let e = err_text(plan_of(c));
    assert!(e.contains("mounts[6].source"), "{e}");
    assert!(e.contains("/nonexistent/skiff-x"), "{e}");
}

#[test]
fn missing_rootfs_names_root_path() {
    let b = Bundle::new(&runc_like());
    std::fs::remove_dir(b.path().join("rootfs")).unwrap();
    let e = err_text(b.plan());
    assert!(e.contains("root.path"), "{e}");
    assert!(e.contains("rootfs"), "{e}");
}

#[test]
fn malformed_config_reports_file_and_position() {
    let b = Bundle::new(&runc_like());
    std::fs::write(
        b.path().join("config.json"),
        "{\"ociVersion\": \"1.0\",\n \"process\": [",
    )
    .unwrap();
    let e = err_text(b.plan());
    assert!(e.contains("config.json"), "{e}");
    assert!(e.contains("line 2"), "{e}");
    assert!(matches!(b.plan(), Err(ShimError::Bundle { .. })));
}

#[test]
fn user_namespace_needs_mappings() {
    let mut c = runc_like();
    c["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "user"}));
    let e = err_text(plan_of(c.clone()));
    assert!(e.contains("uidMappings"), "{e}");
    c["linux"]["uidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    c["linux"]["gidMappings"] =
        serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let p = plan_of(c).unwrap();
    assert!(p.namespaces.creates(CloneFlags::CLONE_NEWUSER));
    assert_eq!(p.uid_mappings[0].host_id, 100000);
    assert_eq!(p.gid_mappings[0].size, 65536);
}

#[test]
fn joined_namespaces_keep_user_first_and_split_flags() {
    let mut c = runc_like();
    c["linux"]["namespaces"] = serde_json::json!([
        {"type": "network", "path": "/proc/self/ns/net"},
        {"type": "user", "path": "/proc/self/ns/user"},
        {"type": "mount"}, {"type": "uts"}
    ]);
    let p = plan_of(c).unwrap();
    assert_eq!(p.namespaces.join[0].0, CloneFlags::CLONE_NEWUSER);
    assert_eq!(p.namespaces.join[1].0, CloneFlags::CLONE_NEWNET);
    let (clone, unshare) = crate::process::split_namespace_flags(&p);
    assert!(clone.is_empty());
    assert_eq!(unshare, CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS);
}

#[test]
fn namespace_errors() {
    let mut c = runc_like();
    c["linux"]["namespaces"] =
        serde_json::json!([{"type": "network", "path": "/nonexistent/netns"}]);
    c.as_object_mut().unwrap().remove("hostname");
    let e = err_text(plan_of(c.clone()));
    assert!(e.contains("/nonexistent/netns"), "{e}");
    c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "pid"}]);
    assert!(err_text(plan_of(c.clone())).contains("twice"));
    c["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
    c["hostname"] = serde_json::json!("x");
    assert!(err_text(plan_of(c.clone())).contains("uts"));
    c.as_object_mut().unwrap().remove("hostname");
    c["domainname"] = serde_json::json!("example");
    assert!(err_text(plan_of(c)).contains("domainname"));
}

#[test]
fn process_errors_name_fields() {
    let mut c = runc_like();
    c["process"]["terminal"] = serde_json::json!(true);
    assert!(plan_of(c).unwrap().process.terminal);
    let mut c = runc_like();
    c["process"]["args"] = serde_json::json!([]);
    assert!(err_text(plan_of(c)).contains("process.args"));
    let mut c = runc_like();
    c["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 20}]);
    assert!(err_text(plan_of(c)).contains("process.rlimits[0]"));
    let mut c = runc_like();
    c["process"]["cwd"] = serde_json::json!("relative");
    assert!(err_text(plan_of(c)).contains("process.cwd"));
}

#[test]
fn cgroup_mount_means_v2_and_devices_merge() {
    let mut c = runc_like();
    c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]}
    ));
    c["linux"]["devices"] = serde_json::json!([
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438},
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}
    ]);
    let p = plan_of(c).unwrap();
    assert!(matches!(&p.mounts[6].kind, MountKind::Fs { fstype, .. } if fstype == "cgroup2"));
    assert_eq!(p.devices.len(), 7);
    assert_eq!(
        p.devices
            .iter()
            .filter(|d| d.path == Path::new("/dev/null"))
            .count(),
        1
    );
    let fuse = p
        .devices
        .iter()
        .find(|d| d.path == Path::new("/dev/fuse"))
        .unwrap();
    assert_eq!(
        (fuse.kind, fuse.major, fuse.minor, fuse.mode),
        (DeviceKind::Char, 10, 229, 0o666)
    );
}

#[test]
fn rootfs_sequence_with_fake_syscalls() {
    let mut c = runc_like();
    c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["bind", "ro"]}
    ));
    let p = plan_of(c).unwrap();
    let r = &p.rootfs;
    let fake = FakeSyscall::default().with_kind("/etc/hosts", FileKind::File);
    prepare_rootfs(&fake, &p, false).unwrap();
    let calls = fake.calls();
    // Propagation of "/" first, then the rootfs bind onto itself.
    assert_eq!(
        fake.mounts()[0],
        (
            PathBuf::from("/"),
            None,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC
        )
    );
    assert_eq!(
        fake.mounts()[1],
        (
            r.clone(),
            Some("bind".into()),
            MsFlags::MS_BIND | MsFlags::MS_REC
        )
    );
    assert!(fake
        .mounts()
        .contains(&(r.join("proc"), Some("proc".into()), MsFlags::empty())));
    // The read-only file bind: touch, bind, then a remount with MS_RDONLY.
    assert!(calls.contains(&Call::Touch(r.join("etc/hosts"))));
    assert!(fake.mounts().contains(&(
        r.join("etc/hosts"),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY
    )));
    // Six default devices, mknod'ed inside the rootfs.
    let nodes: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Mknod(p, ma, mi) => Some((p.clone(), *ma, *mi)),
            _ => None,
        })
        .collect();
    assert_eq!(nodes.len(), 6);
    assert!(nodes.contains(&(r.join("dev/null"), 1, 3)));
    assert!(nodes.contains(&(r.join("dev/tty"), 5, 0)));
    assert!(calls.contains(&Call::Symlink("pts/ptmx".into(), r.join("dev/ptmx"))));
    assert!(calls.contains(&Call::Symlink("/proc/self/fd".into(), r.join("dev/fd"))));
    // pivot_root(".", ".") from inside the rootfs, then the old root detached.
    let pivot = calls
        .iter()
        .position(|c| *c == Call::PivotRoot(".".into()))
        .unwrap();
    assert_eq!(calls[pivot - 1], Call::Chdir(r.clone()));
    assert_eq!(calls[pivot + 2], Call::Umount(".".into()));
    assert_eq!(calls.last().unwrap(), &Call::Chdir("/".into()));
}

#[test]
fn rootfs_in_user_namespace_binds_devices() {
    let p = plan_of(runc_like()).unwrap();
    let fake = FakeSyscall::default();
    prepare_rootfs(&fake, &p, true).unwrap();
    assert!(!fake.calls().iter().any(|c| matches!(c, Call::Mknod(..))));
    assert!(fake.mounts().contains(&(
        p.rootfs.join("dev/urandom"),
        Some("bind".into()),
        MsFlags::MS_BIND
    )));
}

#[test]
fn rootfs_shared_propagation_applied_after_pivot() {
    let mut c = runc_like();
    c["linux"]["rootfsPropagation"] = serde_json::json!("shared");
    let p = plan_of(c).unwrap();
    let fake = FakeSyscall::default();
    prepare_rootfs(&fake, &p, false).unwrap();
    let m = fake.mounts();
    assert_eq!(m[0].2, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    assert_eq!(
        m.last().unwrap(),
        &(
            PathBuf::from("/"),
            None,
            MsFlags::MS_SHARED | MsFlags::MS_REC
        )
    );
}

#[test]
fn dev_bind_skips_device_creation() {
    let mut c = runc_like();
    c["mounts"][1] = serde_json::json!({"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind"]});
    let p = plan_of(c).unwrap();
    let fake = FakeSyscall::default().with_kind("/dev", FileKind::Dir);
    prepare_rootfs(&fake, &p, false).unwrap();
    assert!(!fake.calls().iter().any(|c| matches!(c, Call::Mknod(..))));
}

#[test]
fn masked_and_readonly_paths() {
    let fake = FakeSyscall {
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        ..Default::default()
    }
    .with_kind("/proc/acpi", FileKind::Dir)
    .with_kind("/proc/kcore", FileKind::File)
    .with_kind("/proc/sys", FileKind::Dir);
    mask_path(&fake, Path::new("/proc/acpi")).unwrap();
    mask_path(&fake, Path::new("/proc/kcore")).unwrap();
    mask_path(&fake, Path::new("/proc/missing")).unwrap();
    readonly_path(&fake, Path::new("/proc/sys")).unwrap();
    readonly_path(&fake, Path::new("/proc/nothere")).unwrap();
    assert_eq!(
        fake.mounts(),
        vec![
            (
                PathBuf::from("/proc/acpi"),
                Some("tmpfs".into()),
                MsFlags::MS_RDONLY
            ),
            (
                PathBuf::from("/proc/kcore"),
                Some("bind".into()),
                MsFlags::MS_BIND
            ),
            (
                PathBuf::from("/proc/sys"),
                Some("bind".into()),
                MsFlags::MS_BIND | MsFlags::MS_REC
            ),
            (
                PathBuf::from("/proc/sys"),
                None,
                MsFlags::MS_NOSUID
                    | MsFlags::MS_NOEXEC
                    | MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_REC
            ),
        ]
    );
}

#[test]
fn finish_sets_hostname_sysctl_and_readonly_root() {
    let mut c = runc_like();
    c["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
    let p = plan_of(c).unwrap();
    let fake = FakeSyscall::default();
    finish_rootfs(&fake, &p).unwrap();
    let calls = fake.calls();
    assert_eq!(calls[0], Call::Hostname("runc".into()));
    assert!(calls.contains(&Call::Write(
        "/proc/sys/net/ipv4/ip_forward".into(),
        "1".into()
    )));
    assert_eq!(
        fake.mounts().last().unwrap(),
        &(
            PathBuf::from("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY
        )
    );
}

#[test]
fn secure_join_keeps_symlinks_inside_root() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("a/abs")).unwrap();
    std::os::unix::fs::symlink("../../../../..", root.join("a/up")).unwrap();
    std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
    assert_eq!(
        secure_join(root, Path::new("/a/abs/passwd")).unwrap(),
        root.join("etc/passwd")
    );
    assert_eq!(
        secure_join(root, Path::new("/a/up/x")).unwrap(),
        root.join("x")
    );
    assert_eq!(
        secure_join(root, Path::new("/../../a/b")).unwrap(),
        root.join("a/b")
    );
    assert!(secure_join(root, Path::new("/loop1/x")).is_err());
}

#[test]
fn timestamps_are_rfc3339_nano() {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5);
    assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.000000005Z");
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(951_782_400, 0); // leap day 2000
    assert_eq!(rfc3339_nano(t), "2000-02-29T00:00:00.000000000Z");
}

#[test]
fn stat_start_time_survives_odd_comm() {
    let line = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
    assert_eq!(parse_start_time(line), Some(987654));
    let own = crate::state::process_start_time(std::process::id() as i32).unwrap();
    assert!(crate::state::process_alive(std::process::id() as i32, own));
    assert!(!crate::state::process_alive(
        std::process::id() as i32,
        own + 1
    ));
}

#[test]
fn ids_are_checked() {
    assert!(validate_id("abc-1_2.3").is_ok());
    for bad in ["", "..", "a/b", "a b"] {
        assert!(validate_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn state_dir_roundtrip_and_status() {
    let d = tempfile::tempdir().unwrap();
    let sd = StateDir::new(d.path(), "c1").unwrap();
    std::fs::create_dir(&sd.dir).unwrap();
    let me = std::process::id() as i32;
    let saved = Saved {
        oci_version: "1.0.2".into(),
        id: "c1".into(),
        pid: me,
        pid_start_time: crate::state::process_start_time(me).unwrap(),
        monitor_pid: me,
        monitor_start_time: 0,
        bundle: "/b".into(),
        rootfs: "/b/rootfs".into(),
        created: "t".into(),
        cgroup_path: None,
        systemd_unit: None,
        limits_not_enforced: vec![],
    };
    sd.save(&saved).unwrap();
    assert_eq!(sd.load().unwrap(), saved);
    assert_eq!(sd.status(&saved), Status::Running);
    std::fs::write(sd.fifo(), "").unwrap();
    assert_eq!(sd.status(&saved), Status::Created);
    sd.save_exit(&ExitInfo {
        exit_code: 137,
        signal: Some(9),
        finished: "t2".into(),
        oom_killed: true,
    })
    .unwrap();
    let r = sd.report().unwrap();
    assert_eq!(
        (r.status, r.pid, r.exit_code, r.signal),
        (Status::Stopped, 0, Some(137), Some(9))
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["status"], "stopped");
    assert_eq!(json["oomKilled"], true);
    sd.remove().unwrap();
    assert!(!sd.dir.exists());
    assert!(matches!(sd.load(), Err(ShimError::Container { .. })));
}

#[test]
fn cgroup_dirs_stay_under_root() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    assert_eq!(
        crate::cgroup::cgroup_dir(root, Path::new("/pods/c1")).unwrap(),
        root.join("pods/c1")
    );
    assert!(crate::cgroup::cgroup_dir(root, Path::new("../x")).is_err());
    assert!(crate::cgroup::cgroup_dir(root, Path::new("/")).is_err());
    let cg = crate::cgroup::Cgroup::create(root, Path::new("a/b")).unwrap();
    cg.add(nix::unistd::Pid::from_raw(42)).unwrap();
    assert_eq!(cg.pids(), vec![42]);
    assert!(!cg.limits_enforced());
    std::fs::write(root.join("a/cgroup.subtree_control"), "cpu memory pids").unwrap();
    assert!(cg.limits_enforced());
}

#[test]
fn signals_parse_by_name_and_number() {
    use nix::sys::signal::Signal;
    assert_eq!(
        crate::container::parse_signal("KILL").unwrap(),
        Signal::SIGKILL
    );
    assert_eq!(
        crate::container::parse_signal("sigterm").unwrap(),
        Signal::SIGTERM
    );
    assert_eq!(
        crate::container::parse_signal("10").unwrap(),
        Signal::SIGUSR1
    );
    assert!(crate::container::parse_signal("NOPE").is_err());
}

#[test]
fn executable_lookup_uses_container_path() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let exe = d.path().join("tool");
    std::fs::write(&exe, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = vec![format!("PATH=/nonexistent:{}", d.path().display())];
    assert_eq!(crate::process::find_executable("tool", &env).unwrap(), exe);
    let e = crate::process::find_executable("nope", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found in $PATH"), "{e}");
    assert!(crate::process::find_executable("/nonexistent/x", &env).is_err());
}

#[test]
fn home_comes_from_passwd() {
    let pw = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbad line\n";
    assert_eq!(crate::process::home_of(pw, 0), "/root");
    assert_eq!(crate::process::home_of(pw, 1000), "/home/app");
    assert_eq!(crate::process::home_of(pw, 4242), "/");
}

fn read_log(p: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap();
            assert!(ts.ends_with('Z') && ts.len() == 30, "timestamp {ts}");
            (
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
                it.next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn cri_log_lines_partials_and_long_lines() {
    use crate::logger::{CriLog, LineSplitter, Rotation, MAX_LINE};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c/0.log");
    let mut log = CriLog::open(
        &p,
        Rotation {
            max_size: 0,
            max_files: 1,
        },
    )
    .unwrap();
    let mut out = LineSplitter::new("stdout");
    let mut err = LineSplitter::new("stderr");
    out.feed(b"a\nb", &mut log).unwrap();
    err.feed(b"oops\n", &mut log).unwrap();
    out.feed(b"c\n\n", &mut log).unwrap();
    let long = vec![b'x'; MAX_LINE + 10];
    out.feed(&long, &mut log).unwrap();
    out.feed(b"\ntail", &mut log).unwrap();
    out.finish(&mut log).unwrap();
    err.finish(&mut log).unwrap();
    let recs = read_log(&p);
    let want = [
        ("stdout", "F", "a".to_string()),
        ("stderr", "F", "oops".to_string()),
        ("stdout", "F", "bc".to_string()),
        ("stdout", "F", String::new()),
        ("stdout", "P", "x".repeat(MAX_LINE)),
        ("stdout", "F", "x".repeat(10)),
        ("stdout", "F", "tail".to_string()),
    ];
    assert_eq!(recs.len(), want.len(), "{recs:?}");
    for (r, w) in recs.iter().zip(want.iter()) {
        assert_eq!((r.0.as_str(), r.1.as_str(), &r.2), (w.0, w.1, &w.2));
    }
}

#[test]
fn cri_log_rotates_by_size_and_count() {
    use crate::logger::{CriLog, LineSplitter, Rotation};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("0.log");
    let mut log = CriLog::open(
        &p,
        Rotation {
            max_size: 200,
            max_files: 3,
        },
    )
    .unwrap();
    let mut out = LineSplitter::new("stdout");
    for i in 0..20 {
        out.feed(
            format!("line number {i:03} with some padding\n").as_bytes(),
            &mut log,
        )
        .unwrap();
    }
    let size = |s: &str| std::fs::metadata(d.path().join(s)).map(|m| m.len()).ok();
    assert!(size("0.log").unwrap() <= 200);
    assert!(size("0.log.1").unwrap() <= 200);
    assert!(size("0.log.2").unwrap() <= 200);
    assert_eq!(size("0.log.3"), None);
    // The newest line is in the current file, older ones rotated out in order.
    let cur = read_log(&p);
    assert!(cur.last().unwrap().2.starts_with("line number 019"));
    let older = read_log(&d.path().join("0.log.1"));
    assert!(older.last().unwrap().2 < cur[0].2);
}

#[test]
fn overlay_annotations_become_an_overlay_mount() {
    let mut c = runc_like();
    let b = Bundle::new(&c);
    for d in ["l1", "l2", "up", "work"] {
        std::fs::create_dir(b.path().join(d)).unwrap();
    }
    c["annotations"] = serde_json::json!({
        crate::plan::ANN_LOWER: format!("l1:{}", b.path().join("l2").display()),
        crate::plan::ANN_UPPER: "up",
        crate::plan::ANN_WORK: "work",
    });
    std::fs::write(b.path().join("config.json"), c.to_string()).unwrap();
    let p = b.plan().unwrap();
    let o = p.overlay.clone().unwrap();
    let bp = b.path();
    assert_eq!(
        o.data(),
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            bp.join("l1").display(),
            bp.join("l2").display(),
            bp.join("up").display(),
            bp.join("work").display()
        )
    );
    let fake = FakeSyscall::default();
    prepare_rootfs(&fake, &p, false).unwrap();
    assert_eq!(
        fake.calls()[1],
        Call::Mount {
            source: Some("overlay".into()),
            target: p.rootfs.clone(),
            fstype: Some("overlay".into()),
            flags: MsFlags::empty(),
            data: Some(o.data()),
        }
    );
    // Errors name the annotation.
    c["annotations"][crate::plan::ANN_UPPER] = serde_json::json!("missing-up");
    std::fs::write(b.path().join("config.json"), c.to_string()).unwrap();
    let e = err_text(b.plan());
    assert!(
        e.contains("io.skiff.rootfs.upperdir") && e.contains("missing-up"),
        "{e}"
    );
    c["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(crate::plan::ANN_LOWER);
    std::fs::write(b.path().join("config.json"), c.to_string()).unwrap();
    assert!(err_text(b.plan()).contains("lowerdirs"));
}

#[test]
fn resources_become_cgroup_v2_limits() {
    assert_eq!(crate::plan::shares_to_weight(1024), 39);
    assert_eq!(crate::plan::shares_to_weight(2), 1);
    assert_eq!(crate::plan::shares_to_weight(262_144), 10_000);
    let mut c = runc_like();
    c["linux"]["resources"] = serde_json::json!({
        "memory": {"limit": 67108864},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "pids": {"limit": 100}
    });
    let p = plan_of(c).unwrap();
    let l: Vec<(&str, &str)> = p
        .cgroup_limits
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        l,
        vec![
            ("cpu.weight", "20"),
            ("cpu.max", "50000 100000"),
            ("memory.max", "67108864"),
            ("pids.max", "100")
        ]
    );
    // A hierarchy with only the memory controller: memory.max written,
    // the others reported as not enforced, controllers enabled downwards.
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    std::fs::write(root.join("cgroup.controllers"), "memory io").unwrap();
    std::fs::create_dir_all(root.join("pod/ctr")).unwrap();
    std::fs::write(root.join("pod/cgroup.controllers"), "memory").unwrap();
    std::fs::write(root.join("pod/ctr/memory.max"), "max").unwrap();
    let (cg, missing) =
        crate::cgroup::Cgroup::create_with_limits(root, Path::new("/pod/ctr"), &p.cgroup_limits)
            .unwrap();
    assert_eq!(
        std::fs::read_to_string(cg.path.join("memory.max")).unwrap(),
        "67108864"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
        "+memory"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("pod/cgroup.subtree_control")).unwrap(),
        "+memory"
    );
    let absent = |c: &str| {
        format!(
            "{c} controller absent (not in {})",
            root.join("cgroup.controllers").display()
        )
    };
    assert_eq!(
        missing,
        vec![
            format!("cpu.weight=20: {}", absent("cpu")),
            format!("cpu.max=50000 100000: {}", absent("cpu")),
            format!("pids.max=100: {}", absent("pids")),
        ]
    );
}

#[test]
fn swap_and_unified_limits() {
    use crate::plan::swap_max;
    assert_eq!(swap_max(-1, Some(100)).unwrap().as_deref(), Some("max"));
    assert_eq!(swap_max(0, Some(100)).unwrap(), None);
    // memory+swap equal to memory: no swap at all.
    assert_eq!(swap_max(100, Some(100)).unwrap().as_deref(), Some("0"));
    assert_eq!(swap_max(150, Some(100)).unwrap().as_deref(), Some("50"));
    assert!(err_text(swap_max(50, Some(100))).contains("below the memory limit"));
    assert!(err_text(swap_max(50, None)).contains("needs a memory limit"));
    let mut c = runc_like();
    c["linux"]["resources"] = serde_json::json!({
        "memory": {"limit": 1000, "swap": 1000},
        "pids": {"limit": 5},
        "unified": {"pids.max": "7", "io.weight": "50"}
    });
    let p = plan_of(c).unwrap();
    assert_eq!(
        p.cgroup_limits,
        vec![
            ("memory.max".to_string(), "1000".to_string()),
            ("memory.swap.max".to_string(), "0".to_string()),
            ("io.weight".to_string(), "50".to_string()),
            ("pids.max".to_string(), "7".to_string()),
        ]
    );
    let mut bad = runc_like();
    bad["linux"]["resources"] = serde_json::json!({"memory": {"swap": 1000}});
    assert!(err_text(plan_of(bad)).contains("linux.resources.memory.swap"));
}

#[test]
fn controllers_enabled_level_by_level_inside_the_root() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("kubepods/pod1")).unwrap();
    std::fs::write(root.join("cgroup.controllers"), "cpu io memory pids").unwrap();
    // Already enabled at the root: not written again.
    std::fs::write(root.join("cgroup.subtree_control"), "cpu io memory pids").unwrap();
    std::fs::write(root.join("kubepods/cgroup.controllers"), "cpu memory pids").unwrap();
    std::fs::write(
        root.join("kubepods/pod1/cgroup.controllers"),
        "cpu memory pids",
    )
    .unwrap();
    // Outside the root: must stay untouched.
    std::fs::write(d.path().join("cgroup.subtree_control"), "").unwrap();
    let limits = vec![
        ("memory.max".to_string(), "4096".to_string()),
        ("io.weight".to_string(), "10".to_string()),
    ];
    let ctr = root.join("kubepods/pod1/ctr");
    std::fs::create_dir_all(&ctr).unwrap();
    std::fs::write(ctr.join("memory.max"), "max").unwrap();
    let (cg, missing) =
        crate::cgroup::Cgroup::create_with_limits(&root, Path::new("kubepods/pod1/ctr"), &limits)
            .unwrap();
    assert_eq!(cg.path, ctr);
    assert_eq!(cg.unit, None);
    assert_eq!(
        std::fs::read_to_string(ctr.join("memory.max")).unwrap(),
        "4096"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
        "cpu io memory pids"
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("cgroup.subtree_control")).unwrap(),
        ""
    );
    // In a fake hierarchy each write replaces the file: the last one wins.
    assert_eq!(
        std::fs::read_to_string(root.join("kubepods/pod1/cgroup.subtree_control")).unwrap(),
        "+pids"
    );
    assert_eq!(missing.len(), 1);
    assert!(
        missing[0].starts_with("io.weight=10: io controller absent (not in ")
            && missing[0].contains("kubepods/cgroup.controllers"),
        "{missing:?}"
    );
    // An interface file name with a path in it is refused before anything is made.
    let evil = vec![("../../cgroup.procs".to_string(), "1".to_string())];
    let e = crate::cgroup::Cgroup::create_with_limits(&root, Path::new("kubepods/x"), &evil);
    assert!(err_text(e).contains("not a cgroup interface file"));
    assert!(!root.join("kubepods/x").exists());
}

#[test]
fn systemd_cgroups_path() {
    use crate::cgroup::systemd::{expand_slice, is_systemd_form, start_scope_args, ScopePath};
    assert!(is_systemd_form("kubepods.slice:skiff:abc"));
    assert!(!is_systemd_form("kubepods/pod1/abc"));
    let sp = ScopePath::parse("kubepods-burstable-pod12_34.slice:skiff:12-34-web").unwrap();
    assert_eq!(sp.slice, "kubepods-burstable-pod12_34.slice");
    assert_eq!(sp.scope, "skiff-12-34-web.scope");
    assert_eq!(
        sp.dir(Path::new("/sys/fs/cgroup")).unwrap(),
        Path::new("/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice/skiff-12-34-web.scope")
    );
    assert_eq!(ScopePath::parse("::x").unwrap().slice, "system.slice");
    assert_eq!(ScopePath::parse(":p:x").unwrap().scope, "p-x.scope");
    assert_eq!(ScopePath::parse("a.slice::x").unwrap().scope, "x.scope");
    assert_eq!(expand_slice("-.slice").unwrap(), Path::new(""));
    for bad in [
        "a:b",
        "a.service:p:n",
        "a.slice:p:",
        "a.slice:p:n/x",
        "a b.slice:p:n",
    ] {
        assert!(
            err_text(ScopePath::parse(bad)).contains("linux.cgroupsPath"),
            "{bad}"
        );
    }
    assert!(expand_slice("a--b.slice").is_err());
    assert!(expand_slice("-a.slice").is_err());
    let limits = vec![
        ("cpu.weight".to_string(), "39".to_string()),
        ("cpu.max".to_string(), "25000 100000".to_string()),
        ("memory.max".to_string(), "1048576".to_string()),
        ("pids.max".to_string(), "max".to_string()),
    ];
    let a = start_scope_args(&sp, nix::unistd::Pid::from_raw(4242), &limits);
    let tail: Vec<&str> = a[7..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        vec![
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            "skiff-12-34-web.scope",
            "fail",
            "10",
            "PIDs",
            "au",
            "1",
            "4242",
            "Description",
            "s",
            "skiff container skiff-12-34-web.scope",
            "Slice",
            "s",
            "kubepods-burstable-pod12_34.slice",
            "Delegate",
            "b",
            "true",
            "DefaultDependencies",
            "b",
            "false",
            "CPUWeight",
            "t",
            "39",
            "CPUQuotaPerSecUSec",
            "t",
            "250000",
            "CPUQuotaPeriodUSec",
            "t",
            "100000",
            "MemoryMax",
            "t",
            "1048576",
            "TasksMax",
            "t",
            "18446744073709551615",
            "0"
        ]
    );
    assert!(a.iter().any(|x| x.starts_with("--timeout=")));
    // 1 ms of every 100 ms is 10 ms/s, systemd's granularity: kept as is.
    let p = crate::cgroup::systemd::unit_properties(&[("cpu.max".into(), "1000 100000".into())]);
    assert_eq!(p[0][2], "10000");
    let p = crate::cgroup::systemd::unit_properties(&[("cpu.max".into(), "1500 100000".into())]);
    assert_eq!(p[0][2], "20000");
}

#[test]
fn oom_kills_from_memory_events() {
    let ev = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
    assert_eq!(crate::cgroup::parse_oom_kills(ev), 2);
    assert_eq!(crate::cgroup::parse_oom_kills(""), 0);
    let d = tempfile::tempdir().unwrap();
    let cg = crate::cgroup::Cgroup::create(d.path(), Path::new("c")).unwrap();
    assert_eq!(cg.oom_kills(), 0);
    std::fs::write(cg.path.join("memory.events"), ev).unwrap();
    assert_eq!(cg.oom_kills(), 2);
}

#[test]
fn control_protocol_json() {
    use crate::supervisor::{Request, Response};
    let r: Request = serde_json::from_str(r#"{"op":"exec","args":["ls","-l"]}"#).unwrap();
    assert_eq!(
        r,
        Request::Exec {
            args: vec!["ls".into(), "-l".into()],
            env: None,
            cwd: None,
            timeout_ms: None,
            stream: false,
            tty: false
        }
    );
    let r: Request = serde_json::from_str(r#"{"op":"kill-all","signal":9}"#).unwrap();
    assert_eq!(r, Request::KillAll { signal: 9 });
    let r: Request = serde_json::from_str(r#"{"op":"resize","rows":24,"cols":80}"#).unwrap();
    assert_eq!(r, Request::Resize { rows: 24, cols: 80 });
    assert_eq!(
        serde_json::to_string(&Request::State).unwrap(),
        r#"{"op":"state"}"#
    );
    assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    let ok = Response {
        ok: true,
        ..Default::default()
    };
    assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":true}"#);
}

#[test]
fn host_state_is_never_touched_without_namespaces() {
    let mut c = runc_like();
    c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "uts"}]);
    let e = err_text(plan_of(c));
    assert!(e.contains("mount namespace is required"), "{e}");
    let mut c = runc_like();
    c["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": "10"});
    assert!(err_text(plan_of(c)).contains("linux.sysctl.vm.swappiness"));
    let mut c = runc_like();
    c["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "uts"}]);
    c["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
    let e = err_text(plan_of(c.clone()));
    assert!(
        e.contains("linux.sysctl.net.ipv4.ip_forward") && e.contains("NEWNET"),
        "{e}"
    );
    c["linux"]["sysctl"] = serde_json::json!({"kernel.shmmax": "1000", "kernel.domainname": "x"});
    assert!(err_text(plan_of(c.clone())).contains("kernel.shmmax"));
    c["linux"]["namespaces"] =
        serde_json::json!([{"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]);
    assert_eq!(plan_of(c).unwrap().sysctl.len(), 2);
}

#[test]
fn hooks_are_refused_not_ignored() {
    let mut c = runc_like();
    c["hooks"] = serde_json::json!({"poststart": [{"path": "/bin/true"}]});
    assert!(err_text(plan_of(c.clone())).contains("hooks"));
    c["hooks"] = serde_json::json!({});
    assert!(plan_of(c.clone()).is_ok());
    c["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"});
    assert!(err_text(plan_of(c)).contains("linux.seccomp"));
}
