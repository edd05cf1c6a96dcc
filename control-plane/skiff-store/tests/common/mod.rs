//! Behavioural cases every `Store` backend must pass. Each test binary runs them all through
//! `store_cases!`, with a setup function of its own.
//!
//! Revisions are checked relative to the store's revision when the case starts: a fresh
//! embedded store starts at 0, a fresh etcd at 1.

use std::sync::Arc;
use std::time::Duration;

use skiff_store::{Event, KeyValue, Revision, Store, StoreError};

/// Generates one `#[tokio::test]` per shared case. `$setup` is an async fn taking the test's
/// name and returning
/// `Option<(guard, Arc<dyn Store>)>`; `None` means the backend is unavailable and the setup
/// has said so. The guard (temp dir, etcd process) lives until the case ends.
macro_rules! store_cases {
    ($setup:path) => {
        store_cases!(@case $setup, create_get_update_delete_with_revisions);
        store_cases!(@case $setup, update_and_delete_of_a_missing_key_are_not_found);
        store_cases!(@case $setup, list_prefix_does_not_leak_into_neighbours);
        store_cases!(@case $setup, list_returns_large_prefixes_in_key_order);
        store_cases!(@case $setup, watch_replays_backlog_then_follows_live_changes_in_order);
        store_cases!(@case $setup, watch_events_carry_previous_values);
        store_cases!(@case $setup, watch_without_previous_still_names_every_change);
        store_cases!(@case $setup, watch_from_now_sees_only_new_changes);
        store_cases!(@case $setup, watch_before_compaction_is_refused);
        store_cases!(@case $setup, compaction_keeps_current_state_readable);
        store_cases!(@case $setup, concurrent_writes_get_unique_revisions);
    };
    (@case $setup:path, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some((_guard, store)) = $setup(stringify!($name)).await else {
                return;
            };
            common::$name(store).await;
        }
    };
}

const RECV_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn recv(watch: &mut skiff_store::WatchStream) -> Option<Result<Event, StoreError>> {
    tokio::time::timeout(RECV_TIMEOUT, watch.recv())
        .await
        .expect("watch delivered nothing within 10s")
}

async fn base(store: &Arc<dyn Store>) -> Revision {
    store.current_revision().await.expect("current revision")
}

