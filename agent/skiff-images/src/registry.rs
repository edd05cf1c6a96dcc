//! A client for the distribution API v2 (pull only).
//!
//! One HTTP/1.1 connection per request (hyper's client connection over a tokio TCP stream,
//! TLS with rustls/ring), so a stalled or broken connection never poisons a pool. Timeouts:
//! `connect_timeout` covers TCP connect and TLS handshake, `response_timeout` the wait for
//! response headers, `stall_timeout` the gap between two chunks of a body.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::auth::{parse_challenge, Challenge, Credentials};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media::{
    parse_manifest, select_platform, Descriptor, Manifest, ManifestKind, MANIFEST_ACCEPT,
};
use crate::reference::Reference;

const MAX_MANIFEST_BYTES: usize = 4 << 20;
const MAX_REDIRECTS: usize = 5;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Registries (`host` or `host:port`) reached over plain HTTP. Loopback registries
    /// (127.0.0.0/8, ::1, localhost) always are.
    pub insecure_registries: Vec<String>,
    /// Registries reached over HTTPS even on loopback.
    pub tls_registries: Vec<String>,
    /// Extra trusted CA certificates (PEM), besides the system's.
    pub extra_ca_pem: Vec<u8>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub stall_timeout: Duration,
    pub user_agent: String,
    /// Platform picked from image indexes.
    pub os: String,
    pub architecture: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            insecure_registries: Vec::new(),
            tls_registries: Vec::new(),
            extra_ca_pem: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            user_agent: concat!("skiff/", env!("CARGO_PKG_VERSION")).to_string(),
            os: "linux".to_string(),
            architecture: "amd64".to_string(),
        }
    }
}

/// The manifest an image reference resolved to.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    /// Digest of the platform manifest (not of the index).
    pub digest: Digest,
    /// Its bytes, as served.
    pub bytes: Bytes,
    pub manifest: Manifest,
}

/// A blob being downloaded; read it with [`BlobStream::next_chunk`].
pub struct BlobStream {
    body: Incoming,
    url: String,
    stall: Duration,
    /// `Content-Length`, when the registry sent one.
    pub content_length: Option<u64>,
}

impl BlobStream {
    /// The next piece of the body, `None` at the end. Fails with [`Error::Timeout`] when no
    /// data arrives within the stall timeout.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        next_data(&mut self.body, &self.url, self.stall).await
    }

    /// The URL the blob is served from (after redirects).
    pub fn url(&self) -> &str {
        &self.url
    }
}

