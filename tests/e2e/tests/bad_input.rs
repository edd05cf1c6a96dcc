//! Malformed and invalid requests: each gets the right 4xx and Status reason, and none of
//! them changes what is stored.

use serde_json::{json, Value};
use skiff_e2e::{Credentials, Server};

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    code: u16,
    reason: &'static str,
    who: Credentials<'static>,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &str,
    body: Option<Value>,
    code: u16,
    reason: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.to_string(),
        content_type: body.as_ref().map(|_| "application/json"),
        body: body.map(|b| b.to_string().into_bytes()),
        code,
        reason,
        who: Credentials::Admin,
    }
}

fn raw(
    what: &'static str,
    method: &'static str,
    path: &str,
    content_type: &'static str,
    body: &[u8],
    code: u16,
    reason: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.to_string(),
        content_type: Some(content_type),
        body: Some(body.to_vec()),
        code,
        reason,
        who: Credentials::Admin,
    }
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";
const SVCS: &str = "/api/v1/namespaces/default/services";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn deployment(name: &str, patch: impl FnOnce(&mut Value)) -> Value {
    let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
    patch(&mut d);
    d
}

fn service(name: &str, patch: impl FnOnce(&mut Value)) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
    patch(&mut s);
    s
}

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}})
}

/// The store revision, read from a list: unchanged means nothing was written.
fn revision(s: &Server) -> String {
    let rv = s.raw_json("/api/v1/namespaces")["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        rv.parse::<u64>().is_ok_and(|n| n > 0),
        "a real revision: {rv:?}"
    );
    rv
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    // The API server alone: controllers would write in the background and move the revision.
    let s = Server::start_with(&["--disable", "all"]);
    s.ok(&["create", "configmap", "existing", "--from-literal=a=b"]);
    s.ok(&["create", "deployment", "d1", "--image=busybox:1.36"]);
    s.ok(&["create", "service", "clusterip", "s1", "--tcp=80:80"]);
    let stale = s.json(&["get", "cm", "existing"]);
    s.ok(&["label", "cm", "existing", "touched=yes"]);
    let mut stale_cm = stale.clone();
    stale_cm["data"]["a"] = json!("stale");
    let mut wrong_selector_update = s.json(&["get", "deploy", "d1"]);
    wrong_selector_update["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
    wrong_selector_update["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let mut big = cm("big");
    big["data"]["blob"] = json!("x".repeat(4 * 1024 * 1024));
    let mut huge_annotation = cm("annotated");
    huge_annotation["metadata"]["annotations"] = json!({"note": "y".repeat(300 * 1024)});
    let before = revision(&s);

    let cases = vec![
        raw("malformed JSON", "POST", CMS, "application/json", b"{\"apiVersion\": \"v1\", ", 400, "BadRequest"),
        raw("malformed YAML", "POST", CMS, "application/yaml", b"kind: [ConfigMap", 400, "BadRequest"),
        raw("protobuf garbage", "POST", CMS, "application/vnd.kubernetes.protobuf", b"k8s\0\x0a\xff\xff\xff", 400, "BadRequest"),
        raw("protobuf without magic", "POST", CMS, "application/vnd.kubernetes.protobuf", b"\x0a\x02hi", 400, "BadRequest"),
        raw("wrong content type", "POST", CMS, "text/plain", b"hello", 415, "UnsupportedMediaType"),
        raw("a JSON array is not an object", "POST", CMS, "application/json", b"[1,2]", 400, "BadRequest"),
        raw("empty body", "POST", CMS, "application/json", b"", 400, "BadRequest"),
        case("kind does not match the URL", "POST", CMS, Some(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})), 400, "BadRequest"),
        case("apiVersion does not match the URL", "POST", CMS, Some(json!({"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "x"}})), 400, "BadRequest"),
        case("name too long", "POST", CMS, Some(cm(&"a".repeat(300))), 422, "Invalid"),
        case("name with a slash", "POST", CMS, Some(cm("a/b")), 422, "Invalid"),
        case("name with upper case", "POST", CMS, Some(cm("Bad")), 422, "Invalid"),
        case("no name and no generateName", "POST", CMS, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})), 422, "Invalid"),
        case("invalid label value", "POST", CMS, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l", "labels": {"a": "not valid!"}}})), 422, "Invalid"),
        case("invalid label key", "POST", CMS, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l", "labels": {"-bad": "x"}}})), 422, "Invalid"),
        case("invalid configmap key", "POST", CMS, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "k"}, "data": {"a b": "x"}})), 422, "Invalid"),
        case("annotations over 256 KiB", "POST", CMS, Some(huge_annotation), 422, "Invalid"),
        case("body over 3 MiB", "POST", CMS, Some(big), 413, "RequestEntityTooLarge"),
        case("wrong type for a field", "POST", DEPLOYS, Some(deployment("t", |d| d["spec"]["replicas"] = json!("three"))), 400, "BadRequest"),
        case("negative replicas", "POST", DEPLOYS, Some(deployment("n", |d| d["spec"]["replicas"] = json!(-1))), 422, "Invalid"),
        case("selector does not match template", "POST", DEPLOYS, Some(deployment("m", |d| d["spec"]["template"]["metadata"]["labels"] = json!({"app": "x"}))), 422, "Invalid"),
        case("no containers", "POST", DEPLOYS, Some(deployment("e", |d| d["spec"]["template"]["spec"]["containers"] = json!([]))), 422, "Invalid"),
        case("duplicate container names", "POST", DEPLOYS, Some(deployment("dup", |d| d["spec"]["template"]["spec"]["containers"] = json!([{"name": "c", "image": "a"}, {"name": "c", "image": "b"}]))), 422, "Invalid"),
        case("container port out of range", "POST", DEPLOYS, Some(deployment("p", |d| d["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"containerPort": 70000}]))), 422, "Invalid"),
        case("missing image", "POST", DEPLOYS, Some(deployment("i", |d| d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(""))), 422, "Invalid"),
        case("unknown field with Strict", "POST", &format!("{DEPLOYS}?fieldValidation=Strict"), Some(deployment("u", |d| d["spec"]["replicaz"] = json!(2))), 400, "BadRequest"),
        case("fieldValidation not understood", "POST", &format!("{CMS}?fieldValidation=Loose"), Some(cm("fv")), 400, "BadRequest"),
        case("dryRun not understood", "POST", &format!("{CMS}?dryRun=Maybe"), Some(cm("dr")), 400, "BadRequest"),
        case("unsupported restart policy", "POST", PODS, Some(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rp"}, "spec": {"restartPolicy": "Sometimes", "containers": [{"name": "c", "image": "x"}]}})), 422, "Invalid"),
        case("subPath escaping its volume", "POST", PODS, Some(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sp"}, "spec": {"volumes": [{"name": "v", "emptyDir": {}}], "containers": [{"name": "c", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/m", "subPath": "../../etc"}]}]}})), 422, "Invalid"),
        case("unsupported service type", "POST", SVCS, Some(service("ty", |s| s["spec"]["type"] = json!("Magic"))), 422, "Invalid"),
        case("duplicate service port names", "POST", SVCS, Some(service("pn", |s| s["spec"]["ports"] = json!([{"name": "a", "port": 80}, {"name": "a", "port": 81}]))), 422, "Invalid"),
        case("nodePort out of range", "POST", SVCS, Some(service("np", |s| { s["spec"]["type"] = json!("NodePort"); s["spec"]["ports"][0]["nodePort"] = json!(80); })), 422, "Invalid"),
        case("clusterIP outside the service range", "POST", SVCS, Some(service("ip", |s| s["spec"]["clusterIP"] = json!("192.168.1.1"))), 422, "Invalid"),
        case("namespace does not exist", "POST", "/api/v1/namespaces/nowhere/configmaps", Some(cm("x")), 404, "NotFound"),
        case("namespace in body differs from URL", "POST", CMS, Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "kube-system"}})), 400, "BadRequest"),
        case("already exists", "POST", CMS, Some(cm("existing")), 409, "AlreadyExists"),
        case("POST to a named object", "POST", &format!("{CMS}/existing"), Some(cm("existing")), 405, "MethodNotAllowed"),
        case("stale resourceVersion", "PUT", &format!("{CMS}/existing"), Some(stale_cm), 409, "Conflict"),
        case("name in body differs from URL", "PUT", &format!("{CMS}/existing"), Some(cm("other")), 400, "BadRequest"),
        case("immutable selector", "PUT", &format!("{DEPLOYS}/d1"), Some(wrong_selector_update), 422, "Invalid"),
        case("update of a missing object", "PUT", &format!("{CMS}/missing"), Some(cm("missing")), 404, "NotFound"),
        raw("patch with a non-patch content type", "PATCH", &format!("{CMS}/existing"), "application/json", b"{}", 415, "UnsupportedMediaType"),
        raw("JSON patch whose test fails", "PATCH", &format!("{CMS}/existing"), "application/json-patch+json", br#"[{"op":"test","path":"/data/a","value":"zzz"},{"op":"replace","path":"/data/a","value":"q"}]"#, 422, "Invalid"),
        raw("merge patch making the object invalid", "PATCH", &format!("{DEPLOYS}/d1"), "application/merge-patch+json", br#"{"spec":{"replicas":-5}}"#, 422, "Invalid"),
        raw("apply without a field manager", "PATCH", &format!("{CMS}/existing"), "application/apply-patch+yaml", br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"existing"}}"#, 400, "BadRequest"),
        case("path traversal in a name", "GET", &format!("{CMS}/.."), None, 400, "BadRequest"),
        case("encoded slash in a name", "GET", &format!("{CMS}/a%2Fb"), None, 400, "BadRequest"),
        case("unknown resource type", "GET", "/api/v1/namespaces/default/widgets", None, 404, "NotFound"),
        case("unknown subresource", "GET", &format!("{CMS}/existing/bogus"), None, 404, "NotFound"),
        case("get a missing object", "GET", &format!("{CMS}/missing"), None, 404, "NotFound"),
        case("delete a missing object", "DELETE", &format!("{CMS}/missing"), None, 404, "NotFound"),
        case("invalid label selector", "GET", &format!("{CMS}?labelSelector=a%20in%20(b"), None, 400, "BadRequest"),
        case("unsupported field selector", "GET", &format!("{CMS}?fieldSelector=spec.nothing%3Dx"), None, 400, "BadRequest"),
        case("invalid continue token", "GET", &format!("{CMS}?limit=1&continue=%21%21"), None, 400, "BadRequest"),
        case("invalid watch resourceVersion", "GET", &format!("{CMS}?watch=true&resourceVersion=abc"), None, 400, "BadRequest"),
        case("bad delete propagation policy", "DELETE", &format!("{CMS}/existing"), Some(json!({"propagationPolicy": "Sideways"})), 400, "BadRequest"),
        case("delete precondition on a wrong uid", "DELETE", &format!("{CMS}/existing"), Some(json!({"preconditions": {"uid": "not-the-uid"}})), 409, "Conflict"),
        Case { who: Credentials::Anonymous, ..case("anonymous request", "GET", CMS, None, 401, "Unauthorized") },
        Case { who: Credentials::Token("not-a-token"), ..case("unknown bearer token", "GET", CMS, None, 401, "Unauthorized") },
    ];
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for c in &cases {
        let resp = s.curl(
            c.method,
            &c.path,
            c.content_type,
            c.body.as_deref(),
            match c.who {
                Credentials::Admin => Credentials::Admin,
                Credentials::Anonymous => Credentials::Anonymous,
                Credentials::Token(t) => Credentials::Token(t),
            },
        );
        let status = resp.json();
        let ok = resp.code == c.code
            && status["kind"] == "Status"
            && status["reason"] == c.reason
            && status["code"] == c.code;
        if !ok {
            failures.push(format!(
                "{}: wanted {} {}, got {} {}",
                c.what,
                c.code,
                c.reason,
                resp.code,
                resp.body.chars().take(300).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(revision(&s), before, "no bad request wrote anything");
    assert!(
        s.curl("GET", "/healthz", None, None, Credentials::Anonymous)
            .code
            == 200,
        "the server is still up"
    );
    assert_eq!(s.json(&["get", "cm", "existing"])["data"]["a"], "b");
}

#[test]
fn invalid_objects_name_every_bad_field() {
    let s = Server::start();
    let bad = deployment("web", |d| {
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "c", "image": ""}, {"name": "c", "image": "x"}]);
    });
    let resp = s.curl(
        "POST",
        DEPLOYS,
        Some("application/json"),
        Some(bad.to_string().as_bytes()),
        Credentials::Admin,
    );
    assert_eq!(resp.code, 422);
    let status = resp.json();
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"spec.replicas"), "{fields:?}");
    assert!(
        fields.contains(&"spec.template.spec.containers[0].image"),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"spec.template.spec.containers[1].name"),
        "{fields:?}"
    );
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with("Deployment.apps \"web\" is invalid: ["),
        "{message}"
    );
    assert!(
        message.contains("spec.template.spec.containers[0].image: Required value"),
        "{message}"
    );
    // kubectl shows the same message.
    let f = s.write_file("bad.json", &bad.to_string());
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains("spec.template.spec.containers[0].image: Required value"),
        "{err}"
    );
}
