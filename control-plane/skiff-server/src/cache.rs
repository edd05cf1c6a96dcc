//! The watch cache: every object under `/registry/`, kept current from one store watch.
//!
//! Reads and watches are served from here, so the store sees one watch no matter how many
//! clients there are. Read-your-writes on every backend: each write this server answers is
//! noted (`note_committed`), and a request that reads first waits until the cache has caught
//! up with every write answered before it (`wait_fresh`). A create answers as soon as the
//! store has it, as kube-apiserver does; most other writes still wait for their own event.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use skiff_store::{Event, Revision, Store, StoreError};
use tokio::sync::{broadcast, watch};

use crate::json_scan::{resource_version_spot, Spot};

const HISTORY: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// An object as JSON bytes with its resourceVersion already in place: kept as bytes because
/// a parsed `serde_json::Value` costs about ten times the memory, and a list without
/// selectors can be answered by copying bytes.
pub type Encoded = Arc<[u8]>;

pub fn decode(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

#[derive(Debug)]
pub struct CacheEvent {
    pub revision: Revision,
    pub kind: EventType,
    pub key: String,
    /// The object after the change (for a deletion: the last state, at the deletion's RV).
    pub object: Encoded,
    pub prev: Option<Encoded>,
}

struct Inner {
    objects: BTreeMap<String, Encoded>,
    history: VecDeque<Arc<CacheEvent>>,
    /// A watch from a resourceVersion below this can no longer be served: 410 Gone.
    oldest: Revision,
    revision: Revision,
}

pub struct Cache {
    inner: RwLock<Inner>,
    revision: watch::Sender<Revision>,
    events: broadcast::Sender<Arc<CacheEvent>>,
    /// The newest revision of a write this server has answered.
    committed: AtomicI64,
}

/// How long a request waits for the cache to catch up with the writes answered before it;
/// past that the store's watch is broken or far behind, and the request gets 504.
const FRESH_BOUND: Duration = Duration::from_secs(10);

/// The cache did not reach the revision of the writes already answered within `FRESH_BOUND`.
pub struct Behind {
    pub wanted: Revision,
    pub reached: Revision,
}

/// Buffered events plus the live feed that follows them.
pub type Subscription = (Vec<Arc<CacheEvent>>, broadcast::Receiver<Arc<CacheEvent>>);

pub struct TooOld {
    pub oldest: Revision,
}

/// The stored object with `metadata.resourceVersion` set to `revision`. Objects are stored
/// without it, so it is spliced in as the first field of `metadata` (or over the old value,
/// for a deleted object taken from the cache): every event and every relisted object passes
/// here, and parsing and re-encoding each one cost a quarter of a create's CPU. Anything the
/// scan does not recognise takes the parsing path.
pub fn with_resource_version(raw: &[u8], revision: Revision) -> Encoded {
    let value = format!("\"{revision}\"");
    let (start, end, insert) = match resource_version_spot(raw) {
        Some(Spot::Insert { at, empty }) => {
            let comma = if empty { "" } else { "," };
            (at, at, format!("\"resourceVersion\":{value}{comma}"))
        }
        Some(Spot::Replace(range)) => (range.start, range.end, value),
        None => {
            let mut parsed: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
            set_resource_version(&mut parsed, revision);
            return Arc::from(serde_json::to_vec(&parsed).unwrap_or_default());
        }
    };
    let mut out = Vec::with_capacity(raw.len() + insert.len());
    out.extend_from_slice(&raw[..start]);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(&raw[end..]);
    Arc::from(out)
}

pub fn set_resource_version(value: &mut Value, revision: Revision) {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

impl Inner {
    /// The objects under `prefix` in key order, after `after_key` when given.
    fn range<'a>(
        &'a self,
        prefix: &'a str,
        after_key: Option<&str>,
    ) -> impl Iterator<Item = (String, Encoded)> + 'a {
        let start = match after_key {
            Some(k) => std::ops::Bound::Excluded(k.to_string()),
            None => std::ops::Bound::Included(prefix.to_string()),
        };
        self.objects
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
    }
}

