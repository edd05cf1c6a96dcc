//! The Kubernetes REST API: routing, authentication, content negotiation; the verbs live in
//! `objects`, watches in `watch`.

pub mod discovery;
pub mod managed_fields;
pub mod node_proxy;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod selectors;
pub mod status;
pub mod table;
pub mod watch;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use serde_json::Value;

use crate::auth::{Attributes, Authorizer, TokenFile, User};
use crate::cache::Cache;
use crate::registry::{self, ResourceType};
use skiff_store::Store;
use status::ApiError;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// kube-apiserver refuses request bodies above 3 MiB.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct Settings {
    pub service_cidr: ipnet_lite::Ipv4Net,
    pub node_port_range: (u16, u16),
}

pub mod ipnet_lite {
    //! Just enough IPv4 prefix arithmetic for address allocation.
    use std::net::Ipv4Addr;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Ipv4Net {
        pub addr: Ipv4Addr,
        pub prefix: u8,
    }

    impl std::str::FromStr for Ipv4Net {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let (a, p) = s
                .split_once('/')
                .ok_or_else(|| format!("{s}: expected ADDRESS/PREFIX"))?;
            let addr: Ipv4Addr = a.parse().map_err(|e| format!("{s}: {e}"))?;
            let prefix: u8 = p.parse().map_err(|e| format!("{s}: {e}"))?;
            if prefix > 30 {
                return Err(format!("{s}: prefix must be at most /30"));
            }
            let mask = u32::MAX << (32 - prefix as u32);
            Ok(Self {
                addr: Ipv4Addr::from(u32::from(addr) & mask),
                prefix,
            })
        }
    }

    impl Ipv4Net {
        pub fn size(&self) -> u32 {
            1u32 << (32 - self.prefix as u32)
        }
        pub fn nth(&self, n: u32) -> Ipv4Addr {
            Ipv4Addr::from(u32::from(self.addr) + n)
        }
        pub fn contains(&self, ip: Ipv4Addr) -> bool {
            let mask = u32::MAX << (32 - self.prefix as u32);
            u32::from(ip) & mask == u32::from(self.addr)
        }
    }
}

pub struct ApiServer {
    pub store: Arc<dyn Store>,
    pub cache: Arc<Cache>,
    pub tokens: TokenFile,
    pub authorizer: Box<dyn Authorizer>,
    pub settings: Settings,
    /// Serialises ClusterIP and NodePort allocation, which reads then writes.
    pub allocation: tokio::sync::Mutex<()>,
    /// Set once after construction, so that background work can hold the server.
    pub myself: std::sync::OnceLock<std::sync::Weak<ApiServer>>,
    /// TLS client configuration (the `apiserver-kubelet-client` identity) for reaching node
    /// agents; without it pods/log, exec and portforward are refused.
    pub node_tls: Option<Arc<rustls::ClientConfig>>,
}

/// A parsed resource URL.
pub struct Target {
    pub rt: &'static ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// Go's `strconv.ParseBool` truths, which is what kube-apiserver accepts.
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "Invalid dryRun value {other:?}: only \"All\" is supported"
            ))),
        }
    }
}

pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    bytes_response(code, "application/json", body)
}

pub fn bytes_response(code: u16, content_type: &str, body: Vec<u8>) -> Response<Body> {
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

pub fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.to_status())
}

fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/version/"
    ) || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// Splits `/api/v1/...` or `/apis/<g>/<v>/...` into the group, version and the rest.
fn split_api_path(path: &str) -> Option<(&str, &str, Vec<&str>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", v, rest @ ..] => Some(("", v, rest.to_vec())),
        ["apis", g, v, rest @ ..] => Some((g, v, rest.to_vec())),
        _ => None,
    }
}

