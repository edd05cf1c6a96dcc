//! Endpoints controller: for every Service with a selector, an `Endpoints` object of the same
//! name listing the pods behind it, grouped into subsets by port set as kube's controller does
//! (ready pods in `addresses`, not-ready ones in `notReadyAddresses`, terminating pods left out).
//!
//! Services and pods are followed through reflector stores fed by one watch each; every pod
//! event is mapped to the services whose selector matches the pod's labels (now or before), so
//! an Endpoints object follows a readiness change within that one watch event. Reconciles run
//! on kube-runtime's `applier` (the engine under `Controller`): never two at once for one
//! Service, failures requeued with a per-object exponential backoff.
//!
//! The small runtime helpers at the end of this file are shared with the EndpointSlice and
//! DaemonSet controllers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};

use crate::{podutil, Context, Error};

/// Label kube puts on the Endpoints objects its controller manages.
pub const MANAGED_BY_LABEL: &str = "endpoints.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "endpoint-controller";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (services, svc_writer) = reflector::store::<Service>();
    let (pods, pod_writer) = reflector::store::<Pod>();

    // Service events: reconcile the service itself; a deleted service takes its Endpoints
    // along; after every (re)list, Endpoints left behind by services deleted meanwhile go.
    let svc_ctx = ctx.clone();
    let svc_store = services.clone();
    let svc_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .filter_map(move |event| {
        let ctx = svc_ctx.clone();
        let store = svc_store.clone();
        async move {
            match event {
                Ok(watcher::Event::Apply(svc)) | Ok(watcher::Event::InitApply(svc)) => {
                    Some(Ok(ObjectRef::from_obj(&svc)))
                }
                Ok(watcher::Event::Delete(svc)) => {
                    tokio::spawn(delete_managed_endpoints(
                        ctx,
                        svc.namespace().unwrap_or_default(),
                        svc.name_any(),
                    ));
                    None
                }
                Ok(watcher::Event::InitDone) => {
                    tokio::spawn(remove_leftovers(ctx, store));
                    None
                }
                Ok(watcher::Event::Init) => None,
                Err(e) => Some(Err(e)),
            }
        }
    });

    // Pod events: the services selecting the pod now, and those that selected it before.
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .map(pods_to_services(services.clone()))
        .flat_map(futures::stream::iter);

    // Someone deleting a managed Endpoints object gets it back.
    let ep_events = watcher(
        Api::<Endpoints>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
    )
    .default_backoff()
    .filter_map(|event| async move {
        match event {
            Ok(watcher::Event::Delete(ep)) => Some(Ok(
                ObjectRef::new(&ep.name_any()).within(&ep.namespace().unwrap_or_default())
            )),
            _ => None,
        }
    });

    let queue =
        futures::stream::select_all([svc_events.boxed(), pod_events.boxed(), ep_events.boxed()])
            .boxed();
    let state = Arc::new(State {
        pods,
        pacer: Pacer::default(),
    });
    drive("endpoints", services, queue, ctx, move |svc, ctx| {
        let state = state.clone();
        Box::pin(async move { reconcile(svc, ctx, state).await })
    })
    .await;
}

struct State {
    pods: Store<Pod>,
    pacer: Pacer,
}

/// Writes for one Service at most every `MIN_WRITE_INTERVAL`: the first change after a quiet
/// spell is written at once; during a burst (a thousand pods becoming ready) a reconcile waits
/// out the interval before reading the pods, so everything that happened meanwhile goes into
/// one write (the applier holds further requests for the same Service until it returns).
#[derive(Default)]
pub(crate) struct Pacer {
    last: Mutex<HashMap<(String, String), Instant>>,
}

pub(crate) const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(100);

impl Pacer {
    pub(crate) async fn wait(&self, key: &(String, String)) {
        let last = self.last.lock().expect("pacer lock").get(key).copied();
        if let Some(wait) = last.and_then(|t| MIN_WRITE_INTERVAL.checked_sub(t.elapsed())) {
            tokio::time::sleep(wait).await;
        }
    }

