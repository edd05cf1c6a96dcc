//! HTTPS for the node API: a serving certificate made at start (kube-apiserver does not
//! verify kubelet serving certificates unless told to, so a self-signed one is what kubelet
//! itself does by default), client certificates verified against the cluster CA, and the
//! routes.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::exec::{self, ExecRequest};
use super::logs::{self, LogOptions};
use super::portforward;
use super::stats;
use super::NodeApiError;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// What the handlers need from the agent.
pub struct NodeApi {
    pub client: kube::Client,
    /// The agent's `--root-dir` (pod sandboxes live under it).
    pub root: PathBuf,
    /// Where skiff-shim keeps container state (`<root>/shim`).
    pub shim_root: PathBuf,
    pub logs_dir: PathBuf,
    pub node_name: String,
    /// The shim's `--cgroup-root`, where pod and container usage is read for the summary.
    pub cgroup_root: Option<PathBuf>,
}

/// The cluster CA that signs the clients allowed in: `--client-ca-file`, else the
/// certificate authority of the agent's kubeconfig (its current context's cluster).
pub fn client_ca(
    kubeconfig: &kube::config::Kubeconfig,
    kubeconfig_path: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Vec<u8>, NodeApiError> {
    use base64::Engine;
    if let Some(p) = client_ca_file {
        return std::fs::read(p).map_err(|e| NodeApiError::io("read", p, e));
    }
    let cluster_name = kubeconfig
        .current_context
        .as_ref()
        .and_then(|cur| kubeconfig.contexts.iter().find(|c| &c.name == cur))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| cluster_name.is_none() || Some(&c.name) == cluster_name.as_ref())
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| {
            NodeApiError::Tls(format!(
                "{}: no cluster for the current context",
                kubeconfig_path.display()
            ))
        })?;
    if let Some(data) = &cluster.certificate_authority_data {
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| {
                NodeApiError::Tls(format!(
                    "{}: certificate-authority-data is not base64: {e}",
                    kubeconfig_path.display()
                ))
            });
    }
    if let Some(file) = &cluster.certificate_authority {
        let p = kubeconfig_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(file);
        return std::fs::read(&p).map_err(|e| NodeApiError::io("read", &p, e));
    }
    Err(NodeApiError::Tls(format!(
        "{}: the cluster has no certificate authority; pass --client-ca-file",
        kubeconfig_path.display()
    )))
}

/// rustls server configuration: a fresh self-signed serving certificate for `names`/`ips`,
/// client certificates checked against `client_ca_pem`. Connections without one are let
/// through TLS so that they get an HTTP 401 rather than a handshake failure.
pub fn tls_config(
    client_ca_pem: &[u8],
    names: &[String],
    ips: &[IpAddr],
) -> Result<rustls::ServerConfig, NodeApiError> {
    let tls = |e: &dyn std::fmt::Display| NodeApiError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let cas = rustls_pemfile::certs(&mut &client_ca_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    if cas.is_empty() {
        return Err(NodeApiError::Tls(
            "the client CA holds no certificate".into(),
        ));
    }
    for c in cas {
        roots.add(c).map_err(|e| tls(&e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| tls(&e))?;
    for ip in ips {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(*ip));
    }
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!(
            "{}@skiff-agent",
            names.first().map(String::as_str).unwrap_or("node")
        ),
    );
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().map_err(|e| tls(&e))?;
    let cert = params.self_signed(&key).map_err(|e| tls(&e))?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(cert.der().to_vec())], key_der)
        .map_err(|e| tls(&e))?;
    // Upgrades (exec, port-forward) need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, NodeApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| NodeApiError::Internal(format!("binding the node API to {addr}: {e}")))
}

/// Accepts connections until the process ends.
pub async fn serve(listener: TcpListener, tls: rustls::ServerConfig, api: Arc<NodeApi>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "node API: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, api) = (acceptor.clone(), api.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "node API: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // The verifier only lets a certificate through if the cluster CA signed it.
            let authenticated = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let service = service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(req, authenticated).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, error = %e, "node API: connection ended with an error");
            }
        });
    }
}

fn full(code: u16, content_type: &str, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .expect("valid response")
}

