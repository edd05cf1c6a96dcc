//! DaemonSet controller: one pod per eligible node.
//!
//! A node is eligible when the pod template fits it: `nodeSelector`, required node affinity,
//! and its NoSchedule/NoExecute taints tolerated by the template's tolerations plus the ones
//! kube adds to every daemon pod (not-ready, unreachable, disk/memory/pid pressure,
//! unschedulable; network-unavailable for host-network pods). A node with an untolerated
//! NoSchedule taint gets no new pod but keeps a running one; an untolerated NoExecute taint
//! removes it, as in kube.
//!
//! Placement: pods are created with `spec.nodeName` preset (kube before 1.12 did the same;
//! today's kube pins them with node affinity on `metadata.name` and lets the scheduler bind).
//! Presetting keeps daemons running when the scheduler is down or disabled, and a daemon pod
//! never waits behind a queue of ordinary pending pods.
//!
//! Updates: each template gets a ControllerRevision named `<ds>-<hash>` (the hash from
//! `podutil::template_hash`), and pods carry it as `controller-revision-hash`. RollingUpdate
//! replaces pods of other hashes, never making more than `maxUnavailable` nodes unavailable,
//! or with `maxSurge` starts the new pod next to the old one and removes the old one once the
//! new one is available; OnDelete leaves old pods until someone deletes them. Orphans matching
//! the selector are adopted; failed pods are replaced, their deletion backed off per node.
//!
//! Pods are listed from the API server at each reconcile (it reads its own writes, so a pod
//! created by the previous pass is always seen and never doubled); nodes come from a reflector
//! store, and node changes that matter for eligibility trigger every DaemonSet.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;

use crate::endpoints::drive;
use crate::events::{reference, EventType};
use crate::podutil;
use crate::{Context, Error};

pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (sets, ds_writer) = reflector::store::<DaemonSet>();
    let (nodes, node_writer) = reflector::store::<Node>();

    let ds_events = watcher(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(ds_writer)
    .filter_map(|event| async move {
        match event {
            Ok(watcher::Event::Apply(ds)) | Ok(watcher::Event::InitApply(ds)) => {
                Some(Ok(ObjectRef::from_obj(&ds)))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    });
    // A pod event concerns the DaemonSet that controls the pod; an orphan concerns every
    // DaemonSet whose selector matches it (one of them may adopt it).
    let pod_sets = sets.clone();
    let pod_events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(move |event| {
            let pod = match event {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::Delete(p)) => p,
                Ok(_) => return Vec::new(),
                Err(e) => return vec![Err(e)],
            };
            let ns = pod.namespace().unwrap_or_default();
            match podutil::controller_of(&pod) {
                Some(owner)
                    if owner.kind == "DaemonSet" && owner.api_version.starts_with("apps/") =>
                {
                    vec![Ok(ObjectRef::new(&owner.name).within(&ns))]
                }
                Some(_) => Vec::new(),
                None => pod_sets
                    .state()
                    .iter()
                    .filter(|ds| ds.namespace().as_deref() == Some(ns.as_str()))
                    .filter(|ds| {
                        podutil::selector_matches(
                            ds.spec.as_ref().map(|s| &s.selector),
                            pod.labels(),
                        )
                    })
                    .map(|ds| Ok(ObjectRef::from_obj(ds.as_ref())))
                    .collect(),
            }
        })
        .flat_map(futures::stream::iter);
    // A node change that can change eligibility concerns every DaemonSet; heartbeats do not.
    let all_sets = sets.clone();
    let mut seen: HashMap<String, String> = HashMap::new();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .map(move |event| {
            let changed = match event {
                Ok(watcher::Event::Apply(n)) | Ok(watcher::Event::InitApply(n)) => {
                    let print = node_fingerprint(&n);
                    seen.insert(n.name_any(), print.clone()) != Some(print)
                }
                Ok(watcher::Event::Delete(n)) => {
                    seen.remove(&n.name_any());
                    true
                }
                Ok(watcher::Event::InitDone) => true,
                Ok(watcher::Event::Init) => false,
                Err(e) => return vec![Err(e)],
            };
            if !changed {
                return Vec::new();
            }
            all_sets
                .state()
                .iter()
                .map(|ds| Ok(ObjectRef::from_obj(ds.as_ref())))
                .collect()
        })
        .flat_map(futures::stream::iter);

    let queue =
        futures::stream::select_all([ds_events.boxed(), pod_events.boxed(), node_events.boxed()])
            .boxed();
    let state = Arc::new(State {
        nodes,
        failed_backoff: Mutex::new(HashMap::new()),
    });
    drive("daemonset", sets, queue, ctx, move |ds, ctx| {
        let state = state.clone();
        Box::pin(async move { reconcile(ds, ctx, state).await })
    })
    .await;
}

struct State {
    nodes: Store<Node>,
    /// (daemonset uid, node) → (last failure handled, current delay): a node whose kubelet
    /// keeps failing the daemon pod is not fought in a hot loop (kube's failedPodsBackoff).
    failed_backoff: Mutex<HashMap<(String, String), (Instant, Duration)>>,
}

const FAILED_BACKOFF_START: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

impl State {
    /// `None` when a failed pod on this node may be deleted now (and the backoff grows);
    /// otherwise how long to wait.
    fn failed_pod_delay(&self, key: (String, String), now: Instant) -> Option<Duration> {
        let mut map = self.failed_backoff.lock().expect("backoff lock");
        match map.get(&key).copied() {
            Some((last, delay)) if now.duration_since(last) < delay => {
                Some(delay - now.duration_since(last))
            }
            Some((_, delay)) => {
                map.insert(key, (now, (delay * 2).min(FAILED_BACKOFF_MAX)));
                None
            }
            None => {
                map.insert(key, (now, FAILED_BACKOFF_START));
                None
            }
        }
    }
}

/// What about a node matters to daemon placement: labels, taints, cordon, readiness.
fn node_fingerprint(node: &Node) -> String {
    let spec = node.spec.clone().unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    json!([node.labels(), spec.taints, spec.unschedulable, ready]).to_string()
}

// ---- eligibility (pure) ----

/// The tolerations kube adds to every daemon pod (AddOrUpdateDaemonPodTolerations), appended
/// to the template's own when it lacks them.
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (key, effect) in wanted {
        let present = out.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.operator.as_deref() == Some("Exists")
                && t.effect.as_deref() == Some(effect)
                && t.toleration_seconds.is_none()
        });
        if !present {
            out.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    }
    out
}

