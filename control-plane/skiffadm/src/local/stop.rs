//! `skiffadm down` and `skiffadm delete`.
//!
//! `down` stops the supervisor, skiff-server and skiff-agent and keeps all state. The pods'
//! containers keep running, as they do when kubelet stops: the agent is their manager, not
//! their parent, so the next `up` adopts them with no restart and the same IPs. `delete`
//! removes everything local mode made: processes, containers and shims, pod sandboxes and
//! their network attachments, mounts under the root, the bridge, the masquerade chain, the
//! service proxy's `KUBE-*` chains, the cgroup directory, the files and the kubeconfig context. It keeps going past failures and
//! reports them all at the end.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::layout::{Layout, Settings};
use super::supervisor::live_pid;
use super::{kubeconfig, network, LocalError};

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
}

pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Stops the supervisor (which stops its children) and, should it be gone or stuck, the
/// children themselves. Returns whether anything was running.
pub fn stop_processes(layout: &Layout) -> bool {
    let mut any = false;
    if let Some(pid) = live_pid(&layout.supervisor_pid(), "local-supervise") {
        any = true;
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        // The supervisor gives each child 10 s to stop.
        if !wait_gone(pid, Duration::from_secs(25)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(5));
        }
        let _ = std::fs::remove_file(layout.supervisor_pid());
    }
    for (name, marker) in [("agent", "skiff-agent"), ("server", "skiff-server")] {
        let path = layout.child_pid(name);
        if let Some(pid) = live_pid(&path, marker) {
            any = true;
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            if !wait_gone(pid, Duration::from_secs(10)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_gone(pid, Duration::from_secs(5));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    any
}

/// Pod sandboxes whose pause process still runs.
pub fn running_sandboxes(layout: &Layout) -> Vec<String> {
    let agent = layout.agent_dir();
    skiff_agent::sandbox::recorded(&agent)
        .into_iter()
        .filter(|uid| matches!(skiff_agent::sandbox::find(&agent, uid), Ok(Some(_))))
        .collect()
}

pub fn down(root: &Path) -> Result<(), LocalError> {
    let layout = Layout::new(root)?;
    super::require_root()?;
    Settings::require(&layout)?;
    let was_running = stop_processes(&layout);
    let pods = running_sandboxes(&layout).len();
    if was_running {
        println!(
            "Stopped the API server and the node agent of {}; state is kept.",
            root.display()
        );
    } else {
        println!("The local cluster in {} was not running.", root.display());
    }
    if pods > 0 {
        println!(
            "{pods} pod(s) keep running, as when a kubelet stops: `skiffadm up --root-dir {}` adopts them again, `skiffadm delete --root-dir {}` removes them.",
            root.display(),
            root.display()
        );
    }
    Ok(())
}

/// Network attachments released (CNI DEL), then the pause processes stopped.
fn remove_sandboxes(layout: &Layout, errors: &mut Vec<String>) {
    remove_sandboxes_in(
        &layout.agent_dir(),
        &layout.cni_conf_dir(),
        &layout.cni_bin_dir(),
        errors,
    )
}

/// Detaches every pod sandbox an agent with state `agent` recorded from its CNI network and
/// stops it; errors are collected so that teardown goes on.
pub fn remove_sandboxes_in(
    agent: &Path,
    cni_conf_dir: &Path,
    cni_bin_dir: &Path,
    errors: &mut Vec<String>,
) {
    let agent = agent.to_path_buf();
    let cni = skiff_agent::cni::Runtime {
        conf_dir: cni_conf_dir.to_path_buf(),
        bin_dirs: vec![cni_bin_dir.to_path_buf()],
        cache_dir: agent.join("cni-cache"),
        timeout: Duration::from_secs(30),
    };
    let net = cni.load().ok();
    for uid in skiff_agent::sandbox::recorded(&agent) {
        let sandbox = skiff_agent::sandbox::find(&agent, &uid).ok().flatten();
        if let Some(net) = &net {
            let attachment = skiff_agent::cni::Attachment {
                container_id: uid.clone(),
                // A DEL without a namespace still releases the address and host-side rules.
                netns: sandbox.as_ref().map(|s| s.netns()).unwrap_or_default(),
                ifname: "eth0".into(),
                pod_namespace: String::new(),
                pod_name: String::new(),
                pod_uid: uid.clone(),
                capabilities: Default::default(),
            };
            if let Err(e) = cni.del(net, &attachment) {
                errors.push(format!("CNI DEL for pod {uid}: {e}"));
            }
        }
        if let Err(e) = skiff_agent::sandbox::stop(&agent, &uid) {
            errors.push(format!("stopping the sandbox of pod {uid}: {e}"));
        }
    }
}

/// Every container the agent's shims know, killed and deleted.
fn remove_containers(layout: &Layout, settings: &Settings, errors: &mut Vec<String>) {
    remove_containers_in(
        &settings.bin_dir.join("skiff-shim"),
        &layout.shim_dir(),
        errors,
    )
}

/// Kills and deletes every container skiff-shim keeps under `root`.
pub fn remove_containers_in(shim: &Path, root: &Path, errors: &mut Vec<String>) {
    if !root.exists() {
        return;
    }
    let run = |args: &[&str]| {
        Command::new(shim)
            .arg("--root")
            .arg(root)
            .args(args)
            .output()
    };
    let ids: Vec<String> = match run(&["list"]) {
        Ok(o) if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_string))
            .collect(),
        Ok(o) => {
            errors.push(format!(
                "skiff-shim list: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            return;
        }
        Err(e) => {
            errors.push(format!("{}: {e}", shim.display()));
            return;
        }
    };
    for id in ids {
        let _ = run(&["kill", "--all", &id, "KILL"]);
        match run(&["delete", "--force", &id]) {
            Ok(o) if o.status.success() => {}
            Ok(o) => errors.push(format!(
                "skiff-shim delete {id}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => errors.push(format!("skiff-shim delete {id}: {e}")),
        }
    }
}

/// Processes whose command line names the root dir (shims, strays): what is left of ours.
pub fn processes_under(root: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = root.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len().max(1)).any(|w| w == needle))
        })
        .collect()
}