impl Cache {
    /// Loads everything and starts following the store.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        let (events, _) = broadcast::channel(HISTORY);
        let (revision_tx, _) = watch::channel(0);
        let cache = Arc::new(Cache {
            inner: RwLock::new(Inner {
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                oldest: 0,
                revision: 0,
            }),
            revision: revision_tx,
            events,
            committed: AtomicI64::new(0),
        });
        let mut stream = cache.relist(store.as_ref()).await?;
        let follower = cache.clone();
        tokio::spawn(async move {
            loop {
                match stream.recv().await {
                    Some(Ok(event)) => follower.apply(event),
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "watch cache fell behind; relisting");
                        loop {
                            match follower.relist(store.as_ref()).await {
                                Ok(s) => {
                                    stream = s;
                                    break;
                                }
                                Err(err) => {
                                    tracing::error!(error = %err, "relist failed; retrying");
                                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                                }
                            }
                        }
                    }
                    None => {
                        tracing::error!("store watch ended; the cache no longer follows");
                        return;
                    }
                }
            }
        });
        Ok(cache)
    }

    async fn relist(&self, store: &dyn Store) -> Result<skiff_store::WatchStream, StoreError> {
        let (items, revision) = store.list("/registry/").await?;
        // The cache holds every object, so the store need not send previous values.
        let stream = store.watch_without_previous("/registry/", revision).await?;
        let mut inner = self.inner.write().expect("cache lock");
        inner.objects = items
            .into_iter()
            .map(|kv| {
                let value = with_resource_version(&kv.value, kv.mod_revision);
                (kv.key, value)
            })
            .collect();
        // Watchers that were between revisions must start over.
        inner.history.clear();
        inner.oldest = revision;
        inner.revision = revision;
        drop(inner);
        self.revision.send_replace(revision);
        Ok(stream)
    }

    fn apply(&self, event: Event) {
        let revision = event.revision();
        let mut inner = self.inner.write().expect("cache lock");
        let kind = if event.is_create() {
            EventType::Added
        } else {
            EventType::Modified
        };
        let cache_event = match event {
            Event::Put { kv, .. } => {
                let object = with_resource_version(&kv.value, kv.mod_revision);
                let old = inner.objects.insert(kv.key.clone(), object.clone());
                CacheEvent {
                    revision,
                    kind,
                    key: kv.key,
                    object,
                    prev: old,
                }
            }
            Event::Delete {
                key,
                revision,
                prev,
            } => {
                let old = inner.objects.remove(&key);
                // The cache has applied every earlier event, so its copy is the deleted value.
                let object = match (&prev, &old) {
                    (Some(prev), _) => with_resource_version(&prev.value, revision),
                    (None, Some(old)) => with_resource_version(old, revision),
                    (None, None) => {
                        tracing::warn!(key, revision, "deletion of an object the cache never had");
                        inner.revision = revision;
                        drop(inner);
                        self.revision.send_replace(revision);
                        return;
                    }
                };
                CacheEvent {
                    revision,
                    kind: EventType::Deleted,
                    key,
                    object,
                    prev: old,
                }
            }
        };
        let cache_event = Arc::new(cache_event);
        if inner.history.len() == HISTORY {
            if let Some(dropped) = inner.history.pop_front() {
                inner.oldest = dropped.revision;
            }
        }
        inner.history.push_back(cache_event.clone());
        inner.revision = revision;
        // Publish while holding the lock so that subscribe() can never miss or repeat one.
        let _ = self.events.send(cache_event);
        drop(inner);
        self.revision.send_replace(revision);
    }

    pub fn revision(&self) -> Revision {
        self.inner.read().expect("cache lock").revision
    }

    /// Waits until the cache reflects `revision` (a write this server just made).
    pub async fn wait_for(&self, revision: Revision) {
        let mut rx = self.revision.subscribe();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// Records that a write at `revision` has been (or is about to be) answered without
    /// waiting for its event, so that later reads wait for it (`wait_fresh`).
    pub fn note_committed(&self, revision: Revision) {
        self.committed.fetch_max(revision, Ordering::AcqRel);
    }

    /// Waits until the cache holds every write answered so far: what a reader must see.
    pub async fn wait_fresh(&self) -> Result<(), Behind> {
        let wanted = self.committed.load(Ordering::Acquire);
        if *self.revision.borrow() >= wanted {
            return Ok(());
        }
        match tokio::time::timeout(FRESH_BOUND, self.wait_for(wanted)).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Behind {
                wanted,
                reached: self.revision(),
            }),
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        Some(Arc::new(decode(&self.get_encoded(key)?)))
    }

    /// The object as stored (JSON bytes), for callers that need only part of it.
    pub fn get_encoded(&self, key: &str) -> Option<Encoded> {
        self.inner
            .read()
            .expect("cache lock")
            .objects
            .get(key)
            .cloned()
    }

    /// Objects under `prefix` as stored (JSON bytes), in key order, after `after_key`.
    pub fn list_encoded(
        &self,
        prefix: &str,
        after_key: Option<&str>,
    ) -> (Vec<(String, Encoded)>, Revision) {
        let inner = self.inner.read().expect("cache lock");
        (inner.range(prefix, after_key).collect(), inner.revision)
    }

    /// Objects under `prefix` after `after_key` as they were at revision `at` (the pages of
    /// one paginated list all show the revision of its first page, as etcd's revision reads
    /// do for kube-apiserver): the current objects with every later change undone from the
    /// history. `TooOld` once the history no longer reaches back to `at`.
    pub fn list_encoded_at(
        &self,
        prefix: &str,
        after_key: &str,
        at: Revision,
    ) -> Result<Vec<(String, Encoded)>, TooOld> {
        let inner = self.inner.read().expect("cache lock");
        if at < inner.oldest {
            return Err(TooOld {
                oldest: inner.oldest,
            });
        }
        let in_range = |k: &str| k.starts_with(prefix) && k > after_key;
        let mut items: BTreeMap<String, Encoded> = inner.range(prefix, Some(after_key)).collect();
        for event in inner.history.iter().rev().take_while(|e| e.revision > at) {
            if !in_range(&event.key) {
                continue;
            }
            // `prev` is what the cache held before the change: absent for a creation.
            match &event.prev {
                Some(before) => items.insert(event.key.clone(), before.clone()),
                None => items.remove(&event.key),
            };
        }
        Ok(items.into_iter().collect())
    }

    /// Objects whose key starts with `prefix`, in key order, starting after `after_key`.
    pub fn list(
        &self,
        prefix: &str,
        after_key: Option<&str>,
    ) -> (Vec<(String, Arc<Value>)>, Revision) {
        let (items, revision) = self.list_encoded(prefix, after_key);
        (
            items
                .into_iter()
                .map(|(k, v)| (k, Arc::new(decode(&v))))
                .collect(),
            revision,
        )
    }

    /// Events after `after` that are still in memory, and a receiver for everything newer.
    pub fn subscribe(&self, after: Revision) -> Result<Subscription, TooOld> {
        let inner = self.inner.read().expect("cache lock");
        if after < inner.oldest {
            return Err(TooOld {
                oldest: inner.oldest,
            });
        }
        let backlog = inner
            .history
            .iter()
            .filter(|e| e.revision > after)
            .cloned()
            .collect();
        Ok((backlog, self.events.subscribe()))
    }

    /// The current objects under `prefix` and a receiver for every later change, atomically.
    pub fn snapshot_and_subscribe(
        &self,
        prefix: &str,
    ) -> (
        Vec<Arc<Value>>,
        Revision,
        broadcast::Receiver<Arc<CacheEvent>>,
    ) {
        let inner = self.inner.read().expect("cache lock");
        let items = inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| Arc::new(decode(v)))
            .collect();
        (items, inner.revision, self.events.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_store::EmbeddedStore;

    /// A fresh embedded store; the directory lives as long as the returned guard.
    fn embedded_store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path().join("s.redb")).unwrap());
        (dir, store)
    }

    fn cm(name: &str, v: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"metadata": {"name": name}, "data": {"v": v}}))
            .unwrap()
    }

    /// etcd's watch for the cache carries no previous values: an update is told from a
    /// create by its revisions, and a deletion shows the cache's own last copy.
    #[tokio::test]
    async fn events_without_previous_values() {
        let (_dir, store) = embedded_store();
        let key = "/registry/configmaps/ns/a";
        let created = store.create(key, cm("a", "1")).await.unwrap();
        let cache = Cache::start(store.clone()).await.unwrap();
        let base = cache.revision();
        let updated = skiff_store::KeyValue {
            value: Arc::from(cm("a", "2").as_slice()),
            mod_revision: base + 1,
            ..created.clone()
        };
        cache.apply(Event::Put {
            kv: updated,
            prev: None,
        });
        cache.apply(Event::Delete {
            key: key.into(),
            revision: base + 2,
            prev: None,
        });
        let (events, _) = cache.subscribe(base).ok().unwrap();
        let summary: Vec<(EventType, Value)> =
            events.iter().map(|e| (e.kind, decode(&e.object))).collect();
        assert_eq!(summary[0].0, EventType::Modified);
        assert_eq!(summary[1].0, EventType::Deleted);
        assert_eq!(
            summary[1].1["data"]["v"], "2",
            "the deleted object is the last copy"
        );
        assert_eq!(
            summary[1].1["metadata"]["resourceVersion"],
            (base + 2).to_string()
        );
        assert!(cache.get(key).is_none());
        assert_eq!(cache.revision(), base + 2);
    }

    #[tokio::test]
    async fn a_reader_waits_for_every_answered_write() {
        let (_dir, store) = embedded_store();
        let cache = Cache::start(store.clone()).await.unwrap();
        assert!(cache.wait_fresh().await.is_ok(), "nothing answered yet");
        let base = cache.revision();
        cache.note_committed(base + 1);
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.wait_fresh().await.is_ok() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !waiter.is_finished(),
            "answered before the cache had the write"
        );
        store
            .create("/registry/configmaps/ns/a", cm("a", "1"))
            .await
            .unwrap();
        assert!(waiter.await.unwrap());
        assert!(cache.get("/registry/configmaps/ns/a").is_some());
    }

    #[test]
    fn the_spliced_resource_version_equals_the_parsed_one() {
        let parsed = |raw: &[u8], rv| {
            let mut v: Value = serde_json::from_slice(raw).unwrap();
            set_resource_version(&mut v, rv);
            v
        };
        for raw in [
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","labels":{"x":"}"}},"spec":{"containers":[{"name":"c"}]}}"#,
            r#"{"kind":"Namespace","metadata":{}}"#,
            r#"{ "metadata" : { "name" : "spaced" } }"#,
            // Already carries one (a deleted object from the cache) or has no metadata at all.
            r#"{"metadata":{"name":"a","resourceVersion":"1"}}"#,
            r#"{"metadata":{"resourceVersion":"1"}}"#,
            r#"{"kind":"Status"}"#,
        ] {
            let spliced = with_resource_version(raw.as_bytes(), 42);
            let spliced: Value = serde_json::from_slice(&spliced).expect(raw);
            assert_eq!(spliced, parsed(raw.as_bytes(), 42), "{raw}");
        }
    }

    fn names_and_values(items: &[(String, Encoded)]) -> Vec<String> {
        items
            .iter()
            .map(|(_, b)| {
                let v = decode(b);
                format!(
                    "{}={}",
                    v["metadata"]["name"].as_str().unwrap(),
                    v["data"]["v"].as_str().unwrap()
                )
            })
            .collect()
    }

    async fn caught_up(cache: &Cache, revision: Revision) {
        tokio::time::timeout(std::time::Duration::from_secs(10), cache.wait_for(revision))
            .await
            .expect("the cache follows the store");
    }

    #[tokio::test]
    async fn a_past_revision_is_rebuilt_from_the_history() {
        let (_dir, store) = embedded_store();
        let p = "/registry/configmaps/ns/";
        for n in ["a", "b", "c", "d"] {
            store.create(&format!("{p}{n}"), cm(n, "1")).await.unwrap();
        }
        // Another prefix's changes must not leak in.
        store
            .create("/registry/secrets/ns/x", cm("x", "1"))
            .await
            .unwrap();
        let cache = Cache::start(store.clone()).await.unwrap();
        let at = cache.revision();
        let c = store.get(&format!("{p}c")).await.unwrap().unwrap();
        store
            .update(&format!("{p}c"), cm("c", "2"), c.mod_revision)
            .await
            .unwrap();
        store.delete(&format!("{p}d"), None).await.unwrap();
        let e = store.create(&format!("{p}e"), cm("e", "1")).await.unwrap();
        store
            .create("/registry/configmaps/ns2/a", cm("a", "1"))
            .await
            .unwrap();
        caught_up(&cache, e.mod_revision + 1).await;

        let then = cache.list_encoded_at(p, &format!("{p}a"), at).ok().unwrap();
        assert_eq!(names_and_values(&then), ["b=1", "c=1", "d=1"]);
        let (now, _) = cache.list_encoded(p, Some(&format!("{p}a")));
        assert_eq!(names_and_values(&now), ["b=1", "c=2", "e=1"]);
        // The object keeps the resourceVersion it had at that revision.
        let c_then = decode(&then[1].1);
        assert_eq!(
            c_then["metadata"]["resourceVersion"],
            c.mod_revision.to_string()
        );
        // Before the history's start (a relist after the store was written) it is too old.
        assert!(cache.list_encoded_at(p, p, at - 1).is_err());
    }
}
