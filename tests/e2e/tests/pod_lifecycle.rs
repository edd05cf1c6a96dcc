//! The pod lifecycle on a real node, driven with the real kubectl: restarts paced by
//! CrashLoopBackOff, liveness/readiness/startup probes, init containers, graceful deletion
//! with preStop and SIGTERM, bad images and commands, and an agent that is killed and comes
//! back. Root only (namespaces, overlay mounts).

use std::time::Duration;

use serde_json::Value;
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

fn pod_manifest(name: &str, image: &str, extra_container: &str, extra_spec: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
  "spec": {{"terminationGracePeriodSeconds": 5 {extra_spec},
    "containers": [{{"name": "c", "image": "{image}" {extra_container}}}]}}}}"#
    )
}

fn status(s: &Server, name: &str) -> Value {
    s.json(&["get", "pod", name])["status"].clone()
}

fn container(s: &Server, name: &str) -> Value {
    status(s, name)["containerStatuses"][0].clone()
}

fn condition(st: &Value, kind: &str) -> String {
    st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
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
        "custom-columns=REASON:.reason,MESSAGE:.message,COUNT:.count",
    ])
}

fn setup() -> Option<(Registry, Server, String)> {
    if !is_root() {
        println!("skipped: needs root (namespaces, overlay mounts)");
        return None;
    }
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sleep", "3600"]);
    Some((registry, Server::start(), image))
}

