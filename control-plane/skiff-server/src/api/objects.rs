//! The object verbs: get, list, create, update, patch, delete, deletecollection, and the
//! status, scale, binding, eviction and finalize subresources.

use std::collections::HashSet;

use base64::Engine;
use serde_json::{json, Map, Value};
use skiff_store::StoreError;

use super::patch::{self, PatchType};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, FieldError};
use super::table::{self, IncludeObject};
use super::{json_response, managed_fields, ApiServer, Body, Query, Target};
use crate::admission::{defaults, validation};
use crate::auth::User;
use crate::registry::{self, ResourceType};
use http::Response;

pub struct RequestContext {
    pub user: User,
    pub accept: String,
    pub content_type: String,
    pub user_agent: String,
    pub query: Query,
}

impl RequestContext {
    pub fn wants_table(&self) -> bool {
        self.accept
            .split(',')
            .next()
            .is_some_and(|first| first.replace(' ', "").contains("as=Table"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

fn field_validation(q: &Query) -> Result<FieldValidation, ApiError> {
    match q.get("fieldValidation") {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
        ))),
    }
}

/// Parses a request body by its Content-Type: JSON, YAML or Kubernetes protobuf.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    if skiff_protobuf::is_protobuf_content_type(media) {
        let decoded = skiff_protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request was in an unknown format: {e}"
            ))
        })?;
        let mut object = decoded.object;
        if let Some(o) = object.as_object_mut() {
            o.insert("apiVersion".into(), json!(decoded.api_version));
            o.insert("kind".into(), json!(decoded.kind));
        }
        return Ok(object);
    }
    let value: Value = match media {
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        "application/json"
        | "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/apply-patch+json"
        | "" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?,
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other:?})"),
            ))
        }
    };
    Ok(value)
}

/// Fields present in `input` that the typed decode dropped: kube-apiserver's "unknown field".
fn unknown_fields(input: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => unknown_fields(v, bv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta(obj: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    obj.get("metadata")
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    meta(obj).get(key).and_then(Value::as_str)
}

fn random_suffix() -> String {
    use rand::Rng;
    // kube's alphabet: no vowels (no words) and no easily confused characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn has_type_meta(rt: &ResourceType, obj: &Value) -> bool {
    obj.get("apiVersion").and_then(Value::as_str) == Some(&rt.api_version())
        && obj.get("kind").and_then(Value::as_str) == Some(rt.kind)
}

fn with_type_meta(rt: &ResourceType, mut obj: Value) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(rt.api_version()));
        o.insert("kind".into(), json!(rt.kind));
    }
    obj
}

/// What goes to the store: the object without its resourceVersion (the store's revision is).
fn storable(obj: &Value) -> Vec<u8> {
    serde_json::to_vec(&WithoutResourceVersion(obj)).expect("JSON values serialize")
}

/// Serializes an object as it is but for `metadata.resourceVersion`, so that storing an
/// object needs no copy of it.
struct WithoutResourceVersion<'a>(&'a Value);

impl serde::Serialize for WithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(top) = self.0.as_object() else {
            return self.0.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(top.len()))?;
        for (key, value) in top {
            match value {
                Value::Object(meta) if key == "metadata" => {
                    map.serialize_entry(key, &MetadataWithoutResourceVersion(meta))?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        map.end()
    }
}

struct MetadataWithoutResourceVersion<'a>(&'a serde_json::Map<String, Value>);

impl serde::Serialize for MetadataWithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.0 {
            if key != "resourceVersion" {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

fn resource_version_of(obj: &Value) -> Option<i64> {
    meta_str(obj, "resourceVersion").and_then(|s| s.parse().ok())
}

struct Continue {
    start_after: String,
    /// The revision of the list's first page, which every later page shows.
    revision: i64,
}

fn encode_continue(key: &str, rv: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "start": key}).to_string())
}

fn decode_continue(token: &str) -> Result<Continue, ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    let revision = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    if !start.starts_with("/registry/") || revision < 0 {
        return Err(bad());
    }
    Ok(Continue {
        start_after: start.to_string(),
        revision,
    })
}

