//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) with the
//! columns kube-apiserver prints for each kind.

use serde_json::{json, Value};

struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
}

const fn col(name: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind: "string",
        priority,
    }
}

const fn int(name: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind: "integer",
        priority,
    }
}

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Namespace" => vec![col("Name", 0), col("Status", 0), col("Age", 0)],
        "Pod" => vec![
            col("Name", 0),
            col("Ready", 0),
            col("Status", 0),
            col("Restarts", 0),
            col("Age", 0),
            col("IP", 1),
            col("Node", 1),
            col("Nominated Node", 1),
            col("Readiness Gates", 1),
        ],
        "Service" => vec![
            col("Name", 0),
            col("Type", 0),
            col("Cluster-IP", 0),
            col("External-IP", 0),
            col("Port(s)", 0),
            col("Age", 0),
            col("Selector", 1),
        ],
        "Endpoints" => vec![col("Name", 0), col("Endpoints", 0), col("Age", 0)],
        "Node" => vec![
            col("Name", 0),
            col("Status", 0),
            col("Roles", 0),
            col("Age", 0),
            col("Version", 0),
            col("Internal-IP", 1),
            col("External-IP", 1),
            col("OS-Image", 1),
            col("Kernel-Version", 1),
            col("Container-Runtime", 1),
        ],
        "ConfigMap" => vec![col("Name", 0), int("Data", 0), col("Age", 0)],
        "Secret" => vec![
            col("Name", 0),
            col("Type", 0),
            int("Data", 0),
            col("Age", 0),
        ],
        "ServiceAccount" => vec![col("Name", 0), int("Secrets", 0), col("Age", 0)],
        "Event" => vec![
            col("Last Seen", 0),
            col("Type", 0),
            col("Reason", 0),
            col("Object", 0),
            col("Subobject", 1),
            col("Source", 1),
            col("Message", 0),
            col("First Seen", 1),
            int("Count", 1),
            col("Name", 1),
        ],
        "Deployment" => vec![
            col("Name", 0),
            col("Ready", 0),
            int("Up-to-date", 0),
            int("Available", 0),
            col("Age", 0),
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        "ReplicaSet" => vec![
            col("Name", 0),
            int("Desired", 0),
            int("Current", 0),
            int("Ready", 0),
            col("Age", 0),
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        "DaemonSet" => vec![
            col("Name", 0),
            int("Desired", 0),
            int("Current", 0),
            int("Ready", 0),
            int("Up-to-date", 0),
            int("Available", 0),
            col("Node Selector", 0),
            col("Age", 0),
            col("Containers", 1),
            col("Images", 1),
            col("Selector", 1),
        ],
        "StatefulSet" => vec![
            col("Name", 0),
            col("Ready", 0),
            col("Age", 0),
            col("Containers", 1),
            col("Images", 1),
        ],
        "ControllerRevision" => vec![
            col("Name", 0),
            col("Controller", 0),
            int("Revision", 0),
            col("Age", 0),
        ],
        "Lease" => vec![col("Name", 0), col("Holder", 0), col("Age", 0)],
        "CertificateSigningRequest" => vec![
            col("Name", 0),
            col("Age", 0),
            col("SignerName", 0),
            col("Requestor", 0),
            col("RequestedDuration", 0),
            col("Condition", 0),
        ],
        "EndpointSlice" => vec![
            col("Name", 0),
            col("AddressType", 0),
            col("Ports", 0),
            col("Endpoints", 0),
            col("Age", 0),
        ],
        _ => vec![col("Name", 0), col("Age", 0)],
    }
}

/// kube's `HumanDuration`: 45s, 5m3s, 2h10m, 3d4h, 400d, 2y10d.
pub fn human_duration(seconds: i64) -> String {
    if seconds < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if m < 10 {
        if seconds % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", seconds % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age_of(timestamp: Option<&str>, now: jiff::Timestamp) -> String {
    match timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn selector_string(map: Option<&Value>) -> String {
    let Some(obj) = map.and_then(Value::as_object) else {
        return "<none>".into();
    };
    if obj.is_empty() {
        return "<none>".into();
    }
    obj.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

fn label_selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        parts.extend(
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))),
        );
    }
    for expr in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = s(expr, "/key");
        let values: Vec<&str> = arr(expr, "/values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match s(expr, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => String::new(),
        });
    }
    or_none(parts.join(","))
}

