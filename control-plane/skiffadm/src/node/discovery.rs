//! Token discovery, as kubeadm does it: a joining node reads the public
//! `kube-public/cluster-info` ConfigMap without trusting the server's certificate, then trusts
//! what it read only if (1) the detached JWS the server published for this token id verifies
//! with the token's secret — proof the server knows the token — and (2) the CA in it hashes
//! to the `--discovery-token-ca-cert-hash` pin — proof it is the cluster the admin meant.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::ConfigMap;

use crate::token;

pub const JWS_PREFIX: &str = "jws-kubeconfig-";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    #[error("--discovery-token-ca-cert-hash {0:?} is malformed: expected sha256:<64 hex digits> (skiffadm init prints it; `skiffadm token create --print-join-command` prints it again)")]
    BadPin(String),
    #[error("{endpoint} does not answer as a Skiff (Kubernetes) API server: {why}")]
    NotAServer { endpoint: String, why: String },
    #[error("{endpoint} has no kube-public/cluster-info ConfigMap: it is an API server, but not one set up by `skiffadm init`")]
    NoClusterInfo { endpoint: String },
    #[error("the server publishes no signature for token id {id:?}: the token is unknown or expired (create a new one on the control plane: `skiffadm token create --print-join-command`)")]
    UnknownToken { id: String },
    #[error("the cluster-info signature for token id {id:?} does not verify with this token's secret: the token is wrong, or something between here and the server changed cluster-info")]
    BadSignature { id: String },
    #[error("the server refuses token id {id:?}: {message}")]
    TokenRefused { id: String, message: String },
    #[error("cluster-info is malformed: {0}")]
    BadClusterInfo(String),
    #[error("the cluster's CA does not match the pin: the server's CA hashes to {found}, --discovery-token-ca-cert-hash says {expected}; refusing to trust this server (wrong cluster, or a man in the middle)")]
    CaMismatch { expected: String, found: String },
}

/// Checks the shape of a `sha256:<hex>` pin, lower-casing it.
pub fn parse_pin(pin: &str) -> Result<String, DiscoveryError> {
    let bad = || DiscoveryError::BadPin(pin.into());
    let hex = pin.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Verifies a detached JWS (`header..signature`, HS256) over `payload`, keyed with the whole
/// token `<id>.<secret>`, whose header must name `id` as its key id.
pub fn verify_detached(
    jws: &str,
    id: &str,
    secret: &str,
    payload: &[u8],
) -> Result<(), DiscoveryError> {
    let bad = || DiscoveryError::BadSignature { id: id.into() };
    let (header, signature) = jws.split_once("..").ok_or_else(bad)?;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header_json: serde_json::Value = engine
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(bad)?;
    if header_json["alg"] != "HS256" || header_json["kid"] != id {
        return Err(bad());
    }
    let signature = engine.decode(signature).map_err(|_| bad())?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, format!("{id}.{secret}").as_bytes());
    let input = format!("{header}.{}", b64url(payload));
    ring::hmac::verify(&key, input.as_bytes(), &signature).map_err(|_| bad())
}

/// What discovery yields: the server URL cluster-info names and the CA (PEM) to trust.
#[derive(Debug, PartialEq, Eq)]
pub struct Discovered {
    pub server: String,
    pub ca_pem: Vec<u8>,
}

