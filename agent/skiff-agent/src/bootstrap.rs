//! TLS bootstrap (kubelet's `--bootstrap-kubeconfig`): a node that holds only a bootstrap
//! token makes its own key, files a CertificateSigningRequest for `system:node:<name>`, waits
//! for the control plane to approve and sign it, and writes the kubeconfig it runs with.
//! Later it renews that certificate the same way, under its own node identity, once 80% of
//! the certificate's lifetime has passed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const CERT_FILE: &str = "skiff-agent-client.crt";
pub const KEY_FILE: &str = "skiff-agent-client.key";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bootstrap kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("generating the node key or request: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("filing the certificate request: {0}")]
    Api(#[from] kube::Error),
    #[error("certificate request {name} was {verdict}: {message}")]
    Refused {
        name: String,
        verdict: String,
        message: String,
    },
    #[error("client certificate {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("certificate request {name} was not signed within {waited:?}; is the control plane approving node CSRs? (`kubectl get csr`)")]
    Timeout { name: String, waited: Duration },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The server URL and CA (PEM) of a kubeconfig's current cluster.
pub fn cluster_of(path: &Path) -> Result<(String, Vec<u8>), BootstrapError> {
    let bad = |message: String| BootstrapError::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let context = kc
        .current_context
        .as_ref()
        .and_then(|cur| kc.contexts.iter().find(|c| &c.name == cur))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = kc
        .clusters
        .iter()
        .find(|c| context.is_none() || Some(&c.name) == context.as_ref())
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| bad("no cluster for the current context".into()))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| bad("the cluster has no server".into()))?;
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| bad(format!("certificate-authority-data: {e}")))?,
        (None, Some(file)) => std::fs::read(file).map_err(io_err(Path::new(file)))?,
        (None, None) => return Err(bad("the cluster has no certificate authority".into())),
    };
    Ok((server, ca))
}

/// A new P-256 key and the PEM request for `CN=system:node:<node>, O=system:nodes`.
pub fn node_request(node: &str) -> Result<(String, String), BootstrapError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    let request = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), request))
}

/// A kubeconfig naming the certificate and key files, so that rotation only replaces them.
pub fn node_kubeconfig(server: &str, ca_pem: &[u8], cert: &Path, key: &Path) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: node\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: node\ncurrent-context: skiff\npreferences: {{}}\n",
        cert.display(),
        key.display()
    )
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), BootstrapError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Files the request and waits for its certificate (PEM).
async fn request_certificate(
    client: kube::Client,
    node: &str,
    request_pem: &str,
    wait: Duration,
) -> Result<Vec<u8>, BootstrapError> {
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(format!("node-csr-{node}-")),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem.as_bytes().to_vec()),
            signer_name: KUBELET_CLIENT_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = api.create(&PostParams::default(), &csr).await?;
    let name = created.metadata.name.unwrap_or_default();
    tracing::info!(
        csr = name,
        "certificate request filed; waiting for approval and signing"
    );
    let started = std::time::Instant::now();
    loop {
        let current = api.get(&name).await?;
        if let Some(status) = &current.status {
            for c in status.conditions.iter().flatten() {
                if matches!(c.type_.as_str(), "Denied" | "Failed") && c.status != "False" {
                    return Err(BootstrapError::Refused {
                        name,
                        verdict: c.type_.to_lowercase(),
                        message: c.message.clone().unwrap_or_default(),
                    });
                }
            }
            if let Some(cert) = status.certificate.as_ref().filter(|c| !c.0.is_empty()) {
                return Ok(cert.0.clone());
            }
        }
        if started.elapsed() >= wait {
            return Err(BootstrapError::Timeout { name, waited: wait });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Makes sure `kubeconfig` exists: if it does not and `bootstrap` does, obtains a client
/// certificate for `node` with the bootstrap credentials and writes the kubeconfig, with the
/// key and certificate under `cert_dir`. Returns whether it bootstrapped.
pub async fn ensure_kubeconfig(
    kubeconfig: &Path,
    bootstrap: Option<&Path>,
    cert_dir: &Path,
    node: &str,
    wait: Duration,
) -> Result<bool, BootstrapError> {
    if kubeconfig.exists() {
        return Ok(false);
    }
    let Some(bootstrap) = bootstrap else {
        return Ok(false);
    };
    let (server, ca) = cluster_of(bootstrap)?;
    let config =
        kube::config::Kubeconfig::read_from(bootstrap).map_err(|e| BootstrapError::Kubeconfig {
            path: bootstrap.to_path_buf(),
            message: e.to_string(),
        })?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|e| BootstrapError::Kubeconfig {
            path: bootstrap.to_path_buf(),
            message: e.to_string(),
        })?;
    let client = kube::Client::try_from(config)?;
    let (key_pem, request_pem) = node_request(node)?;
    let cert_pem = request_certificate(client, node, &request_pem, wait).await?;
    std::fs::create_dir_all(cert_dir).map_err(io_err(cert_dir))?;
    let (cert, key) = (cert_dir.join(CERT_FILE), cert_dir.join(KEY_FILE));
    write_private(&key, key_pem.as_bytes())?;
    write_private(&cert, &cert_pem)?;
    if let Some(parent) = kubeconfig.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    // Written last: its presence means the bootstrap finished.
    write_private(
        kubeconfig,
        node_kubeconfig(&server, &ca, &cert, &key).as_bytes(),
    )?;
    tracing::info!(kubeconfig = %kubeconfig.display(), "TLS bootstrap done");
    Ok(true)
}

/// The share of a client certificate's lifetime after which it is renewed (kubelet renews
/// between 70% and 90%).
pub const RENEW_AT_PERCENT: i64 = 80;

/// When (Unix seconds) a certificate valid from `not_before` to `not_after` is due for
/// renewal.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    if not_after <= not_before {
        // A certificate that is never valid: renew now.
        return i64::MIN;
    }
    not_before + (not_after - not_before) * RENEW_AT_PERCENT / 100
}

