//! Endpoints, EndpointSlice, DaemonSet and ServiceAccount controllers against a real
//! skiff-server (started with its own controllers disabled; these tests run theirs in-process).
//! The test plays the kubelet: it registers Nodes and writes pod status itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::{json, Value};
use skiff_controllers::{daemonset, endpoints, endpointslice, serviceaccount, Context, Settings};
use skiff_e2e::Server;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn client_for(server: &Server) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("client config");
    kube::Client::try_from(config).expect("client")
}

/// A server without its own controllers, plus a client and a context for ours.
async fn setup() -> (Server, kube::Client, Arc<Context>) {
    let server = tokio::task::spawn_blocking(|| Server::start_with(&["--disable", "all"]))
        .await
        .expect("server start");
    let client = client_for(&server).await;
    let ctx = Context::new(
        client.clone(),
        "test-controller-manager",
        Settings::default(),
    );
    (server, client, ctx)
}

/// Polls `check` until it returns `Some`, panicking with `what` after the timeout.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register_node(client: &kube::Client, name: &str, taints: Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "topology.kubernetes.io/zone": "zone-a"}},
        "spec": {"taints": taints}
    }))
    .unwrap();
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake kubelet"}],
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"}
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

async fn set_pod_status(client: &kube::Client, ns: &str, name: &str, ip: &str, ready: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let flag = if ready { "True" } else { "False" };
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "Ready", "status": flag, "lastTransitionTime": jiff::Timestamp::now().to_string()},
            {"type": "ContainersReady", "status": flag}
        ]
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
}

fn web_pod(name: &str, port: Option<i32>) -> Pod {
    let ports = port
        .map(|p| json!([{"name": "http", "containerPort": p}]))
        .unwrap_or(json!([]));
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "web", "image": "busybox", "ports": ports}]}
    }))
    .unwrap()
}

/// (ready ips, not-ready ips) per port number of an Endpoints object.
fn endpoints_view(ep: &Endpoints) -> BTreeMap<i32, (Vec<String>, Vec<String>)> {
    let mut out = BTreeMap::new();
    for s in ep.subsets.iter().flatten() {
        let ips = |a: &Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>| {
            let mut v: Vec<String> = a.iter().flatten().map(|a| a.ip.clone()).collect();
            v.sort();
            v
        };
        for p in s.ports.iter().flatten() {
            out.insert(p.port, (ips(&s.addresses), ips(&s.not_ready_addresses)));
        }
    }
    out
}

