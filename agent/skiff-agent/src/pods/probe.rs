//! Liveness, readiness and startup probes, and the lifecycle hooks that share their
//! handlers: exec in the container; HTTP(S) GET, TCP connect and gRPC health checks from the
//! pod's network namespace. Results are counted against success and failure thresholds as
//! kubelet does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::dial;
use super::runtime::Runtime;

/// Where handlers run: the container (exec) and the pod's network (HTTP, TCP).
#[derive(Clone)]
pub struct Target {
    pub runtime: Runtime,
    pub container_id: String,
    pub netns: PathBuf,
    pub pod_ip: String,
}

/// The handler kinds a probe or hook can have, borrowed from either API type.
pub enum Handler<'a> {
    Exec(&'a ExecAction),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
    Grpc(&'a GRPCAction),
}

pub fn probe_handler(p: &Probe) -> Option<Handler<'_>> {
    if let Some(e) = &p.exec {
        Some(Handler::Exec(e))
    } else if let Some(h) = &p.http_get {
        Some(Handler::Http(h))
    } else if let Some(t) = &p.tcp_socket {
        Some(Handler::Tcp(t))
    } else {
        p.grpc.as_ref().map(Handler::Grpc)
    }
}

/// Like kubelet, HTTPS probes do not verify the certificate: pods' serving certificates are
/// rarely issued for the pod IP.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut config = skiff_daemon::tls::unverified_server_builder()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Sends the request and reads the status line; 2xx and 3xx are success, as kubelet's
/// prober (which does not follow redirects to other hosts either) counts them.
async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
    url: &str,
) -> Result<(), String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        if n == 0 {
            return Err(format!("Get \"{url}\": EOF"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

fn port_number(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| {
                    format!(
                        "unable to find port {name:?} in container {}",
                        container.name
                    )
                })
        }
    }
}

fn address(host: Option<&str>, pod_ip: &str, port: u16) -> Result<SocketAddr, String> {
    let host = host.filter(|h| !h.is_empty()).unwrap_or(pod_ip);
    let ip: IpAddr = if host.is_empty() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| format!("host {host:?} is not an IP address"))?
    };
    Ok(SocketAddr::new(ip, port))
}

/// Runs a handler once; `Err` carries the message kubelet would put in the event.
pub async fn run(
    handler: &Handler<'_>,
    target: &Target,
    container: &Container,
    timeout: Duration,
) -> Result<(), String> {
    match handler {
        Handler::Exec(e) => {
            let command = e.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err("exec handler has no command".into());
            }
            let rt = target.runtime.clone();
            let id = target.container_id.clone();
            let cmd = command.clone();
            let result = tokio::task::spawn_blocking(move || rt.exec(&id, &cmd, timeout))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if result.timed_out {
                return Err(format!("command {command:?} timed out"));
            }
            if result.exit_code != 0 {
                let output = format!("{}{}", result.stdout, result.stderr);
                return Err(if output.trim().is_empty() {
                    format!("command {command:?} exited with {}", result.exit_code)
                } else {
                    output.trim_end().to_string()
                });
            }
            Ok(())
        }
        Handler::Tcp(t) => {
            let port = port_number(&t.port, container)?;
            let addr = address(t.host.as_deref(), &target.pod_ip, port)?;
            match tokio::time::timeout(timeout, dial::connect(&target.netns, addr, timeout)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Handler::Grpc(g) => {
            let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
            let addr = address(None, &target.pod_ip, port)?;
            let service = g.service.clone().unwrap_or_default();
            let check = async {
                let stream = dial::connect(&target.netns, addr, timeout)
                    .await
                    .map_err(|e| {
                        format!(
                            "timeout: failed to connect service {addr:?} within {timeout:?}: {e}"
                        )
                    })?;
                grpc_health_check(stream, &addr, &service).await
            };
            tokio::time::timeout(timeout, check)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "timeout: health rpc did not complete within {timeout:?}"
                    ))
                })
        }
        Handler::Http(h) => {
            let https = h
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
            let port = port_number(&h.port, container)?;
            let addr = address(h.host.as_deref(), &target.pod_ip, port)?;
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let url = format!("{}://{addr}{path}", if https { "https" } else { "http" });
            let request = http_get_request(&path, &addr, h);
            let exchange = async {
                let stream = dial::connect(&target.netns, addr, timeout)
                    .await
                    .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: connect: {e}"))?;
                if !https {
                    return http_exchange(stream, &request, &url).await;
                }
                let tls = tls_connector()
                    .map_err(|e| format!("Get \"{url}\": TLS configuration: {e}"))?
                    .connect(ServerName::IpAddress(addr.ip().into()), stream)
                    .await
                    .map_err(|e| format!("Get \"{url}\": TLS handshake: {e}"))?;
                http_exchange(tls, &request, &url).await
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(format!("Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)")))
        }
    }
}