    pub(crate) fn wrote(&self, key: (String, String)) {
        let mut last = self.last.lock().expect("pacer lock");
        // Forget quiet services now and then so the map does not grow without bound.
        if last.len() > 10_000 {
            last.retain(|_, t| t.elapsed() < MIN_WRITE_INTERVAL);
        }
        last.insert(key, Instant::now());
    }
}

async fn reconcile(
    svc: Arc<Service>,
    ctx: Arc<Context>,
    state: Arc<State>,
) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    if !manages(&svc) {
        return Ok(Action::await_change());
    }
    let key = (ns.clone(), name.clone());
    state.pacer.wait(&key).await;
    // The pod store must have been listed once, or a restart would empty every Endpoints.
    state
        .pods
        .wait_until_ready()
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let pods: Vec<Arc<Pod>> = state
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str()) && labels_match(&selector, p.labels())
        })
        .collect();
    let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let (subsets, truncated) = truncate(desired_subsets(&svc, &refs), MAX_ADDRESSES);
    let labels = desired_labels(&svc);

    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    match api.get_opt(&name).await? {
        Some(mut current) => {
            let current_subsets = current.subsets.clone().unwrap_or_default();
            let current_labels = current.metadata.labels.clone().unwrap_or_default();
            let marked = current.annotations().contains_key(OVER_CAPACITY_ANNOTATION);
            if current_subsets == subsets && current_labels == labels && marked == truncated {
                return Ok(Action::await_change());
            }
            current.subsets = Some(subsets).filter(|s| !s.is_empty());
            current.metadata.labels = Some(labels);
            set_over_capacity(&mut current.metadata, truncated);
            api.replace(&name, &PostParams::default(), &current).await?;
            state.pacer.wrote(key);
            tracing::debug!(service = %format!("{ns}/{name}"), "endpoints updated");
        }
        None => {
            let ep = Endpoints {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                subsets: Some(subsets).filter(|s| !s.is_empty()),
            };
            let mut ep = ep;
            set_over_capacity(&mut ep.metadata, truncated);
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => tracing::debug!(service = %format!("{ns}/{name}"), "endpoints created"),
                // Created meanwhile (by us before a restart, or by a user): compare next round.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(50)))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}

/// kube's cap on addresses in one Endpoints object; the rest is only in EndpointSlices.
pub const MAX_ADDRESSES: usize = 1000;
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";

fn set_over_capacity(meta: &mut kube::api::ObjectMeta, truncated: bool) {
    if truncated {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(OVER_CAPACITY_ANNOTATION.into(), "truncated".into());
    } else if let Some(a) = meta.annotations.as_mut() {
        a.remove(OVER_CAPACITY_ANNOTATION);
    }
}

/// Keeps at most `max` addresses, ready ones first (in subset order), then not-ready ones;
/// returns whether anything was cut.
pub fn truncate(mut subsets: Vec<EndpointSubset>, max: usize) -> (Vec<EndpointSubset>, bool) {
    let count = |v: &Option<Vec<EndpointAddress>>| v.as_ref().map_or(0, Vec::len);
    let total: usize = subsets
        .iter()
        .map(|s| count(&s.addresses) + count(&s.not_ready_addresses))
        .sum();
    if total <= max {
        return (subsets, false);
    }
    let mut budget = max;
    for s in subsets.iter_mut() {
        if let Some(a) = s.addresses.as_mut() {
            a.truncate(budget);
            budget -= a.len();
        }
    }
    for s in subsets.iter_mut() {
        if let Some(a) = s.not_ready_addresses.as_mut() {
            a.truncate(budget);
            budget -= a.len();
        }
    }
    for s in subsets.iter_mut() {
        s.addresses = s.addresses.take().filter(|a| !a.is_empty());
        s.not_ready_addresses = s.not_ready_addresses.take().filter(|a| !a.is_empty());
    }
    subsets.retain(|s| s.addresses.is_some() || s.not_ready_addresses.is_some());
    (subsets, true)
}

/// Whether this controller owns the Endpoints of `svc`: services with a selector, except the
/// API server's own `default/kubernetes`.
pub fn manages(svc: &Service) -> bool {
    let is_apiserver =
        svc.namespace().as_deref() == Some("default") && svc.name_any() == "kubernetes";
    !is_apiserver
        && svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some()
}

/// A Service selector (a plain map) against pod labels. An empty selector selects nothing here
/// (kube treats `selector: {}` as "no selector" for endpoints).
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn desired_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    let headless = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_none_or(|ip| ip.is_empty() || ip == "None");
    if headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    // Its EndpointSlices come from the endpointslice controller, not from mirroring.
    labels.insert(
        "endpointslice.kubernetes.io/skip-mirror".into(),
        "true".into(),
    );
    labels
}

/// The container port a service port reaches on `pod`: `targetPort` as a number, or by name
/// (and protocol) among the pod's container ports; `None` when the pod has no such named port.
pub fn resolve_target_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => {
                let spec = pod.spec.as_ref()?;
                // Regular containers, and restartable init containers (sidecars) as kube does.
                let sidecars = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .filter(|c| c.restart_policy.as_deref() == Some("Always"));
                spec.containers
                    .iter()
                    .chain(sidecars)
                    .flat_map(|c| c.ports.iter().flatten())
                    .find_map(|p| {
                        let same_protocol = p.protocol.as_deref().unwrap_or("TCP") == protocol;
                        (p.name.as_deref() == Some(s.as_str()) && same_protocol)
                            .then_some(p.container_port)
                    })
            }
        },
    }
}

