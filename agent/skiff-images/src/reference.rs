//! Image references, normalised the way Docker does (`busybox` →
//! `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::Error;

/// The registry Docker uses for names without a host.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's distribution API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A fully qualified image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with `:port` when given (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/busybox`).
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// Digest pinned with `@sha256:…`.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference.
    pub fn parse(s: &str) -> Result<Reference, Error> {
        s.parse()
    }

    /// Host (and port) to talk to for the distribution API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifest endpoint for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository pinned to `digest` (no tag).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
    if c.is_empty() {
        return false;
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        // IPv6 literals are written in brackets: [::1]:5000
        Some((host, port)) if !host.is_empty() && !port.contains(']') => (host, Some(port)),
        _ => (h, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return false;
        }
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    }
    !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|x| x.is_ascii_alphanumeric() || x == b'-'))
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > 4096 {
            return Err(bad("too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (s, None),
        };
        let (registry, remainder) = match rest.split_once('/') {
            Some((first, after))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_string(), after)
            }
            _ => (DOCKER_HUB.to_string(), rest),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if !valid_host(&registry) {
            return Err(bad("invalid registry host"));
        }
        // The tag is after the last ':' of the last path component.
        let (repo, tag) = match remainder.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (remainder, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad("invalid tag"));
            }
        }
        if repo.is_empty() {
            return Err(bad("empty repository"));
        }
        if repo.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if !repo.split('/').all(valid_path_component) {
            return Err(bad("invalid repository path"));
        }
        let repository = if registry == DOCKER_HUB && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        };
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("quay.io/a/b/c:v1"), "quay.io/a/b/c:v1");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(
            norm("127.0.0.1:5000/busybox:tag"),
            "127.0.0.1:5000/busybox:tag"
        );
        assert_eq!(
            norm("localhost:5000/a_b/c-d.e__f"),
            "localhost:5000/a_b/c-d.e__f:latest"
        );
        assert_eq!(norm("[::1]:5000/app:x"), "[::1]:5000/app:x");
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().to_string(), d);
        assert_eq!(r.manifest_ref(), d);
        let r = Reference::parse(&format!("host:5000/repo:tag@{d}")).unwrap();
        assert_eq!(r.registry, "host:5000");
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.manifest_ref(), d);
        assert!(Reference::parse("busybox@sha256:abc").is_err());
        assert!(Reference::parse("busybox@md5:abc").is_err());
    }

    #[test]
    fn api_host_and_name() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.api_host(), DOCKER_HUB_API);
        assert_eq!(r.name(), "docker.io/library/busybox");
        let r = Reference::parse("127.0.0.1:5000/x/y").unwrap();
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert_eq!(r.manifest_ref(), "latest");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "repo/../x",
            "host:99999/x",
            "a/b:tag/with/slash:",
            "-foo",
            "foo-",
            "foo..bar",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        // A single path component with an upper-case letter is a repository, and invalid.
        assert!(Reference::parse("UPPER").is_err());
    }
}