pub struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    pub fn parse(rt: &ResourceType, q: &Query) -> Result<Self, ApiError> {
        Ok(Self {
            labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(rt.kind, q.get("fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
        })
    }

    pub fn matches(&self, rt: &ResourceType, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(rt.kind, obj)
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

/// Allocation of Service ClusterIPs and NodePorts, derived from the Services that exist, so
/// that deleting a Service releases its addresses and a restart loses nothing.
fn allocate_service(
    server: &ApiServer,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let ty = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let (prefix, _) = (registry::services().key_prefix(None), ());
    let (existing, _) = server.cache.list(&prefix, None);
    let self_ns = meta_str(svc, "namespace").unwrap_or("").to_string();
    let self_name = meta_str(svc, "name").unwrap_or("").to_string();
    let self_key = (self_ns.as_str(), self_name.as_str());
    let mut used_ips = HashSet::new();
    let mut used_ports = HashSet::new();
    for (_, other) in &existing {
        if (
            meta_str(other, "namespace").unwrap_or(""),
            meta_str(other, "name").unwrap_or(""),
        ) == self_key
        {
            continue;
        }
        if let Some(ip) = other.pointer("/spec/clusterIP").and_then(Value::as_str) {
            used_ips.insert(ip.to_string());
        }
        for p in other
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                used_ports.insert(np);
            }
        }
    }
    let net = server.settings.service_cidr;
    if ty != "ExternalName" {
        let requested = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let kept = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let ip = if requested == "None" {
            "None".to_string()
        } else if !requested.is_empty() {
            let addr: std::net::Ipv4Addr = requested.parse().map_err(|_| {
                ApiError::invalid(
                    "Service",
                    "",
                    self_key.1,
                    vec![FieldError::invalid(
                        "spec.clusterIP",
                        &requested,
                        "must be a valid IP address",
                    )],
                )
            })?;
            if old.is_none() && (!net.contains(addr) || used_ips.contains(&requested)) {
                let why = if used_ips.contains(&requested) {
                    "provided IP is already allocated"
                } else {
                    "provided IP is not in the valid range"
                };
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    self_key.1,
                    vec![FieldError::invalid("spec.clusterIP", &requested, why)],
                ));
            }
            requested
        } else if let Some(k) = kept {
            k
        } else {
            // .1 belongs to the `kubernetes` service; hand out the rest in order.
            let found = (2..net.size() - 1)
                .map(|n| net.nth(n).to_string())
                .find(|ip| !used_ips.contains(ip));
            found.ok_or_else(|| {
                ApiError::new(
                    500,
                    "InternalError",
                    "Internal error occurred: failed to allocate a serviceIP: range is full",
                )
            })?
        };
        svc["spec"]["clusterIP"] = json!(ip);
        if ip != "None" {
            svc["spec"]["clusterIPs"] = json!([ip]);
        } else {
            svc["spec"]["clusterIPs"] = json!(["None"]);
        }
    }
    let needs_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let (lo, hi) = server.settings.node_port_range;
    let old_ports: Vec<Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Array(ports)) = svc.pointer_mut("/spec/ports") {
        let mut taken_here = HashSet::new();
        for (i, p) in ports.iter_mut().enumerate() {
            if !needs_node_ports {
                if let Some(o) = p.as_object_mut() {
                    o.remove("nodePort");
                }
                continue;
            }
            let requested = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
            let previous = old_ports
                .iter()
                .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
                .and_then(|o| o.get("nodePort"))
                .and_then(Value::as_i64);
            let port = if requested != 0 {
                let path = format!("spec.ports[{i}].nodePort");
                if requested < lo as i64 || requested > hi as i64 {
                    return Err(ApiError::invalid("Service", "", self_key.1, vec![FieldError::invalid(path, requested, format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"))]));
                }
                if (used_ports.contains(&requested) || taken_here.contains(&requested))
                    && previous != Some(requested)
                {
                    return Err(ApiError::invalid(
                        "Service",
                        "",
                        self_key.1,
                        vec![FieldError::invalid(
                            path,
                            requested,
                            "provided port is already allocated",
                        )],
                    ));
                }
                requested
            } else if let Some(prev) = previous {
                prev
            } else {
                use rand::Rng;
                let span = (hi - lo + 1) as i64;
                let start = rand::thread_rng().gen_range(0..span);
                (0..span)
                    .map(|k| lo as i64 + (start + k) % span)
                    .find(|c| !used_ports.contains(c) && !taken_here.contains(c))
                    .ok_or_else(|| {
                        ApiError::new(
                            500,
                            "InternalError",
                            "Internal error occurred: failed to allocate a nodePort: range is full",
                        )
                    })?
            };
            taken_here.insert(port);
            p["nodePort"] = json!(port);
        }
    }
    Ok(())
}

fn conflict_message() -> &'static str {
    "the object has been modified; please apply your changes to the latest version and try again"
}

fn ensure_namespace_active(server: &ApiServer, ns: &str) -> Result<(), ApiError> {
    // Every create in a namespace passes here: read the phase alone, not the whole object.
    #[derive(serde::Deserialize)]
    struct Phase {
        phase: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Namespace {
        #[serde(default)]
        status: Option<Phase>,
    }
    let key = registry::namespaces().key(None, ns);
    let Some(bytes) = server.cache.get_encoded(&key) else {
        return Err(ApiError::not_found("namespaces", ns));
    };
    let phase = serde_json::from_slice::<Namespace>(&bytes)
        .ok()
        .and_then(|n| n.status)
        .and_then(|s| s.phase);
    if phase.as_deref() == Some("Terminating") {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        )));
    }
    Ok(())
}

/// Records that `manager` created `obj` (whose managedFields were cleared): it owns every
/// field, in one entry with operation Update, as kube-apiserver records a create.
fn track_create(obj: &mut Value, rt: &ResourceType, manager: &str) {
    let fields = managed_fields::fields_v1_of(obj);
    let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if fields.as_object().is_some_and(|f| f.is_empty()) {
        m.remove("managedFields");
        return;
    }
    let mut entry =
        managed_fields::new_entry(manager, "Update", None, &rt.api_version(), &now_rfc3339());
    entry["fieldsV1"] = fields;
    m.insert("managedFields".into(), Value::Array(vec![entry]));
}

/// Records that `manager` set the fields that changed from `old` to `obj` with a non-apply
/// operation: it gains them and every other manager loses them, as kube-apiserver's field
/// manager does.
fn track_update(
    obj: &mut Value,
    old: &Value,
    rt: &ResourceType,
    manager: &str,
    subresource: Option<&str>,
) {
    let mut entries = managed_fields::entries(old);
    let changed = managed_fields::changed_fields(old, obj);
    if changed.is_empty() {
        managed_fields::store_entries(obj, entries, &rt.api_version(), &now_rfc3339());
        return;
    }
    for e in entries.iter_mut() {
        e.fields.retain(|p| !changed.contains(p));
    }
    let present: managed_fields::FieldSet = changed
        .into_iter()
        .filter(|p| managed_fields::value_at(obj, p).is_some())
        .collect();
    let own = entries.iter_mut().find(|e| {
        e.manager == manager && e.operation == "Update" && e.subresource.as_deref() == subresource
    });
    match own {
        Some(e) => {
            e.fields.extend(present);
            e.raw = Value::Null;
        }
        None => entries.push(managed_fields::Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            subresource: subresource.map(str::to_string),
            fields: present,
            raw: Value::Null,
        }),
    }
    managed_fields::store_entries(obj, entries, &rt.api_version(), &now_rfc3339());
}