#[test]
fn restarts_follow_policy_backoff_and_probes() {
    let Some((_registry, s, image)) = setup() else {
        return;
    };
    let node = Agent::start(&s, "node-1", &[]);
    apply(
        &s,
        &pod_manifest(
            "crasher",
            &image,
            r#", "command": ["sh", "-c", "echo boom; exit 3"]"#,
            "",
        ),
    );
    apply(
        &s,
        &pod_manifest(
            "liveness",
            &image,
            r#", "command": ["sh", "-c", "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 3600"],
               "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}"#,
            "",
        ),
    );
    apply(
        &s,
        &pod_manifest(
            "unready",
            &image,
            r#", "command": ["sh", "-c", "sleep 15; touch /tmp/ready; exec sleep 3600"],
               "readinessProbe": {"exec": {"command": ["test", "-e", "/tmp/ready"]}, "periodSeconds": 1}"#,
            "",
        ),
    );
    // Without the startup probe the liveness probe would kill it during its first 4 s.
    apply(
        &s,
        &pod_manifest(
            "slowstart",
            &image,
            r#", "command": ["sh", "-c", "sleep 4; touch /tmp/started; exec sleep 3600"],
               "startupProbe": {"exec": {"command": ["test", "-e", "/tmp/started"]}, "periodSeconds": 1, "failureThreshold": 30},
               "livenessProbe": {"exec": {"command": ["test", "-e", "/tmp/started"]}, "periodSeconds": 1, "failureThreshold": 1}"#,
            "",
        ),
    );
    apply(
        &s,
        &pod_manifest(
            "oneshot",
            &image,
            r#", "command": ["sh", "-c", "echo done"]"#,
            r#", "restartPolicy": "Never""#,
        ),
    );
    apply(
        &s,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "withinit"}},
  "spec": {{"initContainers": [{{"name": "first", "image": "{image}", "command": ["sh", "-c", "echo init; sleep 1"]}}],
    "containers": [{{"name": "c", "image": "{image}"}}]}}}}"#
        ),
    );

    eventually("unready Running", Duration::from_secs(60), || {
        status(&s, "unready")["phase"] == "Running"
    });
    let st = status(&s, "unready");
    assert_eq!(condition(&st, "Ready"), "False", "{st}");
    assert_eq!(st["containerStatuses"][0]["ready"], false);
    assert_eq!(st["containerStatuses"][0]["started"], true);
    eventually(
        "crasher in CrashLoopBackOff after 2 restarts",
        Duration::from_secs(120),
        || {
            let c = container(&s, "crasher");
            c["restartCount"].as_i64().unwrap_or(0) >= 2
                && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        },
    );
    let c = container(&s, "crasher");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c}");
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error", "{c}");
    // The third wait is twice the second: 10 s, 20 s, then 40 s.
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .starts_with("back-off 40s restarting failed container=c pod=crasher_default"),
        "{c}"
    );
    assert_eq!(status(&s, "crasher")["phase"], "Running");
    assert!(events_for(&s, "crasher").contains("BackOff"));

    eventually(
        "the liveness probe restarted its container",
        Duration::from_secs(60),
        || {
            container(&s, "liveness")["restartCount"]
                .as_i64()
                .unwrap_or(0)
                >= 1
        },
    );
    let ev = events_for(&s, "liveness");
    assert!(ev.contains("Liveness probe failed"), "{ev}");
    assert!(
        ev.contains("failed liveness probe, will be restarted"),
        "{ev}"
    );

    eventually(
        "readiness follows the probe",
        Duration::from_secs(30),
        || condition(&status(&s, "unready"), "Ready") == "True",
    );

    eventually(
        "slowstart started and ready",
        Duration::from_secs(60),
        || {
            let c = container(&s, "slowstart");
            c["started"] == true && c["ready"] == true
        },
    );
    assert_eq!(
        container(&s, "slowstart")["restartCount"],
        0,
        "startup probe held liveness off"
    );

    eventually("oneshot Succeeded", Duration::from_secs(60), || {
        status(&s, "oneshot")["phase"] == "Succeeded"
    });
    let c = container(&s, "oneshot");
    assert_eq!(c["state"]["terminated"]["reason"], "Completed", "{c}");
    assert_eq!(c["restartCount"], 0);
    let uid = s.json(&["get", "pod", "oneshot"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(
        "a finished pod gives its sandbox back",
        Duration::from_secs(30),
        || {
            !node
                .root
                .join("sandboxes")
                .join(format!("{uid}.json"))
                .exists()
        },
    );
    assert_eq!(status(&s, "oneshot")["phase"], "Succeeded");

    eventually(
        "withinit Running after its init container",
        Duration::from_secs(60),
        || status(&s, "withinit")["phase"] == "Running",
    );
    let st = status(&s, "withinit");
    assert_eq!(
        st["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    assert_eq!(condition(&st, "Initialized"), "True");
    let describe = s.ok(&["describe", "pod", "withinit"]);
    for needle in ["Pulled", "Created", "Started"] {
        assert!(
            describe.contains(needle),
            "describe shows {needle}: {describe}"
        );
    }
}

#[test]
fn bad_images_and_commands_end_in_kubelets_reasons() {
    let Some((registry, s, image)) = setup() else {
        return;
    };
    let _node = Agent::start(&s, "node-1", &[]);
    let missing = format!("{}/no-such-image:1", registry.host());
    apply(&s, &pod_manifest("noimage", &missing, "", ""));
    apply(
        &s,
        &pod_manifest(
            "nocommand",
            &image,
            r#", "command": ["/no/such/binary"]"#,
            r#", "restartPolicy": "Never""#,
        ),
    );
    apply(&s, &pod_manifest("fine", &image, "", ""));
    eventually(
        "noimage waits in ErrImagePull or ImagePullBackOff",
        Duration::from_secs(60),
        || {
            let reason = container(&s, "noimage")["state"]["waiting"]["reason"].clone();
            reason == "ErrImagePull" || reason == "ImagePullBackOff"
        },
    );
    eventually(
        "nocommand reports its failure",
        Duration::from_secs(60),
        || {
            let c = container(&s, "nocommand");
            let waiting = c["state"]["waiting"]["reason"]
                .as_str()
                .unwrap_or("")
                .to_string();
            c["state"]["terminated"]["exitCode"]
                .as_i64()
                .is_some_and(|c| c != 0)
                || waiting == "RunContainerError"
                || waiting == "CreateContainerError"
        },
    );
    eventually(
        "the other pod runs regardless",
        Duration::from_secs(60),
        || status(&s, "fine")["phase"] == "Running",
    );
    assert!(events_for(&s, "noimage").contains("Failed to pull image"));
}

#[test]
fn graceful_deletion_runs_pre_stop_then_sigterm_then_sigkill() {
    let Some((_registry, s, image)) = setup() else {
        return;
    };
    // Pod cgroups under a directory of this test's own in the cgroup v2 hierarchy (this
    // host's has no controllers, so only placement and removal are checked).
    let cgroup_root = skiff_shim::cgroup::cgroup2_mount()
        .map(|m| m.join(format!("skiff-e2e-{}", std::process::id())));
    let _cgroup_guard = cgroup_root.clone().map(CgroupDir);
    let root_arg = cgroup_root.as_ref().map(|r| r.display().to_string());
    let extra: Vec<&str> = match &root_arg {
        Some(r) => vec!["--cgroup-driver", "cgroupfs", "--cgroup-root", r],
        None => {
            println!("no cgroup v2 mount: pod cgroups not checked");
            vec![]
        }
    };
    let node = Agent::start(&s, "node-1", &extra);
    // The shell is PID 1, which ignores SIGTERM unless it traps it.
    apply(
        &s,
        &pod_manifest(
            "polite",
            &image,
            r#", "command": ["sh", "-c", "trap 'echo got TERM; sleep 2; exit 0' TERM; echo up; while true; do sleep 1; done"],
               "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo in preStop > /proc/1/fd/1"]}}}"#,
            "",
        ),
    );
    apply(
        &s,
        &pod_manifest(
            "stubborn",
            &image,
            r#", "command": ["sh", "-c", "trap 'echo ignoring TERM' TERM; echo up; while true; do sleep 1; done"]"#,
            "",
        ),
    );
    for p in ["polite", "stubborn"] {
        eventually("pods Running", Duration::from_secs(60), || {
            status(&s, p)["phase"] == "Running"
        });
    }
    let uid = s.json(&["get", "pod", "polite"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let log = node.logs.join(format!("default_polite_{uid}/c/0.log"));
    eventually("polite logged", Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("up")
    });
    if let Some(root) = &cgroup_root {
        assert!(
            pod_cgroups(root).iter().any(|d| d.contains(&uid)),
            "the pod has its cgroup under {}: {:?}",
            root.display(),
            pod_cgroups(root)
        );
    }
    s.ok(&["delete", "pod", "polite", "stubborn", "--wait=false"]);
    let mut seen = String::new();
    eventually(
        "preStop ran, then SIGTERM arrived",
        Duration::from_secs(30),
        || {
            if let Ok(text) = std::fs::read_to_string(&log) {
                seen = text;
            }
            seen.contains("in preStop") && seen.contains("got TERM")
        },
    );
    let pre_stop = seen.find("in preStop").unwrap();
    let term = seen.find("got TERM").unwrap();
    assert!(pre_stop < term, "preStop runs before SIGTERM: {seen}");
    // stubborn ignores SIGTERM: it goes after its 5 s grace period, by SIGKILL.
    eventually("both pods gone", Duration::from_secs(60), || {
        !s.kubectl(&["get", "pod", "polite"]).status.success()
            && !s.kubectl(&["get", "pod", "stubborn"]).status.success()
    });
    eventually("nothing left on the node", Duration::from_secs(30), || {
        cgroup_root
            .as_ref()
            .is_none_or(|r| pod_cgroups(r).is_empty())
            && std::fs::read_dir(node.root.join("sandboxes")).is_ok_and(|mut d| d.next().is_none())
            && !std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(node.root.to_str().unwrap())
    });
}

