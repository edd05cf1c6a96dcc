//! The scheduler against a real skiff-server (its own scheduler disabled), with fake Nodes
//! registered through the API and pods created with the real kubectl.
//!
//! Needs `target/debug/skiff-server` (`cargo build -p skiff-server`) and kubectl.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use serde_json::json;
use skiff_controllers::{scheduler, Context, Settings};
use skiff_e2e::Server;

/// A server whose own scheduler (and node lifecycle, which would mark Lease-less fake nodes
/// unreachable) is off, plus this crate's scheduler running in the test.
struct Cluster {
    server: Server,
    client: kube::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Cluster {
    async fn start() -> Self {
        let server = Server::start_with(&["--disable", "scheduler,nodelifecycle"]);
        let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let ctx = Context::new(client.clone(), "scheduler-test", Settings::default());
        let task = tokio::spawn(scheduler::run(ctx));
        Cluster {
            server,
            client,
            task,
        }
    }

    /// A Ready node with `cpu` cores, 8Gi memory and 110 pods, labelled with its hostname.
    async fn add_node(&self, name: &str, cpu: &str, labels: &[(&str, &str)]) {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert("kubernetes.io/hostname".into(), name.into());
        let api: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": all},
        }))
        .unwrap();
        api.create(&PostParams::default(), &node)
            .await
            .expect("create node");
        let resources =
            json!({"cpu": cpu, "memory": "8Gi", "pods": "110", "ephemeral-storage": "50Gi"});
        let status = json!({"status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("node status");
    }

    fn apply(&self, yaml: &str) {
        let out = self.server.kubectl_stdin(&["apply", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn pod(&self, name: &str) -> Pod {
        Api::<Pod>::namespaced(self.client.clone(), "default")
            .get(name)
            .await
            .expect("get pod")
    }

    async fn node_of(&self, name: &str) -> Option<String> {
        self.pod(name).await.spec.and_then(|s| s.node_name)
    }

    /// Waits until every pod in `names` is bound; returns their nodes.
    async fn wait_bound(&self, names: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut nodes = Vec::new();
            for n in names {
                if let Some(node) = self.node_of(n).await {
                    nodes.push(node);
                }
            }
            if nodes.len() == names.len() {
                return nodes;
            }
            assert!(
                Instant::now() < deadline,
                "pods {names:?} not all bound: {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kubectl get events` lines about `pod` with `reason`, waiting up to 20 s for one.
    async fn wait_event(&self, pod: &str, reason: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.server.ok(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={pod},reason={reason}"),
                "-o",
                "jsonpath={range .items[*]}{.source.component}|{.message}{\"\\n\"}{end}",
            ]);
            if !out.trim().is_empty() {
                return out;
            }
            assert!(Instant::now() < deadline, "no {reason} event for {pod}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pod_yaml(name: &str, cpu: &str, extra_spec: &str, extra_meta: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n{extra_meta}spec:\n{extra_spec}  containers:\n  - name: c\n    image: busybox\n    resources:\n      requests:\n        cpu: {cpu}\n        memory: 64Mi\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_one_owners_pods_over_nodes() {
    let c = Cluster::start().await;
    for n in ["n1", "n2", "n3"] {
        c.add_node(n, "4", &[]).await;
    }
    // The owner: any object will do; spreading looks at the controller reference's uid.
    let owner = Api::<ConfigMap>::namespaced(c.client.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .expect("owner");
    let uid = owner.metadata.uid.unwrap();
    for i in 0..3 {
        let meta = format!(
            "  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: owner\n    uid: {uid}\n    controller: true\n"
        );
        c.apply(&pod_yaml(&format!("web-{i}"), "100m", "", &meta));
    }
    let nodes = c.wait_bound(&["web-0", "web-1", "web-2"]).await;
    assert_eq!(
        nodes.iter().collect::<HashSet<_>>().len(),
        3,
        "spread over 3 nodes: {nodes:?}"
    );

    let events = c.wait_event("web-0", "Scheduled").await;
    assert!(
        events.starts_with(&format!(
            "default-scheduler|Successfully assigned default/web-0 to {}",
            nodes[0]
        )),
        "{events}"
    );
    let pod = c.pod("web-0").await;
    let cond = pod
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(cond.status, "True");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_big_a_pod_waits_until_a_big_node_comes() {
    let c = Cluster::start().await;
    c.add_node("small-1", "2", &[]).await;
    c.add_node("small-2", "2", &[]).await;
    c.apply(&pod_yaml("big", "8", "", ""));

    let events = c.wait_event("big", "FailedScheduling").await;
    let want = "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    assert_eq!(
        events.lines().next().unwrap(),
        format!("default-scheduler|{want}")
    );
    // PodScheduled=False with the same words, as kubectl describe shows it
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pod = c.pod("big").await;
        let cond = pod
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "PodScheduled"));
        if let Some(cond) = cond {
            assert_eq!(cond.status, "False");
            assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
            assert_eq!(cond.message.as_deref(), Some(want));
            break;
        }
        assert!(Instant::now() < deadline, "no PodScheduled condition");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let describe = c.server.ok(&["describe", "pod", "big"]);
    assert!(describe.contains("FailedScheduling"), "{describe}");
    assert!(describe.contains("default-scheduler"), "{describe}");
    assert!(describe.contains("Insufficient cpu"), "{describe}");
    assert_eq!(c.node_of("big").await, None);

    c.add_node("big-1", "16", &[]).await;
    assert_eq!(c.wait_bound(&["big"]).await, ["big-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_taints_and_cordon() {
    let c = Cluster::start().await;
    c.add_node("plain", "4", &[]).await;
    c.add_node("ssd", "4", &[("disk", "ssd")]).await;
    c.add_node("gpu", "4", &[]).await;
    c.add_node("cordoned", "4", &[]).await;
    c.server
        .ok(&["taint", "node", "gpu", "dedicated=gpu:NoSchedule"]);
    c.server.ok(&["cordon", "cordoned"]);
    // Let the scheduler see the taint and the cordon before the pods come.
    tokio::time::sleep(Duration::from_millis(500)).await;

    c.apply(&pod_yaml(
        "wants-ssd",
        "100m",
        "  nodeSelector:\n    disk: ssd\n",
        "",
    ));
    let tolerating = "  nodeSelector:\n    kubernetes.io/hostname: gpu\n  tolerations:\n  - key: dedicated\n    operator: Equal\n    value: gpu\n    effect: NoSchedule\n";
    c.apply(&pod_yaml("on-gpu", "100m", tolerating, ""));
    let names: Vec<String> = (0..8).map(|i| format!("any-{i}")).collect();
    for n in &names {
        c.apply(&pod_yaml(n, "100m", "", ""));
    }
    assert_eq!(c.wait_bound(&["wants-ssd", "on-gpu"]).await, ["ssd", "gpu"]);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let nodes = c.wait_bound(&refs).await;
    assert!(
        nodes.iter().all(|n| n == "plain" || n == "ssd"),
        "no pod on the tainted or the cordoned node: {nodes:?}"
    );

    // A selector nothing matches, in kube's words.
    c.apply(&pod_yaml(
        "nowhere",
        "100m",
        "  nodeSelector:\n    disk: nvme\n",
        "",
    ));
    let events = c.wait_event("nowhere", "FailedScheduling").await;
    assert_eq!(
        events.lines().next().unwrap(),
        "default-scheduler|0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable, \
         2 node(s) didn't match Pod's node affinity/selector. preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling."
    );
    // Uncordoning is a node change: nothing fits there either (no nvme), but labelling does.
    c.server.ok(&["uncordon", "cordoned"]);
    c.server.ok(&["label", "node", "cordoned", "disk=nvme"]);
    assert_eq!(c.wait_bound(&["nowhere"]).await, ["cordoned"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_keeps_replicas_apart() {
    let c = Cluster::start().await;
    c.add_node("a", "4", &[]).await;
    c.add_node("b", "4", &[]).await;
    let spec = "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: kubernetes.io/hostname\n        labelSelector:\n          matchLabels:\n            app: db\n";
    let meta = "  labels:\n    app: db\n";
    for name in ["db-0", "db-1"] {
        c.apply(&pod_yaml(name, "100m", spec, meta));
    }
    let nodes = c.wait_bound(&["db-0", "db-1"]).await;
    assert_ne!(nodes[0], nodes[1]);
    c.apply(&pod_yaml("db-2", "100m", spec, meta));
    let events = c.wait_event("db-2", "FailedScheduling").await;
    assert_eq!(
        events.lines().next().unwrap(),
        "default-scheduler|0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules. \
         preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    // Deleting a replica frees its node (a pod deletion wakes the waiting pod).
    c.server
        .ok(&["delete", "pod", "db-0", "--grace-period=0", "--force"]);
    assert_eq!(c.wait_bound(&["db-2"]).await, [nodes[0].clone()]);
}
