//! Static pods: Pod manifests in a directory (`--pod-manifest-path`), run by this agent
//! whether or not a control plane exists, as kubelet runs its file source.
//!
//! The directory is read again every `--file-check-frequency` (a poll rather than inotify:
//! editors replace files through renames and temporary names, and a full re-read of a few
//! small files settles every such case the same way). Each readable manifest becomes a pod
//! named `<name>-<node>` whose uid is a hash of the node, the file and the parsed manifest,
//! so an unchanged file keeps its pod across agent restarts and any edit makes a new pod
//! (the old one is stopped, the new one started), like kubelet's config hash.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";

/// Why one manifest was not taken; the other manifests are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: reading the file: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: not valid YAML or JSON: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: pod {namespace}/{name} is already defined by {other}")]
    Duplicate {
        path: PathBuf,
        namespace: String,
        name: String,
        other: PathBuf,
    },
}

fn invalid(path: &Path, field: &str, message: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        path: path.to_path_buf(),
        field: field.into(),
        message: message.into(),
    }
}

/// RFC 1123 DNS subdomain, as the API server checks pod names.
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The pod a manifest file describes, ready for a worker: name, namespace, uid, node and the
/// file-source annotations set.
pub fn parse_manifest(path: &Path, text: &str, node: &str) -> Result<Pod, ManifestError> {
    // YAML is a superset of JSON, so one parser reads both.
    let doc: Value = serde_yaml::from_str(text).map_err(|e| ManifestError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let Value::Object(obj) = &doc else {
        return Err(invalid(path, "(document)", "must be a Pod object"));
    };
    match obj.get("kind").and_then(Value::as_str) {
        Some("Pod") => {}
        Some(other) => {
            return Err(invalid(
                path,
                "kind",
                format!("must be Pod, found {other:?}"),
            ))
        }
        None => return Err(invalid(path, "kind", "Required value (must be Pod)")),
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some("v1") => {}
        Some(other) => {
            return Err(invalid(
                path,
                "apiVersion",
                format!("must be v1, found {other:?}"),
            ))
        }
        None => return Err(invalid(path, "apiVersion", "Required value (must be v1)")),
    }
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return Err(invalid(path, "metadata.name", "Required value"));
    }
    let containers = doc["spec"]["containers"].as_array();
    if containers.is_none_or(|c| c.is_empty()) {
        return Err(invalid(path, "spec.containers", "Required value"));
    }
    for (i, c) in containers.into_iter().flatten().enumerate() {
        for field in ["name", "image"] {
            if c[field].as_str().is_none_or(str::is_empty) {
                return Err(invalid(
                    path,
                    &format!("spec.containers[{i}].{field}"),
                    "Required value",
                ));
            }
        }
    }
    let mut pod: Pod = serde_json::from_value(doc.clone())
        .map_err(|e| invalid(path, &type_error_field(&doc), e.to_string()))?;
    let full_name = format!("{name}-{node}");
    if !dns_subdomain(&full_name) {
        return Err(invalid(
            path,
            "metadata.name",
            format!("{full_name:?} (name-node) is not a valid DNS subdomain"),
        ));
    }
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let uid = config_hash(node, path, &doc);
    let meta = &mut pod.metadata;
    meta.name = Some(full_name);
    meta.namespace = Some(namespace);
    meta.uid = Some(uid.clone());
    // Server-owned fields a manifest may carry (copied from `kubectl get -o yaml`) mean
    // nothing here.
    meta.resource_version = None;
    meta.creation_timestamp = None;
    meta.deletion_timestamp = None;
    meta.managed_fields = None;
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.remove(CONFIG_MIRROR);
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    annotations.insert(CONFIG_HASH.into(), uid);
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.into());
    // The API server would have set it; the worker and the mirror pod's status need it.
    let qos = crate::cgroups::resources::qos_class(&pod)
        .map_err(|e| invalid(path, "spec.containers[].resources", e.to_string()))?;
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        qos_class: Some(qos.as_str().into()),
        ..Default::default()
    });
    Ok(pod)
}

