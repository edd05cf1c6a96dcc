//! Real request bodies captured from kubectl.
//!
//! `tests/fixtures/<name>.pb` is the protobuf body kubectl 1.33 sent (server reporting v1.33.0)
//! and `<name>.kubectl-1.31.json` the JSON body kubectl 1.31 sent for the same command (server
//! reporting v1.31.0, so that the dispatcher ran kubectl 1.31, which still sends JSON). The
//! decoded protobuf must equal the JSON exactly and deserialize into the k8s-openapi type.
//!
//! Re-capture with `python3 control-plane/skiff-protobuf/codegen/capture_fixtures.py` (starts
//! the loopback stub itself). Commands:
//! ```text
//! create deployment web --image=nginx --replicas=3
//! create deployment web2 --image=nginx:1.27 --port=8080 --replicas=0
//! create namespace x
//! create configmap c --from-literal=a=b --from-file=text.txt --from-file=bin.dat
//!     (text.txt = "line1\nline2\n", bin.dat = "hello\0\xff\xfe binary")
//! create secret generic s --from-literal=k=v --type=Opaque
//! create secret docker-registry reg --docker-server=r.example --docker-username=u --docker-password=p
//! create service nodeport n --tcp=80:8080 --node-port=30080
//! create service clusterip c --tcp=443:8443 --tcp=80:http
//! create service clusterip h --clusterip=None
//! create serviceaccount sa
//! ```

use k8s_openapi::api::{apps::v1 as apps, core::v1 as core};
use serde::de::DeserializeOwned;
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Decodes `<name>.pb`, compares with `<name>.kubectl-1.31.json`, and checks that the result
/// survives a round trip through the k8s-openapi type `T` unchanged.
fn check<T: DeserializeOwned + serde::Serialize>(
    name: &str,
    api_version: &str,
    kind: &str,
) -> Value {
    let decoded = skiff_protobuf::decode(&fixture(&format!("{name}.pb"))).expect("decode");
    assert_eq!(decoded.api_version, api_version);
    assert_eq!(decoded.kind, kind);
    let json: Value =
        serde_json::from_slice(&fixture(&format!("{name}.kubectl-1.31.json"))).unwrap();
    assert_eq!(
        decoded.object, json,
        "{name}: protobuf body differs from kubectl 1.31's JSON body"
    );
    let typed: T = serde_json::from_value(decoded.object.clone()).expect("k8s-openapi deserialize");
    let mut again = serde_json::to_value(&typed).unwrap();
    // k8s-openapi's typed values carry apiVersion/kind through the Resource impl; they are
    // serialized too, so the round trip must be lossless.
    if let Value::Object(m) = &mut again {
        m.entry("apiVersion").or_insert_with(|| api_version.into());
        m.entry("kind").or_insert_with(|| kind.into());
    }
    assert_eq!(
        again,
        without_nulls(&decoded.object),
        "{name}: k8s-openapi round trip changed the object"
    );
    decoded.object
}

/// k8s-openapi reads `null` as `None` and then omits it.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

#[test]
fn create_deployment() {
    let o = check::<apps::Deployment>("create_deployment", "apps/v1", "Deployment");
    assert_eq!(o["spec"]["replicas"], 3);
    assert_eq!(o["metadata"]["creationTimestamp"], Value::Null);
}

#[test]
fn create_deployment_body_matches_the_documented_prefix() {
    // kubectl-wire.md §3: the body (base64) starts `azhzAAoVCgdhcHBzL3YxEgpEZXBsb3ltZW50`.
    let body = fixture("create_deployment.pb");
    assert!(body.starts_with(b"k8s\0\x0a\x15\x0a\x07apps/v1\x12\x0aDeployment"));
}

#[test]
fn create_deployment_with_zero_replicas_and_port() {
    let o = check::<apps::Deployment>("create_deployment_port", "apps/v1", "Deployment");
    assert_eq!(
        o["spec"]["replicas"], 0,
        "replicas is a pointer: 0 must survive"
    );
    assert_eq!(
        o["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
}

#[test]
fn create_namespace() {
    check::<core::Namespace>("create_namespace", "v1", "Namespace");
}

#[test]
fn create_configmap_with_binary_data() {
    let o = check::<core::ConfigMap>("create_configmap", "v1", "ConfigMap");
    assert_eq!(o["binaryData"]["bin.dat"], "aGVsbG8A//4gYmluYXJ5");
}

#[test]
fn create_secret_generic() {
    let o = check::<core::Secret>("create_secret_generic", "v1", "Secret");
    assert_eq!(o["data"]["k"], "dg==");
}

#[test]
fn create_secret_docker_registry() {
    check::<core::Secret>("create_secret_docker_registry", "v1", "Secret");
}

#[test]
fn create_service_nodeport() {
    let o = check::<core::Service>("create_service_nodeport", "v1", "Service");
    assert_eq!(o["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(o["spec"]["ports"][0]["nodePort"], 30080);
}

#[test]
fn create_service_clusterip_with_named_target_port() {
    let o = check::<core::Service>("create_service_clusterip", "v1", "Service");
    assert_eq!(o["spec"]["ports"][1]["targetPort"], "http");
}

#[test]
fn create_service_headless() {
    check::<core::Service>("create_service_headless", "v1", "Service");
}

#[test]
fn create_serviceaccount() {
    check::<core::ServiceAccount>("create_serviceaccount", "v1", "ServiceAccount");
}

#[test]
fn every_fixture_has_a_test() {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut pb: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pb"))
        .collect();
    pb.sort();
    assert_eq!(pb.len(), 10, "{pb:?}");
}
