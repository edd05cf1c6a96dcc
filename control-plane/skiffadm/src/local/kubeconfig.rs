//! The kubeconfig side of local mode: `<root>/admin.kubeconfig` for the cluster alone, and a
//! `skiff` cluster/user/context merged into the user's kubeconfig without disturbing the
//! other entries there. Edits go through a generic YAML tree so that fields this code does
//! not know (extensions, preferences, exec plugins) survive untouched.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::LocalError;

/// The name of the cluster, user and context local mode manages.
pub const NAME: &str = "skiff";

/// The API server's address and the admin credentials, as entries ready to be named.
#[derive(Clone, Debug, PartialEq)]
pub struct Credentials {
    pub cluster: Value,
    pub user: Value,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> LocalError {
    LocalError::Invalid(format!("kubeconfig {}: {msg}", path.display()))
}

fn parse(path: &Path, text: &str) -> Result<Mapping, LocalError> {
    if text.trim().is_empty() {
        return Ok(Mapping::new());
    }
    match serde_yaml::from_str::<Value>(text).map_err(|e| bad(path, e))? {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        _ => Err(bad(path, "not a YAML mapping")),
    }
}

fn named<'a>(doc: &'a Mapping, list: &str, name: &str) -> Option<&'a Value> {
    doc.get(list)?
        .as_sequence()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
}

/// Takes the current context's cluster and user out of the server's own kubeconfig.
pub fn credentials(path: &Path, text: &str) -> Result<Credentials, LocalError> {
    let doc = parse(path, text)?;
    let ctx_name = doc
        .get("current-context")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(path, "no current-context"))?;
    let ctx = named(&doc, "contexts", ctx_name)
        .and_then(|c| c.get("context"))
        .ok_or_else(|| bad(path, format!("context {ctx_name:?} missing")))?;
    let field = |k: &str| {
        ctx.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(path, format!("context {ctx_name:?} has no {k}")))
    };
    let (cluster_name, user_name) = (field("cluster")?, field("user")?);
    let cluster = named(&doc, "clusters", cluster_name)
        .and_then(|c| c.get("cluster"))
        .ok_or_else(|| bad(path, format!("cluster {cluster_name:?} missing")))?;
    let user = named(&doc, "users", user_name)
        .and_then(|u| u.get("user"))
        .ok_or_else(|| bad(path, format!("user {user_name:?} missing")))?;
    Ok(Credentials {
        cluster: cluster.clone(),
        user: user.clone(),
    })
}

fn entry(name: &str, key: &str, body: Value) -> Value {
    let mut m = Mapping::new();
    m.insert("name".into(), name.into());
    m.insert(key.into(), body);
    Value::Mapping(m)
}

fn context_body() -> Value {
    let mut c = Mapping::new();
    c.insert("cluster".into(), NAME.into());
    c.insert("user".into(), NAME.into());
    Value::Mapping(c)
}

/// Drops the entries named `name` from one of the three lists.
fn drop_named(doc: &mut Mapping, list: &str, name: &str) {
    if let Some(Value::Sequence(seq)) = doc.get_mut(list) {
        seq.retain(|e| e.get("name").and_then(Value::as_str) != Some(name));
    }
}

fn push(doc: &mut Mapping, list: &str, v: Value) {
    match doc.get_mut(list) {
        Some(Value::Sequence(seq)) => seq.push(v),
        _ => {
            doc.insert(list.into(), Value::Sequence(vec![v]));
        }
    }
}

/// A kubeconfig holding only the local cluster.
pub fn standalone(creds: &Credentials) -> String {
    merge(&Mapping::new(), creds)
}

fn merge(existing: &Mapping, creds: &Credentials) -> String {
    let mut doc = existing.clone();
    doc.entry("apiVersion".into()).or_insert("v1".into());
    doc.entry("kind".into()).or_insert("Config".into());
    for list in ["clusters", "users", "contexts"] {
        drop_named(&mut doc, list, NAME);
    }
    push(
        &mut doc,
        "clusters",
        entry(NAME, "cluster", creds.cluster.clone()),
    );
    push(&mut doc, "users", entry(NAME, "user", creds.user.clone()));
    push(&mut doc, "contexts", entry(NAME, "context", context_body()));
    doc.insert("current-context".into(), NAME.into());
    serde_yaml::to_string(&Value::Mapping(doc)).expect("YAML serialises")
}

/// The user's kubeconfig with the `skiff` entries added or replaced and made current.
pub fn merged(path: &Path, existing: &str, creds: &Credentials) -> Result<String, LocalError> {
    Ok(merge(&parse(path, existing)?, creds))
}

