//! What is left after the agents stop: containers (through the shim, which knows them),
//! sandbox holders (by their recorded pids), any process naming a node's root dir, mounts
//! under the root and the per-node cgroups. Every step keeps going and reports its errors.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Containers through `skiff-shim --root <root>`: SIGKILL to all their processes, then a
/// forced delete (the shim is their subreaper; killing only it would orphan them).
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
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
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
fn unescape_mount_path(s: &str) -> PathBuf {
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
    PathBuf::from(std::ffi::OsString::from(
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

/// Node `i`'s leftovers: containers, sandboxes, processes naming its root, its mounts and
/// cgroups.
pub fn node(spec: &Spec, i: usize, errors: &mut Vec<String>) {
    let root = spec.node_root(i);
    remove_containers_in(&spec.bin_dir.join("skiff-shim"), &root.join("shim"), errors);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

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
        let pid = child.id() as i32;
        // The shell's own fork for `sleep` carries the same command line until it execs,
        // so the list may briefly hold two pids; the shell must be among them.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = processes_under(dir.path());
        while !found.contains(&pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            found = processes_under(dir.path());
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&pid), "{pid} not in {found:?}");
        assert!(!processes_under(dir.path()).contains(&pid));
    }
}