/// Server-side apply of `config` by `manager` onto `live`: conflicts with other owners (409
/// unless `force`), merge, and removal of fields this manager applied before but dropped now.
fn server_side_apply(
    rt: &ResourceType,
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApiError> {
    let applied = managed_fields::fields_of(config);
    // Only leaves carry values worth comparing; list-item markers are not conflicts.
    let leaves: Vec<&managed_fields::Path> = applied
        .iter()
        .filter(|p| {
            !applied
                .range((*p).clone()..)
                .nth(1)
                .is_some_and(|next| next.starts_with(p))
        })
        .collect();
    let mut entries = managed_fields::entries(live);
    let mut conflicts: Vec<(String, managed_fields::Path)> = Vec::new();
    for e in entries.iter() {
        if e.manager == manager && e.operation == "Apply" {
            continue;
        }
        for p in &leaves {
            if e.fields.contains(*p)
                && managed_fields::value_at(live, p) != managed_fields::value_at(config, p)
            {
                conflicts.push((e.manager.clone(), (*p).clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": {}", managed_fields::display(p)))
            .collect();
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": managed_fields::display(p)}))
            .collect();
        let n = conflicts.len();
        let plural = if n == 1 { "conflict" } else { "conflicts" };
        let mut err = ApiError::new(
            409,
            "Conflict",
            format!("Apply failed with {n} {plural}: {}", lines.join("\n")),
        );
        err.details = Some(
            json!({"name": meta_str(live, "name").unwrap_or(""), "group": rt.group, "kind": rt.plural, "causes": causes}),
        );
        return Err(err);
    }
    for e in entries.iter_mut() {
        if !(e.manager == manager && e.operation == "Apply") {
            e.fields.retain(|p| !applied.contains(p));
        }
    }
    let previous = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply")
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: managed_fields::FieldSet = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut doc = live.clone();
    apply_patch(PatchType::Apply, &mut doc, config)?;
    let mut dropped: Vec<&managed_fields::Path> = previous
        .iter()
        .filter(|p| !applied.contains(*p) && !others.contains(*p))
        .collect();
    // Deepest first, so that removing an item does not hide its own fields' paths.
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        managed_fields::remove_at(&mut doc, p);
    }
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    entries.push(managed_fields::Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        subresource: None,
        fields: applied,
        raw: Value::Null,
    });
    managed_fields::store_entries(&mut doc, entries, &rt.api_version(), &now_rfc3339());
    Ok(doc)
}

impl ApiServer {
    fn respond_object(
        &self,
        rt: &ResourceType,
        ctx: &RequestContext,
        code: u16,
        obj: &Value,
    ) -> Response<Body> {
        if ctx.wants_table() {
            let rv = meta_str(obj, "resourceVersion").unwrap_or("").to_string();
            let include = IncludeObject::parse(ctx.query.get("includeObject"));
            return json_response(
                code,
                &table::table(rt.kind, &[obj], &rv, None, include, true),
            );
        }
        if has_type_meta(rt, obj) {
            json_response(code, obj)
        } else {
            json_response(code, &with_type_meta(rt, obj.clone()))
        }
    }

    /// Decodes through the kind's type, applies defaults and validation; returns the object
    /// to store and any warnings.
    fn admit(
        &self,
        rt: &ResourceType,
        ctx: &RequestContext,
        input: Value,
        old: Option<&Value>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let name = meta_str(&input, "name").unwrap_or("").to_string();
        let decoded = (rt.round_trip)(&input).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                rt.kind, rt.version, rt.kind
            ))
        })?;
        let mut unknown = Vec::new();
        unknown_fields(&input, &decoded, "", &mut unknown);
        let mut warnings = Vec::new();
        match field_validation(&ctx.query)? {
            FieldValidation::Strict if !unknown.is_empty() => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field \"{f}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
            FieldValidation::Warn => {
                warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")))
            }
            _ => {}
        }
        let mut obj = decoded;
        // Go's omitempty: empty metadata collections are not stored.
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in [
                "finalizers",
                "ownerReferences",
                "labels",
                "annotations",
                "managedFields",
            ] {
                let empty = match m.get(key) {
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(Value::Object(o)) => o.is_empty(),
                    _ => false,
                };
                if empty {
                    m.remove(key);
                }
            }
        }
        defaults::apply(rt.kind, &mut obj);
        let mut errors = validation::validate(rt.kind, rt.namespaced, &obj);
        if let Some(old) = old {
            errors.extend(validation::immutable(rt.kind, old, &obj));
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(rt.kind, rt.group, &name, errors));
        }
        Ok((obj, warnings))
    }

    /// Waits until the cache holds every write answered so far (see `Cache::wait_fresh`).
    pub(super) async fn fresh(&self) -> Result<(), ApiError> {
        self.cache
            .wait_fresh()
            .await
            .map_err(|behind| ApiError::cache_behind(&behind))
    }

    async fn commit_create(
        &self,
        rt: &ResourceType,
        key: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        Ok(self.commit_create_encoded(rt, key, obj).await?.0)
    }

    /// `commit_create`, also returning the object as JSON with its resourceVersion: the
    /// stored bytes with it spliced in, which saves encoding the object a second time.
    async fn commit_create_encoded(
        &self,
        rt: &ResourceType,
        key: &str,
        mut obj: Value,
    ) -> Result<(Value, crate::cache::Encoded), ApiError> {
        let kv = self
            .store
            .create(key, storable(&obj))
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists { .. } => {
                    ApiError::already_exists(&rt.qualified(), meta_str(&obj, "name").unwrap_or(""))
                }
                other => other.into(),
            })?;
        self.cache.note_committed(kv.mod_revision);
        crate::cache::set_resource_version(&mut obj, kv.mod_revision);
        let encoded = crate::cache::with_resource_version(&kv.value, kv.mod_revision);
        Ok((obj, encoded))
    }

    pub fn get(&self, t: &Target, ctx: &RequestContext) -> Result<Response<Body>, ApiError> {
        let name = t.name.as_deref().unwrap_or("");
        let obj = self
            .cache
            .get(&t.rt.key(t.namespace.as_deref(), name))
            .ok_or_else(|| ApiError::not_found(&t.rt.qualified(), name))?;
        match t.subresource.as_deref() {
            None | Some("status") => Ok(self.respond_object(t.rt, ctx, 200, &obj)),
            Some("scale") => Ok(json_response(200, &scale_of(t.rt, &obj))),
            Some(other) => Err(ApiError::method_not_allowed(format!(
                "GET is not supported on {other}"
            ))),
        }
    }

    pub fn list(&self, t: &Target, ctx: &RequestContext) -> Result<Response<Body>, ApiError> {
        let selectors = Selectors::parse(t.rt, &ctx.query)?;
        let limit: usize = match ctx.query.get("limit") {
            None | Some("") => 0,
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        };
        let after = ctx
            .query
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(decode_continue)
            .transpose()?;
        let prefix = t.rt.key_prefix(t.namespace.as_deref());
        let (items, revision) = match &after {
            None => self.cache.list_encoded(&prefix, None),
            Some(c) => {
                if !c.start_after.starts_with(&prefix) {
                    return Err(ApiError::bad_request(
                        "continue key is not valid: the token was issued for another list",
                    ));
                }
                let items = self
                    .cache
                    .list_encoded_at(&prefix, &c.start_after, c.revision)
                    .map_err(|too_old| {
                        ApiError::gone(format!(
                            "the continue token is too old: the list's revision {} is no longer \
                             kept (the oldest is {}); start the list again without continue",
                            c.revision, too_old.oldest
                        ))
                    })?;
                (items, c.revision)
            }
        };
        // Objects are parsed only when something needs their fields.
        let parse = !selectors.is_empty() || ctx.wants_table();
        let mut selected: Vec<(&crate::cache::Encoded, Option<Value>)> = Vec::new();
        let mut next = None;
        let mut last_key: Option<&str> = None;
        for (key, bytes) in &items {
            let value = parse.then(|| crate::cache::decode(bytes));
            if let Some(v) = &value {
                if !selectors.matches(t.rt, v) {
                    continue;
                }
            }
            if limit > 0 && selected.len() == limit {
                // The token names the last returned key: the next page starts after it.
                next = last_key.map(|k| encode_continue(k, revision));
                break;
            }
            selected.push((bytes, value));
            last_key = Some(key);
        }
        let rv = revision.to_string();
        if ctx.wants_table() {
            let refs: Vec<&Value> = selected.iter().filter_map(|(_, v)| v.as_ref()).collect();
            let include = IncludeObject::parse(ctx.query.get("includeObject"));
            return Ok(json_response(
                200,
                &table::table(t.rt.kind, &refs, &rv, next.as_deref(), include, true),
            ));
        }
        let mut metadata = json!({"resourceVersion": rv});
        if let Some(token) = next {
            metadata["continue"] = json!(token);
        }
        // The stored bytes are the items: copy them into the response, no re-encoding.
        let head = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(), "metadata": metadata});
        let mut body = serde_json::to_vec(&head).expect("JSON");
        body.pop();
        body.extend_from_slice(b",\"items\":[");
        let total: usize = selected.iter().map(|(b, _)| b.len() + 1).sum();
        body.reserve(total + 2);
        for (i, (bytes, _)) in selected.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(bytes);
        }
        body.extend_from_slice(b"]}");
        Ok(super::bytes_response(200, "application/json", body))
    }

    pub async fn create(
        &self,
        t: &Target,
        ctx: &RequestContext,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        match t.subresource.as_deref() {
            None => {}
            Some("binding") => return self.bind(t, ctx, body).await,
            Some("eviction") => return self.evict(t, ctx).await,
            Some(other) => {
                return Err(ApiError::method_not_allowed(format!(
                    "POST is not supported on {other}"
                )))
            }
        }
        if t.name.is_some() {
            return Err(ApiError::method_not_allowed(
                "POST is not supported on a named object; use PUT or PATCH",
            ));
        }
        let input = decode_body(&ctx.content_type, body)?;
        if let Some(ns) = &t.namespace {
            let ns_key = registry::namespaces().key(None, ns);
            if self.cache.get_encoded(&ns_key).is_none() {
                // Perhaps created a moment ago: plain creates skip the freshness wait.
                self.fresh().await?;
            }
        }
        let (obj, warnings) = self.prepare_create(t, ctx, input)?;
        let mut obj = obj;
        let dry_run = ctx.query.dry_run()?;
        let key =
            t.rt.key(t.namespace.as_deref(), meta_str(&obj, "name").unwrap_or(""));
        let stored = {
            let _guard = if t.rt.kind == "Service" {
                Some(self.allocation.lock().await)
            } else {
                None
            };
            if t.rt.kind == "Service" {
                // Allocation reads every Service: it must see the ones just created.
                self.fresh().await?;
                allocate_service(self, &mut obj, None)?;
            }
            if dry_run {
                self.fresh().await?;
                if self.cache.get(&key).is_some() {
                    return Err(ApiError::already_exists(
                        &t.rt.qualified(),
                        meta_str(&obj, "name").unwrap_or(""),
                    ));
                }
                (obj, None)
            } else {
                let (obj, encoded) = self.commit_create_encoded(t.rt, &key, obj).await?;
                (obj, Some(encoded))
            }
        };
        let mut resp = match stored {
            // The stored bytes are the answer when they carry the type meta (they always
            // should: prepare_create sets it).
            (obj, Some(encoded)) if !ctx.wants_table() && has_type_meta(t.rt, &obj) => {
                super::bytes_response(201, "application/json", encoded.to_vec())
            }
            (obj, _) => self.respond_object(t.rt, ctx, 201, &obj),
        };
        add_warnings(&mut resp, &warnings);
        Ok(resp)
    }

    /// Everything a create does before allocation and storage.
    fn prepare_create(
        &self,
        t: &Target,
        ctx: &RequestContext,
        mut input: Value,
    ) -> Result<(Value, Vec<String>), ApiError> {
        if !input.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        check_type_meta(t.rt, &mut input)?;
        let m = meta_mut(&mut input);
        if let Some(ns) = &t.namespace {
            match m.get("namespace").and_then(Value::as_str) {
                Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
                _ => {
                    m.insert("namespace".into(), json!(ns));
                }
            }
        } else if !t.rt.namespaced {
            m.remove("namespace");
        }
        let has_name = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name {
            match m.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let base: String = prefix.chars().take(63 - 5).collect();
                    m.insert("name".into(), json!(format!("{base}{}", random_suffix())));
                }
                _ => {
                    return Err(ApiError::invalid(
                        t.rt.kind,
                        t.rt.group,
                        "",
                        vec![FieldError {
                            path: "metadata.name".into(),
                            reason: "FieldValueRequired",
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ))
                }
            }
        }
        for system in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "generation",
        ] {
            m.remove(system);
        }
        if let Some(ns) = &t.namespace {
            ensure_namespace_active(self, ns)?;
        }
        if t.rt.kind == "CertificateSigningRequest" {
            crate::csr::stamp_requester(&mut input, &ctx.user);
        }
        let (mut obj, warnings) = self.admit(t.rt, ctx, input, None)?;
        let kind = t.rt.kind;
        let qos = obj
            .get("spec")
            .map(defaults::qos_class)
            .unwrap_or("BestEffort");
        if t.rt.has_spec_and_status {
            obj["status"] = match kind {
                "Pod" => json!({"phase": "Pending", "qosClass": qos}),
                "Service" => json!({"loadBalancer": {}}),
                _ => json!({}),
            };
        }
        let m = meta_mut(&mut obj);
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if t.rt.has_spec_and_status && kind != "Pod" && kind != "Node" && kind != "Service" {
            m.insert("generation".into(), json!(1));
        }
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
        track_create(&mut obj, t.rt, &field_manager(ctx));
        Ok((obj, warnings))
    }

    pub async fn update(
        &self,
        t: &Target,
        ctx: &RequestContext,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let name = t
            .name
            .clone()
            .ok_or_else(|| ApiError::method_not_allowed("PUT needs an object name"))?;
        let mut input = decode_body(&ctx.content_type, body)?;
        if !input.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        if t.subresource.as_deref() == Some("scale") {
            let replicas = input
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            return self
                .set_scale(t, ctx, replicas, resource_version_of(&input))
                .await;
        }
        check_type_meta(t.rt, &mut input)?;
        let body_name = meta_str(&input, "name").unwrap_or("");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let expected = resource_version_of(&input);
        let (obj, code) = self
            .write_update(t, ctx, &name, expected, "Update", |_old| Ok(input.clone()))
            .await?;
        Ok(self.respond_object(t.rt, ctx, code, &obj))
    }

    /// A read-modify-write on behalf of the server itself (garbage collector, lifecycle).
    pub async fn update_with(
        &self,
        t: &Target,
        ctx: &RequestContext,
        name: &str,
        build: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        self.write_update(t, ctx, name, None, "Update", |old| build(old))
            .await
            .map(|(v, _)| v)
    }

    /// Read-modify-write with compare-and-swap; retries on a conflict unless the client named
    /// the resourceVersion it started from.
    async fn write_update(
        &self,
        t: &Target,
        ctx: &RequestContext,
        name: &str,
        expected: Option<i64>,
        operation: &str,
        build: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<(Value, u16), ApiError> {
        let key = t.rt.key(t.namespace.as_deref(), name);
        let qualified = t.rt.qualified();
        for _attempt in 0..8 {
            let old = self
                .cache
                .get(&key)
                .ok_or_else(|| ApiError::not_found(&qualified, name))?;
            let old_rv = resource_version_of(&old).unwrap_or(0);
            if let Some(rv) = expected {
                if rv != old_rv {
                    return Err(ApiError::conflict(&qualified, name, conflict_message()));
                }
            }
            let mut input = build(&old)?;
            check_type_meta(t.rt, &mut input)?;
            let mut obj = self.merge_update(t, ctx, &old, input, operation)?;
            let _guard = if t.rt.kind == "Service" {
                Some(self.allocation.lock().await)
            } else {
                None
            };
            if t.rt.kind == "Service" {
                allocate_service(self, &mut obj, Some(&old))?;
            }
            let mut unchanged_probe = obj.clone();
            crate::cache::set_resource_version(&mut unchanged_probe, old_rv);
            if strip_managed_time(&unchanged_probe) == strip_managed_time(&old) {
                return Ok(((*old).clone(), 200));
            }
            if ctx.query.dry_run()? {
                return Ok((obj, 200));
            }
            // Removing the last finalizer of an object being deleted completes the deletion.
            let finalizers_empty = meta(&obj)
                .get("finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty());
            if meta(&obj)
                .get("deletionTimestamp")
                .is_some_and(|d| !d.is_null())
                && finalizers_empty
                && !is_graceful_pod(t.rt, &obj)
            {
                return match self.store.delete(&key, Some(old_rv)).await {
                    Ok((_, rev)) => {
                        self.cache.wait_for(rev).await;
                        crate::gc::spawn_cascade(self, &obj);
                        let mut out = obj;
                        crate::cache::set_resource_version(&mut out, rev);
                        Ok((out, 200))
                    }
                    Err(StoreError::Conflict { .. }) if expected.is_none() => continue,
                    Err(StoreError::Conflict { .. }) => {
                        Err(ApiError::conflict(&qualified, name, conflict_message()))
                    }
                    Err(StoreError::NotFound { .. }) => Err(ApiError::not_found(&qualified, name)),
                    Err(e) => Err(e.into()),
                };
            }
            match self.store.update(&key, storable(&obj), old_rv).await {
                Ok(kv) => {
                    self.cache.wait_for(kv.mod_revision).await;
                    crate::cache::set_resource_version(&mut obj, kv.mod_revision);
                    return Ok((obj, 200));
                }
                Err(StoreError::Conflict { .. }) if expected.is_none() => continue,
                Err(StoreError::Conflict { .. }) => {
                    return Err(ApiError::conflict(&qualified, name, conflict_message()))
                }
                Err(StoreError::NotFound { .. }) => {
                    return Err(ApiError::not_found(&qualified, name))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(
            &qualified,
            name,
            "too many concurrent writers; try again",
        ))
    }

    /// Combines the stored object and the client's new version the way the kind's strategy
    /// does: system metadata is kept, status and spec each change only through their own door.
    fn merge_update(
        &self,
        t: &Target,
        ctx: &RequestContext,
        old: &Value,
        input: Value,
        operation: &str,
    ) -> Result<Value, ApiError> {
        let mut input = input;
        let status_only = t.subresource.as_deref() == Some("status");
        if status_only {
            let mut merged = old.clone();
            merged["status"] = input.get("status").cloned().unwrap_or(json!({}));
            input = merged;
        } else if t.subresource.as_deref() == Some("binding") {
            // A binding sets the node and the PodScheduled condition in one write; nothing
            // else of the pod changes.
            let mut merged = old.clone();
            merged["spec"]["nodeName"] = input
                .pointer("/spec/nodeName")
                .cloned()
                .unwrap_or(Value::Null);
            merged["status"] = input.get("status").cloned().unwrap_or(json!({}));
            input = merged;
        } else if t.subresource.as_deref() == Some("approval") {
            // Approval changes only the conditions; the certificate is the signer's.
            let mut merged = old.clone();
            merged["status"]["conditions"] = input
                .pointer("/status/conditions")
                .cloned()
                .unwrap_or(json!([]));
            input = merged;
        } else if t.subresource.as_deref() == Some("finalize") {
            let mut merged = old.clone();
            merged["spec"]["finalizers"] = input
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            input = merged;
        } else if t.rt.has_spec_and_status || t.rt.kind == "Namespace" {
            match old.get("status") {
                Some(s) => input["status"] = s.clone(),
                None => {
                    if let Some(o) = input.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        let m = meta_mut(&mut input);
        let om = meta(old);
        for keep in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ] {
            match om.get(keep) {
                Some(v) => {
                    m.insert(keep.into(), v.clone());
                }
                None => {
                    m.remove(keep);
                }
            }
        }
        if !m.contains_key("managedFields") {
            if let Some(mf) = om.get("managedFields") {
                m.insert("managedFields".into(), mf.clone());
            }
        }
        m.remove("resourceVersion");
        if om.get("deletionTimestamp").is_some_and(|d| !d.is_null()) {
            // New finalizers may not be added to an object that is going away.
            let old_f: Vec<Value> = om
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(Value::Array(new_f)) = m.get("finalizers") {
                if new_f.iter().any(|f| !old_f.contains(f)) {
                    return Err(ApiError::invalid(
                        t.rt.kind,
                        t.rt.group,
                        meta_str(old, "name").unwrap_or(""),
                        vec![FieldError::forbidden(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted",
                        )],
                    ));
                }
            }
        }
        let (mut obj, _warnings) = self.admit(t.rt, ctx, input, Some(old))?;
        if t.rt.has_spec_and_status && !status_only && old.get("spec") != obj.get("spec") {
            if let Some(g) = meta(old).get("generation").and_then(Value::as_i64) {
                meta_mut(&mut obj).insert("generation".into(), json!(g + 1));
            }
        }
        if operation != "Apply" {
            // Ownership comes from the server's record, never from the client's copy.
            if let (Some(m), Some(kept)) = (
                obj.get_mut("metadata").and_then(Value::as_object_mut),
                meta(old).get("managedFields"),
            ) {
                m.insert("managedFields".into(), kept.clone());
            }
            track_update(
                &mut obj,
                old,
                t.rt,
                &field_manager(ctx),
                t.subresource
                    .as_deref()
                    .filter(|s| matches!(*s, "status" | "scale" | "approval")),
            );
        }
        Ok(obj)
    }

    pub async fn patch(
        &self,
        t: &Target,
        ctx: &RequestContext,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let name = t
            .name
            .clone()
            .ok_or_else(|| ApiError::method_not_allowed("PATCH needs an object name"))?;
        let kind = PatchType::from_content_type(&ctx.content_type).ok_or_else(|| {
            ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {:?})", ctx.content_type))
        })?;
        let patch_body = decode_body(&ctx.content_type, body)?;
        if kind != PatchType::Json && !patch_body.is_object() {
            return Err(ApiError::bad_request("the patch must be a JSON object"));
        }
        let key = t.rt.key(t.namespace.as_deref(), &name);
        if kind == PatchType::Apply {
            if ctx.query.get("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
            }
            if self.cache.get(&key).is_none() && t.subresource.is_none() {
                let mut input = patch_body.clone();
                let body_name = meta_str(&input, "name").unwrap_or("");
                if body_name != name {
                    return Err(ApiError::bad_request(format!("the name of the object ({body_name}) does not match the name on the URL ({name})")));
                }
                meta_mut(&mut input).remove("managedFields");
                let applied = managed_fields::fields_of(&input);
                let (mut obj, warnings) = self.prepare_create(t, ctx, input)?;
                let entry = managed_fields::Entry {
                    manager: field_manager(ctx),
                    operation: "Apply".into(),
                    subresource: None,
                    fields: applied,
                    raw: Value::Null,
                };
                managed_fields::store_entries(
                    &mut obj,
                    vec![entry],
                    &t.rt.api_version(),
                    &now_rfc3339(),
                );
                let _guard = if t.rt.kind == "Service" {
                    Some(self.allocation.lock().await)
                } else {
                    None
                };
                if t.rt.kind == "Service" {
                    allocate_service(self, &mut obj, None)?;
                }
                let stored = if ctx.query.dry_run()? {
                    obj
                } else {
                    self.commit_create(t.rt, &key, obj).await?
                };
                let mut resp = self.respond_object(t.rt, ctx, 201, &stored);
                add_warnings(&mut resp, &warnings);
                return Ok(resp);
            }
        }
        let expected = patch_body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok());
        if t.subresource.as_deref() == Some("scale") {
            let old = self
                .cache
                .get(&key)
                .ok_or_else(|| ApiError::not_found(&t.rt.qualified(), &name))?;
            let mut scale = scale_of(t.rt, &old);
            apply_patch(kind, &mut scale, &patch_body)?;
            let replicas = scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            return self.set_scale(t, ctx, replicas, expected).await;
        }
        let operation = if kind == PatchType::Apply {
            "Apply"
        } else {
            "Update"
        };
        let manager = field_manager(ctx);
        let force = ctx.query.flag("force");
        if kind == PatchType::Apply
            && ctx
                .query
                .get("force")
                .is_some_and(|f| f != "true" && f != "false")
        {
            return Err(ApiError::bad_request("force must be true or false"));
        }
        let (obj, code) = self
            .write_update(t, ctx, &name, expected, operation, |old| {
                if kind == PatchType::Apply {
                    return server_side_apply(t.rt, old, &patch_body, &manager, force);
                }
                let mut doc = (*old).clone();
                apply_patch(kind, &mut doc, &patch_body)?;
                Ok(doc)
            })
            .await?;
        Ok(self.respond_object(t.rt, ctx, code, &obj))
    }

    async fn set_scale(
        &self,
        t: &Target,
        ctx: &RequestContext,
        replicas: i64,
        expected: Option<i64>,
    ) -> Result<Response<Body>, ApiError> {
        let name = t.name.clone().unwrap_or_default();
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                &name,
                vec![FieldError::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let inner = Target {
            rt: t.rt,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            subresource: None,
        };
        let (obj, _) = self
            .write_update(&inner, ctx, &name, expected, "Update", |old| {
                let mut doc = (*old).clone();
                doc["spec"]["replicas"] = json!(replicas);
                Ok(doc)
            })
            .await?;
        Ok(json_response(200, &scale_of(t.rt, &obj)))
    }

    pub async fn delete(
        &self,
        t: &Target,
        ctx: &RequestContext,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        if t.subresource.is_some() {
            return Err(ApiError::method_not_allowed(
                "DELETE is not supported on a subresource",
            ));
        }
        let name = t.name.clone().unwrap_or_default();
        let options = if body.is_empty() {
            json!({})
        } else {
            decode_body("application/json", body)?
        };
        let grace = options
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .or_else(|| {
                ctx.query
                    .get("gracePeriodSeconds")
                    .and_then(|g| g.parse().ok())
            });
        let policy = options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .or_else(|| ctx.query.get("propagationPolicy"))
            .unwrap_or("Background")
            .to_string();
        if !["Background", "Foreground", "Orphan"].contains(&policy.as_str()) {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy must be Background, Foreground or Orphan, not {policy:?}"
            )));
        }
        let precondition_uid = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        let precondition_rv = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        let dry_run = ctx.query.dry_run()?
            || options
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|v| v == "All"));
        let obj = self
            .delete_one(
                t.rt,
                t.namespace.as_deref(),
                &name,
                grace,
                &policy,
                precondition_uid,
                precondition_rv,
                dry_run,
            )
            .await?;
        Ok(self.respond_object(t.rt, ctx, 200, &obj))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn delete_one(
        &self,
        rt: &'static ResourceType,
        namespace: Option<&str>,
        name: &str,
        grace: Option<i64>,
        policy: &str,
        precondition_uid: Option<String>,
        precondition_rv: Option<String>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let key = rt.key(namespace, name);
        let qualified = rt.qualified();
        for _attempt in 0..8 {
            let old = self
                .cache
                .get(&key)
                .ok_or_else(|| ApiError::not_found(&qualified, name))?;
            if let Some(uid) = &precondition_uid {
                if meta_str(&old, "uid") != Some(uid.as_str()) {
                    return Err(ApiError::conflict(&qualified, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", meta_str(&old, "uid").unwrap_or(""))));
                }
            }
            if let Some(rv) = &precondition_rv {
                if meta_str(&old, "resourceVersion") != Some(rv.as_str()) {
                    return Err(ApiError::conflict(&qualified, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", meta_str(&old, "resourceVersion").unwrap_or(""))));
                }
            }
            let old_rv = resource_version_of(&old).unwrap_or(0);
            let mut finalizers: Vec<Value> = meta(&old)
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match policy {
                "Foreground" if !finalizers.contains(&json!("foregroundDeletion")) => {
                    finalizers.push(json!("foregroundDeletion"))
                }
                "Orphan" if !finalizers.contains(&json!("orphan")) => {
                    finalizers.push(json!("orphan"))
                }
                _ => {}
            }
            let is_namespace = rt.kind == "Namespace";
            let pod_grace = if rt.kind == "Pod"
                && old
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
            {
                let g = grace.unwrap_or_else(|| {
                    old.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(30)
                });
                Some(g).filter(|g| *g > 0)
            } else {
                None
            };
            let already_deleting = meta(&old)
                .get("deletionTimestamp")
                .is_some_and(|d| !d.is_null());
            if finalizers.is_empty() && !is_namespace && pod_grace.is_none() {
                if dry_run {
                    return Ok((*old).clone());
                }
                return match self.store.delete(&key, Some(old_rv)).await {
                    Ok((_, rev)) => {
                        self.cache.wait_for(rev).await;
                        crate::gc::spawn_cascade(self, &old);
                        let mut out = (*old).clone();
                        crate::cache::set_resource_version(&mut out, rev);
                        Ok(out)
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound { .. }) => Err(ApiError::not_found(&qualified, name)),
                    Err(e) => Err(e.into()),
                };
            }
            // Graceful: mark the object; finalizers (or the kubelet, or the namespace
            // lifecycle) finish the job.
            let mut obj = (*old).clone();
            {
                let m = meta_mut(&mut obj);
                if !already_deleting {
                    m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                    m.insert(
                        "deletionGracePeriodSeconds".into(),
                        json!(pod_grace.unwrap_or(0)),
                    );
                }
                if !finalizers.is_empty() {
                    m.insert("finalizers".into(), Value::Array(finalizers));
                }
            }
            if is_namespace {
                obj["status"]["phase"] = json!("Terminating");
            }
            if dry_run {
                return Ok(obj);
            }
            if strip_managed_time(&obj) == strip_managed_time(&old) {
                return Ok((*old).clone());
            }
            match self.store.update(&key, storable(&obj), old_rv).await {
                Ok(kv) => {
                    self.cache.wait_for(kv.mod_revision).await;
                    crate::cache::set_resource_version(&mut obj, kv.mod_revision);
                    if is_namespace {
                        crate::lifecycle::spawn_namespace_cleanup(self, name.to_string());
                    } else {
                        crate::gc::spawn_finalizers(self, rt, &obj);
                    }
                    return Ok(obj);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ApiError::not_found(&qualified, name))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(
            &qualified,
            name,
            "too many concurrent writers; try again",
        ))
    }

    pub async fn delete_collection(
        &self,
        t: &Target,
        ctx: &RequestContext,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let selectors = Selectors::parse(t.rt, &ctx.query)?;
        let options = if body.is_empty() {
            json!({})
        } else {
            decode_body("application/json", body)?
        };
        let policy = options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Background")
            .to_string();
        let grace = options.get("gracePeriodSeconds").and_then(Value::as_i64);
        let dry_run = ctx.query.dry_run()?;
        let (items, revision) = self
            .cache
            .list(&t.rt.key_prefix(t.namespace.as_deref()), None);
        let mut deleted = Vec::new();
        for (_, obj) in items.iter().filter(|(_, o)| selectors.matches(t.rt, o)) {
            let name = meta_str(obj, "name").unwrap_or("").to_string();
            let ns = meta_str(obj, "namespace").map(str::to_string);
            match self
                .delete_one(
                    t.rt,
                    ns.as_deref(),
                    &name,
                    grace,
                    &policy,
                    None,
                    None,
                    dry_run,
                )
                .await
            {
                Ok(o) => deleted.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json_response(
            200,
            &json!({
                "kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(),
                "metadata": {"resourceVersion": revision.to_string()}, "items": deleted,
            }),
        ))
    }

    async fn bind(
        &self,
        t: &Target,
        ctx: &RequestContext,
        body: &[u8],
    ) -> Result<Response<Body>, ApiError> {
        let binding = decode_body(&ctx.content_type, body)?;
        let name = t.name.clone().unwrap_or_default();
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if node.is_empty() {
            return Err(ApiError::invalid(
                "Binding",
                "",
                &name,
                vec![FieldError::required("target.name")],
            ));
        }
        let key = t.rt.key(t.namespace.as_deref(), &name);
        let current = self
            .cache
            .get(&key)
            .ok_or_else(|| ApiError::not_found("pods", &name))?;
        let assigned = |pod: &Value| {
            pod.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
        };
        if let Some(existing) = assigned(&current) {
            return Err(ApiError::conflict(
                "pods",
                &name,
                &format!("pod {name} is already assigned to node {existing:?}"),
            ));
        }
        let binding_target = Target {
            rt: t.rt,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            subresource: Some("binding".into()),
        };
        self.write_update(&binding_target, ctx, &name, None, "Update", |old| {
            if let Some(existing) = assigned(old) {
                return Err(ApiError::conflict(
                    "pods",
                    &name,
                    &format!("pod {name} is already assigned to node {existing:?}"),
                ));
            }
            let mut doc = (*old).clone();
            doc["spec"]["nodeName"] = json!(node);
            let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
            let conds = doc["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conds.push(cond);
            doc["status"]["conditions"] = json!(conds);
            Ok(doc)
        })
        .await?;
        Ok(json_response(
            201,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    async fn evict(&self, t: &Target, _ctx: &RequestContext) -> Result<Response<Body>, ApiError> {
        let name = t.name.clone().unwrap_or_default();
        self.delete_one(
            t.rt,
            t.namespace.as_deref(),
            &name,
            None,
            "Background",
            None,
            None,
            false,
        )
        .await?;
        Ok(json_response(
            201,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }
}

fn is_graceful_pod(rt: &ResourceType, obj: &Value) -> bool {
    rt.kind == "Pod"
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

fn strip_managed_time(v: &Value) -> Value {
    let mut copy = v.clone();
    if let Some(Value::Array(entries)) = copy.pointer_mut("/metadata/managedFields") {
        for e in entries.iter_mut().filter_map(Value::as_object_mut) {
            e.remove("time");
        }
    }
    copy
}

/// The manager named by the request, or what kube-apiserver derives when none is given.
fn field_manager(ctx: &RequestContext) -> String {
    match ctx.query.get("fieldManager") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => ctx
            .user_agent
            .split('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string(),
    }
}

fn add_warnings(resp: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        if let Ok(v) = format!("299 - \"{}\"", w.replace('"', "'")).parse() {
            resp.headers_mut().append("Warning", v);
        }
    }
}

fn check_type_meta(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let api_version = o
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = o
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if (!kind.is_empty() && kind != rt.kind)
        || (!api_version.is_empty() && api_version != rt.api_version())
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({}) or the kind ({kind}) does not match {}",
            rt.api_version(),
            rt.kind
        )));
    }
    o.insert("apiVersion".into(), json!(rt.api_version()));
    o.insert("kind".into(), json!(rt.kind));
    Ok(())
}

fn apply_patch(kind: PatchType, doc: &mut Value, patch_body: &Value) -> Result<(), ApiError> {
    match kind {
        PatchType::Json => patch::json_patch(doc, patch_body).map_err(|e| {
            ApiError::new(
                422,
                "Invalid",
                format!("the server rejected our request due to an error in our request: {e}"),
            )
        }),
        PatchType::Merge => {
            patch::merge_patch(doc, patch_body);
            Ok(())
        }
        PatchType::Strategic | PatchType::Apply => {
            let mut body = patch_body.clone();
            if kind == PatchType::Apply {
                if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("managedFields");
                    m.remove("resourceVersion");
                }
            }
            patch::strategic_merge(doc, &body)
                .map_err(|e| ApiError::bad_request(format!("invalid strategic merge patch: {e}")))
        }
    }
}

/// The `autoscaling/v1` Scale view of a workload.
pub fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta_str(obj, "name"), "namespace": meta_str(obj, "namespace"),
            "uid": meta_str(obj, "uid"), "resourceVersion": meta_str(obj, "resourceVersion"),
            "creationTimestamp": meta_str(obj, "creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(if rt.kind == "DaemonSet" { 0 } else { 1 })},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found_by_path() {
        let input = json!({"spec": {"replicas": 1, "bogus": 2, "template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}}, "status": null});
        let decoded =
            json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}]}}}});
        let mut out = Vec::new();
        unknown_fields(&input, &decoded, "", &mut out);
        assert_eq!(
            out,
            ["spec.bogus", "spec.template.spec.containers[0].imagee"]
        );
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = encode_continue("/registry/pods/default/a", 5);
        assert_eq!(
            decode_continue(&token).unwrap().start_after,
            "/registry/pods/default/a"
        );
        assert!(decode_continue("!!!").is_err());
        let evil =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"start":"/etc/passwd"}"#);
        assert!(decode_continue(&evil).is_err());
    }

    #[test]
    fn bodies_by_content_type() {
        assert!(decode_body("application/json", b"{\"a\":1}").is_ok());
        assert_eq!(
            decode_body("application/json", b"{not json")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(decode_body("text/plain", b"x").unwrap_err().code, 415);
        assert_eq!(
            decode_body("application/yaml", b"a: [1, 2")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            decode_body("application/vnd.kubernetes.protobuf", b"k8s\0garbage")
                .unwrap_err()
                .code,
            400
        );
    }
}
