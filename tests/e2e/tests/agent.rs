//! The real node agent against a real API server: registration, heartbeat, and what the
//! control plane concludes when the agent dies.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_e2e::{bin_dir, Server};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(s: &Server, name: &str) -> Agent {
    let root = s.dir.path().join(format!("agent-{name}"));
    let log = std::fs::File::create(s.dir.path().join(format!("agent-{name}.log"))).unwrap();
    let child = Command::new(bin_dir().join("skiff-agent"))
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args([
            "--node-name",
            name,
            "--node-ip",
            "127.0.0.1",
            "--allow-missing-cgroup-controllers",
            "--node-labels",
            "lab=e2e",
        ])
        .arg("--root-dir")
        .arg(&root)
        .arg("--pod-manifest-path")
        .arg(root.join("manifests"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start skiff-agent");
    Agent(child)
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn agent_registers_a_ready_node_and_its_death_is_noticed() {
    let s = Server::start_with(&["--node-monitor-grace-period", "5"]);
    let agent = start_agent(&s, "worker-1");
    eventually("worker-1 Ready", Duration::from_secs(30), || {
        s.kubectl(&["get", "node", "worker-1"]).status.success()
            && s.ok(&["get", "node", "worker-1"])
                .lines()
                .any(|l| l.starts_with("worker-1") && l.contains(" Ready"))
    });
    let node = s.json(&["get", "node", "worker-1"]);
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"],
        "worker-1"
    );
    assert_eq!(node["metadata"]["labels"]["lab"], "e2e");
    assert!(node["status"]["nodeInfo"]["kubeletVersion"]
        .as_str()
        .unwrap()
        .starts_with("v1.33.0-skiff"));
    assert!(node["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap()
        .starts_with("skiff://"));
    assert!(node["status"]["capacity"]["cpu"].as_str().is_some());
    assert_eq!(node["status"]["addresses"][0]["address"], "127.0.0.1");
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert!(
        ready["message"].as_str().unwrap().contains("NOT enforced"),
        "this host lacks cgroup controllers: {ready}"
    );
    eventually("a pod CIDR", Duration::from_secs(20), || {
        s.json(&["get", "node", "worker-1"])["spec"]["podCIDR"]
            .as_str()
            .is_some()
    });
    let lease = s.json(&["get", "lease", "-n", "kube-node-lease", "worker-1"]);
    assert_eq!(lease["spec"]["holderIdentity"], "worker-1");

    drop(agent);
    eventually(
        "worker-1 NotReady once its lease is stale",
        Duration::from_secs(40),
        || {
            s.ok(&["get", "node", "worker-1"])
                .lines()
                .any(|l| l.starts_with("worker-1") && l.contains("NotReady"))
        },
    );
    // A restarted agent makes it Ready again.
    let _agent = start_agent(&s, "worker-1");
    eventually("worker-1 Ready again", Duration::from_secs(40), || {
        let n = s.json(&["get", "node", "worker-1"]);
        let ready = n["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let tainted = n["spec"]["taints"]
            .as_array()
            .is_some_and(|t| !t.is_empty());
        ready && !tainted
    });
}

/// The cluster advertises its nodes' cgroup driver (`skiffadm init` writes
/// kube-system/skiff-agent-config); an agent on another driver refuses to start and says how
/// to fix it, one on the same driver registers.
#[test]
fn an_agent_on_another_cgroup_driver_than_the_cluster_refuses_to_start() {
    let s = Server::start_with(&["--disable", "all"]);
    let advertise = |driver: &str| {
        s.ok(&[
            "-n",
            "kube-system",
            "create",
            "configmap",
            "skiff-agent-config",
            &format!("--from-literal=cgroupDriver={driver}"),
            "--dry-run=client",
            "-o",
            "yaml",
        ])
    };
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &advertise("systemd"));
    assert!(out.status.success(), "{out:?}");
    // This host has no systemd, so the agent picks cgroupfs.
    let mut agent = start_agent(&s, "wrong-driver");
    let status = wait_exit(&mut agent.0, Duration::from_secs(60))
        .expect("the agent should exit on a driver mismatch");
    assert!(!status.success());
    let log =
        std::fs::read_to_string(s.dir.path().join("agent-wrong-driver.log")).unwrap_or_default();
    assert!(
        log.contains("--cgroup-driver=systemd") && log.contains("kube-system/skiff-agent-config"),
        "{log}"
    );
    assert!(!s.kubectl(&["get", "node", "wrong-driver"]).status.success());

    let out = s.kubectl_stdin(&["apply", "-f", "-"], &advertise("cgroupfs"));
    assert!(out.status.success(), "{out:?}");
    let _agent = start_agent(&s, "right-driver");
    eventually("right-driver registered", Duration::from_secs(30), || {
        s.kubectl(&["get", "node", "right-driver"]).status.success()
    });
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
