//! Who is calling (authentication) and whether they may (authorization) are separate layers,
//! as in kube-apiserver: a request first gets a `User`, then the `Authorizer` decides.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The identity proven by the TLS handshake, if the client presented a certificate.
pub fn user_from_certificate(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Static bearer tokens in kube-apiserver's `--token-auth-file` format:
/// `token,user,uid[,"group1,group2"]`, one per line.
#[derive(Default)]
pub struct TokenFile {
    tokens: HashMap<String, User>,
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, message)| TokenFileError::Malformed {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut tokens = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, groups) = match line.find('"') {
                Some(q) => {
                    let rest = &line[q + 1..];
                    let end = rest
                        .find('"')
                        .ok_or((index + 1, "unterminated quoted group list".to_string()))?;
                    (&line[..q], Some(&rest[..end]))
                }
                None => (line, None),
            };
            let fields: Vec<&str> = head.split(',').map(str::trim).collect();
            if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
                return Err((index + 1, "expected token,user,uid[,\"groups\"]".into()));
            }
            let mut group_list: Vec<String> = match groups {
                Some(g) => g.split(',').map(|s| s.trim().to_string()).collect(),
                None => fields
                    .get(3)
                    .filter(|s| !s.is_empty())
                    .map(|s| vec![s.to_string()])
                    .unwrap_or_default(),
            };
            group_list.retain(|g| !g.is_empty());
            group_list.push("system:authenticated".into());
            tokens.insert(
                fields[0].to_string(),
                User {
                    name: fields[1].to_string(),
                    groups: group_list,
                },
            );
        }
        Ok(Self { tokens })
    }

    pub fn authenticate(&self, token: &str) -> Option<User> {
        self.tokens.get(token).cloned()
    }
}

/// What the request wants to do, in the terms an authorizer (RBAC later) needs.
#[derive(Debug)]
pub struct Attributes<'a> {
    pub user: &'a User,
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

pub trait Authorizer: Send + Sync {
    /// `Err(reason)` denies.
    fn authorize(&self, attributes: &Attributes<'_>) -> Result<(), String>;
}

/// Every authenticated user may do everything, until RBAC lands.
pub struct AllowAuthenticated;

impl Authorizer for AllowAuthenticated {
    fn authorize(&self, _: &Attributes<'_>) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_reads_groups_and_rejects_short_lines() {
        let file = TokenFile::parse("# comment\nabc,alice,1,\"dev,ops\"\nxyz,bob,2\n").unwrap();
        let alice = file.authenticate("abc").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(
            file.authenticate("xyz").unwrap().groups,
            ["system:authenticated"]
        );
        assert!(file.authenticate("nope").is_none());
        assert_eq!(TokenFile::parse("onlytoken\n").err().unwrap().0, 1);
        assert!(TokenFile::parse("t,u,1,\"g\n").is_err());
    }
}
