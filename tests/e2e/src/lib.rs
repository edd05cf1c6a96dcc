//! Test harness: start real Skiff binaries in temp dirs and drive them with the real kubectl.
//!
//! Binaries are taken from `SKIFF_BIN_DIR`, or the workspace's `target/debug`; the README's
//! test command builds them first.

pub mod agent;
pub mod cluster;
pub mod fake_kubelet;
pub mod registry;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SKIFF_BIN_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("addr")
        .port()
}

/// Which store the servers of this test run use: `SKIFF_E2E_DATASTORE=etcd` runs the same
/// suite against a real etcd (one per server), anything else against the embedded store.
pub fn use_etcd() -> bool {
    std::env::var("SKIFF_E2E_DATASTORE").is_ok_and(|v| v == "etcd")
}

/// A single-member etcd on loopback ports with its own data dir; killed on drop.
pub struct Etcd {
    pub client_url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("etcd dir");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args([
                "--name",
                "e2e",
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("e2e={peer_url}")])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening is not serving: wait until the member has elected itself and answers.
        loop {
            let health = Command::new("etcdctl")
                .args([
                    "--endpoints",
                    &client_url,
                    "--command-timeout=2s",
                    "endpoint",
                    "health",
                ])
                .env("ETCDCTL_API", "3")
                .output();
            if health.is_ok_and(|o| o.status.success()) {
                break;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
        Etcd {
            client_url,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running skiff-server on loopback with its own data dir; killed on drop.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    // Dropped after the server (fields drop in order), so the server never loses its store.
    _etcd: Option<Etcd>,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // A test that brings its own store (e.g. one etcd shared by two servers) keeps it.
        let own_store = extra_args.iter().any(|a| a == "--datastore-endpoint");
        let etcd = (use_etcd() && !own_store).then(Etcd::start);
        if let Some(e) = &etcd {
            extra_args.extend(["--datastore-endpoint".to_string(), e.client_url.clone()]);
        }
        let mut server = Server {
            dir,
            port: free_port(),
            child: None,
            extra_args,
            _etcd: etcd,
        };
        server.spawn();
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn(&mut self) {
        let binary = bin_dir().join("skiff-server");
        assert!(
            binary.exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            binary.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(&binary)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &self.port.to_string(),
            ])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff-server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        // Generous: CI machines are small and busy.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "skiff-server exited with {status}; log:\n{}",
                        std::fs::read_to_string(self.log_path()).unwrap_or_default()
                    );
                }
            }
            if self.kubeconfig().exists()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                let out = self.kubectl(&["get", "--raw", "/readyz"]);
                if out.status.success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "skiff-server did not become ready; log:\n{}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .env("HOME", self.dir.path());
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("run kubectl")
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .kubectl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl and returns stdout, panicking with both streams if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&full)).expect("kubectl printed JSON")
    }

    /// `kubectl get --raw PATH`, parsed: the server's own answer, not kubectl's rewrite of it.
    pub fn raw_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["get", "--raw", path])).expect("the server answered JSON")
    }

    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }
}

/// An HTTP response from `curl`.
pub struct HttpResponse {
    pub code: u16,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Who `curl` presents itself as.
pub enum Credentials<'a> {
    Admin,
    Anonymous,
    Token(&'a str),
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// A raw request with full control of method, headers and body (the bad-input tests
    /// need what kubectl would never send).
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
        who: Credentials<'_>,
    ) -> HttpResponse {
        let pki = self.data_dir().join("pki");
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--path-as-is",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg("--cacert")
        .arg(pki.join("ca.crt"));
        match who {
            Credentials::Admin => {
                cmd.arg("--cert")
                    .arg(pki.join("admin.crt"))
                    .arg("--key")
                    .arg(pki.join("admin.key"));
            }
            Credentials::Token(t) => {
                cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
            }
            Credentials::Anonymous => {}
        }
        if let Some(ct) = content_type {
            cmd.arg("-H").arg(format!("Content-Type: {ct}"));
        }
        let body_file = body.map(|b| {
            let f = self.dir.path().join(format!("body-{}", free_port()));
            std::fs::write(&f, b).expect("write body");
            f
        });
        if let Some(f) = &body_file {
            cmd.arg("--data-binary").arg(format!("@{}", f.display()));
        }
        cmd.arg(self.url(path));
        let out = cmd.output().expect("run curl");
        if let Some(f) = body_file {
            let _ = std::fs::remove_file(f);
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        HttpResponse {
            code: code.trim().parse().unwrap_or(0),
            body: body.to_string(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
