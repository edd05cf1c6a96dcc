//! A container's environment as kubelet computes it, before the image's own variables are
//! layered underneath (that is `bundle::environment`).
//!
//! API for the pod worker:
//! - `resolve(&client, &pod, &container, &facts).await` → `ResolvedEnv { vars, warnings }`.
//!   `vars` go unchanged into `bundle::BundleInput::env` (they are final: `$(VAR)` in `value`
//!   is already expanded, and nothing else may be expanded again). Each warning is a Warning
//!   event on the pod with its `reason` and `message`.
//! - On `Err(e)` the container is not created: its state is waiting with reason `e.reason()`
//!   (`CreateContainerConfigError`) and message `e.to_string()`, and a Warning event `Failed`
//!   says `Error: {e}`, as kubelet does. The worker retries on its next sync.
//! - `ObjectSource` is implemented for `kube::Client`; `NodeFacts` carries what kubelet knows
//!   that is not in the pod: node name, host and pod IPs, node allocatable.
//!
//! What is covered: `env[].value` with `$(VAR)` expansion against the variables defined before
//! it and the service variables (`$$` escapes, unknown references stay literal); `valueFrom`
//! configMapKeyRef and secretKeyRef (with `optional`), fieldRef, resourceFieldRef (a missing
//! limit reads as node allocatable, as kubelet's downward API does); `envFrom` with `prefix`
//! and `optional`, skipping keys that are not valid variable names with kubelet's
//! `InvalidEnvironmentVariableNames` event; and the docker-link service variables of the
//! pod's namespace (unless `enableServiceLinks: false`) plus those of `default/kubernetes`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVarSource, Pod, ResourceFieldSelector, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use kube::api::{Api, ListParams};

use crate::bundle;
use crate::quantity::{div_ceil, Quantity, QuantityError};

/// A boxed future, so that `ObjectSource` can be used as `&dyn ObjectSource`.
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SourceError>> + Send + 'a>>;

/// Where ConfigMaps, Secrets and Services come from: the API server, or a fake in tests.
/// A missing object is `Ok(None)`; `Err` is for everything else (API unreachable, denied).
pub trait ObjectSource: Send + Sync {
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> SourceFuture<'a, Option<ConfigMap>>;
    fn secret<'a>(&'a self, namespace: &'a str, name: &'a str) -> SourceFuture<'a, Option<Secret>>;
    fn services<'a>(&'a self, namespace: &'a str) -> SourceFuture<'a, Vec<Service>>;
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{kind} {namespace}/{name}: {message}")]
pub struct SourceError {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub message: String,
}

impl ObjectSource for kube::Client {
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> SourceFuture<'a, Option<ConfigMap>> {
        Box::pin(async move {
            Api::<ConfigMap>::namespaced(self.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(|e| SourceError {
                    kind: "configmap",
                    namespace: namespace.into(),
                    name: name.into(),
                    message: e.to_string(),
                })
        })
    }

    fn secret<'a>(&'a self, namespace: &'a str, name: &'a str) -> SourceFuture<'a, Option<Secret>> {
        Box::pin(async move {
            Api::<Secret>::namespaced(self.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(|e| SourceError {
                    kind: "secret",
                    namespace: namespace.into(),
                    name: name.into(),
                    message: e.to_string(),
                })
        })
    }

    fn services<'a>(&'a self, namespace: &'a str) -> SourceFuture<'a, Vec<Service>> {
        Box::pin(async move {
            Api::<Service>::namespaced(self.clone(), namespace)
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .map_err(|e| SourceError {
                    kind: "services",
                    namespace: namespace.into(),
                    name: String::new(),
                    message: e.to_string(),
                })
        })
    }
}

/// What kubelet knows that the pod object may not say yet.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    pub node_name: String,
    /// The node's IPs, first the primary one (`status.hostIP`).
    pub host_ips: Vec<String>,
    /// The pod's IPs from its sandbox; when empty, the pod's status is read instead (kubelet
    /// passes them explicitly because status may not be written yet).
    pub pod_ips: Vec<String>,
    /// The node's `status.allocatable`: what a container without a limit may use.
    pub allocatable: BTreeMap<String, KubeQuantity>,
}

