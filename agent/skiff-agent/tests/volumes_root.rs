//! Volumes with real mounts (root only). Each test runs on a thread that unshared its own
//! mount namespace with everything made private: the host never sees the tmpfs mounts, and
//! when the thread ends, failure included, the namespace and every mount in it go away.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};
use serde_json::json;
use skiff_agent::env::{NodeFacts, ObjectSource, SourceFuture};
use skiff_agent::volumes;

/// An API holding a few secrets in memory.
#[derive(Default)]
struct Objects {
    secrets: Mutex<BTreeMap<String, Secret>>,
}

impl Objects {
    fn put_secret(&self, name: &str, data: serde_json::Value) {
        let s: Secret = serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "t"}, "data": data}),
        )
        .unwrap();
        self.secrets.lock().unwrap().insert(name.into(), s);
    }
}

impl ObjectSource for Objects {
    fn config_map<'a>(&'a self, _: &'a str, _: &'a str) -> SourceFuture<'a, Option<ConfigMap>> {
        Box::pin(async { Ok(None) })
    }
    fn secret<'a>(&'a self, _: &'a str, name: &'a str) -> SourceFuture<'a, Option<Secret>> {
        Box::pin(async move { Ok(self.secrets.lock().unwrap().get(name).cloned()) })
    }
    fn services<'a>(&'a self, _: &'a str) -> SourceFuture<'a, Vec<Service>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Runs `body` in a private mount namespace; None (and a printed reason) when this host
/// cannot give one.
fn in_mount_namespace(test: &str, body: impl FnOnce() + Send + 'static) -> Option<()> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped {test}: needs root (mounts tmpfs)");
        return None;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let isolated = unshare(CloneFlags::CLONE_NEWNS).and_then(|_| {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
        });
        if let Err(e) = isolated {
            tx.send(Some(e)).unwrap();
            return;
        }
        tx.send(None).unwrap();
        body();
    });
    let setup_error = rx.recv().unwrap();
    let outcome = handle.join();
    if let Some(e) = setup_error {
        println!("skipped {test}: cannot make a private mount namespace: {e}");
        return None;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    Some(())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn pod(volumes: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "t", "uid": "u"},
        "spec": {"containers": [{"name": "c"}], "volumes": volumes}
    }))
    .unwrap()
}

fn mounts_here() -> String {
    std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap()
}

fn is_tmpfs(p: &Path) -> bool {
    statfs(p).unwrap().filesystem_type() == TMPFS_MAGIC
}

fn pod_dir(t: &tempfile::TempDir) -> PathBuf {
    t.path().canonicalize().unwrap().join("pod")
}

