//! Scale-up latency (issue 3): a real skiff-server with its controllers and scheduler, 100
//! fake nodes (skiff_e2e::fake_kubelet), a Deployment of 1 replica scaled to 1,000 through
//! its scale subresource — the request `kubectl scale` sends; the clock runs from that
//! request to the watch event that shows the 1,000th pod bound. Prints the time against the
//! 5 s target.
//!
//! `cargo run --release -p skiff-controllers --example scale_bench -- [nodes] [replicas]`
//! (skiff-server from `SKIFF_BIN_DIR`, else `target/debug`; use a release build of both).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::watcher;
use serde_json::json;
use skiff_e2e::fake_kubelet::{FakeKubelet, NodeSpec};
use skiff_e2e::Server;

const TARGET: Duration = Duration::from_secs(5);

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);
    let replicas: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let server = Server::start();
    let _kubelets = FakeKubelet::start(
        &server.kubeconfig(),
        (0..nodes)
            .map(|i| NodeSpec::new(&format!("fake-{i:03}")))
            .collect(),
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let took = runtime.block_on(scale(&server, replicas))?;
    println!("nodes: {nodes} (fake), replicas: 1 -> {replicas}");
    println!(
        "scale to all pods bound: {:.2} s (target <= {} s: ratio {:.2}, {})",
        took.as_secs_f64(),
        TARGET.as_secs(),
        TARGET.as_secs_f64() / took.as_secs_f64(),
        if took <= TARGET { "met" } else { "missed" }
    );
    Ok(())
}

async fn scale(server: &Server, replicas: usize) -> Result<Duration, Error> {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(server.kubeconfig())?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "busybox"}]}}}
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let mut stream = watcher::watcher(pods, watcher::Config::default()).boxed();
    let mut bound: HashSet<String> = HashSet::new();
    // The first replica runs before the clock starts.
    while bound.is_empty() {
        if let Some(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) =
            stream.next().await.transpose()?
        {
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                bound.insert(p.metadata.name.unwrap_or_default());
            }
        }
    }
    let start = Instant::now();
    deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    let deadline = start + Duration::from_secs(300);
    // When each pod was first seen and first seen bound: shows whether the time goes to
    // creating pods (ReplicaSet controller, API writes) or to placing them (scheduler).
    let mut seen: HashSet<String> = bound.clone();
    let mut created_at = [Duration::ZERO; 4];
    let mut bound_at = [Duration::ZERO; 4];
    let quarters = |n: usize| (1..=4).map(move |q| q * n / 4);
    while bound.len() < replicas {
        if Instant::now() > deadline {
            return Err(format!("only {} of {replicas} bound after 300 s", bound.len()).into());
        }
        match stream.next().await.transpose()? {
            Some(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                let name = p.metadata.name.unwrap_or_default();
                if seen.insert(name.clone()) {
                    for (i, q) in quarters(replicas).enumerate() {
                        if seen.len() == q {
                            created_at[i] = start.elapsed();
                        }
                    }
                }
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                    && bound.insert(name)
                {
                    for (i, q) in quarters(replicas).enumerate() {
                        if bound.len() == q {
                            bound_at[i] = start.elapsed();
                        }
                    }
                }
            }
            Some(watcher::Event::Delete(p)) => {
                bound.remove(&p.metadata.name.unwrap_or_default());
            }
            Some(_) => {}
            None => return Err("the watch ended".into()),
        }
    }
    let took = start.elapsed();
    let ms = |d: &[Duration; 4]| {
        d.iter()
            .map(|t| format!("{:.0}", t.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "pods seen at 25/50/75/100 %: {} ms; bound: {} ms",
        ms(&created_at),
        ms(&bound_at)
    );
    Ok(took)
}