/// Why a container's configuration could not be made; its text is kubelet's.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ContainerConfigError {
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound { name: String },
    #[error("secret \"{name}\" not found")]
    SecretNotFound { name: String },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyMissing {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyMissing {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("field label not supported: {path}")]
    UnsupportedField { path: String },
    #[error("unsupported container resource : {resource}")]
    UnsupportedResource { resource: String },
    #[error("container {name} not found")]
    NoSuchContainer { name: String },
    #[error("{resource}: {source}")]
    BadQuantity {
        resource: String,
        source: QuantityError,
    },
    #[error("{resource}: divisor {divisor:?} must be positive")]
    BadDivisor { resource: String, divisor: String },
    #[error("{resource}: value out of range")]
    OutOfRange { resource: String },
    #[error("{0}")]
    Source(#[from] SourceError),
}

impl ContainerConfigError {
    /// The waiting reason kubelet shows for a container it could not configure.
    pub fn reason(&self) -> &'static str {
        "CreateContainerConfigError"
    }
}

/// An event kubelet would record while resolving (type Warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvWarning {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedEnv {
    /// Name and final value, each name once, in the order first defined.
    pub vars: Vec<(String, String)>,
    pub warnings: Vec<EnvWarning>,
}

/// Insertion-ordered variables where a later definition replaces the value in place.
#[derive(Default)]
struct OrderedEnv {
    order: Vec<String>,
    values: HashMap<String, String>,
}

impl OrderedEnv {
    fn set(&mut self, name: String, value: String) {
        if !self.values.contains_key(&name) {
            self.order.push(name.clone());
        }
        self.values.insert(name, value);
    }

    fn into_vec(mut self) -> Vec<(String, String)> {
        self.order
            .into_iter()
            .map(|k| {
                let v = self.values.remove(&k).unwrap_or_default();
                (k, v)
            })
            .collect()
    }
}

/// Variable names kubelet 1.33 accepts (RelaxedEnvironmentVariableValidation, on by
/// default): printable ASCII except `=`.
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

