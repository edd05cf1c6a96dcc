//! Validation like kube-apiserver's: one `FieldError` per bad field, with its path.

use std::collections::HashSet;

use serde_json::Value;

use crate::api::status::FieldError;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS1123_LABEL_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS1123_SUBDOMAIN_MAX
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A label value or the name part of a qualified name: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
fn is_label_name(s: &str, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    let ok_edge = |c: char| c.is_ascii_alphanumeric();
    s.len() <= 63
        && s.starts_with(ok_edge)
        && s.ends_with(ok_edge)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_label_name(name, false),
        None => is_label_name(s, false),
    }
}

const LABEL_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_DETAIL: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const LABEL_DNS_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";

/// Which name rule a kind's `metadata.name` follows.
fn name_is_label(kind: &str) -> bool {
    matches!(kind, "Namespace" | "Service")
}

pub fn metadata(kind: &str, obj: &Value, namespaced: bool, errors: &mut Vec<FieldError>) {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        errors.push(FieldError::required("metadata.name"));
    } else if name_is_label(kind) {
        if !is_dns1123_label(name) {
            let detail = if name.len() > DNS1123_LABEL_MAX {
                "must be no more than 63 characters".to_string()
            } else {
                LABEL_DNS_ERR.to_string()
            };
            errors.push(FieldError::invalid("metadata.name", name, detail));
        }
    } else if !is_dns1123_subdomain(name) {
        let detail = if name.len() > DNS1123_SUBDOMAIN_MAX {
            "must be no more than 253 characters".to_string()
        } else {
            SUBDOMAIN_ERR.to_string()
        };
        errors.push(FieldError::invalid("metadata.name", name, detail));
    }
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    if namespaced && ns.is_empty() {
        errors.push(FieldError::required("metadata.namespace"));
    }
    if !namespaced && !ns.is_empty() {
        errors.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    labels("metadata.labels", obj.pointer("/metadata/labels"), errors);
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            if !is_qualified_name(k) {
                errors.push(FieldError::invalid("metadata.annotations", k, LABEL_DETAIL));
            }
        }
        if total > 256 * 1024 {
            errors.push(FieldError {
                path: "metadata.annotations".into(),
                reason: "FieldValueTooLong",
                message: "Too long: may not be more than 262144 bytes".into(),
            });
        }
    }
}

pub fn labels(path: &str, labels: Option<&Value>, errors: &mut Vec<FieldError>) {
    let Some(map) = labels.and_then(Value::as_object) else {
        return;
    };
    for (k, v) in map {
        if !is_qualified_name(k) {
            errors.push(FieldError::invalid(path, k, LABEL_DETAIL));
        }
        let value = v.as_str().unwrap_or("");
        if !is_label_name(value, true) {
            let detail = if value.len() > 63 {
                "must be no more than 63 characters"
            } else {
                LABEL_ERR
            };
            errors.push(FieldError::invalid(path, value, detail));
        }
    }
}

fn port_in_range(path: &str, v: Option<&Value>, required: bool, errors: &mut Vec<FieldError>) {
    match v.and_then(Value::as_i64) {
        Some(p) if (1..=65535).contains(&p) => {}
        Some(p) => errors.push(FieldError::invalid(
            path,
            p,
            "must be between 1 and 65535, inclusive",
        )),
        None if required => errors.push(FieldError::required(path)),
        None => {}
    }
}

fn protocol(path: &str, v: Option<&Value>, errors: &mut Vec<FieldError>) {
    if let Some(p) = v.and_then(Value::as_str) {
        if !["TCP", "UDP", "SCTP"].contains(&p) {
            errors.push(FieldError::not_supported(path, p, &["SCTP", "TCP", "UDP"]));
        }
    }
}

