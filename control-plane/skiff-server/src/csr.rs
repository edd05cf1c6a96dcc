//! certificates.k8s.io/v1 CertificateSigningRequests: validation of the PEM request, the
//! requester's identity stamped on create, and the signer that issues approved kubelet client
//! certificates with the cluster CA (kube-controller-manager's csrsigning, which needs the CA
//! key and therefore runs here rather than among the API-client controllers).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, KeyUsagePurpose};
use serde_json::{json, Value};

use crate::api::status::FieldError;
use crate::api::ApiServer;
use crate::auth::User;
use crate::pki::CertAndKey;
use crate::registry;

/// Signers whose certificates this server issues: client certificates for the API server.
pub const SIGNERS: [&str; 2] = [
    "kubernetes.io/kube-apiserver-client-kubelet",
    "kubernetes.io/kube-apiserver-client",
];
/// kube-controller-manager's `--cluster-signing-duration` default, one year.
pub const DEFAULT_SIGNING_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far `notBefore` lies in the past, for clocks behind the server's: five minutes, as
/// kube's signer does, but never more than a tenth of a short lifetime, whose holder would
/// otherwise find most of it gone (and renew at once) when it receives the certificate.
const MAX_BACKDATE_SECONDS: i64 = 300;
/// kube refuses expirationSeconds below ten minutes.
const MIN_EXPIRATION_SECONDS: i64 = 600;

const KNOWN_USAGES: [&str; 22] = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
];

/// The PEM text of `spec.request` (base64 of the PEM in JSON, as Kubernetes stores bytes).
pub fn request_pem(obj: &Value) -> Result<String, String> {
    let b64 = obj
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .ok_or("spec.request is missing")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "not PEM text".to_string())
}

/// Parses and checks the signature of a PEM `CERTIFICATE REQUEST`.
pub fn parse_request(pem: &str) -> Result<CertificateSigningRequestParams, String> {
    if !pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err("no PEM block of type CERTIFICATE REQUEST".into());
    }
    CertificateSigningRequestParams::from_pem(pem).map_err(|e| e.to_string())
}

pub fn validate(obj: &Value, errors: &mut Vec<FieldError>) {
    match request_pem(obj).and_then(|pem| parse_request(&pem).map(|_| ())) {
        Ok(()) => {}
        Err(why) if obj.pointer("/spec/request").is_none() => {
            let _ = why;
            errors.push(FieldError::required("spec.request"));
        }
        Err(why) => errors.push(FieldError::invalid(
            "spec.request",
            "<bytes>",
            format!("invalid certificate request: {why}"),
        )),
    }
    match obj.pointer("/spec/signerName").and_then(Value::as_str) {
        None | Some("") => errors.push(FieldError::required("spec.signerName")),
        Some(name) => {
            let valid = name.split_once('/').is_some_and(|(domain, path)| {
                crate::admission::validation::is_dns1123_subdomain(domain)
                    && !path.is_empty()
                    && !path.contains('/')
            });
            if !valid {
                errors.push(FieldError::invalid(
                    "spec.signerName",
                    name,
                    "must be a fully qualified domain and path of the form 'example.com/signer-name'",
                ));
            }
        }
    }
    match obj.pointer("/spec/usages").and_then(Value::as_array) {
        None => errors.push(FieldError::required("spec.usages")),
        Some(usages) => {
            for (i, u) in usages.iter().enumerate() {
                let u = u.as_str().unwrap_or("");
                if !KNOWN_USAGES.contains(&u) {
                    errors.push(FieldError::invalid(
                        format!("spec.usages[{i}]"),
                        u,
                        "unknown key usage",
                    ));
                }
            }
        }
    }
    if let Some(seconds) = obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
    {
        if seconds < MIN_EXPIRATION_SECONDS {
            errors.push(FieldError::invalid(
                "spec.expirationSeconds",
                seconds,
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
    }
}

/// The requester is who sent the create, whatever the body claims, as kube-apiserver does:
/// approvers decide on this identity.
pub fn stamp_requester(obj: &mut Value, user: &User) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    obj["spec"]["username"] = json!(user.name);
    obj["spec"]["groups"] = json!(user.groups);
    if let Some(spec) = obj["spec"].as_object_mut() {
        spec.remove("uid");
        spec.remove("extra");
    }
}

fn has_condition(obj: &Value, kind: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(kind)
                    && c.get("status").and_then(Value::as_str) != Some("False")
            })
        })
}

/// kubectl's CONDITION column: `Approved,Issued`, `Pending`, `Denied`, `Failed`.
pub fn condition_summary(obj: &Value) -> String {
    let mut parts = Vec::new();
    for kind in ["Approved", "Denied", "Failed"] {
        if has_condition(obj, kind) {
            parts.push(kind);
        }
    }
    if obj
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        parts.push("Issued");
    }
    if parts.is_empty() {
        "Pending".into()
    } else {
        parts.join(",")
    }
}