/// The environment of `container` in `pod`. See the module documentation.
pub async fn resolve(
    source: &dyn ObjectSource,
    pod: &Pod,
    container: &Container,
    node: &NodeFacts,
) -> Result<ResolvedEnv, ContainerConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let service_env = service_variables(source, ns, links).await?;
    let service_map: HashMap<&str, &str> = service_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    let mut env = OrderedEnv::default();
    let mut warnings = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (kind, name, optional) = if let Some(r) = &from.config_map_ref {
            (DataKind::ConfigMap, &r.name, r.optional)
        } else if let Some(r) = &from.secret_ref {
            (DataKind::Secret, &r.name, r.optional)
        } else {
            continue;
        };
        let Some(pairs) = kind.data(source, ns, name, optional == Some(true)).await? else {
            continue;
        };
        let mut invalid = Vec::new();
        for (k, v) in pairs {
            let full = format!("{prefix}{k}");
            if valid_env_name(&full) {
                env.set(full, v);
            } else {
                invalid.push(full);
            }
        }
        if !invalid.is_empty() {
            invalid.sort();
            warnings.push(EnvWarning {
                reason: "InvalidEnvironmentVariableNames",
                message: format!(
                    "Keys [{}] from the EnvFrom {} {ns}/{name} were skipped since they are considered invalid environment variable names.",
                    invalid.join(", "),
                    kind.env_from_word()
                ),
            });
        }
    }

    for var in container.env.iter().flatten() {
        let value = if let Some(v) = var.value.as_deref().filter(|v| !v.is_empty()) {
            bundle::expand_with(v, |name| {
                env.values
                    .get(name)
                    .cloned()
                    .or_else(|| service_map.get(name).map(|s| s.to_string()))
            })
        } else if let Some(from) = &var.value_from {
            if let Some((kind, name, key, optional)) = key_ref(from) {
                let optional = optional == Some(true);
                let Some(mut data) = kind.data(source, ns, name, optional).await? else {
                    continue;
                };
                match data.remove(key) {
                    Some(v) => v,
                    None if optional => continue,
                    None => return Err(kind.key_missing(key, ns, name)),
                }
            } else if let Some(f) = &from.field_ref {
                pod_field(pod, &f.field_path, node)?
            } else if let Some(r) = &from.resource_field_ref {
                container_resource(pod, Some(container), r, node)?
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.set(var.name.clone(), value);
    }

    // Service variables fill in only what the pod did not define itself.
    for (k, v) in service_env {
        if !env.values.contains_key(&k) {
            env.set(k, v);
        }
    }
    Ok(ResolvedEnv {
        vars: env.into_vec(),
        warnings,
    })
}

/// The two kinds of object whose keys become variables (envFrom, configMapKeyRef and
/// secretKeyRef); kubelet treats them alike but for how values are read and the words of
/// its errors and events.
#[derive(Clone, Copy, Debug)]
enum DataKind {
    ConfigMap,
    Secret,
}

impl DataKind {
    /// The object's keys and values as text; `Ok(None)` when it is missing and `optional`.
    async fn data(
        self,
        source: &dyn ObjectSource,
        ns: &str,
        name: &str,
        optional: bool,
    ) -> Result<Option<BTreeMap<String, String>>, ContainerConfigError> {
        let found = match self {
            // Only `data`: kubelet does not turn binaryData into variables.
            DataKind::ConfigMap => source
                .config_map(ns, name)
                .await?
                .map(|cm| cm.data.unwrap_or_default()),
            DataKind::Secret => source.secret(ns, name).await?.map(|s| secret_strings(&s)),
        };
        match found {
            Some(data) => Ok(Some(data)),
            None if optional => Ok(None),
            None => Err(match self {
                DataKind::ConfigMap => {
                    ContainerConfigError::ConfigMapNotFound { name: name.into() }
                }
                DataKind::Secret => ContainerConfigError::SecretNotFound { name: name.into() },
            }),
        }
    }

    fn key_missing(self, key: &str, ns: &str, name: &str) -> ContainerConfigError {
        let (key, namespace, name) = (key.into(), ns.into(), name.into());
        match self {
            DataKind::ConfigMap => ContainerConfigError::ConfigMapKeyMissing {
                key,
                namespace,
                name,
            },
            DataKind::Secret => ContainerConfigError::SecretKeyMissing {
                key,
                namespace,
                name,
            },
        }
    }

    /// How kubelet's InvalidEnvironmentVariableNames event names the source.
    fn env_from_word(self) -> &'static str {
        match self {
            DataKind::ConfigMap => "configMap",
            DataKind::Secret => "secret",
        }
    }
}

/// A `valueFrom` that reads one key of a ConfigMap or Secret: kind, name, key, optional.
fn key_ref(from: &EnvVarSource) -> Option<(DataKind, &str, &str, Option<bool>)> {
    if let Some(r) = &from.config_map_key_ref {
        Some((DataKind::ConfigMap, &r.name, &r.key, r.optional))
    } else {
        from.secret_key_ref.as_ref().map(|r| {
            (
                DataKind::Secret,
                r.name.as_str(),
                r.key.as_str(),
                r.optional,
            )
        })
    }
}

/// Secret values as text; kubelet hands the bytes over unchanged, and the OCI config is
/// JSON text, so bytes that are not UTF-8 are replaced.
fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret.string_data.clone().unwrap_or_default();
    for (k, v) in secret.data.iter().flatten() {
        out.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
    }
    out
}

fn env_name(service_or_port: &str) -> String {
    service_or_port.to_ascii_uppercase().replace('-', "_")
}

