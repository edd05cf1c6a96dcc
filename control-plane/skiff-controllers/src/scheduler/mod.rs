//! The scheduler: binds pending pods (schedulerName empty or `default-scheduler`, no
//! nodeName) to nodes, kube-scheduler style.
//!
//! Nodes and pods live in kube-runtime reflector stores. One task owns all scheduling state:
//! it follows both watch streams, keeps a per-pod summary of every bound pod, and schedules
//! the queue in batches. Each batch builds one [`snapshot::Snapshot`] (nodes plus bound and
//! assumed pods) and runs the pure [`algorithm::schedule_with`] per pod, adding each placed
//! pod to the snapshot so that a burst never overcommits a node. Bindings go out
//! concurrently (`pods/binding`); a placed pod stays "assumed" on its node until the store
//! shows it bound (or its binding fails), so the next batch counts it too.
//!
//! A pod that fits nowhere gets a `FailedScheduling` event and a `PodScheduled=False`
//! condition in kube-scheduler's words and waits in the queue's backoff; node changes and
//! pod deletions (which can free room) wake it early.

pub mod algorithm;
pub mod filters;
pub mod queue;
pub mod resources;
pub mod scores;
pub mod snapshot;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use algorithm::{schedule, schedule_with, FitError};
use queue::{PodKey, SchedulingQueue};
use snapshot::{PodInfo, Snapshot};

use crate::events::{self, EventRecorder, EventType};
use crate::Context;

pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Pods taken from the queue per scheduling batch (one snapshot each).
const BATCH: usize = 256;
/// Placed pods whose binding has not answered yet, at most.
const MAX_OUTSTANDING: usize = 1024;
/// Concurrent binding requests.
const BINDS_IN_FLIGHT: usize = 16;
/// Concurrent event / status writes: fewer than bindings, so that during a burst the API
/// server spends its time on bindings (kube's event broadcaster is asynchronous too).
const REPORTS_IN_FLIGHT: usize = 4;
/// A bound pod that the store has not shown bound after this long is forgotten (deleted
/// meanwhile, or the watch lost it; a re-list brings it back).
const ASSUME_TTL: Duration = Duration::from_secs(30);

/// Whether this scheduler should place `pod`.
pub fn wants_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    spec.node_name.as_deref().is_none_or(str::is_empty)
        && spec
            .scheduler_name
            .as_deref()
            .is_none_or(|n| n.is_empty() || n == SCHEDULER_NAME)
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
        && pod.metadata.deletion_timestamp.is_none()
        && phase != "Succeeded"
        && phase != "Failed"
}

fn pod_key(pod: &Pod) -> PodKey {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// What of a node can change where pods fit; heartbeats do not.
fn node_fingerprint(node: &Node) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    if let Some(spec) = &node.spec {
        spec.unschedulable.hash(&mut h);
        serde_json::to_string(&spec.taints)
            .unwrap_or_default()
            .hash(&mut h);
    }
    if let Some(status) = &node.status {
        serde_json::to_string(&status.allocatable)
            .unwrap_or_default()
            .hash(&mut h);
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone());
        ready.hash(&mut h);
    }
    h.finish()
}

struct Assumed {
    node: String,
    info: Arc<PodInfo>,
    /// When the binding succeeded; `None` while it is in flight.
    bound_at: Option<Instant>,
}

