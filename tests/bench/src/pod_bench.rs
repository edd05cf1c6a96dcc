//! Pod startup latency and agent memory (issue 5): a real skiff-server and skiff-agent, the
//! image already on the node, a burst of pods created through the API; each pod's latency
//! runs from its create call to the first watch event that shows it Running. Prints p50,
//! p99 and max against the target (p99 ≤ 1 s; the Kubernetes SLO is 5 s), and the agent's
//! resident memory idle and with the pods running (targets 30 MB and 60 MB).
//!
//! `cargo build --release --bins && SKIFF_BIN_DIR=target/release cargo run --release -p
//! skiff-bench --bin pod-bench [PODS]` (root: it runs real containers).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use skiff_e2e::agent::Agent;
use skiff_e2e::registry::Registry;
use skiff_e2e::Server;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"bench": "startup"}},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": image, "imagePullPolicy": "IfNotPresent"}]}
    }))
    .expect("a valid pod")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(30);
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sleep", "3600"]);
    let server = Server::start();
    let node = Agent::start(&server, "bench-node", &[]);
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let pods: Api<Pod> = Api::namespaced(client, "default");

    // Warm-up: the image gets pulled once, so the burst measures startup alone.
    pods.create(&PostParams::default(), &pod("warmup", &image))
        .await?;
    wait_running(&pods, &["warmup".to_string()]).await?;
    pods.delete("warmup", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = node.pid().expect("the agent runs");
    let idle_rss = rss_kib(pid);

    let names: Vec<String> = (0..count).map(|i| format!("burst-{i}")).collect();
    let watch = tokio::spawn(first_running(pods.clone(), names.clone()));
    // Let the watch establish before the burst.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut created = HashMap::new();
    let creates = names.iter().map(|n| {
        let pods = pods.clone();
        let p = pod(n, &image);
        async move {
            let at = Instant::now();
            pods.create(&PostParams::default(), &p).await.map(|_| at)
        }
    });
    for (n, r) in names.iter().zip(futures::future::join_all(creates).await) {
        created.insert(n.clone(), r?);
    }
    let running = tokio::time::timeout(Duration::from_secs(300), watch).await???;
    let mut latencies: Vec<Duration> = names
        .iter()
        .map(|n| running[n].saturating_duration_since(created[n]))
        .collect();
    latencies.sort();
    let busy_rss = rss_kib(pid);
    let p99 = percentile(&latencies, 0.99);
    println!("pods: {count} on one node, image present");
    println!(
        "startup latency: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 <= 1000 ms: {})",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        if p99 <= Duration::from_secs(1) {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "skiff-agent RSS: idle {:.1} MB (target <= 30), with {count} pods {:.1} MB (target <= 60)",
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0
    );
    for n in &names {
        let _ = pods.delete(n, &DeleteParams::default()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline
        && !pods
            .list(&Default::default())
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

async fn wait_running(pods: &Api<Pod>, names: &[String]) -> anyhow::Result<()> {
    first_running(pods.clone(), names.to_vec())
        .await
        .map(|_| ())
}

/// The moment the watch first shows each named pod Running.
async fn first_running(
    pods: Api<Pod>,
    names: Vec<String>,
) -> anyhow::Result<HashMap<String, Instant>> {
    let mut seen = HashMap::new();
    let mut stream = watcher::watcher(pods, watcher::Config::default()).boxed();
    while seen.len() < names.len() {
        let Some(event) = stream.next().await else {
            anyhow::bail!("the watch ended");
        };
        let now = Instant::now();
        if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = event? {
            let name = p.metadata.name.clone().unwrap_or_default();
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && names.contains(&name) {
                seen.entry(name).or_insert(now);
            }
        }
    }
    Ok(seen)
}