/// ip → (ready, serving, terminating) over all slices of a service.
async fn slice_view(
    client: &kube::Client,
    svc: &str,
) -> BTreeMap<String, (bool, bool, bool, Option<i32>)> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={svc}"));
    let mut out = BTreeMap::new();
    for s in api.list(&lp).await.expect("list slices") {
        let port = s
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|p| p.port);
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            out.insert(
                e.addresses[0].clone(),
                (
                    c.ready == Some(true),
                    c.serving == Some(true),
                    c.terminating == Some(true),
                    port,
                ),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_pod_readiness() {
    let (server, client, ctx) = setup().await;
    tokio::spawn(endpoints::run(ctx.clone()));
    tokio::spawn(endpointslice::run(ctx.clone()));
    register_node(&client, "n1", json!([])).await;

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, port) in [("a", Some(8080)), ("b", Some(9090)), ("c", None)] {
        pods.create(&PostParams::default(), &web_pod(name, port))
            .await
            .expect("create pod");
    }
    set_pod_status(&client, "default", "a", "10.244.1.10", true).await;
    set_pod_status(&client, "default", "b", "10.244.1.11", false).await;
    set_pod_status(&client, "default", "c", "10.244.1.12", true).await;

    // Named targetPort resolved per pod; c lacks the port and is left out of Endpoints.
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let want = BTreeMap::from([
        (8080, (s(&["10.244.1.10"]), s(&[]))),
        (9090, (s(&[]), s(&["10.244.1.11"]))),
    ]);
    wait_for("endpoints with a ready and b not ready", || {
        let eps = eps.clone();
        let want = want.clone();
        async move {
            eps.get_opt("web")
                .await
                .ok()
                .flatten()
                .filter(|e| endpoints_view(e) == want)
        }
    })
    .await;
    let ep = eps.get("web").await.unwrap();
    let address = ep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .next()
        .unwrap();
    assert_eq!(address.node_name.as_deref(), Some("n1"));
    assert_eq!(
        address.target_ref.as_ref().and_then(|r| r.name.as_deref()),
        Some("a")
    );
    assert_eq!(
        ep.labels()
            .get("endpoints.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpoint-controller")
    );
    let slices = wait_for("slices for a, b, c", || {
        let client = client.clone();
        async move { Some(slice_view(&client, "web").await).filter(|v| v.len() == 3) }
    })
    .await;
    assert_eq!(slices["10.244.1.10"], (true, true, false, Some(8080)));
    assert_eq!(slices["10.244.1.11"], (false, false, false, Some(9090)));
    assert_eq!(
        slices["10.244.1.12"].3, None,
        "c resolves no port: a slice without ports"
    );

    // Slice metadata as kube writes it, read through the real kubectl.
    let list = server.json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    for item in list["items"].as_array().unwrap() {
        assert_eq!(item["addressType"], "IPv4");
        assert_eq!(
            item["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        assert_eq!(item["metadata"]["ownerReferences"][0]["kind"], "Service");
        assert_eq!(item["metadata"]["ownerReferences"][0]["name"], "web");
        assert_eq!(item["endpoints"][0]["zone"], "zone-a", "{item}");
    }

    // Readiness flips are reflected after that one pod event (no resync exists to help).
    let started = Instant::now();
    set_pod_status(&client, "default", "b", "10.244.1.11", true).await;
    let want = BTreeMap::from([
        (8080, (s(&["10.244.1.10"]), s(&[]))),
        (9090, (s(&["10.244.1.11"]), s(&[]))),
    ]);
    wait_for("b ready in endpoints", || {
        let eps = eps.clone();
        let want = want.clone();
        async move {
            eps.get_opt("web")
                .await
                .ok()
                .flatten()
                .filter(|e| endpoints_view(e) == want)
        }
    })
    .await;
    wait_for("b ready in slices", || {
        let client = client.clone();
        async move {
            Some(slice_view(&client, "web").await)
                .filter(|v| v.get("10.244.1.11").is_some_and(|e| e.0))
        }
    })
    .await;
    set_pod_status(&client, "default", "a", "10.244.1.10", false).await;
    let want = BTreeMap::from([
        (8080, (s(&[]), s(&["10.244.1.10"]))),
        (9090, (s(&["10.244.1.11"]), s(&[]))),
    ]);
    wait_for("a not ready in endpoints", || {
        let eps = eps.clone();
        let want = want.clone();
        async move {
            eps.get_opt("web")
                .await
                .ok()
                .flatten()
                .filter(|e| endpoints_view(e) == want)
        }
    })
    .await;
    wait_for("a not ready in slices", || {
        let client = client.clone();
        async move {
            Some(slice_view(&client, "web").await)
                .filter(|v| v.get("10.244.1.10") == Some(&(false, false, false, Some(8080))))
        }
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "readiness took {:?}",
        started.elapsed()
    );

    // A pod change that does not matter writes nothing (no rewrite loops).
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let versions = || async {
        let ep = eps.get("web").await.unwrap().resource_version();
        let lp = ListParams::default().labels("kubernetes.io/service-name=web");
        let mut slices: Vec<_> = slice_api
            .list(&lp)
            .await
            .unwrap()
            .items
            .iter()
            .map(|s| (s.name_any(), s.resource_version()))
            .collect();
        slices.sort();
        (ep, slices)
    };
    let before = versions().await;
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"note": "irrelevant"}}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        versions().await,
        before,
        "an irrelevant pod update rewrote endpoints or slices"
    );

    // A terminating pod leaves Endpoints but stays in its slice as terminating.
    set_pod_status(&client, "default", "b", "10.244.1.11", true).await;
    pods.delete("b", &DeleteParams::default())
        .await
        .expect("delete b");
    let want = BTreeMap::from([(8080, (s(&[]), s(&["10.244.1.10"])))]);
    wait_for("terminating b out of endpoints", || {
        let eps = eps.clone();
        let want = want.clone();
        async move {
            eps.get_opt("web")
                .await
                .ok()
                .flatten()
                .filter(|e| endpoints_view(e) == want)
        }
    })
    .await;
    wait_for("terminating b in slices", || {
        let client = client.clone();
        async move {
            Some(slice_view(&client, "web").await)
                .filter(|v| v.get("10.244.1.11") == Some(&(false, true, true, Some(9090))))
        }
    })
    .await;
    // The kubelet finishes the deletion: b is gone from the slices too, and its slice with it.
    pods.delete("b", &DeleteParams::default().grace_period(0))
        .await
        .expect("finalize b");
    wait_for("b gone from slices", || {
        let client = client.clone();
        async move { Some(slice_view(&client, "web").await).filter(|v| !v.contains_key("10.244.1.11")) }
    })
    .await;

    // Services without a selector keep the Endpoints their user writes.
    let manual: Service = serde_json::from_value(json!({
        "metadata": {"name": "manual"}, "spec": {"ports": [{"port": 5432}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &manual)
        .await
        .unwrap();
    let user_ep: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "manual"},
        "subsets": [{"addresses": [{"ip": "192.0.2.7"}], "ports": [{"port": 5432}]}]
    }))
    .unwrap();
    eps.create(&PostParams::default(), &user_ep).await.unwrap();
    // A managed Endpoints object deleted by someone comes back.
    eps.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("web endpoints recreated", || {
        let eps = eps.clone();
        async move { eps.get_opt("web").await.ok().flatten() }
    })
    .await;
    let manual_now = eps.get("manual").await.unwrap();
    assert_eq!(manual_now.subsets, user_ep.subsets);
    assert!(!manual_now
        .labels()
        .contains_key("endpoints.kubernetes.io/managed-by"));
    // ... and mirrored into a slice owned by that Endpoints object.
    let mirrored = wait_for("manual endpoints mirrored", || {
        let client = client.clone();
        async move { Some(slice_view(&client, "manual").await).filter(|v| v.len() == 1) }
    })
    .await;
    assert_eq!(mirrored["192.0.2.7"].3, Some(5432));
    let list = server.json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=manual",
    ]);
    let item = &list["items"][0];
    assert_eq!(
        item["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslicemirroring-controller.k8s.io"
    );
    assert_eq!(item["metadata"]["ownerReferences"][0]["kind"], "Endpoints");
    // The API server keeps the kubernetes service's slice itself; the mirroring
    // controller leaves it alone.
    assert_eq!(slice_view(&client, "kubernetes").await.len(), 1);
    let own = server.json(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=kubernetes",
    ]);
    assert_eq!(own["items"].as_array().map(Vec::len), Some(1), "{own}");
    assert_eq!(
        own["items"][0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "skiff-server"
    );
    let kubernetes = eps.get("kubernetes").await.unwrap();
    assert!(!kubernetes
        .labels()
        .contains_key("endpoints.kubernetes.io/managed-by"));

    // Deleting the service removes its Endpoints (and, through the owner reference, its slices).
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("web endpoints deleted", || {
        let eps = eps.clone();
        async move { eps.get_opt("web").await.ok().filter(|e| e.is_none()) }
    })
    .await;
    wait_for("web slices deleted", || {
        let client = client.clone();
        async move { Some(slice_view(&client, "web").await).filter(|v| v.is_empty()) }
    })
    .await;
}