enum Outcome {
    Bound {
        key: PodKey,
        pod: Arc<Pod>,
        node: String,
    },
    BindFailed {
        key: PodKey,
        priority: i32,
        error: kube::Error,
    },
    Reported,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

struct Scheduler {
    ctx: Arc<Context>,
    events: Arc<EventRecorder>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    nodes_synced: bool,
    pods_synced: bool,
    queue: SchedulingQueue,
    /// Every bound, non-terminal pod in the store.
    bound: HashMap<PodKey, Arc<PodInfo>>,
    assumed: HashMap<PodKey, Assumed>,
    node_fingerprints: HashMap<String, u64>,
    outstanding: usize,
    tasks: JoinSet<Outcome>,
    binds: Arc<Semaphore>,
    reports: Arc<Semaphore>,
    scheduled_total: u64,
}

/// Runs the scheduler until the task is aborted.
pub async fn run(ctx: Arc<Context>) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let node_events = reflector::reflector(
        node_writer,
        watcher::watcher(
            Api::<Node>::all(ctx.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let pod_events = reflector::reflector(
        pod_writer,
        watcher::watcher(
            Api::<Pod>::all(ctx.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    // Events come from "default-scheduler", as kube-scheduler's do (`kubectl describe`).
    let events = EventRecorder::new(ctx.client.clone(), SCHEDULER_NAME);
    let scheduler = Scheduler {
        ctx,
        events: Arc::new(events),
        nodes,
        pods,
        nodes_synced: false,
        pods_synced: false,
        queue: SchedulingQueue::default(),
        bound: HashMap::new(),
        assumed: HashMap::new(),
        node_fingerprints: HashMap::new(),
        outstanding: 0,
        tasks: JoinSet::new(),
        binds: Arc::new(Semaphore::new(BINDS_IN_FLIGHT)),
        reports: Arc::new(Semaphore::new(REPORTS_IN_FLIGHT)),
        scheduled_total: 0,
    };
    scheduler.run(node_events, pod_events).await
}

impl Scheduler {
    async fn run(
        mut self,
        node_events: impl Stream<Item = watcher::Result<watcher::Event<Node>>>,
        pod_events: impl Stream<Item = watcher::Result<watcher::Event<Pod>>>,
    ) {
        let mut node_events = std::pin::pin!(node_events);
        let mut pod_events = std::pin::pin!(pod_events);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!("scheduler started");
        loop {
            let can_schedule = self.nodes_synced
                && self.pods_synced
                && self.queue.active_len() > 0
                // Wait for room for a whole batch: a snapshot per pod would cost O(pods) each.
                && MAX_OUTSTANDING - self.outstanding >= BATCH.min(self.queue.active_len());
            tokio::select! {
                biased;
                ev = node_events.next() => match ev {
                    Some(Ok(ev)) => self.on_node_event(ev),
                    Some(Err(e)) => tracing::warn!(error = %e, "scheduler: node watch failed; retrying"),
                    None => return,
                },
                ev = pod_events.next() => match ev {
                    Some(Ok(ev)) => self.on_pod_event(ev),
                    Some(Err(e)) => tracing::warn!(error = %e, "scheduler: pod watch failed; retrying"),
                    None => return,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(outcome) => self.on_outcome(outcome),
                    Err(e) => tracing::error!(error = %e, "scheduler: a binding task failed"),
                },
                _ = tick.tick() => {
                    self.queue.flush(Instant::now());
                }
                _ = std::future::ready(()), if can_schedule => self.schedule_batch(),
            }
        }
    }

    fn on_node_event(&mut self, ev: watcher::Event<Node>) {
        match ev {
            watcher::Event::Apply(node) => {
                let fp = node_fingerprint(&node);
                if self.node_fingerprints.insert(node.name_any(), fp) != Some(fp) {
                    self.queue.cluster_changed();
                }
            }
            watcher::Event::Delete(node) => {
                self.node_fingerprints.remove(&node.name_any());
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                self.node_fingerprints = self
                    .nodes
                    .state()
                    .iter()
                    .map(|n| (n.name_any(), node_fingerprint(n)))
                    .collect();
                self.nodes_synced = true;
                self.queue.cluster_changed();
                tracing::info!(
                    nodes = self.node_fingerprints.len(),
                    "scheduler: nodes listed"
                );
            }
        }
    }

    fn on_pod_event(&mut self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Apply(pod) => self.on_pod_upsert(&pod),
            watcher::Event::Delete(pod) => {
                let key = pod_key(&pod);
                self.queue.forget(&key);
                let held = self.bound.remove(&key).is_some();
                let assumed = self.assumed.remove(&key).is_some();
                if held || assumed {
                    self.queue.cluster_changed();
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
            watcher::Event::InitDone => {
                // The store now holds the full list: rebuild from it (this also drops pods
                // deleted while the watch was down).
                let previous = std::mem::take(&mut self.bound);
                let mut pending = 0;
                for pod in self.pods.state() {
                    let key = pod_key(&pod);
                    if let Some(info) = bound_info(&pod, previous.get(&key)) {
                        self.assumed.remove(&key);
                        self.bound.insert(key, info);
                    } else if wants_scheduling(&pod) && !self.assumed.contains_key(&key) {
                        self.queue.add(&key, priority(&pod));
                        pending += 1;
                    }
                }
                self.pods_synced = true;
                self.queue.cluster_changed();
                tracing::info!(bound = self.bound.len(), pending, "scheduler: pods listed");
            }
        }
    }

    fn on_pod_upsert(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        if bound {
            self.queue.forget(&key);
            self.assumed.remove(&key);
            match bound_info(pod, self.bound.get(&key)) {
                Some(info) => {
                    self.bound.insert(key, info);
                }
                None => {
                    // Finished: its resources are free again.
                    if self.bound.remove(&key).is_some() {
                        self.queue.cluster_changed();
                    }
                }
            }
        } else if wants_scheduling(pod) {
            if !self.assumed.contains_key(&key) {
                self.queue.add(&key, priority(pod));
            }
        } else {
            self.queue.forget(&key);
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Bound { key, pod, node } => {
                self.outstanding -= 1;
                self.scheduled_total += 1;
                if let Some(a) = self.assumed.get_mut(&key) {
                    a.bound_at = Some(Instant::now());
                }
                self.spawn_scheduled_event(pod, node);
            }
            Outcome::BindFailed {
                key,
                priority,
                error,
            } => {
                self.outstanding -= 1;
                self.assumed.remove(&key);
                let gone_or_taken =
                    matches!(&error, kube::Error::Api(s) if s.code == 404 || s.code == 409);
                tracing::info!(pod = %key, error = %error, "scheduler: binding failed");
                if !gone_or_taken {
                    self.queue.unschedulable(&key, priority, Instant::now());
                }
            }
            Outcome::Reported => {}
        }
    }

    fn lookup(&self, key: &str) -> Option<Arc<Pod>> {
        let (ns, name) = key.split_once('/')?;
        self.pods.get(&ObjectRef::new(name).within(ns))
    }

    /// Nodes plus every bound and assumed pod.
    fn snapshot(&mut self) -> Snapshot {
        let mut snapshot = Snapshot::new(self.nodes.state());
        for info in self.bound.values() {
            if let Some(node) = &info.node_name {
                snapshot.add_pod(node, info.clone());
            }
        }
        let now = Instant::now();
        self.assumed.retain(|_, a| {
            a.bound_at
                .is_none_or(|t| now.duration_since(t) < ASSUME_TTL)
        });
        for a in self.assumed.values() {
            snapshot.add_pod(&a.node, a.info.clone());
        }
        snapshot
    }

    fn schedule_batch(&mut self) {
        let keys = self
            .queue
            .pop(BATCH.min(MAX_OUTSTANDING - self.outstanding));
        let started = Instant::now();
        let mut snapshot = self.snapshot();
        let mut rng = rand::thread_rng();
        let (mut placed, mut failed) = (0, 0);
        for (key, priority) in keys {
            let Some(pod) = self.lookup(&key) else {
                continue;
            };
            if !wants_scheduling(&pod) || self.assumed.contains_key(&key) {
                continue;
            }
            let info = Arc::new(PodInfo::new(&pod));
            match schedule_with(&pod, &info, &snapshot, &mut rng) {
                Ok(node) => {
                    snapshot.add_pod(&node, info.clone());
                    self.assumed.insert(
                        key.clone(),
                        Assumed {
                            node: node.clone(),
                            info,
                            bound_at: None,
                        },
                    );
                    self.outstanding += 1;
                    self.spawn_bind(key, pod, node);
                    placed += 1;
                }
                Err(fit) => {
                    self.queue.unschedulable(&key, priority, Instant::now());
                    tracing::debug!(pod = %key, reason = %fit, "scheduler: no node fits");
                    self.spawn_report(pod, fit.to_string());
                    failed += 1;
                }
            }
        }
        tracing::debug!(
            placed,
            failed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            queued = self.queue.active_len(),
            waiting = self.queue.waiting_len(),
            outstanding = self.outstanding,
            scheduled_total = self.scheduled_total,
            "scheduler: batch"
        );
    }

    fn spawn_bind(&mut self, key: PodKey, pod: Arc<Pod>, node: String) {
        let ctx = self.ctx.clone();
        let binds = self.binds.clone();
        self.tasks.spawn(async move {
            let namespace = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                },
                target: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.clone()),
                    ..Default::default()
                },
            };
            let result = {
                let _permit = binds.acquire().await;
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
                api.create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
            };
            match result {
                Ok(_) => Outcome::Bound { key, pod, node },
                Err(error) => Outcome::BindFailed {
                    key,
                    priority: priority(&pod),
                    error,
                },
            }
        });
    }

    /// `Scheduled`, written after the binding so that it never holds up the next one.
    fn spawn_scheduled_event(&mut self, pod: Arc<Pod>, node: String) {
        let recorder = self.events.clone();
        let reports = self.reports.clone();
        self.tasks.spawn(async move {
            let _permit = reports.acquire().await;
            let message = format!(
                "Successfully assigned {}/{} to {node}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            );
            recorder
                .record(
                    &events::reference(&*pod),
                    EventType::Normal,
                    "Scheduled",
                    &message,
                )
                .await;
            Outcome::Reported
        });
    }

    /// FailedScheduling event and `PodScheduled=False` (only written when it changes).
    fn spawn_report(&mut self, pod: Arc<Pod>, message: String) {
        let ctx = self.ctx.clone();
        let recorder = self.events.clone();
        let reports = self.reports.clone();
        self.tasks.spawn(async move {
            let _permit = reports.acquire().await;
            recorder.record(&events::reference(&*pod), EventType::Warning, "FailedScheduling", &message).await;
            let current = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
            let unchanged = current.is_some_and(|c| {
                c.status == "False" && c.reason.as_deref() == Some("Unschedulable") && c.message.as_deref() == Some(&message)
            });
            if unchanged {
                return Outcome::Reported;
            }
            let transition = match current {
                Some(c) if c.status == "False" => c.last_transition_time.clone().map(|t| t.0.to_string()),
                _ => None,
            }
            .unwrap_or_else(|| jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_default().to_string());
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": transition,
            }]}});
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
            if let Err(e) = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await {
                tracing::debug!(pod = %pod.name_any(), error = %e, "scheduler: PodScheduled condition not written");
            }
            Outcome::Reported
        });
    }
}

