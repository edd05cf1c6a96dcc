//! OpenAPI v3: an index and one document per group/version, with schemas generated from the
//! k8s-openapi types (so `kubectl explain` prints field descriptions) and PATCH operations
//! that declare `fieldValidation` (so `kubectl apply` leaves validation to the server).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::registry::{self, ResourceType};

pub struct Document {
    pub body: Vec<u8>,
    pub etag: String,
}

struct Documents {
    index: Vec<u8>,
    by_path: BTreeMap<String, Document>,
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn operation(rt: &ResourceType, verb: &str, action: &str) -> Value {
    let mut params = vec![
        json!({"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}),
    ];
    if matches!(verb, "patch" | "put" | "post") {
        params.push(json!({"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}));
        params.push(json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}));
    }
    if verb == "patch" {
        params.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    let schema_ref = format!("#/components/schemas/{}", schema_name(rt));
    json!({
        "operationId": format!("{verb}{}", rt.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
    })
}

fn schema_name(rt: &ResourceType) -> String {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let schema = (rt.schema)(&mut generator);
    schema
        .as_value()
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or(rt.kind)
        .to_string()
}

fn build_document(group: &str, version: &str) -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let mut gvk_by_schema: BTreeMap<String, Value> = BTreeMap::new();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    for rt in registry::RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let schema = (rt.schema)(&mut generator);
        if let Some(name) = schema
            .as_value()
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
        {
            gvk_by_schema.insert(
                name.to_string(),
                json!([{"group": rt.group, "version": rt.version, "kind": rt.kind}]),
            );
        }
        let item = if rt.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", rt.plural)
        } else {
            format!("{prefix}/{}/{{name}}", rt.plural)
        };
        let collection = if rt.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{prefix}/{}", rt.plural)
        };
        paths.insert(
            item,
            json!({
                "get": operation(rt, "get", "get"),
                "put": operation(rt, "put", "put"),
                "patch": operation(rt, "patch", "patch"),
                "delete": operation(rt, "delete", "delete"),
            }),
        );
        paths.insert(
            collection,
            json!({
                "get": operation(rt, "list", "list"),
                "post": operation(rt, "post", "post"),
            }),
        );
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    for (name, gvk) in gvk_by_schema {
        if let Some(Value::Object(s)) = schemas.get_mut(&name) {
            s.insert("x-kubernetes-group-version-kind".into(), gvk);
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::VERSION_GIT},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn documents() -> &'static Documents {
    static DOCS: OnceLock<Documents> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut by_path = BTreeMap::new();
        let mut index = Map::new();
        let mut gvs = vec![("", "v1")];
        gvs.extend(registry::groups());
        for (g, v) in gvs {
            let body = serde_json::to_vec(&build_document(g, v)).expect("serializable");
            let etag = format!("\"{:X}\"", Sha256::digest(&body));
            let path = gv_path(g, v);
            index.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", etag.trim_matches('"'))}));
            by_path.insert(path, Document { body, etag });
        }
        Documents { index: serde_json::to_vec(&json!({"paths": index})).expect("serializable"), by_path }
    })
}

pub fn index() -> &'static [u8] {
    &documents().index
}

pub fn document(path: &str) -> Option<&'static Document> {
    documents().by_path.get(path)
}