async fn next_data(body: &mut Incoming, url: &str, stall: Duration) -> Result<Option<Bytes>> {
    loop {
        let frame = tokio::time::timeout(stall, body.frame())
            .await
            .map_err(|_| Error::Timeout {
                url: url.to_string(),
                during: "waiting for body data from",
                after: stall,
            })?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => {
                return Err(Error::Http {
                    url: url.to_string(),
                    source: Box::new(e),
                })
            }
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    if !d.is_empty() {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }
}

/// Registry client; cheap to share behind an `Arc`.
pub struct RegistryClient {
    cfg: ClientConfig,
    tls: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>>,
    /// Bearer tokens by `registry|scope`.
    tokens: Mutex<HashMap<String, String>>,
}

/// Whether `registry` (`host[:port]`) is on loopback.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RegistryClient {
    pub fn new(cfg: ClientConfig) -> RegistryClient {
        RegistryClient {
            cfg,
            tls: OnceLock::new(),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        self.tls
            .get_or_init(|| {
                use rustls_pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                for c in rustls_pki_types::CertificateDer::pem_slice_iter(&self.cfg.extra_ca_pem) {
                    let c = c.map_err(|e| format!("extra CA certificates: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("extra CA certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err(format!("no CA certificates found: {:?}", found.errors));
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|reason| Error::Tls { reason })
    }

    /// `http` or `https` for a registry.
    pub fn scheme_for(&self, registry: &str) -> &'static str {
        if self.cfg.tls_registries.iter().any(|r| r == registry) {
            return "https";
        }
        let insecure =
            is_loopback(registry)
                || self.cfg.insecure_registries.iter().any(|r| {
                    r == registry || r.strip_prefix("http://").is_some_and(|x| x == registry)
                });
        if insecure {
            "http"
        } else {
            "https"
        }
    }

    fn base_url(&self, r: &Reference) -> String {
        format!(
            "{}://{}/v2/{}",
            self.scheme_for(&r.registry),
            r.api_host(),
            r.repository
        )
    }

    /// One request on a fresh connection, with the connect and response timeouts.
    async fn send_once(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Incoming>> {
        let uri: Uri = url.parse().map_err(|e| Error::Http {
            url: url.to_string(),
            source: Box::new(e),
        })?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(Error::Http {
                    url: url.to_string(),
                    source: "unsupported URL scheme".into(),
                })
            }
        };
        let host = uri
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connect_timeout = self.cfg.connect_timeout;
        let timeout_err = |during| Error::Timeout {
            url: url.to_string(),
            during,
            after: connect_timeout,
        };
        let http_err = |e: hyper::Error| Error::Http {
            url: url.to_string(),
            source: Box::new(e),
        };

        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| timeout_err("connecting to"))?
            .map_err(|source| Error::Connect {
                url: url.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);

        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .header(http::header::USER_AGENT, &self.cfg.user_agent);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| Error::Http {
            url: url.to_string(),
            source: Box::new(e),
        })?;

        let response_timeout = self.cfg.response_timeout;
        macro_rules! exchange {
            ($io:expr) => {{
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io))
                    .await
                    .map_err(http_err)?;
                let u = url.to_string();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(url = %u, error = %e, "registry connection ended");
                    }
                });
                tokio::time::timeout(response_timeout, sender.send_request(req))
                    .await
                    .map_err(|_| Error::Timeout {
                        url: url.to_string(),
                        during: "waiting for response headers from",
                        after: response_timeout,
                    })?
                    .map_err(http_err)?
            }};
        }
        let resp = if https {
            let tls = self.tls_config()?;
            let name =
                rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| Error::Http {
                    url: url.to_string(),
                    source: Box::new(e),
                })?;
            let stream = tokio::time::timeout(
                connect_timeout,
                tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
            )
            .await
            .map_err(|_| timeout_err("in the TLS handshake with"))?
            .map_err(|source| Error::Connect {
                url: url.to_string(),
                source,
            })?;
            exchange!(stream)
        } else {
            exchange!(tcp)
        };
        Ok(resp)
    }

    /// Reads a whole (small) body.
    async fn read_body(&self, resp: Response<Incoming>, url: &str, limit: usize) -> Result<Bytes> {
        let mut body = resp.into_body();
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = next_data(&mut body, url, self.cfg.stall_timeout).await? {
            if out.len() + chunk.len() > limit {
                return Err(Error::malformed(
                    url,
                    format!("response larger than {limit} bytes"),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    async fn status_error(&self, resp: Response<Incoming>, url: &str) -> Error {
        let status = resp.status().as_u16();
        let body = match tokio::time::timeout(
            Duration::from_secs(2),
            self.read_body(resp, url, 64 * 1024),
        )
        .await
        {
            Ok(Ok(b)) => String::from_utf8_lossy(&b[..b.len().min(512)])
                .trim()
                .to_string(),
            _ => String::new(),
        };
        Error::Status {
            url: url.to_string(),
            status,
            body,
        }
    }

    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<String> {
        let mut url = realm.to_string();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(s) = service {
            url.push_str(&format!("{sep}service={}", encode_query(s)));
            sep = '&';
        }
        url.push_str(&format!("{sep}scope={}", encode_query(scope)));
        let mut headers = Vec::new();
        if let Some(c) = creds {
            headers.push(("authorization", c.basic_header()));
        }
        let resp = self.send_once(http::Method::GET, &url, &headers).await?;
        if !resp.status().is_success() {
            let e = self.status_error(resp, &url).await;
            return Err(Error::Auth {
                registry: registry.to_string(),
                reason: format!("token request failed: {e}"),
            });
        }
        let body = self.read_body(resp, &url, 1 << 20).await?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body).map_err(|e| Error::Auth {
            registry: registry.to_string(),
            reason: format!("token response from {realm} is not JSON: {e}"),
        })?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Auth {
                registry: registry.to_string(),
                reason: format!("token response from {realm} has no token"),
            })
    }

    /// GET `url` for the repository of `r`, answering auth challenges and following redirects.
    /// Returns a response with a 2xx status.
    async fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<(Response<Incoming>, String)> {
        let scope = format!("repository:{}:pull", r.repository);
        let key = format!("{}|{}", r.registry, scope);
        let mut auth: Option<String> = self
            .tokens
            .lock()
            .unwrap()
            .get(&key)
            .map(|t| format!("Bearer {t}"));
        let mut url = url.to_string();
        let mut tried_auth = false;
        let mut redirects = 0;
        let origin_host = url
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.to_string()));
        loop {
            let mut headers = Vec::new();
            if let Some(a) = accept {
                headers.push(("accept", a.to_string()));
            }
            let same_origin = url
                .parse::<Uri>()
                .ok()
                .and_then(|u| u.authority().map(|a| a.to_string()))
                == origin_host;
            if let (Some(h), true) = (&auth, same_origin) {
                headers.push(("authorization", h.clone()));
            }
            let resp = self.send_once(http::Method::GET, &url, &headers).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !tried_auth {
                tried_auth = true;
                let challenge = resp
                    .headers()
                    .get(http::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                match challenge {
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope: ch_scope,
                    }) => {
                        let scope = ch_scope.unwrap_or_else(|| scope.clone());
                        let token = self
                            .fetch_token(&r.registry, &realm, service.as_deref(), &scope, creds)
                            .await?;
                        self.tokens
                            .lock()
                            .unwrap()
                            .insert(key.clone(), token.clone());
                        auth = Some(format!("Bearer {token}"));
                    }
                    Some(Challenge::Basic) => match creds {
                        Some(c) => auth = Some(c.basic_header()),
                        None => {
                            return Err(Error::Auth {
                                registry: r.registry.clone(),
                                reason:
                                    "registry asks for basic auth and no credentials were given"
                                        .to_string(),
                            })
                        }
                    },
                    None => {
                        return Err(Error::Auth {
                            registry: r.registry.clone(),
                            reason: format!(
                                "401 from {url} without a usable WWW-Authenticate challenge"
                            ),
                        })
                    }
                }
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                let e = self.status_error(resp, &url).await;
                return Err(Error::Auth {
                    registry: r.registry.clone(),
                    reason: e.to_string(),
                });
            }
            if status.is_redirection() {
                redirects += 1;
                let loc = resp
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let Some(loc) = loc else {
                    return Err(self.status_error(resp, &url).await);
                };
                if redirects > MAX_REDIRECTS {
                    return Err(Error::Http {
                        url,
                        source: "too many redirects".into(),
                    });
                }
                url = if loc.starts_with("http://") || loc.starts_with("https://") {
                    loc
                } else {
                    let u: Uri = url.parse().map_err(|e| Error::Http {
                        url: url.clone(),
                        source: Box::new(e),
                    })?;
                    format!(
                        "{}://{}{}",
                        u.scheme_str().unwrap_or("https"),
                        u.authority().map(|a| a.as_str()).unwrap_or(""),
                        loc
                    )
                };
                continue;
            }
            if !status.is_success() {
                return Err(self.status_error(resp, &url).await);
            }
            return Ok((resp, url));
        }
    }

    /// Fetches a manifest or index by tag or digest; verifies the digest when it is known
    /// (pinned reference, or the registry's `Docker-Content-Digest`).
    pub async fn fetch_manifest(
        &self,
        r: &Reference,
        reference: &str,
        creds: Option<&Credentials>,
    ) -> Result<(Bytes, Digest, Option<String>)> {
        let url = format!("{}/manifests/{}", self.base_url(r), reference);
        let (resp, url) = self.get(r, &url, Some(MANIFEST_ACCEPT), creds).await?;
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bytes = self.read_body(resp, &url, MAX_MANIFEST_BYTES).await?;
        let actual = Digest::of(&bytes);
        let what = format!("manifest {url}");
        if let Ok(expected) = reference.parse::<Digest>() {
            expected.verify(&actual, &what)?;
        } else if let Some(expected) = header_digest {
            expected.verify(&actual, &what)?;
        }
        Ok((bytes, actual, content_type))
    }

    /// Resolves a reference to its platform manifest (through an index when there is one).
    pub async fn resolve(
        &self,
        r: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<ResolvedManifest> {
        let (bytes, digest, ct) = self.fetch_manifest(r, &r.manifest_ref(), creds).await?;
        match parse_manifest(&bytes, ct.as_deref(), &format!("manifest of {r}"))? {
            ManifestKind::Manifest(manifest) => Ok(ResolvedManifest {
                digest,
                bytes,
                manifest,
            }),
            ManifestKind::Index(index) => {
                let d = select_platform(&index, &self.cfg.os, &self.cfg.architecture).ok_or_else(
                    || Error::NoMatchingPlatform {
                        reference: r.to_string(),
                        platform: format!("{}/{}", self.cfg.os, self.cfg.architecture),
                    },
                )?;
                let (bytes, digest, ct) =
                    self.fetch_manifest(r, &d.digest.to_string(), creds).await?;
                match parse_manifest(
                    &bytes,
                    ct.as_deref(),
                    &format!("manifest {} of {r}", d.digest),
                )? {
                    ManifestKind::Manifest(manifest) => Ok(ResolvedManifest {
                        digest,
                        bytes,
                        manifest,
                    }),
                    ManifestKind::Index(_) => Err(Error::malformed(
                        format!("manifest {} of {r}", d.digest),
                        "nested index",
                    )),
                }
            }
        }
    }

    /// Starts downloading a blob. The caller hashes what it reads (see the store).
    pub async fn open_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        creds: Option<&Credentials>,
    ) -> Result<BlobStream> {
        let url = format!("{}/blobs/{}", self.base_url(r), desc.digest);
        let (resp, url) = self.get(r, &url, None, creds).await?;
        let content_length = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(BlobStream {
            body: resp.into_body(),
            url,
            stall: self.cfg.stall_timeout,
            content_length,
        })
    }

    /// Fetches a small blob (an image config) into memory, verified.
    pub async fn fetch_small_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        creds: Option<&Credentials>,
    ) -> Result<Bytes> {
        if desc.size > MAX_MANIFEST_BYTES as u64 {
            return Err(Error::malformed(
                format!("blob {}", desc.digest),
                format!("{} bytes is too large", desc.size),
            ));
        }
        let mut s = self.open_blob(r, desc, creds).await?;
        let mut out = bytes::BytesMut::new();
        while let Some(c) = s.next_chunk().await? {
            if out.len() + c.len() > desc.size as usize {
                return Err(Error::SizeMismatch {
                    what: format!("blob {} from {}", desc.digest, s.url),
                    expected: desc.size,
                    actual: (out.len() + c.len()) as u64,
                });
            }
            out.extend_from_slice(&c);
        }
        desc.digest
            .verify(&Digest::of(&out), format!("blob from {}", s.url))?;
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_schemes() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.8.9.10"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("registry.example:5000"));
        let c = RegistryClient::new(ClientConfig {
            insecure_registries: vec!["reg.lab:5000".into()],
            ..Default::default()
        });
        assert_eq!(c.scheme_for("127.0.0.1:5000"), "http");
        assert_eq!(c.scheme_for("reg.lab:5000"), "http");
        assert_eq!(c.scheme_for("reg.lab"), "https");
        assert_eq!(c.scheme_for("docker.io"), "https");
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            c.base_url(&r),
            "https://registry-1.docker.io/v2/library/busybox"
        );
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