/// The summary of a bound, non-terminal pod; reuses `previous` when nothing it depends on
/// changed. `None` for pods that are not bound or have finished.
fn bound_info(pod: &Pod, previous: Option<&Arc<PodInfo>>) -> Option<Arc<PodInfo>> {
    let node = pod
        .spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())?;
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    if phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    if let Some(prev) = previous {
        let same = prev.uid == pod.metadata.uid.as_deref().unwrap_or("")
            && prev.node_name.as_deref() == Some(node)
            && pod
                .metadata
                .labels
                .as_ref()
                .map_or(prev.labels.is_empty(), |l| *l == prev.labels);
        if same {
            return Some(prev.clone());
        }
    }
    Some(Arc::new(PodInfo::new(pod)))
}

#[cfg(test)]
mod tests {
    use super::snapshot::testutil::*;
    use super::*;

    #[test]
    fn which_pods_are_ours() {
        let p = pod("p", "", "");
        assert!(wants_scheduling(&p));
        assert!(!wants_scheduling(&on(p.clone(), "n1")));
        let mut other = p.clone();
        other.spec.as_mut().unwrap().scheduler_name = Some("my-scheduler".into());
        assert!(!wants_scheduling(&other));
        let mut ours = p.clone();
        ours.spec.as_mut().unwrap().scheduler_name = Some(SCHEDULER_NAME.into());
        assert!(wants_scheduling(&ours));
        let mut gated = p.clone();
        gated.spec.as_mut().unwrap().scheduling_gates =
            Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
                name: "wait".into(),
            }]);
        assert!(!wants_scheduling(&gated));
    }

    #[test]
    fn bound_info_reuses_unchanged_summaries() {
        let p = on(labelled(pod("p", "1", ""), "app", "web"), "n1");
        let first = bound_info(&p, None).unwrap();
        let again = bound_info(&p, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let relabelled = labelled(p.clone(), "app", "db");
        assert!(!Arc::ptr_eq(
            &first,
            &bound_info(&relabelled, Some(&first)).unwrap()
        ));
        let mut done = p.clone();
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(bound_info(&done, Some(&first)).is_none());
        assert!(bound_info(&pod("q", "", ""), None).is_none());
    }

    #[test]
    fn fingerprints_ignore_heartbeats() {
        let n = node("n1", "1", "1Gi");
        let mut beat = n.clone();
        beat.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_heartbeat_time = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert_eq!(node_fingerprint(&n), node_fingerprint(&beat));
        let mut cordoned = n.clone();
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_ne!(node_fingerprint(&n), node_fingerprint(&cordoned));
    }
}
