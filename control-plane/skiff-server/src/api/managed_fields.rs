//! Field ownership (`metadata.managedFields`, FieldsV1) for server-side apply: which manager
//! set which field, conflicts between appliers, and removal of fields an applier dropped.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::patch::{list_strategy, ListStrategy};

/// One path element in kube's FieldsV1 notation: `f:name`, `k:{"name":"web"}`, `v:"x"`.
pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// Fields every object has that nobody owns.
fn ignored(path: &[String]) -> bool {
    matches!(path, [f] if f == "f:apiVersion" || f == "f:kind" || f == "f:status")
        || matches!(path, [m, f, ..] if m == "f:metadata" && ["f:name", "f:namespace", "f:resourceVersion", "f:uid", "f:creationTimestamp", "f:generation", "f:managedFields", "f:deletionTimestamp", "f:deletionGracePeriodSeconds", "f:selfLink"].contains(&f.as_str()))
}

fn key_element(item: &Value, key: &str) -> Option<String> {
    let v = item.get(key)?;
    let mut m = Map::new();
    m.insert(key.to_string(), v.clone());
    // kube keys container ports by port and protocol together.
    if key == "containerPort" || key == "port" {
        if let Some(p) = item.get("protocol") {
            m.insert("protocol".into(), p.clone());
        }
    }
    Some(format!("k:{}", Value::Object(m)))
}

/// Every leaf field set in `value` (an applied configuration or a whole object).
pub fn fields_of(value: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    walk(value, None, &mut Vec::new(), &mut out);
    out.retain(|p| !ignored(p));
    out
}

fn walk(value: &Value, field: Option<&str>, path: &mut Path, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                match v {
                    Value::Array(items) => walk_list(items, field, k, path, out),
                    _ => walk(v, Some(k), path, out),
                }
                path.pop();
            }
        }
        _ => {
            if !path.is_empty() {
                out.insert(path.clone());
            }
        }
    }
}

fn walk_list(
    items: &[Value],
    parent: Option<&str>,
    field: &str,
    path: &mut Path,
    out: &mut FieldSet,
) {
    match list_strategy(parent, field) {
        ListStrategy::ByKey(key) => {
            for item in items {
                match key_element(item, key) {
                    Some(k) => {
                        path.push(k);
                        out.insert(path.clone());
                        walk(item, Some(field), path, out);
                        path.pop();
                    }
                    None => {
                        out.insert(path.clone());
                    }
                }
            }
        }
        ListStrategy::PrimitiveSet => {
            for item in items {
                path.push(format!("v:{item}"));
                out.insert(path.clone());
                path.pop();
            }
        }
        ListStrategy::Replace => {
            out.insert(path.clone());
        }
    }
}