/// A pod's IP, when it has one.
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
}

/// Whether a finished pod can still serve, by its restart policy (kube's ShouldPodBeInEndpoints).
pub fn may_serve(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    let restart = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    match restart {
        "Never" => phase != "Failed" && phase != "Succeeded",
        "OnFailure" => phase != "Succeeded",
        _ => true,
    }
}

/// The pod's DNS hostname under this service, when the pod asked for one (`hostname` and a
/// `subdomain` naming the service).
pub fn pod_hostname(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str())
        && pod.namespace() == svc.namespace())
    .then(|| hostname.to_string())
}

pub fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.uid(),
        ..Default::default()
    }
}

/// kube's Endpoints for `svc` from the pods its selector matches: one address per pod with an
/// IP, ports resolved per pod, subsets grouped by identical port sets, everything sorted.
pub fn desired_subsets(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let service_ports = spec.ports.unwrap_or_default();

    // address (ip, uid) → (address, ready, ports)
    let mut by_address: BTreeMap<(String, String), (EndpointAddress, bool, BTreeSet<PortKey>)> =
        BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod_ip(pod) else { continue };
        if podutil::is_terminating(pod) && !publish_not_ready {
            continue;
        }
        let ready = publish_not_ready || podutil::is_ready(pod);
        if !ready && !may_serve(pod) {
            continue;
        }
        let address = EndpointAddress {
            ip: ip.to_string(),
            hostname: pod_hostname(pod, svc),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(pod_reference(pod)),
        };
        let key = (ip.to_string(), pod.uid().unwrap_or_default());
        if service_ports.is_empty() {
            // Headless services without ports still list their pods.
            if headless {
                by_address
                    .entry(key)
                    .or_insert_with(|| (address, ready, BTreeSet::new()));
            }
            continue;
        }
        for sp in &service_ports {
            let Some(number) = resolve_target_port(pod, sp) else {
                continue;
            };
            let port = PortKey {
                name: sp.name.clone().unwrap_or_default(),
                port: number,
                protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                app_protocol: sp.app_protocol.clone(),
            };
            by_address
                .entry(key.clone())
                .or_insert_with(|| (address.clone(), ready, BTreeSet::new()))
                .2
                .insert(port);
        }
    }

    // Group addresses by their port sets (kube's RepackSubsets).
    let mut groups: BTreeMap<BTreeSet<PortKey>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for (_, (address, ready, ports)) in by_address {
        let entry = groups.entry(ports).or_default();
        if ready {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: Some(ready).filter(|a| !a.is_empty()),
            not_ready_addresses: Some(not_ready).filter(|a| !a.is_empty()),
            ports: Some(
                ports
                    .into_iter()
                    .map(PortKey::into_endpoint_port)
                    .collect::<Vec<_>>(),
            )
            .filter(|p| !p.is_empty()),
        })
        .collect()
}