pub async fn create_get_update_delete_with_revisions(store: Arc<dyn Store>) {
    let r0 = base(&store).await;
    let a = store
        .create("/registry/pods/default/a", b"one".to_vec())
        .await
        .unwrap();
    assert_eq!((a.create_revision, a.mod_revision), (r0 + 1, r0 + 1));
    assert_eq!(&*a.value, b"one");
    let b = store
        .create("/registry/pods/default/b", b"two".to_vec())
        .await
        .unwrap();
    assert_eq!(b.mod_revision, r0 + 2);
    assert!(matches!(
        store.create("/registry/pods/default/a", b"x".to_vec()).await,
        Err(StoreError::AlreadyExists { key }) if key == "/registry/pods/default/a"
    ));
    let a2 = store
        .update("/registry/pods/default/a", b"uno".to_vec(), r0 + 1)
        .await
        .unwrap();
    assert_eq!((a2.create_revision, a2.mod_revision), (r0 + 1, r0 + 3));
    let stale = store
        .update("/registry/pods/default/a", b"stale".to_vec(), r0 + 1)
        .await;
    match stale {
        Err(StoreError::Conflict {
            key,
            expected,
            actual,
        }) => {
            assert_eq!(key, "/registry/pods/default/a");
            assert_eq!((expected, actual), (r0 + 1, r0 + 3));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let got = store
        .get("/registry/pods/default/a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*got.value, b"uno");
    assert_eq!((got.create_revision, got.mod_revision), (r0 + 1, r0 + 3));
    let (list, rev) = store.list("/registry/pods/").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(rev, r0 + 3);
    assert!(matches!(
        store.delete("/registry/pods/default/b", Some(r0 + 1)).await,
        Err(StoreError::Conflict { .. })
    ));
    let (gone, rev) = store
        .delete("/registry/pods/default/b", Some(r0 + 2))
        .await
        .unwrap();
    assert_eq!(&*gone.value, b"two");
    assert_eq!(gone.mod_revision, r0 + 2);
    assert_eq!(rev, r0 + 4);
    assert!(store
        .get("/registry/pods/default/b")
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store.delete("/registry/pods/default/b", None).await,
        Err(StoreError::NotFound { .. })
    ));
    let (gone, rev) = store
        .delete("/registry/pods/default/a", None)
        .await
        .unwrap();
    assert_eq!((&*gone.value, rev), (&b"uno"[..], r0 + 5));
    assert_eq!(store.current_revision().await.unwrap(), r0 + 5);
}

pub async fn update_and_delete_of_a_missing_key_are_not_found(store: Arc<dyn Store>) {
    let r0 = base(&store).await;
    // expected 0 is what an absent key's mod_revision would be: still NotFound, no create.
    for expected in [0, r0, r0 + 7] {
        assert!(matches!(
            store.update("/missing", b"x".to_vec(), expected).await,
            Err(StoreError::NotFound { key }) if key == "/missing"
        ));
        assert!(matches!(
            store.delete("/missing", Some(expected)).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    assert!(store.get("/missing").await.unwrap().is_none());
    assert_eq!(
        base(&store).await,
        r0,
        "failed writes do not bump the revision"
    );
}

pub async fn list_prefix_does_not_leak_into_neighbours(store: Arc<dyn Store>) {
    store.create("/registry/pods/a", vec![]).await.unwrap();
    store
        .create("/registry/podsecurity/x", vec![])
        .await
        .unwrap();
    store.create("/registry/pods0", vec![]).await.unwrap();
    store.create("/registry/services/a", vec![]).await.unwrap();
    let (list, _) = store.list("/registry/pods/").await.unwrap();
    assert_eq!(
        list.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["/registry/pods/a"]
    );
    let (all, rev) = store.list("/registry/").await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(rev, base(&store).await);
    assert!(store.list("/nothing/").await.unwrap().0.is_empty());
}

pub async fn list_returns_large_prefixes_in_key_order(store: Arc<dyn Store>) {
    // More keys than one etcd page, written out of order by several writers.
    const KEYS: usize = 1203;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in (worker..KEYS).step_by(8) {
                let key = format!("/big/{:05}", (i * 7919) % KEYS);
                store.create(&key, key.clone().into_bytes()).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    store.create("/bigger", vec![]).await.unwrap();
    let (list, rev) = store.list("/big/").await.unwrap();
    assert_eq!(list.len(), KEYS);
    let keys: Vec<&str> = list.iter().map(|kv| kv.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "keys come in key order");
    sorted.dedup();
    assert_eq!(sorted.len(), KEYS);
    assert!(list.iter().all(|kv| kv.value.as_ref() == kv.key.as_bytes()));
    assert_eq!(rev, base(&store).await);
}

pub async fn watch_replays_backlog_then_follows_live_changes_in_order(store: Arc<dyn Store>) {
    let r0 = base(&store).await;
    store.create("/r/a", b"1".to_vec()).await.unwrap();
    store.create("/r/b", b"2".to_vec()).await.unwrap();
    store.create("/other/c", b"3".to_vec()).await.unwrap();
    let mut watch = store.watch("/r/", r0 + 1).await.unwrap();
    store.update("/r/a", b"11".to_vec(), r0 + 1).await.unwrap();
    store.delete("/r/b", None).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = recv(&mut watch).await.unwrap().unwrap();
        seen.push((
            event.revision() - r0,
            event.key().to_string(),
            matches!(event, Event::Delete { .. }),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (2, "/r/b".into(), false),
            (4, "/r/a".into(), false),
            (5, "/r/b".into(), true)
        ]
    );
}

/// Creates `key` (v1), updates it (v2), deletes it: the two values and the deletion's revision.
async fn create_update_delete(store: &Arc<dyn Store>, key: &str) -> (KeyValue, KeyValue, Revision) {
    let created = store.create(key, b"v1".to_vec()).await.unwrap();
    let updated = store
        .update(key, b"v2".to_vec(), created.mod_revision)
        .await
        .unwrap();
    let (_, deleted_at) = store.delete(key, None).await.unwrap();
    (created, updated, deleted_at)
}

pub async fn watch_events_carry_previous_values(store: Arc<dyn Store>) {
    let r0 = base(&store).await;
    let mut watch = store.watch("/p/", r0).await.unwrap();
    let (created, updated, deleted_at) = create_update_delete(&store, "/p/x").await;
    match recv(&mut watch).await.unwrap().unwrap() {
        Event::Put { kv, prev } => {
            assert_eq!(kv, created);
            assert_eq!(prev, None, "a create has no previous value");
        }
        other => panic!("expected the create, got {other:?}"),
    }
    match recv(&mut watch).await.unwrap().unwrap() {
        Event::Put { kv, prev } => {
            assert_eq!(kv, updated);
            assert_eq!(prev, Some(created.clone()));
        }
        other => panic!("expected the update, got {other:?}"),
    }
    match recv(&mut watch).await.unwrap().unwrap() {
        Event::Delete {
            key,
            revision,
            prev,
        } => {
            assert_eq!(key, "/p/x");
            assert_eq!(prev, Some(updated));
            assert_eq!(revision, deleted_at);
        }
        other => panic!("expected the delete, got {other:?}"),
    }
}

pub async fn watch_without_previous_still_names_every_change(store: Arc<dyn Store>) {
    let r0 = base(&store).await;
    let mut watch = store.watch_without_previous("/q/", r0).await.unwrap();
    let (created, updated, deleted_at) = create_update_delete(&store, "/q/x").await;
    let event = recv(&mut watch).await.unwrap().unwrap();
    assert!(event.is_create(), "{event:?}");
    assert!(matches!(&event, Event::Put { kv, .. } if *kv == created));
    let event = recv(&mut watch).await.unwrap().unwrap();
    assert!(!event.is_create(), "{event:?}");
    assert!(matches!(&event, Event::Put { kv, .. } if *kv == updated));
    match recv(&mut watch).await.unwrap().unwrap() {
        Event::Delete {
            key,
            revision,
            prev,
        } => {
            assert_eq!(key, "/q/x");
            assert_eq!(revision, deleted_at);
            // Optional here; when present it must be the deleted value.
            assert!(prev.is_none_or(|p| p == updated));
        }
        other => panic!("expected the delete, got {other:?}"),
    }
}

pub async fn watch_from_now_sees_only_new_changes(store: Arc<dyn Store>) {
    store.create("/n/old", vec![]).await.unwrap();
    let now = base(&store).await;
    let mut watch = store.watch("/n/", now).await.unwrap();
    let fresh = store.create("/n/new", vec![1]).await.unwrap();
    let event = recv(&mut watch).await.unwrap().unwrap();
    assert_eq!(event.key(), "/n/new");
    assert_eq!(event.revision(), fresh.mod_revision);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watch.recv())
            .await
            .is_err(),
        "nothing else is delivered"
    );
}

pub async fn watch_before_compaction_is_refused(store: Arc<dyn Store>) {
    let r0 = base(&store).await;
    for i in 0..5 {
        store.create(&format!("/k/{i}"), vec![]).await.unwrap();
    }
    store.compact(r0 + 3).await.unwrap();
    match store.watch("/k/", r0 + 2).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (r0 + 2, r0 + 3));
        }
        Err(other) => panic!("expected Compacted, got {other:?}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }
    assert!(matches!(
        store.watch("/k/", 0).await,
        Err(StoreError::Compacted { requested: 0, oldest }) if oldest == r0 + 3
    ));
    let mut watch = store.watch("/k/", r0 + 3).await.unwrap();
    let event = recv(&mut watch).await.unwrap().unwrap();
    assert_eq!((event.key(), event.revision()), ("/k/3", r0 + 4));
    // Compacting again at or below the compacted revision is harmless.
    store.compact(r0 + 2).await.unwrap();
    store.compact(r0 + 3).await.unwrap();
}

pub async fn compaction_keeps_current_state_readable(store: Arc<dyn Store>) {
    let a = store.create("/c/a", b"1".to_vec()).await.unwrap();
    let a = store
        .update("/c/a", b"2".to_vec(), a.mod_revision)
        .await
        .unwrap();
    store.create("/c/b", b"3".to_vec()).await.unwrap();
    let now = base(&store).await;
    store.compact(now).await.unwrap();
    assert_eq!(base(&store).await, now, "compaction is not a write");
    let (list, rev) = store.list("/c/").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(rev, now);
    assert_eq!(store.get("/c/a").await.unwrap(), Some(a.clone()));
    let a = store
        .update("/c/a", b"4".to_vec(), a.mod_revision)
        .await
        .unwrap();
    assert_eq!(a.mod_revision, now + 1);
}

pub async fn concurrent_writes_get_unique_revisions(store: Arc<dyn Store>) {
    let r0 = base(&store).await;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8u8 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut revs = Vec::new();
            for i in 0..50 {
                let kv = store
                    .create(&format!("/w/{worker}/{i}"), vec![worker])
                    .await
                    .unwrap();
                revs.push(kv.mod_revision);
            }
            revs
        });
    }
    let mut all = Vec::new();
    while let Some(revs) = tasks.join_next().await {
        all.extend(revs.unwrap());
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 400, "every write got its own revision");
    assert_eq!(all.first().copied(), Some(r0 + 1));
    assert_eq!(all.last().copied(), Some(r0 + 400));
    assert_eq!(store.list("/w/").await.unwrap().0.len(), 400);
}
