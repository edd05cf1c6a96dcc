//! Defaulting like kube-apiserver's `SetDefaults_*` for the served kinds.

use serde_json::{json, Map, Value};

fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_string(), value);
    }
}

fn object_at<'a>(v: &'a mut Value, ptr: &str) -> Option<&'a mut Map<String, Value>> {
    v.pointer_mut(ptr).and_then(Value::as_object_mut)
}

/// `IfNotPresent` for a pinned tag or digest, `Always` for `:latest` or no tag.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_container(c: &mut Value) {
    let Some(c) = c.as_object_mut() else { return };
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !image.is_empty() {
        set_default(c, "imagePullPolicy", json!(image_pull_policy(&image)));
    }
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                set_default(h, "path", json!("/"));
                set_default(h, "scheme", json!("HTTP"));
            }
        }
    }
}

pub fn pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "securityContext", json!({}));
    set_default(s, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = s.get_mut(list) {
            cs.iter_mut().for_each(default_container);
        }
    }
    if let Some(Value::Array(vols)) = s.get_mut("volumes") {
        for v in vols.iter_mut().filter_map(Value::as_object_mut) {
            for (source, mode) in [("configMap", 0o644), ("secret", 0o644)] {
                if let Some(src) = v.get_mut(source).and_then(Value::as_object_mut) {
                    set_default(src, "defaultMode", json!(mode));
                }
            }
            if let Some(src) = v.get_mut("emptyDir") {
                if src.is_null() {
                    *src = json!({});
                }
            }
        }
    }
}

/// The QoS class kubelet and the scheduler derive from requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(res));
            let request = requests.and_then(|r| r.get(res)).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        pod_spec(spec);
    }
}

pub fn apply(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                pod_spec(spec);
            }
        }
        "Deployment" => {
            template(obj);
            if let Some(s) = object_at(obj, "/spec") {
                set_default(s, "replicas", json!(1));
                set_default(s, "revisionHistoryLimit", json!(10));
                set_default(s, "progressDeadlineSeconds", json!(600));
                let strategy = s.entry("strategy").or_insert(json!({}));
                if let Some(st) = strategy.as_object_mut() {
                    set_default(st, "type", json!("RollingUpdate"));
                    if st.get("type") == Some(&json!("RollingUpdate")) {
                        let ru = st.entry("rollingUpdate").or_insert(json!({}));
                        if let Some(ru) = ru.as_object_mut() {
                            set_default(ru, "maxUnavailable", json!("25%"));
                            set_default(ru, "maxSurge", json!("25%"));
                        }
                    }
                }
            }
        }
        "ReplicaSet" => {
            template(obj);
            if let Some(s) = object_at(obj, "/spec") {
                set_default(s, "replicas", json!(1));
            }
        }
        "DaemonSet" => {
            template(obj);
            if let Some(s) = object_at(obj, "/spec") {
                set_default(s, "revisionHistoryLimit", json!(10));
                set_default(
                    s,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
            }
        }
        "StatefulSet" => {
            template(obj);
            if let Some(s) = object_at(obj, "/spec") {
                set_default(s, "replicas", json!(1));
                set_default(s, "revisionHistoryLimit", json!(10));
                set_default(s, "podManagementPolicy", json!("OrderedReady"));
                set_default(
                    s,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
            }
        }
        "Service" => {
            if let Some(s) = object_at(obj, "/spec") {
                set_default(s, "type", json!("ClusterIP"));
                set_default(s, "sessionAffinity", json!("None"));
                let ty = s
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("ClusterIP")
                    .to_string();
                if ty != "ExternalName" {
                    set_default(s, "internalTrafficPolicy", json!("Cluster"));
                    set_default(s, "ipFamilies", json!(["IPv4"]));
                    set_default(s, "ipFamilyPolicy", json!("SingleStack"));
                }
                if ty == "NodePort" || ty == "LoadBalancer" {
                    set_default(s, "externalTrafficPolicy", json!("Cluster"));
                }
                if let Some(Value::Array(ports)) = s.get_mut("ports") {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
        }
        "Secret" => {
            if let Some(o) = obj.as_object_mut() {
                set_default(o, "type", json!("Opaque"));
                // stringData is write-only: it is folded into data, as kube-apiserver does.
                if let Some(Value::Object(plain)) = o.remove("stringData") {
                    use base64::Engine;
                    let data = o.entry("data").or_insert(json!({}));
                    if let Some(data) = data.as_object_mut() {
                        for (k, v) in plain {
                            let text = v.as_str().unwrap_or_default();
                            data.insert(
                                k,
                                json!(base64::engine::general_purpose::STANDARD.encode(text)),
                            );
                        }
                    }
                }
            }
        }
        "Namespace" => {
            if let Some(o) = obj.as_object_mut() {
                let spec = o.entry("spec").or_insert(json!({}));
                if let Some(spec) = spec.as_object_mut() {
                    set_default(spec, "finalizers", json!(["kubernetes"]));
                }
                let status = o.entry("status").or_insert(json!({}));
                if let Some(status) = status.as_object_mut() {
                    set_default(status, "phase", json!("Active"));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_and_container_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "busybox", "ports": [{"containerPort": 80}]}, {"name": "b", "image": "x:1.2"}]}}}});
        apply("Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn service_defaults_target_port_and_type() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply("Service", &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn secret_string_data_moves_into_data() {
        let mut s = json!({"data": {"a": "eA=="}, "stringData": {"b": "hunter2"}});
        apply("Secret", &mut s);
        assert_eq!(
            s,
            json!({"type": "Opaque", "data": {"a": "eA==", "b": "aHVudGVyMg=="}})
        );
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }
}