/// One resolved port, ordered by name then number for stable output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub name: String,
    pub port: i32,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

impl PortKey {
    fn into_endpoint_port(self) -> EndpointPort {
        EndpointPort {
            name: Some(self.name).filter(|n| !n.is_empty()),
            port: self.port,
            protocol: Some(self.protocol),
            app_protocol: self.app_protocol,
        }
    }
}

async fn delete_managed_endpoints(ctx: Arc<Context>, ns: String, name: String) {
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    match api.get_opt(&name).await {
        Ok(Some(ep))
            if ep.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE) =>
        {
            if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                tracing::debug!(endpoints = %format!("{ns}/{name}"), error = %e, "deleting endpoints failed");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(endpoints = %format!("{ns}/{name}"), error = %e, "reading endpoints failed")
        }
    }
}

/// Managed Endpoints whose Service is gone (deleted while this controller was not watching).
async fn remove_leftovers(ctx: Arc<Context>, services: Store<Service>) {
    let api: Api<Endpoints> = Api::all(ctx.client.clone());
    let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let Ok(list) = api.list(&lp).await else {
        return;
    };
    for ep in list {
        let ns = ep.namespace().unwrap_or_default();
        let svc_ref = ObjectRef::<Service>::new(&ep.name_any()).within(&ns);
        if services.get(&svc_ref).is_none() {
            delete_managed_endpoints(ctx.clone(), ns, ep.name_any()).await;
        }
    }
}

pub(crate) type PodEvent = Result<watcher::Event<Pod>, watcher::Error>;
pub(crate) type ServiceTrigger = Result<ObjectRef<Service>, watcher::Error>;

/// A pod stream mapper: each pod event becomes the services that select the pod now plus those
/// that selected it at its previous event (labels can change), remembered per pod.
pub(crate) fn pods_to_services(
    services: Store<Service>,
) -> impl FnMut(PodEvent) -> Vec<ServiceTrigger> {
    let mut previous: HashMap<(String, String), Vec<ObjectRef<Service>>> = HashMap::new();
    move |event| {
        let (pod, deleted) = match event {
            Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => (p, false),
            Ok(watcher::Event::Delete(p)) => (p, true),
            // After a relist, pods deleted meanwhile never got a Delete: look at every service.
            Ok(watcher::Event::InitDone) => {
                return services
                    .state()
                    .iter()
                    .map(|s| Ok(ObjectRef::from_obj(s.as_ref())))
                    .collect()
            }
            Ok(_) => return Vec::new(),
            Err(e) => return vec![Err(e)],
        };
        let ns = pod.namespace().unwrap_or_default();
        let key = (ns.clone(), pod.name_any());
        let now: Vec<ObjectRef<Service>> = services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
            .filter(|s| {
                let selector = s.spec.as_ref().and_then(|sp| sp.selector.as_ref());
                selector.is_some_and(|sel| labels_match(sel, pod.labels()))
            })
            .map(|s| ObjectRef::from_obj(s.as_ref()))
            .collect();
        let before = if deleted {
            previous.remove(&key)
        } else {
            previous.insert(key, now.clone())
        };
        let mut all = now;
        for r in before.unwrap_or_default() {
            if !all.contains(&r) {
                all.push(r);
            }
        }
        all.into_iter().map(Ok).collect()
    }
}

// ---- runtime helpers shared by this module's siblings ----

pub(crate) type Queue<K> = BoxStream<'static, Result<ObjectRef<K>, watcher::Error>>;
pub(crate) type ReconcileFuture = Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

/// Per-object failure counts: 100 ms doubling to 60 s, reset by a successful reconcile.
struct Backoff<K: Resource<DynamicType = ()>> {
    failures: Mutex<HashMap<ObjectRef<K>, u32>>,
}

