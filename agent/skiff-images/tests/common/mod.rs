//! Test fixtures: a real `docker-registry` on loopback, OCI images built from Debian's
//! busybox-static, a counting/tampering/auth proxy and a registry that hangs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};

pub const BUSYBOX: &str = "/usr/bin/busybox";

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// The tools the integration tests need; prints "skipped: …" and returns false when one is
/// missing.
pub fn have_tools(tools: &[&str]) -> bool {
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            println!(
                "skipped: {t} is not installed (Debian package docker-registry / skopeo / umoci)"
            );
            return false;
        }
    }
    if !Path::new(BUSYBOX).is_file() {
        println!("skipped: {BUSYBOX} missing (Debian package busybox-static)");
        return false;
    }
    true
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` process on a random loopback port, killed on drop.
pub struct Registry {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with(None)
    }

    /// A registry serving HTTPS with this certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Registry {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let tls_cfg = match tls {
            Some((cert, key)) => {
                let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
                std::fs::write(&c, cert).unwrap();
                std::fs::write(&k, key).unwrap();
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    c.display(),
                    k.display()
                )
            }
            None => String::new(),
        };
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_cfg}",
                dir.path().join("data").display()
            );
            let cfg = dir.path().join("config.yml");
            std::fs::write(&cfg, config).unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                // A TLS registry answers a plain HTTP request with 400: it is up.
                let up = match http_get_status(port, "/v2/") {
                    Some(200) => true,
                    Some(_) => tls.is_some(),
                    None => false,
                };
                if up {
                    return Registry {
                        port,
                        child,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start: {log}");
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One layer: the tar and its gzip.
pub struct Layer {
    pub tar: Vec<u8>,
    /// The compressed blob (gzip unless made with `Layer::zstd`).
    pub gz: Vec<u8>,
    pub media_type: &'static str,
}

impl Layer {
    pub fn new(tar: Vec<u8>) -> Layer {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        Layer {
            gz: e.finish().unwrap(),
            tar,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }
    pub fn zstd(tar: Vec<u8>) -> Layer {
        Layer {
            gz: zstd::encode_all(&tar[..], 3).unwrap(),
            tar,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
    pub fn digest(&self) -> String {
        sha256(&self.gz)
    }
    pub fn diff_id(&self) -> String {
        sha256(&self.tar)
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

/// bin/busybox plus a symlink per applet, and a few directories.
pub fn busybox_layer() -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin/", "etc/", "tmp/", "var/", "var/www/"] {
        b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), d, &[][..])
            .unwrap();
    }
    let bin = std::fs::read(BUSYBOX).unwrap();
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, bin.len() as u64),
        "bin/busybox",
        &bin[..],
    )
    .unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "busybox" || applet.is_empty() {
            continue;
        }
        b.append_link(
            &mut header(tar::EntryType::Symlink, 0o777, 0),
            format!("bin/{applet}"),
            "busybox",
        )
        .unwrap();
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, passwd.len() as u64),
        "etc/passwd",
        &passwd[..],
    )
    .unwrap();
    Layer::new(b.into_inner().unwrap())
}

/// A layer of files: (path, bytes).
pub fn files_layer(files: &[(&str, Vec<u8>)]) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, data.len() as u64),
            p,
            &data[..],
        )
        .unwrap();
    }
    Layer::new(b.into_inner().unwrap())
}

/// `n` bytes of pseudo-random, compressible text (xorshift over a 16-letter alphabet).
pub fn compressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for i in 0..8 {
            if out.len() < n {
                out.push(b"abcdefghijklmnop"[((x >> (i * 4)) & 15) as usize]);
            }
        }
    }
    out
}

fn write_blob(dir: &Path, bytes: &[u8]) -> (String, u64) {
    let d = sha256(bytes);
    let p = dir
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"));
    std::fs::write(p, bytes).unwrap();
    (d, bytes.len() as u64)
}

fn manifest_for(dir: &Path, layers: &[&Layer], arch: &str) -> (String, u64) {
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "IMAGE=skiff-test"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            "ExposedPorts": {"80/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id()).collect::<Vec<_>>()}
    });
    let (cd, cs) = write_blob(dir, &serde_json::to_vec(&config).unwrap());
    let mut ls = Vec::new();
    for l in layers {
        let (d, s) = write_blob(dir, &l.gz);
        ls.push(serde_json::json!({"mediaType": l.media_type, "digest": d, "size": s}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": ls
    });
    write_blob(dir, &serde_json::to_vec(&manifest).unwrap())
}

/// Writes an OCI image layout in `dir` with one image tagged `tag`. With `multi_arch`, the
/// tag names an image index holding a linux/arm64 manifest (a different config, same layers)
/// before the linux/amd64 one. Returns the digest of the amd64 manifest.
pub fn write_oci_layout(dir: &Path, tag: &str, layers: &[&Layer], multi_arch: bool) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let (md, ms) = manifest_for(dir, layers, "amd64");
    let top = if multi_arch {
        let (ad, as_) = manifest_for(dir, layers, "arm64");
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": ad, "size": as_,
                 "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                 "platform": {"architecture": "amd64", "os": "linux"}}
            ]
        });
        let (id, is) = write_blob(dir, &serde_json::to_vec(&idx).unwrap());
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": is,
                           "annotations": {"org.opencontainers.image.ref.name": tag}})
    } else {
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                           "annotations": {"org.opencontainers.image.ref.name": tag}})
    };
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    md
}

/// `skopeo copy` from an OCI layout to the registry.
pub fn push(layout: &Path, tag: &str, dest: &str) {
    push_with(layout, tag, dest, &["--all"])
}

/// `skopeo copy` with extra arguments (e.g. `--format v2s2` for Docker media types).
pub fn push_with(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds and pushes an image; returns its amd64 manifest digest.
pub fn build_and_push(
    reg: &Registry,
    name_tag: &str,
    layers: &[&Layer],
    multi_arch: bool,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let tag = name_tag.rsplit(':').next().unwrap();
    let d = write_oci_layout(dir.path(), tag, layers, multi_arch);
    push(dir.path(), tag, &format!("{}/{name_tag}", reg.host()));
    d
}

/// What the proxy does besides forwarding.
#[derive(Clone, Default)]
pub struct ProxyMode {
    /// Flip a byte in the body of responses whose path ends with this (`/blobs/<digest>`,
    /// `/manifests/<tag>`).
    pub tamper: Option<String>,
    /// Send half of the body of responses whose path ends with this, then stall forever.
    pub stall: Option<String>,
    /// Wait this long before forwarding requests whose path ends with the string.
    pub delay: Option<(String, Duration)>,
    /// Require a bearer token obtained from /token with these basic credentials.
    pub bearer: Option<(String, String)>,
    /// Require these basic credentials.
    pub basic: Option<(String, String)>,
}

/// A loopback HTTP proxy in front of the registry that counts requests by path.
pub struct Proxy {
    pub port: u16,
    pub counts: Arc<Mutex<HashMap<String, usize>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    pub fn start(upstream: u16, mode: ProxyMode) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let c2 = counts.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let counts = c2.clone();
                let mode = mode.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, upstream, port, counts.clone(), mode.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Proxy {
            port,
            counts,
            rt: Some(rt),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Requests whose path ends with `suffix`.
    pub fn count(&self, suffix: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn reset(&self) {
        self.counts.lock().unwrap().clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

fn basic(u: &str, p: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    )
}

async fn handle(
    req: hyper::Request<Incoming>,
    upstream: u16,
    self_port: u16,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    mode: ProxyMode,
) -> Result<hyper::Response<Body>, hyper::Error> {
    let path = req.uri().path().to_string();
    *counts.lock().unwrap().entry(path.clone()).or_default() += 1;
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    const TOKEN: &str = "skiff-test-token";
    if let Some((u, p)) = &mode.bearer {
        if path == "/token" {
            let q = req.uri().query().unwrap_or("");
            if auth != basic(u, p)
                || !q.contains("scope=repository%3A")
                || !q.contains("service=test-registry")
            {
                return Ok(hyper::Response::builder()
                    .status(401)
                    .body(full("bad credentials"))
                    .unwrap());
            }
            return Ok(hyper::Response::new(full(format!(
                "{{\"token\":\"{TOKEN}\"}}"
            ))));
        }
        if auth != format!("Bearer {TOKEN}") {
            let ch = format!("Bearer realm=\"http://127.0.0.1:{self_port}/token\",service=\"test-registry\",scope=\"repository:busybox:pull\"");
            return Ok(hyper::Response::builder()
                .status(401)
                .header("www-authenticate", ch)
                .body(full("{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}"))
                .unwrap());
        }
    }
    if let Some((u, p)) = &mode.basic {
        if auth != basic(u, p) {
            return Ok(hyper::Response::builder()
                .status(401)
                .header("www-authenticate", "Basic realm=\"test\"")
                .body(full("unauthorized"))
                .unwrap());
        }
    }
    if let Some((suffix, d)) = &mode.delay {
        if path.ends_with(suffix.as_str()) {
            tokio::time::sleep(*d).await;
        }
    }
    // Forward.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut fwd = hyper::Request::builder().method(req.method()).uri(
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    for (k, v) in req.headers() {
        if k != "authorization" {
            fwd = fwd.header(k, v);
        }
    }
    let resp = send
        .send_request(fwd.body(Empty::<Bytes>::new()).unwrap())
        .await?;
    let (parts, body) = resp.into_parts();
    let is = |suffix: &Option<String>| suffix.as_ref().is_some_and(|s| path.ends_with(s.as_str()));
    if is(&mode.tamper) && parts.status.is_success() {
        let mut b = body.collect().await?.to_bytes().to_vec();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        return Ok(hyper::Response::from_parts(parts, full(b)));
    }
    if is(&mode.stall) && parts.status.is_success() {
        let b = body.collect().await?.to_bytes();
        let half = b.slice(..b.len() / 2);
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, hyper::Error>>(1);
        tokio::spawn(async move {
            let _ = tx.send(Ok(hyper::body::Frame::data(half))).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        return Ok(hyper::Response::from_parts(parts, BodyExt::boxed(stream)));
    }
    Ok(hyper::Response::from_parts(parts, body.boxed()))
}

/// A `Stream` over an mpsc receiver (avoids a dependency on tokio-stream).
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// A listener that accepts connections and never answers; returns its port.
pub fn hanging_registry() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// Paths of the files under `dir`, relative.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap().to_path_buf());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(base, &p, out);
                }
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}
