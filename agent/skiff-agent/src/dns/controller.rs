//! Keeps the DNS table current: watches Services, EndpointSlices and Pods cluster-wide and
//! rebuilds the table from the three caches after each burst of changes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::{watch, Notify};

use super::records::{RecordsError, Table};

/// Changes closer together than this are folded into one rebuild: a rollout touching many
/// pods rebuilds the table a few times, not once per pod.
const COALESCE: Duration = Duration::from_millis(50);

/// Watches the cluster and publishes a new table into `tx` whenever it changes. The first table
/// goes out once all three lists have arrived; until then `tx` holds an unsynced table and
/// cluster names get SERVFAIL rather than a wrong NXDOMAIN.
pub async fn run(
    client: Client,
    domain: String,
    tx: watch::Sender<Arc<Table>>,
) -> Result<(), RecordsError> {
    // Fail on a bad domain before starting any watch.
    Table::unsynced(&domain)?;
    let changed = Arc::new(Notify::new());
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let feeds = futures::future::join3(
        feed(
            watcher(Api::<Service>::all(client.clone()), Default::default())
                .default_backoff()
                .reflect(svc_writer),
            changed.clone(),
        ),
        feed(
            watcher(
                Api::<EndpointSlice>::all(client.clone()),
                Default::default(),
            )
            .default_backoff()
            .reflect(slice_writer),
            changed.clone(),
        ),
        feed(
            watcher(Api::<Pod>::all(client), Default::default())
                .default_backoff()
                // Managed fields are most of a pod's bytes and nothing DNS needs.
                .modify(|p| p.metadata.managed_fields = None)
                .reflect(pod_writer),
            changed.clone(),
        ),
    );
    let rebuild = async {
        let ready = futures::future::join3(
            services.wait_until_ready(),
            slices.wait_until_ready(),
            pods.wait_until_ready(),
        )
        .await;
        if !matches!(ready, (Ok(()), Ok(()), Ok(()))) {
            return Ok(());
        }
        loop {
            let table = build(&domain, &services, &slices, &pods)?;
            tracing::debug!(names = table.len(), "cluster DNS table rebuilt");
            if tx.send(Arc::new(table)).is_err() {
                return Ok(());
            }
            changed.notified().await;
            tokio::time::sleep(COALESCE).await;
        }
    };
    tokio::select! {
        _ = feeds => Ok(()),
        r = rebuild => r,
    }
}

fn build(
    domain: &str,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    pods: &Store<Pod>,
) -> Result<Table, RecordsError> {
    let (services, slices, pods) = (services.state(), slices.state(), pods.state());
    Table::build(
        domain,
        &services.iter().map(Arc::as_ref).collect::<Vec<_>>(),
        &slices.iter().map(Arc::as_ref).collect::<Vec<_>>(),
        &pods.iter().map(Arc::as_ref).collect::<Vec<_>>(),
    )
}

/// Drives one reflector stream, waking the rebuilder on every change. Watch errors are retried
/// by the backoff; they are logged, the last good table keeps serving meanwhile.
async fn feed<K, S>(stream: S, changed: Arc<Notify>)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) | Ok(watcher::Event::InitApply(_)) => {}
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::warn!(error = %e, "cluster DNS: watch failed, retrying"),
        }
    }
}