/// Mount points at or under `root`, deepest first.
pub fn mounts_under(root: &Path) -> Vec<std::path::PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<std::path::PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> std::path::PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::path::PathBuf::from(std::ffi::OsString::from(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

pub fn remove_cgroup_tree(dir: &Path, errors: &mut Vec<String>) {
    if !dir.exists() {
        return;
    }
    // Children first: a cgroup directory can only be removed once it has none.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path(), errors);
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        errors.push(format!("rmdir {}: {e}", dir.display()));
    }
}

pub fn delete(root: &Path) -> Result<(), LocalError> {
    let layout = Layout::new(root)?;
    super::require_root()?;
    let Some(settings) = Settings::load(&layout)? else {
        if root.exists() {
            return Err(LocalError::Invalid(format!(
                "{} has no local.json: it is not a local cluster's root dir, so nothing is removed",
                root.display()
            )));
        }
        println!("Nothing to delete: {} does not exist.", root.display());
        return Ok(());
    };
    let mut errors = Vec::new();
    stop_processes(&layout);
    remove_sandboxes(&layout, &mut errors);
    remove_containers(&layout, &settings, &mut errors);
    for pid in processes_under(root) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(5));
    }
    for m in mounts_under(root) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            errors.push(format!("umount {}: {e}", m.display()));
        }
    }
    match settings.nodes {
        // A lab made nothing on the host's network: its bridge, chains and links all live
        // in its namespaces.
        Some(n) => super::lab::remove(&layout, &settings, n, &mut errors),
        None => {
            network::remove_bridge(&settings.bridge, &mut errors);
            network::remove_masquerade(&settings, &mut errors);
            network::remove_proxy_chains(&mut errors);
        }
    }
    if let Some(cg) = &settings.cgroup_root {
        remove_cgroup_tree(cg, &mut errors);
    }
    let leftover_procs = processes_under(root);
    if !leftover_procs.is_empty() {
        errors.push(format!("processes still running: {leftover_procs:?}"));
    }
    let leftover_mounts = mounts_under(root);
    if leftover_mounts.is_empty() {
        if let Err(e) = std::fs::remove_dir_all(root) {
            errors.push(format!("removing {}: {e}", root.display()));
        }
    } else {
        // Never recurse into a mount: it could reach outside the root.
        errors.push(format!(
            "{} kept: still mounted under it: {leftover_mounts:?}",
            root.display()
        ));
    }
    match kubeconfig::user_kubeconfig_path() {
        Ok(path) => {
            let server = format!("https://127.0.0.1:{}", settings.port);
            match kubeconfig::read_optional(&path)
                .and_then(|text| kubeconfig::removed(&path, &text, &server))
            {
                Ok(Some(text)) => {
                    if let Err(e) = super::write_atomic(&path, text.as_bytes(), 0o600) {
                        errors.push(e.to_string());
                    }
                }
                Ok(None) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    if errors.is_empty() {
        println!("Deleted the local cluster in {}.", root.display());
        Ok(())
    } else {
        Err(LocalError::Invalid(format!(
            "deleting {} left things behind:\n  {}",
            root.display(),
            errors.join("\n  ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/a\040b/c\134d"),
            Path::new("/a b/c\\d")
        );
        assert_eq!(unescape_mount_path(r"/plain"), Path::new("/plain"));
        assert_eq!(unescape_mount_path(r"/end\04"), Path::new(r"/end\04"));
    }

    #[test]
    fn finds_processes_by_their_command_line() {
        let dir = tempfile::tempdir().unwrap();
        assert!(processes_under(dir.path()).is_empty());
        // `; :` keeps the shell from exec'ing sleep, so its command line (with DIR as $0)
        // stays visible.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30; :"])
            .arg(dir.path())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = processes_under(dir.path());
        while found.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            found = processes_under(dir.path());
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, vec![child.id() as i32]);
    }
}
