//! EndpointSlice controller: `discovery.k8s.io/v1` EndpointSlices for every Service with a
//! selector, as kube's endpointslice-controller writes them: one slice family per port set,
//! at most 100 endpoints per slice, terminating pods kept with `ready=false`, `serving` from
//! the pod's readiness, an owner reference to the Service (so the garbage collector removes
//! them with it) and stale slices deleted.
//!
//! The same task mirrors the Endpoints a user writes for a Service without a selector into
//! EndpointSlices (kube's endpointslicemirroring-controller), so that slice consumers see them.
//!
//! Triggers are the same as the Endpoints controller's (services, pods mapped by selector, a
//! managed slice deleted by someone else); existing slices are read from the API server at
//! each reconcile, which reads its own writes, so a slice just created is never duplicated.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use crate::endpoints::{
    drive, labels_match, manages, may_serve, pod_hostname, pod_ip, pod_reference, pods_to_services,
    resolve_target_port, Pacer, PortKey,
};
use crate::{podutil, Context, Error};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "endpointslice-controller.k8s.io";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// kube-controller-manager's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (services, svc_writer) = reflector::store::<Service>();
    let (pods, pod_writer) = reflector::store::<Pod>();

    let svc_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .filter_map(|event| async move {
        match event {
            Ok(watcher::Event::Apply(svc)) | Ok(watcher::Event::InitApply(svc)) => {
                Some(Ok(ObjectRef::from_obj(&svc)))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    });
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(pod_writer)
        .map(pods_to_services(services.clone()))
        .flat_map(futures::stream::iter);
    let slice_events = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
    )
    .default_backoff()
    .filter_map(|event| async move {
        match event {
            Ok(watcher::Event::Delete(slice)) => {
                let svc = slice.labels().get(SERVICE_NAME_LABEL)?.clone();
                Some(Ok(
                    ObjectRef::new(&svc).within(&slice.namespace().unwrap_or_default())
                ))
            }
            _ => None,
        }
    });

    let queue =
        futures::stream::select_all([svc_events.boxed(), pod_events.boxed(), slice_events.boxed()])
            .boxed();
    let pacer = Arc::new(Pacer::default());
    // Nodes only for each endpoint's zone (their label `topology.kubernetes.io/zone`).
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_feed = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .for_each(|_| async {});
    let zones = Arc::new(Zones { nodes });
    let slices = drive(
        "endpointslice",
        services,
        queue,
        ctx.clone(),
        move |svc, ctx| {
            let pods = pods.clone();
            let pacer = pacer.clone();
            let zones = zones.clone();
            Box::pin(async move { reconcile(svc, ctx, pods, pacer, zones).await })
        },
    );
    tokio::join!(slices, run_mirroring(ctx), node_feed);
}

// ---- mirroring: selector-less services with hand-written Endpoints ----

pub const MIRROR_MANAGED_BY_VALUE: &str = "endpointslicemirroring-controller.k8s.io";
/// An Endpoints object with this label set to "true" is not mirrored (the endpoints
/// controller and the API server mark theirs).
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// kube's `--mirroring-max-endpoints-per-subset`.
pub const MIRROR_MAX_ENDPOINTS: usize = 1000;

