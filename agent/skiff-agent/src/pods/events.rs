//! Events about a pod, written as kubelet writes them (core/v1, source kubelet on this
//! host). A repeated event (same object, reason, message) bumps the count of the first
//! one instead of piling up new objects. Writing never holds up the pod's worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// (pod uid, fieldPath, reason, message) → (event name, count).
type Seen = Arc<Mutex<HashMap<(String, String, String, String), (String, i32)>>>;

pub struct Recorder {
    /// `None` without an API server: events only go to the agent's log.
    client: Option<kube::Client>,
    node: String,
    seen: Seen,
    /// Keeps one pod's events in order: each write waits for the one before.
    last: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

struct Draft {
    namespace: String,
    key: (String, String, String, String),
    event: serde_json::Value,
    stamp: String,
}

impl Recorder {
    pub fn new(client: Option<kube::Client>, node: String) -> Self {
        Recorder {
            client,
            node,
            seen: Arc::default(),
            last: None,
        }
    }

    /// Records an event in the background; `container` names the container it is about.
    pub async fn record(
        &mut self,
        pod: &Pod,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        let Some(client) = self.client.clone() else {
            tracing::info!(
                pod = pod.metadata.name.as_deref().unwrap_or_default(),
                container,
                kind = ?kind,
                reason,
                message,
                "event"
            );
            return;
        };
        let draft = self.draft(pod, container, kind, reason, message);
        let (seen, previous) = (self.seen.clone(), self.last.take());
        self.last = Some(tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            write(client, seen, draft).await;
        }));
    }

    fn draft(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) -> Draft {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let field_path = container
            .map(|c| {
                let init = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.init_containers.as_ref())
                    .is_some_and(|ics| ics.iter().any(|i| i.name == c));
                if init {
                    format!("spec.initContainers{{{c}}}")
                } else {
                    format!("spec.containers{{{c}}}")
                }
            })
            .unwrap_or_default();
        let stamp = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut involved = json!({
            "kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": name,
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version,
        });
        if !field_path.is_empty() {
            involved["fieldPath"] = json!(field_path);
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": involved,
            "reason": reason, "message": message,
            "type": if kind == Kind::Warning { "Warning" } else { "Normal" },
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "reportingComponent": "kubelet", "reportingInstance": self.node,
        });
        Draft {
            namespace: ns,
            key: (
                pod.metadata.uid.clone().unwrap_or_default(),
                field_path,
                reason.to_string(),
                message.to_string(),
            ),
            event,
            stamp,
        }
    }
}

async fn write(client: kube::Client, seen: Seen, draft: Draft) {
    let api: Api<Event> = Api::namespaced(client, &draft.namespace);
    let repeat = {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get_mut(&draft.key).map(|(name, count)| {
            *count += 1;
            (name.clone(), *count)
        })
    };
    if let Some((name, count)) = repeat {
        let patch = json!({"count": count, "lastTimestamp": draft.stamp});
        if api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .is_ok()
        {
            return;
        }
    }
    let event: Event = match serde_json::from_value(draft.event) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "building an event failed");
            return;
        }
    };
    match api.create(&PostParams::default(), &event).await {
        Ok(created) => {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(draft.key, (created.metadata.name.unwrap_or_default(), 1));
        }
        Err(e) => tracing::warn!(reason = draft.key.2, error = %e, "recording an event failed"),
    }
}
