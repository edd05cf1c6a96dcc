//! The embedded backend: one redb file, every acknowledged write fsync'd.
//!
//! All writes go through one writer thread that commits them in batches (group commit): a
//! burst of concurrent writes shares one fsync, which is what makes thousands of durable
//! writes per second possible on one disk. Revisions are assigned inside the batch in the
//! order the writes were received, and events are published only after the commit, so a
//! watcher never sees a change that could still be lost.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{Event, KeyValue, Revision, Store, StoreError, WatchStream};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
const COMPACTED_KEY: &str = "compacted";

/// How many recent events are kept in memory so that a watch can start slightly in the past.
const HISTORY: usize = 8192;
/// Upper bound of writes folded into one transaction.
const MAX_BATCH: usize = 512;

enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

type WriteReply = Result<(Option<KeyValue>, Option<Event>), StoreError>;

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<WriteReply>,
}

struct Shared {
    path: PathBuf,
    db: Arc<Database>,
    /// Recent events (oldest first) and the live channel, under one lock so that a new
    /// watcher sees every event exactly once: either from the backlog or from the channel.
    history: Mutex<History>,
}

struct History {
    events: VecDeque<Event>,
    /// Watches from a revision below this cannot be served from `events`.
    oldest_watchable: Revision,
    live: broadcast::Sender<Event>,
}

pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: std::sync::mpsc::Sender<WriteRequest>,
}

fn backend(path: &Path, err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        path: path.display().to_string(),
        message: err.to_string(),
    }
}