/// Issues the certificate for an approved request: subject and SANs from the request, key
/// usages from `spec.usages`, lifetime from `spec.expirationSeconds`, at most `max_lifetime`
/// (`--cluster-signing-duration`), which is also the lifetime when the request names none.
pub fn sign(
    ca: &CertAndKey,
    pki_dir: &std::path::Path,
    obj: &Value,
    max_lifetime: Duration,
) -> Result<String, String> {
    let pem = request_pem(obj)?;
    let mut csr = parse_request(&pem)?;
    let usages: Vec<&str> = obj
        .pointer("/spec/usages")
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let params = &mut csr.params;
    params.key_usages = usages
        .iter()
        .filter_map(|u| match *u {
            "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
            "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
            "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
            "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
            _ => None,
        })
        .collect();
    params.extended_key_usages = usages
        .iter()
        .filter_map(|u| match *u {
            "client auth" => Some(ExtendedKeyUsagePurpose::ClientAuth),
            "server auth" => Some(ExtendedKeyUsagePurpose::ServerAuth),
            _ => None,
        })
        .collect();
    // A client certificate from this signer may never act as a CA.
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let max = i64::try_from(max_lifetime.as_secs())
        .unwrap_or(i64::MAX)
        .max(1);
    let seconds = match obj
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
    {
        Some(asked) => asked.max(MIN_EXPIRATION_SECONDS).min(max),
        None => max,
    };
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::seconds((seconds / 10).min(MAX_BACKDATE_SECONDS));
    params.not_after = now + time::Duration::seconds(seconds);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(
        uuid::Uuid::new_v4().as_bytes(),
    ));
    let issuer = crate::pki::ca_issuer(ca, pki_dir).map_err(|e| e.to_string())?;
    let cert = csr.signed_by(&issuer).map_err(|e| e.to_string())?;
    Ok(cert.pem())
}

fn ready_to_sign(obj: &Value) -> bool {
    let signer = obj
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or("");
    SIGNERS.contains(&signer)
        && has_condition(obj, "Approved")
        && !has_condition(obj, "Denied")
        && !has_condition(obj, "Failed")
        && obj
            .pointer("/status/certificate")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
}

