//! The Deployment controller: one ReplicaSet per pod template, rolled by RollingUpdate
//! (maxSurge/maxUnavailable) or Recreate, with revisions, history, pause and the
//! Available/Progressing conditions that `kubectl rollout status` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use crate::events::{reference, EventType};
use crate::podutil::{self, is_controlled_by};
use crate::{Context, Error};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";

pub async fn run(ctx: Arc<Context>) {
    let deployments: Api<Deployment> = Api::all(ctx.client.clone());
    let sets: Api<ReplicaSet> = Api::all(ctx.client.clone());
    Controller::new(deployments, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(_d: Arc<Deployment>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "deployment sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// An int-or-percent against `total`; percentages round up for surge, down for unavailable.
pub fn resolve(
    value: Option<&IntOrString>,
    total: i32,
    round_up: bool,
    default_percent: i32,
) -> i32 {
    let percent = |p: i32| {
        let scaled = total as i64 * p as i64;
        (if round_up {
            (scaled + 99) / 100
        } else {
            scaled / 100
        }) as i32
    };
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            match s.strip_suffix('%').and_then(|p| p.parse::<i32>().ok()) {
                Some(p) => percent(p),
                None => s.parse().unwrap_or(0),
            }
        }
        None => percent(default_percent),
    }
}

/// (maxSurge, maxUnavailable) as kube computes them: never both zero.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let ru = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), replicas, true, 25);
    let mut unavailable = resolve(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
        25,
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

fn template_without_hash(t: Option<&PodTemplateSpec>) -> PodTemplateSpec {
    let mut t = t.cloned().unwrap_or_default();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    t
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// Available pods per ReplicaSet (by uid), counted from the pods themselves: ReplicaSet
/// status lags behind scale-downs, and trusting it could let a rollout dip below
/// maxUnavailable.
type Availability = std::collections::HashMap<String, i32>;

async fn count_available(
    ctx: &Context,
    d: &Deployment,
    sets: &[&ReplicaSet],
) -> Result<Availability, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    let selector = d.spec.as_ref().map(|s| &s.selector);
    let min_ready = d
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = jiff::Timestamp::now();
    let listed = pods
        .list(&ListParams::default().labels(&podutil::selector_query(selector)))
        .await?;
    let mut counts = Availability::new();
    for pod in listed.items {
        if podutil::is_terminating(&pod) || !podutil::is_available(&pod, min_ready, now) {
            continue;
        }
        if let Some(owner) = sets.iter().find(|rs| is_controlled_by(&pod, **rs)) {
            *counts
                .entry(owner.metadata.uid.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    Ok(counts)
}

/// A ReplicaSet's available pods, at most its replicas: pods beyond them are about to be
/// deleted by its controller and must not pay for another scale-down.
fn available_now(rs: &ReplicaSet, counts: &Availability) -> i32 {
    let counted = rs
        .metadata
        .uid
        .as_ref()
        .and_then(|u| counts.get(u))
        .copied()
        .unwrap_or(0);
    counted.min(spec_replicas(rs))
}

fn condition(d: &Deployment, kind: &str) -> Option<DeploymentCondition> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .cloned()
}

struct Sync<'a> {
    ctx: &'a Context,
    d: &'a Deployment,
    sets: Api<ReplicaSet>,
}

impl Sync<'_> {
    async fn scale(&self, rs: &mut ReplicaSet, to: i32, why: &str) -> Result<(), Error> {
        let from = spec_replicas(rs);
        if from == to {
            return Ok(());
        }
        let desired = self.d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let (surge, _) = surge_and_unavailable(self.d);
        let patch = json!({
            "metadata": {"annotations": {DESIRED: desired.to_string(), MAX_REPLICAS: (desired + surge).to_string()}},
            "spec": {"replicas": to},
        });
        *rs = self
            .sets
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        let direction = if to > from { "up" } else { "down" };
        self.ctx
            .events
            .record(
                &reference(self.d),
                EventType::Normal,
                "ScalingReplicaSet",
                &format!(
                    "Scaled {direction} replica set {} to {to} from {from}{why}",
                    rs.name_any()
                ),
            )
            .await;
        Ok(())
    }

    async fn create_new(&self, revision: i64, replicas: i32) -> Result<ReplicaSet, Error> {
        let d = self.d;
        let spec = d.spec.clone().unwrap_or_default();
        let mut template = template_without_hash(Some(&spec.template));
        let mut collision = d.status.as_ref().and_then(|s| s.collision_count);
        loop {
            let hash = podutil::template_hash(&template, collision);
            let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
            meta.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut labels = meta.labels.clone().unwrap_or_default();
            labels.insert(HASH_LABEL.into(), hash.clone());
            let (surge, _) = surge_and_unavailable(d);
            let desired = spec.replicas.unwrap_or(1);
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{}-{hash}", d.name_any())),
                    namespace: d.namespace(),
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([
                        (REVISION.to_string(), revision.to_string()),
                        (DESIRED.to_string(), desired.to_string()),
                        (MAX_REPLICAS.to_string(), (desired + surge).to_string()),
                    ])),
                    owner_references: Some(vec![podutil::owner_reference(d)]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(replicas),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector,
                    template: Some(template.clone()),
                }),
                status: None,
            };
            match self.sets.create(&PostParams::default(), &rs).await {
                Ok(created) => {
                    self.ctx
                        .events
                        .record(
                            &reference(d),
                            EventType::Normal,
                            "ScalingReplicaSet",
                            &format!("Scaled up replica set {} to {replicas}", created.name_any()),
                        )
                        .await;
                    return Ok(created);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // A ReplicaSet of that name with another template: bump the collision count.
                    let existing = self.sets.get(&format!("{}-{hash}", d.name_any())).await?;
                    if is_controlled_by(&existing, d)
                        && template_without_hash(
                            existing.spec.as_ref().and_then(|s| s.template.as_ref()),
                        ) == template_without_hash(Some(&spec.template))
                    {
                        return Ok(existing);
                    }
                    collision = Some(collision.unwrap_or(0) + 1);
                    template = template_without_hash(Some(&spec.template));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let spec = d.spec.clone().unwrap_or_default();
    let sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let sync = Sync {
        ctx: &ctx,
        d: &d,
        sets: sets.clone(),
    };
    let selector = Some(&spec.selector);

    // Our ReplicaSets, adopting matching orphans.
    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in sets
        .list(&ListParams::default().labels(&podutil::selector_query(selector)))
        .await?
        .items
    {
        if rs.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if is_controlled_by(&rs, d.as_ref()) {
            owned.push(rs);
        } else if podutil::controller_of(&rs).is_none()
            && podutil::selector_matches(selector, rs.labels())
        {
            let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
            refs.push(podutil::owner_reference(d.as_ref()));
            let patch = json!({"metadata": {"ownerReferences": refs}});
            owned.push(
                sets.patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?,
            );
        }
    }
    let wanted_template = template_without_hash(Some(&spec.template));
    let new_index = owned.iter().position(|rs| {
        template_without_hash(rs.spec.as_ref().and_then(|s| s.template.as_ref())) == wanted_template
    });
    let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
    let replicas = spec.replicas.unwrap_or(1);
    let paused = spec.paused.unwrap_or(false);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");

    let mut new_rs = match new_index {
        Some(i) => {
            let mut rs = owned.remove(i);
            // `rollout undo` brings an old template back: it becomes the newest revision.
            if revision_of(&rs) < max_revision || revision_of(&rs) == 0 {
                let next = max_revision.max(revision_of(&rs))
                    + if revision_of(&rs) < max_revision {
                        1
                    } else {
                        0
                    };
                let next = next.max(1);
                let patch = json!({"metadata": {"annotations": {REVISION: next.to_string()}}});
                rs = sets
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
            }
            Some(rs)
        }
        None if paused => None,
        None => {
            let old_total: i32 = owned.iter().map(spec_replicas).sum();
            let initial = if recreate {
                0
            } else if old_total == 0 {
                replicas
            } else {
                let (surge, _) = surge_and_unavailable(&d);
                (replicas + surge - old_total).clamp(0, replicas)
            };
            Some(sync.create_new(max_revision + 1, initial).await?)
        }
    };
    // The Deployment carries its current revision too (kubectl's rollout undo patches
    // `/metadata/annotations`, which therefore must exist).
    if let Some(rs) = new_rs.as_ref() {
        let revision = revision_of(rs).to_string();
        if d.annotations().get(REVISION) != Some(&revision) {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    let mut old: Vec<ReplicaSet> = owned;
    old.sort_by_key(|rs| {
        rs.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0)
    });

    if !paused {
        if let Some(new_rs) = new_rs.as_mut() {
            if recreate {
                let old_running: i32 = old
                    .iter()
                    .map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas))
                    .sum();
                for rs in old.iter_mut() {
                    sync.scale(rs, 0, "").await?;
                }
                if old_running == 0 && old_pods_gone(&ctx, &ns, &old).await? {
                    sync.scale(new_rs, replicas, "").await?;
                }
            } else {
                rolling_update(&sync, &d, new_rs, &mut old, replicas).await?;
            }
        }
    } else if let Some(new_rs) = new_rs.as_mut() {
        // Paused: scaling still applies, to the current ReplicaSet only when nothing is rolling.
        if old.iter().all(|rs| spec_replicas(rs) == 0) {
            sync.scale(new_rs, replicas, "").await?;
        }
    }

    // Old revisions beyond revisionHistoryLimit go, oldest first.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let idle: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().map_or(0, |s| s.replicas) == 0)
        .collect();
    if idle.len() > limit {
        for rs in idle.iter().take(idle.len() - limit) {
            let _ = sets.delete(&rs.name_any(), &DeleteParams::default()).await;
        }
    }

    let all: Vec<&ReplicaSet> = new_rs.iter().chain(old.iter()).collect();
    let status_of = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| -> i32 {
        all.iter().filter_map(|rs| rs.status.as_ref()).map(f).sum()
    };
    let total = status_of(|s| s.replicas);
    let ready = status_of(|s| s.ready_replicas.unwrap_or(0));
    let avail = status_of(|s| s.available_replicas.unwrap_or(0));
    let updated = new_rs
        .as_ref()
        .and_then(|rs| rs.status.as_ref())
        .map_or(0, |s| s.replicas);
    let new_available = new_rs
        .as_ref()
        .and_then(|rs| rs.status.as_ref())
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let (_, max_unavailable) = surge_and_unavailable(&d);
    let now = Time(jiff::Timestamp::now());
    let mut conditions: Vec<DeploymentCondition> = Vec::new();
    let is_available = avail >= replicas - max_unavailable;
    let mut available_cond = condition(&d, "Available").unwrap_or_default();
    let (status_str, reason, message) = if is_available {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    if available_cond.status != status_str {
        available_cond.last_transition_time = Some(now.clone());
    }
    available_cond = DeploymentCondition {
        type_: "Available".into(),
        status: status_str.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(now.clone()),
        last_transition_time: available_cond.last_transition_time.or(Some(now.clone())),
    };
    conditions.push(available_cond);

    let complete = new_rs.is_some()
        && updated == replicas
        && total == replicas
        && new_available == replicas
        && old.iter().all(|rs| spec_replicas(rs) == 0);
    let previous = condition(&d, "Progressing");
    let new_name = new_rs.as_ref().map(|rs| rs.name_any()).unwrap_or_default();
    let progressed = d.status.as_ref().is_none_or(|s| {
        s.updated_replicas != Some(updated)
            || s.ready_replicas != Some(ready)
            || s.available_replicas != Some(avail)
            || s.replicas != Some(total)
    });
    let deadline = spec.progress_deadline_seconds.unwrap_or(600) as i64;
    let progressing = if paused {
        DeploymentCondition {
            type_: "Progressing".into(),
            status: "Unknown".into(),
            reason: Some("DeploymentPaused".into()),
            message: Some("Deployment is paused".into()),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
        }
    } else if complete {
        let keep = previous
            .as_ref()
            .filter(|p| p.reason.as_deref() == Some("NewReplicaSetAvailable"));
        DeploymentCondition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: Some("NewReplicaSetAvailable".into()),
            message: Some(format!(
                "ReplicaSet \"{new_name}\" has successfully progressed."
            )),
            last_update_time: keep
                .and_then(|p| p.last_update_time.clone())
                .or(Some(now.clone())),
            last_transition_time: previous
                .as_ref()
                .filter(|p| p.status == "True")
                .and_then(|p| p.last_transition_time.clone())
                .or(Some(now.clone())),
        }
    } else {
        let since = previous
            .as_ref()
            .filter(|p| p.status == "True" && p.reason.as_deref() != Some("NewReplicaSetAvailable"))
            .and_then(|p| p.last_update_time.clone());
        let stalled = !progressed
            && since
                .as_ref()
                .is_some_and(|t| now.0.as_second() - t.0.as_second() > deadline);
        let already_failed = previous
            .as_ref()
            .is_some_and(|p| p.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            && !progressed;
        if stalled || already_failed {
            DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some(format!(
                    "ReplicaSet \"{new_name}\" has timed out progressing."
                )),
                last_update_time: previous
                    .as_ref()
                    .filter(|_| already_failed)
                    .and_then(|p| p.last_update_time.clone())
                    .or(Some(now.clone())),
                last_transition_time: previous
                    .as_ref()
                    .filter(|p| p.status == "False")
                    .and_then(|p| p.last_transition_time.clone())
                    .or(Some(now.clone())),
            }
        } else {
            DeploymentCondition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: Some("ReplicaSetUpdated".into()),
                message: Some(format!("ReplicaSet \"{new_name}\" is progressing.")),
                last_update_time: if progressed || since.is_none() {
                    Some(now.clone())
                } else {
                    since
                },
                last_transition_time: previous
                    .as_ref()
                    .filter(|p| p.status == "True")
                    .and_then(|p| p.last_transition_time.clone())
                    .or(Some(now.clone())),
            }
        }
    };
    let waiting_on_deadline = progressing.reason.as_deref() == Some("ReplicaSetUpdated");
    conditions.push(progressing);
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        unavailable_replicas: Some((replicas - avail).max(0)),
        conditions: Some(conditions),
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        terminating_replicas: None,
    };
    let changed = {
        // Timestamps alone do not make a status change worth writing.
        let strip = |s: &DeploymentStatus| {
            let mut s = s.clone();
            for c in s.conditions.iter_mut().flatten() {
                c.last_update_time = None;
                c.last_transition_time = None;
            }
            s
        };
        d.status.as_ref().map(strip) != Some(strip(&status))
    };
    if changed {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    if waiting_on_deadline {
        // Check the progress deadline even if nothing else happens.
        return Ok(Action::requeue(Duration::from_secs(
            (deadline as u64).clamp(1, 30),
        )));
    }
    Ok(Action::await_change())
}

async fn old_pods_gone(ctx: &Context, ns: &str, old: &[ReplicaSet]) -> Result<bool, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for rs in old {
        let selector = rs.spec.as_ref().map(|s| &s.selector);
        let list = pods
            .list(&ListParams::default().labels(&podutil::selector_query(selector)))
            .await?;
        if list.items.iter().any(|p| is_controlled_by(p, rs)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One step of a rolling update, kube's way: scale the new ReplicaSet up within the surge,
/// then scale old ones down as far as availability allows.
async fn rolling_update(
    sync: &Sync<'_>,
    d: &Deployment,
    new_rs: &mut ReplicaSet,
    old: &mut [ReplicaSet],
    replicas: i32,
) -> Result<(), Error> {
    let (surge, max_unavailable) = surge_and_unavailable(d);
    let all_spec = |new_rs: &ReplicaSet, old: &[ReplicaSet]| {
        spec_replicas(new_rs) + old.iter().map(spec_replicas).sum::<i32>()
    };

    // Scale up the new ReplicaSet.
    let current = spec_replicas(new_rs);
    if current > replicas {
        sync.scale(new_rs, replicas, "").await?;
    } else if current < replicas {
        let room = replicas + surge - all_spec(new_rs, old);
        if room > 0 {
            let to = (current + room).min(replicas);
            sync.scale(new_rs, to, "").await?;
        }
    }

    // Scale down old ReplicaSets.
    let counts = {
        let all: Vec<&ReplicaSet> = std::iter::once(&*new_rs).chain(old.iter()).collect();
        count_available(sync.ctx, d, &all).await?
    };
    let available = |rs: &ReplicaSet| available_now(rs, &counts);
    let min_available = replicas - max_unavailable;
    let new_unavailable = spec_replicas(new_rs) - available(new_rs);
    let mut budget = all_spec(new_rs, old) - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(());
    }
    // First the old pods that are not available anyway.
    for rs in old.iter_mut() {
        let unhealthy = spec_replicas(rs) - available(rs);
        if budget <= 0 || unhealthy <= 0 {
            continue;
        }
        let by = unhealthy.min(budget);
        let to = spec_replicas(rs) - by;
        sync.scale(rs, to, "").await?;
        budget -= by;
    }
    // Then healthy ones, as long as enough stay available overall.
    let available_total: i32 = available(new_rs) + old.iter().map(&available).sum::<i32>();
    let mut can_remove = available_total - min_available;
    for rs in old.iter_mut() {
        if can_remove <= 0 {
            break;
        }
        let by = spec_replicas(rs).min(can_remove);
        if by > 0 {
            let to = spec_replicas(rs) - by;
            sync.scale(rs, to, "").await?;
            can_remove -= by;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_and_unavailable_round_like_kube() {
        assert_eq!(
            resolve(Some(&IntOrString::String("25%".into())), 10, true, 25),
            3
        );
        assert_eq!(
            resolve(Some(&IntOrString::String("25%".into())), 10, false, 25),
            2
        );
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 10, false, 25), 2);
        assert_eq!(resolve(None, 4, true, 25), 1);
        assert_eq!(resolve(None, 1, false, 25), 0);
        let d = Deployment {
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
                replicas: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(surge_and_unavailable(&d), (1, 0));
    }
}
