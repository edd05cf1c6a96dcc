//! The API server driven by the real kubectl (issue: control plane API server).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use skiff_e2e::Server;

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn system_namespaces_exist_and_empty_lists_say_so() {
    let s = Server::start();
    let out = s.ok(&["get", "namespaces"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(ns) && l.contains("Active")),
            "{ns} missing in:\n{out}"
        );
    }
    let out = s.kubectl(&["get", "pods", "-n", "kube-system"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("No resources found in kube-system namespace."));
    let svc = s.json(&["get", "service", "kubernetes", "-n", "default"]);
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
    let embedded_file = s.data_dir().join("state.redb");
    assert_eq!(
        embedded_file.exists(),
        !skiff_e2e::use_etcd(),
        "the store in use is the one asked for"
    );
    let version = s.ok(&["version"]);
    assert!(version.contains("Server Version: v1.33"), "{version}");
}

#[test]
fn create_scale_expose_and_release_addresses() {
    let s = Server::start();
    s.ok(&["create", "namespace", "shop"]);
    // kubectl 1.33 sends these two creates as protobuf.
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=registry.local/httpd:1",
        "--replicas=3",
        "-n",
        "shop",
    ]);
    let d = s.json(&["get", "deployment", "web", "-n", "shop"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert_eq!(d["metadata"]["generation"], 1);
    s.ok(&["scale", "deployment", "web", "--replicas=5", "-n", "shop"]);
    assert_eq!(
        s.json(&["get", "deployment", "web", "-n", "shop"])["spec"]["replicas"],
        5
    );
    s.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--type=NodePort",
        "-n",
        "shop",
    ]);
    s.ok(&[
        "create",
        "service",
        "nodeport",
        "other",
        "--tcp=81:8081",
        "-n",
        "shop",
    ]);
    let a = s.json(&["get", "svc", "web", "-n", "shop"]);
    let b = s.json(&["get", "svc", "other", "-n", "shop"]);
    let ip_a = a["spec"]["clusterIP"].as_str().unwrap().to_string();
    let ip_b = b["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert_ne!(ip_a, ip_b);
    for ip in [&ip_a, &ip_b] {
        let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
        assert_eq!(
            (octets[0], octets[1] & 0xf0),
            (10, 96),
            "{ip} is outside 10.96.0.0/12"
        );
    }
    let np_a = a["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    let np_b = b["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert_ne!(np_a, np_b);
    assert!((30000..=32767).contains(&np_a) && (30000..=32767).contains(&np_b));
    // Deleting a Service releases its ClusterIP and NodePort for others.
    s.ok(&["delete", "svc", "web", "-n", "shop"]);
    let reuse = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: again, namespace: shop}}\nspec:\n  type: NodePort\n  clusterIP: {ip_a}\n  ports: [{{port: 80, nodePort: {np_a}}}]\n"
    );
    let f = s.write_file("again.yaml", &reuse);
    s.ok(&["create", "-f", f.to_str().unwrap()]);
    let taken = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: clash, namespace: shop}}\nspec:\n  clusterIP: {ip_b}\n  ports: [{{port: 80}}]\n");
    let f = s.write_file("clash.yaml", &taken);
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(err.contains("provided IP is already allocated"), "{err}");
}

#[test]
fn label_annotate_set_image_and_edit() {
    let s = Server::start();
    s.ok(&["create", "deployment", "web", "--image=busybox:1.36"]);
    s.ok(&["label", "deployment", "web", "tier=frontend"]);
    s.ok(&["annotate", "deployment", "web", "owner=team-a"]);
    s.ok(&["set", "image", "deployment/web", "busybox=busybox:1.37"]);
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(d["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(d["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.37"
    );
    assert_eq!(
        d["metadata"]["generation"], 2,
        "only the image change touched the spec"
    );
    let editor = s.write_file(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/replicas: 1/replicas: 7/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = s
        .kubectl_cmd(&["edit", "deployment", "web"])
        .env("EDITOR", &editor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.json(&["get", "deploy", "web"])["spec"]["replicas"], 7);
}

const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  replicas: 2
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports: [{containerPort: 80}]
      - name: sidecar
        image: busybox:1.36
---
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  selector: {app: app}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config}
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: app-secret}
stringData: {password: hunter2}
"#;