/// The docker-link style variables of one service, in kubelet's order.
pub fn service_link_variables(service: &Service) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let spec = match &service.spec {
        Some(s) => s,
        None => return out,
    };
    let ip = match spec.cluster_ip.as_deref() {
        Some(ip) if !ip.is_empty() && ip != "None" => ip,
        _ => return out,
    };
    let name = env_name(service.metadata.name.as_deref().unwrap_or_default());
    let ports = spec.ports.clone().unwrap_or_default();
    out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
    if let Some(first) = ports.first() {
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
    }
    for p in &ports {
        if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{name}_SERVICE_PORT_{}", env_name(pn)),
                p.port.to_string(),
            ));
        }
    }
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let lower = proto.to_ascii_lowercase();
        let url = format!("{lower}://{host}:{}", p.port);
        if i == 0 {
            out.push((format!("{name}_PORT"), url.clone()));
        }
        let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
        out.push((format!("{prefix}_PROTO"), lower));
        out.push((format!("{prefix}_PORT"), p.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.to_string()));
        out.push((prefix, url));
    }
    out
}

/// The service variables a pod in `namespace` gets: its namespace's services when `links`,
/// and `default/kubernetes` always (a same-named service of the pod's namespace wins).
pub async fn service_variables(
    source: &dyn ObjectSource,
    namespace: &str,
    links: bool,
) -> Result<Vec<(String, String)>, ContainerConfigError> {
    let mut chosen: BTreeMap<String, Service> = BTreeMap::new();
    let defaults = source.services("default").await?;
    for s in &defaults {
        if s.metadata.name.as_deref() == Some("kubernetes") {
            chosen.insert("kubernetes".into(), s.clone());
        }
    }
    if links {
        let own = if namespace == "default" {
            defaults
        } else {
            source.services(namespace).await?
        };
        for s in own {
            if let Some(n) = s.metadata.name.clone() {
                chosen.insert(n, s);
            }
        }
    }
    Ok(chosen.values().flat_map(service_link_variables).collect())
}

/// Go's `%q` for the label and annotation maps of the downward API.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn subscript<'a>(path: &'a str, field: &str) -> Option<&'a str> {
    path.strip_prefix(field)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// A downward API `fieldRef` of the pod.
pub fn pod_field(pod: &Pod, path: &str, node: &NodeFacts) -> Result<String, ContainerConfigError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let pod_ips: Vec<String> = if node.pod_ips.is_empty() {
        let listed: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.clone())
            .collect();
        if listed.is_empty() {
            status.and_then(|s| s.pod_ip.clone()).into_iter().collect()
        } else {
            listed
        }
    } else {
        node.pod_ips.clone()
    };
    let value = match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| node.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => node.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => node.host_ips.join(","),
        "status.podIP" => pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => pod_ips.join(","),
        other => {
            if let Some(k) = subscript(other, "metadata.labels") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = subscript(other, "metadata.annotations") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(ContainerConfigError::UnsupportedField {
                    path: other.to_string(),
                });
            }
        }
    };
    Ok(value)
}

fn parse(resource: &str, q: &KubeQuantity) -> Result<Quantity, ContainerConfigError> {
    Quantity::parse(&q.0).map_err(|source| ContainerConfigError::BadQuantity {
        resource: resource.to_string(),
        source,
    })
}