#[test]
fn a_killed_agent_comes_back_without_restarting_containers() {
    let Some((_registry, s, image)) = setup() else {
        return;
    };
    let mut node = Agent::start(&s, "node-1", &[]);
    for p in ["keeper", "goner", "forced"] {
        apply(&s, &pod_manifest(p, &image, "", ""));
    }
    for p in ["keeper", "goner", "forced"] {
        eventually("pods Running", Duration::from_secs(60), || {
            status(&s, p)["phase"] == "Running"
        });
    }
    let before = container(&s, "keeper");
    let uid_of = |p: &str| {
        s.json(&["get", "pod", p])["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (goner, forced) = (uid_of("goner"), uid_of("forced"));
    node.kill();
    // One pod deleted gracefully and one forcibly while the agent is away.
    s.ok(&["delete", "pod", "goner", "--wait=false"]);
    s.ok(&[
        "delete",
        "pod",
        "forced",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    node.restart();
    eventually(
        "the deleted pods are cleaned up",
        Duration::from_secs(60),
        || {
            !s.kubectl(&["get", "pod", "goner"]).status.success()
                && !node
                    .root
                    .join("sandboxes")
                    .join(format!("{goner}.json"))
                    .exists()
                && !node
                    .root
                    .join("sandboxes")
                    .join(format!("{forced}.json"))
                    .exists()
                && !std::fs::read_to_string("/proc/self/mountinfo")
                    .unwrap()
                    .contains(&forced)
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = container(&s, "keeper");
    assert_eq!(after["restartCount"], 0, "{after}");
    assert_eq!(after["containerID"], before["containerID"]);
    assert_eq!(
        after["state"]["running"]["startedAt"], before["state"]["running"]["startedAt"],
        "the same run of the container"
    );
    assert_eq!(status(&s, "keeper")["phase"], "Running");
    assert_eq!(condition(&status(&s, "keeper"), "Ready"), "True");
}

/// Every pod cgroup under `root`.
fn pod_cgroups(root: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().to_string();
                // pod<uid> or kubepods-<qos>-pod<uid>.slice; not the kubepods parents.
                if name.contains("pod") && name.len() > 36 {
                    found.push(name);
                }
                stack.push(entry.path());
            }
        }
    }
    found
}

/// Removes the test's cgroup tree, deepest first (cgroup dirs go with rmdir only).
struct CgroupDir(std::path::PathBuf);

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let mut dirs = Vec::new();
        let mut stack = vec![self.0.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
            dirs.push(dir);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}
