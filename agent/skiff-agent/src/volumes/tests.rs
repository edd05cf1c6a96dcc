//! Volumes without root: a fake API and a mounter that records instead of mounting.

use super::mount::fake::FakeMounter;
use super::*;
use crate::env::fake::{block_on, FakeSource};
use serde_json::json;
use std::os::unix::fs::symlink;

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
            "labels": {"app": "web"}, "annotations": {"build": "42"}},
        "spec": spec,
    }))
    .unwrap()
}

fn source() -> FakeSource {
    let s = FakeSource::default();
    s.add_config_map(json!({"metadata": {"name": "cfg", "namespace": "shop"},
        "data": {"app.conf": "port=80", "level": "info"},
        "binaryData": {"blob": "AAEC"}}));
    s.add_secret(json!({"metadata": {"name": "creds", "namespace": "shop"},
        "data": {"password": "czNjcjN0"}}));
    s
}

fn facts() -> NodeFacts {
    NodeFacts {
        node_name: "n1".into(),
        host_ips: vec!["192.0.2.1".into()],
        pod_ips: vec![],
        allocatable: BTreeMap::from([(
            "memory".to_string(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("4Gi".into()),
        )]),
    }
}

struct Env {
    dir: tempfile::TempDir,
    mounter: FakeMounter,
    source: FakeSource,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
            mounter: FakeMounter::default(),
            source: source(),
        }
    }

    fn pod_dir(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap().join("pod")
    }

    fn prepare(&self, p: &Pod) -> Result<Vec<PreparedVolume>, VolumeError> {
        block_on(prepare_with(
            &self.mounter,
            &self.source,
            p,
            &self.pod_dir(),
            &facts(),
        ))
    }

    fn refresh(&self, p: &Pod) -> Result<Vec<PreparedVolume>, VolumeError> {
        block_on(refresh_with(
            &self.mounter,
            &self.source,
            p,
            &self.pod_dir(),
            &facts(),
        ))
    }

    fn mounted(&self) -> Vec<(PathBuf, Option<u64>)> {
        self.mounter.mounted.lock().unwrap().clone()
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn config_map_volume_all_keys_items_and_modes() {
    let env = Env::new();
    let p = pod(json!({"containers": [], "volumes": [
        {"name": "all", "configMap": {"name": "cfg"}},
        {"name": "some", "configMap": {"name": "cfg", "defaultMode": 0o400, "items": [
            {"key": "app.conf", "path": "etc/app.conf"},
            {"key": "level", "path": "level.txt", "mode": 0o640}]}},
    ]}));
    let prepared = env.prepare(&p).unwrap();
    let all = &prepared[0];
    assert_eq!(all.plugin, CONFIG_MAP);
    assert!(all.read_only, "API data is always mounted read-only");
    assert_eq!(
        all.path,
        env.pod_dir().join("volumes/kubernetes.io~configmap/all")
    );
    assert_eq!(read(&all.path.join("app.conf")), "port=80");
    assert_eq!(std::fs::read(all.path.join("blob")).unwrap(), [0, 1, 2]);
    assert_eq!(
        mode(&all.path.join("level")),
        0o644,
        "kubelet's default mode"
    );
    assert!(std::fs::symlink_metadata(all.path.join("app.conf"))
        .unwrap()
        .file_type()
        .is_symlink());
    let some = &prepared[1].path;
    assert_eq!(read(&some.join("etc/app.conf")), "port=80");
    assert_eq!(mode(&some.join("etc/app.conf")), 0o400);
    assert_eq!(mode(&some.join("level.txt")), 0o640);
    assert!(!some.join("blob").exists(), "only the listed items");
    assert!(env.mounted().is_empty(), "configMaps live on disk");
}

#[test]
fn missing_config_map_or_key_is_a_failed_mount_in_kubelets_words() {
    let env = Env::new();
    let e = env
        .prepare(&pod(json!({"containers": [], "volumes": [
            {"name": "ok", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "x"}}]})))
        .unwrap_err();
    assert_eq!(e.reason(), "FailedMount");
    assert!(e.is_pod_level());
    assert_eq!(
        e.message(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"x\" not found"
    );
    let e = env
        .prepare(&pod(json!({"containers": [], "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "nope", "path": "n"}]}}]})))
        .unwrap_err();
    assert_eq!(
        e.message(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap references non-existent config key: nope"
    );
    let e = env
        .prepare(&pod(json!({"containers": [], "volumes": [
            {"name": "s", "secret": {"secretName": "gone"}}]})))
        .unwrap_err();
    assert_eq!(
        e.message(),
        "MountVolume.SetUp failed for volume \"s\" : secret \"gone\" not found"
    );
    let e = env
        .prepare(&pod(json!({"containers": [], "volumes": [
            {"name": "s", "secret": {"secretName": "creds", "items": [{"key": "k", "path": "k"}]}}]})))
        .unwrap_err();
    assert_eq!(
        e.message(),
        "MountVolume.SetUp failed for volume \"s\" : references non-existent secret key: k"
    );
}

#[test]
fn optional_sources_that_are_missing_give_empty_volumes() {
    let env = Env::new();
    let prepared = env
        .prepare(&pod(json!({"containers": [], "volumes": [
            {"name": "c", "configMap": {"name": "x", "optional": true}},
            {"name": "k", "configMap": {"name": "cfg", "optional": true, "items": [{"key": "nope", "path": "n"}]}},
            {"name": "s", "secret": {"secretName": "x", "optional": true}}]})))
        .unwrap();
    for v in &prepared {
        let visible: Vec<_> = std::fs::read_dir(&v.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".."))
            .collect();
        assert!(visible.is_empty(), "{}: {visible:?}", v.name);
    }
}

#[test]
fn secrets_land_on_tmpfs_and_api_errors_are_not_not_found() {
    let env = Env::new();
    let p = pod(json!({"containers": [], "volumes": [
        {"name": "s", "secret": {"secretName": "creds", "defaultMode": 0o400}}]}));
    let prepared = env.prepare(&p).unwrap();
    assert_eq!(prepared[0].plugin, SECRET);
    assert_eq!(read(&prepared[0].path.join("password")), "s3cr3t");
    assert_eq!(mode(&prepared[0].path.join("password")), 0o400);
    assert_eq!(env.mounted(), [(prepared[0].path.clone(), None)]);
    env.prepare(&p).unwrap();
    assert_eq!(
        env.mounted().len(),
        1,
        "a second prepare does not mount again"
    );
    *env.source.fail.lock().unwrap() = true;
    let e = env.refresh(&p).unwrap_err();
    assert!(
        e.message().contains("connection refused"),
        "{}",
        e.message()
    );
    assert_eq!(
        read(&prepared[0].path.join("password")),
        "s3cr3t",
        "a failed refresh keeps the last good content"
    );
}

#[test]
fn refresh_updates_api_content_and_nothing_else() {
    let env = Env::new();
    let host = env.dir.path().join("host-dir");
    let p = pod(json!({"containers": [], "volumes": [
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "h", "hostPath": {"path": host, "type": "DirectoryOrCreate"}},
        {"name": "e", "emptyDir": {}}]}));
    let prepared = env.prepare(&p).unwrap();
    assert!(host.is_dir());
    std::fs::remove_dir(&host).unwrap();
    env.source
        .add_config_map(json!({"metadata": {"name": "cfg", "namespace": "shop"},
        "data": {"app.conf": "port=8080"}}));
    let again = env.refresh(&p).unwrap();
    assert_eq!(again, prepared, "same volumes, same paths");
    let dir = &prepared[0].path;
    assert_eq!(read(&dir.join("app.conf")), "port=8080");
    assert!(
        std::fs::symlink_metadata(dir.join("level")).is_err(),
        "a key removed from the ConfigMap disappears"
    );
    assert!(!host.exists(), "refresh does not redo hostPath setup");
}

#[test]
fn downward_api_files() {
    let env = Env::new();
    let p = pod(
        json!({"containers": [{"name": "app", "resources": {"limits": {"memory": "128Mi"}}}],
        "volumes": [{"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "build", "fieldRef": {"fieldPath": "metadata.annotations['build']"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o600},
            {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
        ]}}]}),
    );
    let v = &env.prepare(&p).unwrap()[0];
    assert_eq!(v.plugin, DOWNWARD_API);
    assert_eq!(read(&v.path.join("labels")), "app=\"web\"");
    assert_eq!(read(&v.path.join("build")), "42");
    assert_eq!(read(&v.path.join("name")), "web-1");
    assert_eq!(mode(&v.path.join("name")), 0o600);
    assert_eq!(read(&v.path.join("mem")), "128");
    let bad = pod(
        json!({"containers": [], "volumes": [{"name": "info", "downwardAPI": {"items": [
        {"path": "x", "resourceFieldRef": {"containerName": "ghost", "resource": "limits.cpu"}}]}}]}),
    );
    assert_eq!(
        env.prepare(&bad).unwrap_err().message(),
        "MountVolume.SetUp failed for volume \"info\" : container ghost not found"
    );
}

#[test]
fn projected_volumes_merge_sources_on_tmpfs() {
    let env = Env::new();
    let p = pod(
        json!({"containers": [], "volumes": [{"name": "all-in-one", "projected": {
        "defaultMode": 0o440,
        "sources": [
            {"configMap": {"name": "cfg", "items": [{"key": "level", "path": "cfg/level"}]}},
            {"secret": {"name": "creds"}},
            {"secret": {"name": "maybe", "optional": true}},
            {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}}]}),
    );
    let v = &env.prepare(&p).unwrap()[0];
    assert_eq!(v.plugin, PROJECTED);
    assert_eq!(read(&v.path.join("cfg/level")), "info");
    assert_eq!(read(&v.path.join("password")), "s3cr3t");
    assert_eq!(read(&v.path.join("ns")), "shop");
    assert_eq!(mode(&v.path.join("ns")), 0o440);
    assert_eq!(env.mounted(), [(v.path.clone(), None)]);

    let env = Env::new();
    let token = pod(
        json!({"containers": [], "volumes": [{"name": "kube-api-access", "projected": {
        "sources": [{"serviceAccountToken": {"path": "token"}}]}}]}),
    );
    let e = env.prepare(&token).unwrap_err();
    assert_eq!(
        e.message(),
        "MountVolume.SetUp failed for volume \"kube-api-access\" : projected serviceAccountToken (no TokenRequest API) is not supported by this node"
    );
    assert!(env.mounted().is_empty(), "nothing left mounted for it");
}

#[test]
fn empty_dirs_on_disk_and_in_memory() {
    let env = Env::new();
    let p = pod(json!({"containers": [], "volumes": [
        {"name": "scratch", "emptyDir": {}},
        {"name": "fast", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "unbounded", "emptyDir": {"medium": "Memory"}}]}));
    let prepared = env.prepare(&p).unwrap();
    assert_eq!(prepared[0].plugin, EMPTY_DIR);
    assert!(!prepared[0].read_only);
    assert_eq!(mode(&prepared[0].path), 0o777, "writable by any user");
    assert_eq!(
        env.mounted(),
        [
            (prepared[1].path.clone(), Some(64 << 20)),
            (prepared[2].path.clone(), Some(4 << 30))
        ],
        "without sizeLimit, node allocatable bounds the tmpfs"
    );
    std::fs::write(prepared[0].path.join("kept"), "x").unwrap();
    env.prepare(&p).unwrap();
    assert_eq!(
        read(&prepared[0].path.join("kept")),
        "x",
        "prepare is idempotent"
    );
    let bad = pod(json!({"containers": [], "volumes": [
        {"name": "huge", "emptyDir": {"medium": "HugePages"}}]}));
    assert!(env
        .prepare(&bad)
        .unwrap_err()
        .message()
        .contains("emptyDir medium \"HugePages\" is not supported"));
}

#[test]
fn memory_empty_dir_size_is_bounded_by_the_pod_memory_limit() {
    let sizes = |spec: serde_json::Value| {
        let env = Env::new();
        env.prepare(&pod(spec)).unwrap();
        env.mounted()
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
    };
    let limited = |mem: &str| json!({"name": "c", "resources": {"limits": {"memory": mem}}});
    let vol = json!([{"name": "m", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                     {"name": "n", "emptyDir": {"medium": "Memory"}}]);
    assert_eq!(
        sizes(json!({"containers": [limited("100Mi"), limited("28Mi")], "volumes": vol})),
        [Some(128 << 20), Some(128 << 20)],
        "the pod's limit is below both sizeLimit and allocatable"
    );
    assert_eq!(
        sizes(json!({"containers": [limited("100Mi"), {"name": "free"}], "volumes": vol})),
        [Some(1 << 30), Some(4 << 30)],
        "a container without a limit leaves the pod unlimited"
    );
    assert_eq!(
        sizes(
            json!({"initContainers": [limited("2Gi")], "containers": [limited("100Mi")], "volumes": vol})
        ),
        [Some(1 << 30), Some(2 << 30)],
        "a bigger init container raises the pod's limit"
    );
}

#[test]
fn host_path_type_checks() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    let file = t.path().join("f");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(&file, "x").unwrap();
    let sock = t.path().join("s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let err = |p: &Path, kind: &str| check_host_path(&s(p), kind).unwrap_err().to_string();

    check_host_path(&s(&dir), "Directory").unwrap();
    check_host_path(&s(&file), "File").unwrap();
    check_host_path(&s(&sock), "Socket").unwrap();
    check_host_path("/dev/null", "CharDevice").unwrap();
    check_host_path(&s(&file), "").unwrap();
    let missing = t.path().join("missing");
    assert_eq!(
        err(&missing, "Directory"),
        format!(
            "hostPath type check failed: {} is not a directory",
            s(&missing)
        )
    );
    assert_eq!(
        err(&file, "Directory"),
        format!(
            "hostPath type check failed: {} is not a directory",
            s(&file)
        )
    );
    assert_eq!(
        err(&dir, "File"),
        format!("hostPath type check failed: {} is not a file", s(&dir))
    );
    assert!(err(&file, "Socket").ends_with("is not a socket file"));
    assert!(err(&file, "CharDevice").ends_with("is not a character device"));
    assert!(err(Path::new("/dev/null"), "BlockDevice").ends_with("is not a block device"));
    assert_eq!(err(&dir, "Pipe"), "Pipe is an invalid volume type");

    let made = t.path().join("new/nested");
    check_host_path(&s(&made), "DirectoryOrCreate").unwrap();
    assert_eq!(mode(&made) & 0o777, 0o755 & !umask());
    assert_eq!(
        err(&file, "DirectoryOrCreate"),
        format!(
            "hostPath type check failed: {} is not a directory",
            s(&file)
        )
    );
    let new_file = t.path().join("new.txt");
    check_host_path(&s(&new_file), "FileOrCreate").unwrap();
    assert!(new_file.is_file());
    let orphan = t.path().join("no-parent/new.txt");
    assert!(
        check_host_path(&s(&orphan), "FileOrCreate").is_err(),
        "FileOrCreate does not create parent directories"
    );
    assert!(check_host_path("relative/path", "").is_err());
    assert!(check_host_path("/a/../etc", "").is_err());
}

fn umask() -> u32 {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(old);
    old.bits()
}

#[test]
fn missing_host_path_directory_is_a_failed_mount() {
    let env = Env::new();
    let e = env
        .prepare(&pod(json!({"containers": [], "volumes": [
            {"name": "h", "hostPath": {"path": "/nonexistent/skiff-test", "type": "Directory"}}]})))
        .unwrap_err();
    assert_eq!(e.reason(), "FailedMount");
    assert_eq!(
        e.message(),
        "MountVolume.SetUp failed for volume \"h\" : hostPath type check failed: /nonexistent/skiff-test is not a directory"
    );
}

#[test]
fn item_paths_cannot_leave_the_volume() {
    let env = Env::new();
    for bad in ["../escape", "/etc/passwd", "a/../../b", "..data"] {
        let e = env
            .prepare(&pod(json!({"containers": [], "volumes": [
                {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "level", "path": bad}]}}]})))
            .unwrap_err();
        assert!(
            e.message().contains("invalid path"),
            "{bad}: {}",
            e.message()
        );
    }
    assert!(!env.dir.path().join("escape").exists());
    assert!(!env
        .pod_dir()
        .join("volumes/kubernetes.io~configmap/escape")
        .exists());
}

#[test]
fn unsupported_volume_types_say_which() {
    let env = Env::new();
    let e = env
        .prepare(&pod(json!({"containers": [], "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]})))
        .unwrap_err();
    assert_eq!(
        e.message(),
        "MountVolume.SetUp failed for volume \"data\" : volume type persistentVolumeClaim is not supported by this node"
    );
}

fn container(v: serde_json::Value) -> Container {
    serde_json::from_value(v).unwrap()
}

#[test]
fn mounts_with_read_only_sub_path_and_sub_path_expr() {
    let env = Env::new();
    let p = pod(json!({"containers": [], "volumes": [
        {"name": "data", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "cfg"}}]}));
    let prepared = env.prepare(&p).unwrap();
    let data = prepared[0].path.clone();
    let c = container(json!({"name": "c", "volumeMounts": [
        {"name": "data", "mountPath": "/data"},
        {"name": "data", "mountPath": "/logs", "subPathExpr": "logs/$(POD_NAME)", "readOnly": true},
        {"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
        {"name": "cfg", "mountPath": "/cfg"},
    ]}));
    let pod_env = [("POD_NAME".to_string(), "web-1".to_string())];
    let mounts = mounts_for_with(&env.mounter, &c, &prepared, &pod_env).unwrap();
    assert_eq!(
        mounts[0],
        VolumeMount {
            source: data.clone(),
            destination: "/data".into(),
            read_only: false
        }
    );
    let frozen = env.pod_dir().join("volume-subpaths/data/c");
    assert_eq!(
        mounts[1].source,
        frozen.join("1"),
        "the runtime binds the frozen path"
    );
    assert!(mounts[1].read_only);
    assert!(
        data.join("logs/web-1").is_dir(),
        "a missing subPath is created"
    );
    assert!(frozen.join("1").is_dir());
    let cfg = &prepared[1].path;
    let version = std::fs::read_link(cfg.join("..data")).unwrap();
    let cfg_frozen = env.pod_dir().join("volume-subpaths/cfg/c/2");
    assert_eq!(mounts[2].source, cfg_frozen);
    assert!(
        cfg_frozen.is_file(),
        "a file subPath gets a file to bind on"
    );
    assert_eq!(
        *env.mounter.bound.lock().unwrap(),
        [
            (data.join("logs/web-1"), frozen.join("1")),
            (cfg.join(version).join("app.conf"), cfg_frozen.clone()),
        ],
        "the real inodes, symlinks resolved inside the volume"
    );
    assert!(mounts[2].read_only && mounts[3].read_only);

    // A restarted container: the old binds are replaced, not stacked.
    mounts_for_with(&env.mounter, &c, &prepared, &pod_env).unwrap();
    let m = env.mounted();
    assert_eq!(
        m.iter().filter(|(p, _)| *p == cfg_frozen).count(),
        1,
        "{m:?}"
    );
    teardown_with(&env.mounter, &env.pod_dir()).unwrap();
    assert!(env.mounted().is_empty());
    assert!(!env.pod_dir().join("volume-subpaths").exists());
}

#[test]
fn sub_path_errors_are_container_config_errors() {
    let env = Env::new();
    let outside = env.dir.path().join("host-secrets");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("shadow"), "root:x").unwrap();
    let p = pod(json!({"containers": [], "volumes": [{"name": "data", "emptyDir": {}}]}));
    let prepared = env.prepare(&p).unwrap();
    let data = &prepared[0].path;
    symlink(&outside, data.join("abs")).unwrap();
    symlink("../../../../host-secrets", data.join("rel")).unwrap();
    symlink("rel", data.join("chain")).unwrap();

    let try_mount = |m: serde_json::Value| {
        mounts_for_with(
            &env.mounter,
            &container(json!({"name": "c", "volumeMounts": [m]})),
            &prepared,
            &[("EMPTY".into(), String::new())],
        )
    };
    for sub in ["abs", "abs/shadow", "rel", "chain/shadow", "rel/newdir"] {
        let e = try_mount(json!({"name": "data", "mountPath": "/x", "subPath": sub})).unwrap_err();
        assert_eq!(e.reason(), "CreateContainerConfigError", "{sub}");
        assert!(!e.is_pod_level());
        assert!(
            e.message().starts_with("failed to")
                && e.message()
                    .ends_with("subPath for volumeMount \"data\" of container \"c\"")
                || e.message()
                    == "failed to create subPath directory for volumeMount \"data\" of container \"c\"",
            "{sub}: {}",
            e.message()
        );
        assert!(!e.detail().is_empty());
    }
    assert!(!outside.join("newdir").exists(), "nothing created outside");
    assert_eq!(
        try_mount(json!({"name": "data", "mountPath": "/x", "subPath": "../../etc"}))
            .unwrap_err()
            .message(),
        "unable to provision SubPath `../../etc`: must not contain '..'"
    );
    assert_eq!(
        try_mount(json!({"name": "data", "mountPath": "/x", "subPath": "/etc"}))
            .unwrap_err()
            .message(),
        "error SubPath `/etc` must not be an absolute path"
    );
    assert_eq!(
        try_mount(json!({"name": "data", "mountPath": "/x", "subPathExpr": "$(NOPE)/$(EMPTY)"}))
            .unwrap_err()
            .message(),
        "missing value for EMPTY, NOPE"
    );
    assert_eq!(
        try_mount(json!({"name": "ghost", "mountPath": "/x"}))
            .unwrap_err()
            .message(),
        "cannot find volume \"ghost\" to mount into container \"c\""
    );
}

#[test]
fn teardown_unmounts_then_removes_without_following_symlinks() {
    let env = Env::new();
    let host = env.dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("precious"), "keep").unwrap();
    let p = pod(json!({"containers": [], "volumes": [
        {"name": "h", "hostPath": {"path": host}},
        {"name": "e", "emptyDir": {}},
        {"name": "m", "emptyDir": {"medium": "Memory"}},
        {"name": "s", "secret": {"secretName": "creds"}}]}));
    let prepared = env.prepare(&p).unwrap();
    symlink(&host, prepared[1].path.join("link-to-host")).unwrap();
    symlink(&host, prepared[2].path.join("link-to-host")).unwrap();

    *env.mounter.refuse_unmount.lock().unwrap() = true;
    let e = teardown_with(&env.mounter, &env.pod_dir()).unwrap_err();
    assert!(
        matches!(e, TeardownError::StillMounted(ref v) if v.len() == 2),
        "{e}"
    );
    assert!(
        prepared[1].path.exists(),
        "nothing is deleted while something is still mounted"
    );

    *env.mounter.refuse_unmount.lock().unwrap() = false;
    teardown_with(&env.mounter, &env.pod_dir()).unwrap();
    assert!(env.mounted().is_empty());
    assert_eq!(env.mounter.unmounted.lock().unwrap().len(), 2);
    assert!(!env.pod_dir().join("volumes").exists());
    assert_eq!(
        read(&host.join("precious")),
        "keep",
        "hostPath content untouched"
    );
    teardown_with(&env.mounter, &env.pod_dir()).unwrap();

    // A volumes dir replaced by a symlink is unlinked, not followed.
    std::fs::create_dir_all(env.pod_dir()).unwrap();
    symlink(&host, env.pod_dir().join("volumes")).unwrap();
    teardown_with(&env.mounter, &env.pod_dir()).unwrap();
    assert_eq!(read(&host.join("precious")), "keep");
    assert!(std::fs::symlink_metadata(env.pod_dir().join("volumes")).is_err());
}

#[test]
fn fs_group_owns_api_content_and_empty_dir_roots() {
    use std::os::unix::fs::MetadataExt;
    // Any group works for root; anyone else may only give files to their own group.
    let gid = if nix::unistd::geteuid().is_root() {
        4321
    } else {
        nix::unistd::getegid().as_raw()
    };
    let env = Env::new();
    let p = pod(
        json!({"securityContext": {"fsGroup": gid}, "containers": [], "volumes": [
        {"name": "s", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "level", "path": "sub/level"}]}},
        {"name": "e", "emptyDir": {}}]}),
    );
    let prepared = env.prepare(&p).unwrap();
    let secret = prepared[0].path.join("password");
    assert_eq!(mode(&secret), 0o440, "0400 plus group read");
    assert_eq!(std::fs::metadata(&secret).unwrap().gid(), gid);
    let nested = prepared[1].path.join("sub/level");
    assert_eq!(std::fs::metadata(&nested).unwrap().gid(), gid);
    assert_eq!(mode(&nested), 0o644);
    let version = std::fs::read_link(prepared[1].path.join("..data")).unwrap();
    let sub_dir = prepared[1].path.join(&version).join("sub");
    assert_eq!(
        mode(&sub_dir) & 0o2550,
        0o2550,
        "dirs: group r-x and setgid"
    );
    let empty = &prepared[2].path;
    assert_eq!(std::fs::metadata(empty).unwrap().gid(), gid);
    assert_eq!(mode(empty), 0o2777);

    env.refresh(&p).unwrap();
    assert_eq!(
        std::fs::read_link(prepared[1].path.join("..data")).unwrap(),
        version,
        "the group bits do not make an unchanged payload look changed"
    );
}
