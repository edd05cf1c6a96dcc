//! Static pods: skiff-agent runs the manifests of `--pod-manifest-path` with no control
//! plane at all, recreates a pod whose file changes and tears it down when the file goes;
//! with a control plane each static pod also has a mirror pod in the API. Root only
//! (namespaces, overlay mounts).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_e2e::agent::{force_cleanup, Agent};
use skiff_e2e::registry::Registry;
use skiff_e2e::{bin_dir, Server};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// An agent without `--kubeconfig`; on drop it is killed and everything under its root is
/// removed by force, failure or not.
struct Standalone {
    child: Child,
    root: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    manifests: PathBuf,
}

impl Standalone {
    fn start(dir: &Path, manifests: &Path) -> Self {
        let root = dir.join("agent");
        let log = dir.join("agent.log");
        let child = Self::spawn(dir, manifests, &root, &log);
        Standalone {
            child,
            root,
            log,
            dir: dir.to_path_buf(),
            manifests: manifests.to_path_buf(),
        }
    }

    /// SIGKILL, as a crash would, and a new agent on the same root.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, &self.manifests, &self.root, &self.log);
    }

    fn spawn(dir: &Path, manifests: &Path, root: &Path, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new(bin_dir().join("skiff-agent"))
            .args([
                "--node-name",
                "lone",
                "--allow-missing-cgroup-controllers",
                "--file-check-frequency",
                "300ms",
            ])
            .arg("--root-dir")
            .arg(root)
            .arg("--pod-logs-dir")
            .arg(dir.join("pod-logs"))
            .arg("--pod-manifest-path")
            .arg(manifests)
            .arg("--shim")
            .arg(bin_dir().join("skiff-shim"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- agent log, last lines ---\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        force_cleanup(&self.root);
    }
}

fn manifest(name: &str, image: &str, greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: httpd\n    image: {image}\n    command: [sh, -c, 'mkdir -p /www && echo {greeting} > /www/index.html && echo serving {greeting} && exec httpd -f -p 8080 -h /www']\n"
    )
}

/// The pod dirs (uids) under the agent's root.
fn pod_uids(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The pid holding the pod's namespaces, from the agent's sandbox record.
fn sandbox_pid(root: &Path, uid: &str) -> Option<i64> {
    let text = std::fs::read_to_string(root.join("sandboxes").join(format!("{uid}.json"))).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["pid"].as_i64()
}

/// GET / from inside the pod's network namespace (the pod has only loopback: no CNI).
fn fetch(pid: i64) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["curl", "-s", "--max-time", "2", "http://127.0.0.1:8080/"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A process that has exited but was not reaped yet (its parent, the agent, was killed
/// and restarted) holds no namespaces any more: it counts as gone.
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_string()))
        .is_some_and(|rest| !rest.starts_with('Z'))
}

fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect()
}

