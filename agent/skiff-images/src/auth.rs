//! Registry credentials: `kubernetes.io/dockerconfigjson` secrets and `WWW-Authenticate`
//! challenges.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_API};

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Credentials per registry host, read from the `.dockerconfigjson` key of a
/// `kubernetes.io/dockerconfigjson` secret (the decoded JSON bytes).
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    auths: BTreeMap<String, Credentials>,
}

fn normalise_host(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or("");
    match host {
        "index.docker.io" | DOCKER_HUB_API => DOCKER_HUB.to_string(),
        h => h.to_ascii_lowercase(),
    }
}

impl DockerConfig {
    /// Parses `{"auths": {"host": {"auth": base64(user:pass)} | {"username", "password"}}}`.
    /// The legacy `.dockercfg` shape (the map without `auths`) is accepted too.
    pub fn from_json(bytes: &[u8]) -> Result<DockerConfig> {
        #[derive(Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
            identitytoken: Option<String>,
        }
        #[derive(Deserialize)]
        struct File {
            auths: Option<BTreeMap<String, Entry>>,
        }
        let bad = |reason: String| Error::DockerConfig { reason };
        let file: File = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let entries = match file.auths {
            Some(a) => a,
            None => serde_json::from_slice::<BTreeMap<String, Entry>>(bytes).map_err(|e| {
                bad(format!(
                    "neither {{\"auths\": …}} nor a legacy .dockercfg: {e}"
                ))
            })?,
        };
        let mut auths = BTreeMap::new();
        for (key, e) in entries {
            let creds = if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|err| bad(format!("auth of {key:?} is not base64: {err}")))?;
                let raw = String::from_utf8(raw)
                    .map_err(|_| bad(format!("auth of {key:?} is not UTF-8")))?;
                let (u, p) = raw
                    .split_once(':')
                    .ok_or_else(|| bad(format!("auth of {key:?} is not user:password")))?;
                Credentials {
                    username: u.to_string(),
                    password: p.to_string(),
                }
            } else if let Some(u) = e.username {
                Credentials {
                    username: u,
                    password: e.password.unwrap_or_default(),
                }
            } else if let Some(t) = e.identitytoken {
                Credentials {
                    username: "<token>".to_string(),
                    password: t,
                }
            } else {
                continue;
            };
            auths.insert(normalise_host(&key), creds);
        }
        Ok(DockerConfig { auths })
    }

    /// Credentials for a registry host as written in a reference (`docker.io`, `host:5000`).
    pub fn for_registry(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(&normalise_host(registry))
    }

    /// Adds (or replaces) the credentials of one registry.
    pub fn insert(&mut self, registry: &str, creds: Credentials) {
        self.auths.insert(normalise_host(registry), creds);
    }

    /// Merges another config into this one (entries of `other` win).
    pub fn merge(&mut self, other: DockerConfig) {
        self.auths.extend(other.auths);
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut map = BTreeMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            // quoted-string with backslash escapes; scopes contain commas
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let end = end?;
            (out, &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        map.insert(key, value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: map.remove("realm")?,
        service: map.remove("service"),
        scope: map.remove("scope"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            }
        );
        let c = parse_challenge(r#"bearer realm=http://127.0.0.1:1/t, service = "x\"y""#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: Some("x\"y".into()),
                scope: None
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn docker_config_json() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000":{"username":"u","password":"p"},
            "ghcr.io":{"auth":""}
        }}"#;
        let c = DockerConfig::from_json(json).unwrap();
        let hub = c.for_registry("docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(c.for_registry("127.0.0.1:5000").unwrap().password, "p");
        assert!(c.for_registry("ghcr.io").is_none());
        assert_eq!(
            c.for_registry("127.0.0.1:5000").unwrap().basic_header(),
            "Basic dTpw"
        );
        assert!(!format!("{hub:?}").contains("pa:ss"));
        // legacy .dockercfg
        let c = DockerConfig::from_json(br#"{"quay.io":{"auth":"YTpi"}}"#).unwrap();
        assert_eq!(c.for_registry("quay.io").unwrap().username, "a");
        for bad in [
            &b"[]"[..],
            br#"{"auths":{"x":{"auth":"!!"}}}"#,
            br#"{"auths":{"x":{"auth":"bm9jb2xvbg=="}}}"#,
        ] {
            let e = DockerConfig::from_json(bad).unwrap_err();
            assert!(e.to_string().contains("docker config"), "{e}");
        }
    }
}
