//! What is left after the agents stop: containers (through the shim, which knows them),
//! sandbox holders (by their recorded pids), any process naming a node's root dir, mounts
//! under the root and the per-node cgroups. Every step keeps going and reports its errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Spec;

fn kill9(pid: i32, errors: &mut Vec<String>) {
    if let Err(e) = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        if e != nix::errno::Errno::ESRCH {
            errors.push(format!("kill -9 {pid}: {e}"));
        }
    }
}

/// Containers through `skiff-shim --root <node>/shim`: SIGKILL to all their processes, then
/// a forced delete (the shim is their subreaper; killing only it would orphan them).
fn containers(shim: &Path, node_root: &Path) {
    let shim_root = node_root.join("shim");
    if !shim_root.exists() {
        return;
    }
    let run = |args: &[&str]| {
        Command::new(shim)
            .arg("--root")
            .arg(&shim_root)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
    };
    let Ok(out) = run(&["list"]) else { return };
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for c in list.as_array().into_iter().flatten() {
        if let Some(id) = c["id"].as_str() {
            let _ = run(&["kill", "--all", id, "SIGKILL"]);
            let _ = run(&["delete", "--force", id]);
        }
    }
}

fn sandboxes(node_root: &Path, errors: &mut Vec<String>) {
    for entry in std::fs::read_dir(node_root.join("sandboxes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap_or_default())
                .unwrap_or_default();
        if let Some(pid) = state["pid"].as_i64() {
            kill9(pid as i32, errors);
        }
    }
}

/// Processes whose command line names `root` (agents, shims, strays), except this one.
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

/// Mount points at or under `root`, deepest first (paths with spaces are not ours).
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn remove_cgroup_tree(dir: &Path, errors: &mut Vec<String>) {
    if !dir.exists() {
        return;
    }
    // Children first: a cgroup directory can only be removed once it has none.
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path(), errors);
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        errors.push(format!("rmdir {}: {e}", dir.display()));
    }
}

/// Node `i`'s leftovers: containers, sandboxes, processes naming its root, its mounts and
/// cgroups.
pub fn node(spec: &Spec, i: usize, errors: &mut Vec<String>) {
    let root = spec.node_root(i);
    containers(&spec.bin_dir.join("skiff-shim"), &root);
    sandboxes(&root, errors);
    for pid in processes_under(&root) {
        kill9(pid, errors);
    }
    for m in mounts_under(&root) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            errors.push(format!("umount {}: {e}", m.display()));
        }
    }
    if let Some(cg) = spec.node_cgroup_root(i) {
        remove_cgroup_tree(&cg, errors);
    }
}

/// Every node's leftovers, then any process still naming the lab's root (the server).
pub fn all(spec: &Spec, errors: &mut Vec<String>) {
    for i in 1..=spec.nodes {
        node(spec, i, errors);
    }
    for pid in processes_under(&spec.root) {
        kill9(pid, errors);
    }
    if let Some(cg) = &spec.cgroup_root {
        remove_cgroup_tree(cg, errors);
    }
}