/// kube's ToleratesTaint.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let operator = t.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return operator == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match operator {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A node selector term: all expressions (on labels) and fields (`metadata.name`) hold. An
/// empty term selects nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    let name = node.name_any();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(name.as_str());
            r.key == "metadata.name" && requirement_matches(r, value)
        })
}

/// Whether the node fits by name, nodeSelector and required node affinity.
pub fn fits_node(spec: &PodSpec, node: &Node) -> bool {
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        if name != node.name_any() {
            return false;
        }
    }
    let labels = node.labels();
    let selector_ok = spec
        .node_selector
        .as_ref()
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|sel| {
            sel.node_selector_terms
                .iter()
                .any(|t| term_matches(t, node))
        });
    selector_ok && affinity_ok
}

/// kube's NodeShouldRunDaemonPod: (should a new pod be placed here, may an existing one stay).
/// `spec` must already carry the daemon tolerations.
pub fn node_should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    if !fits_node(spec, node) {
        return (false, false);
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    let untolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
    };
    if untolerated("NoExecute") {
        return (false, false);
    }
    if untolerated("NoSchedule") {
        return (false, true);
    }
    (true, true)
}

/// `maxUnavailable` as a count of nodes (percentages round up, as kube's), at least 1.
pub fn max_unavailable(ds: &DaemonSet, desired: i32) -> i32 {
    rolling_budget(ds, desired).1
}

fn scaled(value: &IntOrString, desired: i32) -> i32 {
    match value {
        IntOrString::Int(n) => (*n).max(0),
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct.max(0) * desired as i64 + 99) / 100) as i32
        }
    }
}

/// (maxSurge, maxUnavailable) in nodes; percentages round up. Both zero would stall the
/// rollout, so maxUnavailable is then 1 (kube's validation forbids that combination anyway).
pub fn rolling_budget(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let rolling = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref());
    let surge = rolling
        .and_then(|r| r.max_surge.as_ref())
        .map_or(0, |v| scaled(v, desired));
    let unavailable = rolling
        .and_then(|r| r.max_unavailable.as_ref())
        .map_or(1, |v| scaled(v, desired));
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

// ---- the sync ----

