//! Skiff's storage layer: a small, kine-like key-value interface with revisions.
//!
//! Every successful write bumps one global revision, which the API server exposes as
//! `resourceVersion`. Writes are compare-and-swap on a key's `mod_revision`, and a watch
//! delivers every change after a given revision in order, so a cache can be built on top.

mod embedded;
mod etcd;

use std::sync::Arc;

use async_trait::async_trait;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdStore, EtcdTls};

/// The store's logical clock; 0 means "nothing written yet".
pub type Revision = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Arc<[u8]>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A create or an update. `prev` is the value before an update; it is `None` for a create,
    /// and for an update seen through `watch_without_previous`.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// `prev` is the deleted value; `None` only through `watch_without_previous`.
    Delete {
        key: String,
        revision: Revision,
        prev: Option<KeyValue>,
    },
}

impl Event {
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    /// A put that created its key (whether or not previous values are carried).
    pub fn is_create(&self) -> bool {
        matches!(self, Event::Put { kv, .. } if kv.create_revision == kv.mod_revision)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} was modified at revision {actual}, not {expected}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} has been compacted; the oldest available is {oldest}")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("store at {path}: {message}")]
    Backend { path: String, message: String },
    #[error("store is shut down")]
    Closed,
}

/// A stream of changes, oldest first. It ends (yields `None`) when the store shuts down,
/// and yields `Err(Compacted)` once if the watcher fell too far behind to be caught up.
pub type WatchStream = tokio::sync::mpsc::Receiver<Result<Event, StoreError>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The newest revision the store has committed.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key with this prefix, in key order, and the revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// Fails with `AlreadyExists` if the key is present. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;

    /// Replaces the value only if the key's `mod_revision` still equals `expected`.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes the key; with `expected`, only if its `mod_revision` still matches.
    /// Returns the deleted value and the revision of the deletion.
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError>;

    /// Changes to keys under `prefix` strictly after revision `after`, each with the value
    /// it replaced or removed.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// `watch` for a caller that keeps every value itself (the API server's watch cache): the
    /// store may leave out the previous values of updates and deletions where reading them
    /// costs it work. etcd 3.4 reads the old revision of the key for every event of a watch
    /// with `prev_kv`, creates included, which was a tenth of its CPU per create.
    async fn watch_without_previous(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<WatchStream, StoreError> {
        self.watch(prefix, after).await
    }

    /// Forget history up to `revision`; watches from before it get `Compacted`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}
