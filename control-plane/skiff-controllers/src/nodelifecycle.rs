//! Node lifecycle: a node whose Lease in `kube-node-lease` goes stale becomes Ready=Unknown
//! and gets the `node.kubernetes.io/unreachable` taints; pods on it that do not tolerate
//! NoExecute (for longer than they have) are evicted, so their controllers replace them.
//! Until then its pods are marked Ready=False (kube's MarkPodsNotReady) and the endpoints
//! agents publish for it (the kube-dns slices) not ready, so Services stop sending traffic
//! to a node nobody hears from.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::events::{reference, EventType};
use crate::{Context, Error};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const PASS: Duration = Duration::from_secs(2);
/// Slices that agents write about themselves (the kube-dns endpoint of each node).
const AGENT_SLICES: &str = "endpointslice.kubernetes.io/managed-by=skiff-agent";

/// When this controller last saw each node's Lease renewed, on its own clock: comparing the
/// renewTime an agent wrote (its clock) with ours would declare a live node dead, or a dead
/// one alive, whenever the two clocks are further apart than the grace period (kube's node
/// lifecycle controller keeps a probe timestamp for the same reason).
#[derive(Debug, Default)]
pub struct Heartbeats {
    seen: HashMap<String, (Option<String>, Instant)>,
}

impl Heartbeats {
    /// Records the node's current renewTime (`None`: no Lease yet) as observed at `at`, and
    /// returns how long ago it last changed. A node seen for the first time counts as just
    /// heard from, so a restarted controller gives every node a full grace period.
    pub fn observe(&mut self, node: &str, renew: Option<String>, at: Instant) -> Duration {
        match self.seen.get_mut(node) {
            Some((last, since)) if *last == renew => at.saturating_duration_since(*since),
            Some(entry) => {
                *entry = (renew, at);
                Duration::ZERO
            }
            None => {
                self.seen.insert(node.to_string(), (renew, at));
                Duration::ZERO
            }
        }
    }

    /// Forgets nodes that no longer exist.
    pub fn retain(&mut self, nodes: &HashSet<String>) {
        self.seen.retain(|name, _| nodes.contains(name));
    }
}

pub async fn run(ctx: Arc<Context>) {
    let mut heartbeats = Heartbeats::default();
    loop {
        if let Err(e) = pass(&ctx, &mut heartbeats).await {
            tracing::warn!(error = %e, "node lifecycle pass failed");
        }
        tokio::time::sleep(PASS).await;
    }
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

/// How long a pod may stay on a node with this NoExecute taint: `None` forever, `Some(0)`
/// not at all. Pods that say nothing get the cluster default for the node-health taints,
/// as kube's DefaultTolerationSeconds admission gives them.
pub fn toleration_seconds(
    tolerations: &[Toleration],
    taint: &Taint,
    default: Duration,
) -> Option<u64> {
    let matching = tolerations.iter().find(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.operator.as_deref() {
            Some("Exists") => t
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == taint.key),
            _ => {
                t.key.as_deref() == Some(taint.key.as_str())
                    && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
            }
        };
        effect_ok && key_ok
    });
    match matching {
        Some(t) => t.toleration_seconds.map(|s| s.max(0) as u64),
        None if taint.key == UNREACHABLE || taint.key == NOT_READY => Some(default.as_secs()),
        None => Some(0),
    }
}

async fn pass(ctx: &Context, heartbeats: &mut Heartbeats) -> Result<(), Error> {
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    let leases_api: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let nodes = nodes_api.list(&ListParams::default()).await?.items;
    let leases: HashMap<String, Lease> = leases_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|l| (l.name_any(), l))
        .collect();
    let now = jiff::Timestamp::now();
    let observed_at = Instant::now();
    heartbeats.retain(&nodes.iter().map(|n| n.name_any()).collect());
    for node in &nodes {
        let name = node.name_any();
        let renewed = leases
            .get(&name)
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
            .map(|t| t.0.to_string());
        let stale =
            heartbeats.observe(&name, renewed, observed_at) > ctx.settings.node_monitor_grace;
        let ready = ready_condition(node)
            .map(|c| c.status.as_str())
            .unwrap_or("Unknown");
        let mut wanted_taints: Vec<Taint> = taints(node)
            .into_iter()
            .filter(|t| t.key != UNREACHABLE && t.key != NOT_READY)
            .collect();
        let current_taints = taints(node);
        if stale {
            if ready != "Unknown" {
                let conditions: Vec<NodeCondition> = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|mut c| {
                        c.status = "Unknown".into();
                        c.reason = Some("NodeStatusUnknown".into());
                        c.message = Some("Kubelet stopped posting node status.".into());
                        c.last_transition_time = Some(Time(now));
                        c
                    })
                    .collect();
                nodes_api
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": {"conditions": conditions}})),
                    )
                    .await?;
                ctx.events
                    .record(
                        &reference(node),
                        EventType::Normal,
                        "NodeNotReady",
                        &format!("Node {name} status is now: NodeNotReady"),
                    )
                    .await;
            }
            mark_pods_not_ready(ctx, &name, now).await?;
            mark_agent_endpoints_not_ready(ctx, &name).await?;
            for effect in ["NoSchedule", "NoExecute"] {
                let existing = current_taints
                    .iter()
                    .find(|t| t.key == UNREACHABLE && t.effect == effect);
                wanted_taints.push(existing.cloned().unwrap_or(Taint {
                    key: UNREACHABLE.into(),
                    effect: effect.into(),
                    value: None,
                    time_added: Some(Time(now)),
                }));
            }
        } else if ready != "True" {
            // The node's agent is alive but says it is not ready.
            for effect in ["NoSchedule", "NoExecute"] {
                let existing = current_taints
                    .iter()
                    .find(|t| t.key == NOT_READY && t.effect == effect);
                wanted_taints.push(existing.cloned().unwrap_or(Taint {
                    key: NOT_READY.into(),
                    effect: effect.into(),
                    value: None,
                    time_added: Some(Time(now)),
                }));
            }
        }
        let same = |a: &[Taint], b: &[Taint]| {
            a.len() == b.len()
                && a.iter()
                    .all(|t| b.iter().any(|u| u.key == t.key && u.effect == t.effect))
        };
        if !same(&wanted_taints, &current_taints) {
            // A merge patch replaces the whole list: the resourceVersion makes it a
            // compare-and-swap, so a taint someone added since our listing is never dropped
            // (on a conflict the next pass starts from the fresh node).
            let patch = json!({
                "metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"taints": wanted_taints},
            });
            match nodes_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(node = %name, "node changed since the listing; taints next pass");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        evict(ctx, node, &wanted_taints, now).await?;
    }
    Ok(())
}

