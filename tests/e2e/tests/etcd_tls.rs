//! skiff-server on an etcd that speaks only TLS and wants client certificates, with
//! kube-apiserver's flag names (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`); the
//! certificates are made here with openssl. A CA that did not sign etcd's certificate stops
//! the server with an error naming the endpoint. Loopback only, no root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_e2e::{bin_dir, free_port, Server};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<name>-ca.crt/.key`, a CA of its own.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.crt"),
            "-days",
            "1",
            "-subj",
            &format!("/CN={name} etcd test CA"),
        ],
    );
}

/// `<name>.crt/.key` signed by `<ca>-ca`, with the given extensions.
fn make_cert(dir: &Path, ca: &str, name: &str, subject: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.crt"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

struct TlsEtcd {
    url: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_etcd(dir: &Path) -> TlsEtcd {
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = dir.join("etcd.log");
    let child = Command::new("etcd")
        .current_dir(dir)
        .args(["--name", "tls", "--data-dir", "data"])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .args(["--cert-file", "etcd.crt", "--key-file", "etcd.key"])
        .args(["--trusted-ca-file", "cluster-ca.crt", "--client-cert-auth"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("etcd");
    let etcd = TlsEtcd { url, child, log };
    // Healthy through TLS with the client certificate, as the server will connect.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = Command::new("etcdctl")
            .current_dir(dir)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.url, "--command-timeout=2s"])
            .args(["--cacert", "cluster-ca.crt", "--cert", "apiserver.crt"])
            .args(["--key", "apiserver.key", "endpoint", "health"])
            .output();
        if health.is_ok_and(|o| o.status.success()) {
            return etcd;
        }
        assert!(
            Instant::now() < deadline,
            "etcd with TLS did not become healthy:\n{}",
            std::fs::read_to_string(&etcd.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_server_runs_on_an_etcd_with_tls_and_client_certificates() {
    for tool in ["etcd", "etcdctl", "openssl"] {
        if Command::new(tool).arg("--version").output().is_err()
            && Command::new(tool).arg("version").output().is_err()
        {
            println!(
                "SKIPPED etcd_tls: {tool} not found (Debian: etcd-server, etcd-client, openssl)"
            );
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_ca(dir, "cluster");
    make_ca(dir, "other");
    make_cert(
        dir,
        "cluster",
        "etcd",
        "/CN=etcd",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    make_cert(
        dir,
        "cluster",
        "apiserver",
        "/CN=skiff-apiserver",
        "extendedKeyUsage=clientAuth\n",
    );
    let etcd = start_etcd(dir);
    let file = |name: &str| dir.join(name).display().to_string();

    let server = Server::start_with(&[
        "--datastore-endpoint",
        &etcd.url,
        "--etcd-cafile",
        &file("cluster-ca.crt"),
        "--etcd-certfile",
        &file("apiserver.crt"),
        "--etcd-keyfile",
        &file("apiserver.key"),
    ]);
    server.ok(&["create", "configmap", "over-tls", "--from-literal=k=v"]);
    let cm = server.json(&["get", "configmap", "over-tls", "-o", "json"]);
    assert_eq!(cm["data"]["k"], "v");
    // It is really in that etcd.
    let keys = Command::new("etcdctl")
        .current_dir(dir)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.url, "--cacert", "cluster-ca.crt"])
        .args(["--cert", "apiserver.crt", "--key", "apiserver.key"])
        .args(["get", "", "--prefix", "--keys-only"])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&keys.stdout);
    assert!(
        keys.lines()
            .any(|k| k.contains("configmaps") && k.ends_with("/over-tls")),
        "{keys}"
    );
    drop(server);

    // Trusting a CA that did not sign etcd's certificate: the server stops, naming the
    // endpoint and the certificate problem.
    let data = dir.join("wrong-ca-server");
    let out = Command::new(bin_dir().join("skiff-server"))
        .args(["--bind-address", "127.0.0.1", "--secure-port"])
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(&data)
        .args(["--datastore-endpoint", &etcd.url])
        .args(["--etcd-cafile", &file("other-ca.crt")])
        .args(["--etcd-certfile", &file("apiserver.crt")])
        .args(["--etcd-keyfile", &file("apiserver.key")])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&etcd.url) && err.contains("certificate"),
        "{err}"
    );
    // Only some of the three files: refused before anything starts.
    let out = Command::new(bin_dir().join("skiff-server"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--datastore-endpoint", &etcd.url])
        .args(["--etcd-cafile", &file("cluster-ca.crt")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--etcd-certfile") || err.contains("--datastore-certfile"),
        "{err}"
    );
}