fn shim_containers(root: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(bin_dir().join("skiff-shim"))
        .arg("--root")
        .arg(root.join("shim"))
        .arg("list")
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn static_pods_run_without_a_control_plane() {
    if !is_root() {
        println!("skipped: needs root (namespaces, overlay mounts)");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sh"]);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        manifest("web", &image, "hello-v1"),
    )
    .unwrap();
    std::fs::write(
        manifests.join("bad.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: nope}\n",
    )
    .unwrap();
    std::fs::write(
        manifests.join("empty.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: empty}\nspec: {}\n",
    )
    .unwrap();
    let mut agent = Standalone::start(dir.path(), &manifests);
    let root = agent.root.clone();

    // Running, serving, logging in CRI format.
    let uid = eventually(
        "the static pod's directory",
        Duration::from_secs(90),
        || pod_uids(&root).into_iter().next(),
    );
    let pid = eventually("the sandbox record", Duration::from_secs(30), || {
        sandbox_pid(&root, &uid)
    });
    let body = eventually(
        "httpd answering in the pod",
        Duration::from_secs(90),
        || fetch(pid).filter(|b| !b.is_empty()),
    );
    assert_eq!(body, "hello-v1");
    let log_file = dir
        .path()
        .join("pod-logs")
        .join(format!("default_web-lone_{uid}"))
        .join("httpd/0.log");
    let log = std::fs::read_to_string(&log_file).unwrap();
    let line = log.lines().next().expect("a log line");
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert!(
        fields[0].parse::<jiff::Timestamp>().is_ok() && fields[0].contains('.'),
        "RFC3339Nano time: {line}"
    );
    assert_eq!(&fields[1..], &["stdout", "F", "serving hello-v1"], "{line}");

    // The bad manifests are reported by file and field; they did not stop the good one.
    let agent_log = agent.log();
    assert!(
        agent_log.contains("bad.yaml: kind: must be Pod, found \"Deployment\""),
        "{agent_log}"
    );
    assert!(
        agent_log.contains("empty.yaml: spec.containers: Required value"),
        "{agent_log}"
    );

    // A killed agent comes back to the same pod (same file, same uid): nothing restarts.
    agent.restart();
    eventually(
        "the restarted agent reading the manifests",
        Duration::from_secs(60),
        || (agent.log().matches("static pod from a manifest").count() >= 2).then_some(()),
    );
    eventually(
        "a pass of the restarted agent's worker",
        Duration::from_secs(30),
        || (agent.log().matches("no --kubeconfig").count() >= 2).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pod_uids(&root), vec![uid.clone()]);
    assert_eq!(sandbox_pid(&root, &uid), Some(pid), "the same sandbox");
    assert_eq!(fetch(pid).as_deref(), Some("hello-v1"));
    assert!(
        !log_file.with_file_name("1.log").exists(),
        "the container was not restarted"
    );

    // An edit is a new pod: the old one goes entirely, the new one serves the new content.
    std::fs::write(
        manifests.join("web.yaml"),
        manifest("web", &image, "hello-v2"),
    )
    .unwrap();
    let new_uid = eventually(
        "the edited pod replacing the old one",
        Duration::from_secs(90),
        || {
            let uids = pod_uids(&root);
            (uids.len() == 1 && uids[0] != uid).then(|| uids[0].clone())
        },
    );
    assert!(!alive(pid), "the old sandbox holder is gone");
    let new_pid = eventually("the new sandbox", Duration::from_secs(30), || {
        sandbox_pid(&root, &new_uid)
    });
    let body = eventually("the new httpd answering", Duration::from_secs(90), || {
        fetch(new_pid).filter(|b| !b.is_empty())
    });
    assert_eq!(body, "hello-v2");

    // Deleting the file tears the pod down with nothing left.
    std::fs::remove_file(manifests.join("web.yaml")).unwrap();
    eventually("the pod torn down", Duration::from_secs(60), || {
        pod_uids(&root).is_empty().then_some(())
    });
    assert!(
        !alive(new_pid),
        "the sandbox holder (and so the pod's netns) is gone"
    );
    assert_eq!(mounts_under(&root), Vec::<String>::new());
    assert_eq!(shim_containers(&root), Vec::<serde_json::Value>::new());
    assert!(
        std::fs::read_dir(root.join("sandboxes"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "no sandbox record left"
    );
    // Still alive and watching: a manifest added now runs too.
    std::fs::write(
        manifests.join("again.yaml"),
        manifest("again", &image, "again"),
    )
    .unwrap();
    let again = eventually("a later manifest started", Duration::from_secs(90), || {
        pod_uids(&root).into_iter().next()
    });
    let again_pid = eventually("its sandbox", Duration::from_secs(30), || {
        sandbox_pid(&root, &again)
    });
    let body = eventually("its httpd answering", Duration::from_secs(90), || {
        fetch(again_pid).filter(|b| !b.is_empty())
    });
    assert_eq!(body, "again");
    std::fs::remove_file(manifests.join("again.yaml")).unwrap();
    eventually("the last pod torn down", Duration::from_secs(60), || {
        pod_uids(&root).is_empty().then_some(())
    });
}

#[test]
fn a_static_pod_has_a_mirror_pod_in_the_api() {
    if !is_root() {
        println!("skipped: needs root (namespaces, overlay mounts)");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sh"]);
    let s = Server::start();
    let manifests = s.dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("web.yaml"),
        manifest("web", &image, "mirrored"),
    )
    .unwrap();
    let manifests_arg = manifests.display().to_string();
    let agent = Agent::start(
        &s,
        "node-m",
        &[
            "--pod-manifest-path",
            &manifests_arg,
            "--file-check-frequency",
            "300ms",
        ],
    );
    let mirror = eventually("the mirror pod Running", Duration::from_secs(120), || {
        let out = s.kubectl(&["get", "pod", "web-node-m", "-o", "json"]);
        let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (pod["status"]["phase"] == "Running").then_some(pod)
    });
    let annotations = &mirror["metadata"]["annotations"];
    assert_eq!(annotations["kubernetes.io/config.source"], "file");
    let hash = annotations["kubernetes.io/config.hash"].as_str().unwrap();
    assert_eq!(annotations["kubernetes.io/config.mirror"], hash);
    assert_ne!(
        mirror["metadata"]["uid"], hash,
        "the mirror has its own uid"
    );
    let owner = &mirror["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["name"].as_str()),
        (Some("Node"), Some("node-m"))
    );
    let table = s.ok(&["get", "pods"]);
    assert!(
        table.contains("web-node-m") && table.contains("Running"),
        "{table}"
    );
    // The node API finds the static pod's containers through its mirror.
    let logs = s.ok(&["logs", "web-node-m"]);
    assert_eq!(logs.trim(), "serving mirrored");
    let page = s.ok(&["exec", "web-node-m", "--", "cat", "/www/index.html"]);
    assert_eq!(page.trim(), "mirrored");

    // Deleting the mirror brings it back; the static pod itself keeps running.
    let first_uid = mirror["metadata"]["uid"].as_str().unwrap().to_string();
    s.ok(&["delete", "pod", "web-node-m", "--wait=false"]);
    let again = eventually("a new mirror pod, Running", Duration::from_secs(60), || {
        let out = s.kubectl(&["get", "pod", "web-node-m", "-o", "json"]);
        let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (pod["metadata"]["uid"] != first_uid.as_str()
            && pod["metadata"]["deletionTimestamp"].is_null()
            && pod["status"]["phase"] == "Running")
            .then_some(pod)
    });
    assert_eq!(again["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(pod_uids(&agent.root), vec![hash.to_string()]);
    let logs = s.ok(&["logs", "web-node-m"]);
    assert_eq!(
        logs.trim(),
        "serving mirrored",
        "the container was not restarted"
    );

    // Removing the manifest removes the pod and its mirror.
    std::fs::remove_file(manifests.join("web.yaml")).unwrap();
    eventually("the mirror pod gone", Duration::from_secs(60), || {
        (!s.kubectl(&["get", "pod", "web-node-m"]).status.success()).then_some(())
    });
    eventually("the static pod torn down", Duration::from_secs(60), || {
        pod_uids(&agent.root).is_empty().then_some(())
    });
}

/// The worker's restart rules hold for static pods: OnFailure restarts a failed container
/// (a new `<restart>.log`), Never leaves it exited.
#[test]
fn static_pods_restart_per_their_policy() {
    if !is_root() {
        println!("skipped: needs root (namespaces, overlay mounts)");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sh"]);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    for (name, policy) in [("again", "OnFailure"), ("once", "Never")] {
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {policy}\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, 'echo ran; exit 3']\n"
            ),
        )
        .unwrap();
    }
    let agent = Standalone::start(dir.path(), &manifests);
    let logs = dir.path().join("pod-logs");
    let container_logs = |pod: &str| -> Vec<String> {
        let Some(pod_dir) = std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("default_{pod}-lone_"))
            })
        else {
            return Vec::new();
        };
        let mut v: Vec<String> = std::fs::read_dir(pod_dir.path().join("c"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    eventually("both pods ran once", Duration::from_secs(90), || {
        (container_logs("again").contains(&"0.log".to_string())
            && container_logs("once") == ["0.log"])
        .then_some(())
    });
    eventually(
        "OnFailure restarted after its back-off",
        Duration::from_secs(90),
        || {
            container_logs("again")
                .contains(&"1.log".to_string())
                .then_some(())
        },
    );
    assert_eq!(container_logs("once"), ["0.log"], "Never does not restart");
    drop(agent);
}