/// Checks cluster-info's `data` for token `id.secret` and the pinned CA hash.
pub fn verify_cluster_info(
    data: &BTreeMap<String, String>,
    id: &str,
    secret: &str,
    pin: &str,
) -> Result<Discovered, DiscoveryError> {
    let kubeconfig = data
        .get("kubeconfig")
        .ok_or_else(|| DiscoveryError::BadClusterInfo("it has no kubeconfig".into()))?;
    let jws = data
        .get(&format!("{JWS_PREFIX}{id}"))
        .ok_or_else(|| DiscoveryError::UnknownToken { id: id.into() })?;
    verify_detached(jws, id, secret, kubeconfig.as_bytes())?;
    let kc: kube::config::Kubeconfig = serde_yaml::from_str(kubeconfig)
        .map_err(|e| DiscoveryError::BadClusterInfo(format!("its kubeconfig: {e}")))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| DiscoveryError::BadClusterInfo("its kubeconfig has no cluster".into()))?;
    let ca_pem = cluster
        .certificate_authority_data
        .as_deref()
        .and_then(|d| {
            base64::engine::general_purpose::STANDARD
                .decode(d.trim())
                .ok()
        })
        .ok_or_else(|| {
            DiscoveryError::BadClusterInfo(
                "its kubeconfig has no certificate-authority-data".into(),
            )
        })?;
    let found = token::ca_cert_hash(&ca_pem)
        .map_err(|e| DiscoveryError::BadClusterInfo(format!("its CA: {e}")))?;
    let expected = parse_pin(pin)?;
    if found != expected {
        return Err(DiscoveryError::CaMismatch { expected, found });
    }
    Ok(Discovered {
        server: cluster.server.clone().unwrap_or_default(),
        ca_pem,
    })
}

/// Reads cluster-info from `endpoint` (`host:port`) anonymously. The server's certificate is
/// not checked on this one request: the node has no CA yet; [`verify_cluster_info`] is what
/// makes the answer trustworthy.
pub async fn fetch_cluster_info(
    endpoint: &str,
) -> Result<BTreeMap<String, String>, DiscoveryError> {
    let not_server = |why: String| DiscoveryError::NotAServer {
        endpoint: endpoint.into(),
        why,
    };
    let uri: http::Uri = format!("https://{endpoint}")
        .parse()
        .map_err(|e| not_server(format!("{endpoint:?} is not host:port ({e})")))?;
    let mut config = kube::Config::new(uri);
    config.accept_invalid_certs = true;
    // An empty trust store rather than the system's: a fresh machine may have none, and
    // nothing is trusted on this request anyway.
    config.root_cert = Some(Vec::new());
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(20));
    let client = kube::Client::try_from(config).map_err(|e| not_server(e.to_string()))?;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "kube-public");
    match api.get("cluster-info").await {
        Ok(cm) => Ok(cm.data.unwrap_or_default()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(DiscoveryError::NoClusterInfo {
            endpoint: endpoint.into(),
        }),
        Err(kube::Error::Api(s)) => Err(not_server(format!(
            "reading kube-public/cluster-info anonymously: {} {}",
            s.code, s.message
        ))),
        Err(e) => Err(not_server(e.to_string())),
    }
}

