//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: the request goes to the
//! node agent of the pod's node (its node API, kubelet's :10250), authenticated with the
//! `apiserver-kubelet-client` certificate. Logs are streamed through; for exec and
//! port-forward the upgrade is forwarded and the two upgraded connections are spliced, so
//! the protocols (WebSocket channels, SPDY) run end to end between kubectl and the agent.

use bytes::Bytes;
use http::{header, HeaderName, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use serde_json::Value;

use super::status::ApiError;
use super::{ApiServer, Body, Target};
use crate::pki::CertAndKey;
use crate::registry;

/// How long connecting to a node agent may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Headers of an upgrade that must reach the agent, and come back from it.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "x-stream-protocol-version",
];

/// The TLS client configuration for reaching node agents with the kubelet-client identity.
pub fn client_config(identity: &CertAndKey) -> Result<rustls::ClientConfig, String> {
    let certs = rustls_pemfile::certs(&mut identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut identity.key_pem.as_bytes())
        .map_err(|e| e.to_string())?
        .ok_or("no private key in the kubelet client key")?;
    // kube-apiserver does not verify kubelet serving certificates unless given
    // `--kubelet-certificate-authority`; the agents' certificates are self-signed, so the
    // same here: the connection is encrypted and the agent authenticates us, not the reverse.
    let mut config = skiff_daemon::tls::unverified_server_builder()
        .map_err(|e| e.to_string())?
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The agent's address of a node: InternalIP and the published kubelet port.
fn node_endpoint(node: &Value) -> Option<(String, u16)> {
    let addresses = node.pointer("/status/addresses")?.as_array()?;
    let ip = addresses
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .or_else(|| addresses.iter().find(|a| a["type"] == "ExternalIP"))?
        .get("address")?
        .as_str()?
        .to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .filter(|p| (1..=65535).contains(p))
        .unwrap_or(10250) as u16;
    Some((ip, port))
}

fn pct(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The container a request is about: the `container` parameter, or the only container.
pub fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().chain(init.iter()).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// The agent's path and query for a pod subresource request.
pub fn agent_path(
    subresource: &str,
    ns: &str,
    name: &str,
    container: Option<&str>,
    query: &[(String, String)],
) -> String {
    const LOG_PARAMS: &[&str] = &[
        "follow",
        "previous",
        "sinceSeconds",
        "sinceTime",
        "timestamps",
        "tailLines",
        "limitBytes",
    ];
    const EXEC_PARAMS: &[&str] = &["command", "stdin", "stdout", "stderr", "tty"];
    let (base, keep): (String, &[&str]) = match subresource {
        "log" => (
            format!(
                "/containerLogs/{}/{}/{}",
                pct(ns),
                pct(name),
                pct(container.unwrap_or(""))
            ),
            LOG_PARAMS,
        ),
        "exec" | "attach" => (
            format!(
                "/{subresource}/{}/{}/{}",
                pct(ns),
                pct(name),
                pct(container.unwrap_or(""))
            ),
            EXEC_PARAMS,
        ),
        _ => (format!("/portForward/{}/{}", pct(ns), pct(name)), &["port"]),
    };
    let params: Vec<String> = query
        .iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect();
    if params.is_empty() {
        base
    } else {
        format!("{base}?{}", params.join("&"))
    }
}

impl ApiServer {
    /// Serves a pod subresource that lives on the node.
    pub async fn node_proxy(
        &self,
        t: &Target,
        query: &super::Query,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let sub = t.subresource.as_deref().unwrap_or("");
        let ns = t.namespace.as_deref().unwrap_or("default");
        let name = t.name.as_deref().unwrap_or("");
        let pod = self
            .cache
            .get(&t.rt.key(Some(ns), name))
            .ok_or_else(|| ApiError::not_found(&t.rt.qualified(), name))?;
        let container = match sub {
            "portforward" => None,
            _ => Some(pick_container(&pod, name, query.get("container"))?),
        };
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        if (sub == "exec" || sub == "attach") && matches!(phase, Some("Succeeded" | "Failed")) {
            return Err(ApiError::bad_request(format!(
                "cannot {sub} {} a container in a completed pod; current phase is {}",
                if sub == "exec" { "into" } else { "to" },
                phase.unwrap_or("")
            )));
        }
        let node_name = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(format!("pod {name} does not have a host assigned"))
            })?;
        let nodes = registry::find("", "v1", "nodes").expect("nodes are registered");
        let node = self
            .cache
            .get(&nodes.key(None, node_name))
            .ok_or_else(|| ApiError::not_found("nodes", node_name))?;
        let (ip, port) = node_endpoint(&node).ok_or_else(|| {
            ApiError::internal(format!("node {node_name} has no InternalIP address"))
        })?;
        let tls = self.node_tls.clone().ok_or_else(|| {
            ApiError::internal("this server has no kubelet client certificate configured")
        })?;
        let path = agent_path(sub, ns, name, container.as_deref(), &query.0);
        let unreachable = |what: String| {
            ApiError::new(
                502,
                "ServiceUnavailable",
                format!("error dialing backend: node {node_name} ({ip}:{port}): {what}"),
            )
        };
        let addr = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| unreachable("connection timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(ip.clone())
            .map_err(|e| unreachable(format!("bad address: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "node agent connection ended");
            }
        });
        let mut out = Request::builder()
            .method(req.method().clone())
            .uri(&path)
            .header(header::HOST, &addr);
        for h in UPGRADE_HEADERS {
            for v in req.headers().get_all(*h) {
                out = out.header(*h, v);
            }
        }
        let out = out
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let client_upgrade = hyper::upgrade::on(&mut req);
        let mut resp = sender
            .send_request(out)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = resp.into_parts();
            let mut back = Response::builder().status(parts.status);
            for h in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
                if let Some(v) = parts.headers.get(&h) {
                    back = back.header(h, v);
                }
            }
            return back
                .body(body.map_err(std::io::Error::other).boxed())
                .map_err(|e| ApiError::internal(e.to_string()));
        }
        let agent_upgrade = hyper::upgrade::on(&mut resp);
        let mut back = Response::builder().status(101);
        for h in UPGRADE_HEADERS {
            let h = HeaderName::from_static(h);
            for v in resp.headers().get_all(&h) {
                back = back.header(&h, v);
            }
        }
        tokio::spawn(async move {
            let (client, agent) = match tokio::join!(client_upgrade, agent_upgrade) {
                (Ok(c), Ok(a)) => (c, a),
                (c, a) => {
                    tracing::debug!(client = ?c.err(), agent = ?a.err(), "node proxy: upgrade failed");
                    return;
                }
            };
            let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
        });
        back.body(Empty::new().map_err(|e| match e {}).boxed())
            .map_err(|e| ApiError::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_picked_like_kube_apiserver() {
        let pod = json!({"spec": {"containers": [{"name": "web"}], "initContainers": [{"name": "init"}]}});
        assert_eq!(pick_container(&pod, "p", None).unwrap(), "web");
        assert_eq!(pick_container(&pod, "p", Some("init")).unwrap(), "init");
        let e = pick_container(&pod, "p", Some("foo")).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "container foo is not valid for pod p")
        );
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let e = pick_container(&two, "p", None).unwrap_err();
        assert!(e.message.contains("choose one of: [a b]"), "{}", e.message);
    }

    #[test]
    fn agent_paths() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            agent_path(
                "log",
                "default",
                "web",
                Some("c"),
                &q(&[("container", "c"), ("follow", "true"), ("tailLines", "2")])
            ),
            "/containerLogs/default/web/c?follow=true&tailLines=2"
        );
        assert_eq!(
            agent_path(
                "exec",
                "ns",
                "p",
                Some("c"),
                &q(&[
                    ("command", "sh"),
                    ("command", "-c"),
                    ("command", "exit 7"),
                    ("stdout", "true")
                ])
            ),
            "/exec/ns/p/c?command=sh&command=-c&command=exit+7&stdout=true"
        );
        assert_eq!(
            agent_path("portforward", "ns", "p", None, &[]),
            "/portForward/ns/p"
        );
    }

    #[test]
    fn node_endpoints() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}}}});
        assert_eq!(node_endpoint(&node), Some(("10.0.0.5".to_string(), 12345)));
        let bare =
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.6"}]}});
        assert_eq!(node_endpoint(&bare), Some(("10.0.0.6".to_string(), 10250)));
        assert_eq!(node_endpoint(&json!({"status": {}})), None);
    }
}