fn encode(create: Revision, modified: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(path: &Path, key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < 16 {
        return Err(backend(path, format!("record for {key} is truncated")));
    }
    let create = i64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
    let modified = i64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    Ok(KeyValue {
        key: key.to_string(),
        value: Arc::from(&raw[16..]),
        create_revision: create,
        mod_revision: modified,
    })
}

impl EmbeddedStore {
    /// Opens (or creates) the database file. redb recovers a file left by a crash on open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|e| backend(&path, e))?;
        let (revision, compacted) = {
            let txn = db.begin_write().map_err(|e| backend(&path, e))?;
            let found = {
                let _ = txn.open_table(OBJECTS).map_err(|e| backend(&path, e))?;
                let meta = txn.open_table(META).map_err(|e| backend(&path, e))?;
                let rev = meta
                    .get(REVISION_KEY)
                    .map_err(|e| backend(&path, e))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                let compacted = meta
                    .get(COMPACTED_KEY)
                    .map_err(|e| backend(&path, e))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                (rev, compacted)
            };
            txn.commit().map_err(|e| backend(&path, e))?;
            found
        };
        let (live, _) = broadcast::channel(HISTORY * 2);
        let shared = Arc::new(Shared {
            path: path.clone(),
            db: Arc::new(db),
            history: Mutex::new(History {
                events: VecDeque::with_capacity(HISTORY),
                // History before this process started is not kept: watches must start at
                // or after the revision found on disk.
                oldest_watchable: revision.max(compacted),
                live,
            }),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("skiff-store-writer".into())
            .spawn(move || writer_loop(writer_shared, revision, rx))
            .map_err(|e| backend(&path, e))?;
        Ok(Self { shared, writer: tx })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    async fn submit(&self, op: WriteOp) -> WriteReply {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(WriteRequest { op, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Applies one operation inside the open transaction; returns the result and the event.
fn apply(
    path: &Path,
    objects: &mut redb::Table<&str, &[u8]>,
    op: &WriteOp,
    next_revision: Revision,
) -> WriteReply {
    let current = |objects: &redb::Table<&str, &[u8]>, key: &str| -> Result<_, StoreError> {
        match objects.get(key).map_err(|e| backend(path, e))? {
            Some(raw) => Ok(Some(decode(path, key, raw.value())?)),
            None => Ok(None),
        }
    };
    match op {
        WriteOp::Create { key, value } => {
            if current(objects, key)?.is_some() {
                return Err(StoreError::AlreadyExists { key: key.clone() });
            }
            objects
                .insert(
                    key.as_str(),
                    encode(next_revision, next_revision, value).as_slice(),
                )
                .map_err(|e| backend(path, e))?;
            let kv = KeyValue {
                key: key.clone(),
                value: Arc::from(value.as_slice()),
                create_revision: next_revision,
                mod_revision: next_revision,
            };
            Ok((Some(kv.clone()), Some(Event::Put { kv, prev: None })))
        }
        WriteOp::Update {
            key,
            value,
            expected,
        } => {
            let prev =
                current(objects, key)?.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
            if prev.mod_revision != *expected {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual: prev.mod_revision,
                });
            }
            objects
                .insert(
                    key.as_str(),
                    encode(prev.create_revision, next_revision, value).as_slice(),
                )
                .map_err(|e| backend(path, e))?;
            let kv = KeyValue {
                key: key.clone(),
                value: Arc::from(value.as_slice()),
                create_revision: prev.create_revision,
                mod_revision: next_revision,
            };
            Ok((
                Some(kv.clone()),
                Some(Event::Put {
                    kv,
                    prev: Some(prev),
                }),
            ))
        }
        WriteOp::Delete { key, expected } => {
            let prev =
                current(objects, key)?.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
            if let Some(expected) = expected {
                if prev.mod_revision != *expected {
                    return Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        actual: prev.mod_revision,
                    });
                }
            }
            objects.remove(key.as_str()).map_err(|e| backend(path, e))?;
            Ok((
                Some(prev.clone()),
                Some(Event::Delete {
                    key: key.clone(),
                    revision: next_revision,
                    prev: Some(prev),
                }),
            ))
        }
        WriteOp::Compact { .. } => Ok((None, None)),
    }
}

fn writer_loop(
    shared: Arc<Shared>,
    mut revision: Revision,
    requests: std::sync::mpsc::Receiver<WriteRequest>,
) {
    let path = shared.path.clone();
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let start_revision = revision;
        let mut results: Vec<WriteReply> = Vec::with_capacity(batch.len());
        let mut compact_to = None;
        let committed = (|| -> Result<(), StoreError> {
            let txn = shared.db.begin_write().map_err(|e| backend(&path, e))?;
            {
                let mut objects = txn.open_table(OBJECTS).map_err(|e| backend(&path, e))?;
                for request in &batch {
                    if let WriteOp::Compact { revision: r } = request.op {
                        compact_to = Some(compact_to.unwrap_or(0).max(r));
                    }
                    let result = apply(&path, &mut objects, &request.op, revision + 1);
                    if matches!(result, Ok((_, Some(_)))) {
                        revision += 1;
                    }
                    results.push(result);
                }
                let mut meta = txn.open_table(META).map_err(|e| backend(&path, e))?;
                meta.insert(REVISION_KEY, revision)
                    .map_err(|e| backend(&path, e))?;
                if let Some(c) = compact_to {
                    meta.insert(COMPACTED_KEY, c)
                        .map_err(|e| backend(&path, e))?;
                }
            }
            txn.commit().map_err(|e| backend(&path, e))?;
            Ok(())
        })();
        if let Err(err) = committed {
            tracing::error!(error = %err, "store commit failed; failing the whole batch");
            revision = start_revision;
            for request in batch {
                let _ = request.reply.send(Err(backend(&path, &err)));
            }
            continue;
        }
        {
            let mut history = shared.history.lock().expect("history lock");
            for result in results.iter() {
                if let Ok((_, Some(event))) = result {
                    if history.events.len() == HISTORY {
                        if let Some(dropped) = history.events.pop_front() {
                            history.oldest_watchable = dropped.revision();
                        }
                    }
                    history.events.push_back(event.clone());
                    let _ = history.live.send(event.clone());
                }
            }
            if let Some(c) = compact_to {
                history.oldest_watchable = history.oldest_watchable.max(c);
                while history.events.front().is_some_and(|e| e.revision() <= c) {
                    history.events.pop_front();
                }
            }
        }
        for (request, result) in batch.into_iter().zip(results) {
            let _ = request.reply.send(result);
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let txn = self
            .shared
            .db
            .begin_read()
            .map_err(|e| backend(&self.shared.path, e))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| backend(&self.shared.path, e))?;
        Ok(meta
            .get(REVISION_KEY)
            .map_err(|e| backend(&self.shared.path, e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let path = &self.shared.path;
        let txn = self.shared.db.begin_read().map_err(|e| backend(path, e))?;
        let objects = txn.open_table(OBJECTS).map_err(|e| backend(path, e))?;
        match objects.get(key).map_err(|e| backend(path, e))? {
            Some(raw) => Ok(Some(decode(path, key, raw.value())?)),
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let path = &self.shared.path;
        let txn = self.shared.db.begin_read().map_err(|e| backend(path, e))?;
        let objects = txn.open_table(OBJECTS).map_err(|e| backend(path, e))?;
        let meta = txn.open_table(META).map_err(|e| backend(path, e))?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(|e| backend(path, e))?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut out = Vec::new();
        for entry in objects.range(prefix..).map_err(|e| backend(path, e))? {
            let (k, v) = entry.map_err(|e| backend(path, e))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push(decode(path, key, v.value())?);
        }
        Ok((out, revision))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let (kv, _) = self
            .submit(WriteOp::Create {
                key: key.to_string(),
                value,
            })
            .await?;
        kv.ok_or(StoreError::Closed)
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let (kv, _) = self
            .submit(WriteOp::Update {
                key: key.to_string(),
                value,
                expected,
            })
            .await?;
        kv.ok_or(StoreError::Closed)
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let (kv, event) = self
            .submit(WriteOp::Delete {
                key: key.to_string(),
                expected,
            })
            .await?;
        match (kv, event) {
            (Some(kv), Some(event)) => Ok((kv, event.revision())),
            _ => Err(StoreError::Closed),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let (backlog, mut live) = {
            let history = self.shared.history.lock().expect("history lock");
            if after < history.oldest_watchable {
                return Err(StoreError::Compacted {
                    requested: after,
                    oldest: history.oldest_watchable,
                });
            }
            let backlog: Vec<Event> = history
                .events
                .iter()
                .filter(|e| e.revision() > after && e.key().starts_with(prefix))
                .cloned()
                .collect();
            (backlog, history.live.subscribe())
        };
        let (tx, rx) = mpsc::channel(1024);
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut last = after;
            for event in backlog {
                last = event.revision();
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(event) => {
                        if event.revision() <= last || !event.key().starts_with(&prefix) {
                            continue;
                        }
                        last = event.revision();
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(StoreError::Compacted {
                                requested: last,
                                oldest: last + 1,
                            }))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.submit(WriteOp::Compact { revision }).await.map(|_| ())
    }
}