#[test]
fn apply_multi_document_then_reapply_a_change() {
    let s = Server::start();
    let f = s.write_file("app.yaml", APP);
    let out = s.ok(&["apply", "-f", f.to_str().unwrap()]);
    for expected in [
        "deployment.apps/app created",
        "service/app created",
        "configmap/app-config created",
        "secret/app-secret created",
    ] {
        assert!(out.contains(expected), "{out}");
    }
    let secret = s.json(&["get", "secret", "app-secret"]);
    assert_eq!(
        secret["data"]["password"], "aHVudGVyMg==",
        "stringData is stored base64-encoded in data"
    );
    // A change to one container: the strategic merge patch keeps the other.
    let changed = APP
        .replacen("image: busybox:1.36", "image: busybox:1.37", 1)
        .replace("replicas: 2", "replicas: 4");
    std::fs::write(&f, &changed).unwrap();
    let diff = s.kubectl(&["diff", "-f", f.to_str().unwrap()]);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "diff reports the change: {}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(String::from_utf8_lossy(&diff.stdout).contains("busybox:1.37"));
    let out = s.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        out.contains("deployment.apps/app configured") && out.contains("service/app unchanged"),
        "{out}"
    );
    let d = s.json(&["get", "deploy", "app"]);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["image"], "busybox:1.37");
    assert_eq!(containers[1]["name"], "sidecar");
    assert_eq!(d["spec"]["replicas"], 4);
    let diff = s.kubectl(&["diff", "-f", f.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(0), "nothing left to diff");
    let out = s.ok(&["delete", "-f", f.to_str().unwrap()]);
    assert!(out.contains("deployment.apps \"app\" deleted"), "{out}");
    assert!(s
        .ok(&["get", "deploy,svc,cm,secret", "-o", "name"])
        .lines()
        .all(|l| !l.contains("app")));
}

#[test]
fn output_formats() {
    let s = Server::start();
    s.ok(&[
        "create",
        "configmap",
        "c1",
        "--from-literal=a=1",
        "--from-literal=b=2",
    ]);
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=2",
    ]);
    let yaml = s.ok(&["get", "cm", "c1", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: ConfigMap") && yaml.contains("a: \"1\""),
        "{yaml}"
    );
    assert_eq!(
        s.ok(&["get", "cm", "c1", "-o", "name"]).trim(),
        "configmap/c1"
    );
    assert_eq!(s.ok(&["get", "cm", "c1", "-o", "jsonpath={.data.b}"]), "2");
    let table = lines(&s.ok(&["get", "cm", "c1"]));
    assert_eq!(table[0], "NAME DATA AGE");
    assert!(table[1].starts_with("c1 2 "));
    let wide = lines(&s.ok(&["get", "deploy", "-o", "wide"]));
    assert_eq!(
        wide[0],
        "NAME READY UP-TO-DATE AVAILABLE AGE CONTAINERS IMAGES SELECTOR"
    );
    assert!(
        // READY/UP-TO-DATE/AVAILABLE move as the controllers work; the shape does not.
        wide[1].starts_with("web ")
            && wide[1].contains("/2 ")
            && wide[1].ends_with("busybox busybox:1.36 app=web"),
        "{:?}",
        wide[1]
    );
    let all = s.ok(&["get", "all"]);
    assert!(
        all.contains("service/kubernetes") && all.contains("deployment.apps/web"),
        "{all}"
    );
    let described = s.ok(&["describe", "deployment", "web"]);
    assert!(
        described.contains("RollingUpdateStrategy:  25% max unavailable, 25% max surge"),
        "{described}"
    );
}