/// What one pass decided.
#[derive(Debug, Default, PartialEq)]
pub struct NodePlan {
    /// Nodes that need a new pod.
    pub create_on: Vec<String>,
    /// Pods to delete, with why.
    pub delete: Vec<(String, &'static str)>,
    /// Failed pods (pod, node): deleted unless that node's failures are in backoff.
    pub failed: Vec<(String, String)>,
}

struct NodeState<'a> {
    name: String,
    should_run: bool,
    /// The daemon pods that stay on the node, oldest first: one, or during a surge one old
    /// and one new.
    kept: Vec<&'a Pod>,
}

fn created(pod: &Pod) -> (i64, String) {
    let t = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    (t, pod.name_any())
}

fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_HASH_LABEL).map(String::as_str)
}

/// Decides creations and deletions for every node, rolling update included. `pods` are the
/// DaemonSet's own pods; `spec` carries the daemon tolerations.
pub fn plan(
    ds: &DaemonSet,
    spec: &PodSpec,
    hash: &str,
    nodes: &[Arc<Node>],
    pods: &[Pod],
    now: jiff::Timestamp,
) -> NodePlan {
    let mut out = NodePlan::default();
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| !podutil::is_terminating(p)) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        by_node.entry(node).or_default().push(pod);
    }
    let rolling = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let eligible = nodes.iter().filter(|n| node_should_run(spec, n).0).count() as i32;
    let (max_surge, max_unavailable) = rolling_budget(ds, eligible);
    let surging = rolling && max_surge > 0;
    let available = |p: &Pod| podutil::is_available(p, min_ready, now);

    let mut states: Vec<NodeState> = Vec::new();
    for node in nodes {
        let name = node.name_any();
        let (should_run, should_continue) = node_should_run(spec, node);
        let mut here = by_node.remove(name.as_str()).unwrap_or_default();
        here.sort_by_key(|p| created(p));
        let mut running: Vec<&Pod> = Vec::new();
        for pod in here {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if !should_continue {
                out.delete.push((pod.name_any(), "node no longer eligible"));
            } else if phase == Some("Failed") {
                out.failed.push((pod.name_any(), name.clone()));
            } else if phase == Some("Succeeded") {
                out.delete.push((pod.name_any(), "succeeded"));
            } else {
                running.push(pod);
            }
        }
        let kept = if surging {
            // Surge allows the oldest new pod next to the oldest old one while the new one
            // is not ready yet; everything else goes (kube's podsShouldBeOnNode).
            let new = running.iter().copied().find(|p| pod_hash(p) == Some(hash));
            let old = running.iter().copied().find(|p| pod_hash(p) != Some(hash));
            let mut kept: Vec<&Pod> = Vec::new();
            match (new, old) {
                (Some(n), Some(o)) if !podutil::is_ready(o) || podutil::is_ready(n) => kept.push(n),
                (n, o) => kept.extend(o.into_iter().chain(n)),
            }
            kept.sort_by_key(|p| created(p));
            kept
        } else {
            running.first().copied().into_iter().collect()
        };
        for pod in running
            .iter()
            .filter(|p| !kept.iter().any(|k| std::ptr::eq(*k, **p)))
        {
            out.delete.push((pod.name_any(), "duplicate on node"));
        }
        if should_run && running.is_empty() {
            out.create_on.push(name.clone());
        }
        states.push(NodeState {
            name,
            should_run,
            kept,
        });
    }
    // Pods on nodes that are gone (or were never given one).
    for (_, leftovers) in by_node {
        for pod in leftovers {
            out.delete.push((pod.name_any(), "node does not exist"));
        }
    }
    if !rolling {
        return out;
    }

    if surging {
        // kube's rollingUpdate with surge: a new pod next to each old one, at most maxSurge
        // at a time (unavailable old pods are replaced regardless); an old pod goes once its
        // replacement is available.
        let mut surge = 0;
        let mut candidates: Vec<String> = Vec::new();
        for st in states.iter().filter(|s| s.should_run) {
            let new = st.kept.iter().copied().find(|p| pod_hash(p) == Some(hash));
            let old = st.kept.iter().copied().find(|p| pod_hash(p) != Some(hash));
            match (new, old) {
                (_, None) => {}
                (None, Some(o)) if !available(o) => out.create_on.push(st.name.clone()),
                (None, Some(_)) if surge < max_surge => {
                    surge += 1;
                    out.create_on.push(st.name.clone());
                }
                (None, Some(_)) => candidates.push(st.name.clone()),
                (Some(n), Some(_)) if !available(n) => surge += 1,
                (Some(_), Some(o)) => out.delete.push((o.name_any(), "outdated")),
            }
        }
        let room = (max_surge - surge).max(0) as usize;
        out.create_on.extend(candidates.into_iter().take(room));
        return out;
    }

    let mut unavailable = states
        .iter()
        .filter(|s| s.should_run && s.kept.first().is_none_or(|p| !available(p)))
        .count() as i32;
    let old: Vec<&Pod> = states
        .iter()
        .filter(|s| s.should_run)
        .filter_map(|s| s.kept.first().copied())
        .filter(|p| pod_hash(p) != Some(hash))
        .collect();
    // Old pods that are down anyway go first and cost nothing.
    for pod in old.iter().filter(|p| !available(p)) {
        out.delete.push((pod.name_any(), "outdated"));
    }
    for pod in old.iter().filter(|p| available(p)) {
        if unavailable >= max_unavailable {
            break;
        }
        out.delete.push((pod.name_any(), "outdated"));
        unavailable += 1;
    }
    out
}

