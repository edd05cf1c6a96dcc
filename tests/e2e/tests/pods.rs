//! Real pods on a real node: skiff-agent pulls an image from a local registry, holds the pod
//! sandbox, starts the container with skiff-shim and reports it Running; deleting the pod
//! leaves nothing behind. Root only (namespaces, overlay mounts).

use std::time::Duration;

use skiff_e2e::agent::{eventually, is_root, Agent};
use skiff_e2e::registry::Registry;
use skiff_e2e::Server;

#[test]
fn a_pod_runs_from_a_registry_image_and_is_cleaned_up() {
    if !is_root() {
        println!("skipped: needs root (namespaces, overlay mounts)");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox(
        "busybox",
        "1",
        &["sh", "-c", "echo hello from $(hostname); exec sleep 3600"],
    );
    let s = Server::start();
    // Its guard deletes the pods through the agent, then removes by force what is left.
    let agent = Agent::start(&s, "node-1", &[]);
    let (root, logs) = (&agent.root, &agent.logs);
    s.ok(&["run", "hello", &format!("--image={image}")]);
    eventually("the pod Running", Duration::from_secs(90), || {
        s.json(&["get", "pod", "hello"])["status"]["phase"] == "Running"
    });
    let pod = s.json(&["get", "pod", "hello"]);
    assert_eq!(pod["spec"]["nodeName"], "node-1", "the scheduler bound it");
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert!(cs["state"]["running"].is_object(), "{cs}");
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let log_file = logs
        .join(format!("default_hello_{uid}"))
        .join("hello")
        .join("0.log");
    eventually(
        "the container's output in the CRI log",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&log_file)
                .unwrap_or_default()
                .contains("hello from hello")
        },
    );
    let line = std::fs::read_to_string(&log_file).unwrap();
    let first = line.lines().next().unwrap();
    let fields: Vec<&str> = first.splitn(4, ' ').collect();
    assert!(
        fields[0].contains('T') && fields[1] == "stdout" && fields[2] == "F",
        "CRI format: {first}"
    );

    let rootfs = root.join("pods").join(&uid).join("containers/hello/rootfs");
    assert!(std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(rootfs.to_str().unwrap()));
    s.ok(&["delete", "pod", "hello", "--timeout=60s"]);
    assert!(!s.kubectl(&["get", "pod", "hello"]).status.success());
    eventually(
        "no mount, no sandbox, no pod dir left",
        Duration::from_secs(30),
        || {
            !std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(&uid)
                && !root.join("pods").join(&uid).exists()
                && !root.join("sandboxes").join(format!("{uid}.json")).exists()
        },
    );
}
