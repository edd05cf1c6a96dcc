//! Client certificate rotation, end to end: a server that signs node certificates for 60 s
//! only (`--cluster-signing-duration`), an agent that bootstrapped one with a token. At 80 %
//! of its lifetime the agent files a new CSR as the node itself, switches its kubeconfig to
//! the new certificate and re-executes; its pod keeps running untouched and the node stays
//! Ready. Root only (the agent needs namespaces and mounts). Nothing here measures time: each
//! wait is a generous deadline for an event.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_e2e::agent::{eventually, is_root, Agent};
use skiff_e2e::registry::Registry;
use skiff_e2e::Server;

const NODE: &str = "rot-1";

/// The client certificate the kubeconfig names.
fn current_cert(kubeconfig: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(kubeconfig).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate:"))
        .map(|p| PathBuf::from(p.trim().trim_matches('"')))
}

/// The client certificate the kubeconfig names, and its PEM read at once: with a 60 s
/// lifetime the agent may replace (and delete) it again soon after.
fn current_pem(kubeconfig: &Path) -> Option<(PathBuf, Vec<u8>)> {
    let path = current_cert(kubeconfig)?;
    let pem = std::fs::read(&path).ok()?;
    Some((path, pem))
}

/// `openssl x509 -noout <args>` on a PEM certificate; its output and exit status.
fn openssl(pem: &[u8], args: &[&str]) -> (String, bool) {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["x509", "-noout"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(pem).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        out.status.success(),
    )
}

fn node_ready(s: &Server) -> (bool, String) {
    let node = s.json(&["get", "node", NODE, "-o", "json"]);
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    (
        ready["status"] == "True",
        ready["lastHeartbeatTime"].to_string(),
    )
}

fn container(s: &Server) -> (String, i64, bool) {
    let pod = s.json(&["get", "pod", "steady", "-o", "json"]);
    let cs = &pod["status"]["containerStatuses"][0];
    (
        cs["containerID"].as_str().unwrap_or_default().to_string(),
        cs["restartCount"].as_i64().unwrap_or(-1),
        pod["status"]["phase"] == "Running" && cs["state"]["running"].is_object(),
    )
}

fn node_csrs(s: &Server) -> Vec<String> {
    s.ok(&["get", "csr", "--no-headers"])
        .lines()
        .filter(|l| l.starts_with(&format!("node-csr-{NODE}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_agent_with_a_short_lived_certificate_rotates_it_and_keeps_its_pods() {
    if !is_root() {
        println!("SKIPPED cert_rotation: needs root (namespaces, overlay mounts)");
        return;
    }
    if Command::new("openssl").arg("version").output().is_err() {
        println!("SKIPPED cert_rotation: openssl not found");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sleep", "3600"]);
    let server = Server::start_with(&["--cluster-signing-duration", "60s"]);
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-rotate\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: rotate\n  token-secret: 0123456789abcdef\n  usage-bootstrap-authentication: \"true\"\n  usage-bootstrap-signing: \"true\"\n";
    let out = server.kubectl_stdin(&["apply", "-f", "-"], secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = Command::new("base64")
        .arg("-w0")
        .arg(server.data_dir().join("pki/ca.crt"))
        .output()
        .unwrap();
    let bootstrap = server.write_file(
        "bootstrap.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: t\n  user:\n    token: rotate.0123456789abcdef\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: t\ncurrent-context: c\n",
            server.url(""),
            String::from_utf8_lossy(&ca.stdout)
        ),
    );
    let kubeconfig = server.dir.path().join("node/agent.kubeconfig");
    let cert_dir = server.dir.path().join("node/pki");
    let (bootstrap_arg, cert_dir_arg) = (
        bootstrap.display().to_string(),
        cert_dir.display().to_string(),
    );
    // Its guard deletes the pod through the agent, then removes by force what is left.
    let agent = Agent::start_with_kubeconfig(
        &server,
        NODE,
        &kubeconfig,
        &[
            "--bootstrap-kubeconfig",
            &bootstrap_arg,
            "--cert-dir",
            &cert_dir_arg,
        ],
    );
    let agent_log = || std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    let pid = agent.pid().expect("agent running");

    let (first, first_pem) =
        current_pem(&kubeconfig).expect("the bootstrapped kubeconfig names a cert");
    let first_serial = openssl(&first_pem, &["-serial"]).0;
    let first_subject = openssl(&first_pem, &["-subject"]).0;
    assert!(
        first_subject.contains(&format!("CN = system:node:{NODE}")),
        "{first_subject}"
    );
    // The server issued the lifetime it was told to, not a year: the certificate does not
    // outlive an hour (`-checkend` exits 1 when it expires within that time).
    let (end, outlives) = openssl(&first_pem, &["-enddate", "-checkend", "3600"]);
    assert!(!outlives, "{end}");

    server.ok(&["run", "steady", &format!("--image={image}")]);
    eventually("the pod Running", Duration::from_secs(120), || {
        container(&server).2
    });
    let (id_before, restarts_before, _) = container(&server);
    assert!(!id_before.is_empty());

    // The renewal: a second CSR from the node, issued, and the kubeconfig on a new file.
    eventually(
        "a renewed certificate in the kubeconfig",
        Duration::from_secs(300),
        || current_cert(&kubeconfig).is_some_and(|c| c != first && c.exists()),
    );
    let (_, renewed_pem) = current_pem(&kubeconfig).expect("the renewed certificate");
    assert_ne!(openssl(&renewed_pem, &["-serial"]).0, first_serial);
    assert_eq!(openssl(&renewed_pem, &["-subject"]).0, first_subject);
    let csrs = node_csrs(&server);
    assert!(csrs.len() >= 2, "{csrs:?}");
    // The first one was the token's, the renewal the node's own.
    assert!(
        csrs.iter().any(|r| r.contains("system:bootstrap:rotate"))
            && csrs
                .iter()
                .any(|r| r.contains(&format!("system:node:{NODE}"))),
        "{csrs:?}"
    );
    assert!(
        csrs.iter().all(|r| r.contains("Approved,Issued")),
        "{csrs:?}"
    );
    assert!(
        !first.exists(),
        "the old certificate {} is removed",
        first.display()
    );
    eventually(
        "the agent re-executing with the renewed certificate",
        Duration::from_secs(60),
        || agent_log().contains("re-executing to use the renewed client certificate"),
    );
    // Re-executed in place: the same process, now running the agent binary again.
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "agent pid {pid} gone"
    );

    // The re-executed agent reports with the new certificate: the heartbeat moves on and
    // the node is Ready.
    let (_, beat) = node_ready(&server);
    eventually(
        "a Ready heartbeat after the renewal",
        Duration::from_secs(120),
        || {
            let (ready, now) = node_ready(&server);
            ready && now != beat
        },
    );
    // The pod was not touched: same container, no restart.
    let (id_after, restarts_after, running) = container(&server);
    assert!(running, "the pod is still Running");
    assert_eq!(id_after, id_before, "same container");
    assert_eq!(restarts_after, restarts_before, "no restart");
    let log = agent_log();
    assert!(!log.contains("client certificate renewal failed"), "{log}");
    drop(agent);
}
