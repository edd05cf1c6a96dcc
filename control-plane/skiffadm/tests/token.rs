//! `skiffadm token` against a running skiff-server.

use std::process::Command;

fn skiffadm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_skiffadm"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn tokens_are_created_listed_and_deleted_as_kubeadm_stores_them() {
    let s = skiff_e2e::Server::start_with(&["--disable", "all"]);
    let kc = s.kubeconfig();
    let kc = kc.to_str().unwrap();
    let out = skiffadm(&[
        "token",
        "create",
        "--kubeconfig",
        kc,
        "--ttl",
        "2h",
        "--description",
        "worker-1",
        "--print-join-command",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let join = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let words: Vec<&str> = join.split_whitespace().collect();
    assert_eq!(words[..2], ["skiffadm", "join"]);
    assert_eq!(words[2], format!("127.0.0.1:{}", s.port));
    assert_eq!(words[5], "--discovery-token-ca-cert-hash");
    // The hash pins the cluster CA exactly as openssl computes it.
    let ca = s.data_dir().join("pki/ca.crt");
    let openssl = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
            ca.display()
        ))
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&openssl.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(words[6], format!("sha256:{expected}"));
    let token = words[4];
    let id = &token[..6];
    let secret = s.json(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
    ]);
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    let list = String::from_utf8_lossy(&skiffadm(&["token", "list", "--kubeconfig", kc]).stdout)
        .into_owned();
    assert!(list.contains(token) && list.contains("worker-1"), "{list}");
    let bad = skiffadm(&["token", "create", "--kubeconfig", kc, "NOT-A-TOKEN"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("malformed"));
    assert!(skiffadm(&["token", "delete", "--kubeconfig", kc, token])
        .status
        .success());
    assert!(
        !String::from_utf8_lossy(&skiffadm(&["token", "list", "--kubeconfig", kc]).stdout)
            .contains(token)
    );
}