/// A kubelet for every node at once: pods bound to a node become Running and Ready with an
/// address; pods being deleted are finished off.
fn run_fake_kubelet(client: kube::Client) {
    tokio::spawn(async move {
        let api: Api<Pod> = Api::all(client.clone());
        let mut next_ip = 2u32;
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = events.next().await {
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some();
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if bound && phase.is_none_or(|p| p == "Pending") {
                next_ip += 1;
                let ip = format!("10.244.{}.{}", next_ip / 250, next_ip % 250 + 2);
                set_pod_status(&client, &ns, &name, &ip, true).await;
            }
        }
    });
}

async fn daemon_pods(client: &kube::Client) -> BTreeMap<String, Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut out: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in api
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
    {
        if p.metadata.deletion_timestamp.is_none() {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            out.entry(node).or_default().push(p);
        }
    }
    out
}

fn nodes_of(pods: &BTreeMap<String, Vec<Pod>>) -> Vec<String> {
    pods.iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(k, _)| k.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_one_pod_per_eligible_node() {
    let (server, client, ctx) = setup().await;
    tokio::spawn(daemonset::run(ctx.clone()));
    run_fake_kubelet(client.clone());
    register_node(&client, "n1", json!([])).await;
    register_node(&client, "n2", json!([])).await;
    register_node(
        &client,
        "n3",
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await;
    // A cordoned node still runs daemons (they tolerate unschedulable).
    register_node(
        &client,
        "n5",
        json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
    )
    .await;

    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "agent", "image": "busybox:1"}]}}
        }
    }))
    .unwrap();
    sets.create(&PostParams::default(), &ds)
        .await
        .expect("create daemonset");

    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let expect = want(&["n1", "n2", "n5"]);
    wait_for("a pod on n1, n2, n5 and none on tainted n3", || {
        let client = client.clone();
        let expect = expect.clone();
        async move { Some(daemon_pods(&client).await).filter(|p| nodes_of(p) == expect && p.len() == 3) }
    })
    .await;
    let pods = daemon_pods(&client).await;
    let pod = &pods["n1"][0];
    let tolerations = pod
        .spec
        .as_ref()
        .unwrap()
        .tolerations
        .clone()
        .unwrap_or_default();
    for key in [
        "not-ready",
        "unreachable",
        "disk-pressure",
        "memory-pressure",
        "pid-pressure",
        "unschedulable",
    ] {
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some(&format!("node.kubernetes.io/{key}"))),
            "toleration {key} missing"
        );
    }
    assert!(pod.labels().contains_key("controller-revision-hash"));
    assert_eq!(pod.owner_references()[0].kind, "DaemonSet");

    // A new node gets a pod.
    register_node(&client, "n4", json!([])).await;
    let expect = want(&["n1", "n2", "n4", "n5"]);
    wait_for("a pod on the new node n4", || {
        let client = client.clone();
        let expect = expect.clone();
        async move { Some(daemon_pods(&client).await).filter(|p| nodes_of(p) == expect && p.len() == 4) }
    })
    .await;
    let status = wait_for("status: 4 desired, 4 ready", || {
        let sets = sets.clone();
        async move {
            let ds = sets.get("agent").await.ok()?;
            let s = ds.status?;
            (s.desired_number_scheduled == 4
                && s.number_ready == 4
                && s.number_available == Some(4))
            .then_some(s)
        }
    })
    .await;
    assert_eq!(status.current_number_scheduled, 4);
    assert_eq!(status.updated_number_scheduled, Some(4));
    assert_eq!(status.number_misscheduled, 0);
    assert_eq!(status.observed_generation, Some(1));

    // A NoExecute taint the pod does not tolerate evicts it from n4.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "n4",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"taints": [{"key": "maintenance", "effect": "NoExecute"}]}}),
            ),
        )
        .await
        .unwrap();
    let expect = want(&["n1", "n2", "n5"]);
    wait_for("the pod leaves n4", || {
        let client = client.clone();
        let expect = expect.clone();
        async move { Some(daemon_pods(&client).await).filter(|p| nodes_of(p) == expect && p.len() == 3) }
    })
    .await;

    // Rolling update: every pod replaced by one of the new template; never two nodes down.
    let old_hash = pod.labels()["controller-revision-hash"].clone();
    let watch_client = client.clone();
    let max_down = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let observer = {
        let max_down = max_down.clone();
        tokio::spawn(async move {
            loop {
                let pods = daemon_pods(&watch_client).await;
                let up = ["n1", "n2", "n5"]
                    .iter()
                    .filter(|n| {
                        pods.get(**n).is_some_and(|v| {
                            v.iter().any(|p| {
                                p.status.as_ref().and_then(|s| s.phase.as_deref())
                                    == Some("Running")
                            })
                        })
                    })
                    .count();
                max_down.fetch_max(3 - up, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "busybox:2"}]}}}})),
    )
    .await
    .unwrap();
    let status = wait_for("rollout done", || {
        let sets = sets.clone();
        async move {
            let ds = sets.get("agent").await.ok()?;
            let s = ds.status?;
            (s.observed_generation == Some(2)
                && s.updated_number_scheduled == Some(3)
                && s.number_available == Some(3))
            .then_some(s)
        }
    })
    .await;
    observer.abort();
    assert_eq!(status.desired_number_scheduled, 3);
    let pods = daemon_pods(&client).await;
    for (node, here) in &pods {
        assert_eq!(here.len(), 1, "one pod on {node}");
        assert_ne!(here[0].labels()["controller-revision-hash"], old_hash);
        let image = here[0].spec.as_ref().unwrap().containers[0].image.clone();
        assert_eq!(image.as_deref(), Some("busybox:2"));
    }
    assert!(
        max_down.load(std::sync::atomic::Ordering::SeqCst) <= 1,
        "more than maxUnavailable nodes were down"
    );
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let history = revisions
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap();
    let mut numbers: Vec<i64> = history.items.iter().map(|r| r.revision).collect();
    numbers.sort();
    assert_eq!(numbers, vec![1, 2]);

    // Events a user reads with kubectl describe.
    let events = server.json(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=agent",
    ]);
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"SuccessfulCreate"), "{reasons:?}");
    assert!(reasons.contains(&"SuccessfulDelete"), "{reasons:?}");
    let rollout = server.ok(&["rollout", "status", "daemonset/agent", "--timeout=20s"]);
    assert!(rollout.contains("successfully rolled out"), "{rollout}");

    // kubectl reads the ControllerRevisions for history and applies one for undo.
    let history = server.ok(&["rollout", "history", "daemonset/agent"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    server.ok(&["rollout", "undo", "daemonset/agent"]);
    wait_for("rolled back to busybox:1", || {
        let client = client.clone();
        async move {
            let pods = daemon_pods(&client).await;
            let images: Vec<Option<String>> = pods
                .values()
                .flatten()
                .map(|p| p.spec.as_ref().unwrap().containers[0].image.clone())
                .collect();
            (images.len() == 3 && images.iter().all(|i| i.as_deref() == Some("busybox:1")))
                .then_some(())
        }
    })
    .await;
    let history = revisions
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap();
    let mut numbers: Vec<(i64, String)> = history
        .items
        .iter()
        .map(|r| (r.revision, r.labels()["controller-revision-hash"].clone()))
        .collect();
    numbers.sort();
    assert_eq!(numbers.len(), 2);
    assert_eq!(
        numbers[1],
        (3, old_hash.clone()),
        "the old template became revision 3"
    );

    // The kubelet reports a daemon pod Failed: it is killed and replaced on its node.
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let victim = daemon_pods(&client).await["n2"][0].name_any();
    pods_api
        .patch_status(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    wait_for("failed pod replaced on n2", || {
        let client = client.clone();
        let victim = victim.clone();
        async move {
            let pods = daemon_pods(&client).await;
            let here = pods.get("n2")?;
            (here.len() == 1 && here[0].name_any() != victim).then_some(())
        }
    })
    .await;

    // An orphan matching the selector is adopted; on a node the daemon may stay on but not be
    // placed on (untolerated NoSchedule), it is kept and counted as misscheduled.
    register_node(
        &client,
        "n6",
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    let stray: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray", "labels": {"app": "agent"}},
        "spec": {"nodeName": "n6", "containers": [{"name": "agent", "image": "busybox:1"}]}
    }))
    .unwrap();
    pods_api
        .create(&PostParams::default(), &stray)
        .await
        .unwrap();
    wait_for("stray adopted and misscheduled", || {
        let pods_api = pods_api.clone();
        let sets = sets.clone();
        async move {
            let pod = pods_api.get("stray").await.ok()?;
            let owner = pod.owner_references().first()?.clone();
            let status = sets.get("agent").await.ok()?.status?;
            (owner.kind == "DaemonSet"
                && owner.controller == Some(true)
                && status.number_misscheduled == 1)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account() {
    let (server, client, ctx) = setup().await;
    tokio::spawn(serviceaccount::run(ctx.clone()));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    for ns in ["default", "kube-system", "kube-public", "team-a"] {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        wait_for(&format!("default service account in {ns}"), || {
            let api = api.clone();
            async move { api.get_opt("default").await.ok().flatten() }
        })
        .await;
    }
    // Deleted, it comes back; a namespace created by kubectl gets one too.
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-a");
    let first = api.get("default").await.unwrap();
    api.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("default service account recreated", || {
        let api = api.clone();
        let old_uid = first.uid();
        async move {
            api.get_opt("default")
                .await
                .ok()
                .flatten()
                .filter(|sa| sa.uid() != old_uid)
        }
    })
    .await;
    server.ok(&["create", "namespace", "team-b"]);
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-b");
    wait_for("default service account in team-b", || {
        let api = api.clone();
        async move { api.get_opt("default").await.ok().flatten() }
    })
    .await;
    let out = server.ok(&["get", "serviceaccounts", "-n", "team-b"]);
    assert!(out.contains("default"), "{out}");

    // A namespace being deleted does not get its account back, so its deletion completes.
    server.ok(&["delete", "namespace", "team-a", "--wait=false"]);
    wait_for("team-a gone", || {
        let namespaces = namespaces.clone();
        async move {
            namespaces
                .get_opt("team-a")
                .await
                .ok()
                .filter(|n| n.is_none())
        }
    })
    .await;
}

/// The same controllers started by skiff-server itself (leader election, `spawn_one`), with
/// the ones other tests cover turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skiff_server_runs_these_controllers() {
    let server = tokio::task::spawn_blocking(|| {
        Server::start_with(&[
            "--disable",
            "scheduler,replicaset,deployment,nodelifecycle,nodeipam",
        ])
    })
    .await
    .unwrap();
    let client = client_for(&server).await;
    run_fake_kubelet(client.clone());
    register_node(&client, "n1", json!([])).await;
    server.ok(&["create", "namespace", "shop"]);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "shop");
    wait_for("default service account in shop", || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.ok().flatten() }
    })
    .await;

    let manifest = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - name: agent
        image: busybox
        ports: [{name: metrics, containerPort: 9100}]
---
apiVersion: v1
kind: Service
metadata: {name: agent, namespace: shop}
spec:
  selector: {app: agent}
  ports: [{name: metrics, port: 9100, targetPort: metrics}]
"#;
    let path = server.write_file("agent.yaml", manifest);
    server.ok(&["apply", "-f", path.to_str().unwrap()]);
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "shop");
    let ep = wait_for("the daemon pod, ready, behind the service", || {
        let eps = eps.clone();
        async move {
            let ep = eps.get_opt("agent").await.ok().flatten()?;
            let ready = ep
                .subsets
                .iter()
                .flatten()
                .flat_map(|s| s.addresses.iter().flatten())
                .count();
            (ready == 1).then_some(ep)
        }
    })
    .await;
    assert_eq!(ep.subsets.unwrap()[0].ports.as_ref().unwrap()[0].port, 9100);
    let slices = server.json(&[
        "get",
        "endpointslices",
        "-n",
        "shop",
        "-l",
        "kubernetes.io/service-name=agent",
    ]);
    let endpoints = &slices["items"][0]["endpoints"];
    assert_eq!(endpoints[0]["conditions"]["ready"], true, "{slices}");
    assert_eq!(endpoints[0]["nodeName"], "n1");
    let ds = server.json(&["get", "daemonset", "agent", "-n", "shop"]);
    assert_eq!(ds["status"]["desiredNumberScheduled"], 1, "{ds}");
}