#[test]
fn discovery_and_explain() {
    let s = Server::start();
    let out = s.ok(&["api-resources"]);
    for row in [
        "pods po v1 true Pod",
        "deployments deploy apps/v1 true Deployment",
        "namespaces ns v1 false Namespace",
        "leases coordination.k8s.io/v1 true Lease",
        "endpointslices discovery.k8s.io/v1 true EndpointSlice",
        "daemonsets ds apps/v1 true DaemonSet",
        "controllerrevisions apps/v1 true ControllerRevision",
    ] {
        assert!(
            lines(&out).iter().any(|l| l == row),
            "missing {row:?} in\n{out}"
        );
    }
    let explained = s.ok(&["explain", "deployment.spec.strategy"]);
    assert!(
        explained.contains("FIELD: strategy <DeploymentStrategy>"),
        "{explained}"
    );
    assert!(explained.contains("rollingUpdate"), "{explained}");
}

#[test]
fn watch_sees_added_modified_deleted_in_order() {
    let s = Server::start();
    s.ok(&["create", "configmap", "before", "--from-literal=x=0"]);
    let child = s
        .kubectl_cmd(&[
            "get",
            "configmaps",
            "-w",
            "--output-watch-events",
            "-o",
            "jsonpath={.type} {.object.metadata.name}{\"\\n\"}",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.ok(&["create", "configmap", "w1", "--from-literal=a=1"]);
    s.ok(&["label", "configmap", "w1", "x=y"]);
    s.ok(&["delete", "configmap", "w1"]);
    std::thread::sleep(Duration::from_millis(1500));
    let pid = child.id() as i32;
    unsafe_kill(pid);
    let out = child.wait_with_output().unwrap();
    let events: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let w1: Vec<&String> = events.iter().filter(|e| e.ends_with(" w1")).collect();
    assert_eq!(
        w1,
        ["ADDED w1", "MODIFIED w1", "DELETED w1"],
        "all events: {events:?}"
    );
    assert!(
        events.iter().any(|e| e == "ADDED before"),
        "the initial state comes first: {events:?}"
    );
}

fn unsafe_kill(pid: i32) {
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
}

#[test]
fn conflicts_on_stale_resource_version() {
    let s = Server::start();
    s.ok(&["create", "configmap", "c", "--from-literal=a=1"]);
    let mut cm = s.json(&["get", "cm", "c"]);
    cm["data"]["a"] = Value::String("2".into());
    let first = s.kubectl_stdin(&["replace", "-f", "-"], &cm.to_string());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    cm["data"]["a"] = Value::String("3".into());
    let stale = s.kubectl_stdin(&["replace", "-f", "-"], &cm.to_string());
    assert!(!stale.status.success());
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(err.contains("the object has been modified"), "{err}");
    assert_eq!(s.json(&["get", "cm", "c"])["data"]["a"], "2");
}

#[test]
fn generate_name_and_list_paging() {
    let s = Server::start();
    let mut names = HashSet::new();
    for _ in 0..7 {
        let out = s.kubectl_stdin(
            &["create", "-f", "-", "-o", "name"],
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"generateName":"gen-"}}"#,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        names.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    assert_eq!(names.len(), 7);
    assert!(names
        .iter()
        .all(|n| n.starts_with("configmap/gen-") && n.len() == "configmap/gen-".len() + 5));
    // --chunk-size makes kubectl page with limit/continue.
    let paged = s.ok(&["get", "cm", "--chunk-size=2", "-o", "name"]);
    let unpaged = s.ok(&["get", "cm", "-o", "name"]);
    assert_eq!(paged, unpaged);
    assert_eq!(paged.lines().filter(|l| l.contains("gen-")).count(), 7);
}

#[test]
fn server_side_apply_tracks_owners_and_reports_conflicts() {
    let s = Server::start();
    let first = s.write_file(
        "a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"1\", b: \"x\"}\n",
    );
    assert!(s
        .ok(&["apply", "--server-side", "-f", first.to_str().unwrap()])
        .contains("configmap/ssa serverside-applied"));
    let second = s.write_file(
        "b.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: \"2\"}\n",
    );
    let err = s.fails(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        second.to_str().unwrap(),
    ]);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .data.a"),
        "{err}"
    );
    assert_eq!(
        s.json(&["get", "cm", "ssa"])["data"]["a"],
        "1",
        "a refused apply changes nothing"
    );
    s.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        second.to_str().unwrap(),
    ]);
    let cm = s.json(&["get", "cm", "ssa", "--show-managed-fields"]);
    assert_eq!(cm["data"]["a"], "2");
    let managers: Vec<(String, Value)> = cm["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_string(),
                e["fieldsV1"].clone(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("other".into(), serde_json::json!({"f:data": {"f:a": {}}}))),
        "{managers:?}"
    );
    assert!(
        managers.contains(&("kubectl".into(), serde_json::json!({"f:data": {"f:b": {}}}))),
        "{managers:?}"
    );
    // The first manager drops b from its configuration: b goes, a (owned by other) stays.
    let third = s.write_file(
        "c.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {c: \"3\"}\n",
    );
    s.ok(&["apply", "--server-side", "-f", third.to_str().unwrap()]);
    assert_eq!(
        s.json(&["get", "cm", "ssa"])["data"],
        serde_json::json!({"a": "2", "c": "3"})
    );
    // An apply that creates answers 201 and the object exists.
    let dep = s.write_file("d.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: sa}\nspec:\n  selector: {matchLabels: {app: sa}}\n  template:\n    metadata: {labels: {app: sa}}\n    spec: {containers: [{name: c, image: busybox:1.36}]}\n");
    assert!(s
        .ok(&["apply", "--server-side", "-f", dep.to_str().unwrap()])
        .contains("deployment.apps/sa serverside-applied"));
    assert_eq!(s.json(&["get", "deploy", "sa"])["spec"]["replicas"], 1);
}

