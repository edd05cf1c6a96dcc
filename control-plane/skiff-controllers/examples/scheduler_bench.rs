//! Scheduler throughput (issue 3): 100 fake nodes, 10,000 pending pods, time until all are
//! bound by this crate's scheduler against a real skiff-server whose own controllers are
//! off. Prints pods/s and the ratio to the 1,000 pods/s target.
//!
//! `cargo run --release -p skiff-controllers --example scheduler_bench -- [nodes] [pods]`
//! (skiff-server from `SKIFF_BIN_DIR`, else `target/debug`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::watcher;
use serde_json::json;
use skiff_controllers::{scheduler, Context, Settings};
use skiff_e2e::Server;

/// The target (kube-scheduler's own scheduler_perf reports a few hundred pods/s).
const TARGET_PODS_PER_SECOND: f64 = 1000.0;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes = args.first().copied().unwrap_or(100);
    let pods = args.get(1).copied().unwrap_or(10_000);

    let server = Server::start_with(&["--disable", "all"]);
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(server.kubeconfig())?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;

    let node_api: Api<Node> = Api::all(client.clone());
    let resources =
        json!({"cpu": "32", "memory": "128Gi", "pods": "250", "ephemeral-storage": "500Gi"});
    futures::stream::iter(0..nodes)
        .map(|i| {
            let api = node_api.clone();
            let resources = resources.clone();
            async move {
                let name = format!("bench-node-{i:03}");
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                }))?;
                api.create(&PostParams::default(), &node).await?;
                let status = json!({"status": {"capacity": resources, "allocatable": resources,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "bench"}]}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;

    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = pod_api.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("bench-{i:05}"), "labels": {"app": format!("app-{}", i % 20)}},
                    "spec": {"containers": [{"name": "c", "image": "busybox",
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]},
                }))?;
                api.create(&PostParams::default(), &pod).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "setup: {nodes} nodes, {pods} pending pods created in {:.1?}",
        created.elapsed()
    );

    // Count bindings from a watch of our own, then start the scheduler.
    let (all_bound_tx, all_bound_rx) = tokio::sync::oneshot::channel::<Instant>();
    let watch_api = pod_api.clone();
    tokio::spawn(async move {
        let mut bound = HashSet::new();
        let mut stream = std::pin::pin!(watcher::watcher(watch_api, watcher::Config::default()));
        let mut tx = Some(all_bound_tx);
        while let Some(Ok(ev)) = stream.next().await {
            let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                continue;
            };
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                bound.insert(p.metadata.name.unwrap_or_default());
                if bound.len() == pods {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let ctx = Context::new(client.clone(), "scheduler-bench", Settings::default());
    let task = tokio::spawn(scheduler::run(ctx));
    let done = tokio::time::timeout(Duration::from_secs(600), all_bound_rx).await??;
    task.abort();
    let secs = done.duration_since(start).as_secs_f64();
    let rate = pods as f64 / secs;
    println!(
        "scheduler: {pods} pods bound over {nodes} nodes in {secs:.2} s = {rate:.0} pods/s; target {TARGET_PODS_PER_SECOND:.0} pods/s; ratio {:.2}",
        rate / TARGET_PODS_PER_SECOND
    );
    Ok(())
}
