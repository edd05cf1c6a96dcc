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
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::layout::{Layout, Settings};
use super::supervisor::live_pid;
use skiff_lab::sweep::{mounts_under, processes_under, remove_cgroup_tree};

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
    skiff_lab::sweep::remove_containers_in(
        &settings.bin_dir.join("skiff-shim"),
        &layout.shim_dir(),
        errors,
    )
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
