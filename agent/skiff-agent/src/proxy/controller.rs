//! The proxy's control loop: reflectors on Services, EndpointSlices and this node's Node object
//! feed one notification; the loop follows `Schedule` (coalesced syncs, periodic full resync,
//! canary checks) and hands each sync to a blocking thread, since the kernel tools are
//! processes the loop waits for.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::PostParams;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::Notify;

use super::apply::{Pacing, Proxier, Schedule, Step};
use super::kernel::Kernel;
use super::model::{self, Ipv4Cidr, Model, NodeInfo};

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub node_name: String,
    pub cluster_cidr: Ipv4Cidr,
    pub service_cidr: Ipv4Cidr,
    pub pacing: Pacing,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("the proxy's sync thread ended: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The model as of now from the reflector stores.
pub fn snapshot(
    cfg: &ProxyConfig,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    nodes: &Store<Node>,
) -> (Model, Vec<model::Problem>) {
    // NodePorts answer on the node's own addresses (kube-proxy's `--nodeport-addresses
    // primary`); until the Node lists any, on every local address.
    let addresses: Vec<Ipv4Addr> = nodes
        .state()
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()))
        .map(|n| model::node_addresses(n))
        .unwrap_or_default();
    let svcs = services.state();
    let eps = slices.state();
    model::build(
        svcs.iter().map(Arc::as_ref),
        eps.iter().map(Arc::as_ref),
        NodeInfo {
            name: cfg.node_name.clone(),
            addresses,
            cluster_cidr: cfg.cluster_cidr,
            service_cidr: cfg.service_cidr,
        },
    )
}

fn feed<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    notify: Arc<Notify>,
) -> impl std::future::Future<Output = ()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .for_each(move |ev| {
            if let Err(e) = &ev {
                tracing::warn!("proxy watch: {e}");
            }
            notify.notify_one();
            async {}
        })
}

/// A Warning Event on the object the proxy could not use, so `kubectl describe` shows why a
/// port or endpoint has no rules.
async fn record_event(client: kube::Client, node: String, p: model::Problem) {
    let api_version = match p.object.kind {
        "EndpointSlice" => "discovery.k8s.io/v1",
        _ => "v1",
    };
    let stamp = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let event = serde_json::json!({
        "metadata": {"generateName": format!("{}.", p.object.name)},
        "involvedObject": {
            "apiVersion": api_version,
            "kind": p.object.kind,
            "namespace": p.object.namespace,
            "name": p.object.name,
        },
        "reason": "IgnoredByServiceProxy",
        "message": p.message,
        "type": "Warning",
        "source": {"component": "skiff-proxy", "host": node},
        "reportingComponent": "skiff-proxy",
        "reportingInstance": node,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    });
    let result = match serde_json::from_value::<Event>(event) {
        Ok(ev) => Api::<Event>::namespaced(client, &p.object.namespace)
            .create(&PostParams::default(), &ev)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = result {
        tracing::warn!("recording the event for {}: {e}", p.object);
    }
}

/// Runs until the process ends; sync errors are logged and retried by the schedule.
pub async fn run<K: Kernel + 'static>(
    client: kube::Client,
    cfg: ProxyConfig,
    kernel: K,
) -> Result<(), ControllerError> {
    let notify = Arc::new(Notify::new());
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let (nodes, node_writer) = reflector::store::<Node>();
    tokio::spawn(feed(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        svc_writer,
        notify.clone(),
    ));
    tokio::spawn(feed(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        slice_writer,
        notify.clone(),
    ));
    tokio::spawn(feed(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", cfg.node_name)),
        node_writer,
        notify.clone(),
    ));
    // A first sync from half-filled stores would delete the rules of services not yet seen.
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;

    let mut proxier = Some(Proxier::new(kernel));
    let mut schedule = Schedule::new(cfg.pacing, Instant::now());
    let mut reported: BTreeSet<model::Problem> = BTreeSet::new();
    loop {
        match schedule.next(Instant::now()) {
            Step::Wait(d) => {
                tokio::select! {
                    _ = notify.notified() => schedule.changed(),
                    _ = tokio::time::sleep(d) => {}
                }
            }
            Step::Sync { full } => {
                let (model, problems) = snapshot(&cfg, &services, &slices, &nodes);
                // Each problem once while it lasts, not on every sync.
                let now: BTreeSet<model::Problem> = problems.into_iter().collect();
                for p in now.difference(&reported) {
                    tracing::warn!("service proxy: {p}");
                    tokio::spawn(record_event(
                        client.clone(),
                        cfg.node_name.clone(),
                        p.clone(),
                    ));
                }
                reported = now;
                let mut p = proxier.take().expect("proxier is returned after each sync");
                let (p, result) = tokio::task::spawn_blocking(move || {
                    let r = p.sync(&model, full);
                    (p, r)
                })
                .await?;
                proxier = Some(p);
                let ok = result.is_ok();
                match result {
                    Ok(r) => tracing::debug!(
                        full = r.full,
                        rules = r.rules,
                        bytes = r.restore_bytes,
                        render_ms = r.render.as_secs_f64() * 1e3,
                        restore_ms = r.restore.as_secs_f64() * 1e3,
                        "service proxy synced"
                    ),
                    Err(e) => tracing::error!("service proxy: {e}"),
                }
                schedule.synced(Instant::now(), full, ok);
            }
            Step::CheckCanary => {
                let mut p = proxier
                    .take()
                    .expect("proxier is returned after each check");
                let (p, present) = tokio::task::spawn_blocking(move || {
                    let r = p.canary_present();
                    (p, r)
                })
                .await?;
                proxier = Some(p);
                let present = match present {
                    Ok(present) => present,
                    Err(e) => {
                        tracing::warn!("service proxy: {e}");
                        false
                    }
                };
                if !present {
                    tracing::warn!(
                        "service proxy: canary chain gone (tables flushed?), restoring all rules"
                    );
                }
                schedule.canary_checked(Instant::now(), present);
            }
        }
    }
}