/// maxSurge 1, maxUnavailable 0: a new pod starts next to each old one before the old one
/// goes, so every node keeps a ready daemon throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_surge_rollout_keeps_every_node_served() {
    let (_server, client, ctx) = setup().await;
    tokio::spawn(daemonset::run(ctx.clone()));
    run_fake_kubelet(client.clone());
    for n in ["n1", "n2", "n3"] {
        register_node(&client, n, json!([])).await;
    }
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "agent", "image": "busybox:1"}]}}
        }
    }))
    .unwrap();
    sets.create(&PostParams::default(), &ds).await.unwrap();
    wait_for("3 ready daemons", || {
        let sets = sets.clone();
        async move { (sets.get("agent").await.ok()?.status?.number_available == Some(3)).then_some(()) }
    })
    .await;
    let min_ready_nodes = Arc::new(std::sync::atomic::AtomicUsize::new(3));
    let max_pods = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let observer = {
        let (client, min_ready_nodes, max_pods) =
            (client.clone(), min_ready_nodes.clone(), max_pods.clone());
        tokio::spawn(async move {
            loop {
                let pods = daemon_pods(&client).await;
                let ready = pods
                    .values()
                    .filter(|v| {
                        v.iter().any(|p| {
                            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                        })
                    })
                    .count();
                min_ready_nodes.fetch_min(ready, std::sync::atomic::Ordering::SeqCst);
                max_pods.fetch_max(
                    pods.values().map(Vec::len).sum(),
                    std::sync::atomic::Ordering::SeqCst,
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    sets.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "busybox:2"}]}}}})),
    )
    .await
    .unwrap();
    wait_for("surge rollout done", || {
        let client = client.clone();
        async move {
            let pods = daemon_pods(&client).await;
            let images: Vec<Option<String>> = pods
                .values()
                .flatten()
                .map(|p| p.spec.as_ref().unwrap().containers[0].image.clone())
                .collect();
            (images.len() == 3 && images.iter().all(|i| i.as_deref() == Some("busybox:2")))
                .then_some(())
        }
    })
    .await;
    observer.abort();
    assert_eq!(
        min_ready_nodes.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "a node went without a running daemon"
    );
    assert!(
        max_pods.load(std::sync::atomic::Ordering::SeqCst) <= 4,
        "more than maxSurge extra pods"
    );

    // Settled: an irrelevant pod update rewrites neither status nor anything else.
    wait_for("status settled", || {
        let sets = sets.clone();
        async move {
            let s = sets.get("agent").await.ok()?.status?;
            (s.updated_number_scheduled == Some(3) && s.number_available == Some(3)).then_some(())
        }
    })
    .await;
    let before = sets.get("agent").await.unwrap().resource_version();
    let pods = daemon_pods(&client).await;
    let any = pods.values().flatten().next().unwrap().name_any();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods_api
        .patch(
            &any,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"note": "irrelevant"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sets.get("agent").await.unwrap().resource_version(), before);
}

