//! Events about a pod, written as kubelet writes them (core/v1, source kubelet on this
//! host). A repeated event (same object, reason, message) bumps the count of the first
//! one instead of piling up new objects.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

pub struct Recorder {
    client: kube::Client,
    node: String,
    /// (fieldPath, reason, message) → (event name, count).
    seen: HashMap<(String, String, String), (String, i32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

impl Recorder {
    pub fn new(client: kube::Client, node: String) -> Self {
        Recorder {
            client,
            node,
            seen: HashMap::new(),
        }
    }

    /// Records an event; `container` names the container it is about, if any.
    pub async fn record(
        &mut self,
        pod: &Pod,
        container: Option<&str>,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
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
        let now = jiff::Timestamp::now();
        let stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let key = (field_path.clone(), reason.to_string(), message.to_string());
        if let Some((event_name, count)) = self.seen.get_mut(&key) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": stamp});
            if api
                .patch(event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                return;
            }
        }
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
        let event: Event = match serde_json::from_value(event) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "building an event failed");
                return;
            }
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                self.seen
                    .insert(key, (created.metadata.name.unwrap_or_default(), 1));
            }
            Err(e) => tracing::warn!(pod = name, reason, error = %e, "recording an event failed"),
        }
    }
}