/// Status from the nodes and the DaemonSet's pods, as kube counts it.
pub fn compute_status(
    ds: &DaemonSet,
    spec: &PodSpec,
    hash: &str,
    nodes: &[Arc<Node>],
    pods: &[Pod],
    now: jiff::Timestamp,
) -> DaemonSetStatus {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let (mut available, mut updated) = (0, 0);
    for node in nodes {
        let name = node.name_any();
        let mut here: Vec<&Pod> = pods
            .iter()
            .filter(|p| !podutil::is_terminating(p))
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
            .collect();
        here.sort_by_key(|p| created(p));
        let (should_run, _) = node_should_run(spec, node);
        if should_run {
            status.desired_number_scheduled += 1;
            if let Some(pod) = here.first() {
                status.current_number_scheduled += 1;
                if podutil::is_ready(pod) {
                    status.number_ready += 1;
                }
                if podutil::is_available(pod, min_ready, now) {
                    available += 1;
                }
                if pod_hash(pod) == Some(hash) {
                    updated += 1;
                }
            }
        } else if !here.is_empty() {
            status.number_misscheduled += 1;
        }
    }
    status.number_available = Some(available);
    status.updated_number_scheduled = Some(updated);
    status.number_unavailable = Some((status.desired_number_scheduled - available).max(0));
    status
}

