//! The shared store cases on the embedded (redb) backend, plus its restart test.

#[macro_use]
mod common;

use std::sync::Arc;

use skiff_store::{EmbeddedStore, Store};

async fn setup(_test: &str) -> Option<(tempfile::TempDir, Arc<dyn Store>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path().join("state.redb")).expect("open store");
    Some((dir, Arc::new(store)))
}

store_cases!(setup);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
        common::concurrent_writes_get_unique_revisions(store).await;
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
