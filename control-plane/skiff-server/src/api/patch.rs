//! The patch types kubectl sends: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and
//! strategic merge patch, which merges lists of the built-in types by their merge keys.

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(doc, &patch).map_err(|e| e.to_string())
}

pub fn merge_patch(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch);
}

/// How a list field is merged in a strategic merge patch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ListStrategy {
    /// Items are objects matched by this key.
    ByKey(&'static str),
    /// Items are scalars; the patch's are added to the original's (a set union).
    PrimitiveSet,
    Replace,
}

/// Merge keys of the built-in types (the `patchMergeKey` tags of k8s.io/api), looked up by
/// the list's field name and its parent field.
pub(crate) fn list_strategy(parent: Option<&str>, field: &str) -> ListStrategy {
    use ListStrategy::*;
    match (parent, field) {
        (_, "containers" | "initContainers" | "ephemeralContainers") => ByKey("name"),
        (_, "env" | "volumes" | "imagePullSecrets" | "resourceClaims" | "secrets") => ByKey("name"),
        (_, "volumeMounts") => ByKey("mountPath"),
        (_, "volumeDevices") => ByKey("devicePath"),
        (_, "hostAliases") => ByKey("ip"),
        (_, "ownerReferences") => ByKey("uid"),
        (_, "conditions") => ByKey("type"),
        (_, "topologySpreadConstraints") => ByKey("topologyKey"),
        (Some("status"), "addresses") => ByKey("type"),
        (Some("containers" | "initContainers" | "ephemeralContainers"), "ports") => {
            ByKey("containerPort")
        }
        (Some("spec"), "ports") => ByKey("port"),
        (_, "finalizers") => PrimitiveSet,
        _ => Replace,
    }
}

const DIRECTIVE: &str = "$patch";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";
const RETAIN_KEYS: &str = "$retainKeys";

/// Applies a strategic merge patch to `doc` in place.
pub fn strategic_merge(doc: &mut Value, patch: &Value) -> Result<(), String> {
    merge_object(doc, patch, None)
}

