//! Joining nodes before they have credentials: bootstrap-token authentication and the public
//! `kube-public/cluster-info` ConfigMap, signed per token the way kubeadm's bootstrap signer
//! does, so that a joining node can check it talked to the right cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::api::ApiServer;
use crate::auth::User;
use crate::registry;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const CLUSTER_INFO_NAMESPACE: &str = "kube-public";
pub const CLUSTER_INFO_NAME: &str = "cluster-info";
pub const JWS_PREFIX: &str = "jws-kubeconfig-";
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";

/// Why a bearer token that looks like a bootstrap token was refused; the message goes back
/// to the client, so it names the token id but never the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapTokenError {
    #[error("bootstrap token {id:?} is unknown (no Secret kube-system/bootstrap-token-{id})")]
    Unknown { id: String },
    #[error("bootstrap token {id:?} does not match its Secret")]
    WrongSecret { id: String },
    #[error("bootstrap token {id:?} expired at {expiration}")]
    Expired { id: String, expiration: String },
    #[error("bootstrap token {id:?} may not be used for authentication (usage-bootstrap-authentication is not \"true\")")]
    NotForAuthentication { id: String },
    #[error("bootstrap token {id:?}: Secret kube-system/bootstrap-token-{id} is invalid: {why}")]
    BadSecret { id: String, why: String },
}

