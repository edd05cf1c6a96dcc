//! CertificateSigningRequests end to end: a node's request filed with a bootstrap token is
//! approved by the controller and signed with the cluster CA, and the certificate it gets
//! authenticates as that node; other requests wait for `kubectl certificate approve`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use skiff_e2e::agent::eventually;
use skiff_e2e::{Credentials, Server};

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh P-256 key `<name>.key` and the PEM request for `subject`.
fn request(dir: &Path, name: &str, subject: &str) -> String {
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-subj",
            subject,
        ],
        dir,
    )
}

fn b64(data: &[u8], dir: &Path) -> String {
    let file = dir.join("b64-input");
    std::fs::write(&file, data).unwrap();
    let out = Command::new("base64")
        .arg("-w0")
        .arg(&file)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn csr_body(name: &str, pem: &str, signer: &str, dir: &Path) -> Vec<u8> {
    json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
           "metadata": {"name": name},
           "spec": {"request": b64(pem.as_bytes(), dir), "signerName": signer,
                    "expirationSeconds": 7200,
                    "usages": ["digital signature", "client auth"]}})
    .to_string()
    .into_bytes()
}

/// Waits for the certificate and writes it as `<name>.crt`.
fn issued(server: &Server, name: &str, dir: &Path) {
    let mut cert = String::new();
    eventually(
        &format!("certificate for {name}"),
        Duration::from_secs(60),
        || {
            let csr = server.json(&["get", "csr", name, "-o", "json"]);
            cert = csr["status"]["certificate"]
                .as_str()
                .unwrap_or("")
                .to_string();
            !cert.is_empty()
        },
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg("printf '%s' \"$C\" | base64 -d")
        .env("C", &cert)
        .output()
        .unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), out.stdout).unwrap();
}

/// GET with a client certificate; returns the HTTP code.
fn get_with_cert(server: &Server, path: &str, dir: &Path, name: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(server.data_dir().join("pki/ca.crt"))
        .arg("--cert")
        .arg(dir.join(format!("{name}.crt")))
        .arg("--key")
        .arg(dir.join(format!("{name}.key")))
        .arg(server.url(path))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[test]
fn node_csr_from_bootstrap_token_is_approved_and_signed() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP: no openssl binary to make keys and requests with");
        return;
    }
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-abcdef\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: abcdef\n  token-secret: 0123456789abcdef\n  usage-bootstrap-authentication: \"true\"\n  usage-bootstrap-signing: \"true\"\n";
    let out = server.kubectl_stdin(&["apply", "-f", "-"], secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A node files its request with nothing but the bootstrap token.
    let pem = request(dir, "node", "/O=system:nodes/CN=system:node:worker-1");
    let r = server.curl(
        "POST",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        Some("application/json"),
        Some(&csr_body(
            "node-csr-worker-1",
            &pem,
            "kubernetes.io/kube-apiserver-client-kubelet",
            dir,
        )),
        Credentials::Token("abcdef.0123456789abcdef"),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(
        r.json()["spec"]["username"],
        "system:bootstrap:abcdef",
        "the requester is who sent it"
    );
    issued(&server, "node-csr-worker-1", dir);
    let subject = openssl(
        &["x509", "-in", "node-csr-worker-1.crt", "-noout", "-subject"],
        dir,
    );
    assert!(
        subject.contains("CN = system:node:worker-1") && subject.contains("O = system:nodes"),
        "{subject}"
    );
    openssl(
        &[
            "verify",
            "-CAfile",
            server.data_dir().join("pki/ca.crt").to_str().unwrap(),
            "node-csr-worker-1.crt",
        ],
        dir,
    );
    std::fs::rename(dir.join("node.key"), dir.join("node-csr-worker-1.key")).unwrap();
    assert_eq!(
        get_with_cert(&server, "/api/v1/nodes", dir, "node-csr-worker-1"),
        200,
        "the issued certificate authenticates"
    );

    // A request that is not a node's from a bootstrap token stays pending until approved.
    let pem = request(dir, "alice", "/CN=alice/O=devs");
    let r = server.curl(
        "POST",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        Some("application/json"),
        Some(&csr_body(
            "alice",
            &pem,
            "kubernetes.io/kube-apiserver-client",
            dir,
        )),
        Credentials::Admin,
    );
    assert_eq!(r.code, 201, "{}", r.body);
    let table = server.ok(&["get", "csr"]);
    let header = table.lines().next().unwrap_or("");
    for column in [
        "NAME",
        "AGE",
        "SIGNERNAME",
        "REQUESTOR",
        "REQUESTEDDURATION",
        "CONDITION",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let row = |name: &str, table: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_string()
    };
    let worker = row("node-csr-worker-1", &table);
    assert!(
        worker.contains("system:bootstrap:abcdef")
            && worker.contains("Approved,Issued")
            && worker.contains("kubernetes.io/kube-apiserver-client-kubelet")
            && worker.contains("120m"),
        "{table}"
    );
    assert!(row("alice", &table).contains("Pending"), "{table}");
    // kubectl sends the approval as protobuf (a CertificateSigningRequest with the condition).
    let out = server.ok(&["certificate", "approve", "alice"]);
    assert!(out.contains("approved"), "{out}");
    assert_eq!(
        server.json(&["get", "csr", "alice", "-o", "json"])["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client",
        "approval changes only the conditions"
    );
    issued(&server, "alice", dir);
    assert!(row("alice", &server.ok(&["get", "csr"])).contains("Approved,Issued"));
    let subject = openssl(&["x509", "-in", "alice.crt", "-noout", "-subject"], dir);
    assert!(subject.contains("CN = alice"), "{subject}");
    let pem = request(dir, "mallory", "/CN=mallory/O=devs");
    let r = server.curl(
        "POST",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        Some("application/json"),
        Some(&csr_body(
            "mallory",
            &pem,
            "kubernetes.io/kube-apiserver-client",
            dir,
        )),
        Credentials::Admin,
    );
    assert_eq!(r.code, 201, "{}", r.body);
    server.ok(&["certificate", "deny", "mallory"]);
    let mallory = server.json(&["get", "csr", "mallory", "-o", "json"]);
    assert_eq!(
        mallory["status"]["conditions"][0]["type"], "Denied",
        "{mallory}"
    );
    assert!(
        mallory["status"].get("certificate").is_none(),
        "a denied request is never signed: {mallory}"
    );

    // Garbage is refused at the door, and the spec cannot be swapped afterwards.
    let r = server.curl(
        "POST",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        Some("application/json"),
        Some(&csr_body(
            "garbage",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "kubernetes.io/kube-apiserver-client",
            dir,
        )),
        Credentials::Admin,
    );
    assert_eq!(r.code, 422, "{}", r.body);
    assert!(r.body.contains("spec.request"), "{}", r.body);
    let out = server.kubectl(&[
        "patch",
        "csr",
        "alice",
        "--type=merge",
        "-p",
        r#"{"spec":{"signerName":"example.com/other"}}"#,
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("immutable"),
        "the spec of a CSR is immutable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
