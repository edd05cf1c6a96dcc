//! Events for the decisions a user wants to see (`kubectl describe`, `kubectl get events`):
//! core/v1 Events, repeated ones folded into one with a count, as kube's recorder does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// (involved uid, reason, message) → (event name, namespace, count).
type Seen = HashMap<(String, String, String), (String, String, i32)>;

/// Writes go out in the background, a few at a time, so that a controller creating 500
/// pods never waits on 500 event writes and never floods the API server with them.
#[derive(Clone)]
pub struct EventRecorder {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    component: String,
    seen: Mutex<Seen>,
    in_flight: tokio::sync::Semaphore,
}

const MAX_IN_FLIGHT: usize = 8;

pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let mut r = obj.object_ref(&());
    r.resource_version = None;
    r
}

impl EventRecorder {
    pub fn new(client: kube::Client, component: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                component: component.to_string(),
                seen: Mutex::new(HashMap::new()),
                in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            }),
        }
    }

    /// Records an event about `object` in the background; failures are logged, never fatal
    /// to a reconcile.
    pub async fn record(
        &self,
        object: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let inner = self.inner.clone();
        let (object, reason, message) = (object.clone(), reason.to_string(), message.to_string());
        tokio::spawn(async move {
            let Ok(_permit) = inner.in_flight.acquire().await else {
                return;
            };
            inner.write(&object, kind, &reason, &message).await;
        });
    }
}

impl Inner {
    async fn write(&self, object: &ObjectReference, kind: EventType, reason: &str, message: &str) {
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = object.uid.clone().unwrap_or_default();
        let key = (uid, reason.to_string(), message.to_string());
        let now = Time(jiff::Timestamp::now());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let existing = self.seen.lock().expect("events lock").get(&key).cloned();
        if let Some((name, ns, count)) = existing {
            let patch = serde_json::json!({"count": count + 1, "lastTimestamp": now});
            let api_ns: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            if api_ns
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                self.seen
                    .lock()
                    .expect("events lock")
                    .insert(key, (name, ns, count + 1));
                return;
            }
        }
        let name = format!(
            "{}.{:x}",
            object.name.clone().unwrap_or_else(|| "object".into()),
            jiff::Timestamp::now().as_nanosecond() as u64
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(format!("{kind:?}")),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                self.seen
                    .lock()
                    .expect("events lock")
                    .insert(key, (created.name_any(), namespace, 1));
            }
            Err(e) => tracing::debug!(reason, error = %e, "recording an event failed"),
        }
    }
}
