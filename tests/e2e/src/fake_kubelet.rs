//! A stand-in for node agents: registers Nodes, renews their Leases and reports pods bound
//! to them as Running and Ready, so that control-plane tests run without containers. The
//! same tests must pass later with real agents.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

pub struct NodeSpec {
    pub name: String,
    pub cpu: String,
    pub memory: String,
}

impl NodeSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            cpu: "4".into(),
            memory: "8Gi".into(),
        }
    }
}

/// Images whose name contains this never become ready (a bad rollout).
pub const NEVER_READY: &str = "never-ready";

#[derive(Default)]
struct State {
    /// Nodes whose agent is "dead": no lease renewals, no pod updates.
    stopped: HashSet<String>,
    nodes: Vec<String>,
}

pub struct FakeKubelet {
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
    client: kube::Client,
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn register(client: &kube::Client, spec: &NodeSpec) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": spec.name, "labels": {"kubernetes.io/hostname": spec.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
    }))
    .expect("node JSON");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let resources =
        json!({"cpu": spec.cpu, "memory": spec.memory, "pods": "110", "ephemeral-storage": "50Gi"});
    let status = json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake kubelet is posting ready status",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        "addresses": [{"type": "Hostname", "address": spec.name}],
        "nodeInfo": {"kubeletVersion": "v1.33.0-fake", "containerRuntimeVersion": "fake://1", "osImage": "fake", "kernelVersion": "fake",
                     "architecture": "amd64", "operatingSystem": "linux", "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""},
    }});
    nodes
        .patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn renew(client: &kube::Client, node: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = MicroTime(jiff::Timestamp::now());
    match leases.get_opt(node).await? {
        Some(mut lease) => {
            lease.spec.get_or_insert_with(Default::default).renew_time = Some(renew);
            leases.replace(node, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.into()),
                    namespace: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(renew),
                    ..Default::default()
                }),
            };
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    // A live agent also says its node is ready.
    let nodes: Api<Node> = Api::all(client.clone());
    if let Some(n) = nodes.get_opt(node).await? {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        if ready.as_deref() != Some("True") {
            let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake kubelet is posting ready status", "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}});
            nodes
                .patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    Ok(())
}

async fn sync_pods(
    client: &kube::Client,
    nodes: &[String],
    stopped: &HashSet<String>,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    for (index, node) in nodes.iter().enumerate() {
        if stopped.contains(node) {
            continue;
        }
        let on_node = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?
            .items;
        for (i, pod) in on_node.iter().enumerate() {
            let ns = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = api
                    .delete(
                        &pod.name_any(),
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
                continue;
            }
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending");
            if phase == "Running" {
                continue;
            }
            let containers = pod
                .spec
                .as_ref()
                .map(|s| s.containers.clone())
                .unwrap_or_default();
            let broken = containers
                .iter()
                .any(|c| c.image.as_deref().unwrap_or("").contains(NEVER_READY));
            let statuses: Vec<_> = containers
                .iter()
                .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": !broken, "started": !broken, "restartCount": 0,
                                "state": if broken { json!({"waiting": {"reason": "ImagePullBackOff", "message": "fake: image never pulls"}}) } else { json!({"running": {"startedAt": now()}}) }}))
                .collect();
            let ready = if broken { "False" } else { "True" };
            let status = json!({"status": {
                "phase": if broken { "Pending" } else { "Running" },
                "podIP": format!("10.244.{index}.{}", 2 + i % 250), "podIPs": [{"ip": format!("10.244.{index}.{}", 2 + i % 250)}],
                "hostIP": "192.0.2.1", "startTime": now(),
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": now()},
                    {"type": "Ready", "status": ready, "lastTransitionTime": now()}],
                "containerStatuses": statuses,
            }});
            if broken
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some()
            {
                continue;
            }
            let _ = api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await;
        }
    }
    Ok(())
}

impl FakeKubelet {
    /// Registers the nodes and keeps them alive until dropped.
    pub fn start(kubeconfig: &std::path::Path, nodes: Vec<NodeSpec>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime.block_on(async {
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig"),
                &Default::default(),
            )
            .await
            .expect("config");
            kube::Client::try_from(config).expect("client")
        });
        let state = Arc::new(Mutex::new(State {
            stopped: HashSet::new(),
            nodes: nodes.iter().map(|n| n.name.clone()).collect(),
        }));
        runtime.block_on(async {
            for n in &nodes {
                register(&client, n).await.expect("register node");
                renew(&client, &n.name).await.expect("lease");
            }
        });
        let (c, st) = (client.clone(), state.clone());
        runtime.spawn(async move {
            let mut tick = 0u64;
            loop {
                let (names, stopped) = {
                    let s = st.lock().expect("state");
                    (s.nodes.clone(), s.stopped.clone())
                };
                if tick.is_multiple_of(10) {
                    for n in names.iter().filter(|n| !stopped.contains(*n)) {
                        let _ = renew(&c, n).await;
                    }
                }
                let _ = sync_pods(&c, &names, &stopped).await;
                tick += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        FakeKubelet {
            state,
            runtime: Some(runtime),
            client,
        }
    }

    /// Adds another node later.
    pub fn add_node(&self, spec: NodeSpec) {
        let rt = self.runtime.as_ref().expect("runtime");
        rt.block_on(async {
            register(&self.client, &spec).await.expect("register node");
            renew(&self.client, &spec.name).await.expect("lease");
        });
        self.state.lock().expect("state").nodes.push(spec.name);
    }

    /// The node's agent dies: its Lease is no longer renewed and its pods are left as they are.
    pub fn stop_node(&self, name: &str) {
        self.state
            .lock()
            .expect("state")
            .stopped
            .insert(name.to_string());
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
