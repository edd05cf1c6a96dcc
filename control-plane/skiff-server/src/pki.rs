//! The cluster's certificates: a CA, the API server's serving certificate and the admin
//! client certificate, created on first start and reused afterwards.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

/// PEM material of one certificate and its key.
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct ClusterPki {
    pub dir: PathBuf,
    pub ca: CertAndKey,
    pub serving: CertAndKey,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
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
    file.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn read_pair(dir: &Path, name: &str) -> Result<Option<CertAndKey>, PkiError> {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    if !cert.exists() || !key.exists() {
        return Ok(None);
    }
    Ok(Some(CertAndKey {
        cert_pem: std::fs::read_to_string(&cert).map_err(io_err(&cert))?,
        key_pem: std::fs::read_to_string(&key).map_err(io_err(&key))?,
    }))
}

fn write_pair(dir: &Path, name: &str, pair: &CertAndKey) -> Result<(), PkiError> {
    write_private(&dir.join(format!("{name}.key")), &pair.key_pem)?;
    write_private(&dir.join(format!("{name}.crt")), &pair.cert_pem)
}

pub fn ca_issuer(ca: &CertAndKey, dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::Invalid {
        path: dir.join("ca.key"),
        message: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(|e| PkiError::Invalid {
        path: dir.join("ca.crt"),
        message: e.to_string(),
    })
}

/// Signs a client certificate: the CN is the user name and each O a group, as
/// kube-apiserver reads them.
pub fn issue_client_cert(
    ca: &CertAndKey,
    dir: &Path,
    user: &str,
    groups: &[&str],
) -> Result<CertAndKey, PkiError> {
    let issuer = ca_issuer(ca, dir)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err(user))?;
    let mut dn = DistinguishedName::new();
    for group in groups {
        dn.push(DnType::OrganizationName, *group);
    }
    dn.push(DnType::CommonName, user);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, 365);
    let key = KeyPair::generate().map_err(gen_err(user))?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err(user))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl ClusterPki {
    /// Loads the PKI under `dir`, creating whatever is missing. The serving certificate
    /// names every address the server may be reached at.
    pub fn load_or_create(
        dir: &Path,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let ca = match read_pair(dir, "ca")? {
            Some(ca) => ca,
            None => {
                let mut params =
                    CertificateParams::new(Vec::<String>::new()).map_err(gen_err("CA"))?;
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "skiff-ca");
                params.distinguished_name = dn;
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                validity(&mut params, 3650);
                let key = KeyPair::generate().map_err(gen_err("CA"))?;
                let cert = params.self_signed(&key).map_err(gen_err("CA"))?;
                let ca = CertAndKey {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                };
                write_pair(dir, "ca", &ca)?;
                ca
            }
        };
        let serving = match read_pair(dir, "apiserver")? {
            Some(pair) => pair,
            None => {
                let issuer = ca_issuer(&ca, dir)?;
                let mut params =
                    CertificateParams::new(Vec::<String>::new()).map_err(gen_err("serving"))?;
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "skiff-apiserver");
                params.distinguished_name = dn;
                for name in dns_names {
                    let ia5 = name.as_str().try_into().map_err(gen_err(name))?;
                    params.subject_alt_names.push(SanType::DnsName(ia5));
                }
                for ip in ips {
                    params.subject_alt_names.push(SanType::IpAddress(*ip));
                }
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                validity(&mut params, 365);
                let key = KeyPair::generate().map_err(gen_err("serving"))?;
                let cert = params
                    .signed_by(&key, &issuer)
                    .map_err(gen_err("serving"))?;
                let pair = CertAndKey {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                };
                write_pair(dir, "apiserver", &pair)?;
                pair
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            ca,
            serving,
        })
    }

    /// The admin client certificate (group `system:masters`), created once.
    pub fn admin(&self) -> Result<CertAndKey, PkiError> {
        self.client("admin", "kubernetes-admin", &["system:masters"])
    }

    /// A client certificate stored as `<file>.crt`/`<file>.key`, created once.
    pub fn client(&self, file: &str, user: &str, groups: &[&str]) -> Result<CertAndKey, PkiError> {
        if let Some(pair) = read_pair(&self.dir, file)? {
            return Ok(pair);
        }
        let pair = issue_client_cert(&self.ca, &self.dir, user, groups)?;
        write_pair(&self.dir, file, &pair)?;
        Ok(pair)
    }
}

/// A kubeconfig with embedded credentials, as kubeadm writes `admin.conf`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, client: &CertAndKey) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: {user}\ncurrent-context: skiff\npreferences: {{}}\n",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

pub fn write_kubeconfig(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_private(path, contents)
}