/// A downward API `resourceFieldRef`: of `container` when given (env), else of the container
/// the selector names (volumes). A limit not set reads as the node's allocatable, a request
/// not set as its limit when that was set (the API server's defaulting), else zero.
pub fn container_resource(
    pod: &Pod,
    container: Option<&Container>,
    sel: &ResourceFieldSelector,
    node: &NodeFacts,
) -> Result<String, ContainerConfigError> {
    let named = sel.container_name.as_deref().filter(|n| !n.is_empty());
    let container = match named {
        Some(n) if container.is_none_or(|c| c.name != n) => pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == n)
            .ok_or_else(|| ContainerConfigError::NoSuchContainer { name: n.into() })?,
        _ => container.ok_or_else(|| ContainerConfigError::NoSuchContainer {
            name: String::new(),
        })?,
    };
    let unsupported = || ContainerConfigError::UnsupportedResource {
        resource: sel.resource.clone(),
    };
    let (kind, name) = sel.resource.split_once('.').ok_or_else(unsupported)?;
    let known =
        matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-");
    if !known || !matches!(kind, "limits" | "requests") {
        return Err(unsupported());
    }
    let resources = container.resources.as_ref();
    let limit = resources
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(name));
    let request = resources
        .and_then(|r| r.requests.as_ref())
        .and_then(|l| l.get(name));
    let chosen = match kind {
        "limits" => limit.or_else(|| node.allocatable.get(name)),
        _ => request.or(limit),
    };
    let value = match chosen {
        Some(q) => parse(&sel.resource, q)?,
        None => Quantity::parse("0").map_err(|source| ContainerConfigError::BadQuantity {
            resource: sel.resource.clone(),
            source,
        })?,
    };
    let divisor = match &sel.divisor {
        Some(d) => parse(&sel.resource, d)?,
        None => Quantity::parse("1").map_err(|source| ContainerConfigError::BadQuantity {
            resource: sel.resource.clone(),
            source,
        })?,
    };
    let out_of_range = || ContainerConfigError::OutOfRange {
        resource: sel.resource.clone(),
    };
    // CPU divides in millicores so that divisor 1m works; the rest in whole units.
    let (v, d) = if name == "cpu" {
        (
            value.milli_value().ok_or_else(out_of_range)?,
            divisor.milli_value().ok_or_else(out_of_range)?,
        )
    } else {
        (
            value.value().ok_or_else(out_of_range)?,
            divisor.value().ok_or_else(out_of_range)?,
        )
    };
    if d <= 0 {
        return Err(ContainerConfigError::BadDivisor {
            resource: sel.resource.clone(),
            divisor: sel
                .divisor
                .as_ref()
                .map(|q| q.0.clone())
                .unwrap_or_default(),
        });
    }
    Ok(div_ceil(v, d).to_string())
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::Mutex;

    /// An in-memory API: objects by (namespace, name), and a switch to make it fail.
    #[derive(Default)]
    pub struct FakeSource {
        pub config_maps: Mutex<BTreeMap<(String, String), ConfigMap>>,
        pub secrets: Mutex<BTreeMap<(String, String), Secret>>,
        pub services: Mutex<Vec<Service>>,
        pub fail: Mutex<bool>,
    }

    impl FakeSource {
        pub fn add_config_map(&self, v: serde_json::Value) {
            let cm: ConfigMap = serde_json::from_value(v).unwrap();
            let key = (
                cm.metadata.namespace.clone().unwrap(),
                cm.metadata.name.clone().unwrap(),
            );
            self.config_maps.lock().unwrap().insert(key, cm);
        }

        pub fn add_secret(&self, v: serde_json::Value) {
            let s: Secret = serde_json::from_value(v).unwrap();
            let key = (
                s.metadata.namespace.clone().unwrap(),
                s.metadata.name.clone().unwrap(),
            );
            self.secrets.lock().unwrap().insert(key, s);
        }

        pub fn add_service(&self, v: serde_json::Value) {
            self.services
                .lock()
                .unwrap()
                .push(serde_json::from_value(v).unwrap());
        }

        fn check(&self, kind: &'static str, ns: &str, name: &str) -> Result<(), SourceError> {
            if *self.fail.lock().unwrap() {
                return Err(SourceError {
                    kind,
                    namespace: ns.into(),
                    name: name.into(),
                    message: "connection refused".into(),
                });
            }
            Ok(())
        }
    }

    impl ObjectSource for FakeSource {
        fn config_map<'a>(
            &'a self,
            namespace: &'a str,
            name: &'a str,
        ) -> SourceFuture<'a, Option<ConfigMap>> {
            Box::pin(async move {
                self.check("configmap", namespace, name)?;
                Ok(self
                    .config_maps
                    .lock()
                    .unwrap()
                    .get(&(namespace.to_string(), name.to_string()))
                    .cloned())
            })
        }

        fn secret<'a>(
            &'a self,
            namespace: &'a str,
            name: &'a str,
        ) -> SourceFuture<'a, Option<Secret>> {
            Box::pin(async move {
                self.check("secret", namespace, name)?;
                Ok(self
                    .secrets
                    .lock()
                    .unwrap()
                    .get(&(namespace.to_string(), name.to_string()))
                    .cloned())
            })
        }

        fn services<'a>(&'a self, namespace: &'a str) -> SourceFuture<'a, Vec<Service>> {
            Box::pin(async move {
                self.check("services", namespace, "")?;
                Ok(self
                    .services
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
                    .cloned()
                    .collect())
            })
        }
    }

    /// Runs a future to completion on a fresh current-thread runtime.
    pub fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{block_on, FakeSource};
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web", "tier": "front \"end\""},
                "annotations": {"note": "x"}},
            "spec": spec,
            "status": {"podIP": "10.244.0.9", "podIPs": [{"ip": "10.244.0.9"}, {"ip": "fd00::9"}]}
        }))
        .unwrap()
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            node_name: "n1".into(),
            host_ips: vec!["192.0.2.1".into(), "2001:db8::1".into()],
            pod_ips: vec![],
            allocatable: BTreeMap::from([
                ("cpu".to_string(), KubeQuantity("2".into())),
                ("memory".to_string(), KubeQuantity("4Gi".into())),
            ]),
        }
    }

    fn source() -> FakeSource {
        let s = FakeSource::default();
        s.add_config_map(json!({"metadata": {"name": "cfg", "namespace": "shop"},
            "data": {"LEVEL": "debug", "mode": "$(LEVEL)-x", "bad=key": "v"}}));
        s.add_secret(json!({"metadata": {"name": "creds", "namespace": "shop"},
            "data": {"password": "czNjcjN0", "user": "YWRtaW4="}}));
        s.add_service(json!({"metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}));
        s.add_service(json!({"metadata": {"name": "redis-master", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.11", "ports": [{"name": "redis", "port": 6379}, {"port": 53, "protocol": "UDP"}]}}));
        s.add_service(
            json!({"metadata": {"name": "headless", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        );
        s.add_service(
            json!({"metadata": {"name": "elsewhere", "namespace": "other"},
            "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 80}]}}),
        );
        s
    }

    fn run(src: &FakeSource, spec: serde_json::Value) -> Result<ResolvedEnv, ContainerConfigError> {
        let p = pod(spec);
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        block_on(resolve(src, &p, &c, &facts()))
    }

    fn map(r: &ResolvedEnv) -> BTreeMap<String, String> {
        r.vars.iter().cloned().collect()
    }

    #[test]
    fn values_expand_against_earlier_variables_only() {
        let r = run(
            &source(),
            json!({"enableServiceLinks": false, "containers": [{"name": "c", "env": [
                {"name": "A", "value": "a"},
                {"name": "B", "value": "$(A)-$(C)-$$(A)-$(KUBERNETES_SERVICE_HOST)"},
                {"name": "C", "value": "c"},
                {"name": "EMPTY"},
            ]}]}),
        )
        .unwrap();
        let m = map(&r);
        assert_eq!(m["B"], "a-$(C)-$(A)-10.96.0.1");
        assert_eq!(m["EMPTY"], "");
        assert_eq!(&r.vars[0], &("A".to_string(), "a".to_string()));
    }

    #[test]
    fn config_map_and_secret_keys() {
        let r = run(
            &source(),
            json!({"enableServiceLinks": false, "containers": [{"name": "c", "env": [
                {"name": "L", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "P", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "O1", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                {"name": "O2", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
            ]}]}),
        )
        .unwrap();
        let m = map(&r);
        assert_eq!(
            m["L"], "$(LEVEL)-x",
            "values from objects are never expanded"
        );
        assert_eq!(m["P"], "s3cr3t");
        assert!(!m.contains_key("O1") && !m.contains_key("O2"));
    }

    #[test]
    fn missing_objects_and_keys_fail_in_kubelets_words() {
        let err = |env: serde_json::Value| {
            run(
                &source(),
                json!({"containers": [{"name": "c", "env": [env]}]}),
            )
            .unwrap_err()
        };
        let e =
            err(json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k"}}}));
        assert_eq!(e.to_string(), "configmap \"x\" not found");
        assert_eq!(e.reason(), "CreateContainerConfigError");
        assert_eq!(
            err(
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}})
            )
            .to_string(),
            "couldn't find key k in ConfigMap shop/cfg"
        );
        assert_eq!(
            err(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}))
                .to_string(),
            "secret \"s\" not found"
        );
        assert_eq!(
            err(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}))
                .to_string(),
            "couldn't find key k in Secret shop/creds"
        );
        assert_eq!(
            err(json!({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}))
                .to_string(),
            "field label not supported: spec.bogus"
        );
        assert_eq!(
            err(
                json!({"name": "X", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}})
            )
            .to_string(),
            "unsupported container resource : limits.gpu"
        );
        let broken = source();
        *broken.fail.lock().unwrap() = true;
        let e = run(&broken, json!({"containers": [{"name": "c"}]})).unwrap_err();
        assert!(
            e.to_string().contains("connection refused"),
            "an unreachable API is not 'not found': {e}"
        );
    }

    #[test]
    fn field_refs() {
        let r = run(
            &source(),
            json!({"enableServiceLinks": false, "nodeName": "n1", "serviceAccountName": "sa",
            "containers": [{"name": "c", "env": [
                {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "HIP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "HIPS", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIPs"}}},
                {"name": "PIP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "PIPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
            ]}]}),
        )
        .unwrap();
        let m = map(&r);
        let expect = [
            ("N", "web-1"),
            ("NS", "shop"),
            ("UID", "u-1"),
            ("APP", "web"),
            ("NOTE", "x"),
            ("NODE", "n1"),
            ("SA", "sa"),
            ("HIP", "192.0.2.1"),
            ("HIPS", "192.0.2.1,2001:db8::1"),
            ("PIP", "10.244.0.9"),
            ("PIPS", "10.244.0.9,fd00::9"),
        ];
        for (k, v) in expect {
            assert_eq!(m[k], v, "{k}");
        }
        let p = pod(json!({"containers": []}));
        let sandbox_ips = NodeFacts {
            pod_ips: vec!["10.244.0.77".into()],
            ..facts()
        };
        assert_eq!(
            pod_field(&p, "status.podIP", &sandbox_ips).unwrap(),
            "10.244.0.77",
            "the sandbox's IP wins over a status not yet written"
        );
        assert_eq!(
            pod_field(&p, "metadata.labels", &facts()).unwrap(),
            "app=\"web\"\ntier=\"front \\\"end\\\"\""
        );
    }

    #[test]
    fn resource_field_refs_default_to_node_allocatable() {
        let r = run(
            &source(),
            json!({"enableServiceLinks": false, "containers": [{"name": "c",
            "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
            "env": [
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                {"name": "MEM_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
                {"name": "EPH", "valueFrom": {"resourceFieldRef": {"resource": "requests.ephemeral-storage"}}},
            ]}]}),
        )
        .unwrap();
        let m = map(&r);
        assert_eq!(m["MEM"], (64 << 20).to_string());
        assert_eq!(m["MEM_MI"], "64");
        assert_eq!(m["CPU_LIMIT"], "2", "no limit: node allocatable");
        assert_eq!(m["CPU_REQ"], "1", "250m rounds up to 1 core");
        assert_eq!(m["CPU_REQ_M"], "250");
        assert_eq!(
            m["MEM_REQ"], "64",
            "no request: the limit, as API defaulting does"
        );
        assert_eq!(m["EPH"], "0");
        let e = run(
            &source(),
            json!({"containers": [{"name": "c", "env": [{"name": "X", "valueFrom":
                {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "0"}}}]}]}),
        )
        .unwrap_err();
        assert!(matches!(e, ContainerConfigError::BadDivisor { .. }), "{e}");
    }

    #[test]
    fn env_from_with_prefix_optional_and_invalid_keys() {
        let r = run(
            &source(),
            json!({"enableServiceLinks": false, "containers": [{"name": "c",
            "envFrom": [
                {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                {"secretRef": {"name": "creds"}},
                {"configMapRef": {"name": "missing", "optional": true}},
            ],
            "env": [{"name": "user", "value": "override-$(CFG_LEVEL)"}]}]}),
        )
        .unwrap();
        let m = map(&r);
        assert_eq!(m["CFG_LEVEL"], "debug");
        assert_eq!(m["CFG_mode"], "$(LEVEL)-x");
        assert_eq!(m["password"], "s3cr3t");
        assert_eq!(m["user"], "override-debug", "env wins over envFrom");
        assert!(!m.contains_key("CFG_bad=key"));
        assert_eq!(
            r.warnings,
            [EnvWarning {
                reason: "InvalidEnvironmentVariableNames",
                message: "Keys [CFG_bad=key] from the EnvFrom configMap shop/cfg were skipped since they are considered invalid environment variable names.".into()
            }]
        );
        let e = run(
            &source(),
            json!({"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "gone"}}]}]}),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "secret \"gone\" not found");
    }

    #[test]
    fn service_link_variables_of_the_namespace() {
        let r = run(
            &source(),
            json!({"containers": [{"name": "c", "env": [{"name": "REDIS_MASTER_SERVICE_PORT", "value": "mine"}]}]}),
        )
        .unwrap();
        let m = map(&r);
        let expect = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
            ("REDIS_MASTER_SERVICE_HOST", "10.96.0.11"),
            ("REDIS_MASTER_SERVICE_PORT", "mine"),
            ("REDIS_MASTER_SERVICE_PORT_REDIS", "6379"),
            ("REDIS_MASTER_PORT", "tcp://10.96.0.11:6379"),
            ("REDIS_MASTER_PORT_53_UDP", "udp://10.96.0.11:53"),
            ("REDIS_MASTER_PORT_53_UDP_PROTO", "udp"),
        ];
        for (k, v) in expect {
            assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(
            !m.keys()
                .any(|k| k.starts_with("HEADLESS") || k.starts_with("ELSEWHERE")),
            "no headless services, no other namespaces: {m:?}"
        );
        let off = run(
            &source(),
            json!({"enableServiceLinks": false, "containers": [{"name": "c"}]}),
        )
        .unwrap();
        let m = map(&off);
        assert_eq!(
            m["KUBERNETES_SERVICE_HOST"], "10.96.0.1",
            "master service always"
        );
        assert!(!m.keys().any(|k| k.starts_with("REDIS")));
    }

    #[test]
    fn pods_in_default_see_its_services_once() {
        let src = source();
        src.add_service(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 8080}]}}));
        let p: Pod =
            serde_json::from_value(json!({"metadata": {"name": "a", "namespace": "default"},
            "spec": {"containers": [{"name": "c"}]}}))
            .unwrap();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let r = block_on(resolve(&src, &p, &c, &facts())).unwrap();
        let names: Vec<&str> = r.vars.iter().map(|(k, _)| k.as_str()).collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(names.len(), unique.len(), "each variable once: {names:?}");
        let m = map(&r);
        assert_eq!(m["WEB_SERVICE_HOST"], "10.96.0.20");
        assert_eq!(m["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert!(
            !m.contains_key("REDIS_MASTER_SERVICE_HOST"),
            "not from shop"
        );
    }

    #[test]
    fn ipv6_service_urls_are_bracketed() {
        let s: Service = serde_json::from_value(json!({"metadata": {"name": "v6"},
            "spec": {"clusterIP": "fd00::1", "ports": [{"port": 80}]}}))
        .unwrap();
        let vars: BTreeMap<_, _> = service_link_variables(&s).into_iter().collect();
        assert_eq!(vars["V6_PORT"], "tcp://[fd00::1]:80");
        assert_eq!(vars["V6_SERVICE_HOST"], "fd00::1");
    }
}
