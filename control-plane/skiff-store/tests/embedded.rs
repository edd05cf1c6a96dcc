use skiff_store::{EmbeddedStore, Event, Store, StoreError};

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path().join("state.redb")).expect("open store")
}

#[tokio::test]
async fn create_get_update_delete_with_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = store
        .create("/registry/pods/default/a", b"one".to_vec())
        .await
        .unwrap();
    assert_eq!(a.create_revision, 1);
    let b = store
        .create("/registry/pods/default/b", b"two".to_vec())
        .await
        .unwrap();
    assert_eq!(b.mod_revision, 2);
    assert!(matches!(
        store
            .create("/registry/pods/default/a", b"x".to_vec())
            .await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let a2 = store
        .update("/registry/pods/default/a", b"uno".to_vec(), 1)
        .await
        .unwrap();
    assert_eq!((a2.create_revision, a2.mod_revision), (1, 3));
    let stale = store
        .update("/registry/pods/default/a", b"stale".to_vec(), 1)
        .await;
    assert!(matches!(
        stale,
        Err(StoreError::Conflict {
            expected: 1,
            actual: 3,
            ..
        })
    ));
    let got = store
        .get("/registry/pods/default/a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*got.value, b"uno");
    let (list, rev) = store.list("/registry/pods/").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(rev, 3);
    assert!(matches!(
        store.delete("/registry/pods/default/b", Some(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    let (gone, rev) = store
        .delete("/registry/pods/default/b", None)
        .await
        .unwrap();
    assert_eq!(&*gone.value, b"two");
    assert_eq!(rev, 4);
    assert!(store
        .get("/registry/pods/default/b")
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store.delete("/registry/pods/default/b", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.current_revision().await.unwrap(), 4);
}

#[tokio::test]
async fn list_prefix_does_not_leak_into_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.create("/registry/pods/a", vec![]).await.unwrap();
    store
        .create("/registry/podsecurity/x", vec![])
        .await
        .unwrap();
    store.create("/registry/services/a", vec![]).await.unwrap();
    let (list, _) = store.list("/registry/pods/").await.unwrap();
    assert_eq!(
        list.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["/registry/pods/a"]
    );
}

#[tokio::test]
async fn watch_replays_backlog_then_follows_live_changes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.create("/r/a", b"1".to_vec()).await.unwrap();
    store.create("/r/b", b"2".to_vec()).await.unwrap();
    store.create("/other/c", b"3".to_vec()).await.unwrap();
    let mut watch = store.watch("/r/", 1).await.unwrap();
    store.update("/r/a", b"11".to_vec(), 1).await.unwrap();
    store.delete("/r/b", None).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = watch.recv().await.unwrap().unwrap();
        seen.push((
            event.revision(),
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

#[tokio::test]
async fn watch_before_compaction_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for i in 0..5 {
        store.create(&format!("/k/{i}"), vec![]).await.unwrap();
    }
    store.compact(3).await.unwrap();
    assert!(matches!(
        store.watch("/k/", 2).await,
        Err(StoreError::Compacted { oldest: 3, .. })
    ));
    assert!(store.watch("/k/", 3).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_get_unique_revisions_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = std::sync::Arc::new(EmbeddedStore::open(&path).unwrap());
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..50 {
                    let kv = store
                        .create(&format!("/w/{worker}/{i}"), vec![worker as u8])
                        .await
                        .unwrap();
                    revs.push(kv.mod_revision);
                }
                revs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 400, "every write got its own revision");
        assert_eq!(*all.last().unwrap(), 400);
    }
    // The writer thread keeps the database open until the process ends, so reopen a copy
    // of the file as a restarted server would.
    let copy = dir.path().join("copy.redb");
    std::fs::copy(&path, &copy).unwrap();
    let reopened = EmbeddedStore::open(&copy).unwrap();
    assert_eq!(reopened.current_revision().await.unwrap(), 400);
    assert_eq!(reopened.list("/w/").await.unwrap().0.len(), 400);
    let next = reopened.create("/w/new", vec![]).await.unwrap();
    assert_eq!(next.mod_revision, 401);
}
