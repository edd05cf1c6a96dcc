//! A real skiff-agent as a test node, and the guard that leaves nothing behind: pods
//! deleted through the agent first, then by force — containers through the shim, sandbox
//! holders by their recorded pids, mounts under the agent's root.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin_dir, Server};

pub struct Agent<'a> {
    pub server: &'a Server,
    pub name: String,
    pub root: PathBuf,
    pub logs: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    kubeconfig: PathBuf,
}

impl<'a> Agent<'a> {
    /// Starts an agent registered as `name` and waits until its Node exists.
    pub fn start(server: &'a Server, name: &str, extra: &[&str]) -> Self {
        Self::start_with_kubeconfig(server, name, &server.kubeconfig(), extra)
    }

    /// Like `start`, with the agent's own `--kubeconfig` (which TLS bootstrap may create).
    pub fn start_with_kubeconfig(
        server: &'a Server,
        name: &str,
        kubeconfig: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // The default :10250 is taken as soon as two agents run at once (tests in parallel);
        // kept in `extra`, the port survives restarts.
        if !extra.iter().any(|a| a == "--node-api-port") {
            extra.extend(["--node-api-port".into(), crate::free_port().to_string()]);
        }
        let root = server.dir.path().join(format!("agent-{name}"));
        // Never the machine's /etc/skiff/manifests: a test runs only its own static pods.
        if !extra.iter().any(|a| a == "--pod-manifest-path") {
            extra.extend([
                "--pod-manifest-path".into(),
                root.join("manifests").display().to_string(),
            ]);
        }
        let mut a = Agent {
            server,
            name: name.into(),
            root,
            logs: server.dir.path().join(format!("pod-logs-{name}")),
            child: None,
            extra,
            kubeconfig: kubeconfig.to_path_buf(),
        };
        a.spawn();
        // Generous: on a loaded 2-core machine the first start of a debug agent is slow.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !server.kubectl(&["get", "node", name]).status.success() {
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(a.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "node {name} never registered; agent log (last lines, newest first):\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(bin_dir().join("skiff-agent"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "--node-name",
                &self.name,
                "--allow-missing-cgroup-controllers",
            ])
            .arg("--root-dir")
            .arg(&self.root)
            .arg("--pod-logs-dir")
            .arg(&self.logs)
            .arg("--shim")
            .arg(bin_dir().join("skiff-shim"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.server
            .dir
            .path()
            .join(format!("agent-{}.log", self.name))
    }

    /// SIGKILL, as a crash would: containers and sandboxes stay.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn force_cleanup(&self) {
        force_cleanup(&self.root);
    }
}

/// Removes by force whatever an agent with this `--root-dir` left: containers through the
/// shim, sandbox holders by their recorded pids, mounts under the root.
pub fn force_cleanup(root: &std::path::Path) {
    let shim_root = root.join("shim");
    let shim = |args: &[&str]| {
        Command::new(bin_dir().join("skiff-shim"))
            .arg("--root")
            .arg(&shim_root)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
    };
    if let Ok(out) = shim(&["list"]) {
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for c in list.as_array().into_iter().flatten() {
            if let Some(id) = c["id"].as_str() {
                let _ = shim(&["kill", "--all", id, "SIGKILL"]);
                let _ = shim(&["delete", "--force", id]);
            }
        }
    }
    for entry in std::fs::read_dir(root.join("sandboxes"))
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
    let root = root.display().to_string();
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

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- agent {} log, last lines ---\n{}",
                self.name,
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        if self.child.is_some() {
            let _ = self.server.kubectl(&[
                "delete",
                "pod",
                "--all",
                "--all-namespaces",
                "--grace-period=0",
                "--force",
                "--wait=false",
            ]);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline
                && std::fs::read_dir(self.root.join("sandboxes"))
                    .is_ok_and(|mut d| d.next().is_some())
            {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.kill();
        self.force_cleanup();
    }
}

/// Waits for `check`, failing with `what` after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}