fn containers(
    path: &str,
    list: &[Value],
    names: &mut HashSet<String>,
    errors: &mut Vec<FieldError>,
) {
    for (i, c) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errors.push(FieldError::required(format!("{p}.name")));
        } else if !is_dns1123_label(name) {
            errors.push(FieldError::invalid(
                format!("{p}.name"),
                name,
                LABEL_DNS_ERR,
            ));
        } else if !names.insert(name.to_string()) {
            errors.push(FieldError::duplicate(format!("{p}.name"), name));
        }
        if c.get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .is_empty()
        {
            errors.push(FieldError::required(format!("{p}.image")));
        }
        if let Some(policy) = c.get("imagePullPolicy").and_then(Value::as_str) {
            if !["Always", "IfNotPresent", "Never"].contains(&policy) {
                errors.push(FieldError::not_supported(
                    format!("{p}.imagePullPolicy"),
                    policy,
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
        }
        let mut port_names = HashSet::new();
        for (j, port) in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let pp = format!("{p}.ports[{j}]");
            port_in_range(
                &format!("{pp}.containerPort"),
                port.get("containerPort"),
                true,
                errors,
            );
            port_in_range(
                &format!("{pp}.hostPort"),
                port.get("hostPort"),
                false,
                errors,
            );
            protocol(&format!("{pp}.protocol"), port.get("protocol"), errors);
            if let Some(n) = port.get("name").and_then(Value::as_str) {
                if n.len() > 15 || !is_dns1123_label(n) {
                    errors.push(FieldError::invalid(
                        format!("{pp}.name"),
                        n,
                        "must be no more than 15 characters and a lowercase RFC 1123 label",
                    ));
                } else if !port_names.insert(n.to_string()) {
                    errors.push(FieldError::duplicate(format!("{pp}.name"), n));
                }
            }
        }
        for (j, env) in c
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if env
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                errors.push(FieldError::required(format!("{p}.env[{j}].name")));
            }
        }
    }
}

pub fn pod_spec(path: &str, spec: Option<&Value>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errors.push(FieldError::required(path));
        return;
    };
    let mut names = HashSet::new();
    match spec.get("containers").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            containers(&format!("{path}.containers"), list, &mut names, errors)
        }
        _ => errors.push(FieldError::required(format!("{path}.containers"))),
    }
    if let Some(list) = spec.get("initContainers").and_then(Value::as_array) {
        containers(&format!("{path}.initContainers"), list, &mut names, errors);
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&policy) {
            errors.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                policy,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(policy) = spec.get("dnsPolicy").and_then(Value::as_str) {
        let allowed = ["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
        if !allowed.contains(&policy) {
            errors.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                policy,
                &allowed,
            ));
        }
    }
    if let Some(g) = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        if g < 0 {
            errors.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                g,
                "must be greater than or equal to 0",
            ));
        }
    }
    let mut volume_names = HashSet::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errors.push(FieldError::required(format!("{path}.volumes[{i}].name")));
        } else if !is_dns1123_label(name) {
            errors.push(FieldError::invalid(
                format!("{path}.volumes[{i}].name"),
                name,
                LABEL_DNS_ERR,
            ));
        } else if !volume_names.insert(name.to_string()) {
            errors.push(FieldError::duplicate(
                format!("{path}.volumes[{i}].name"),
                name,
            ));
        }
    }
    for (list, label) in [
        ("containers", "containers"),
        ("initContainers", "initContainers"),
    ] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (j, m) in c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let name = m.get("name").and_then(Value::as_str).unwrap_or("");
                if !volume_names.contains(name) {
                    errors.push(FieldError {
                        path: format!("{path}.{label}[{i}].volumeMounts[{j}].name"),
                        reason: "FieldValueNotFound",
                        message: format!("Not found: \"{name}\""),
                    });
                }
                if let Some(sub) = m.get("subPath").and_then(Value::as_str) {
                    if sub.starts_with('/') || sub.split('/').any(|p| p == "..") {
                        errors.push(FieldError::invalid(
                            format!("{path}.{label}[{i}].volumeMounts[{j}].subPath"),
                            sub,
                            "must be a relative path without '..'",
                        ));
                    }
                }
            }
        }
    }
}