async fn reconcile(
    ds: Arc<DaemonSet>,
    ctx: Arc<Context>,
    state: Arc<State>,
) -> Result<Action, Error> {
    let nodes = &state.nodes;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Without a full node list every pod would look misplaced.
    nodes
        .wait_until_ready()
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let ds_spec = ds
        .spec
        .clone()
        .ok_or_else(|| Error::Invalid(format!("daemonset {ns}/{name} has no spec")))?;
    let collision = ds.status.as_ref().and_then(|s| s.collision_count);
    let hash = podutil::template_hash(&ds_spec.template, collision);
    let mut spec = ds_spec.template.spec.clone().unwrap_or_default();
    spec.tolerations = Some(daemon_tolerations(&spec));

    let revision = sync_revisions(&ctx, &ds, &hash).await?;

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&podutil::selector_query(Some(&ds_spec.selector)));
    let mut pods: Vec<Pod> = Vec::new();
    for pod in pods_api.list(&lp).await?.items {
        if !podutil::selector_matches(Some(&ds_spec.selector), pod.labels()) {
            continue;
        }
        if podutil::is_controlled_by(&pod, ds.as_ref()) {
            pods.push(pod);
        } else if podutil::controller_of(&pod).is_none() && !podutil::is_terminating(&pod) {
            // An orphan matching the selector is adopted, as kube's ClaimPods does.
            let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
            refs.push(podutil::owner_reference(ds.as_ref()));
            let patch = json!({"metadata": {"ownerReferences": refs, "uid": pod.uid()}});
            match pods_api
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(adopted) => {
                    tracing::info!(daemonset = %format!("{ns}/{name}"), pod = %adopted.name_any(), "adopted pod");
                    pods.push(adopted);
                }
                Err(e) => tracing::debug!(pod = %pod.name_any(), error = %e, "adoption failed"),
            }
        }
    }
    let all_nodes = nodes.state();
    let now = jiff::Timestamp::now();
    let mut plan = plan(&ds, &spec, &hash, &all_nodes, &pods, now);
    let ds_ref = reference(ds.as_ref());
    let mut retry_after: Option<Duration> = None;
    for (pod, node) in std::mem::take(&mut plan.failed) {
        let key = (ds.uid().unwrap_or_default(), node.clone());
        if let Some(wait) = state.failed_pod_delay(key, Instant::now()) {
            retry_after = Some(retry_after.map_or(wait, |r| r.min(wait)));
            continue;
        }
        let msg = format!("Found failed daemon pod {ns}/{pod} on node {node}, will try to kill it");
        ctx.events
            .record(&ds_ref, EventType::Warning, "FailedDaemonPod", &msg)
            .await;
        plan.delete.push((pod, "failed"));
    }

    for (pod, why) in &plan.delete {
        match pods_api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(daemonset = %format!("{ns}/{name}"), pod, why, "deleted daemon pod");
                ctx.events
                    .record(
                        &ds_ref,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pod}"),
                    )
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                ctx.events
                    .record(
                        &ds_ref,
                        EventType::Warning,
                        "FailedDelete",
                        &format!("Error deleting: {e}"),
                    )
                    .await;
                return Err(e.into());
            }
        }
    }
    let generation = ds.metadata.generation.unwrap_or(0);
    let requests: Vec<_> = plan
        .create_on
        .iter()
        .cloned()
        .map(|node: String| {
            let mut pod = podutil::pod_from_template(&ds_spec.template, ds.as_ref(), &name);
            let labels = pod.metadata.labels.get_or_insert_with(Default::default);
            labels.insert(REVISION_HASH_LABEL.into(), hash.clone());
            labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation.to_string());
            let mut pod_spec = spec.clone();
            pod_spec.node_name = Some(node.clone());
            pod.spec = Some(pod_spec);
            let api = pods_api.clone();
            async move {
                let result = api.create(&PostParams::default(), &pod).await;
                (node, result)
            }
        })
        .collect();
    let creations = futures::stream::iter(requests)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut first_error = None;
    for (node, result) in creations {
        match result {
            Ok(pod) => {
                tracing::info!(daemonset = %format!("{ns}/{name}"), pod = %pod.name_any(), node, "created daemon pod");
                ctx.events
                    .record(
                        &ds_ref,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", pod.name_any()),
                    )
                    .await;
            }
            Err(e) => {
                ctx.events
                    .record(
                        &ds_ref,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating: {e}"),
                    )
                    .await;
                first_error.get_or_insert(e);
            }
        }
    }

    // Status from what the pods look like now (the watch brings the next pass after changes).
    let status = compute_status(&ds, &spec, &hash, &all_nodes, &pods, now);
    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await?;
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    if let Some(wait) = retry_after {
        return Ok(Action::requeue(wait));
    }
    tracing::debug!(daemonset = %format!("{ns}/{name}"), revision, "synced");
    // Pods ready but not yet available for minReadySeconds: look again when they will be.
    let min_ready = ds_spec.min_ready_seconds.unwrap_or(0);
    if min_ready > 0
        && pods
            .iter()
            .any(|p| podutil::is_ready(p) && !podutil::is_available(p, min_ready, now))
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

