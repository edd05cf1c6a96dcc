//! Pod sandboxes with real namespaces (root only): a pause process per pod that holds new
//! network, IPC and UTS namespaces, found again by a "restarted" agent, and stopped cleanly.

use std::path::Path;
use std::process::Command;

use skiff_agent::sandbox;

fn agent_binary() -> std::path::PathBuf {
    Path::new(env!("CARGO_BIN_EXE_skiff-agent")).to_path_buf()
}

#[test]
fn pause_process_holds_the_pod_namespaces() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: needs root (creates namespaces)");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let sb = sandbox::start(root.path(), &agent_binary(), "uid-123", "web-0").unwrap();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let theirs = std::fs::read_link(sb.netns()).unwrap();
    assert_ne!(ours, theirs, "a new network namespace");
    assert_ne!(
        std::fs::read_link("/proc/self/ns/uts").unwrap(),
        std::fs::read_link(sb.utsns()).unwrap()
    );
    let hostname = Command::new("nsenter")
        .args(["-t", &sb.pid.to_string(), "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), "web-0");
    let links = Command::new("nsenter")
        .args(["-t", &sb.pid.to_string(), "-n", "ip", "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "only lo inside: {links}");
    // A restarted agent finds it from its state file.
    assert_eq!(
        sandbox::find(root.path(), "uid-123").unwrap(),
        Some(sb.clone())
    );
    sandbox::stop(root.path(), "uid-123").unwrap();
    assert!(!sb.is_alive(), "the pause process is gone (and reaped)");
    assert_eq!(sandbox::find(root.path(), "uid-123").unwrap(), None);
    sandbox::stop(root.path(), "uid-123").unwrap();
}