/// serde's type errors do not name the field; find the first top-level spec key whose
/// value alone fails to decode, which is what a reader needs to look at.
fn type_error_field(doc: &Value) -> String {
    for section in ["metadata", "spec"] {
        let Some(obj) = doc[section].as_object() else {
            continue;
        };
        for key in obj.keys() {
            let mut probe = serde_json::json!({"apiVersion": "v1", "kind": "Pod"});
            probe[section] = serde_json::json!({ key: obj[key] });
            if section == "spec" && key != "containers" {
                probe["spec"]["containers"] = serde_json::json!([]);
            }
            if serde_json::from_value::<Pod>(probe).is_err() {
                return format!("{section}.{key}");
            }
        }
    }
    "(document)".into()
}

/// Like kubelet's: the node, the file and the manifest, hashed; 32 hex digits.
pub fn config_hash(node: &str, path: &Path, doc: &Value) -> String {
    let mut h = Sha256::new();
    h.update(format!("host:{node}\n").as_bytes());
    h.update(format!("file:{}\n", path.display()).as_bytes());
    // Keys sorted at every level, so the same manifest hashes the same whatever its key
    // order or formatting in the file (serde_json keeps insertion order when another crate
    // of the build turns on its `preserve_order` feature, as skiff-server does).
    h.update(sorted_keys(doc).to_string().as_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn sorted_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted_keys(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

/// One reading of the manifest directory.
#[derive(Debug, Default)]
pub struct Scan {
    /// By pod uid.
    pub pods: BTreeMap<String, Pod>,
    pub errors: Vec<ManifestError>,
}

/// Reads every manifest in `dir`: regular files not starting with a dot (editors' swap
/// files), as kubelet reads them; subdirectories are not entered. A missing directory is an
/// empty one, so the agent can start before anyone creates it.
pub fn scan(dir: &Path, node: &str) -> Scan {
    let mut out = Scan::default();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.errors.push(ManifestError::Read {
                path: dir.to_path_buf(),
                message: e.to_string(),
            });
            return out;
        }
    };
    paths.sort();
    let mut names: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                out.errors.push(ManifestError::Read {
                    path,
                    message: e.to_string(),
                });
                continue;
            }
        };
        match parse_manifest(&path, &text, node) {
            Ok(pod) => {
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                if let Some(other) = names.get(&key) {
                    out.errors.push(ManifestError::Duplicate {
                        path,
                        namespace: key.0,
                        name: key.1,
                        other: other.clone(),
                    });
                    continue;
                }
                names.insert(key, path);
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                out.pods.insert(uid, pod);
            }
            Err(e) => out.errors.push(e),
        }
    }
    out
}

/// What changed between two readings, by uid. An edited file shows as one removal and one
/// addition, since its hash, and so its uid, changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

pub fn diff(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Diff {
    Diff {
        added: after.difference(before).cloned().collect(),
        removed: before.difference(after).cloned().collect(),
    }
}

/// The mirror pod that stands for a static pod in the API: the same object with the mirror
/// annotation, owned by the Node so that it goes when the Node goes.
pub fn mirror_pod(pod: &Pod, node_uid: &str) -> Pod {
    let mut m = pod.clone();
    let hash = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_HASH))
        .cloned()
        .unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    m.metadata.uid = None;
    m.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_MIRROR.into(), hash);
    m.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node,
            uid: node_uid.into(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    m.status = None;
    m
}