/// How long to wait before renewing, from `now`: zero when it is already due.
pub fn renewal_delay(not_before: i64, not_after: i64, now: i64) -> Duration {
    Duration::from_secs(renew_at(not_before, not_after).saturating_sub(now).max(0) as u64)
}

/// The validity window (Unix seconds) of a PEM certificate.
pub fn validity(path: &Path, pem: &[u8]) -> Result<(i64, i64), BootstrapError> {
    let bad = |message: String| BootstrapError::Certificate {
        path: path.to_path_buf(),
        message,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The client certificate and key files a kubeconfig's user names, if it names files (an
/// admin's embedded credentials are not this agent's to rotate).
pub fn client_files(kubeconfig: &Path) -> Result<Option<(PathBuf, PathBuf)>, BootstrapError> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| {
        BootstrapError::Kubeconfig {
            path: kubeconfig.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    let user = kc
        .current_context
        .as_ref()
        .and_then(|cur| kc.contexts.iter().find(|c| &c.name == cur))
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone());
    let auth = kc
        .auth_infos
        .iter()
        .find(|a| user.is_none() || user.as_deref() == Some(a.name.as_str()))
        .and_then(|a| a.auth_info.as_ref());
    Ok(auth.and_then(|a| {
        Some((
            PathBuf::from(a.client_certificate.clone()?),
            PathBuf::from(a.client_key.clone()?),
        ))
    }))
}

/// Waits until the certificate `kubeconfig` names is due, then obtains a new one for `node`
/// with the current one (the csrapproving controller approves a node's own renewals) and
/// points the kubeconfig at it. Returns once the kubeconfig names the new certificate; the
/// running client still holds the old one, so the caller restarts to use it. Returns `None`
/// without waiting when the kubeconfig names no certificate files.
pub async fn rotate_when_due(
    kubeconfig: &Path,
    cert_dir: &Path,
    node: &str,
) -> Result<Option<PathBuf>, BootstrapError> {
    let Some((cert, _)) = client_files(kubeconfig)? else {
        return Ok(None);
    };
    let pem = std::fs::read(&cert).map_err(io_err(&cert))?;
    let (not_before, not_after) = validity(&cert, &pem)?;
    let delay = renewal_delay(not_before, not_after, jiff::Timestamp::now().as_second());
    tracing::info!(
        cert = %cert.display(),
        renew_in_s = delay.as_secs(),
        "client certificate rotation scheduled at {RENEW_AT_PERCENT}% of its lifetime"
    );
    tokio::time::sleep(delay).await;
    let (server, ca) = cluster_of(kubeconfig)?;
    let config = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| {
        BootstrapError::Kubeconfig {
            path: kubeconfig.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|e| BootstrapError::Kubeconfig {
            path: kubeconfig.to_path_buf(),
            message: e.to_string(),
        })?;
    let client = kube::Client::try_from(config)?;
    let (key_pem, request_pem) = node_request(node)?;
    let cert_pem =
        request_certificate(client, node, &request_pem, Duration::from_secs(900)).await?;
    // New files under new names, then the kubeconfig (one rename) switches to them: a crash
    // at any point leaves a kubeconfig whose key and certificate belong together.
    std::fs::create_dir_all(cert_dir).map_err(io_err(cert_dir))?;
    let stamp = jiff::Timestamp::now().as_second();
    let new_cert = cert_dir.join(format!("skiff-agent-client-{stamp}.crt"));
    let new_key = cert_dir.join(format!("skiff-agent-client-{stamp}.key"));
    write_private(&new_key, key_pem.as_bytes())?;
    write_private(&new_cert, &cert_pem)?;
    let old = client_files(kubeconfig)?;
    write_private(
        kubeconfig,
        node_kubeconfig(&server, &ca, &new_cert, &new_key).as_bytes(),
    )?;
    if let Some((c, k)) = old {
        for f in [c, k] {
            if f.starts_with(cert_dir) {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    tracing::info!(cert = %new_cert.display(), "client certificate renewed");
    Ok(Some(new_cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_the_node_and_kubeconfig_points_at_the_files() {
        let (key, req) = node_request("worker-1").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(req.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let dir = tempfile::tempdir().unwrap();
        let req_file = dir.path().join("r.pem");
        std::fs::write(&req_file, &req).unwrap();
        match std::process::Command::new("openssl")
            .args(["req", "-noout", "-verify", "-subject", "-in"])
            .arg(&req_file)
            .output()
        {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let subject = String::from_utf8_lossy(&out.stdout);
                assert!(
                    subject.contains("O = system:nodes")
                        && subject.contains("CN = system:node:worker-1"),
                    "{subject}"
                );
            }
            Err(_) => eprintln!("SKIP subject check: no openssl binary"),
        }

        let kc_path = dir.path().join("node.kubeconfig");
        std::fs::write(
            &kc_path,
            node_kubeconfig(
                "https://10.0.0.1:6443",
                b"CA PEM",
                Path::new("/etc/skiff/pki/c.crt"),
                Path::new("/etc/skiff/pki/c.key"),
            ),
        )
        .unwrap();
        let (server, ca) = cluster_of(&kc_path).unwrap();
        assert_eq!(server, "https://10.0.0.1:6443");
        assert_eq!(ca, b"CA PEM");
        let kc = kube::config::Kubeconfig::read_from(&kc_path).unwrap();
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            user.client_certificate.as_deref(),
            Some("/etc/skiff/pki/c.crt")
        );
        assert!(cluster_of(&dir.path().join("missing")).is_err());
    }
    #[test]
    fn renewal_is_due_at_80_percent_of_the_lifetime() {
        // A year-long certificate issued at t=1000.
        let (nb, na) = (1000, 1000 + 365 * 86400);
        assert_eq!(renew_at(nb, na), 1000 + 292 * 86400);
        assert_eq!(
            renewal_delay(nb, na, 1000),
            Duration::from_secs(292 * 86400)
        );
        assert_eq!(
            renewal_delay(nb, na, 1000 + 292 * 86400 - 5),
            Duration::from_secs(5)
        );
        // Due or overdue (an agent that was off for months): at once.
        assert_eq!(renewal_delay(nb, na, 1000 + 292 * 86400), Duration::ZERO);
        assert_eq!(renewal_delay(nb, na, na + 10), Duration::ZERO);
        // A window that ends before it starts is due at once, not in the far future.
        assert_eq!(renewal_delay(na, nb, nb), Duration::ZERO);
    }

    #[test]
    fn validity_and_client_files_are_read() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["n".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2027, 1, 1);
        let pem = params.self_signed(&key).unwrap().pem();
        let (nb, na) = validity(Path::new("c.crt"), pem.as_bytes()).unwrap();
        assert_eq!(na - nb, 365 * 86400);
        assert_eq!(nb, 1767225600);
        assert!(validity(Path::new("c.crt"), b"junk").is_err());

        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("k");
        std::fs::write(
            &kc,
            node_kubeconfig(
                "https://h:6443",
                b"CA",
                Path::new("/p/c.crt"),
                Path::new("/p/c.key"),
            ),
        )
        .unwrap();
        assert_eq!(
            client_files(&kc).unwrap(),
            Some((PathBuf::from("/p/c.crt"), PathBuf::from("/p/c.key")))
        );
    }
}
