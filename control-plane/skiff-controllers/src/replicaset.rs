//! The ReplicaSet controller: keeps `spec.replicas` pods matching the selector, adopting
//! orphans that match and releasing pods that stopped matching.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use crate::events::{reference, EventType};
use crate::podutil::{self, is_active, is_controlled_by, selector_matches};
use crate::{Context, Error};

/// At most this many pods are created or deleted in one pass; the next pass continues.
const BURST: usize = 500;

pub async fn run(ctx: Arc<Context>) {
    let sets: Api<ReplicaSet> = Api::all(ctx.client.clone());
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    Controller::new(sets, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(_rs: Arc<ReplicaSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "replicaset sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// The order kube deletes surplus pods in: unscheduled, then pending, then not ready, then
/// the most recently created first.
fn deletion_rank(pod: &Pod) -> (u8, u8, u8, std::cmp::Reverse<i64>) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some() as u8;
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready = podutil::is_ready(pod) as u8;
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    (scheduled, phase, ready, std::cmp::Reverse(created))
}

pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = rs.spec.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = Some(&spec.selector);
    let listed = pods_api
        .list(&ListParams::default().labels(&podutil::selector_query(selector)))
        .await?;
    let mut owned = Vec::new();
    for pod in listed.items {
        let labels = pod.labels().clone();
        let matches = selector_matches(selector, &labels);
        match podutil::controller_of(&pod) {
            None if matches && is_active(&pod) => {
                // Adopt: a pod that matches and has no controller becomes ours.
                let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
                refs.push(podutil::owner_reference(rs.as_ref()));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
                if let Ok(adopted) = pods_api
                    .patch(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    owned.push(adopted);
                }
            }
            Some(_) if is_controlled_by(&pod, rs.as_ref()) => {
                if matches {
                    owned.push(pod);
                } else {
                    // Release: the pod's labels no longer match our selector.
                    let refs: Vec<_> = pod
                        .metadata
                        .owner_references
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|r| Some(&r.uid) != rs.metadata.uid.as_ref())
                        .collect();
                    let patch = json!({"metadata": {"ownerReferences": refs}});
                    let _ = pods_api
                        .patch(
                            &pod.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await;
                }
            }
            _ => {}
        }
    }
    let mut active: Vec<Pod> = owned.iter().filter(|p| is_active(p)).cloned().collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    if active.len() < want {
        let template = spec.template.clone().unwrap_or_default();
        let count = (want - active.len()).min(BURST);
        let creates = (0..count).map(|_| {
            let pod = podutil::pod_from_template(&template, rs.as_ref(), &name);
            let api = pods_api.clone();
            async move { api.create(&PostParams::default(), &pod).await }
        });
        for result in futures::future::join_all(creates).await {
            match result {
                Ok(pod) => {
                    ctx.events
                        .record(
                            &reference(rs.as_ref()),
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {}", pod.name_any()),
                        )
                        .await;
                    active.push(pod);
                }
                Err(e) => {
                    ctx.events
                        .record(
                            &reference(rs.as_ref()),
                            EventType::Warning,
                            "FailedCreate",
                            &format!("Error creating: {e}"),
                        )
                        .await;
                }
            }
        }
    } else if active.len() > want {
        active.sort_by_key(deletion_rank);
        let surplus: Vec<Pod> = active.drain(..(active.len() - want).min(BURST)).collect();
        let deletes = surplus.iter().map(|pod| {
            let api = pods_api.clone();
            let name = pod.name_any();
            async move {
                (
                    name.clone(),
                    api.delete(&name, &DeleteParams::default()).await,
                )
            }
        });
        for (pod, result) in futures::future::join_all(deletes).await {
            match result {
                Ok(_) => {
                    ctx.events
                        .record(
                            &reference(rs.as_ref()),
                            EventType::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {pod}"),
                        )
                        .await
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    ctx.events
                        .record(
                            &reference(rs.as_ref()),
                            EventType::Warning,
                            "FailedDelete",
                            &format!("Error deleting: {e}"),
                        )
                        .await
                }
            }
        }
    }
    let now = jiff::Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let ready = active.iter().filter(|p| podutil::is_ready(p)).count() as i32;
    let available = active
        .iter()
        .filter(|p| podutil::is_available(p, min_ready, now))
        .count() as i32;
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })
        .count() as i32;
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        fully_labeled_replicas: Some(fully_labeled),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    if rs.status.as_ref() != Some(&status) {
        let sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        sets.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    if available < ready && min_ready > 0 {
        return Ok(Action::requeue(Duration::from_secs(min_ready as u64)));
    }
    if active.len() != want {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    Ok(Action::await_change())
}