/// A Deployment with a ReplicaSet and two Pods that point back at it, as controllers make them.
fn owned_family(s: &Server, name: &str) {
    s.ok(&["create", "deployment", name, "--image=busybox:1.36"]);
    let uid = s.json(&["get", "deploy", name])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let rs = format!(
        r#"{{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{{"name":"{name}-rs","labels":{{"app":"{name}"}},
        "ownerReferences":[{{"apiVersion":"apps/v1","kind":"Deployment","name":"{name}","uid":"{uid}","controller":true,"blockOwnerDeletion":true}}]}},
        "spec":{{"replicas":2,"selector":{{"matchLabels":{{"app":"{name}"}}}},"template":{{"metadata":{{"labels":{{"app":"{name}"}}}},"spec":{{"containers":[{{"name":"c","image":"busybox:1.36"}}]}}}}}}}}"#
    );
    assert!(s
        .kubectl_stdin(&["create", "-f", "-"], &rs)
        .status
        .success());
    let rs_uid = s.json(&["get", "rs", &format!("{name}-rs")])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..2 {
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}-pod-{i}","labels":{{"app":"{name}"}},
            "ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"{name}-rs","uid":"{rs_uid}","controller":true}}]}},
            "spec":{{"containers":[{{"name":"c","image":"busybox:1.36"}}]}}}}"#
        );
        let out = s.kubectl_stdin(&["create", "-f", "-"], &pod);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn names_of(s: &Server, what: &str) -> Vec<String> {
    s.ok(&["get", what, "-o", "name"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn delete_cascades_background_foreground_and_orphan() {
    let s = Server::start();
    owned_family(&s, "bg");
    s.ok(&["delete", "deployment", "bg"]);
    eventually(
        "background cascade removes the ReplicaSet and its pods",
        || names_of(&s, "rs,pods").is_empty(),
    );

    owned_family(&s, "fg");
    s.ok(&["delete", "deployment", "fg", "--cascade=foreground"]);
    assert!(
        names_of(&s, "deploy").is_empty(),
        "kubectl waited until the owner was gone"
    );
    assert!(
        names_of(&s, "rs,pods").is_empty(),
        "foreground: dependents went before the owner"
    );

    owned_family(&s, "or");
    s.ok(&["delete", "deployment", "or", "--cascade=orphan"]);
    assert!(names_of(&s, "deploy").is_empty());
    let rs = s.json(&["get", "rs", "or-rs"]);
    assert!(
        rs["metadata"]["ownerReferences"].is_null(),
        "orphaned ReplicaSet lost its owner reference: {rs}"
    );
    assert_eq!(
        names_of(&s, "pods").len(),
        2,
        "orphan leaves the pods alone"
    );
}

#[test]
fn deleting_a_namespace_empties_it_then_removes_it() {
    let s = Server::start();
    s.ok(&["create", "namespace", "tmp"]);
    s.ok(&[
        "create",
        "configmap",
        "c",
        "-n",
        "tmp",
        "--from-literal=a=b",
    ]);
    s.ok(&[
        "create",
        "deployment",
        "d",
        "-n",
        "tmp",
        "--image=busybox:1.36",
    ]);
    s.ok(&["delete", "namespace", "tmp"]);
    let out = s.kubectl(&["get", "namespace", "tmp"]);
    assert!(!out.status.success(), "the namespace is gone");
    assert!(s
        .ok(&["get", "configmaps,deployments", "-n", "tmp", "-o", "name"])
        .trim()
        .is_empty());
    let err = s.fails(&["create", "configmap", "late", "-n", "tmp"]);
    assert!(err.contains("namespaces \"tmp\" not found"), "{err}");
}

#[test]
fn status_binding_and_eviction_subresources() {
    use skiff_e2e::Credentials;
    let s = Server::start_with(&["--disable", "all"]);
    s.ok(&["run", "solo", "--image=busybox:1.36"]);
    let pod = s.json(&["get", "pod", "solo"]);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(pod["status"]["qosClass"], "BestEffort");
    // The main resource ignores status; the status subresource ignores everything else.
    let mut changed = pod.clone();
    changed["status"]["phase"] = serde_json::json!("Running");
    changed["metadata"]["labels"]["extra"] = serde_json::json!("x");
    let put = |path: &str, body: &Value| {
        s.curl(
            "PUT",
            path,
            Some("application/json"),
            Some(body.to_string().as_bytes()),
            Credentials::Admin,
        )
    };
    let r = put("/api/v1/namespaces/default/pods/solo", &changed);
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.json()["status"]["phase"], "Pending");
    assert_eq!(r.json()["metadata"]["labels"]["extra"], "x");
    let mut status_change = r.json();
    status_change["status"]["phase"] = serde_json::json!("Running");
    status_change["metadata"]["labels"]["extra"] = serde_json::json!("ignored");
    let r = put(
        "/api/v1/namespaces/default/pods/solo/status",
        &status_change,
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.json()["status"]["phase"], "Running");
    assert_eq!(r.json()["metadata"]["labels"]["extra"], "x");
    // Binding sets the node once; a second binding is a conflict.
    let binding = serde_json::json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "solo"}, "target": {"kind": "Node", "name": "node-a"}});
    let r = s.curl(
        "POST",
        "/api/v1/namespaces/default/pods/solo/binding",
        Some("application/json"),
        Some(binding.to_string().as_bytes()),
        Credentials::Admin,
    );
    assert_eq!(r.code, 201, "{}", r.body);
    let pod = s.json(&["get", "pod", "solo"]);
    assert_eq!(pod["spec"]["nodeName"], "node-a");
    assert!(pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "PodScheduled" && c["status"] == "True"));
    let again = s.curl(
        "POST",
        "/api/v1/namespaces/default/pods/solo/binding",
        Some("application/json"),
        Some(binding.to_string().as_bytes()),
        Credentials::Admin,
    );
    assert_eq!(again.code, 409, "{}", again.body);
    // Eviction of an unbound pod deletes it at once.
    s.ok(&["run", "evictme", "--image=busybox:1.36"]);
    let eviction = serde_json::json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evictme", "namespace": "default"}});
    let r = s.curl(
        "POST",
        "/api/v1/namespaces/default/pods/evictme/eviction",
        Some("application/json"),
        Some(eviction.to_string().as_bytes()),
        Credentials::Admin,
    );
    assert_eq!(r.code, 201, "{}", r.body);
    assert!(!s.kubectl(&["get", "pod", "evictme"]).status.success());
    // A bound pod is deleted gracefully: it stays, marked, until its kubelet finishes it.
    s.ok(&["delete", "pod", "solo", "--wait=false"]);
    let pod = s.json(&["get", "pod", "solo"]);
    assert!(!pod["metadata"]["deletionTimestamp"].is_null());
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30);
    s.ok(&["delete", "pod", "solo", "--grace-period=0", "--force"]);
    assert!(!s.kubectl(&["get", "pod", "solo"]).status.success());
}