/// Asks the server — trusted now, through the pinned CA — whether it accepts the token.
/// cluster-info's signatures change only when token Secrets do, so a token that expired
/// since may still have one; the agent's bootstrap would then fail after join had installed
/// it.
pub async fn check_token_accepted(
    bootstrap_kubeconfig: &str,
    token_id: &str,
) -> Result<(), DiscoveryError> {
    let refused = |message: String| DiscoveryError::TokenRefused {
        id: token_id.into(),
        message,
    };
    let kc: kube::config::Kubeconfig =
        serde_yaml::from_str(bootstrap_kubeconfig).map_err(|e| refused(e.to_string()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| refused(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(20));
    let client = kube::Client::try_from(config).map_err(|e| refused(e.to_string()))?;
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "kube-public");
    match api.get("cluster-info").await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(refused(format!("{} {}", s.code, s.message))),
        Err(e) => Err(refused(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = include_str!("../../tests/fixtures/ca.crt");
    const PIN: &str = "sha256:7b3683e0faee68aabcbdf55506671cea882db67f5c94994aab9def0a400948f7";

    fn cluster_info(signed_for: &[(&str, &str)]) -> BTreeMap<String, String> {
        let kubeconfig =
            skiff_server::bootstrap::cluster_info_kubeconfig("https://10.88.0.11:6443", CA);
        let mut data = BTreeMap::from([("kubeconfig".to_string(), kubeconfig.clone())]);
        for (id, secret) in signed_for {
            // Signed by the server's own signer, so the two sides are checked together.
            data.insert(
                format!("{JWS_PREFIX}{id}"),
                skiff_server::bootstrap::sign_detached(id, secret, kubeconfig.as_bytes()),
            );
        }
        data
    }

    #[test]
    fn good_token_and_pin_yield_the_ca() {
        let data = cluster_info(&[
            ("abcdef", "0123456789abcdef"),
            ("zzzzzz", "0000000000000000"),
        ]);
        let d = verify_cluster_info(&data, "abcdef", "0123456789abcdef", PIN).unwrap();
        assert_eq!(d.server, "https://10.88.0.11:6443");
        assert_eq!(d.ca_pem, CA.as_bytes());
        // Upper-case hex is the same pin.
        assert!(verify_cluster_info(
            &data,
            "abcdef",
            "0123456789abcdef",
            &PIN.to_uppercase().replace("SHA256", "sha256")
        )
        .is_ok());
    }

    #[test]
    fn wrong_secret_is_refused() {
        let data = cluster_info(&[("abcdef", "0123456789abcdef")]);
        assert_eq!(
            verify_cluster_info(&data, "abcdef", "ffffffffffffffff", PIN),
            Err(DiscoveryError::BadSignature {
                id: "abcdef".into()
            })
        );
    }

    #[test]
    fn unknown_id_is_refused() {
        let data = cluster_info(&[("abcdef", "0123456789abcdef")]);
        let e = verify_cluster_info(&data, "qqqqqq", "0123456789abcdef", PIN).unwrap_err();
        assert_eq!(
            e,
            DiscoveryError::UnknownToken {
                id: "qqqqqq".into()
            }
        );
        assert!(e.to_string().contains("unknown or expired"), "{e}");
    }

    #[test]
    fn a_signature_made_for_another_id_does_not_verify() {
        // The JWS of token A copied under token B's key: the header's kid gives it away.
        let mut data = cluster_info(&[("abcdef", "0123456789abcdef")]);
        let jws = data[&format!("{JWS_PREFIX}abcdef")].clone();
        data.insert(format!("{JWS_PREFIX}bbbbbb"), jws);
        assert_eq!(
            verify_cluster_info(&data, "bbbbbb", "0123456789abcdef", PIN),
            Err(DiscoveryError::BadSignature {
                id: "bbbbbb".into()
            })
        );
    }

    #[test]
    fn a_changed_kubeconfig_does_not_verify() {
        let mut data = cluster_info(&[("abcdef", "0123456789abcdef")]);
        let k = data["kubeconfig"].replace("10.88.0.11", "10.66.6.6");
        data.insert("kubeconfig".into(), k);
        assert!(matches!(
            verify_cluster_info(&data, "abcdef", "0123456789abcdef", PIN),
            Err(DiscoveryError::BadSignature { .. })
        ));
    }

    #[test]
    fn ca_hash_mismatch_names_both_hashes() {
        let data = cluster_info(&[("abcdef", "0123456789abcdef")]);
        let other = format!("sha256:{}", "0".repeat(64));
        let e = verify_cluster_info(&data, "abcdef", "0123456789abcdef", &other).unwrap_err();
        assert_eq!(
            e,
            DiscoveryError::CaMismatch {
                expected: other.clone(),
                found: PIN.into()
            }
        );
        let msg = e.to_string();
        assert!(msg.contains(PIN) && msg.contains(&other), "{msg}");
    }

    #[test]
    fn pins_are_checked_for_shape() {
        assert_eq!(parse_pin(PIN).unwrap(), PIN);
        for bad in [
            "7b3683e0faee68aabcbdf55506671cea882db67f5c94994aab9def0a400948f7",
            "sha256:7b36",
            "md5:7b3683e0faee68aabcbdf55506671cea882db67f5c94994aab9def0a400948f7",
            "sha256:zz3683e0faee68aabcbdf55506671cea882db67f5c94994aab9def0a400948f7",
        ] {
            assert_eq!(parse_pin(bad), Err(DiscoveryError::BadPin(bad.into())));
        }
    }

    #[test]
    fn missing_kubeconfig_is_malformed() {
        let data = BTreeMap::from([("jws-kubeconfig-abcdef".to_string(), "x..y".to_string())]);
        assert!(matches!(
            verify_cluster_info(&data, "abcdef", "0123456789abcdef", PIN),
            Err(DiscoveryError::BadClusterInfo(_))
        ));
    }
}
