//! Scheduler throughput (issue 3): 100 fake nodes, 10,000 pending pods, time until all are
//! bound by this crate's scheduler against a real skiff-server whose own controllers are
//! off. No kube-scheduler is installed here to compare with, so the same run also measures
//! the API server's ceiling for this work: a second fresh server where a plain loop binds
//! the pods round-robin with the same concurrency, no decisions and no events. Prints
//! pods/s, the ratio to the 1,000 pods/s target and the ratio to that ceiling.
//!
//! `cargo run --release -p skiff-controllers --example scheduler_bench -- [nodes] [pods]`
//! (skiff-server from `SKIFF_BIN_DIR`, else `target/debug`; use a release build of both).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use skiff_controllers::{scheduler, Context, Settings};
use skiff_e2e::Server;

/// Issue 3's target (kube-scheduler's own scheduler_perf reports a few hundred pods/s).
const TARGET_PODS_PER_SECOND: f64 = 1000.0;
/// The scheduler's own number of bindings in flight.
const CONCURRENCY: usize = 16;

type Error = Box<dyn std::error::Error>;

/// A fresh server (controllers off) with `nodes` Ready nodes and `pods` pending pods.
async fn setup(nodes: usize, pods: usize) -> Result<(Server, kube::Client), Error> {
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
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
                Ok::<_, Error>(())
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
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "setup: {nodes} nodes, {pods} pending pods created in {:.1?}",
        created.elapsed()
    );
    Ok((server, client))
}

/// Resolves when a watch of our own has seen all `pods` pods bound. Abort the task when done.
fn all_bound(
    client: kube::Client,
    pods: usize,
) -> (
    tokio::sync::oneshot::Receiver<Instant>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
    let api: Api<Pod> = Api::namespaced(client, "default");
    let task = tokio::spawn(async move {
        let mut bound = HashSet::new();
        let mut stream =
            std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
        let mut tx = Some(tx);
        // Errors (410 Gone when the watch falls behind the server's event window) are
        // followed by a re-list, which the InitApply arm counts.
        while let Some(ev) = stream.next().await {
            let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
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
    (rx, task)
}

async fn scheduler_run(nodes: usize, pods: usize) -> Result<f64, Error> {
    let (_server, client) = setup(nodes, pods).await?;
    let (done, watch) = all_bound(client.clone(), pods);
    let start = Instant::now();
    let ctx = Context::new(client, "scheduler-bench", Settings::default());
    let task = tokio::spawn(scheduler::run(ctx));
    let done = tokio::time::timeout(Duration::from_secs(600), done).await??;
    task.abort();
    watch.abort();
    Ok(done.duration_since(start).as_secs_f64())
}

/// The ceiling: bind every pod to node i % nodes, `CONCURRENCY` at a time.
async fn raw_binding_run(nodes: usize, pods: usize) -> Result<f64, Error> {
    let (_server, client) = setup(nodes, pods).await?;
    // The server answers a binding once its write is visible, so the last answer is the end.
    let start = Instant::now();
    let api: Api<Pod> = Api::namespaced(client, "default");
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("bench-{i:05}");
                let binding = Binding {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    target: ObjectReference {
                        kind: Some("Node".into()),
                        name: Some(format!("bench-node-{:03}", i % nodes)),
                        ..Default::default()
                    },
                };
                api.create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await?;
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // RUST_LOG=skiff_controllers=debug shows the scheduler's batches.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let nodes = args.first().copied().unwrap_or(100);
    let pods = args.get(1).copied().unwrap_or(10_000);

    let secs = scheduler_run(nodes, pods).await?;
    let rate = pods as f64 / secs;
    println!(
        "scheduler: {pods} pods bound over {nodes} nodes in {secs:.2} s = {rate:.0} pods/s; \
         target {TARGET_PODS_PER_SECOND:.0} pods/s; ratio {:.2}",
        rate / TARGET_PODS_PER_SECOND
    );
    let raw_secs = raw_binding_run(nodes, pods).await?;
    let raw_rate = pods as f64 / raw_secs;
    println!(
        "API ceiling (round-robin bindings, {CONCURRENCY} in flight, no events): {raw_rate:.0} pods/s; \
         scheduler / ceiling ratio {:.2}",
        rate / raw_rate
    );
    Ok(())
}