fn resolve_target(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !(group.is_empty()
                && ["status", "finalize"].contains(plural)
                && tail.is_empty()) =>
        {
            let rt = registry::find(group, version, plural).ok_or_else(not_found)?;
            if rt.namespaced {
                (Some(ns.to_string()), &rest[2..])
            } else {
                return Err(not_found());
            }
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let rt = registry::find(group, version, plural).ok_or_else(not_found)?;
    if rt.namespaced && namespace.is_none() && name.is_some() {
        return Err(not_found());
    }
    if let Some(s) = &sub {
        if !rt.subresources.contains(&s.as_str()) {
            return Err(not_found());
        }
    }
    for part in namespace.iter().chain(name.iter()) {
        // Names become store keys: refuse anything that could address another key.
        if part.is_empty()
            || part.contains('/')
            || part == "."
            || part == ".."
            || part.contains('%')
        {
            return Err(ApiError::bad_request(format!(
                "invalid resource name {part:?}: may not be '.', '..' or contain '/' or '%'"
            )));
        }
    }
    Ok(Target {
        rt,
        namespace,
        name,
        subresource: sub,
    })
}

fn version_info() -> Value {
    serde_json::json!({
        "major": "1", "minor": "33", "gitVersion": crate::VERSION_GIT,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "rustc",
        "platform": format!("linux/{}", if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

pub async fn read_body(mut body: hyper::body::Incoming) -> Result<Bytes, ApiError> {
    use hyper::body::Body as _;
    // Past the limit the rest is read and dropped (up to a bound) so that the client gets
    // the 413 instead of a reset connection.
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let mut collected = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= MAX_BODY {
                collected.extend_from_slice(&data);
            } else if total > DRAIN_LIMIT {
                break;
            }
        }
    }
    if total > MAX_BODY {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {MAX_BODY} bytes"),
        ));
    }
    Ok(collected.freeze())
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

impl ApiServer {
    fn authenticate(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        peer: Option<&User>,
    ) -> Result<User, ApiError> {
        if let Some(token) = header_str(headers, header::AUTHORIZATION).strip_prefix("Bearer ") {
            let token = token.trim();
            if let Some(user) = self.tokens.authenticate(token) {
                return Ok(user);
            }
            return match self.authenticate_bootstrap_token(token) {
                Some(Ok(user)) => Ok(user),
                Some(Err(why)) => Err(ApiError::new(401, "Unauthorized", why.to_string())),
                None => Err(ApiError::unauthorized()),
            };
        }
        if let Some(user) = peer {
            return Ok(user.clone());
        }
        if crate::bootstrap::anonymous_allowed(method, path) {
            return Ok(crate::bootstrap::anonymous_user());
        }
        Err(ApiError::unauthorized())
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
        peer: Option<User>,
    ) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let response = self
            .route(req, peer)
            .await
            .unwrap_or_else(|e| error_response(&e));
        tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
        response
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<hyper::body::Incoming>,
        peer: Option<User>,
    ) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_string();
        if is_public(&path) {
            return Ok(match path.as_str() {
                "/version" | "/version/" => json_response(200, &version_info()),
                _ => bytes_response(200, "text/plain; charset=utf-8", b"ok".to_vec()),
            });
        }
        let user = self.authenticate(req.method(), &path, req.headers(), peer.as_ref())?;
        let accept = header_str(req.headers(), header::ACCEPT).to_string();
        let method = req.method().clone();
        if method == Method::GET {
            match path.trim_end_matches('/') {
                "/api" => {
                    return Ok(if discovery::wants_aggregated(&accept) {
                        bytes_response(
                            200,
                            discovery::AGGREGATED_CONTENT_TYPE,
                            serde_json::to_vec(&discovery::aggregated_core()).unwrap_or_default(),
                        )
                    } else {
                        json_response(200, &discovery::api_versions())
                    })
                }
                "/apis" => {
                    return Ok(if discovery::wants_aggregated(&accept) {
                        bytes_response(
                            200,
                            discovery::AGGREGATED_CONTENT_TYPE,
                            serde_json::to_vec(&discovery::aggregated_groups()).unwrap_or_default(),
                        )
                    } else {
                        json_response(200, &discovery::api_group_list())
                    })
                }
                "/openapi/v3" => {
                    return Ok(bytes_response(
                        200,
                        "application/json",
                        openapi::index().to_vec(),
                    ))
                }
                _ => {}
            }
            if let Some(doc_path) = path.strip_prefix("/openapi/v3/") {
                let doc = openapi::document(doc_path.trim_end_matches('/')).ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        format!("no OpenAPI document for {doc_path}"),
                    )
                })?;
                let fresh = header_str(req.headers(), header::IF_NONE_MATCH) == doc.etag;
                let mut resp = if fresh {
                    let mut r = bytes_response(304, "application/json", Vec::new());
                    *r.status_mut() = StatusCode::NOT_MODIFIED;
                    r
                } else {
                    bytes_response(200, "application/json", doc.body.clone())
                };
                resp.headers_mut()
                    .insert(header::ETAG, doc.etag.parse().expect("etag header"));
                return Ok(resp);
            }
        }
        let (group, version, rest) = split_api_path(&path).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })?;
        if rest.is_empty() {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(format!(
                    "{method} is not supported on {path}"
                )));
            }
            let list = discovery::resource_list(group, version).ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })?;
            return Ok(json_response(200, &list));
        }
        let target = resolve_target(group, version, &rest)?;
        let query = Query::parse(req.uri().query());
        let verb = match (&method, &target.name) {
            (&Method::GET, None) if query.flag("watch") => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, None) => "deletecollection",
            (&Method::DELETE, Some(_)) => "delete",
            _ => {
                return Err(ApiError::method_not_allowed(format!(
                    "{method} is not supported"
                )))
            }
        };
        self.authorizer
            .authorize(&Attributes {
                user: &user,
                verb,
                group: target.rt.group,
                resource: target.rt.plural,
                subresource: target.subresource.as_deref(),
                namespace: target.namespace.as_deref(),
                name: target.name.as_deref(),
            })
            .map_err(|why| {
                ApiError::forbidden(format!(
                    "User \"{}\" cannot {verb} resource \"{}\": {why}",
                    user.name, target.rt.plural
                ))
            })?;
        // Read-your-writes: whatever this request reads must include every write answered
        // before it. A plain create reads little and waits where it must (namespace not yet
        // seen, address allocation, dry run), so that a stream of creates is not serialised
        // on the watch.
        let plain_create = verb == "create" && target.subresource.is_none();
        if !plain_create {
            self.fresh().await?;
        }
        if target.rt.plural == "pods"
            && target.rt.group.is_empty()
            && matches!(
                target.subresource.as_deref(),
                Some("log" | "exec" | "attach" | "portforward")
            )
            && (method == Method::GET || method == Method::POST)
        {
            return self.node_proxy(&target, &query, req).await;
        }
        let ctx = objects::RequestContext {
            user,
            accept,
            content_type: header_str(req.headers(), header::CONTENT_TYPE).to_string(),
            user_agent: header_str(req.headers(), header::USER_AGENT).to_string(),
            query,
        };
        match verb {
            "watch" => Ok(self.watch(&target, &ctx).await?),
            "list" => self.list(&target, &ctx),
            "get" => self.get(&target, &ctx),
            "deletecollection" => {
                let body = read_body(req.into_body()).await?;
                self.delete_collection(&target, &ctx, &body).await
            }
            "delete" => {
                let body = read_body(req.into_body()).await?;
                self.delete(&target, &ctx, &body).await
            }
            "create" => {
                let body = read_body(req.into_body()).await?;
                self.create(&target, &ctx, &body).await
            }
            "update" => {
                let body = read_body(req.into_body()).await?;
                self.update(&target, &ctx, &body).await
            }
            "patch" => {
                let body = read_body(req.into_body()).await?;
                self.patch(&target, &ctx, &body).await
            }
            _ => unreachable!("every verb is matched above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let t = resolve_target(
            "",
            "v1",
            &["namespaces", "default", "pods", "web", "status"],
        )
        .unwrap();
        assert_eq!(
            (
                t.rt.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("pods", Some("default"), Some("web"), Some("status"))
        );
        let t = resolve_target("", "v1", &["namespaces", "kube-system"]).unwrap();
        assert_eq!(
            (t.rt.plural, t.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let t = resolve_target("", "v1", &["namespaces", "x", "status"]).unwrap();
        assert_eq!(
            (t.rt.plural, t.subresource.as_deref()),
            ("namespaces", Some("status"))
        );
        let t = resolve_target("apps", "v1", &["deployments"]).unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(
            resolve_target("", "v1", &["pods", "x"]).is_err(),
            "a namespaced object needs its namespace"
        );
        assert!(resolve_target("", "v1", &["namespaces", "d", "pods", ".."]).is_err());
        assert!(resolve_target("", "v1", &["namespaces", "d", "widgets"]).is_err());
        assert!(resolve_target("", "v1", &["namespaces", "d", "pods", "p", "bogus"]).is_err());
    }
}
