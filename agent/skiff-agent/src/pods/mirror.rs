//! Mirror pods: each static pod has a copy in the API (annotation
//! `kubernetes.io/config.mirror`, owned by the Node) so that `kubectl get pods` shows it and
//! its status. The keeper makes the API agree with the static pods: a missing mirror is
//! created, one for an older manifest or being deleted is removed and created again, and
//! mirrors of static pods that are gone are removed. Deleting a mirror never touches the
//! static pod itself.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::ResourceExt;
use tokio::sync::{watch, Notify};

use super::static_pods::{mirror_of, mirror_pod};

/// How often the API is compared with the static pods when nothing wakes the keeper.
const RESYNC: Duration = Duration::from_secs(10);

pub async fn run(
    client: kube::Client,
    node: String,
    mut desired: watch::Receiver<BTreeMap<String, Pod>>,
    wake: Arc<Notify>,
) {
    let mut node_uid: Option<String> = None;
    let mut conflicts: HashSet<String> = HashSet::new();
    loop {
        let statics = desired.borrow_and_update().clone();
        if node_uid.is_none() {
            let nodes: Api<Node> = Api::all(client.clone());
            node_uid = nodes
                .get_opt(&node)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.uid());
        }
        // Mirrors are owned by the Node, which must exist first.
        if let Some(uid) = &node_uid {
            if let Err(e) = sync(&client, &node, uid, &statics, &mut conflicts).await {
                tracing::warn!(error = %e, "keeping mirror pods failed; retrying");
            }
        }
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

fn gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

async fn delete_now(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn sync(
    client: &kube::Client,
    node: &str,
    node_uid: &str,
    statics: &BTreeMap<String, Pod>,
    conflicts: &mut HashSet<String>,
) -> Result<(), kube::Error> {
    let all: Api<Pod> = Api::all(client.clone());
    let existing = all
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?
        .items;
    let by_name: BTreeMap<(String, String), &Pod> = existing
        .iter()
        .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p))
        .collect();
    // Mirrors whose static pod went away (its manifest deleted or edited).
    for m in &existing {
        if let Some(hash) = mirror_of(m) {
            if !statics.contains_key(&hash) {
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), &m.namespace().unwrap_or_default());
                tracing::info!(
                    pod = m.name_any(),
                    "deleting the mirror pod of a removed static pod"
                );
                delete_now(&api, m).await?;
            }
        }
    }
    for (uid, pod) in statics {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if let Some(current) = by_name.get(&(ns.clone(), name.clone())) {
            match mirror_of(current) {
                Some(hash) if hash == *uid && current.metadata.deletion_timestamp.is_none() => {
                    continue
                }
                Some(hash) if hash != *uid => {
                    // The mirror of the previous manifest, deleted above.
                }
                Some(_) => {
                    // Someone deletes the mirror (kubectl delete): finish that at once and
                    // put it back, the static pod keeps running.
                    tracing::info!(pod = name, "mirror pod deleted; recreating it");
                    delete_now(&api, current).await?;
                }
                None => {
                    if conflicts.insert(format!("{ns}/{name}")) {
                        tracing::warn!(
                            pod = name,
                            namespace = ns,
                            "a pod that is not a mirror pod has the static pod's name; no mirror pod is created"
                        );
                    }
                    continue;
                }
            }
        }
        match api
            .create(&PostParams::default(), &mirror_pod(pod, node_uid))
            .await
        {
            Ok(m) => {
                conflicts.remove(&format!("{ns}/{name}"));
                tracing::info!(
                    pod = name,
                    mirror = m.uid().unwrap_or_default(),
                    "mirror pod created"
                );
            }
            // The deleted one is still on its way out; the next pass creates it.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