/// The user's kubeconfig without the `skiff` entries; the current context is cleared only
/// when it was `skiff`. `None` when there was nothing of ours in it, or when its `skiff`
/// cluster points at another server than `server` (another local cluster's: not ours).
pub fn removed(path: &Path, existing: &str, server: &str) -> Result<Option<String>, LocalError> {
    let mut doc = parse(path, existing)?;
    if let Some(theirs) = named(&doc, "clusters", NAME)
        .and_then(|c| c.get("cluster"))
        .and_then(|c| c.get("server"))
        .and_then(Value::as_str)
    {
        if theirs != server {
            return Ok(None);
        }
    }
    let before = doc.clone();
    for list in ["clusters", "users", "contexts"] {
        drop_named(&mut doc, list, NAME);
    }
    if doc.get("current-context").and_then(Value::as_str) == Some(NAME) {
        doc.insert("current-context".into(), "".into());
    }
    if doc == before {
        return Ok(None);
    }
    Ok(Some(
        serde_yaml::to_string(&Value::Mapping(doc)).expect("YAML serialises"),
    ))
}

/// The file kubectl reads first: `$KUBECONFIG`'s first entry, else `~/.kube/config`.
pub fn user_kubeconfig_path() -> Result<PathBuf, LocalError> {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .as_deref()
        .and_then(|v| std::env::split_paths(v).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| LocalError::Invalid("HOME is not set: cannot find ~/.kube/config".into()))?;
    Ok(PathBuf::from(home).join(".kube/config"))
}

/// Reads a kubeconfig that may not exist yet.
pub fn read_optional(path: &Path) -> Result<String, LocalError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(LocalError::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: https://127.0.0.1:7443\n    certificate-authority-data: Q0E=\nusers:\n- name: admin\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: admin\ncurrent-context: skiff\npreferences: {}\n";

    const USER: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: https://prod.example:6443\n    extensions:\n    - name: client.authentication.k8s.io/exec\n      extension:\n        audience: prod\n- name: skiff\n  cluster:\n    server: https://127.0.0.1:1\nusers:\n- name: prod-user\n  user:\n    token: abc\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: prod-user\n    namespace: team\ncurrent-context: prod\n";

    const SRV: &str = "https://127.0.0.1:7443";

    fn p() -> &'static Path {
        Path::new("/k")
    }

    #[test]
    fn credentials_follow_the_current_context() {
        let c = credentials(p(), SERVER).unwrap();
        assert_eq!(c.cluster["server"], "https://127.0.0.1:7443");
        assert_eq!(c.user["client-key-data"], "S0VZ");
        assert!(credentials(p(), "current-context: nope\n").is_err());
        assert!(credentials(p(), "- a list\n").is_err());
    }

    #[test]
    fn merge_keeps_other_entries_and_replaces_ours() {
        let c = credentials(p(), SERVER).unwrap();
        let out = merged(p(), USER, &c).unwrap();
        let doc: Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(doc["current-context"], "skiff");
        let clusters = doc["clusters"].as_sequence().unwrap();
        // The stale `skiff` cluster is replaced, not duplicated.
        assert_eq!(clusters.len(), 2);
        assert_eq!(
            named(doc.as_mapping().unwrap(), "clusters", "skiff").unwrap()["cluster"]["server"],
            "https://127.0.0.1:7443"
        );
        // Fields this code does not know survive.
        assert_eq!(
            clusters[0]["cluster"]["extensions"][0]["extension"]["audience"],
            "prod"
        );
        assert_eq!(
            named(doc.as_mapping().unwrap(), "contexts", "prod").unwrap()["context"]["namespace"],
            "team"
        );
        // Merging twice changes nothing.
        assert_eq!(merged(p(), &out, &c).unwrap(), out);
    }

    #[test]
    fn merge_into_nothing_makes_a_whole_kubeconfig() {
        let c = credentials(p(), SERVER).unwrap();
        let out = merged(p(), "", &c).unwrap();
        assert_eq!(out, standalone(&c));
        let kc: kube::config::Kubeconfig = serde_yaml::from_str(&out).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("skiff"));
        assert_eq!(kc.clusters.len(), 1);
        assert_eq!(kc.auth_infos.len(), 1);
    }

    #[test]
    fn remove_takes_only_ours() {
        let c = credentials(p(), SERVER).unwrap();
        let out = merged(p(), USER, &c).unwrap();
        // Another cluster's entries are not ours to remove.
        assert_eq!(removed(p(), &out, "https://127.0.0.1:6443").unwrap(), None);
        let back = removed(p(), &out, SRV).unwrap().unwrap();
        let doc: Value = serde_yaml::from_str(&back).unwrap();
        assert_eq!(doc["current-context"], "");
        assert_eq!(doc["clusters"].as_sequence().unwrap().len(), 1);
        assert_eq!(doc["users"][0]["name"], "prod-user");
        assert_eq!(doc["contexts"][0]["name"], "prod");
        assert_eq!(removed(p(), &back, SRV).unwrap(), None);
        // Another current context is left alone.
        let other = removed(p(), USER, "https://127.0.0.1:1").unwrap().unwrap();
        let doc: Value = serde_yaml::from_str(&other).unwrap();
        assert_eq!(doc["current-context"], "prod");
    }

    #[test]
    fn rejects_garbage() {
        assert!(merged(p(), "[1, 2", &credentials(p(), SERVER).unwrap()).is_err());
        assert!(removed(p(), "just a string", SRV).is_err());
    }
}
