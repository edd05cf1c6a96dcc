//! The kinds this server serves: names for discovery and URLs, and per-kind behaviour
//! (schema round trip through k8s-openapi, defaulting, validation, table columns).

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::{
    apps::v1 as apps, certificates::v1 as certificates, coordination::v1 as coordination,
    core::v1 as core,
};

/// Decodes `value` as the typed object and encodes it again: this rejects wrong types and
/// yields the canonical form (unknown fields dropped), as kube-apiserver's decoder does.
pub type RoundTrip = fn(&Value) -> Result<Value, serde_json::Error>;

/// Adds the kind's OpenAPI schema (and everything it references) to the generator.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

fn schema_of<T: schemars::JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    generator.subschema_for::<T>()
}

fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, serde_json::Error> {
    let typed = T::deserialize(value)?;
    serde_json::to_value(typed)
}

pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served for this kind (besides the object itself).
    pub subresources: &'static [&'static str],
    pub round_trip: RoundTrip,
    pub schema: SchemaFn,
    /// Spec changes bump `metadata.generation` and status lives in its own subresource.
    pub has_spec_and_status: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, `pods`: the name kube-apiserver uses in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Store key prefix for all objects of this kind (optionally in one namespace).
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/", self.qualified(), ns),
            _ => format!("/registry/{}/", self.qualified()),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.key_prefix(namespace), name)
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

macro_rules! kind {
    ($group:expr, $version:expr, $plural:expr, $singular:expr, $kind:expr, $ty:ty,
     namespaced: $ns:expr, short: [$($short:expr),*], categories: [$($cat:expr),*],
     sub: [$($sub:expr),*], spec_status: $ss:expr) => {
        ResourceType {
            group: $group,
            version: $version,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            subresources: &[$($sub),*],
            round_trip: round_trip::<$ty>,
            schema: schema_of::<$ty>,
            has_spec_and_status: $ss,
        }
    };
}

/// Every served kind, in discovery order (core first, as kube-apiserver lists them).
pub static RESOURCES: &[ResourceType] = &[
    kind!("", "v1", "namespaces", "namespace", "Namespace", core::Namespace,
          namespaced: false, short: ["ns"], categories: [], sub: ["status", "finalize"], spec_status: false),
    kind!("", "v1", "pods", "pod", "Pod", core::Pod,
          namespaced: true, short: ["po"], categories: ["all"],
          sub: ["status", "binding", "eviction", "log", "exec", "attach", "portforward"], spec_status: true),
    kind!("", "v1", "services", "service", "Service", core::Service,
          namespaced: true, short: ["svc"], categories: ["all"], sub: ["status"], spec_status: true),
    kind!("", "v1", "endpoints", "endpoints", "Endpoints", core::Endpoints,
          namespaced: true, short: ["ep"], categories: [], sub: [], spec_status: false),
    kind!("", "v1", "nodes", "node", "Node", core::Node,
          namespaced: false, short: ["no"], categories: [], sub: ["status"], spec_status: true),
    kind!("", "v1", "configmaps", "configmap", "ConfigMap", core::ConfigMap,
          namespaced: true, short: ["cm"], categories: [], sub: [], spec_status: false),
    kind!("", "v1", "secrets", "secret", "Secret", core::Secret,
          namespaced: true, short: [], categories: [], sub: [], spec_status: false),
    kind!("", "v1", "events", "event", "Event", core::Event,
          namespaced: true, short: ["ev"], categories: [], sub: [], spec_status: false),
    kind!("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", core::ServiceAccount,
          namespaced: true, short: ["sa"], categories: [], sub: [], spec_status: false),
    kind!("apps", "v1", "deployments", "deployment", "Deployment", apps::Deployment,
          namespaced: true, short: ["deploy"], categories: ["all"], sub: ["status", "scale"], spec_status: true),
    kind!("apps", "v1", "replicasets", "replicaset", "ReplicaSet", apps::ReplicaSet,
          namespaced: true, short: ["rs"], categories: ["all"], sub: ["status", "scale"], spec_status: true),
    kind!("apps", "v1", "daemonsets", "daemonset", "DaemonSet", apps::DaemonSet,
          namespaced: true, short: ["ds"], categories: ["all"], sub: ["status"], spec_status: true),
    kind!("apps", "v1", "statefulsets", "statefulset", "StatefulSet", apps::StatefulSet,
          namespaced: true, short: ["sts"], categories: ["all"], sub: ["status", "scale"], spec_status: true),
    kind!("apps", "v1", "controllerrevisions", "controllerrevision", "ControllerRevision", apps::ControllerRevision,
          namespaced: true, short: [], categories: [], sub: [], spec_status: false),
    kind!("coordination.k8s.io", "v1", "leases", "lease", "Lease", coordination::Lease,
          namespaced: true, short: [], categories: [], sub: [], spec_status: false),
    kind!("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", discovery::EndpointSlice,
          namespaced: true, short: [], categories: [], sub: [], spec_status: false),
    kind!("certificates.k8s.io", "v1", "certificatesigningrequests", "certificatesigningrequest", "CertificateSigningRequest",
          certificates::CertificateSigningRequest,
          namespaced: false, short: ["csr"], categories: [], sub: ["status", "approval"], spec_status: true),
];

/// Groups in discovery order, each with its versions.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for rt in RESOURCES {
        if !rt.group.is_empty() && !out.contains(&(rt.group, rt.version)) {
            out.push((rt.group, rt.version));
        }
    }
    out
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn find_kind(group: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

pub fn namespaces() -> &'static ResourceType {
    find("", "v1", "namespaces").expect("namespaces are registered")
}

pub fn services() -> &'static ResourceType {
    find("", "v1", "services").expect("services are registered")
}
