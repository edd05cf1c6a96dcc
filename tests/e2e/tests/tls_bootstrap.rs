//! The agent's TLS bootstrap: started with only a bootstrap-token kubeconfig, it files a CSR,
//! gets it approved and signed, writes its own kubeconfig and registers the node with the
//! issued certificate. Root only (the agent needs namespaces and mounts).

use std::process::Command;

use skiff_e2e::agent::{is_root, Agent};
use skiff_e2e::Server;

#[test]
fn agent_bootstraps_its_client_certificate_from_a_token() {
    if !is_root() {
        eprintln!("SKIP agent_bootstraps_its_client_certificate_from_a_token: needs root");
        return;
    }
    let server = Server::start();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-abcdef\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: abcdef\n  token-secret: 0123456789abcdef\n  usage-bootstrap-authentication: \"true\"\n  usage-bootstrap-signing: \"true\"\n";
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
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: t\n  user:\n    token: abcdef.0123456789abcdef\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: t\ncurrent-context: c\n",
            server.url(""),
            String::from_utf8_lossy(&ca.stdout)
        ),
    );
    let node_kubeconfig = server.dir.path().join("node/agent.kubeconfig");
    let cert_dir = server.dir.path().join("node/pki");
    let bootstrap_arg = bootstrap.to_string_lossy().into_owned();
    let cert_dir_arg = cert_dir.to_string_lossy().into_owned();
    let mut agent = Agent::start_with_kubeconfig(
        &server,
        "boot-1",
        &node_kubeconfig,
        &[
            "--bootstrap-kubeconfig",
            &bootstrap_arg,
            "--cert-dir",
            &cert_dir_arg,
        ],
    );
    assert!(node_kubeconfig.exists(), "the agent wrote its kubeconfig");
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(cert_dir.join("skiff-agent-client.crt"))
        .output()
        .expect("openssl");
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(
        subject.contains("CN = system:node:boot-1") && subject.contains("O = system:nodes"),
        "{subject}"
    );
    let csrs = server.ok(&["get", "csr"]);
    let row = csrs
        .lines()
        .find(|l| l.starts_with("node-csr-boot-1-"))
        .unwrap_or_default();
    assert!(
        row.contains("system:bootstrap:abcdef") && row.contains("Approved,Issued"),
        "{csrs}"
    );
    // A restart uses the certificate it has: the node keeps being updated, with no second
    // request.
    let heartbeat = |server: &Server| {
        let node = server.json(&["get", "node", "boot-1", "-o", "json"]);
        node["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["lastHeartbeatTime"].to_string())
            .unwrap_or_default()
    };
    let before = heartbeat(&server);
    agent.restart();
    skiff_e2e::agent::eventually(
        "a node status update from the restarted agent",
        std::time::Duration::from_secs(120),
        || heartbeat(&server) != before,
    );
    let csrs = server.ok(&["get", "csr"]);
    assert_eq!(
        csrs.lines()
            .filter(|l| l.starts_with("node-csr-boot-1-"))
            .count(),
        1,
        "{csrs}"
    );
    agent.kill();
}
