//! HTTPS and gRPC probes against servers listening inside a network namespace this test
//! creates (a `sleep` under `unshare --net`, killed on drop): the prober dials from inside
//! that namespace exactly as it does for a pod. The HTTPS server has a self-signed
//! certificate (probes do not verify it, as kubelet's do not); the gRPC server speaks
//! grpc.health.v1 over h2c through hyper. Root only (setns).

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use k8s_openapi::api::core::v1::{Container, GRPCAction, HTTPGetAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use skiff_agent::pods::probe::{self, Handler, Target};
use skiff_agent::pods::runtime::Runtime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A network namespace held by a sleeping process; gone when the process is.
struct Netns(Child);

impl Netns {
    fn new() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let ns = Netns(child);
        // unshare has exec'd sleep once the namespace differs from ours.
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        for _ in 0..200 {
            if std::fs::read_link(ns.path()).is_ok_and(|l| l != ours) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let up = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .args(["ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(up.success(), "lo up in the test namespace");
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }

    /// A listener on 127.0.0.1 inside the namespace (bound by a thread that entered it).
    fn listen(&self) -> tokio::net::TcpListener {
        let path = self.path();
        let l = std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .join()
        .unwrap();
        tokio::net::TcpListener::from_std(l).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HTTPS: 200 for /ok, 503 for anything else.
fn serve_https(listener: tokio::net::TcpListener) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["pod.example".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(cert.der().to_vec())],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let status = if req.starts_with(b"GET /ok ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = tls
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

type GrpcBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// grpc.health.v1.Health/Check: "" is SERVING, "down" NOT_SERVING, anything else NOT_FOUND
/// (trailers-only, as grpc-go answers an unknown service).
async fn health(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<GrpcBody>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // HealthCheckRequest: 5-byte frame header, then field 1 (tag 0x0a, short length).
    let service = body
        .get(7..)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default();
    let ok_headers = hyper::Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    let frames = |status: u8| {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        vec![
            Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
            Ok(Frame::trailers(trailers)),
        ]
    };
    let resp = match (path.as_str(), service.as_str()) {
        ("/grpc.health.v1.Health/Check", "") => {
            ok_headers.body(StreamBody::new(futures::stream::iter(frames(1))))
        }
        ("/grpc.health.v1.Health/Check", "down") => {
            ok_headers.body(StreamBody::new(futures::stream::iter(frames(2))))
        }
        _ => ok_headers
            .header("grpc-status", "5")
            .header("grpc-message", "unknown service")
            .body(StreamBody::new(futures::stream::iter(Vec::new()))),
    };
    Ok(resp.unwrap())
}

fn serve_grpc(listener: tokio::net::TcpListener) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tcp),
                            hyper::service::service_fn(health),
                        )
                        .await;
            });
        }
    });
    addr
}

fn target(ns: &Netns) -> Target {
    Target {
        runtime: Runtime {
            shim: PathBuf::from("/nonexistent"),
            root: PathBuf::from("/nonexistent"),
            cgroup_root: None,
        },
        container_id: "probe-test".into(),
        netns: ns.path(),
        pod_ip: "127.0.0.1".into(),
    }
}

fn http(scheme: &str, port: u16, path: &str) -> HTTPGetAction {
    HTTPGetAction {
        scheme: Some(scheme.into()),
        port: IntOrString::Int(port.into()),
        path: Some(path.into()),
        ..Default::default()
    }
}

fn grpc(port: u16, service: &str) -> GRPCAction {
    GRPCAction {
        port: port.into(),
        service: (!service.is_empty()).then(|| service.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpc_probes_inside_a_namespace() {
    if !is_root() {
        println!("skipped: needs root (setns into a test network namespace)");
        return;
    }
    let ns = Netns::new();
    let t = target(&ns);
    let c = Container::default();
    let timeout = Duration::from_secs(5);
    let https = serve_https(ns.listen()).port();
    let grpc_port = serve_grpc(ns.listen()).port();

    let ok = http("HTTPS", https, "/ok");
    assert_eq!(
        probe::run(&Handler::Http(&ok), &t, &c, timeout).await,
        Ok(())
    );
    let bad = http("HTTPS", https, "/bad");
    let err = probe::run(&Handler::Http(&bad), &t, &c, timeout)
        .await
        .unwrap_err();
    assert_eq!(err, "HTTP probe failed with statuscode: 503");
    // Plain HTTP against the TLS port is no success.
    let plain = http("HTTP", https, "/ok");
    assert!(probe::run(&Handler::Http(&plain), &t, &c, timeout)
        .await
        .is_err());

    let serving = grpc(grpc_port, "");
    assert_eq!(
        probe::run(&Handler::Grpc(&serving), &t, &c, timeout).await,
        Ok(())
    );
    let down = grpc(grpc_port, "down");
    let err = probe::run(&Handler::Grpc(&down), &t, &c, timeout)
        .await
        .unwrap_err();
    assert_eq!(err, "service unhealthy (responded with \"NOT_SERVING\")");
    let unknown = grpc(grpc_port, "nope");
    let err = probe::run(&Handler::Grpc(&unknown), &t, &c, timeout)
        .await
        .unwrap_err();
    assert!(
        err.contains("code = NotFound desc = unknown service"),
        "{err}"
    );
    // Nothing listens there: a connection failure.
    let closed = grpc(1, "");
    let err = probe::run(&Handler::Grpc(&closed), &t, &c, timeout)
        .await
        .unwrap_err();
    assert!(err.contains("failed to connect"), "{err}");
}