/// Scale check, run on demand (`--ignored`): one Service over 1,000 pods that all become
/// ready; prints how long Endpoints and EndpointSlices take to catch up after the last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn endpoints_at_scale() {
    let (_server, client, ctx) = setup().await;
    tokio::spawn(endpoints::run(ctx.clone()));
    tokio::spawn(endpointslice::run(ctx.clone()));
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let n = 1000;
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = {
        let (writes, api) = (
            writes.clone(),
            Api::<Endpoints>::namespaced(client.clone(), "default"),
        );
        tokio::spawn(async move {
            let mut events =
                watcher(api, watcher::Config::default().fields("metadata.name=web")).boxed();
            while let Some(Ok(e)) = events.next().await {
                if matches!(e, watcher::Event::Apply(_)) {
                    writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
                let name = format!("web-{i}");
                pods.create(&PostParams::default(), &web_pod(&name, Some(8080)))
                    .await
                    .unwrap();
                let ip = format!("10.244.{}.{}", i / 200, i % 200 + 2);
                set_pod_status(&client, "default", &name, &ip, true).await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let written = started.elapsed();
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    wait_for("1000 addresses", || {
        let eps = eps.clone();
        async move {
            let ep = eps.get_opt("web").await.ok().flatten()?;
            let count: usize = ep
                .subsets
                .iter()
                .flatten()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum();
            (count == n).then_some(())
        }
    })
    .await;
    let endpoints_done = started.elapsed();
    wait_for("1000 ready slice endpoints", || {
        let client = client.clone();
        async move {
            Some(slice_view(&client, "web").await)
                .filter(|v| v.len() == n && v.values().all(|e| e.0))
        }
    })
    .await;
    let slices_done = started.elapsed();
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let count = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap()
        .items
        .len();
    counter.abort();
    println!(
        "{n} pods created and made ready in {written:?}; endpoints complete at {endpoints_done:?} \
         after {} writes, {count} slices complete at {slices_done:?}",
        writes.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert_eq!(count, 10);
}