/// Makes sure the current template has a ControllerRevision with the highest revision number
/// (a rollback to an old template renumbers its revision) and trims history beyond
/// `revisionHistoryLimit`. Returns the current revision number.
async fn sync_revisions(ctx: &Context, ds: &DaemonSet, hash: &str) -> Result<i64, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let spec = ds.spec.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&podutil::selector_query(Some(&spec.selector)));
    let mut history: Vec<ControllerRevision> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|r| podutil::is_controlled_by(r, ds))
        .collect();
    history.sort_by_key(|r| r.revision);
    let max = history.last().map(|r| r.revision).unwrap_or(0);
    let cr_name = format!("{name}-{hash}");
    let current = match history
        .iter()
        .find(|r| r.labels().get(REVISION_HASH_LABEL).map(String::as_str) == Some(hash))
    {
        Some(r) if r.revision == max => r.revision,
        Some(r) => {
            let patch = json!({ "revision": max + 1 });
            api.patch(
                &r.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            max + 1
        }
        None => {
            let mut labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_HASH_LABEL.into(), hash.into());
            let mut template = serde_json::to_value(&spec.template).unwrap_or_default();
            if let Some(obj) = template.as_object_mut() {
                obj.insert("$patch".into(), json!("replace"));
            }
            let cr = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(cr_name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: Some(vec![podutil::owner_reference(ds)]),
                    ..Default::default()
                },
                data: Some(RawExtension(json!({ "spec": { "template": template } }))),
                revision: max + 1,
            };
            match api.create(&PostParams::default(), &cr).await {
                Ok(_) => {}
                // Same name, other content: a hash collision kube resolves with collisionCount.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let existing = api.get(&cr_name).await?;
                    if !podutil::is_controlled_by(&existing, ds) || existing.data != cr.data {
                        let count = ds
                            .status
                            .as_ref()
                            .and_then(|s| s.collision_count)
                            .unwrap_or(0)
                            + 1;
                        let dsapi: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
                        dsapi
                            .patch_status(
                                &name,
                                &PatchParams::default(),
                                &Patch::Merge(&json!({"status": {"collisionCount": count}})),
                            )
                            .await?;
                        return Err(Error::Invalid(format!(
                            "revision name {cr_name} collides; collisionCount now {count}"
                        )));
                    }
                }
                Err(e) => return Err(e.into()),
            }
            max + 1
        }
    };
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let old: Vec<&ControllerRevision> = history
        .iter()
        .filter(|r| r.labels().get(REVISION_HASH_LABEL).map(String::as_str) != Some(hash))
        .collect();
    if old.len() > limit {
        for r in &old[..old.len() - limit] {
            let _ = api.delete(&r.name_any(), &DeleteParams::default()).await;
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: k.to_string(),
                            effect: e.to_string(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn with_tolerations(mut spec: PodSpec) -> PodSpec {
        spec.tolerations = Some(daemon_tolerations(&spec));
        spec
    }

    #[test]
    fn daemon_tolerations_are_added_once() {
        let spec = with_tolerations(PodSpec::default());
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 6);
        assert_eq!(daemon_tolerations(&spec).len(), 6);
        let host = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        assert_eq!(daemon_tolerations(&host).len(), 7);
    }

    #[test]
    fn taints_decide_eligibility() {
        let spec = with_tolerations(PodSpec::default());
        assert_eq!(node_should_run(&spec, &node("a", &[], &[])), (true, true));
        assert_eq!(
            node_should_run(&spec, &node("a", &[], &[("dedicated", "NoSchedule")])),
            (false, true)
        );
        assert_eq!(
            node_should_run(&spec, &node("a", &[], &[("dedicated", "NoExecute")])),
            (false, false)
        );
        assert_eq!(
            node_should_run(&spec, &node("a", &[], &[("dedicated", "PreferNoSchedule")])),
            (true, true)
        );
        // Daemon tolerations cover cordoned and not-ready nodes.
        assert_eq!(
            node_should_run(
                &spec,
                &node(
                    "a",
                    &[],
                    &[("node.kubernetes.io/unschedulable", "NoSchedule")]
                )
            ),
            (true, true)
        );
        assert_eq!(
            node_should_run(
                &spec,
                &node("a", &[], &[("node.kubernetes.io/not-ready", "NoExecute")])
            ),
            (true, true)
        );
        let tolerant = with_tolerations(PodSpec {
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            node_should_run(&tolerant, &node("a", &[], &[("dedicated", "NoExecute")])),
            (true, true)
        );
    }

    #[test]
    fn toleration_matching() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let t = |key: Option<&str>, op: Option<&str>, value: Option<&str>, effect: Option<&str>| {
            Toleration {
                key: key.map(Into::into),
                operator: op.map(Into::into),
                value: value.map(Into::into),
                effect: effect.map(Into::into),
                ..Default::default()
            }
        };
        assert!(tolerates(&t(Some("k"), None, Some("v"), None), &taint));
        assert!(!tolerates(&t(Some("k"), None, Some("w"), None), &taint));
        assert!(tolerates(&t(None, Some("Exists"), None, None), &taint));
        assert!(!tolerates(&t(None, None, None, None), &taint));
        assert!(!tolerates(
            &t(Some("k"), Some("Exists"), None, Some("NoExecute")),
            &taint
        ));
    }

    #[test]
    fn selector_and_affinity() {
        let spec = PodSpec {
            node_selector: Some([("disk".to_string(), "ssd".to_string())].into()),
            ..Default::default()
        };
        assert!(fits_node(&spec, &node("a", &[("disk", "ssd")], &[])));
        assert!(!fits_node(&spec, &node("a", &[("disk", "hdd")], &[])));
        let affinity: k8s_openapi::api::core::v1::Affinity = serde_json::from_value(json!({
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "cpus", "operator": "Gt", "values": ["4"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]}
            ]}}
        }))
        .unwrap();
        let spec = PodSpec {
            affinity: Some(affinity),
            ..Default::default()
        };
        assert!(fits_node(&spec, &node("a", &[("cpus", "8")], &[])));
        assert!(!fits_node(&spec, &node("a", &[("cpus", "2")], &[])));
        assert!(fits_node(&spec, &node("special", &[], &[])));
        let pinned = PodSpec {
            node_name: Some("b".into()),
            ..Default::default()
        };
        assert!(!fits_node(&pinned, &node("a", &[], &[])));
    }

    fn daemonset(max_unavailable: Option<IntOrString>) -> DaemonSet {
        let mut ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "ns", "uid": "u1", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}}}
        }))
        .unwrap();
        if let Some(m) = max_unavailable {
            ds.spec.as_mut().unwrap().update_strategy =
                Some(k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDaemonSet {
                        max_unavailable: Some(m),
                        max_surge: None,
                    }),
                });
        }
        ds
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool, created: i64) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "d", REVISION_HASH_LABEL: hash},
                         "creationTimestamp": jiff::Timestamp::from_second(created).unwrap().to_string()},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    #[test]
    fn plan_creates_deletes_and_rolls() {
        let ds = daemonset(None);
        let spec = with_tolerations(PodSpec::default());
        let now = jiff::Timestamp::now();
        let nodes = vec![
            node("a", &[], &[]),
            node("b", &[], &[]),
            node("c", &[], &[("x", "NoExecute")]),
        ];
        // Fresh: a pod for a and b, none for the tainted c.
        let p = plan(&ds, &spec, "h1", &nodes, &[], now);
        assert_eq!(p.create_on, vec!["a".to_string(), "b".to_string()]);
        assert!(p.delete.is_empty());
        // Duplicates, a pod on the NoExecute node and one on a vanished node.
        let pods = vec![
            pod("a1", "a", "h1", true, 1),
            pod("a2", "a", "h1", true, 2),
            pod("c1", "c", "h1", true, 1),
            pod("z1", "z", "h1", true, 1),
        ];
        let p = plan(&ds, &spec, "h1", &nodes, &pods, now);
        assert_eq!(p.create_on, vec!["b".to_string()]);
        let deleted: Vec<&str> = p.delete.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(deleted, vec!["a2", "c1", "z1"]);
        // Rolling update, maxUnavailable 1: one old available pod at a time.
        let nodes = vec![node("a", &[], &[]), node("b", &[], &[])];
        let pods = vec![pod("a1", "a", "h0", true, 1), pod("b1", "b", "h0", true, 1)];
        let p = plan(&ds, &spec, "h1", &nodes, &pods, now);
        assert_eq!(p.delete.len(), 1);
        // With one node already unavailable (missing pod), no available pod is taken down.
        let pods = vec![pod("a1", "a", "h0", true, 1)];
        let p = plan(&ds, &spec, "h1", &nodes, &pods, now);
        assert_eq!(p.create_on, vec!["b".to_string()]);
        assert!(p.delete.is_empty());
        // Not-ready old pods are replaced regardless of the budget; 100% takes all.
        let pods = vec![
            pod("a1", "a", "h0", false, 1),
            pod("b1", "b", "h0", false, 1),
        ];
        assert_eq!(plan(&ds, &spec, "h1", &nodes, &pods, now).delete.len(), 2);
        let ds_all = daemonset(Some(IntOrString::String("100%".into())));
        let pods = vec![pod("a1", "a", "h0", true, 1), pod("b1", "b", "h0", true, 1)];
        assert_eq!(
            plan(&ds_all, &spec, "h1", &nodes, &pods, now).delete.len(),
            2
        );
        // A failed pod is reported (deleted subject to backoff) and replaced at once.
        let mut failed = pod("a1", "a", "h1", false, 1);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let p = plan(
            &ds,
            &spec,
            "h1",
            &nodes,
            &[failed, pod("b1", "b", "h1", true, 1)],
            now,
        );
        assert_eq!(p.failed, vec![("a1".to_string(), "a".to_string())]);
        assert_eq!(p.create_on, vec!["a".to_string()]);
        // OnDelete leaves them.
        let mut on_delete = daemonset(None);
        on_delete.spec.as_mut().unwrap().update_strategy =
            Some(k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            });
        assert!(plan(&on_delete, &spec, "h1", &nodes, &pods, now)
            .delete
            .is_empty());
    }

    #[test]
    fn surge_rolls_one_new_pod_at_a_time() {
        let mut ds = daemonset(None);
        ds.spec.as_mut().unwrap().update_strategy =
            Some(k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            });
        assert_eq!(rolling_budget(&ds, 2), (1, 0));
        let spec = with_tolerations(PodSpec::default());
        let now = jiff::Timestamp::now();
        let nodes = vec![node("a", &[], &[]), node("b", &[], &[])];
        let p = plan(
            &ds,
            &spec,
            "h1",
            &nodes,
            &[pod("a0", "a", "h0", true, 1), pod("b0", "b", "h0", true, 1)],
            now,
        );
        assert_eq!(
            (p.create_on.clone(), p.delete.len()),
            (vec!["a".to_string()], 0)
        );
        // The surge pod on a is not ready: nothing else happens, the old one stays.
        let pods = vec![
            pod("a0", "a", "h0", true, 1),
            pod("a1", "a", "h1", false, 2),
            pod("b0", "b", "h0", true, 1),
        ];
        let p = plan(&ds, &spec, "h1", &nodes, &pods, now);
        assert!(p.create_on.is_empty() && p.delete.is_empty(), "{p:?}");
        // Ready: the old pod on a goes and b gets its surge pod.
        let pods = vec![
            pod("a0", "a", "h0", true, 1),
            pod("a1", "a", "h1", true, 2),
            pod("b0", "b", "h0", true, 1),
        ];
        let p = plan(&ds, &spec, "h1", &nodes, &pods, now);
        assert_eq!(p.create_on, vec!["b".to_string()]);
        assert_eq!(
            p.delete.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["a0"]
        );
    }

    #[test]
    fn failed_pods_back_off_per_node() {
        let state = State {
            nodes: reflector::store::<Node>().0,
            failed_backoff: Mutex::new(HashMap::new()),
        };
        let key = || ("uid".to_string(), "a".to_string());
        let t0 = Instant::now();
        assert_eq!(state.failed_pod_delay(key(), t0), None);
        assert!(state
            .failed_pod_delay(key(), t0 + Duration::from_millis(500))
            .is_some());
        assert_eq!(
            state.failed_pod_delay(key(), t0 + Duration::from_secs(1)),
            None
        );
        // The delay doubled to 2 s.
        assert!(state
            .failed_pod_delay(key(), t0 + Duration::from_secs(2))
            .is_some());
        assert_eq!(
            state.failed_pod_delay(key(), t0 + Duration::from_secs(3)),
            None
        );
        assert_eq!(state.failed_pod_delay(("uid".into(), "b".into()), t0), None);
    }

    #[test]
    fn status_counts() {
        let ds = daemonset(None);
        let spec = with_tolerations(PodSpec::default());
        let nodes = vec![
            node("a", &[], &[]),
            node("b", &[], &[]),
            node("c", &[], &[("x", "NoSchedule")]),
        ];
        let pods = vec![
            pod("a1", "a", "h1", true, 1),
            pod("b1", "b", "h0", false, 1),
            pod("c1", "c", "h1", true, 1),
        ];
        let s = compute_status(&ds, &spec, "h1", &nodes, &pods, jiff::Timestamp::now());
        assert_eq!(s.desired_number_scheduled, 2);
        assert_eq!(s.current_number_scheduled, 2);
        assert_eq!(s.number_ready, 1);
        assert_eq!(s.number_available, Some(1));
        assert_eq!(s.updated_number_scheduled, Some(1));
        assert_eq!(s.number_misscheduled, 1);
        assert_eq!(s.number_unavailable, Some(1));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(max_unavailable(&ds, 10), 1);
        assert_eq!(
            max_unavailable(&daemonset(Some(IntOrString::String("25%".into()))), 10),
            3
        );
    }
}