fn merge_object(doc: &mut Value, patch: &Value, parent: Option<&str>) -> Result<(), String> {
    let Some(patch_map) = patch.as_object() else {
        *doc = patch.clone();
        return Ok(());
    };
    match patch_map.get(DIRECTIVE).and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch_map.clone();
            replaced.remove(DIRECTIVE);
            *doc = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch directive {other:?}")),
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let target = doc.as_object_mut().expect("object");
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, value) in patch_map {
        if key == DIRECTIVE {
            continue;
        }
        if key == RETAIN_KEYS {
            let keep: Vec<&str> = value
                .as_array()
                .ok_or("$retainKeys must be a list")?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            target.retain(|k, _| keep.contains(&k.as_str()) || patch_map.contains_key(k));
            continue;
        }
        if let Some(field) = key.strip_prefix(SET_ORDER) {
            let order = value.as_array().ok_or("$setElementOrder must be a list")?;
            orders.push((field.to_string(), order.clone()));
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE) {
            let remove = value
                .as_array()
                .ok_or("$deleteFromPrimitiveList must be a list")?;
            if let Some(Value::Array(items)) = target.get_mut(field) {
                items.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match (target.get_mut(key), value) {
            (Some(existing @ Value::Object(_)), Value::Object(_)) => {
                merge_object(existing, value, Some(key))?;
                if existing.is_null() {
                    target.remove(key);
                }
            }
            (Some(Value::Array(existing)), Value::Array(items)) => {
                merge_list(existing, items, list_strategy(parent, key), key)?;
            }
            (_, Value::Array(items)) => {
                let mut fresh = Vec::new();
                merge_list(&mut fresh, items, list_strategy(parent, key), key)?;
                target.insert(key.clone(), Value::Array(fresh));
            }
            (_, Value::Object(_)) => {
                let mut fresh = Value::Object(Map::new());
                merge_object(&mut fresh, value, Some(key))?;
                if !fresh.is_null() {
                    target.insert(key.clone(), fresh);
                }
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
    for (field, order) in orders {
        if let Some(Value::Array(items)) = target.get_mut(&field) {
            reorder(items, &order, list_strategy(parent, &field));
        }
    }
    Ok(())
}

fn key_of<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.as_object().and_then(|m| m.get(key))
}

fn merge_list(
    existing: &mut Vec<Value>,
    patch: &[Value],
    strategy: ListStrategy,
    field: &str,
) -> Result<(), String> {
    match strategy {
        ListStrategy::Replace => {
            *existing = patch.to_vec();
        }
        ListStrategy::PrimitiveSet => {
            for item in patch {
                if !existing.contains(item) {
                    existing.push(item.clone());
                }
            }
        }
        ListStrategy::ByKey(merge_key) => {
            // `[{"$patch": "replace"}, …]` replaces the whole list.
            if patch
                .iter()
                .any(|p| p.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"))
            {
                *existing = patch
                    .iter()
                    .filter(|p| p.get(DIRECTIVE).is_none())
                    .cloned()
                    .collect();
                return Ok(());
            }
            for item in patch {
                let Some(id) = key_of(item, merge_key) else {
                    return Err(format!(
                        "{field}: an item without the merge key {merge_key:?} cannot be merged"
                    ));
                };
                let position = existing
                    .iter()
                    .position(|e| key_of(e, merge_key) == Some(id));
                let delete = item.get(DIRECTIVE).and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        existing.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_object(&mut existing[i], item, Some(field))?,
                    (None, false) => {
                        let mut fresh = Value::Object(Map::new());
                        merge_object(&mut fresh, item, Some(field))?;
                        existing.push(fresh);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Puts the items named in `order` first, in that order; the others keep their relative order.
fn reorder(items: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let matches = |item: &Value, wanted: &Value| match strategy {
        ListStrategy::ByKey(k) => key_of(item, k).is_some() && key_of(item, k) == key_of(wanted, k),
        _ => item == wanted,
    };
    let mut sorted = Vec::with_capacity(items.len());
    for wanted in order {
        if let Some(i) = items.iter().position(|item| matches(item, wanted)) {
            sorted.push(items.remove(i));
        }
    }
    sorted.append(items);
    *items = sorted;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_keep_the_other_container() {
        let mut doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "s:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"name": "web", "image": "a:2"}]
        }}}});
        strategic_merge(&mut doc, &patch).unwrap();
        let containers = &doc["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "a:2");
        assert_eq!(containers[0]["ports"][0]["containerPort"], 80);
        assert_eq!(containers[1]["name"], "side");
    }

    #[test]
    fn directives_delete_replace_and_null() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
                             "spec": {"containers": [{"name": "a"}, {"name": "b"}], "tolerations": [{"key": "k"}]}});
        let patch = json!({"metadata": {"labels": {"a": null}, "finalizers": ["y"]},
                           "spec": {"containers": [{"name": "b", "$patch": "delete"}], "tolerations": [{"key": "z"}]}});
        strategic_merge(&mut doc, &patch).unwrap();
        assert_eq!(doc["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(doc["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(doc["spec"]["containers"], json!([{"name": "a"}]));
        assert_eq!(doc["spec"]["tolerations"], json!([{"key": "z"}]));
        let mut doc2 = json!({"data": {"a": "1"}});
        strategic_merge(&mut doc2, &json!({"data": {"$patch": "replace", "b": "2"}})).unwrap();
        assert_eq!(doc2, json!({"data": {"b": "2"}}));
        let mut doc3 = json!({"metadata": {"finalizers": ["x", "y"]}});
        strategic_merge(
            &mut doc3,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        )
        .unwrap();
        assert_eq!(doc3["metadata"]["finalizers"], json!(["y"]));
    }

    #[test]
    fn service_ports_merge_by_port() {
        let mut doc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        strategic_merge(
            &mut doc,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
        )
        .unwrap();
        assert_eq!(doc["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(doc["spec"]["ports"][1]["port"], 443);
    }

    #[test]
    fn json_patch_and_merge_patch() {
        let mut doc = json!({"spec": {"replicas": 1, "selector": {"a": "b"}}});
        json_patch(
            &mut doc,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
        )
        .unwrap();
        assert_eq!(doc["spec"]["replicas"], 3);
        assert!(json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}])
        )
        .is_err());
        merge_patch(
            &mut doc,
            &json!({"spec": {"selector": null, "replicas": 5}}),
        );
        assert_eq!(doc, json!({"spec": {"replicas": 5}}));
    }
}