fn workload(kind: &str, obj: &Value, errors: &mut Vec<FieldError>) {
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64) {
        if r < 0 {
            errors.push(FieldError::invalid(
                "spec.replicas",
                r,
                "must be greater than or equal to 0",
            ));
        }
    }
    let selector = obj.pointer("/spec/selector");
    let match_labels = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    let has_exprs = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if match_labels.is_none_or(|m| m.is_empty()) && !has_exprs {
        errors.push(FieldError::required("spec.selector"));
        if kind != "Pod" {
            errors.push(FieldError::invalid(
                "spec.selector",
                "{}",
                "empty selector is invalid for deployment",
            ));
        }
    }
    labels(
        "spec.selector.matchLabels",
        selector.and_then(|s| s.get("matchLabels")),
        errors,
    );
    let template_labels = obj
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    if let Some(ml) = match_labels {
        let matches = ml
            .iter()
            .all(|(k, v)| template_labels.and_then(|t| t.get(k)) == Some(v));
        if !matches {
            let shown: Vec<String> = template_labels
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            errors.push(FieldError::invalid(
                "spec.template.metadata.labels",
                format!("map[{}]", shown.join(" ")),
                "`selector` does not match template `labels`",
            ));
        }
    }
    pod_spec(
        "spec.template.spec",
        obj.pointer("/spec/template/spec"),
        errors,
    );
    if let Some(policy) = obj
        .pointer("/spec/template/spec/restartPolicy")
        .and_then(Value::as_str)
    {
        if policy != "Always" {
            errors.push(FieldError::not_supported(
                "spec.template.spec.restartPolicy",
                policy,
                &["Always"],
            ));
        }
    }
    if kind == "Deployment" {
        if let Some(t) = obj.pointer("/spec/strategy/type").and_then(Value::as_str) {
            if !["RollingUpdate", "Recreate"].contains(&t) {
                errors.push(FieldError::not_supported(
                    "spec.strategy.type",
                    t,
                    &["Recreate", "RollingUpdate"],
                ));
            }
            if t == "Recreate"
                && obj
                    .pointer("/spec/strategy/rollingUpdate")
                    .is_some_and(|v| !v.is_null())
            {
                errors.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
    }
}

fn service(obj: &Value, errors: &mut Vec<FieldError>) {
    let ty = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let allowed = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !allowed.contains(&ty) {
        errors.push(FieldError::not_supported("spec.type", ty, &allowed));
    }
    let headless = obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
    let ports = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errors.push(FieldError::required("spec.ports"));
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            errors.push(FieldError::required(format!("{path}.name")));
        } else if !name.is_empty() && !is_dns1123_label(name) {
            errors.push(FieldError::invalid(
                format!("{path}.name"),
                name,
                LABEL_DNS_ERR,
            ));
        } else if !name.is_empty() && !names.insert(name.to_string()) {
            errors.push(FieldError::duplicate(format!("{path}.name"), name));
        }
        port_in_range(&format!("{path}.port"), p.get("port"), true, errors);
        protocol(&format!("{path}.protocol"), p.get("protocol"), errors);
        let key = (
            p.get("port").and_then(Value::as_i64),
            p.get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_string(),
        );
        if !seen.insert(key) {
            errors.push(FieldError::duplicate(
                path.clone(),
                format!(
                    "{}/{}",
                    p.get("port").and_then(Value::as_i64).unwrap_or(0),
                    p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                ),
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) => port_in_range(
                &format!("{path}.targetPort"),
                Some(&Value::Number(n.clone())),
                false,
                errors,
            ),
            Some(Value::String(s)) if !(s.len() <= 15 && is_dns1123_label(s)) => {
                errors.push(FieldError::invalid(
                    format!("{path}.targetPort"),
                    s,
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                ))
            }
            _ => {}
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if ty == "ClusterIP" && np != 0 {
                errors.push(FieldError::forbidden(
                    format!("{path}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    labels("spec.selector", obj.pointer("/spec/selector"), errors);
}

fn data_keys(path: &str, map: Option<&Value>, errors: &mut Vec<FieldError>) {
    for k in map
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.keys())
    {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            && k != "."
            && k != "..";
        if !ok {
            errors.push(FieldError::invalid(
                path,
                k,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
}

/// Validates a whole object of `kind` (metadata included).
pub fn validate(kind: &str, namespaced: bool, obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    metadata(kind, obj, namespaced, &mut errors);
    match kind {
        "Pod" => pod_spec("spec", obj.get("spec"), &mut errors),
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => {
            workload(kind, obj, &mut errors)
        }
        "Service" => service(obj, &mut errors),
        "ConfigMap" => {
            data_keys("data", obj.get("data"), &mut errors);
            data_keys("binaryData", obj.get("binaryData"), &mut errors);
        }
        "Secret" => data_keys("data", obj.get("data"), &mut errors),
        "CertificateSigningRequest" => crate::csr::validate(obj, &mut errors),
        _ => {}
    }
    errors
}

/// Fields that may not change once set.
pub fn immutable(kind: &str, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut check = |ptr: &str, path: &str, detail: &str| {
        let (a, b) = (old.pointer(ptr), new.pointer(ptr));
        if a.is_some_and(|a| !a.is_null()) && a != b {
            errors.push(FieldError::invalid(
                path,
                b.map(|v| v.to_string()).unwrap_or_default(),
                detail,
            ));
        }
    };
    match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => {
            check("/spec/selector", "spec.selector", "field is immutable")
        }
        "Service" => check("/spec/clusterIP", "spec.clusterIP", "field is immutable"),
        "Pod" => check("/spec/nodeName", "spec.nodeName", "field is immutable"),
        "CertificateSigningRequest" => check("/spec", "spec", "field is immutable"),
        _ => {}
    }
    if kind == "Pod" {
        // Only images (and a few fields) of a pod may change after creation.
        let strip = |v: &Value| {
            let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
            for list in ["containers", "initContainers"] {
                if let Some(Value::Array(cs)) = spec.get_mut(list) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
            if let Some(s) = spec.as_object_mut() {
                s.remove("activeDeadlineSeconds");
                s.remove("tolerations");
                s.remove("terminationGracePeriodSeconds");
                s.remove("nodeName");
            }
            spec
        };
        if strip(old) != strip(new) {
            errors.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`"));
        }
    }
    for (kind_, field) in [
        ("ConfigMap", "data"),
        ("ConfigMap", "binaryData"),
        ("Secret", "data"),
    ] {
        if kind == kind_
            && old.get("immutable").and_then(Value::as_bool) == Some(true)
            && old.get(field) != new.get(field)
        {
            errors.push(FieldError::forbidden(
                field,
                "field is immutable when `immutable` is set",
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain("../etc"));
        assert!(is_qualified_name("app.kubernetes.io/name"));
        assert!(!is_qualified_name("-bad"));
    }

    #[test]
    fn deployment_errors_name_each_field() {
        let d = json!({"metadata": {"name": "web", "namespace": "default", "labels": {"ok": "bad value"}},
            "spec": {"replicas": -1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "other"}},
                                  "spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": ""}, {"name": "a", "image": "x", "ports": [{"containerPort": 70000}]}]}}}});
        let errs: Vec<String> = validate("Deployment", true, &d)
            .into_iter()
            .map(|e| e.path)
            .collect();
        for expected in [
            "metadata.labels",
            "spec.replicas",
            "spec.template.metadata.labels",
            "spec.template.spec.containers[0].image",
            "spec.template.spec.containers[1].name",
            "spec.template.spec.containers[1].ports[0].containerPort",
        ] {
            assert!(
                errs.iter().any(|e| e == expected),
                "missing {expected} in {errs:?}"
            );
        }
    }

    #[test]
    fn service_port_rules() {
        let s = json!({"metadata": {"name": "s", "namespace": "d"}, "spec": {"type": "ClusterIP", "ports": [{"name": "a", "port": 80}, {"name": "a", "port": 0}]}});
        let errs: Vec<String> = validate("Service", true, &s)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert!(errs.contains(&"spec.ports[1].name".to_string()));
        assert!(errs.contains(&"spec.ports[1].port".to_string()));
    }
}
