//! `skiffadm up --nodes 2` as a user runs it: the host's kubectl sees two Ready nodes through
//! the relay on 127.0.0.1, `status` says all is up, and `delete` leaves no namespace, process
//! or file behind. Root only; it skips when a lab already uses the names `skiff-lab` /
//! `skiff-node-*` (someone's `skiffadm up --nodes`). A guard deletes everything on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use skiff_e2e::agent::eventually;
use skiff_e2e::bin_dir;
use skiff_e2e::cluster::missing_prerequisites;

struct Lab {
    root: PathBuf,
    home: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Lab {
    fn skiffadm(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("skiffadm"))
            .args(args)
            .arg("--root-dir")
            .arg(&self.root)
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG")
            .output()
            .expect("run skiffadm")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("HOME", &self.home)
            .env_remove("KUBECONFIG")
            .output()
            .expect("run kubectl")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.root.exists() {
            let _ = self.skiffadm(&["delete"]);
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n == "skiff-lab" || n.starts_with("skiff-node-"))
        .collect()
}

#[test]
fn up_with_two_nodes_then_delete() {
    let mut missing = missing_prerequisites();
    if !bin_dir().join("skiffadm").is_file() {
        missing.push("skiffadm (cargo build)".into());
    }
    if !missing.is_empty() {
        println!("SKIPPED lab_mode: missing {}", missing.join(", "));
        return;
    }
    if !lab_namespaces().is_empty() {
        println!(
            "SKIPPED lab_mode: a lab already runs here ({:?})",
            lab_namespaces()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lab = Lab {
        root: tmp.path().join("lab"),
        home: tmp.path().join("home"),
        _tmp: tmp,
    };
    let port = skiff_e2e::free_port().to_string();
    let bin = std::fs::canonicalize(bin_dir()).unwrap();
    let bin = bin.display().to_string();
    let out = lab.skiffadm(&[
        "up",
        "--nodes",
        "2",
        "--port",
        &port,
        "--bin-dir",
        &bin,
        "--wait",
        "240",
    ]);
    assert!(out.status.success(), "up: {}", text(&out));
    assert!(
        text(&out).contains("skiff-node-2 (10.250.0.12)"),
        "{}",
        text(&out)
    );

    // The host's kubectl, through the context `up` wrote and the relay on loopback.
    let nodes = lab.kubectl(&["get", "nodes", "-o", "name"]);
    assert!(nodes.status.success(), "{}", text(&nodes));
    assert_eq!(
        String::from_utf8_lossy(&nodes.stdout).trim(),
        "node/skiff-node-1\nnode/skiff-node-2"
    );
    let server = lab.kubectl(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    assert_eq!(text(&server).trim(), format!("https://127.0.0.1:{port}"));
    eventually(
        "status reports the lab healthy",
        Duration::from_secs(60),
        || {
            let s = lab.skiffadm(&["status"]);
            s.status.success() && text(&s).contains("2 of 2 Ready")
        },
    );

    // A second `up` with another node count is refused: the lab was made with 2.
    let again = lab.skiffadm(&["up", "--nodes", "3"]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("--nodes 3 (it has 2)"),
        "{}",
        text(&again)
    );

    let out = lab.skiffadm(&["delete"]);
    assert!(out.status.success(), "delete: {}", text(&out));
    assert!(lab_namespaces().is_empty(), "{:?}", lab_namespaces());
    assert!(!Path::new(&lab.root).exists());
    let leftovers = skiff_lab::sweep::processes_under(&lab.root);
    assert!(leftovers.is_empty(), "processes left: {leftovers:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err());
}