/// The value a path points at, if present.
pub fn value_at<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = root;
    for el in path {
        cur = step(cur, el)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    if let Some(name) = el.strip_prefix("f:") {
        return cur.get(name);
    }
    if let Some(key) = el.strip_prefix("k:") {
        let wanted: Map<String, Value> = serde_json::from_str(key).ok()?;
        return cur
            .as_array()?
            .iter()
            .find(|item| wanted.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    if let Some(v) = el.strip_prefix("v:") {
        let wanted: Value = serde_json::from_str(v).ok()?;
        return cur.as_array()?.iter().find(|item| **item == wanted);
    }
    None
}

/// Removes what a path points at (a map key, a list item), if present.
pub fn remove_at(root: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for el in parents {
        let next = match el.strip_prefix("f:") {
            Some(name) => cur.get_mut(name),
            None => {
                let found = step(cur, el).cloned();
                cur.as_array_mut()
                    .and_then(|items| items.iter_mut().find(|i| Some(&**i) == found.as_ref()))
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(name) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(name);
        }
    } else if let Some(found) = step(cur, last).cloned() {
        if let Some(items) = cur.as_array_mut() {
            items.retain(|i| *i != found);
        }
    }
}

pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    let mut paths = set.iter().peekable();
    while let Some(path) = paths.next() {
        // In sorted order a path's children follow it directly: a path that has any is a
        // node ("."), not only a leaf.
        let has_children = paths.peek().is_some_and(|next| next.starts_with(path));
        let mut cur = &mut root;
        for (i, el) in path.iter().enumerate() {
            if !cur.contains_key(el) {
                cur.insert(el.clone(), Value::Object(Map::new()));
            }
            let map = cur
                .get_mut(el)
                .and_then(Value::as_object_mut)
                .expect("fieldsV1 nodes are objects");
            if i + 1 == path.len() && has_children {
                map.insert(".".into(), json!({}));
            }
            cur = map;
        }
    }
    Value::Object(root)
}

/// `to_fields_v1(&fields_of(value))` in one walk over `value`, without building the set of
/// paths: what a create records for its manager. The two must agree; a test holds them to it.
pub fn fields_v1_of(value: &Value) -> Value {
    let Value::Object(top) = value else {
        return Value::Object(Map::new());
    };
    let mut children = Vec::with_capacity(top.len());
    for (k, v) in top {
        let node = if k == "metadata" {
            metadata_node(v)
        } else {
            field_node(v, None, k)
        };
        // Only the bare field is ignored at the top; fields under a `status` object are not.
        let bare = |n: &Value| n.as_object().is_some_and(Map::is_empty);
        match node {
            Some(n) if matches!(k.as_str(), "apiVersion" | "kind" | "status") && bare(&n) => {}
            Some(n) => children.push((format!("f:{k}"), n)),
            None => {}
        }
    }
    node_of(children, false)
}

const IGNORED_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

fn metadata_node(v: &Value) -> Option<Value> {
    match v {
        Value::Object(map) if !map.is_empty() => {
            let children: Vec<(String, Value)> = map
                .iter()
                .filter(|(k, _)| !IGNORED_METADATA.contains(&k.as_str()))
                .filter_map(|(k, c)| Some((format!("f:{k}"), field_node(c, Some("metadata"), k)?)))
                .collect();
            (!children.is_empty()).then(|| node_of(children, false))
        }
        _ => Some(Value::Object(Map::new())),
    }
}

/// The node of field `key` holding `v`, inside an object that is itself field `parent`;
/// `None` when it records no path (an empty keyed list, an object of such lists).
fn field_node(v: &Value, parent: Option<&str>, key: &str) -> Option<Value> {
    match v {
        Value::Array(items) => list_node(items, parent, key),
        _ => value_node(v, Some(key)),
    }
}

fn value_node(v: &Value, field: Option<&str>) -> Option<Value> {
    match v {
        Value::Object(map) if !map.is_empty() => {
            let children: Vec<(String, Value)> = map
                .iter()
                .filter_map(|(k, c)| Some((format!("f:{k}"), field_node(c, field, k)?)))
                .collect();
            (!children.is_empty()).then(|| node_of(children, false))
        }
        _ => Some(Value::Object(Map::new())),
    }
}

fn list_node(items: &[Value], parent: Option<&str>, field: &str) -> Option<Value> {
    match list_strategy(parent, field) {
        ListStrategy::ByKey(key) => {
            // An item without its key records the list itself.
            let mut whole_list = false;
            let mut children = Vec::with_capacity(items.len());
            for item in items {
                match key_element(item, key) {
                    Some(k) => {
                        // The item is recorded itself and, having its key, fields below it.
                        let mut node = Map::new();
                        node.insert(".".into(), Value::Object(Map::new()));
                        if let Some(Value::Object(fields)) = value_node(item, Some(field)) {
                            node.extend(fields);
                        }
                        children.push((k, Value::Object(node)));
                    }
                    None => whole_list = true,
                }
            }
            if children.is_empty() {
                whole_list.then(|| Value::Object(Map::new()))
            } else {
                Some(node_of(children, whole_list))
            }
        }
        ListStrategy::PrimitiveSet => {
            let children: Vec<(String, Value)> = items
                .iter()
                .map(|item| (format!("v:{item}"), Value::Object(Map::new())))
                .collect();
            (!children.is_empty()).then(|| node_of(children, false))
        }
        ListStrategy::Replace => Some(Value::Object(Map::new())),
    }
}

/// A node with its children in path order (as `to_fields_v1` inserts them), `"."` first when
/// the node is recorded itself as well; children met twice (two items with one key) merge.
fn node_of(mut children: Vec<(String, Value)>, dot: bool) -> Value {
    children.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = Map::new();
    if dot {
        map.insert(".".into(), Value::Object(Map::new()));
    }
    for (k, v) in children {
        match map.get_mut(&k) {
            Some(existing) => merge_nodes(existing, v),
            None => {
                map.insert(k, v);
            }
        }
    }
    Value::Object(map)
}

fn merge_nodes(into: &mut Value, from: Value) {
    let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) else {
        return;
    };
    let mut keys: Vec<(String, Value)> = std::mem::take(into).into_iter().collect();
    for (k, v) in from {
        match keys.iter_mut().find(|(key, _)| *key == k) {
            Some((_, existing)) => merge_nodes(existing, v),
            None => keys.push((k, v)),
        }
    }
    keys.sort_by(|a, b| match (a.0.as_str(), b.0.as_str()) {
        (".", ".") => std::cmp::Ordering::Equal,
        (".", _) => std::cmp::Ordering::Less,
        (_, ".") => std::cmp::Ordering::Greater,
        (x, y) => x.cmp(y),
    });
    into.extend(keys);
}

pub fn from_fields_v1(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    fn go(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in m {
            if k == "." {
                out.insert(path.clone());
                continue;
            }
            path.push(k.clone());
            go(child, path, out);
            path.pop();
        }
    }
    go(v, &mut Vec::new(), &mut out);
    out
}

/// `.spec.replicas`, `.spec.template.spec.containers[name="web"].image`: how kube prints a path.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        }
    }
    s
}

pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
    pub raw: Value,
}

pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            operation: e
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            subresource: e
                .get("subresource")
                .and_then(Value::as_str)
                .map(str::to_string),
            fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
            raw: e.clone(),
        })
        .collect()
}

/// A new managedFields entry, without its `fieldsV1`.
pub fn new_entry(
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) -> Value {
    let mut v = json!({"manager": manager, "operation": operation, "apiVersion": api_version, "time": now, "fieldsType": "FieldsV1"});
    if let Some(s) = subresource {
        v["subresource"] = json!(s);
    }
    v
}

pub fn store_entries(obj: &mut Value, list: Vec<Entry>, api_version: &str, now: &str) {
    let values: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = e.raw;
            if !v.is_object() || v.get("manager").is_none() {
                v = new_entry(
                    &e.manager,
                    &e.operation,
                    e.subresource.as_deref(),
                    api_version,
                    now,
                );
            }
            v["fieldsV1"] = to_fields_v1(&e.fields);
            v
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if values.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(values));
        }
    }
}

/// Leaf paths whose values differ between two versions of an object.
pub fn changed_fields(old: &Value, new: &Value) -> FieldSet {
    let (a, b) = (fields_of(old), fields_of(new));
    a.union(&b)
        .filter(|p| value_at(old, p) != value_at(new, p))
        .cloned()
        .collect()
}

/// A conflict: another manager owns a field the applier sets to a different value.
pub struct Conflict {
    pub manager: String,
    pub path: Path,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_use_kube_notation_and_round_trip() {
        let obj = json!({"apiVersion": "apps/v1", "metadata": {"name": "x", "labels": {"app": "a"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}}});
        let set = fields_of(&obj);
        assert!(set.contains(&vec!["f:spec".to_string(), "f:replicas".into()]));
        assert!(set.contains(&vec![
            "f:metadata".to_string(),
            "f:labels".into(),
            "f:app".into()
        ]));
        let container = vec![
            "f:spec".to_string(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"web\"}".into(),
        ];
        assert!(set.contains(&container));
        let mut image = container.clone();
        image.push("f:image".into());
        assert!(set.contains(&image));
        assert!(!set.iter().any(|p| p[0] == "f:apiVersion"
            || p.get(1)
                .is_some_and(|f| f == "f:name" && p[0] == "f:metadata")));
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["."],
            json!({})
        );
        assert_eq!(from_fields_v1(&v1), set);
        assert_eq!(value_at(&obj, &image), Some(&json!("i")));
        assert_eq!(
            display(&image),
            ".spec.template.spec.containers[name=\"web\"].image"
        );
    }

    #[test]
    fn the_one_walk_builder_agrees_with_the_path_set() {
        let cases = [
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "d", "uid": "u", "labels": {"app": "a"},
                    "annotations": {"x": "1"}, "finalizers": ["b", "a", "b"],
                    "ownerReferences": [{"uid": "o1", "kind": "ReplicaSet"}]},
                "spec": {"containers": [
                    {"name": "web", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "env": [{"name": "A", "value": "1"}, {"value": "keyless"}],
                     "volumeMounts": [], "resources": {}, "args": ["x", "y"]},
                    {"name": "web", "command": ["sh"]},
                    {"name": "side", "image": "j"}],
                    "volumes": [], "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                    "securityContext": {}, "tolerations": [{"key": "k", "operator": "Exists"}]},
                "status": {"phase": "Pending", "qosClass": "BestEffort"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "a"}},
                    "template": {"metadata": {"labels": {"app": "a"}},
                        "spec": {"containers": [{"name": "c", "image": "i"}]}},
                    "strategy": {"type": "RollingUpdate",
                        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}},
                "status": {}}),
            json!({"kind": "Service", "metadata": {}, "spec": {"ports": [{"port": 80, "protocol": "TCP"},
                {"port": 443}, {"name": "noport"}], "selector": {"app": "a"}}, "status": "x"}),
            json!({"metadata": {"name": "only-ignored"}, "data": {}, "spec": {"containers": []}}),
            json!({}),
            json!("not an object"),
        ];
        for obj in cases {
            assert_eq!(
                serde_json::to_string(&fields_v1_of(&obj)).unwrap(),
                serde_json::to_string(&to_fields_v1(&fields_of(&obj))).unwrap(),
                "{obj}"
            );
        }
    }

    #[test]
    fn remove_and_diff() {
        let mut obj = json!({"data": {"a": "1", "b": "2"}, "metadata": {"finalizers": ["x", "y"]}});
        remove_at(&mut obj, &["f:data".to_string(), "f:a".into()]);
        remove_at(
            &mut obj,
            &[
                "f:metadata".to_string(),
                "f:finalizers".into(),
                "v:\"x\"".into(),
            ],
        );
        assert_eq!(
            obj,
            json!({"data": {"b": "2"}, "metadata": {"finalizers": ["y"]}})
        );
        let changed = changed_fields(
            &json!({"data": {"a": "1", "b": "2"}}),
            &json!({"data": {"a": "1", "b": "3", "c": "4"}}),
        );
        assert_eq!(changed.len(), 2);
    }
}
