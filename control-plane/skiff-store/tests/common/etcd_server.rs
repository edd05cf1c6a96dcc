//! A real etcd for tests: one member on loopback, random free ports, a temp data dir.
//! Dropping it (also while unwinding from a failed assertion) kills the process and removes
//! the directory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where etcd is expected: `$SKIFF_ETCD`, else `/usr/bin/etcd`.
fn etcd_path() -> PathBuf {
    std::env::var_os("SKIFF_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

pub fn etcd_binary() -> Option<PathBuf> {
    let path = etcd_path();
    path.is_file().then_some(path)
}

/// Says, on the real stderr (not the test harness's captured output), that a test did not run.
pub fn say_skipped(test: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "skipped: etcd not installed (no {}; set $SKIFF_ETCD to use another): {test} did not run",
        etcd_path().display()
    );
}

/// TLS material for an etcd that requires client certificates.
pub struct ServerTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

pub struct EtcdServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<ServerTls>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl EtcdServer {
    /// Starts a fresh etcd, or returns `None` (having said so) when etcd is not installed.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None)
    }

    pub fn start_with(test: &str, tls: Option<ServerTls>) -> Option<Self> {
        let Some(binary) = etcd_binary() else {
            say_skipped(test);
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("skiff-etcd-")
            .tempdir()
            .expect("temp dir for etcd");
        let mut server = EtcdServer {
            binary,
            dir,
            client_port: 0,
            peer_port: 0,
            tls,
            child: None,
        };
        // Another process may take a port between our probe and etcd's bind: retry.
        for attempt in 1..=3 {
            server.client_port = free_port();
            server.peer_port = free_port();
            server.spawn();
            match server.wait_ready() {
                Ok(()) => return Some(server),
                Err(why) if attempt < 3 => {
                    eprintln!("etcd did not start ({why}); retrying on other ports");
                    server.kill();
                    let _ = std::fs::remove_dir_all(server.data_dir());
                }
                Err(why) => panic!("etcd did not start: {why}\n{}", server.log_tail()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let mut command = Command::new(&self.binary);
        command
            .arg("--name=skiff-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=skiff-test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert_file.display()))
                .arg(format!("--key-file={}", tls.key_file.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth");
        }
        self.child = Some(command.spawn().expect("start etcd"));
    }

    /// Waits until etcd serves requests: `/health` over plain HTTP, or an open port with TLS
    /// (the caller's client retries until etcd has a leader).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("etcd exited with {status}"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {}s", READY_TIMEOUT.as_secs()));
            }
            if self.probe() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn probe(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = String::new();
        let _ = conn.read_to_string(&mut reply);
        reply.contains("\"health\":\"true\"")
    }

    /// SIGKILL, as a crash or power loss would look to the client.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data dir and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(why) = self.wait_ready() {
            panic!("etcd did not restart: {why}\n{}", self.log_tail());
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        // The TempDir field removes the directory after this.
    }
}