/// The pod's Ready condition set to False, or `None` when it already is (or the pod is
/// finished, or has no Ready condition yet: nothing advertises it).
fn not_ready_conditions(pod: &Pod, now: jiff::Timestamp) -> Option<Vec<serde_json::Value>> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let conditions = status.conditions.as_ref()?;
    if !conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status != "False")
    {
        return None;
    }
    Some(
        conditions
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                if c.type_ == "Ready" {
                    v["status"] = json!("False");
                    v["reason"] = json!("NodeNotReady");
                    v["message"] = json!("The node stopped reporting: its pods may not be running");
                    v["lastTransitionTime"] = json!(Time(now));
                }
                v
            })
            .collect(),
    )
}

/// kube's MarkPodsNotReady: the endpoint controllers then stop advertising the pods. The node's
/// agent, once back, writes its own view again.
async fn mark_pods_not_ready(ctx: &Context, node: &str, now: jiff::Timestamp) -> Result<(), Error> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?
        .items;
    for pod in &on_node {
        let Some(conditions) = not_ready_conditions(pod, now) else {
            continue;
        };
        let api: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        // Conditions are a list: a merge patch replaces it whole, so it carries the
        // resourceVersion (a status written since the listing wins; the next pass retries).
        let patch = json!({
            "metadata": {"resourceVersion": pod.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(pod = %pod.name_any(), %node, "pod marked not ready: its node is unreachable")
            }
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The endpoints of agent-written slices that sit on `node`, set not ready; `None` when none
/// is ready.
fn endpoints_not_ready(slice: &EndpointSlice, node: &str) -> Option<Vec<serde_json::Value>> {
    let on_node =
        |e: &&k8s_openapi::api::discovery::v1::Endpoint| e.node_name.as_deref() == Some(node);
    if !slice
        .endpoints
        .iter()
        .filter(on_node)
        .any(|e| e.conditions.as_ref().is_none_or(|c| c.ready != Some(false)))
    {
        return None;
    }
    Some(
        slice
            .endpoints
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if on_node(&e) {
                    v["conditions"]["ready"] = json!(false);
                    v["conditions"]["serving"] = json!(false);
                }
                v
            })
            .collect(),
    )
}

/// An agent's own slices (kube-dns) name its node as the endpoint; nothing else marks them when
/// the agent dies, so this does. The agent re-applies them as ready when it is back.
async fn mark_agent_endpoints_not_ready(ctx: &Context, node: &str) -> Result<(), Error> {
    let slices: Api<EndpointSlice> = Api::all(ctx.client.clone());
    for slice in slices
        .list(&ListParams::default().labels(AGENT_SLICES))
        .await?
        .items
    {
        let Some(endpoints) = endpoints_not_ready(&slice, node) else {
            continue;
        };
        let api: Api<EndpointSlice> =
            Api::namespaced(ctx.client.clone(), &slice.namespace().unwrap_or_default());
        let patch = json!({
            "metadata": {"resourceVersion": slice.metadata.resource_version},
            "endpoints": endpoints,
        });
        match api
            .patch(
                &slice.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(slice = %slice.name_any(), %node, "agent endpoint marked not ready: its node is unreachable")
            }
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn evict(
    ctx: &Context,
    node: &Node,
    taints: &[Taint],
    now: jiff::Timestamp,
) -> Result<(), Error> {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    if no_execute.is_empty() {
        return Ok(());
    }
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", node.name_any())))
        .await?
        .items;
    for pod in on_node
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let due = no_execute.iter().any(|taint| {
            let added = taint
                .time_added
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(now.as_second());
            match toleration_seconds(
                &tolerations,
                taint,
                ctx.settings.default_eviction_toleration,
            ) {
                None => false,
                Some(secs) => now.as_second() - added >= secs as i64,
            }
        });
        if due {
            let api: Api<Pod> =
                Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
            match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e.into()),
            }
            ctx.events
                .record(
                    &reference(pod),
                    EventType::Normal,
                    "TaintManagerEviction",
                    &format!(
                        "Marking for deletion Pod {}/{}",
                        pod.namespace().unwrap_or_default(),
                        pod.name_any()
                    ),
                )
                .await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_is_measured_on_the_controllers_clock() {
        let mut beats = Heartbeats::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // A renewTime from a clock an hour behind is as good as any: it changed.
        let old = Some("2026-11-24T17:00:00Z".to_string());
        assert_eq!(beats.observe("a", old.clone(), t0), Duration::ZERO);
        assert_eq!(beats.observe("a", old.clone(), t0 + s(30)), s(30));
        let newer = Some("2026-11-24T17:00:10Z".to_string());
        assert_eq!(
            beats.observe("a", newer.clone(), t0 + s(31)),
            Duration::ZERO
        );
        assert_eq!(beats.observe("a", newer, t0 + s(90)), s(59));
        // No Lease at all: the first sighting starts the clock.
        assert_eq!(beats.observe("b", None, t0 + s(5)), Duration::ZERO);
        assert_eq!(beats.observe("b", None, t0 + s(50)), s(45));
        // A node deleted and created again starts over.
        beats.retain(&HashSet::from(["a".to_string()]));
        assert_eq!(beats.observe("b", None, t0 + s(60)), Duration::ZERO);
    }

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: None,
        }
    }

    #[test]
    fn tolerations_decide_eviction_delay() {
        let default = Duration::from_secs(300);
        assert_eq!(
            toleration_seconds(&[], &taint(UNREACHABLE), default),
            Some(300)
        );
        assert_eq!(toleration_seconds(&[], &taint("custom"), default), Some(0));
        let forever = Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        };
        assert_eq!(
            toleration_seconds(&[forever], &taint(UNREACHABLE), default),
            None
        );
        let short = Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            toleration_seconds: Some(5),
            ..Default::default()
        };
        assert_eq!(
            toleration_seconds(&[short], &taint(UNREACHABLE), default),
            Some(5)
        );
        let everything = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert_eq!(
            toleration_seconds(&[everything], &taint("custom"), default),
            None
        );
    }

    fn pod(phase: &str, ready: Option<&str>) -> Pod {
        let mut conditions = vec![json!({"type": "PodScheduled", "status": "True"})];
        if let Some(r) = ready {
            conditions.push(json!({"type": "Ready", "status": r}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": phase, "conditions": conditions},
        }))
        .unwrap()
    }

    #[test]
    fn only_ready_running_pods_are_marked_not_ready() {
        let now = jiff::Timestamp::now();
        let marked = not_ready_conditions(&pod("Running", Some("True")), now).unwrap();
        assert_eq!(marked.len(), 2, "every condition kept: {marked:?}");
        assert_eq!(marked[0], json!({"type": "PodScheduled", "status": "True"}));
        assert_eq!(marked[1]["status"], "False");
        assert_eq!(marked[1]["reason"], "NodeNotReady");
        assert!(not_ready_conditions(&pod("Running", Some("False")), now).is_none());
        assert!(not_ready_conditions(&pod("Pending", None), now).is_none());
        assert!(not_ready_conditions(&pod("Succeeded", Some("True")), now).is_none());
        // Unknown is not False: it is marked too.
        assert!(not_ready_conditions(&pod("Running", Some("Unknown")), now).is_some());
    }

    #[test]
    fn only_the_dead_nodes_endpoints_are_marked() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "kube-dns-node-1", "namespace": "kube-system"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "nodeName": "node-1",
                 "conditions": {"ready": true, "serving": true, "terminating": false}},
                {"addresses": ["10.0.0.2"], "nodeName": "node-2",
                 "conditions": {"ready": true}},
            ],
        }))
        .unwrap();
        let marked = endpoints_not_ready(&slice, "node-1").unwrap();
        assert_eq!(marked[0]["conditions"]["ready"], false);
        assert_eq!(marked[0]["conditions"]["serving"], false);
        assert_eq!(marked[0]["conditions"]["terminating"], false);
        assert_eq!(marked[1]["conditions"]["ready"], true);
        assert_eq!(marked[1]["addresses"], json!(["10.0.0.2"]));
        assert!(endpoints_not_ready(&slice, "node-3").is_none());
        let mut done = slice.clone();
        done.endpoints = serde_json::from_value(json!(marked)).unwrap();
        assert!(endpoints_not_ready(&done, "node-1").is_none(), "idempotent");
    }
}
