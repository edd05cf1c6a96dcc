//! Volumes and environment in real pods: configMap and secret volumes and env vars carry
//! their values, a ConfigMap update reaches the mounted file, emptyDir is shared between
//! containers, and bad input ends in kubelet's reasons. The containers print what they see
//! to their logs, which the test reads. Root only.

use std::time::Duration;

use skiff_e2e::agent::{eventually, is_root, Agent};
use skiff_e2e::registry::Registry;
use skiff_e2e::Server;

fn apply(s: &Server, manifest: &str) {
    let out = s.kubectl_stdin(&["apply", "-f", "-"], manifest);
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn log_of(s: &Server, node: &Agent, pod: &str, container: &str) -> String {
    let uid = s.json(&["get", "pod", pod])["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let dir = node
        .logs
        .join(format!("default_{pod}_{uid}"))
        .join(container);
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    text
}

fn waiting_reason(s: &Server, pod: &str) -> String {
    s.json(&["get", "pod", pod])["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn events_for(s: &Server, name: &str) -> String {
    s.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
    ])
}

#[test]
fn config_maps_secrets_and_empty_dirs_reach_the_containers() {
    if !is_root() {
        println!("skipped: needs root (namespaces, mounts)");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sleep", "3600"]);
    let s = Server::start();
    let node = Agent::start(&s, "node-1", &[]);
    s.ok(&[
        "create",
        "configmap",
        "app",
        "--from-literal=greeting=hello",
        "--from-literal=mode=fast",
    ]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cret",
    ]);
    apply(
        &s,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "reader", "labels": {{"app": "reader"}}}},
  "spec": {{
    "volumes": [
      {{"name": "cfg", "configMap": {{"name": "app"}}}},
      {{"name": "sec", "secret": {{"secretName": "creds", "defaultMode": 256}}}},
      {{"name": "shared", "emptyDir": {{}}}}
    ],
    "containers": [
      {{"name": "main", "image": "{image}",
        "env": [
          {{"name": "GREETING", "valueFrom": {{"configMapKeyRef": {{"name": "app", "key": "greeting"}}}}}},
          {{"name": "PASSWORD", "valueFrom": {{"secretKeyRef": {{"name": "creds", "key": "password"}}}}}},
          {{"name": "MY_POD", "valueFrom": {{"fieldRef": {{"fieldPath": "metadata.name"}}}}}},
          {{"name": "COMBINED", "value": "$(GREETING)-$(MY_POD)"}}
        ],
        "envFrom": [{{"prefix": "CM_", "configMapRef": {{"name": "app"}}}}],
        "volumeMounts": [
          {{"name": "cfg", "mountPath": "/etc/cfg"}},
          {{"name": "sec", "mountPath": "/etc/sec"}},
          {{"name": "shared", "mountPath": "/shared"}}
        ],
        "command": ["sh", "-c", "echo env $GREETING $PASSWORD $COMBINED $CM_mode; echo $KUBERNETES_SERVICE_HOST; stat -c 'mode %a' /etc/sec/..data/password; echo from-main > /shared/note; while true; do echo file $(cat /etc/cfg/greeting); sleep 2; done"]}},
      {{"name": "side", "image": "{image}",
        "volumeMounts": [{{"name": "shared", "mountPath": "/data"}}],
        "command": ["sh", "-c", "while [ ! -e /data/note ]; do sleep 1; done; echo side sees $(cat /data/note); exec sleep 3600"]}}
    ]}}}}"#
        ),
    );
    eventually("reader Running", Duration::from_secs(90), || {
        s.json(&["get", "pod", "reader"])["status"]["phase"] == "Running"
    });
    eventually("the values in the logs", Duration::from_secs(30), || {
        let main = log_of(&s, &node, "reader", "main");
        main.contains("env hello s3cret hello-reader fast")
            && main.contains("10.96.0.1")
            && main.contains("mode 400")
            && main.contains("file hello")
            && log_of(&s, &node, "reader", "side").contains("side sees from-main")
    });
    s.ok(&[
        "patch",
        "configmap",
        "app",
        "-p",
        r#"{"data":{"greeting":"bonjour"}}"#,
    ]);
    eventually(
        "the ConfigMap update in the mounted file",
        Duration::from_secs(60),
        || log_of(&s, &node, "reader", "main").contains("file bonjour"),
    );
}

#[test]
fn bad_volume_input_ends_in_kubelets_reasons() {
    if !is_root() {
        println!("skipped: needs root (namespaces, mounts)");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sleep", "3600"]);
    let s = Server::start();
    let _node = Agent::start(&s, "node-1", &[]);
    let pod = |name: &str, volumes: &str, container_extra: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
  "spec": {{"volumes": [{volumes}],
    "containers": [{{"name": "c", "image": "{image}" {container_extra}}}]}}}}"#
        )
    };
    apply(
        &s,
        &pod(
            "nocm",
            r#"{"name": "v", "configMap": {"name": "missing"}}"#,
            r#", "volumeMounts": [{"name": "v", "mountPath": "/v"}]"#,
        ),
    );
    apply(
        &s,
        &pod(
            "nodir",
            r#"{"name": "v", "hostPath": {"path": "/no/such/dir/for/skiff", "type": "Directory"}}"#,
            r#", "volumeMounts": [{"name": "v", "mountPath": "/v"}]"#,
        ),
    );
    // API validation refuses `..` in subPath; a symlink planted by an init container is
    // the way out kubelet must catch.
    apply(
        &s,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "escape"}},
  "spec": {{"volumes": [{{"name": "v", "emptyDir": {{}}}}],
    "initContainers": [{{"name": "plant", "image": "{image}", "command": ["ln", "-s", "/", "/v/out"],
      "volumeMounts": [{{"name": "v", "mountPath": "/v"}}]}}],
    "containers": [{{"name": "c", "image": "{image}",
      "volumeMounts": [{{"name": "v", "mountPath": "/host", "subPath": "out"}}]}}]}}}}"#
        ),
    );
    apply(
        &s,
        &pod(
            "noenv",
            "",
            r#", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k"}}}]"#,
        ),
    );
    apply(
        &s,
        &pod(
            "optional",
            r#"{"name": "v", "configMap": {"name": "missing", "optional": true}}"#,
            r#", "volumeMounts": [{"name": "v", "mountPath": "/v"}]"#,
        ),
    );
    eventually(
        "missing configMap: FailedMount",
        Duration::from_secs(60),
        || {
            events_for(&s, "nocm").contains(
                r#"MountVolume.SetUp failed for volume "v" : configmap "missing" not found"#,
            )
        },
    );
    assert_eq!(waiting_reason(&s, "nocm"), "ContainerCreating");
    eventually(
        "missing hostPath dir: FailedMount",
        Duration::from_secs(60),
        || events_for(&s, "nodir").contains("FailedMount"),
    );
    assert_eq!(waiting_reason(&s, "nodir"), "ContainerCreating");
    eventually(
        "the subPath cannot leave its volume",
        Duration::from_secs(60),
        || waiting_reason(&s, "escape") == "CreateContainerConfigError",
    );
    eventually("missing configMap for env", Duration::from_secs(60), || {
        waiting_reason(&s, "noenv") == "CreateContainerConfigError"
    });
    assert!(events_for(&s, "noenv").contains(r#"configmap "missing" not found"#));
    eventually(
        "an optional missing configMap is fine",
        Duration::from_secs(60),
        || s.json(&["get", "pod", "optional"])["status"]["phase"] == "Running",
    );
}
