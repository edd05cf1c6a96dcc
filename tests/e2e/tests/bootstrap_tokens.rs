//! Bootstrap tokens over real HTTP: authentication from the token Secrets, refusals with a
//! reason, and the anonymous, JWS-signed `kube-public/cluster-info`.

use std::process::Command;
use std::time::Duration;

use skiff_e2e::agent::eventually;
use skiff_e2e::{Credentials, Server};

const CLUSTER_INFO: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

fn token_secret(id: &str, secret: &str, expiration: &str, usages: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-{id}\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: {id}\n  token-secret: {secret}\n  expiration: \"{expiration}\"\n  auth-extra-groups: system:bootstrappers:kubeadm:default-node-token\n"
    );
    for usage in usages {
        s.push_str(&format!("  usage-bootstrap-{usage}: \"true\"\n"));
    }
    s
}

/// HS256 over `b64url(header).b64url(payload)` with openssl, independently of the server.
fn openssl_detached_jws(header_b64: &str, payload: &str, key: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            r#"p=$(printf '%s' "$PAYLOAD" | base64 -w0 | tr '+/' '-_' | tr -d '=')
sig=$(printf '%s.%s' "$HEADER" "$p" | openssl dgst -sha256 -mac HMAC -macopt "key:$KEY" -binary | base64 -w0 | tr '+/' '-_' | tr -d '=')
printf '%s..%s' "$HEADER" "$sig""#,
        )
        .env("PAYLOAD", payload)
        .env("HEADER", header_b64)
        .env("KEY", key)
        .output()
        .expect("run sh/openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn apply(server: &Server, yaml: &str) {
    let out = server.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bootstrap_tokens_authenticate_and_sign_cluster_info() {
    let server = Server::start();
    let future = "2099-01-01T00:00:00Z";
    let past = "2001-01-01T00:00:00Z";
    apply(
        &server,
        &token_secret(
            "abcdef",
            "0123456789abcdef",
            future,
            &["authentication", "signing"],
        ),
    );
    apply(
        &server,
        &token_secret(
            "oldtok",
            "0123456789abcdef",
            past,
            &["authentication", "signing"],
        ),
    );
    apply(
        &server,
        &token_secret("signon", "0123456789abcdef", future, &["signing"]),
    );
    eventually("the token Secrets", Duration::from_secs(30), || {
        server
            .kubectl(&[
                "get",
                "secret",
                "-n",
                "kube-system",
                "bootstrap-token-signon",
            ])
            .status
            .success()
    });

    // A valid token reads and writes like any authenticated user.
    let ok = server.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps",
        None,
        None,
        Credentials::Token("abcdef.0123456789abcdef"),
    );
    assert_eq!(ok.code, 200, "{}", ok.body);

    for (token, want) in [
        ("oldtok.0123456789abcdef", "expired at 2001-01-01T00:00:00Z"),
        ("zzzzzz.0123456789abcdef", "is unknown"),
        ("abcdef.xxxxxxxxxxxxxxxx", "does not match"),
        ("signon.0123456789abcdef", "usage-bootstrap-authentication"),
        ("not-a-token-at-all", "Unauthorized"),
    ] {
        let r = server.curl(
            "GET",
            "/api/v1/namespaces/default/configmaps",
            None,
            None,
            Credentials::Token(token),
        );
        assert_eq!(r.code, 401, "{token}: {}", r.body);
        let message = r.json()["message"].as_str().unwrap_or("").to_string();
        assert!(message.contains(want), "{token}: {message}");
        assert!(
            !message.contains("0123456789abcdef"),
            "the secret leaked: {message}"
        );
    }

    // Anonymous: cluster-info only.
    for path in [
        "/api/v1/namespaces/kube-public/configmaps",
        "/api/v1/namespaces/kube-system/secrets/bootstrap-token-abcdef",
        "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
    ] {
        let r = server.curl("GET", path, None, None, Credentials::Anonymous);
        assert_eq!(r.code, 401, "{path}: {}", r.body);
    }
    let r = server.curl("DELETE", CLUSTER_INFO, None, None, Credentials::Anonymous);
    assert_eq!(r.code, 401, "anonymous delete: {}", r.body);

    let mut info = serde_json::Value::Null;
    eventually(
        "cluster-info signed for abcdef and signon only",
        Duration::from_secs(30),
        || {
            let r = server.curl("GET", CLUSTER_INFO, None, None, Credentials::Anonymous);
            if r.code != 200 {
                return false;
            }
            info = r.json();
            let data = &info["data"];
            data["jws-kubeconfig-abcdef"].is_string() && data["jws-kubeconfig-signon"].is_string()
        },
    );
    let data = info["data"].as_object().unwrap();
    assert!(
        !data.contains_key("jws-kubeconfig-oldtok"),
        "expired tokens are not signed"
    );
    let kubeconfig = data["kubeconfig"].as_str().unwrap();
    let ca = std::fs::read(server.data_dir().join("pki/ca.crt")).unwrap();
    let ca_b64 = {
        let out = Command::new("base64")
            .arg("-w0")
            .arg(server.data_dir().join("pki/ca.crt"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(!ca.is_empty());
    assert!(
        kubeconfig.contains(&format!("certificate-authority-data: {ca_b64}")),
        "{kubeconfig}"
    );
    assert!(kubeconfig.contains("server: https://"), "{kubeconfig}");
    assert!(!kubeconfig.contains("client-key"), "{kubeconfig}");

    let jws = data["jws-kubeconfig-abcdef"].as_str().unwrap();
    let header = jws.split("..").next().unwrap();
    assert_eq!(
        jws,
        openssl_detached_jws(header, kubeconfig, "abcdef.0123456789abcdef")
    );
    assert_ne!(
        jws,
        openssl_detached_jws(header, kubeconfig, "abcdef.0123456789abcdeX")
    );

    // Deleting a token withdraws its signature.
    server.ok(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        "bootstrap-token-signon",
    ]);
    eventually(
        "the signon signature is gone",
        Duration::from_secs(30),
        || {
            let r = server.curl("GET", CLUSTER_INFO, None, None, Credentials::Anonymous);
            r.code == 200 && r.json()["data"].get("jws-kubeconfig-signon").is_none()
        },
    );
}