/// The static pod uid a mirror pod stands for (its config hash), if it is a mirror pod.
pub fn mirror_of(pod: &Pod) -> Option<String> {
    let a = pod.metadata.annotations.as_ref()?;
    a.get(CONFIG_MIRROR)?;
    a.get(CONFIG_HASH).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTTPD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: httpd\n    image: 127.0.0.1:5000/busybox:1\n    command: [httpd, -f, -p, '8080']\n";

    #[test]
    fn a_manifest_becomes_a_named_pod_with_file_annotations() {
        let pod = parse_manifest(Path::new("/m/web.yaml"), HTTPD, "node-1").unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let uid = pod.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        let a = pod.metadata.annotations.clone().unwrap();
        assert_eq!(a[CONFIG_SOURCE], "file");
        assert_eq!(a[CONFIG_HASH], uid);
        assert_eq!(
            pod.spec.unwrap().node_name.as_deref(),
            Some("node-1"),
            "bound to this node"
        );
    }

    #[test]
    fn json_manifests_are_read_too() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"kube-system"},
            "spec":{"containers":[{"name":"c","image":"i"}]}}"#;
        let pod = parse_manifest(Path::new("/m/j.json"), json, "n").unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("j-n"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
    }

    #[test]
    fn the_uid_follows_content_not_formatting() {
        let a = parse_manifest(Path::new("/m/web.yaml"), HTTPD, "node-1").unwrap();
        let reformatted = "kind: Pod\napiVersion: v1\nspec:\n  containers: [{image: '127.0.0.1:5000/busybox:1', name: httpd, command: [httpd, '-f', '-p', '8080']}]\nmetadata: {labels: {app: web}, name: web}\n";
        let b = parse_manifest(Path::new("/m/web.yaml"), reformatted, "node-1").unwrap();
        assert_eq!(a.metadata.uid, b.metadata.uid);
        let edited = HTTPD.replace("8080", "8081");
        let c = parse_manifest(Path::new("/m/web.yaml"), &edited, "node-1").unwrap();
        assert_ne!(a.metadata.uid, c.metadata.uid, "an edit is a new pod");
        let other_node = parse_manifest(Path::new("/m/web.yaml"), HTTPD, "node-2").unwrap();
        assert_ne!(a.metadata.uid, other_node.metadata.uid);
        let other_file = parse_manifest(Path::new("/m/web2.yaml"), HTTPD, "node-1").unwrap();
        assert_ne!(a.metadata.uid, other_file.metadata.uid);
    }

    #[test]
    fn bad_manifests_name_the_file_and_field() {
        let p = Path::new("/m/bad.yaml");
        let err = |text: &str| parse_manifest(p, text, "n").unwrap_err().to_string();
        assert!(err("kind: Pod\n  bad: [").starts_with("/m/bad.yaml: not valid YAML or JSON"));
        assert_eq!(
            err("apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n"),
            "/m/bad.yaml: kind: must be Pod, found \"Deployment\""
        );
        assert_eq!(
            err("apiVersion: v1\nmetadata: {name: x}\n"),
            "/m/bad.yaml: kind: Required value (must be Pod)"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {}\n"),
            "/m/bad.yaml: spec.containers: Required value"
        );
        assert_eq!(
            err(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c}]}\n"
            ),
            "/m/bad.yaml: spec.containers[0].image: Required value"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: Pod\nspec: {containers: [{name: c, image: i}]}\n"),
            "/m/bad.yaml: metadata.name: Required value"
        );
        let typed = err(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {restartPolicy: [1], containers: [{name: c, image: i}]}\n",
        );
        assert!(
            typed.starts_with("/m/bad.yaml: spec.restartPolicy: invalid type"),
            "{typed}"
        );
        assert!(err("apiVersion: v1\nkind: Pod\nmetadata: {name: Web_1}\nspec: {containers: [{name: c, image: i}]}\n")
            .contains("metadata.name"));
    }

    #[test]
    fn a_directory_scan_keeps_good_manifests_beside_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), HTTPD).unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
        std::fs::write(dir.path().join(".web.yaml.swp"), "junk").unwrap();
        std::fs::write(dir.path().join("twin.yaml"), HTTPD).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/other.yaml"), HTTPD).unwrap();
        let s = scan(dir.path(), "n");
        assert_eq!(s.pods.len(), 1, "{:?}", s.pods.keys());
        let pod = s.pods.values().next().unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-n"));
        assert_eq!(s.errors.len(), 2, "{:?}", s.errors);
        assert!(
            matches!(&s.errors[0], ManifestError::Syntax { path, .. } if path.ends_with("broken.yaml"))
        );
        assert!(
            matches!(&s.errors[1], ManifestError::Duplicate { path, other, .. } if path.ends_with("web.yaml") && other.ends_with("twin.yaml"))
        );
        assert!(scan(&dir.path().join("absent"), "n").pods.is_empty());
    }

    #[test]
    fn diffing_readings() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let d = diff(&set(&["a", "b"]), &set(&["b", "c"]));
        assert_eq!(d.added, vec!["c"]);
        assert_eq!(d.removed, vec!["a"]);
        assert_eq!(diff(&set(&["a"]), &set(&["a"])), Diff::default());
    }

    #[test]
    fn mirror_pods_carry_the_hash_and_the_node_owner() {
        let pod = parse_manifest(Path::new("/m/web.yaml"), HTTPD, "node-1").unwrap();
        let m = mirror_pod(&pod, "node-uid");
        assert_eq!(m.metadata.uid, None, "the API server assigns it");
        assert_eq!(mirror_of(&m), pod.metadata.uid);
        assert_eq!(mirror_of(&pod), None);
        let owner = &m.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "node-1", "node-uid")
        );
    }
}