/// Every page of a paginated list shows the cluster as it was at the first page (etcd's
/// revision reads give kube-apiserver the same): objects created, changed or deleted
/// between the pages do not leak into the later ones. A token for another list is refused,
/// and one older than the server's history gets 410 Expired.
#[test]
fn paged_lists_are_one_snapshot() {
    let mut s = Server::start();
    s.ok(&["create", "namespace", "paging"]);
    for i in 0..6 {
        s.ok(&[
            "create",
            "configmap",
            "-n",
            "paging",
            &format!("page-{i}"),
            "--from-literal=v=old",
        ]);
    }
    let page = |path: &str| s.raw_json(path);
    let items = |v: &Value| -> Vec<(String, String)> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| {
                (
                    i["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    i["data"]["v"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let base = "/api/v1/namespaces/paging/configmaps?limit=2";
    let first = page(base);
    let revision = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen = items(&first);
    let mut token = first["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    let first_token = token.clone();
    // Between the pages: one deleted, one changed, one created, all after the first page.
    s.ok(&["delete", "configmap", "-n", "paging", "page-5"]);
    s.ok(&[
        "patch",
        "configmap",
        "-n",
        "paging",
        "page-4",
        "-p",
        r#"{"data":{"v":"new"}}"#,
    ]);
    s.ok(&[
        "create",
        "configmap",
        "-n",
        "paging",
        "page-9",
        "--from-literal=v=old",
    ]);
    loop {
        let next = page(&format!("{base}&continue={token}"));
        assert_eq!(
            next["metadata"]["resourceVersion"],
            revision.as_str(),
            "{next}"
        );
        seen.extend(items(&next));
        match next["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => break,
        }
    }
    let pages: Vec<(String, String)> = seen
        .into_iter()
        .filter(|(n, _)| n.starts_with("page-"))
        .collect();
    let expected: Vec<(String, String)> = (0..6)
        .map(|i| (format!("page-{i}"), "old".to_string()))
        .collect();
    assert_eq!(pages, expected, "the pages mix revisions");
    // An unpaged list now shows the changes.
    let now: Vec<String> = items(&page("/api/v1/namespaces/paging/configmaps"))
        .into_iter()
        .filter(|(n, _)| n.starts_with("page-"))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    assert_eq!(
        now,
        [
            "page-0=old",
            "page-1=old",
            "page-2=old",
            "page-3=old",
            "page-4=new",
            "page-9=old"
        ]
    );

    let other = s.curl(
        "GET",
        &format!("/api/v1/namespaces/paging/secrets?limit=2&continue={first_token}"),
        None,
        None,
        skiff_e2e::Credentials::Admin,
    );
    assert_eq!(other.code, 400, "{}", other.body);
    assert!(other.body.contains("another list"), "{}", other.body);

    // A restart starts the server's history afresh: the old revision is gone.
    s.restart();
    let expired = s.curl(
        "GET",
        &format!("{base}&continue={first_token}"),
        None,
        None,
        skiff_e2e::Credentials::Admin,
    );
    assert_eq!(expired.code, 410, "{}", expired.body);
    assert_eq!(expired.json()["reason"], "Expired", "{}", expired.body);
}