/// `grpc.health.v1.Health/Check` over HTTP/2 without TLS, as kubelet's gRPC prober:
/// SERVING is success, any other answer or a non-zero grpc-status a failure.
async fn grpc_health_check(
    stream: tokio::net::TcpStream,
    addr: &SocketAddr,
    service: &str,
) -> Result<(), String> {
    use http_body_util::BodyExt;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("failed to connect service {addr}: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "kube-probe/1.33")
        .body(http_body_util::Full::new(bytes::Bytes::from(grpc_frame(
            &health_check_request(service),
        ))))
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("health rpc failed: {e}"))?;
        let (parts, body) = response.into_parts();
        if parts.status != 200 {
            return Err(format!("health rpc failed: HTTP status {}", parts.status));
        }
        let collected = body
            .collect()
            .await
            .map_err(|e| format!("health rpc failed: {e}"))?;
        // A trailers-only answer carries grpc-status in the headers.
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = trailers
            .get("grpc-status")
            .or(parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if status != "0" {
            let message = trailers
                .get("grpc-message")
                .or(parts.headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Err(format!(
                "health rpc failed: rpc error: code = {} desc = {message}",
                grpc_code_name(status)
            ));
        }
        match health_check_status(&collected.to_bytes())? {
            1 => Ok(()),
            other => Err(format!(
                "service unhealthy (responded with {:?})",
                serving_status_name(other)
            )),
        }
    }
    .await;
    driver.abort();
    result
}

/// gRPC's length-prefixed message: no compression flag, big-endian length.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// `HealthCheckRequest { string service = 1; }`, encoded by hand: one length-delimited
/// field does not warrant a protobuf dependency.
fn health_check_request(service: &str) -> Vec<u8> {
    if service.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0x0a];
    let mut len = service.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(service.as_bytes());
    out
}

/// `HealthCheckResponse.status` (field 1, varint) from one gRPC-framed message; 0
/// (UNKNOWN) when absent, as protobuf defaults it.
fn health_check_status(body: &[u8]) -> Result<u64, String> {
    let bad = || "health rpc failed: malformed HealthCheckResponse".to_string();
    if body.len() < 5 || body[0] != 0 {
        return Err(bad());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let msg = body.get(5..5 + len).ok_or_else(bad)?;
    let mut i = 0;
    let mut status = 0;
    let varint = |i: &mut usize| -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *msg.get(*i).ok_or_else(bad)?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad())
    };
    while i < msg.len() {
        let key = varint(&mut i)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut i)?,
            (_, 0) => {
                varint(&mut i)?;
            }
            (_, 2) => {
                let n = varint(&mut i)? as usize;
                i += n;
            }
            (_, 1) => i += 8,
            (_, 5) => i += 4,
            _ => return Err(bad()),
        }
    }
    Ok(status)
}

fn serving_status_name(s: u64) -> String {
    match s {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        other => other.to_string(),
    }
}

fn grpc_code_name(code: &str) -> String {
    let names = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    code.parse::<usize>()
        .ok()
        .and_then(|c| names.get(c))
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("Code({code})"))
}

fn http_get_request(path: &str, addr: &SocketAddr, h: &HTTPGetAction) -> String {
    let mut headers = vec![
        ("Host".to_string(), addr.to_string()),
        ("User-Agent".to_string(), "kube-probe/1.33".to_string()),
        ("Accept".to_string(), "*/*".to_string()),
    ];
    for extra in h.http_headers.iter().flatten() {
        match headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(&extra.name))
        {
            Some(existing) => existing.1 = extra.value.clone(),
            None => headers.push((extra.name.clone(), extra.value.clone())),
        }
    }
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req
}

/// The running tally of one probe of one container run.
#[derive(Clone, Debug)]
pub struct Prober {
    pub probe: Probe,
    next_due: Instant,
    successes: i32,
    failures: i32,
    /// The last verdict after thresholds: `None` until one is reached.
    pub verdict: Option<bool>,
}

pub enum Step {
    /// Nothing changed.
    Same,
    /// The probe crossed a threshold: now passing (true) or failing (false), with the
    /// failure message.
    Changed(bool, String),
    /// A failed attempt that did not (yet) cross the threshold, or one that repeats a failure.
    Failed(String),
}