impl ApiServer {
    async fn sign_pending(
        &self,
        ca: &CertAndKey,
        pki_dir: &std::path::Path,
        max_lifetime: Duration,
    ) -> Result<(), skiff_store::StoreError> {
        let rt = registry::find("certificates.k8s.io", "v1", "certificatesigningrequests")
            .expect("CSRs are served");
        let (items, _) = self.cache.list(&rt.key_prefix(None), None);
        for (key, obj) in items {
            if !ready_to_sign(&obj) {
                continue;
            }
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let mut updated = (*obj).clone();
            match sign(ca, pki_dir, &obj, max_lifetime) {
                Ok(pem) => {
                    updated["status"]["certificate"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()));
                    tracing::info!(csr = name, "certificate issued");
                }
                Err(why) => {
                    // A request that cannot be signed is marked failed so that its owner
                    // stops waiting, as kube's signer does.
                    let mut conditions = updated
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let now = jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string();
                    conditions.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure",
                        "message": why, "lastUpdateTime": now, "lastTransitionTime": now}));
                    updated["status"]["conditions"] = json!(conditions);
                    tracing::warn!(csr = name, error = %why, "certificate request cannot be signed");
                }
            }
            let revision = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            match self
                .store
                .update(&key, serde_json::to_vec(&updated).expect("JSON"), revision)
                .await
            {
                Ok(kv) => self.cache.wait_for(kv.mod_revision).await,
                // Changed or deleted meanwhile: the next pass sees the new version.
                Err(skiff_store::StoreError::Conflict { .. })
                | Err(skiff_store::StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Signs approved requests for as long as the server runs.
pub fn spawn_signer(
    server: Arc<ApiServer>,
    ca: CertAndKey,
    pki_dir: std::path::PathBuf,
    max_lifetime: Duration,
) {
    tokio::spawn(async move {
        let mut seen = None;
        loop {
            let revision = server.cache.revision();
            if seen != Some(revision) {
                match server.sign_pending(&ca, &pki_dir, max_lifetime).await {
                    Ok(()) => seen = Some(revision),
                    Err(e) => tracing::warn!(error = %e, "signing certificate requests"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, orgs: &[&str]) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        for o in orgs {
            dn.push(rcgen::DnType::OrganizationName, *o);
        }
        dn.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn csr_object(pem: &str, signer: &str) -> Value {
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
               "metadata": {"name": "node-csr-x"},
               "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
                        "signerName": signer, "usages": ["digital signature", "client auth"]}})
    }

    #[test]
    fn validation_checks_the_pem_and_the_signer() {
        let good = csr_object(&request("system:node:n1", &["system:nodes"]), SIGNERS[0]);
        let mut errors = Vec::new();
        validate(&good, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");

        let mut tampered = request("system:node:n1", &["system:nodes"]);
        // Flip one character of the body: the signature no longer matches.
        let i = tampered.len() / 2;
        let c = if &tampered[i..i + 1] == "A" { "B" } else { "A" };
        tampered.replace_range(i..i + 1, c);
        for (obj, path) in [
            (csr_object("not pem", SIGNERS[0]), "spec.request"),
            (csr_object(&tampered, SIGNERS[0]), "spec.request"),
            (
                csr_object(&request("a", &[]), "no-slash-here"),
                "spec.signerName",
            ),
        ] {
            let mut errors = Vec::new();
            validate(&obj, &mut errors);
            assert!(errors.iter().any(|e| e.path == path), "{path}: {errors:?}");
        }
        let mut short = good.clone();
        short["spec"]["expirationSeconds"] = json!(60);
        let mut errors = Vec::new();
        validate(&short, &mut errors);
        assert_eq!(errors[0].path, "spec.expirationSeconds");
    }

    #[test]
    fn requester_comes_from_the_request_not_the_body() {
        let mut obj = csr_object(&request("x", &[]), SIGNERS[0]);
        obj["spec"]["username"] = json!("system:admin");
        stamp_requester(
            &mut obj,
            &User {
                name: "system:bootstrap:abcdef".into(),
                groups: vec!["system:bootstrappers".into()],
            },
        );
        assert_eq!(obj["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(obj["spec"]["groups"], json!(["system:bootstrappers"]));
    }

    #[test]
    fn signing_keeps_the_subject_and_uses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::ClusterPki::load_or_create(dir.path(), &[], &[]).unwrap();
        let mut obj = csr_object(&request("system:node:n1", &["system:nodes"]), SIGNERS[0]);
        obj["spec"]["expirationSeconds"] = json!(3600);
        assert!(!ready_to_sign(&obj));
        assert_eq!(condition_summary(&obj), "Pending");
        obj["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}]});
        assert!(ready_to_sign(&obj));
        let pem = sign(&pki.ca, dir.path(), &obj, DEFAULT_SIGNING_DURATION).unwrap();
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = parsed.parse_x509().unwrap();
        let user = crate::auth::user_from_certificate(&parsed.contents).unwrap();
        assert_eq!(user.name, "system:node:n1");
        assert!(user.groups.contains(&"system:nodes".to_string()));
        let (_, ca) = x509_parser::pem::parse_x509_pem(pki.ca.cert_pem.as_bytes()).unwrap();
        let ca = ca.parse_x509().unwrap();
        // The signature itself is checked with openssl in the e2e test.
        assert_eq!(cert.issuer(), ca.subject());
        assert!(!cert.is_ca());
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 300);
        let lifetime_of = |pem: String| {
            let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            let cert = parsed.parse_x509().unwrap();
            let v = cert.validity();
            (
                v.not_after.timestamp() - v.not_before.timestamp(),
                v.not_after.timestamp() - jiff::Timestamp::now().as_second(),
            )
        };
        // --cluster-signing-duration caps what the request asks for, and is the lifetime of
        // a request that asks for none; a short one is backdated by a tenth only.
        let short = Duration::from_secs(60);
        let (total, left) = lifetime_of(sign(&pki.ca, dir.path(), &obj, short).unwrap());
        assert_eq!(total, 66);
        assert!((55..=60).contains(&left), "{left}");
        let mut unasked = obj.clone();
        unasked["spec"]
            .as_object_mut()
            .unwrap()
            .remove("expirationSeconds");
        let (total, _) = lifetime_of(sign(&pki.ca, dir.path(), &unasked, short).unwrap());
        assert_eq!(total, 66);
        let (total, _) =
            lifetime_of(sign(&pki.ca, dir.path(), &unasked, DEFAULT_SIGNING_DURATION).unwrap());
        assert_eq!(total, 365 * 24 * 3600 + 300);
        obj["status"]["certificate"] = json!("x");
        assert_eq!(condition_summary(&obj), "Approved,Issued");
        assert!(!ready_to_sign(&obj));
        let mut other = obj.clone();
        other["spec"]["signerName"] = json!("example.com/other");
        other["status"]["certificate"] = json!("");
        assert!(
            !ready_to_sign(&other),
            "other signers are left to their owners"
        );
    }
}