/// kube's endpointslicemirroring-controller: the Endpoints a user writes for a Service without
/// a selector are mirrored into EndpointSlices (owned by the Endpoints), so that consumers of
/// slices (service proxies) see them too.
async fn run_mirroring(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (endpoints, ep_writer) = reflector::store::<Endpoints>();
    let (services, svc_writer) = reflector::store::<Service>();
    let ep_events = watcher(
        Api::<Endpoints>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(ep_writer)
    .filter_map(|event| async move {
        match event {
            Ok(watcher::Event::Apply(ep)) | Ok(watcher::Event::InitApply(ep)) => {
                Some(Ok(ObjectRef::from_obj(&ep)))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    });
    let same_name = |namespace: Option<String>, name: String| {
        ObjectRef::<Endpoints>::new(&name).within(&namespace.unwrap_or_default())
    };
    let svc_events = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .filter_map(move |event| async move {
        match event {
            Ok(watcher::Event::Apply(svc))
            | Ok(watcher::Event::InitApply(svc))
            | Ok(watcher::Event::Delete(svc)) => {
                Some(Ok(same_name(svc.namespace(), svc.name_any())))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    });
    let slice_events = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MIRROR_MANAGED_BY_VALUE}")),
    )
    .default_backoff()
    .filter_map(move |event| async move {
        match event {
            Ok(watcher::Event::Delete(slice)) => {
                let name = slice.labels().get(SERVICE_NAME_LABEL)?.clone();
                Some(Ok(same_name(slice.namespace(), name)))
            }
            _ => None,
        }
    });
    let queue =
        futures::stream::select_all([ep_events.boxed(), svc_events.boxed(), slice_events.boxed()])
            .boxed();
    drive(
        "endpointslicemirroring",
        endpoints,
        queue,
        ctx,
        move |ep, ctx| {
            let services = services.clone();
            Box::pin(async move { reconcile_mirror(ep, ctx, services).await })
        },
    )
    .await;
}

/// Whether `ep` is mirrored: its Service exists without a selector, and nobody opted out.
pub fn should_mirror(ep: &Endpoints, svc: Option<&Service>) -> bool {
    let skip = ep.labels().get(SKIP_MIRROR_LABEL).map(String::as_str) == Some("true");
    let selectorless = svc.is_some_and(|s| {
        s.spec
            .as_ref()
            .and_then(|sp| sp.selector.as_ref())
            .is_none()
    });
    selectorless && !skip
}

async fn reconcile_mirror(
    ep: Arc<Endpoints>,
    ctx: Arc<Context>,
    services: Store<Service>,
) -> Result<Action, Error> {
    services
        .wait_until_ready()
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let ns = ep.namespace().unwrap_or_default();
    let name = ep.name_any();
    let svc = services.get(&ObjectRef::new(&name).within(&ns));
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!(
        "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MIRROR_MANAGED_BY_VALUE}"
    ));
    let existing = api.list(&lp).await?.items;
    let groups = if should_mirror(&ep, svc.as_deref()) {
        mirrored_endpoints(&ep)
    } else {
        BTreeMap::new()
    };
    let mut labels = ep.labels().clone();
    labels.remove(SKIP_MIRROR_LABEL);
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MIRROR_MANAGED_BY_VALUE.into());
    let owner = SliceOwner {
        prefix: name.clone(),
        namespace: Some(ns.clone()),
        labels,
        reference: podutil::owner_reference(ep.as_ref()),
        placeholder: false,
    };
    let plan = plan_slices_for(&owner, groups, existing, MIRROR_MAX_ENDPOINTS);
    if !plan.is_empty() {
        apply_plan(&api, &plan).await?;
        tracing::debug!(endpoints = %format!("{ns}/{name}"), "mirrored endpointslices synced");
    }
    Ok(Action::await_change())
}

/// The slices' content for a hand-written Endpoints object: each subset's addresses (ready)
/// and notReadyAddresses (not ready) under the subset's ports; IPv4 only.
pub fn mirrored_endpoints(ep: &Endpoints) -> BTreeMap<BTreeSet<PortKey>, Vec<Endpoint>> {
    let mut groups: BTreeMap<BTreeSet<PortKey>, Vec<Endpoint>> = BTreeMap::new();
    for subset in ep.subsets.iter().flatten() {
        let ports: BTreeSet<PortKey> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| PortKey {
                name: p.name.clone().unwrap_or_default(),
                port: p.port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let ready = subset.addresses.iter().flatten().map(|a| (a, true));
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| (a, false));
        let group = groups.entry(ports).or_default();
        for (address, is_ready) in ready.chain(not_ready) {
            if address.ip.contains(':') || group.iter().any(|e| e.addresses[0] == address.ip) {
                continue;
            }
            group.push(Endpoint {
                addresses: vec![address.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(is_ready),
                    serving: None,
                    terminating: None,
                }),
                hostname: address.hostname.clone(),
                node_name: address.node_name.clone(),
                target_ref: address.target_ref.clone(),
                ..Default::default()
            });
        }
    }
    groups.retain(|_, v| !v.is_empty());
    groups
}

