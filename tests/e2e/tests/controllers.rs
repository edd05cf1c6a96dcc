//! Scheduler and controllers against a running skiff-server, driven by the real kubectl, with
//! a fake kubelet playing the nodes (the same tests must pass with real agents later).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_e2e::fake_kubelet::{FakeKubelet, NodeSpec};
use skiff_e2e::Server;

fn nodes(n: usize) -> Vec<NodeSpec> {
    (1..=n)
        .map(|i| NodeSpec::new(&format!("node-{i}")))
        .collect()
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pods(s: &Server, selector: &str) -> Vec<Value> {
    s.json(&["get", "pods", "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn running_pods(s: &Server, selector: &str) -> Vec<Value> {
    pods(s, selector)
        .into_iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .collect()
}

/// Watches the pods of one app and records the worst counts seen after any event.
struct RolloutWatch {
    worst: Arc<Mutex<(usize, usize)>>,
    latest: Arc<Mutex<(usize, usize)>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RolloutWatch {
    fn start(s: &Server, app: &str) -> Self {
        let worst = Arc::new(Mutex::new((0usize, usize::MAX)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut child = s
            .kubectl_cmd(&[
                "get",
                "pods",
                "-l",
                &format!("app={app}"),
                "-w",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let latest = Arc::new(Mutex::new((0usize, 0usize)));
        let (w, st, l) = (worst.clone(), stop.clone(), latest.clone());
        let thread = std::thread::spawn(move || {
            let mut state: BTreeMap<String, (bool, bool)> = BTreeMap::new();
            let stream = serde_json::Deserializer::from_reader(stdout).into_iter::<Value>();
            for event in stream {
                let Ok(event) = event else { break };
                let pod = &event["object"];
                let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
                let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
                let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                if event["type"] == "DELETED" || terminating {
                    state.remove(&name);
                } else {
                    state.insert(name, (true, ready));
                }
                let total = state.len();
                let ready_count = state.values().filter(|(_, r)| *r).count();
                if std::env::var("SKIFF_DEBUG_ROLLOUT").is_ok() {
                    eprintln!(
                        "{} {} total={total} ready={ready_count}",
                        event["type"], pod["metadata"]["name"]
                    );
                }
                *l.lock().unwrap() = (total, ready_count);
                let mut w = w.lock().unwrap();
                w.0 = w.0.max(total);
                if total > 0 {
                    w.1 = w.1.min(ready_count);
                }
                if st.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        });
        RolloutWatch {
            worst,
            latest,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until the watch has caught up with a steady state of `pods` ready pods.
    fn settle(&self, pods: usize) {
        eventually(
            "the watch sees the current pods",
            Duration::from_secs(30),
            || *self.latest.lock().unwrap() == (pods, pods),
        );
    }

    fn reset(&self) {
        *self.worst.lock().unwrap() = (0, usize::MAX);
    }

    fn worst(&self) -> (usize, usize) {
        *self.worst.lock().unwrap()
    }
}

impl Drop for RolloutWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.thread.take();
    }
}

#[test]
fn deployments_schedule_scale_roll_and_undo() {
    let s = Server::start();
    let _kubelet = FakeKubelet::start(&s.kubeconfig(), nodes(3));
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=3",
    ]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(s.ok(&["get", "rs", "-o", "name"]).lines().count(), 1);
    let running = running_pods(&s, "app=web");
    assert_eq!(running.len(), 3);
    let nodes_used: HashSet<&str> = running
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(nodes_used.len(), 3, "one pod per node: {nodes_used:?}");

    s.ok(&["scale", "deployment/web", "--replicas=5"]);
    eventually("5 running pods", Duration::from_secs(30), || {
        running_pods(&s, "app=web").len() == 5
    });
    s.ok(&["scale", "deployment/web", "--replicas=4"]);
    eventually("4 pods", Duration::from_secs(30), || {
        pods(&s, "app=web")
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .count()
            == 4
    });
    s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    // A rolling update never exceeds replicas+maxSurge pods nor drops below
    // replicas-maxUnavailable ready ones (4 replicas, 25%/25%: at most 5, at least 3).
    let watch = RolloutWatch::start(&s, "web");
    watch.settle(4);
    watch.reset();
    s.ok(&["set", "image", "deployment/web", "busybox=busybox:1.37"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    std::thread::sleep(Duration::from_millis(500));
    let (most, fewest_ready) = watch.worst();
    assert!(most <= 5, "at most replicas+maxSurge pods, saw {most}");
    assert!(
        fewest_ready >= 3,
        "at least replicas-maxUnavailable ready, saw {fewest_ready}"
    );
    drop(watch);
    let running = running_pods(&s, "app=web");
    assert_eq!(running.len(), 4);
    assert!(running
        .iter()
        .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.37"));
    let history = s.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );

    s.ok(&["rollout", "undo", "deployment/web"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let d = s.json(&["get", "deploy", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.36"
    );
    eventually(
        "pods back on the old image",
        Duration::from_secs(30),
        || {
            let r = running_pods(&s, "app=web");
            r.len() == 4
                && r.iter()
                    .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.36")
        },
    );

    // Paused: template changes wait for resume.
    s.ok(&["rollout", "pause", "deployment/web"]);
    s.ok(&["set", "image", "deployment/web", "busybox=busybox:1.38"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        running_pods(&s, "app=web")
            .iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.36"),
        "paused: no rollout"
    );
    s.ok(&["rollout", "resume", "deployment/web"]);
    s.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    eventually("resumed rollout done", Duration::from_secs(30), || {
        running_pods(&s, "app=web")
            .iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.38")
    });
    let events = s.ok(&["get", "events"]);
    assert!(events.contains("ScalingReplicaSet"), "{events}");
}

#[test]
fn a_rollout_that_never_becomes_ready_exceeds_its_deadline() {
    let s = Server::start();
    let _kubelet = FakeKubelet::start(&s.kubeconfig(), nodes(2));
    let manifest = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"bad"},
      "spec":{"replicas":2,"progressDeadlineSeconds":3,"selector":{"matchLabels":{"app":"bad"}},
      "template":{"metadata":{"labels":{"app":"bad"}},"spec":{"containers":[{"name":"c","image":"registry.local/never-ready:1"}]}}}}"#;
    assert!(s
        .kubectl_stdin(&["create", "-f", "-"], manifest)
        .status
        .success());
    let out = s.kubectl(&["rollout", "status", "deployment/bad", "--timeout=60s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    let d = s.json(&["get", "deploy", "bad"]);
    let progressing = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");
}

#[test]
fn replicasets_heal_and_recreate_strategy_replaces_all_at_once() {
    let s = Server::start();
    let _kubelet = FakeKubelet::start(&s.kubeconfig(), nodes(2));
    s.ok(&[
        "create",
        "deployment",
        "heal",
        "--image=busybox:1.36",
        "--replicas=2",
    ]);
    s.ok(&["rollout", "status", "deployment/heal", "--timeout=60s"]);
    let victim = running_pods(&s, "app=heal")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok(&["delete", "pod", &victim]);
    eventually("a replacement pod", Duration::from_secs(30), || {
        let r = running_pods(&s, "app=heal");
        r.len() == 2 && r.iter().all(|p| p["metadata"]["name"] != victim.as_str())
    });
    s.ok(&[
        "patch",
        "deployment",
        "heal",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"type":"Recreate","rollingUpdate":null}}}"#,
    ]);
    s.ok(&["set", "image", "deployment/heal", "busybox=busybox:1.37"]);
    s.ok(&["rollout", "status", "deployment/heal", "--timeout=60s"]);
    eventually(
        "recreated on the new image",
        Duration::from_secs(30),
        || {
            let r = running_pods(&s, "app=heal");
            r.len() == 2
                && r.iter()
                    .all(|p| p["spec"]["containers"][0]["image"] == "busybox:1.37")
        },
    );
    s.ok(&["delete", "deployment", "heal"]);
    eventually(
        "ReplicaSets and pods go with the Deployment",
        Duration::from_secs(30),
        || s.ok(&["get", "rs,pods", "-o", "name"]).trim().is_empty(),
    );
}

#[test]
fn a_dead_node_is_tainted_and_its_pods_move() {
    let s = Server::start_with(&[
        "--node-monitor-grace-period",
        "4",
        "--default-eviction-toleration",
        "2",
    ]);
    let kubelet = FakeKubelet::start(&s.kubeconfig(), nodes(3));
    eventually("pod CIDRs assigned", Duration::from_secs(20), || {
        let n = s.json(&["get", "nodes"]);
        let cidrs: HashSet<String> = n["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["spec"]["podCIDR"].as_str().map(str::to_string))
            .collect();
        cidrs.len() == 3
            && cidrs
                .iter()
                .all(|c| c.starts_with("10.244.") && c.ends_with(".0/24"))
    });
    s.ok(&[
        "create",
        "deployment",
        "mover",
        "--image=busybox:1.36",
        "--replicas=3",
    ]);
    s.ok(&["rollout", "status", "deployment/mover", "--timeout=60s"]);
    kubelet.stop_node("node-1");
    eventually(
        "node-1 NotReady and tainted unreachable",
        Duration::from_secs(30),
        || {
            let n = s.json(&["get", "node", "node-1"]);
            let ready = n["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .unwrap()["status"]
                .clone();
            let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                })
            });
            ready == "Unknown" && tainted
        },
    );
    let table = s.ok(&["get", "nodes"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node-1") && l.contains("NotReady")),
        "{table}"
    );
    eventually(
        "3 running pods, none on node-1",
        Duration::from_secs(60),
        || {
            let r = running_pods(&s, "app=mover");
            r.len() == 3 && r.iter().all(|p| p["spec"]["nodeName"] != "node-1")
        },
    );
}

/// The Ready condition's status of a pod, as JSON.
fn pod_ready(pod: &Value) -> (String, String) {
    let c = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    (
        c["status"].as_str().unwrap_or("").to_string(),
        c["reason"].as_str().unwrap_or("").to_string(),
    )
}

/// `ready` of the endpoint on `node` in every slice matching `selector` in `ns`.
fn endpoint_ready(s: &Server, ns: &str, selector: &str, node: &str) -> Vec<bool> {
    s.json(&["get", "endpointslices", "-n", ns, "-l", selector])["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|slice| slice["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["nodeName"] == node)
        .map(|e| e["conditions"]["ready"].as_bool().unwrap_or(true))
        .collect()
}

#[test]
fn an_unreachable_nodes_pods_and_agent_endpoints_stop_being_ready() {
    let s = Server::start_with(&["--node-monitor-grace-period", "4"]);
    let kubelet = FakeKubelet::start(&s.kubeconfig(), nodes(2));
    // Tolerates the node-health taints forever, so it stays on the dead node (not evicted).
    let keeper = r#"{"apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": "keeper", "labels": {"app": "keeper"}},
      "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox:1.36"}],
               "tolerations": [{"operator": "Exists", "effect": "NoExecute"}]}}"#;
    let out = s.kubectl_stdin(&["apply", "-f", "-"], keeper);
    assert!(out.status.success(), "{out:?}");
    s.ok(&["expose", "pod", "keeper", "--port=80"]);
    // What an agent publishes for its DNS server: one endpoint per node, managed by the agent.
    for node in ["node-1", "node-2"] {
        let slice = format!(
            r#"{{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {{"name": "kube-dns-{node}", "namespace": "kube-system",
                "labels": {{"kubernetes.io/service-name": "kube-dns",
                           "endpointslice.kubernetes.io/managed-by": "skiff-agent"}}}},
              "addressType": "IPv4",
              "endpoints": [{{"addresses": ["192.0.2.{}"], "nodeName": "{node}",
                             "conditions": {{"ready": true, "serving": true, "terminating": false}}}}],
              "ports": [{{"name": "dns", "port": 53, "protocol": "UDP"}}]}}"#,
            if node == "node-1" { 11 } else { 12 }
        );
        let out = s.kubectl_stdin(&["apply", "-f", "-"], &slice);
        assert!(out.status.success(), "{out:?}");
    }
    let dns = "kubernetes.io/service-name=kube-dns";
    let svc = "kubernetes.io/service-name=keeper";
    eventually(
        "keeper ready behind its service",
        Duration::from_secs(30),
        || {
            pod_ready(&s.json(&["get", "pod", "keeper"])).0 == "True"
                && endpoint_ready(&s, "default", svc, "node-1") == vec![true]
        },
    );

    kubelet.stop_node("node-1");
    eventually(
        "keeper marked not ready, its endpoint and node-1's DNS endpoint too",
        Duration::from_secs(60),
        || {
            pod_ready(&s.json(&["get", "pod", "keeper"]))
                == ("False".to_string(), "NodeNotReady".to_string())
                && endpoint_ready(&s, "default", svc, "node-1") == vec![false]
                && endpoint_ready(&s, "kube-system", dns, "node-1") == vec![false]
        },
    );
    // The live node's endpoint is untouched, and the pod stays (it tolerates the taint).
    assert_eq!(endpoint_ready(&s, "kube-system", dns, "node-2"), vec![true]);
    assert_eq!(
        s.json(&["get", "pod", "keeper"])["spec"]["nodeName"],
        "node-1"
    );
}

#[test]
fn leader_election_hands_controllers_over() {
    let etcd = skiff_e2e::Etcd::start();
    let args = ["--datastore-endpoint", etcd.client_url.as_str()];
    let mut a = Server::start_with(&args);
    let mut b = Server::start_with(&args);
    let lease_holder = |s: &Server| {
        s.ok(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "skiff-controller-manager",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    eventually("someone leads", Duration::from_secs(30), || {
        !lease_holder(&b).is_empty()
    });
    let leads = |s: &Server| {
        std::fs::read_to_string(s.log_path())
            .unwrap_or_default()
            .contains("leading: controllers started")
    };
    assert!(leads(&a) != leads(&b), "exactly one leader");
    let (leader, follower) = if leads(&a) {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    let first = lease_holder(follower);
    leader.kill();
    let start = Instant::now();
    eventually(
        "the other server takes over",
        Duration::from_secs(30),
        || leads(follower),
    );
    let took = start.elapsed();
    assert_ne!(lease_holder(follower), first);
    println!("failover took {took:?}");
    follower.ok(&[
        "create",
        "deployment",
        "after-failover",
        "--image=busybox:1.36",
    ]);
    eventually(
        "the new leader's controllers act",
        Duration::from_secs(30),
        || !follower.ok(&["get", "rs", "-o", "name"]).trim().is_empty(),
    );
}
