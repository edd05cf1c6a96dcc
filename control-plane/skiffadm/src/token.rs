//! Bootstrap tokens, stored as kubeadm stores them: Secrets `bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` in kube-system.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rand::Rng;
use sha2::{Digest, Sha256};

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token {0:?} is malformed: expected [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    Malformed(String),
    #[error("--ttl {0:?}: use a duration like 24h, 90m or 0 (never expires)")]
    BadTtl(String),
    #[error("the CA certificate is unreadable: {0}")]
    BadCa(String),
}

fn random(len: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn generate() -> String {
    format!("{}.{}", random(6), random(16))
}

/// Splits a token into id and secret, checking the format.
pub fn parse(token: &str) -> Result<(String, String), TokenError> {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match token.split_once('.') {
        Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok((id.into(), secret.into())),
        _ => Err(TokenError::Malformed(token.into())),
    }
}

/// `24h`, `90m`, `3600s`, `0`: seconds (0 = never expires).
pub fn parse_ttl(ttl: &str) -> Result<u64, TokenError> {
    let bad = || TokenError::BadTtl(ttl.into());
    if ttl == "0" {
        return Ok(0);
    }
    let (n, unit) = ttl.split_at(ttl.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = n.parse().map_err(|_| bad())?;
    match unit {
        "s" => Ok(n),
        "m" => Ok(n * 60),
        "h" => Ok(n * 3600),
        _ => Err(bad()),
    }
}

/// kubeadm's `--discovery-token-ca-cert-hash`: SHA-256 of the CA's SubjectPublicKeyInfo.
pub fn ca_cert_hash(ca_pem: &[u8]) -> Result<String, TokenError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(ca_pem).map_err(|e| TokenError::BadCa(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| TokenError::BadCa(e.to_string()))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    let digest = Sha256::digest(spki);
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

pub fn secret(token: &str, ttl_seconds: u64, description: &str) -> Result<Secret, TokenError> {
    let (id, secret) = parse(token)?;
    let mut data = BTreeMap::from([
        ("token-id".to_string(), id.clone()),
        ("token-secret".to_string(), secret),
        (
            "usage-bootstrap-authentication".to_string(),
            "true".to_string(),
        ),
        ("usage-bootstrap-signing".to_string(), "true".to_string()),
        (
            "auth-extra-groups".to_string(),
            "system:bootstrappers:kubeadm:default-node-token".to_string(),
        ),
    ]);
    if ttl_seconds > 0 {
        let expires = jiff::Timestamp::now().as_second() + ttl_seconds as i64;
        let ts = jiff::Timestamp::from_second(expires)
            .expect("a valid timestamp")
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        data.insert("expiration".into(), ts);
    }
    if !description.is_empty() {
        data.insert("description".into(), description.into());
    }
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        string_data: Some(data),
        ..Default::default()
    })
}

pub async fn create(
    client: &kube::Client,
    token: &str,
    ttl_seconds: u64,
    description: &str,
) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    api.create(
        &PostParams::default(),
        &secret(token, ttl_seconds, description)?,
    )
    .await?;
    Ok(())
}

pub struct Listed {
    pub token: String,
    pub expires: Option<String>,
    pub description: String,
}

fn field(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

pub async fn list(client: &kube::Client) -> anyhow::Result<Vec<Listed>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let secrets = api
        .list(&ListParams::default().fields(&format!("type={SECRET_TYPE}")))
        .await?;
    Ok(secrets
        .items
        .iter()
        .map(|s| Listed {
            token: format!("{}.{}", field(s, "token-id"), field(s, "token-secret")),
            expires: Some(field(s, "expiration")).filter(|e| !e.is_empty()),
            description: field(s, "description"),
        })
        .collect())
}

/// Deletes by id or whole token.
pub async fn delete(client: &kube::Client, id_or_token: &str) -> anyhow::Result<()> {
    let id = id_or_token.split('.').next().unwrap_or_default();
    if id.len() != 6 {
        return Err(TokenError::Malformed(id_or_token.into()).into());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    api.delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
        .await?;
    Ok(())
}

/// The CA in a kubeconfig's current cluster, PEM.
pub fn kubeconfig_ca(kubeconfig: &kube::config::Kubeconfig) -> anyhow::Result<(String, Vec<u8>)> {
    let context_name = kubeconfig.current_context.clone().unwrap_or_default();
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone());
    let cluster_name = context.map(|c| c.cluster).unwrap_or_default();
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| anyhow::anyhow!("the kubeconfig has no cluster {cluster_name:?}"))?;
    let ca = cluster.certificate_authority_data.ok_or_else(|| {
        anyhow::anyhow!("the kubeconfig's cluster has no certificate-authority-data")
    })?;
    let pem = base64::engine::general_purpose::STANDARD.decode(ca.trim())?;
    Ok((cluster.server.unwrap_or_default(), pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadms_shape() {
        let t = generate();
        assert!(parse(&t).is_ok(), "{t}");
        assert!(parse("abcdef.0123456789abcdef").is_ok());
        for bad in [
            "abc.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef0123456789abcdef",
            "abcdef.0123456789abcde!",
        ] {
            assert_eq!(parse(bad), Err(TokenError::Malformed(bad.into())));
        }
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h").unwrap(), 86400);
        assert_eq!(parse_ttl("90m").unwrap(), 5400);
        assert_eq!(parse_ttl("0").unwrap(), 0);
        assert!(parse_ttl("1d").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn secret_layout_matches_kubeadm() {
        let s = secret("abcdef.0123456789abcdef", 3600, "for worker-1").unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("bootstrap-token-abcdef"));
        assert_eq!(s.type_.as_deref(), Some(SECRET_TYPE));
        let d = s.string_data.unwrap();
        assert_eq!(d["token-secret"], "0123456789abcdef");
        assert_eq!(d["usage-bootstrap-authentication"], "true");
        assert!(d["expiration"].ends_with('Z'));
    }

    #[test]
    fn ca_hash_is_over_the_public_key_info() {
        // The fixture CA was made with openssl; the expected value is what kubeadm's docs
        // compute: `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
        let ca = include_str!("../tests/fixtures/ca.crt");
        assert_eq!(
            ca_cert_hash(ca.as_bytes()).unwrap(),
            "sha256:7b3683e0faee68aabcbdf55506671cea882db67f5c94994aab9def0a400948f7"
        );
        assert!(ca_cert_hash(b"not a certificate").is_err());
    }
}
