//! Cascading deletion through ownerReferences: background (dependents go after the owner),
//! foreground (`foregroundDeletion` finalizer: dependents go first) and orphan (`orphan`
//! finalizer: dependents lose the reference and stay).
//!
//! This runs in the API server, triggered by the deletions it performs; the controllers
//! issue replaces it with an informer-driven garbage collector that also catches owners
//! deleted while the server was down.

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::objects::RequestContext;
use crate::api::{ApiServer, Query, Target};
use crate::auth::User;
use crate::registry::{ResourceType, RESOURCES};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

fn system_context() -> RequestContext {
    RequestContext {
        user: User {
            name: "system:serviceaccount:kube-system:generic-garbage-collector".into(),
            groups: vec!["system:serviceaccounts".into()],
        },
        accept: "application/json".into(),
        content_type: "application/json".into(),
        user_agent: "skiff-garbage-collector".into(),
        query: Query(vec![(
            "fieldManager".into(),
            "generic-garbage-collector".into(),
        )]),
    }
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

/// Objects that name `uid` as an owner: in the owner's namespace, or anywhere for a
/// cluster-scoped owner.
fn dependents(
    server: &ApiServer,
    namespace: Option<&str>,
    uid: &str,
) -> Vec<(&'static ResourceType, Value)> {
    let mut out = Vec::new();
    for rt in RESOURCES {
        if namespace.is_some() && !rt.namespaced {
            continue;
        }
        let (items, _) = server.cache.list(&rt.key_prefix(namespace), None);
        for (_, obj) in items {
            if owned_by(&obj, uid) {
                out.push((rt, (*obj).clone()));
            }
        }
    }
    out
}

fn meta<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer(&format!("/metadata/{key}"))
        .and_then(Value::as_str)
}

/// After `owner` is gone: delete its dependents, or drop the reference where another owner remains.
pub fn spawn_cascade(server: &ApiServer, owner: &Value) {
    let (Some(api), Some(uid)) = (server.self_ref(), meta(owner, "uid").map(str::to_string)) else {
        return;
    };
    let namespace = meta(owner, "namespace").map(str::to_string);
    tokio::spawn(async move {
        for (rt, dep) in dependents(&api, namespace.as_deref(), &uid) {
            let name = meta(&dep, "name").unwrap_or("").to_string();
            let ns = meta(&dep, "namespace").map(str::to_string);
            let others_alive = dep
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()))
                .any(|r| owner_exists(&api, ns.as_deref(), r));
            let result = if others_alive {
                remove_owner_reference(&api, rt, ns.as_deref(), &name, &uid).await
            } else {
                api.delete_one(
                    rt,
                    ns.as_deref(),
                    &name,
                    None,
                    "Background",
                    None,
                    None,
                    false,
                )
                .await
                .map(|_| ())
            };
            if let Err(e) = result {
                if e.code != 404 {
                    tracing::warn!(kind = rt.kind, name, error = %e.message, "garbage collection of a dependent failed");
                }
            }
        }
    });
}

fn owner_exists(server: &ApiServer, namespace: Option<&str>, reference: &Value) -> bool {
    let kind = reference.get("kind").and_then(Value::as_str).unwrap_or("");
    let group = reference
        .get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.split_once('/'))
        .map_or("", |(g, _)| g);
    let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
    let uid = reference.get("uid").and_then(Value::as_str);
    let Some(rt) = crate::registry::find_kind(group, kind) else {
        return false;
    };
    let ns = if rt.namespaced { namespace } else { None };
    server
        .cache
        .get(&rt.key(ns, name))
        .is_some_and(|o| meta(&o, "uid") == uid)
}

/// Drops the entries of a metadata list (`ownerReferences`, `finalizers`) that `unwanted`
/// matches, on behalf of the garbage collector.
async fn remove_from_metadata_list(
    server: &ApiServer,
    rt: &'static ResourceType,
    ns: Option<&str>,
    name: &str,
    list: &str,
    unwanted: impl Fn(&Value) -> bool,
) -> Result<(), crate::api::status::ApiError> {
    let target = Target {
        rt,
        namespace: ns.map(str::to_string),
        name: Some(name.to_string()),
        subresource: None,
    };
    let pointer = format!("/metadata/{list}");
    server
        .update_with(&target, &system_context(), name, |old| {
            let mut doc = old.clone();
            if let Some(Value::Array(items)) = doc.pointer_mut(&pointer) {
                items.retain(|item| !unwanted(item));
            }
            Ok(doc)
        })
        .await
        .map(|_| ())
}

async fn remove_owner_reference(
    server: &ApiServer,
    rt: &'static ResourceType,
    ns: Option<&str>,
    name: &str,
    uid: &str,
) -> Result<(), crate::api::status::ApiError> {
    remove_from_metadata_list(server, rt, ns, name, "ownerReferences", |r| {
        r.get("uid").and_then(Value::as_str) == Some(uid)
    })
    .await
}

async fn remove_finalizer(
    server: &ApiServer,
    rt: &'static ResourceType,
    ns: Option<&str>,
    name: &str,
    finalizer: &str,
) -> Result<(), crate::api::status::ApiError> {
    remove_from_metadata_list(server, rt, ns, name, "finalizers", |f| {
        f == &json!(finalizer)
    })
    .await
}

/// Works through the `orphan` and `foregroundDeletion` finalizers of an object being deleted.
pub fn spawn_finalizers(server: &ApiServer, rt: &'static ResourceType, owner: &Value) {
    let Some(api) = server.self_ref() else { return };
    let finalizers: Vec<String> = owner
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let (Some(uid), Some(name)) = (
        meta(owner, "uid").map(str::to_string),
        meta(owner, "name").map(str::to_string),
    ) else {
        return;
    };
    let namespace = meta(owner, "namespace").map(str::to_string);
    let ns = namespace.clone();
    tokio::spawn(async move {
        if finalizers.iter().any(|f| f == ORPHAN) {
            for (drt, dep) in dependents(&api, ns.as_deref(), &uid) {
                let dname = meta(&dep, "name").unwrap_or("").to_string();
                let dns = meta(&dep, "namespace").map(str::to_string);
                if let Err(e) =
                    remove_owner_reference(&api, drt, dns.as_deref(), &dname, &uid).await
                {
                    tracing::warn!(name = dname, error = %e.message, "orphaning a dependent failed");
                }
            }
            if let Err(e) = remove_finalizer(&api, rt, ns.as_deref(), &name, ORPHAN).await {
                tracing::warn!(name, error = %e.message, "removing the orphan finalizer failed");
            }
        }
        if finalizers.iter().any(|f| f == FOREGROUND) {
            for attempt in 0..3000u32 {
                let deps = dependents(&api, ns.as_deref(), &uid);
                if deps.is_empty() {
                    break;
                }
                for (drt, dep) in deps {
                    if dep
                        .pointer("/metadata/deletionTimestamp")
                        .is_some_and(|d| !d.is_null())
                    {
                        continue;
                    }
                    let dname = meta(&dep, "name").unwrap_or("").to_string();
                    let dns = meta(&dep, "namespace").map(str::to_string);
                    let _ = api
                        .delete_one(
                            drt,
                            dns.as_deref(),
                            &dname,
                            None,
                            "Foreground",
                            None,
                            None,
                            false,
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(if attempt < 20 { 50 } else { 500 }))
                    .await;
            }
            if let Err(e) = remove_finalizer(&api, rt, ns.as_deref(), &name, FOREGROUND).await {
                tracing::warn!(name, error = %e.message, "removing the foregroundDeletion finalizer failed");
            }
        }
    });
}