impl Prober {
    pub fn new(probe: Probe, container_started: Instant) -> Self {
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        Prober {
            probe,
            next_due: container_started + Duration::from_secs(delay),
            successes: 0,
            failures: 0,
            verdict: None,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_due
    }

    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.probe.timeout_seconds.unwrap_or(1).max(1) as u64)
    }

    /// Counts one attempt's outcome and schedules the next one.
    pub fn record(&mut self, now: Instant, outcome: Result<(), String>) -> Step {
        let period = self.probe.period_seconds.unwrap_or(10).max(1) as u64;
        self.next_due = now + Duration::from_secs(period);
        let success_threshold = self.probe.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = self.probe.failure_threshold.unwrap_or(3).max(1);
        match outcome {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= success_threshold && self.verdict != Some(true) {
                    self.verdict = Some(true);
                    return Step::Changed(true, String::new());
                }
                Step::Same
            }
            Err(message) => {
                self.successes = 0;
                self.failures += 1;
                if self.failures >= failure_threshold && self.verdict != Some(false) {
                    self.verdict = Some(false);
                    return Step::Changed(false, message);
                }
                Step::Failed(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_messages() {
        assert_eq!(health_check_request(""), Vec::<u8>::new());
        assert_eq!(health_check_request("db"), b"\x0a\x02db".to_vec());
        let long = "s".repeat(200);
        assert_eq!(&health_check_request(&long)[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(grpc_frame(b"ab"), b"\0\0\0\0\x02ab".to_vec());
        // HealthCheckResponse{status: SERVING}, and NOT_SERVING after an unknown field.
        assert_eq!(health_check_status(&grpc_frame(&[0x08, 0x01])), Ok(1));
        assert_eq!(
            health_check_status(&grpc_frame(&[0x12, 0x01, b'x', 0x08, 0x02])),
            Ok(2)
        );
        assert_eq!(
            health_check_status(&grpc_frame(&[])),
            Ok(0),
            "UNKNOWN by default"
        );
        assert!(
            health_check_status(b"\0\0\0\0\x05\x08").is_err(),
            "truncated"
        );
        assert!(health_check_status(b"\x01\0\0\0\0").is_err(), "compressed");
        assert_eq!(grpc_code_name("12"), "Unimplemented");
        assert_eq!(grpc_code_name("99"), "Code(99)");
    }

    fn probe(success: i32, failure: i32) -> Probe {
        Probe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            period_seconds: Some(5),
            initial_delay_seconds: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_decide_the_verdict() {
        let t0 = Instant::now();
        let mut p = Prober::new(probe(2, 3), t0);
        assert!(!p.due(t0));
        assert!(p.due(t0 + Duration::from_secs(3)));
        assert!(matches!(p.record(t0, Ok(())), Step::Same));
        assert!(matches!(p.record(t0, Ok(())), Step::Changed(true, _)));
        assert!(matches!(p.record(t0, Ok(())), Step::Same));
        assert!(matches!(p.record(t0, Err("a".into())), Step::Failed(_)));
        assert!(matches!(p.record(t0, Err("b".into())), Step::Failed(_)));
        match p.record(t0, Err("c".into())) {
            Step::Changed(false, m) => assert_eq!(m, "c"),
            _ => panic!("third failure must cross the threshold"),
        }
        assert!(matches!(p.record(t0, Err("d".into())), Step::Failed(_)));
        assert_eq!(p.next_due(), t0 + Duration::from_secs(5));
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "web", "ports": [{"name": "http", "containerPort": 8080}]
        }))
        .unwrap();
        assert_eq!(
            port_number(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(port_number(&IntOrString::Int(80), &c), Ok(80));
        assert!(port_number(&IntOrString::String("nope".into()), &c)
            .unwrap_err()
            .contains("nope"));
        assert_eq!(
            address(None, "", 80).unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            address(Some(""), "10.244.0.3", 80).unwrap(),
            "10.244.0.3:80".parse().unwrap()
        );
    }

    #[test]
    fn http_request_carries_probe_headers() {
        let h = HTTPGetAction {
            http_headers: Some(vec![k8s_openapi::api::core::v1::HTTPHeader {
                name: "user-agent".into(),
                value: "mine".into(),
            }]),
            ..Default::default()
        };
        let r = http_get_request("/healthz", &"10.0.0.1:80".parse().unwrap(), &h);
        assert!(r.starts_with("GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:80\r\n"));
        assert!(r.contains("User-Agent: mine\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }
}
