//! Real pods on a real node: skiff-agent pulls an image from a local registry, holds the pod
//! sandbox, starts the container with skiff-shim and reports it Running; deleting the pod
//! leaves nothing behind. Root only (namespaces, overlay mounts).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_e2e::registry::Registry;
use skiff_e2e::{bin_dir, Server};

struct Agent(Child);

/// Leaves nothing behind even when an assertion fails: first the normal way (delete the pod,
/// the agent tears it down), then by force (sandbox processes recorded by the agent, mounts
/// under its root).
struct Cleanup<'a> {
    server: &'a Server,
    root: std::path::PathBuf,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.server.kubectl(&[
            "delete",
            "pod",
            "--all",
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && std::fs::read_dir(self.root.join("sandboxes")).is_ok_and(|mut d| d.next().is_some())
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        for entry in std::fs::read_dir(self.root.join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap_or_default())
                    .unwrap_or_default();
            if let Some(pid) = state["pid"].as_i64() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
        let root = self.root.display().to_string();
        for line in std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
        {
            if let Some(target) = line
                .split_whitespace()
                .nth(1)
                .filter(|t| t.starts_with(&root))
            {
                let _ = Command::new("umount").args(["-l", target]).status();
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_pod_runs_from_a_registry_image_and_is_cleaned_up() {
    if !nix_is_root() {
        println!("skipped: needs root (namespaces, overlay mounts)");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox(
        "busybox",
        "1",
        &["sh", "-c", "echo hello from $(hostname); exec sleep 3600"],
    );
    let s = Server::start();
    let root = s.dir.path().join("agent");
    let logs = s.dir.path().join("pod-logs");
    let log = std::fs::File::create(s.dir.path().join("agent.log")).unwrap();
    let _agent = Agent(
        Command::new(bin_dir().join("skiff-agent"))
            .arg("--kubeconfig")
            .arg(s.kubeconfig())
            .args([
                "--node-name",
                "node-1",
                "--allow-missing-cgroup-controllers",
            ])
            .arg("--root-dir")
            .arg(&root)
            .arg("--pod-manifest-path")
            .arg(root.join("manifests"))
            .arg("--pod-logs-dir")
            .arg(&logs)
            .arg("--shim")
            .arg(bin_dir().join("skiff-shim"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // Declared after the agent, so it runs first on drop, while the agent still works.
    let _cleanup = Cleanup {
        server: &s,
        root: root.clone(),
    };
    eventually("node-1 registered", Duration::from_secs(30), || {
        s.kubectl(&["get", "node", "node-1"]).status.success()
    });
    s.ok(&["run", "hello", &format!("--image={image}")]);
    eventually("the pod Running", Duration::from_secs(90), || {
        s.json(&["get", "pod", "hello"])["status"]["phase"] == "Running"
    });
    let pod = s.json(&["get", "pod", "hello"]);
    assert_eq!(pod["spec"]["nodeName"], "node-1", "the scheduler bound it");
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert!(cs["state"]["running"].is_object(), "{cs}");
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let log_file = logs
        .join(format!("default_hello_{uid}"))
        .join("hello")
        .join("0.log");
    eventually(
        "the container's output in the CRI log",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&log_file)
                .unwrap_or_default()
                .contains("hello from hello")
        },
    );
    let line = std::fs::read_to_string(&log_file).unwrap();
    let first = line.lines().next().unwrap();
    let fields: Vec<&str> = first.splitn(4, ' ').collect();
    assert!(
        fields[0].contains('T') && fields[1] == "stdout" && fields[2] == "F",
        "CRI format: {first}"
    );

    let rootfs = root.join("pods").join(&uid).join("containers/hello/rootfs");
    assert!(std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(rootfs.to_str().unwrap()));
    s.ok(&["delete", "pod", "hello", "--timeout=60s"]);
    assert!(!s.kubectl(&["get", "pod", "hello"]).status.success());
    eventually(
        "no mount, no sandbox, no pod dir left",
        Duration::from_secs(30),
        || {
            !std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(&uid)
                && !root.join("pods").join(&uid).exists()
                && !root.join("sandboxes").join(format!("{uid}.json")).exists()
        },
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}