impl<K: Resource<DynamicType = ()>> Backoff<K>
where
    ObjectRef<K>: Hash + Eq,
{
    fn next(&self, obj: ObjectRef<K>) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock");
        let n = failures.entry(obj).or_insert(0);
        *n = (*n + 1).min(20);
        Duration::from_millis(100u64.saturating_mul(1 << (*n - 1).min(10)))
            .min(Duration::from_secs(60))
    }

    fn reset(&self, obj: &ObjectRef<K>) {
        self.failures.lock().expect("backoff lock").remove(obj);
    }
}

/// Runs `reconcile` for every object ref the queue yields, through kube-runtime's applier: one
/// reconcile per object at a time, requests for a busy object held until it is free, errors
/// requeued with backoff. Returns when the queue ends (never, for watch streams).
pub(crate) async fn drive<K, F>(
    name: &'static str,
    store: Store<K>,
    queue: Queue<K>,
    ctx: Arc<Context>,
    mut reconcile: F,
) where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    F: FnMut(Arc<K>, Arc<Context>) -> ReconcileFuture,
{
    let backoff = Arc::new(Backoff::<K> {
        failures: Mutex::new(HashMap::new()),
    });
    let on_error = backoff.clone();
    let error_policy = move |obj: Arc<K>, err: &Error, _ctx: Arc<Context>| {
        let r = ObjectRef::from_obj(obj.as_ref());
        let delay = on_error.next(r.clone());
        tracing::warn!(controller = name, object = %r, error = %err, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    };
    let reconciler = move |obj: Arc<K>, ctx: Arc<Context>| -> ReconcileFuture {
        let backoff = backoff.clone();
        let r = ObjectRef::from_obj(obj.as_ref());
        let fut = reconcile(obj, ctx);
        Box::pin(async move {
            let out = fut.await;
            if out.is_ok() {
                backoff.reset(&r);
            }
            out
        })
    };
    tracing::info!(controller = name, "started");
    controller::applier(
        reconciler,
        error_policy,
        ctx,
        store,
        queue,
        controller::Config::default().concurrency(8),
    )
    .for_each(|res| async move {
        if let Err(e) = res {
            match e {
                controller::Error::ObjectNotFound(_) => {}
                other => tracing::debug!(controller = name, error = %other, "controller queue"),
            }
        }
    })
    .await;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20", "ports": ports}
        }))
        .unwrap()
    }

    pub(crate) fn pod(
        name: &str,
        ip: &str,
        ready: bool,
        terminating: bool,
        ports: serde_json::Value,
    ) -> Pod {
        let mut meta = json!({"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"}});
        if terminating {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn ready_and_not_ready_addresses_terminating_left_out() {
        let svc =
            service(json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]));
        let a = pod("a", "10.244.0.2", true, false, json!([]));
        let b = pod("b", "10.244.0.3", false, false, json!([]));
        let c = pod("c", "10.244.0.4", true, true, json!([]));
        let no_ip = pod("d", "", true, false, json!([]));
        let subsets = desired_subsets(&svc, &[&a, &b, &c, &no_ip]);
        assert_eq!(subsets.len(), 1);
        let s = &subsets[0];
        let ips = |v: &Option<Vec<EndpointAddress>>| {
            v.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ips(&s.addresses), vec!["10.244.0.2"]);
        assert_eq!(ips(&s.not_ready_addresses), vec!["10.244.0.3"]);
        let addr = &s.addresses.as_ref().unwrap()[0];
        assert_eq!(addr.node_name.as_deref(), Some("n1"));
        assert_eq!(addr.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
        assert_eq!(s.ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(s.ports.as_ref().unwrap()[0].name.as_deref(), Some("http"));
    }

    #[test]
    fn named_ports_resolve_per_pod_and_group_subsets() {
        let svc =
            service(json!([{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]));
        let a = pod(
            "a",
            "10.244.0.2",
            true,
            false,
            json!([{"name": "web", "containerPort": 8080}]),
        );
        let b = pod(
            "b",
            "10.244.0.3",
            true,
            false,
            json!([{"name": "web", "containerPort": 9090}]),
        );
        let c = pod(
            "c",
            "10.244.0.4",
            true,
            false,
            json!([{"name": "other", "containerPort": 7070}]),
        );
        let udp = pod(
            "u",
            "10.244.0.5",
            true,
            false,
            json!([{"name": "web", "containerPort": 6060, "protocol": "UDP"}]),
        );
        let subsets = desired_subsets(&svc, &[&a, &b, &c, &udp]);
        let mut seen: Vec<(i32, Vec<String>)> = subsets
            .iter()
            .map(|s| {
                (
                    s.ports.as_ref().unwrap()[0].port,
                    s.addresses.iter().flatten().map(|a| a.ip.clone()).collect(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (8080, vec!["10.244.0.2".to_string()]),
                (9090, vec!["10.244.0.3".to_string()])
            ]
        );
    }

    #[test]
    fn same_ports_share_a_subset_and_hostnames_need_the_subdomain() {
        let svc = service(
            json!([{"name": "a", "port": 80, "targetPort": 80}, {"name": "b", "port": 81, "targetPort": 81}]),
        );
        let mut p1 = pod("p1", "10.244.0.3", true, false, json!([]));
        let p2 = pod("p2", "10.244.0.2", false, false, json!([]));
        p1.spec.as_mut().unwrap().hostname = Some("h1".into());
        p1.spec.as_mut().unwrap().subdomain = Some("web".into());
        let subsets = desired_subsets(&svc, &[&p1, &p2]);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0].ports.as_ref().unwrap().len(), 2);
        assert_eq!(
            subsets[0].addresses.as_ref().unwrap()[0]
                .hostname
                .as_deref(),
            Some("h1")
        );
        assert_eq!(
            subsets[0].not_ready_addresses.as_ref().unwrap()[0].hostname,
            None
        );
        // publishNotReadyAddresses: everything ready, terminating included.
        let mut publish = svc.clone();
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let p3 = pod("p3", "10.244.0.4", false, true, json!([]));
        let subsets = desired_subsets(&publish, &[&p1, &p2, &p3]);
        assert_eq!(subsets[0].addresses.as_ref().unwrap().len(), 3);
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn which_services_are_managed() {
        let svc = service(json!([]));
        assert!(manages(&svc));
        let mut no_selector = svc.clone();
        no_selector.spec.as_mut().unwrap().selector = None;
        assert!(!manages(&no_selector));
        let mut apiserver = svc.clone();
        apiserver.metadata.name = Some("kubernetes".into());
        apiserver.metadata.namespace = Some("default".into());
        assert!(!manages(&apiserver));
        assert!(!labels_match(&BTreeMap::new(), &BTreeMap::new()));
        let labels = desired_labels(&svc);
        assert_eq!(
            labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY_VALUE)
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert!(!labels.contains_key(HEADLESS_LABEL));
    }

    #[test]
    fn over_capacity_keeps_ready_addresses_first() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": 80}]));
        let all: Vec<Pod> = (0..8)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    &format!("10.244.0.{}", i + 2),
                    i % 2 == 0,
                    false,
                    json!([]),
                )
            })
            .collect();
        let refs: Vec<&Pod> = all.iter().collect();
        let (subsets, cut) = truncate(desired_subsets(&svc, &refs), 5);
        assert!(cut);
        assert_eq!(subsets[0].addresses.as_ref().unwrap().len(), 4);
        assert_eq!(subsets[0].not_ready_addresses.as_ref().unwrap().len(), 1);
        let (_, cut) = truncate(desired_subsets(&svc, &refs), 8);
        assert!(!cut);
    }

    #[test]
    fn headless_without_ports_lists_pods() {
        let mut svc = service(json!(null));
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let a = pod("a", "10.244.0.2", true, false, json!([]));
        let subsets = desired_subsets(&svc, &[&a]);
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].ports.is_none());
        assert!(desired_labels(&svc).contains_key(HEADLESS_LABEL));
    }
}