/// Splits `<id>.<secret>` if it has the bootstrap-token shape `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let (id, secret) = token.split_once('.')?;
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The decoded `data` of a Secret as it is stored (base64 values).
fn secret_data(secret: &Value) -> BTreeMap<String, String> {
    let engine = base64::engine::general_purpose::STANDARD;
    secret
        .get("data")
        .and_then(Value::as_object)
        .map(|data| {
            data.iter()
                .filter_map(|(k, v)| {
                    let bytes = engine.decode(v.as_str()?).ok()?;
                    Some((k.clone(), String::from_utf8(bytes).ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `expiration` (RFC 3339) is at or before `now_seconds`; unparsable counts as
/// expired, as a token whose lifetime cannot be read must not live forever.
fn expired(expiration: &str, now_seconds: i64) -> bool {
    match expiration.parse::<jiff::Timestamp>() {
        Ok(t) => t.as_second() <= now_seconds,
        Err(_) => true,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a bootstrap token against its Secret (`None` when there is no such Secret).
pub fn check_token(
    id: &str,
    token_secret: &str,
    secret: Option<&Value>,
    now_seconds: i64,
) -> Result<User, BootstrapTokenError> {
    let id_owned = || id.to_string();
    let secret = secret.ok_or_else(|| BootstrapTokenError::Unknown { id: id_owned() })?;
    if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
        return Err(BootstrapTokenError::BadSecret {
            id: id_owned(),
            why: format!("its type is not {SECRET_TYPE}"),
        });
    }
    let data = secret_data(secret);
    if data.get("token-id").map(String::as_str) != Some(id) {
        return Err(BootstrapTokenError::BadSecret {
            id: id_owned(),
            why: "its token-id does not match its name".into(),
        });
    }
    let stored = data.get("token-secret").map(String::as_str).unwrap_or("");
    if !constant_time_eq(stored.as_bytes(), token_secret.as_bytes()) {
        return Err(BootstrapTokenError::WrongSecret { id: id_owned() });
    }
    if let Some(expiration) = data.get("expiration") {
        if expired(expiration, now_seconds) {
            return Err(BootstrapTokenError::Expired {
                id: id_owned(),
                expiration: expiration.clone(),
            });
        }
    }
    if data
        .get("usage-bootstrap-authentication")
        .map(String::as_str)
        != Some("true")
    {
        return Err(BootstrapTokenError::NotForAuthentication { id: id_owned() });
    }
    let mut groups = vec![BOOTSTRAPPERS_GROUP.to_string()];
    for extra in data
        .get("auth-extra-groups")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        // kube-apiserver only honours extra groups under system:bootstrappers: a token
        // Secret must not be a way to become system:masters.
        if extra.starts_with("system:bootstrappers:") && !groups.iter().any(|g| g == extra) {
            groups.push(extra.to_string());
        }
    }
    groups.push("system:authenticated".into());
    Ok(User {
        name: format!("system:bootstrap:{id}"),
        groups,
    })
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWS protected header kubeadm's signer emits, byte for byte: the verifier hashes the
/// header as sent, so its exact form matters to interoperate.
fn jws_header(token_id: &str) -> String {
    format!(r#"{{"alg":"HS256","kid":"{token_id}"}}"#)
}

fn hs256(key: &[u8], input: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, input).as_ref().to_vec()
}

/// A detached JWS (`header..signature`) over `payload`, HS256 keyed with the whole token
/// `<id>.<secret>`, as kubeadm's bootstrap signer computes it.
pub fn sign_detached(token_id: &str, token_secret: &str, payload: &[u8]) -> String {
    let header = b64url(jws_header(token_id).as_bytes());
    let input = format!("{header}.{}", b64url(payload));
    let key = format!("{token_id}.{token_secret}");
    let signature = b64url(&hs256(key.as_bytes(), input.as_bytes()));
    format!("{header}..{signature}")
}

/// The cluster-info kubeconfig: the CA and the server URL, no credentials.
pub fn cluster_info_kubeconfig(server_url: &str, ca_pem: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server_url}\ncontexts: null\ncurrent-context: \"\"\npreferences: {{}}\nusers: null\n"
    )
}

/// The `data` cluster-info should have now: the kubeconfig and one signature per token that
/// is valid and allowed for signing.
pub fn cluster_info_data<'a>(
    kubeconfig: &str,
    token_secrets: impl Iterator<Item = &'a Value>,
    now_seconds: i64,
) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([("kubeconfig".to_string(), kubeconfig.to_string())]);
    for secret in token_secrets {
        if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) {
            continue;
        }
        let fields = secret_data(secret);
        let (Some(id), Some(token_secret)) = (fields.get("token-id"), fields.get("token-secret"))
        else {
            continue;
        };
        if parse_token(&format!("{id}.{token_secret}")).is_none()
            || fields.get("usage-bootstrap-signing").map(String::as_str) != Some("true")
            || fields
                .get("expiration")
                .is_some_and(|e| expired(e, now_seconds))
        {
            continue;
        }
        data.insert(
            format!("{JWS_PREFIX}{id}"),
            sign_detached(id, token_secret, kubeconfig.as_bytes()),
        );
    }
    data
}

fn cluster_info_key() -> String {
    registry::find("", "v1", "configmaps")
        .expect("configmaps are served")
        .key(Some(CLUSTER_INFO_NAMESPACE), CLUSTER_INFO_NAME)
}

/// Whether an unauthenticated request may go ahead: only a read of cluster-info, which is
/// how a node that holds nothing but a token finds the cluster's CA.
pub fn anonymous_allowed(method: &http::Method, path: &str) -> bool {
    method == http::Method::GET
        && path.trim_end_matches('/')
            == format!("/api/v1/namespaces/{CLUSTER_INFO_NAMESPACE}/configmaps/{CLUSTER_INFO_NAME}")
}

pub fn anonymous_user() -> User {
    User {
        name: "system:anonymous".into(),
        groups: vec!["system:unauthenticated".into()],
    }
}

impl ApiServer {
    /// Authenticates `<id>.<secret>` bearer tokens against their Secrets; `None` when the
    /// token does not have the bootstrap-token shape.
    pub fn authenticate_bootstrap_token(
        &self,
        token: &str,
    ) -> Option<Result<User, BootstrapTokenError>> {
        let (id, token_secret) = parse_token(token)?;
        let key = registry::find("", "v1", "secrets")
            .expect("secrets are served")
            .key(Some("kube-system"), &format!("bootstrap-token-{id}"));
        let secret = self.cache.get(&key);
        Some(check_token(
            id,
            token_secret,
            secret.as_deref(),
            jiff::Timestamp::now().as_second(),
        ))
    }

    /// Brings cluster-info in line with the token Secrets; returns whether it wrote.
    async fn sync_cluster_info(&self, kubeconfig: &str) -> Result<bool, skiff_store::StoreError> {
        let secrets_prefix = registry::find("", "v1", "secrets")
            .expect("secrets are served")
            .key_prefix(Some("kube-system"));
        let (secrets, _) = self.cache.list(&secrets_prefix, None);
        let data = cluster_info_data(
            kubeconfig,
            secrets.iter().map(|(_, s)| s.as_ref()),
            jiff::Timestamp::now().as_second(),
        );
        let key = cluster_info_key();
        let current = self.cache.get(&key);
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        match current {
            None => {
                let obj = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": CLUSTER_INFO_NAME, "namespace": CLUSTER_INFO_NAMESPACE,
                                 "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now},
                    "data": data,
                });
                match self
                    .store
                    .create(&key, serde_json::to_vec(&obj).expect("JSON"))
                    .await
                {
                    Ok(kv) => {
                        self.cache.wait_for(kv.mod_revision).await;
                        Ok(true)
                    }
                    Err(skiff_store::StoreError::AlreadyExists { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(current) => {
                if current.get("data") == Some(&json!(data)) {
                    return Ok(false);
                }
                let revision = current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default();
                let mut obj = (*current).clone();
                obj["data"] = json!(data);
                if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                let kv = self
                    .store
                    .update(&key, serde_json::to_vec(&obj).expect("JSON"), revision)
                    .await?;
                self.cache.wait_for(kv.mod_revision).await;
                Ok(true)
            }
        }
    }
}

/// Keeps `kube-public/cluster-info` current for as long as the server runs: created at
/// start, re-signed whenever the cache moves (tokens created, deleted or expiring).
pub fn spawn_cluster_info_signer(server: Arc<ApiServer>, server_url: String, ca_pem: String) {
    let kubeconfig = cluster_info_kubeconfig(&server_url, &ca_pem);
    tokio::spawn(async move {
        let mut seen = None;
        let mut last_full_pass = std::time::Instant::now();
        loop {
            let revision = server.cache.revision();
            // Expiry changes the answer without any write, hence the periodic pass too.
            if seen != Some(revision) || last_full_pass.elapsed() >= Duration::from_secs(30) {
                match server.sync_cluster_info(&kubeconfig).await {
                    Ok(wrote) => {
                        if wrote {
                            tracing::debug!("cluster-info re-signed");
                        }
                        seen = Some(server.cache.revision());
                        last_full_pass = std::time::Instant::now();
                    }
                    Err(e) => tracing::warn!(error = %e, "updating kube-public/cluster-info"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_secret(id: &str, secret: &str, extra: &[(&str, &str)]) -> Value {
        let e = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut data = serde_json::Map::new();
        data.insert("token-id".into(), e(id).into());
        data.insert("token-secret".into(), e(secret).into());
        for (k, v) in extra {
            data.insert(k.to_string(), e(v).into());
        }
        json!({"type": SECRET_TYPE, "metadata": {"name": format!("bootstrap-token-{id}")}, "data": data})
    }

    #[test]
    fn token_shape() {
        assert_eq!(
            parse_token("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        for bad in [
            "abcde.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcdeF",
            "abcdef0123456789abcdef",
            "abcdef.0123456789abcdef0",
            "",
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn valid_token_gives_bootstrap_user_with_only_bootstrapper_extra_groups() {
        let s = token_secret(
            "abcdef",
            "0123456789abcdef",
            &[
                ("usage-bootstrap-authentication", "true"),
                ("expiration", "2030-01-01T00:00:00Z"),
                (
                    "auth-extra-groups",
                    "system:bootstrappers:kubeadm:default-node-token,system:masters",
                ),
            ],
        );
        let now = "2029-12-31T23:59:59Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let user = check_token("abcdef", "0123456789abcdef", Some(&s), now).unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            [
                "system:bootstrappers",
                "system:bootstrappers:kubeadm:default-node-token",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn refusals_say_why() {
        let now = "2030-01-01T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let expired_secret = token_secret(
            "abcdef",
            "0123456789abcdef",
            &[
                ("usage-bootstrap-authentication", "true"),
                ("expiration", "2030-01-01T00:00:00Z"),
            ],
        );
        assert_eq!(
            check_token("abcdef", "0123456789abcdef", Some(&expired_secret), now),
            Err(BootstrapTokenError::Expired {
                id: "abcdef".into(),
                expiration: "2030-01-01T00:00:00Z".into()
            })
        );
        assert!(check_token("abcdef", "0123456789abcdef", Some(&expired_secret), now - 1).is_ok());
        assert_eq!(
            check_token("abcdef", "0123456789abcdef", None, now),
            Err(BootstrapTokenError::Unknown {
                id: "abcdef".into()
            })
        );
        assert_eq!(
            check_token("abcdef", "xxxxxxxxxxxxxxxx", Some(&expired_secret), now - 1),
            Err(BootstrapTokenError::WrongSecret {
                id: "abcdef".into()
            })
        );
        let signing_only = token_secret(
            "abcdef",
            "0123456789abcdef",
            &[("usage-bootstrap-signing", "true")],
        );
        assert_eq!(
            check_token("abcdef", "0123456789abcdef", Some(&signing_only), now),
            Err(BootstrapTokenError::NotForAuthentication {
                id: "abcdef".into()
            })
        );
        let mut wrong_type = signing_only.clone();
        wrong_type["type"] = json!("Opaque");
        assert!(matches!(
            check_token("abcdef", "0123456789abcdef", Some(&wrong_type), now),
            Err(BootstrapTokenError::BadSecret { .. })
        ));
        let garbled = token_secret(
            "abcdef",
            "0123456789abcdef",
            &[
                ("usage-bootstrap-authentication", "true"),
                ("expiration", "next tuesday"),
            ],
        );
        assert!(matches!(
            check_token("abcdef", "0123456789abcdef", Some(&garbled), now),
            Err(BootstrapTokenError::Expired { .. })
        ));
        let message = BootstrapTokenError::WrongSecret {
            id: "abcdef".into(),
        }
        .to_string();
        assert!(!message.contains("0123456789abcdef"));
    }

    #[test]
    fn detached_jws_matches_rfc7515_hs256_construction() {
        // Recomputed independently of sign_detached: HMAC-SHA256 over
        // BASE64URL(header) "." BASE64URL(payload), keyed with the whole token.
        let jws = sign_detached("abcdef", "0123456789abcdef", b"hello");
        let (header, rest) = jws.split_once("..").expect("detached form");
        let header_json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        let header_value: Value = serde_json::from_slice(&header_json).unwrap();
        assert_eq!(header_value, json!({"alg": "HS256", "kid": "abcdef"}));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"abcdef.0123456789abcdef");
        let input = format!("{header}.{}", b64url(b"hello"));
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(rest)
            .unwrap();
        assert!(ring::hmac::verify(&key, input.as_bytes(), &signature).is_ok());
        assert_ne!(jws, sign_detached("abcdef", "0123456789abcdeg", b"hello"));
        assert_ne!(jws, sign_detached("abcdef", "0123456789abcdef", b"hellO"));
    }

    #[test]
    fn cluster_info_signs_only_valid_signing_tokens() {
        let now = "2030-01-01T00:00:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let good = token_secret(
            "aaaaaa",
            "0123456789abcdef",
            &[("usage-bootstrap-signing", "true")],
        );
        let expired_one = token_secret(
            "bbbbbb",
            "0123456789abcdef",
            &[
                ("usage-bootstrap-signing", "true"),
                ("expiration", "2029-01-01T00:00:00Z"),
            ],
        );
        let no_signing = token_secret("cccccc", "0123456789abcdef", &[]);
        let mut opaque = token_secret(
            "dddddd",
            "0123456789abcdef",
            &[("usage-bootstrap-signing", "true")],
        );
        opaque["type"] = json!("Opaque");
        let kc = cluster_info_kubeconfig("https://10.0.0.1:6443", "CA");
        let data = cluster_info_data(
            &kc,
            [&good, &expired_one, &no_signing, &opaque].into_iter(),
            now,
        );
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["jws-kubeconfig-aaaaaa", "kubeconfig"]
        );
        assert_eq!(
            data["jws-kubeconfig-aaaaaa"],
            sign_detached("aaaaaa", "0123456789abcdef", kc.as_bytes())
        );
        assert!(kc.contains("server: https://10.0.0.1:6443"));
    }

    #[test]
    fn only_cluster_info_reads_are_anonymous() {
        let path = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
        assert!(anonymous_allowed(&http::Method::GET, path));
        assert!(!anonymous_allowed(&http::Method::PUT, path));
        assert!(!anonymous_allowed(
            &http::Method::GET,
            "/api/v1/namespaces/kube-public/configmaps"
        ));
        assert!(!anonymous_allowed(
            &http::Method::GET,
            "/api/v1/namespaces/kube-system/configmaps/cluster-info"
        ));
    }
}