fn error_response(e: &NodeApiError) -> Response<Body> {
    full(
        e.code(),
        "application/json",
        serde_json::to_vec(&e.to_status()).unwrap_or_default(),
    )
}

fn query_pairs(req: &Request<hyper::body::Incoming>) -> Vec<(String, String)> {
    form_urlencoded_pairs(req.uri().query().unwrap_or(""))
}

/// `a=1&b=x%20y` → pairs, percent- and plus-decoded.
pub fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

fn flag(query: &[(String, String)], key: &str) -> bool {
    query
        .iter()
        .any(|(k, v)| k == key && matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

fn header_has(req: &Request<hyper::body::Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

const X_STREAM_PROTOCOL: header::HeaderName =
    header::HeaderName::from_static("x-stream-protocol-version");

fn spdy_switch(protocol: &str) -> Response<Body> {
    Response::builder()
        .status(101)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header(X_STREAM_PROTOCOL, protocol)
        .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
        .expect("valid response")
}

/// A pod of this node as the API knows it: its uid and container names.
struct PodRef {
    uid: String,
    containers: Vec<String>,
}

impl NodeApi {
    async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
        authenticated: bool,
    ) -> Response<Body> {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let resp = if authenticated {
            self.route(req).await.unwrap_or_else(|e| error_response(&e))
        } else {
            error_response(&NodeApiError::Unauthorized(
                "Unauthorized: a client certificate signed by the cluster CA is required".into(),
            ))
        };
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "node API request");
        resp
    }

    async fn route(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, NodeApiError> {
        let path = req.uri().path().to_string();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let not_found = || NodeApiError::NotFound(format!("{path}: not found"));
        match (req.method(), segs.as_slice()) {
            (&Method::GET, ["healthz"]) => Ok(full(200, "text/plain", b"ok".to_vec())),
            (&Method::GET, ["stats", "summary"]) => self.stats_summary().await,
            (&Method::GET, ["containerLogs", ns, pod, container]) => {
                let query = query_pairs(&req);
                self.logs(ns, pod, container, &query).await
            }
            (&Method::GET | &Method::POST, ["exec", ns, pod, container]) => {
                let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
                self.exec(req, &ns, &pod, &container, false).await
            }
            (&Method::GET | &Method::POST, ["attach", ns, pod, container]) => {
                let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
                self.exec(req, &ns, &pod, &container, true).await
            }
            (&Method::GET | &Method::POST, ["portForward", ns, pod]) => {
                let (ns, pod) = (ns.to_string(), pod.to_string());
                self.port_forward(req, &ns, &pod).await
            }
            _ => Err(not_found()),
        }
    }

    async fn stats_summary(&self) -> Result<Response<Body>, NodeApiError> {
        let api: kube::Api<Pod> = kube::Api::all(self.client.clone());
        let lp =
            kube::api::ListParams::default().fields(&format!("spec.nodeName={}", self.node_name));
        let list = api
            .list(&lp)
            .await
            .map_err(|e| NodeApiError::Internal(format!("listing this node's pods: {e}")))?;
        let pods: Vec<stats::PodInfo> = list
            .items
            .into_iter()
            .map(|p| stats::PodInfo {
                // A mirror pod's containers run under its static pod's uid.
                uid: crate::pods::static_pods::mirror_of(&p)
                    .or(p.metadata.uid.clone())
                    .unwrap_or_default(),
                name: p.metadata.name.unwrap_or_default(),
                namespace: p.metadata.namespace.unwrap_or_default(),
                start_time: p.status.and_then(|s| s.start_time).map(|t| t.0.to_string()),
                containers: p
                    .spec
                    .map(|s| s.containers.into_iter().map(|c| c.name).collect())
                    .unwrap_or_default(),
            })
            .collect();
        let (name, root, cg) = (
            self.node_name.clone(),
            self.root.clone(),
            self.cgroup_root.clone(),
        );
        let summary = tokio::task::spawn_blocking(move || {
            stats::summary(
                &name,
                Path::new("/proc"),
                &root,
                cg.as_deref(),
                &pods,
                &jiff::Timestamp::now().to_string(),
            )
        })
        .await
        .map_err(|e| NodeApiError::Internal(e.to_string()))?;
        Ok(full(
            200,
            "application/json",
            serde_json::to_vec(&summary).unwrap_or_default(),
        ))
    }

    async fn pod(&self, ns: &str, name: &str) -> Result<PodRef, NodeApiError> {
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), ns);
        let pod = match api.get(name).await {
            Ok(p) => p,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(NodeApiError::NotFound(format!(
                    "pod \"{name}\" not found in namespace \"{ns}\""
                )))
            }
            Err(e) => {
                return Err(NodeApiError::Internal(format!(
                    "looking up pod {ns}/{name}: {e}"
                )))
            }
        };
        // A mirror pod stands for a static pod, whose containers run under the static uid.
        let uid = crate::pods::static_pods::mirror_of(&pod)
            .or(pod.metadata.uid)
            .unwrap_or_default();
        let spec = pod.spec.unwrap_or_default();
        let containers = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .chain(spec.containers.into_iter().map(|c| c.name))
            .collect();
        Ok(PodRef { uid, containers })
    }

    async fn container(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
    ) -> Result<PodRef, NodeApiError> {
        let p = self.pod(ns, pod).await?;
        if !p.containers.iter().any(|c| c == container) {
            return Err(NodeApiError::NotFound(format!(
                "container \"{container}\" not found in pod \"{ns}/{pod}\""
            )));
        }
        Ok(p)
    }

    async fn logs(
        &self,
        ns: &str,
        pod: &str,
        container: &str,
        query: &[(String, String)],
    ) -> Result<Response<Body>, NodeApiError> {
        let opts = LogOptions::from_query(query)?;
        let p = self.container(ns, pod, container).await?;
        let dir = logs::pod_log_dir(&self.logs_dir, ns, pod, &p.uid).join(container);
        let file = logs::pick_log(&dir, opts.previous, container)?;
        let cutoff = opts.cutoff(jiff::Timestamp::now());
        let files = logs::with_rotated(&file);
        let generation = logs::log_generations(&dir).last().copied().unwrap_or(0);
        // Files are read on a blocking thread in blocks; the blocks travel to the body
        // through a short channel, so a slow client holds back the reading.
        let (raw_tx, mut raw_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let tail = opts.tail_lines;
        let reader = tokio::task::spawn_blocking(move || {
            let start = match tail {
                Some(n) => logs::tail_start(&files, n)?,
                None => (0, 0),
            };
            logs::read_from(&files, start, |chunk| {
                raw_tx.blocking_send(chunk.to_vec()).is_ok()
            })
        });
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(8);
        let (shim_root, id) = (self.shim_root.clone(), format!("{}-{container}", p.uid));
        tokio::spawn(async move {
            let mut sent = 0u64;
            while let Some(raw) = raw_rx.recv().await {
                let mut out = logs::render_all(&raw, None, cutoff, opts.timestamps);
                let limit_reached = logs::apply_limit(&mut out, &mut sent, opts.limit_bytes);
                if !out.is_empty() && tx.send_data(Bytes::from(out)).await.is_err() {
                    return; // the client went away
                }
                if limit_reached {
                    return;
                }
            }
            let (current, torn) = match reader.await {
                Ok(Ok(Some(end))) => end,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading a log");
                    return;
                }
                Err(_) => return,
            };
            if !opts.follow || opts.previous {
                return;
            }
            let mut follower = logs::Follower::new(file, current, torn);
            loop {
                let stopped = container_gone(&shim_root, &id, &dir, generation).await;
                let (fresh, f) = match tokio::task::spawn_blocking(move || {
                    let r = follower.poll();
                    (r, follower)
                })
                .await
                {
                    Ok(r) => r,
                    Err(_) => return,
                };
                follower = f;
                let mut out = match fresh {
                    Ok(d) => logs::render_all(&d, None, cutoff, opts.timestamps),
                    Err(e) => {
                        tracing::warn!(error = %e, "following a log");
                        return;
                    }
                };
                let limit_reached = logs::apply_limit(&mut out, &mut sent, opts.limit_bytes);
                if !out.is_empty() && tx.send_data(Bytes::from(out)).await.is_err() {
                    return; // the client went away
                }
                if stopped || limit_reached {
                    return;
                }
                tokio::time::sleep(logs::FOLLOW_POLL).await;
            }
        });
        Ok(Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body.boxed())
            .expect("valid response"))
    }

    async fn exec(
        &self,
        mut req: Request<hyper::body::Incoming>,
        ns: &str,
        pod: &str,
        container: &str,
        attach: bool,
    ) -> Result<Response<Body>, NodeApiError> {
        let query = query_pairs(&req);
        let command: Vec<String> = query
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        if command.is_empty() && !attach {
            return Err(NodeApiError::BadRequest(
                "you must specify at least 1 command".into(),
            ));
        }
        let (stdin, stdout, stderr, tty) = (
            flag(&query, "input") || flag(&query, "stdin"),
            flag(&query, "output") || flag(&query, "stdout"),
            flag(&query, "error") || flag(&query, "stderr"),
            flag(&query, "tty"),
        );
        if !(stdin || stdout || stderr) {
            return Err(NodeApiError::BadRequest(
                "you must specify at least 1 of stdin, stdout, stderr".into(),
            ));
        }
        let p = self.container(ns, pod, container).await?;
        let id = format!("{}-{container}", p.uid);
        self.ensure_running(&id, container).await?;
        let exec_req = ExecRequest {
            shim_root: self.shim_root.clone(),
            container_id: id,
            command,
            stdin,
            stdout,
            stderr: stderr && !tty,
            tty,
            attach,
        };
        if header_has(&req, header::UPGRADE, "websocket") {
            let offered: Vec<String> = req
                .headers()
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .flat_map(|v| {
                    v.to_str()
                        .unwrap_or("")
                        .split(',')
                        .map(|s| s.trim().to_string())
                })
                .collect();
            let proto = exec::WS_PROTOCOLS
                .iter()
                .find(|p| offered.iter().any(|o| o == *p))
                .ok_or_else(|| {
                    NodeApiError::BadRequest(format!(
                        "no supported WebSocket subprotocol offered (supported: {})",
                        exec::WS_PROTOCOLS.join(", ")
                    ))
                })?;
            let key = req
                .headers()
                .get(header::SEC_WEBSOCKET_KEY)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| NodeApiError::BadRequest("missing Sec-WebSocket-Key".into()))?
                .to_string();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match upgrade.await {
                    Ok(conn) => exec::serve_websocket(TokioIo::new(conn), exec_req).await,
                    Err(e) => tracing::debug!(error = %e, "exec: upgrade failed"),
                }
            });
            return Ok(Response::builder()
                .status(101)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "websocket")
                .header(
                    header::SEC_WEBSOCKET_ACCEPT,
                    super::websocket::accept_key(&key),
                )
                .header(header::SEC_WEBSOCKET_PROTOCOL, *proto)
                .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
                .expect("valid response"));
        }
        if header_has(&req, header::UPGRADE, "SPDY/3.1") {
            if !header_has(&req, X_STREAM_PROTOCOL, exec::SPDY_PROTOCOL) {
                return Err(NodeApiError::BadRequest(format!(
                    "no supported stream protocol offered (supported: {})",
                    exec::SPDY_PROTOCOL
                )));
            }
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match upgrade.await {
                    Ok(conn) => {
                        exec::serve_spdy(super::spdy::start(TokioIo::new(conn)), exec_req).await
                    }
                    Err(e) => tracing::debug!(error = %e, "exec: upgrade failed"),
                }
            });
            return Ok(spdy_switch(exec::SPDY_PROTOCOL));
        }
        Err(NodeApiError::BadRequest(
            "exec needs a connection upgrade: websocket (v5.channel.k8s.io) or SPDY/3.1".into(),
        ))
    }

    async fn port_forward(
        &self,
        mut req: Request<hyper::body::Incoming>,
        ns: &str,
        pod: &str,
    ) -> Result<Response<Body>, NodeApiError> {
        let p = self.pod(ns, pod).await?;
        let sandbox = crate::sandbox::find(&self.root, &p.uid)
            .map_err(|e| NodeApiError::Internal(e.to_string()))?
            .ok_or_else(|| {
                NodeApiError::BadRequest(format!(
                    "pod {ns}/{pod} has no running sandbox on this node"
                ))
            })?;
        let target = portforward::PodNet {
            pod: format!("{ns}/{pod}"),
            uid: p.uid.clone(),
            netns: sandbox.netns(),
        };
        if header_has(&req, header::UPGRADE, "websocket") {
            if !header_has(
                &req,
                header::SEC_WEBSOCKET_PROTOCOL,
                portforward::WS_TUNNEL_PROTOCOL,
            ) {
                return Err(NodeApiError::BadRequest(format!(
                    "no supported WebSocket subprotocol offered (supported: {})",
                    portforward::WS_TUNNEL_PROTOCOL
                )));
            }
            let key = req
                .headers()
                .get(header::SEC_WEBSOCKET_KEY)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| NodeApiError::BadRequest("missing Sec-WebSocket-Key".into()))?
                .to_string();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match upgrade.await {
                    Ok(conn) => {
                        let session = super::spdy::start_over_websocket(TokioIo::new(conn));
                        portforward::serve(session, target).await
                    }
                    Err(e) => tracing::debug!(error = %e, "port-forward: upgrade failed"),
                }
            });
            return Ok(Response::builder()
                .status(101)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "websocket")
                .header(
                    header::SEC_WEBSOCKET_ACCEPT,
                    super::websocket::accept_key(&key),
                )
                .header(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    portforward::WS_TUNNEL_PROTOCOL,
                )
                .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
                .expect("valid response"));
        }
        if header_has(&req, header::UPGRADE, "SPDY/3.1") {
            if !header_has(&req, X_STREAM_PROTOCOL, portforward::PROTOCOL) {
                return Err(NodeApiError::BadRequest(format!(
                    "no supported stream protocol offered (supported: {})",
                    portforward::PROTOCOL
                )));
            }
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                match upgrade.await {
                    Ok(conn) => {
                        portforward::serve(super::spdy::start(TokioIo::new(conn)), target).await
                    }
                    Err(e) => tracing::debug!(error = %e, "port-forward: upgrade failed"),
                }
            });
            return Ok(spdy_switch(portforward::PROTOCOL));
        }
        Err(NodeApiError::BadRequest(
            "port-forward needs a connection upgrade: websocket (SPDY/3.1+portforward.k8s.io) or SPDY/3.1"
                .into(),
        ))
    }

    /// Refuses exec into a container that is not running, before the upgrade, so that the
    /// client gets a plain error.
    async fn ensure_running(&self, id: &str, container: &str) -> Result<(), NodeApiError> {
        let (root, cid) = (self.shim_root.clone(), id.to_string());
        let state = tokio::task::spawn_blocking(move || {
            skiff_shim::supervisor::request(
                &root,
                &cid,
                &skiff_shim::supervisor::Request::State,
                std::time::Duration::from_secs(5),
            )
        })
        .await
        .map_err(|e| NodeApiError::Internal(e.to_string()))?;
        match state {
            Ok(r)
                if r.state
                    .as_ref()
                    .is_some_and(|s| s.status == skiff_shim::state::Status::Running) =>
            {
                Ok(())
            }
            _ => Err(NodeApiError::BadRequest(format!(
                "container {container} is not running"
            ))),
        }
    }
}

/// Whether the container whose log is followed has ended: a newer log generation exists
/// (it was restarted), or its shim says it stopped or is gone.
async fn container_gone(shim_root: &Path, id: &str, dir: &Path, generation: u64) -> bool {
    if logs::log_generations(dir)
        .last()
        .is_some_and(|g| *g > generation)
    {
        return true;
    }
    let (root, id) = (shim_root.to_path_buf(), id.to_string());
    let state = tokio::task::spawn_blocking(move || {
        skiff_shim::supervisor::request(
            &root,
            &id,
            &skiff_shim::supervisor::Request::State,
            std::time::Duration::from_secs(5),
        )
    })
    .await;
    match state {
        Ok(Ok(r)) => r
            .state
            .is_none_or(|s| s.status == skiff_shim::state::Status::Stopped),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            form_urlencoded_pairs("command=sh&command=-c&command=echo%20a+b%26&tty=true&x"),
            vec![
                ("command".to_string(), "sh".to_string()),
                ("command".into(), "-c".into()),
                ("command".into(), "echo a b&".into()),
                ("tty".into(), "true".into()),
                ("x".into(), "".into()),
            ]
        );
    }
}