#[test]
fn memory_empty_dir_and_secret_are_tmpfs_and_teardown_unmounts_them() {
    let root = tempfile::tempdir().unwrap();
    let dir = pod_dir(&root);
    let dir_outside = dir.clone();
    let ran = in_mount_namespace("tmpfs volumes", move || {
        let api = Objects::default();
        api.put_secret("creds", json!({"token": "dG9wLXNlY3JldA=="}));
        let p = pod(json!([
            {"name": "fast", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {"name": "disk", "emptyDir": {}},
        ]));
        let prepared = block_on(volumes::prepare(&api, &p, &dir, &NodeFacts::default())).unwrap();
        let (fast, creds, disk) = (&prepared[0].path, &prepared[1].path, &prepared[2].path);
        assert!(is_tmpfs(fast) && is_tmpfs(creds));
        assert!(!is_tmpfs(disk), "a disk emptyDir is not a mount");
        let vfs = nix::sys::statvfs::statvfs(fast.as_path()).unwrap();
        assert_eq!(
            vfs.blocks() * vfs.fragment_size(),
            1 << 20,
            "sizeLimit is the tmpfs size"
        );
        let mut f = std::fs::File::create(fast.join("big")).unwrap();
        let full = (0..4)
            .map(|_| f.write_all(&[0u8; 512 * 1024]))
            .find(|r| r.is_err());
        assert!(
            matches!(full, Some(Err(ref e)) if e.raw_os_error() == Some(nix::libc::ENOSPC)),
            "writing past sizeLimit fails: {full:?}"
        );
        drop(f);
        assert_eq!(
            std::fs::read_to_string(creds.join("token")).unwrap(),
            "top-secret"
        );

        // Calling prepare again stacks nothing.
        block_on(volumes::prepare(&api, &p, &dir, &NodeFacts::default())).unwrap();
        let count = |m: &str, p: &Path| {
            m.lines()
                .filter(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
                .count()
        };
        let m = mounts_here();
        assert_eq!((count(&m, fast), count(&m, creds)), (1, 1), "{m}");

        // A secret update reaches the same mount.
        api.put_secret("creds", json!({"token": "cm90YXRlZA=="}));
        block_on(volumes::refresh(&api, &p, &dir, &NodeFacts::default())).unwrap();
        assert_eq!(
            std::fs::read_to_string(creds.join("token")).unwrap(),
            "rotated"
        );
        assert_eq!(count(&mounts_here(), creds), 1);

        volumes::teardown(&dir).unwrap();
        let m = mounts_here();
        assert!(!m.contains(dir.to_str().unwrap()), "all unmounted: {m}");
        assert!(!dir.join("volumes").exists());
        volumes::teardown(&dir).unwrap();
    });
    if ran.is_some() {
        assert!(
            !std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(dir_outside.to_str().unwrap()),
            "the test's mounts never reached the host's namespace"
        );
    }
}

#[test]
fn teardown_detaches_busy_mounts_and_never_deletes_through_a_bind_mount() {
    let root = tempfile::tempdir().unwrap();
    let dir = pod_dir(&root);
    let host = root.path().canonicalize().unwrap().join("host-data");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("precious"), "keep").unwrap();
    let host_inside = host.clone();
    in_mount_namespace("teardown", move || {
        let api = Objects::default();
        let p = pod(json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "mem", "emptyDir": {"medium": "Memory"}},
            {"name": "h", "hostPath": {"path": host_inside, "type": "Directory"}},
        ]));
        let prepared = block_on(volumes::prepare(&api, &p, &dir, &NodeFacts::default())).unwrap();
        assert_eq!(
            prepared[2].path, host_inside,
            "hostPath is the host path itself"
        );
        // Something (a container runtime gone wrong) left the host dir bind-mounted inside
        // a volume: teardown must unmount it, not empty it.
        let inner = prepared[0].path.join("bound");
        std::fs::create_dir(&inner).unwrap();
        mount(
            Some(&host_inside),
            &inner,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        assert!(inner.join("precious").exists());
        // A file still open on the tmpfs keeps it busy.
        let busy = std::fs::File::create(prepared[1].path.join("open")).unwrap();
        volumes::teardown(&dir).unwrap();
        drop(busy);
        assert_eq!(
            std::fs::read_to_string(host_inside.join("precious")).unwrap(),
            "keep"
        );
        assert!(!dir.join("volumes").exists());
        assert!(!mounts_here().contains(dir.to_str().unwrap()));
    });
    assert_eq!(
        std::fs::read_to_string(host.join("precious")).unwrap(),
        "keep"
    );
}

#[test]
fn sub_paths_are_frozen_by_a_bind_so_a_later_symlink_swap_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = pod_dir(&root);
    let host = root.path().canonicalize().unwrap().join("host-etc");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("shadow"), "host secret").unwrap();
    let host_inside = host.clone();
    in_mount_namespace("subPath binds", move || {
        let api = Objects::default();
        let p = pod(json!([{"name": "data", "emptyDir": {}}]));
        let prepared = block_on(volumes::prepare(&api, &p, &dir, &NodeFacts::default())).unwrap();
        let data = prepared[0].path.clone();
        std::fs::create_dir(data.join("conf")).unwrap();
        std::fs::write(data.join("conf/shadow"), "pod content").unwrap();
        std::fs::write(data.join("single"), "one file").unwrap();
        let c: k8s_openapi::api::core::v1::Container = serde_json::from_value(json!({
            "name": "app", "volumeMounts": [
                {"name": "data", "mountPath": "/etc/app", "subPath": "conf"},
                {"name": "data", "mountPath": "/etc/single", "subPath": "single"}]}))
        .unwrap();
        let mounts = volumes::mounts_for(&c, &prepared, &[]).unwrap();
        let frozen_dir = mounts[0].source.clone();
        let frozen_file = mounts[1].source.clone();
        assert!(frozen_dir.starts_with(dir.join("volume-subpaths")));
        assert_eq!(
            std::fs::read_to_string(&frozen_file).unwrap(),
            "one file",
            "a file subPath is bound as a file"
        );

        // The pod swaps the checked directory for a symlink to the host.
        std::fs::rename(data.join("conf"), data.join("conf-old")).unwrap();
        std::os::unix::fs::symlink(&host_inside, data.join("conf")).unwrap();
        assert_eq!(
            std::fs::read_to_string(frozen_dir.join("shadow")).unwrap(),
            "pod content",
            "the bind still holds the directory that was checked"
        );

        // Next container start: the swapped-in symlink is refused.
        let e = volumes::mounts_for(&c, &prepared, &[]).unwrap_err();
        assert_eq!(e.reason(), "CreateContainerConfigError");
        assert_eq!(
            e.message(),
            "failed to prepare subPath for volumeMount \"data\" of container \"app\""
        );

        volumes::teardown(&dir).unwrap();
        assert!(!mounts_here().contains(dir.to_str().unwrap()));
        assert!(!dir.join("volume-subpaths").exists() && !dir.join("volumes").exists());
    });
    assert_eq!(
        std::fs::read_to_string(host.join("shadow")).unwrap(),
        "host secret"
    );
}