async fn reconcile(
    svc: Arc<Service>,
    ctx: Arc<Context>,
    pods: Store<Pod>,
    pacer: Arc<Pacer>,
    zones: Arc<Zones>,
) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    if !manages(&svc) {
        return Ok(Action::await_change());
    }
    let key = (ns.clone(), name.clone());
    pacer.wait(&key).await;
    pods.wait_until_ready()
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let selected: Vec<Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str()) && labels_match(&selector, p.labels())
        })
        .collect();
    let refs: Vec<&Pod> = selected.iter().map(|p| p.as_ref()).collect();
    let groups = desired_endpoints_in_zones(&svc, &refs, &zones.map().await);

    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!(
        "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
    ));
    let existing = api.list(&lp).await?.items;
    let plan = plan_slices(&svc, groups, existing, MAX_ENDPOINTS_PER_SLICE);
    if plan.is_empty() {
        return Ok(Action::await_change());
    }
    apply_plan(&api, &plan).await?;
    pacer.wrote(key);
    tracing::debug!(
        service = %format!("{ns}/{name}"),
        created = plan.create.len(),
        updated = plan.update.len(),
        deleted = plan.delete.len(),
        "endpointslices synced"
    );
    Ok(Action::await_change())
}

async fn apply_plan(api: &Api<EndpointSlice>, plan: &SlicePlan) -> Result<(), Error> {
    for slice in &plan.create {
        api.create(&PostParams::default(), slice).await?;
    }
    for slice in &plan.update {
        api.replace(&slice.name_any(), &PostParams::default(), slice)
            .await?;
    }
    for slice in &plan.delete {
        match api.delete(slice, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

struct Zones {
    nodes: Store<Node>,
}

impl Zones {
    /// node name → zone, for nodes that have one.
    async fn map(&self) -> BTreeMap<String, String> {
        // Give the first node list a moment; without it endpoints merely lack their zone.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            self.nodes.wait_until_ready(),
        )
        .await;
        self.nodes
            .state()
            .iter()
            .filter_map(|n| Some((n.name_any(), n.labels().get(ZONE_LABEL)?.clone())))
            .collect()
    }
}

/// The endpoints a service should have, grouped by the set of ports they resolve to (ports
/// belong to a slice, not an endpoint). Each group's endpoints are sorted by pod name.
pub fn desired_endpoints(
    svc: &Service,
    pods: &[&Pod],
) -> BTreeMap<BTreeSet<PortKey>, Vec<Endpoint>> {
    desired_endpoints_in_zones(svc, pods, &BTreeMap::new())
}

/// `desired_endpoints` with each endpoint's zone taken from its node (`zones`: node → zone).
pub fn desired_endpoints_in_zones(
    svc: &Service,
    pods: &[&Pod],
    zones: &BTreeMap<String, String>,
) -> BTreeMap<BTreeSet<PortKey>, Vec<Endpoint>> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports = spec.ports.unwrap_or_default();
    let mut sorted: Vec<&Pod> = pods.to_vec();
    sorted.sort_by_key(|p| p.name_any());
    let mut groups: BTreeMap<BTreeSet<PortKey>, Vec<Endpoint>> = BTreeMap::new();
    for pod in sorted {
        let Some(ip) = pod_ip(pod) else { continue };
        // IPv4 slices only for now; an IPv6 pod address belongs in an IPv6 slice.
        if ip.contains(':') || !may_serve(pod) {
            continue;
        }
        let serving = podutil::is_ready(pod);
        let terminating = podutil::is_terminating(pod);
        let ready = publish_not_ready || (serving && !terminating);
        let ports: BTreeSet<PortKey> = service_ports
            .iter()
            .filter_map(|sp| {
                Some(PortKey {
                    name: sp.name.clone().unwrap_or_default(),
                    port: resolve_target_port(pod, sp)?,
                    protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let endpoint = Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: pod_hostname(pod, svc),
            node_name: node.clone(),
            zone: node.as_ref().and_then(|n| zones.get(n).cloned()),
            target_ref: Some(pod_reference(pod)),
            ..Default::default()
        };
        groups.entry(ports).or_default().push(endpoint);
    }
    groups
}

/// What to write to make the existing slices of a service hold `groups`.
#[derive(Debug, Default)]
pub struct SlicePlan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<String>,
}

impl SlicePlan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

fn endpoint_id(ep: &Endpoint) -> String {
    ep.target_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_else(|| ep.addresses.join(","))
}

fn slice_ports(slice: &EndpointSlice) -> BTreeSet<PortKey> {
    slice
        .ports
        .iter()
        .flatten()
        .map(|p| PortKey {
            name: p.name.clone().unwrap_or_default(),
            port: p.port.unwrap_or_default(),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            app_protocol: p.app_protocol.clone(),
        })
        .collect()
}

fn to_slice_ports(ports: &BTreeSet<PortKey>) -> Option<Vec<EndpointPort>> {
    Some(
        ports
            .iter()
            .map(|p| EndpointPort {
                name: Some(p.name.clone()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone()),
                app_protocol: p.app_protocol.clone(),
            })
            .collect::<Vec<_>>(),
    )
    .filter(|p| !p.is_empty())
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
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
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels
}

/// Places the desired endpoints into slices, moving as little as possible: endpoints stay in
/// the slice that holds them (updated in place), new ones fill slices with room before new
/// slices are created, slices left empty or of a port set no longer wanted are deleted. A
/// service without any endpoint keeps one empty placeholder slice, as kube's does.
pub fn plan_slices(
    svc: &Service,
    groups: BTreeMap<BTreeSet<PortKey>, Vec<Endpoint>>,
    existing: Vec<EndpointSlice>,
    max: usize,
) -> SlicePlan {
    let owner = SliceOwner {
        prefix: svc.name_any(),
        namespace: svc.namespace(),
        labels: slice_labels(svc),
        reference: podutil::owner_reference(svc),
        placeholder: true,
    };
    plan_slices_for(&owner, groups, existing, max)
}

/// Who a family of slices belongs to and what they carry.
pub struct SliceOwner {
    /// generateName prefix (without the dash).
    pub prefix: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub reference: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    /// Keep one empty slice when there is no endpoint at all.
    pub placeholder: bool,
}

/// `plan_slices` for any owner (a Service, or mirrored Endpoints).
pub fn plan_slices_for(
    owner_info: &SliceOwner,
    mut groups: BTreeMap<BTreeSet<PortKey>, Vec<Endpoint>>,
    mut existing: Vec<EndpointSlice>,
    max: usize,
) -> SlicePlan {
    let max = max.max(1);
    let mut plan = SlicePlan::default();
    let labels = owner_info.labels.clone();
    if groups.is_empty() && owner_info.placeholder {
        groups.insert(BTreeSet::new(), Vec::new());
    }
    existing.sort_by_key(|s| s.name_any());
    let mut by_ports: BTreeMap<BTreeSet<PortKey>, Vec<EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        let ports = slice_ports(&slice);
        if slice.address_type != "IPv4" || !groups.contains_key(&ports) {
            plan.delete.push(slice.name_any());
        } else {
            by_ports.entry(ports).or_default().push(slice);
        }
    }
    let owner = owner_info.reference.clone();
    let ns = owner_info.namespace.clone();
    for (ports, endpoints) in groups {
        let wanted: BTreeMap<String, &Endpoint> =
            endpoints.iter().map(|e| (endpoint_id(e), e)).collect();
        let mut placed: HashSet<String> = HashSet::new();
        let slices = by_ports.remove(&ports).unwrap_or_default();
        // Keep what is still wanted where it is.
        let mut contents: Vec<Vec<Endpoint>> = slices
            .iter()
            .map(|s| {
                s.endpoints
                    .iter()
                    .filter_map(|e| {
                        let id = endpoint_id(e);
                        let desired = wanted.get(&id)?;
                        placed.insert(id).then(|| (*desired).clone())
                    })
                    .collect()
            })
            .collect();
        // New endpoints fill slices with room, then new slices.
        let mut unplaced = endpoints
            .iter()
            .filter(|e| !placed.contains(&endpoint_id(e)))
            .cloned();
        for content in contents.iter_mut() {
            while content.len() < max {
                match unplaced.next() {
                    Some(e) => content.push(e),
                    None => break,
                }
            }
        }
        let rest: Vec<Endpoint> = unplaced.collect();
        let mut fresh: Vec<Vec<Endpoint>> = rest.chunks(max).map(<[Endpoint]>::to_vec).collect();
        let any_endpoints = !endpoints.is_empty();
        let mut kept = 0;
        for (i, (mut slice, content)) in slices.into_iter().zip(contents).enumerate() {
            // An empty slice is only kept as the placeholder of an empty service.
            if content.is_empty() && (any_endpoints || i > 0) {
                plan.delete.push(slice.name_any());
                continue;
            }
            kept += 1;
            let ports_now = to_slice_ports(&ports);
            let owned = slice
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|refs| refs.iter().any(|r| r.uid == owner.uid));
            let changed = slice.endpoints != content
                || slice.ports != ports_now
                || slice.metadata.labels.as_ref() != Some(&labels)
                || !owned;
            if changed {
                slice.endpoints = content;
                slice.ports = ports_now;
                slice.metadata.labels = Some(labels.clone());
                if !owned {
                    slice.metadata.owner_references = Some(vec![owner.clone()]);
                }
                plan.update.push(slice);
            }
        }
        if fresh.is_empty() && !any_endpoints && kept == 0 {
            fresh.push(Vec::new());
        }
        for content in fresh {
            plan.create.push(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", owner_info.prefix)),
                    namespace: ns.clone(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: content,
                ports: to_slice_ports(&ports),
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::tests::{pod, service};
    use serde_json::json;

    fn pods(n: usize) -> Vec<Pod> {
        (0..n)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &format!("10.244.{}.{}", i / 200, i % 200 + 2),
                    true,
                    false,
                    json!([]),
                )
            })
            .collect()
    }

    /// Applies a plan to a fake list of slices, naming created ones.
    fn apply(
        existing: Vec<EndpointSlice>,
        plan: SlicePlan,
        counter: &mut usize,
    ) -> Vec<EndpointSlice> {
        let mut out: Vec<EndpointSlice> = existing
            .into_iter()
            .filter(|s| !plan.delete.contains(&s.name_any()))
            .collect();
        for u in plan.update {
            let i = out
                .iter()
                .position(|s| s.name_any() == u.name_any())
                .unwrap();
            out[i] = u;
        }
        for mut c in plan.create {
            *counter += 1;
            c.metadata.name = Some(format!("web-{counter}"));
            out.push(c);
        }
        out
    }

    #[test]
    fn conditions_follow_kube() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": 8080}]));
        let ready = pod("a", "10.244.0.2", true, false, json!([]));
        let unready = pod("b", "10.244.0.3", false, false, json!([]));
        let terminating = pod("c", "10.244.0.4", true, true, json!([]));
        let groups = desired_endpoints(&svc, &[&ready, &unready, &terminating]);
        let eps = groups.values().next().unwrap();
        let cond = |i: usize| eps[i].conditions.clone().unwrap();
        assert_eq!(
            (cond(0).ready, cond(0).serving, cond(0).terminating),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(
            (cond(1).ready, cond(1).serving, cond(1).terminating),
            (Some(false), Some(false), Some(false))
        );
        assert_eq!(
            (cond(2).ready, cond(2).serving, cond(2).terminating),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(eps[0].node_name.as_deref(), Some("n1"));
        let zones = BTreeMap::from([("n1".to_string(), "zone-a".to_string())]);
        let zoned = desired_endpoints_in_zones(&svc, &[&ready], &zones);
        assert_eq!(
            zoned.values().next().unwrap()[0].zone.as_deref(),
            Some("zone-a")
        );
        assert_eq!(
            eps[0].target_ref.as_ref().unwrap().kind.as_deref(),
            Some("Pod")
        );
    }

    #[test]
    fn slices_hold_at_most_max_and_are_stable() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": 8080}]));
        let all = pods(250);
        let refs: Vec<&Pod> = all.iter().collect();
        let mut n = 0;
        let plan = plan_slices(&svc, desired_endpoints(&svc, &refs), vec![], 100);
        assert_eq!(plan.create.len(), 3);
        let slices = apply(vec![], plan, &mut n);
        let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        let s = &slices[0];
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(
            s.labels().get(SERVICE_NAME_LABEL).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            s.labels().get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY_VALUE)
        );
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Service"
        );
        assert_eq!(s.ports.as_ref().unwrap()[0].name.as_deref(), Some("http"));
        // Same input: nothing to do.
        assert!(plan_slices(&svc, desired_endpoints(&svc, &refs), slices.clone(), 100).is_empty());
        // One pod turns unready: exactly one slice is rewritten.
        let mut changed = all.clone();
        changed[150] = pod("p150", "10.244.0.152", false, false, json!([]));
        let refs: Vec<&Pod> = changed.iter().collect();
        let plan = plan_slices(&svc, desired_endpoints(&svc, &refs), slices.clone(), 100);
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 1, 0)
        );
        // Fewer pods: the emptied slice goes, the others shrink in place.
        let refs: Vec<&Pod> = all[..90].iter().collect();
        let plan = plan_slices(&svc, desired_endpoints(&svc, &refs), slices.clone(), 100);
        assert_eq!(plan.delete.len(), 2);
        let after = apply(slices, plan, &mut n);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].endpoints.len(), 90);
    }

    #[test]
    fn empty_service_keeps_one_placeholder_and_port_changes_replace_slices() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": 8080}]));
        let mut n = 0;
        let plan = plan_slices(&svc, desired_endpoints(&svc, &[]), vec![], 100);
        assert_eq!(plan.create.len(), 1);
        let slices = apply(vec![], plan, &mut n);
        assert!(slices[0].endpoints.is_empty());
        assert!(plan_slices(&svc, desired_endpoints(&svc, &[]), slices.clone(), 100).is_empty());
        // Pods arrive: the placeholder (no ports) is replaced by a slice with the port.
        let a = pod("a", "10.244.0.2", true, false, json!([]));
        let plan = plan_slices(&svc, desired_endpoints(&svc, &[&a]), slices.clone(), 100);
        assert_eq!((plan.create.len(), plan.delete.len()), (1, 1));
        let slices = apply(slices, plan, &mut n);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].ports.as_ref().unwrap()[0].port, Some(8080));
        // The target port changes: new slice, old one deleted.
        let svc2 = service(json!([{"name": "http", "port": 80, "targetPort": 9090}]));
        let plan = plan_slices(&svc2, desired_endpoints(&svc2, &[&a]), slices.clone(), 100);
        assert_eq!((plan.create.len(), plan.delete.len()), (1, 1));
    }

    #[test]
    fn mirroring_copies_hand_written_endpoints() {
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "ns", "uid": "ep-uid", "labels": {"team": "a"}},
            "subsets": [
                {"addresses": [{"ip": "192.0.2.7", "nodeName": "n1"}], "notReadyAddresses": [{"ip": "192.0.2.8"}],
                 "ports": [{"name": "pg", "port": 5432}]},
                {"addresses": [{"ip": "192.0.2.9"}, {"ip": "2001:db8::1"}], "ports": [{"name": "pg", "port": 5432}]}
            ]
        }))
        .unwrap();
        let groups = mirrored_endpoints(&ep);
        assert_eq!(groups.len(), 1);
        let eps = groups.values().next().unwrap();
        let view: Vec<(String, Option<bool>)> = eps
            .iter()
            .map(|e| (e.addresses[0].clone(), e.conditions.as_ref().unwrap().ready))
            .collect();
        assert_eq!(
            view,
            vec![
                ("192.0.2.7".to_string(), Some(true)),
                ("192.0.2.8".to_string(), Some(false)),
                ("192.0.2.9".to_string(), Some(true))
            ]
        );
        let selectorless: Service =
            serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {}})).unwrap();
        assert!(should_mirror(&ep, Some(&selectorless)));
        assert!(!should_mirror(&ep, None));
        assert!(!should_mirror(&ep, Some(&service(json!([])))));
        let mut skip = ep.clone();
        skip.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(SKIP_MIRROR_LABEL.into(), "true".into());
        assert!(!should_mirror(&skip, Some(&selectorless)));
    }

    #[test]
    fn pods_with_different_named_ports_get_separate_slices() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": "web"}]));
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
        let c = pod("c", "10.244.0.4", true, false, json!([]));
        let groups = desired_endpoints(&svc, &[&a, &b, &c]);
        // 8080, 9090 and the pod without the port (an endpoint with no ports, as kube does).
        assert_eq!(groups.len(), 3);
        let plan = plan_slices(&svc, groups, vec![], 100);
        assert_eq!(plan.create.len(), 3);
    }
}