fn containers_and_images(template_spec: &Value) -> (String, String) {
    let containers = arr(template_spec, "/containers");
    let names: Vec<&str> = containers.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn pod_status_reason(pod: &Value) -> String {
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    let init_statuses = arr(pod, "/status/initContainerStatuses");
    let init_total = arr(pod, "/spec/initContainers").len();
    let mut initializing = false;
    for (i, st) in init_statuses.iter().enumerate() {
        if st.pointer("/state/terminated").is_some() && n(st, "/state/terminated/exitCode") == 0 {
            continue;
        }
        initializing = true;
        reason = if let Some(t) = st.pointer("/state/terminated") {
            if !s(t, "/reason").is_empty() {
                format!("Init:{}", s(t, "/reason"))
            } else {
                format!("Init:ExitCode:{}", n(t, "/exitCode"))
            }
        } else if !s(st, "/state/waiting/reason").is_empty()
            && s(st, "/state/waiting/reason") != "PodInitializing"
        {
            format!("Init:{}", s(st, "/state/waiting/reason"))
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }
    if !initializing {
        for st in arr(pod, "/status/containerStatuses").iter().rev() {
            if !s(st, "/state/waiting/reason").is_empty() {
                reason = s(st, "/state/waiting/reason").to_string();
            } else if let Some(t) = st.pointer("/state/terminated") {
                reason = if !s(t, "/reason").is_empty() {
                    s(t, "/reason").to_string()
                } else if n(t, "/signal") != 0 {
                    format!("Signal:{}", n(t, "/signal"))
                } else {
                    format!("ExitCode:{}", n(t, "/exitCode"))
                };
            }
        }
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = arr(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = match s(p, "/protocol") {
                "" => "TCP",
                x => x,
            };
            if n(p, "/nodePort") != 0 {
                format!("{}:{}/{}", n(p, "/port"), n(p, "/nodePort"), proto)
            } else {
                format!("{}/{}", n(p, "/port"), proto)
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = node.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.into())
                }
            } else if k == "kubernetes.io/role" {
                roles.push(v.as_str().unwrap_or("").into());
            }
        }
    }
    roles.sort();
    or_none(roles.join(","))
}

fn node_status(node: &Value) -> String {
    let mut status = "Unknown".to_string();
    for c in arr(node, "/status/conditions") {
        if s(c, "/type") == "Ready" {
            status = if s(c, "/status") == "True" {
                "Ready".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if node
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_address(node: &Value, kind: &str) -> String {
    arr(node, "/status/addresses")
        .iter()
        .find(|a| s(a, "/type") == kind)
        .map(|a| s(a, "/address").to_string())
        .unwrap_or_else(|| "<none>".into())
}

fn endpoints_summary(addresses: Vec<String>) -> String {
    if addresses.is_empty() {
        return "<none>".into();
    }
    let shown: Vec<&String> = addresses.iter().take(3).collect();
    let mut out = shown
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    if addresses.len() > 3 {
        out.push_str(&format!(" + {} more...", addresses.len() - 3));
    }
    out
}

fn cells(kind: &str, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let age = json!(age_of(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
        now
    ));
    match kind {
        "Namespace" => vec![name, json!(s(o, "/status/phase")), age],
        "Pod" => {
            let statuses = arr(o, "/status/containerStatuses");
            let total = arr(o, "/spec/containers").len();
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| n(c, "/restartCount")).sum();
            let gates = arr(o, "/spec/readinessGates");
            let gates_cell = if gates.is_empty() {
                "<none>".to_string()
            } else {
                let conds = arr(o, "/status/conditions");
                let ok = gates
                    .iter()
                    .filter(|g| {
                        conds.iter().any(|c| {
                            s(c, "/type") == s(g, "/conditionType") && s(c, "/status") == "True"
                        })
                    })
                    .count();
                format!("{ok}/{}", gates.len())
            };
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status_reason(o)),
                json!(restarts.to_string()),
                age,
                json!(or_none(s(o, "/status/podIP").into())),
                json!(or_none(s(o, "/spec/nodeName").into())),
                json!(or_none(s(o, "/status/nominatedNodeName").into())),
                json!(gates_cell),
            ]
        }
        "Service" => {
            let external = {
                let ips: Vec<&str> = arr(o, "/spec/externalIPs")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let lb: Vec<&str> = arr(o, "/status/loadBalancer/ingress")
                    .iter()
                    .map(|i| s(i, "/ip"))
                    .filter(|x| !x.is_empty())
                    .collect();
                match s(o, "/spec/type") {
                    "LoadBalancer" if lb.is_empty() && ips.is_empty() => "<pending>".into(),
                    "ExternalName" => s(o, "/spec/externalName").to_string(),
                    _ => or_none([ips, lb].concat().join(",")),
                }
            };
            vec![
                name,
                json!(match s(o, "/spec/type") {
                    "" => "ClusterIP",
                    t => t,
                }),
                json!(or_none(s(o, "/spec/clusterIP").into())),
                json!(external),
                json!(service_ports(o)),
                age,
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "Endpoints" => {
            let mut addrs = Vec::new();
            for subset in arr(o, "/subsets") {
                for a in arr(subset, "/addresses") {
                    let ports = arr(subset, "/ports");
                    if ports.is_empty() {
                        addrs.push(s(a, "/ip").to_string())
                    }
                    for p in ports {
                        addrs.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")))
                    }
                }
            }
            vec![name, json!(endpoints_summary(addrs)), age]
        }
        "Node" => vec![
            name,
            json!(node_status(o)),
            json!(node_roles(o)),
            age,
            json!(s(o, "/status/nodeInfo/kubeletVersion")),
            json!(node_address(o, "InternalIP")),
            json!(node_address(o, "ExternalIP")),
            json!(or_none(s(o, "/status/nodeInfo/osImage").into())),
            json!(or_none(s(o, "/status/nodeInfo/kernelVersion").into())),
            json!(or_none(
                s(o, "/status/nodeInfo/containerRuntimeVersion").into()
            )),
        ],
        "ConfigMap" => {
            let count = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![name, json!(count), age]
        }
        "Secret" => {
            let count = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            vec![name, json!(s(o, "/type")), json!(count), age]
        }
        "ServiceAccount" => vec![name, json!(arr(o, "/secrets").len()), age],
        "Event" => {
            let last = o
                .pointer("/lastTimestamp")
                .and_then(Value::as_str)
                .or_else(|| o.pointer("/eventTime").and_then(Value::as_str))
                .or_else(|| {
                    o.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                });
            let first = o
                .pointer("/firstTimestamp")
                .and_then(Value::as_str)
                .or(last);
            let object = format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            );
            let source = match (s(o, "/source/component"), s(o, "/source/host")) {
                ("", _) => s(o, "/reportingComponent").to_string(),
                (c, "") => c.to_string(),
                (c, h) => format!("{c}, {h}"),
            };
            vec![
                json!(age_of(last, now)),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(object),
                json!(s(o, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(o, "/message").trim()),
                json!(age_of(first, now)),
                json!(n(o, "/count").max(1)),
                name,
            ]
        }
        "Deployment" => {
            let (c, i) =
                containers_and_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                json!(n(o, "/status/updatedReplicas")),
                json!(n(o, "/status/availableReplicas")),
                age,
                json!(c),
                json!(i),
                json!(label_selector_string(
                    o.pointer("/spec/selector").unwrap_or(&Value::Null)
                )),
            ]
        }
        "ReplicaSet" => {
            let (c, i) =
                containers_and_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                name,
                json!(o
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)),
                json!(n(o, "/status/replicas")),
                json!(n(o, "/status/readyReplicas")),
                age,
                json!(c),
                json!(i),
                json!(label_selector_string(
                    o.pointer("/spec/selector").unwrap_or(&Value::Null)
                )),
            ]
        }
        "DaemonSet" => {
            let (c, i) =
                containers_and_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                name,
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                json!(selector_string(
                    o.pointer("/spec/template/spec/nodeSelector")
                )),
                age,
                json!(c),
                json!(i),
                json!(label_selector_string(
                    o.pointer("/spec/selector").unwrap_or(&Value::Null)
                )),
            ]
        }
        "StatefulSet" => {
            let (c, i) =
                containers_and_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                age,
                json!(c),
                json!(i),
            ]
        }
        "ControllerRevision" => {
            let controller = arr(o, "/metadata/ownerReferences")
                .iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                .map(|r| format!("{}/{}", s(r, "/kind").to_lowercase(), s(r, "/name")))
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(controller), json!(n(o, "/revision")), age]
        }
        "CertificateSigningRequest" => {
            let duration = o
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_i64)
                .map(human_duration)
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                age,
                json!(s(o, "/spec/signerName")),
                json!(s(o, "/spec/username")),
                json!(duration),
                json!(crate::csr::condition_summary(o)),
            ]
        }
        "Lease" => vec![
            name,
            json!(or_none(s(o, "/spec/holderIdentity").into())),
            age,
        ],
        "EndpointSlice" => {
            let ports: Vec<String> = arr(o, "/ports")
                .iter()
                .map(|p| n(p, "/port").to_string())
                .collect();
            let addrs: Vec<String> = arr(o, "/endpoints")
                .iter()
                .flat_map(|e| {
                    arr(e, "/addresses")
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                })
                .collect();
            vec![
                name,
                json!(s(o, "/addressType")),
                json!(or_none(ports.join(","))),
                json!(endpoints_summary(addrs)),
                age,
            ]
        }
        _ => vec![name, age],
    }
}

/// What goes into `rows[].object`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

pub fn table(
    kind: &str,
    objects: &[&Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include: IncludeObject,
    with_headers: bool,
) -> Value {
    let now = jiff::Timestamp::now();
    let definitions: Vec<Value> = if with_headers {
        columns(kind)
            .iter()
            .map(|c| {
                let format = if c.name == "Name" { "name" } else { "" };
                json!({"name": c.name, "type": c.kind, "format": format, "description": "", "priority": c.priority})
            })
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(kind, o, now)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Object => row["object"] = (*o).clone(),
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
            }
            row
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(303), "5m3s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 600), "3h10m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(human_duration(400 * 86400), "400d");
    }

    #[test]
    fn pod_row_has_kubectl_columns() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table("Pod", &[&pod], "7", None, IncludeObject::Metadata, true);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.244.0.5");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
