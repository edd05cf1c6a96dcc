//! The etcd v3 backend: every `Store` call is one etcd request (or a short series of pages).
//!
//! The store revision is etcd's own revision, so a resourceVersion handed out by one API
//! server is meaningful to every other one sharing the cluster. Compare-and-swap writes are
//! etcd transactions on `create_revision` / `mod_revision`; a watch is an etcd watch (with
//! `prev_kv` unless the caller keeps values itself), re-established from the last delivered
//! revision when the connection drops.
//!
//! Two differences from raw etcd that keep this backend interchangeable with the embedded
//! one:
//! * `watch(prefix, after)` refuses (`Compacted`) as soon as `after` itself is compacted,
//!   like the embedded store, although etcd could still serve `after + 1`. The etcd watch is
//!   started at `after` and the events of revision `after` are dropped, so that etcd's own
//!   compaction check and the synchronous check in `watch` agree.
//! * `compact` of a revision already compacted is a no-op, and a revision past the current
//!   one compacts up to the current one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, ResponseHeader, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{Event, KeyValue, Revision, Store, StoreError, WatchStream};

/// How long `connect` waits for etcd to answer a first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of one request; a request to an etcd that is down would otherwise wait in
/// the client's load balancer until an endpoint comes back.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys fetched per range request when listing a prefix.
const LIST_PAGE: i64 = 500;
/// Backoff between attempts to re-establish a broken watch.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(100);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);
/// Buffered events per watch, as for the embedded store.
const WATCH_BUFFER: usize = 1024;

/// Client-certificate TLS for `https://` endpoints, all PEM.
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA that signed etcd's serving certificate.
    pub ca_pem: Vec<u8>,
    /// The client certificate presented to etcd (`--client-cert-auth`).
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").finish_non_exhaustive()
    }
}

/// A `Store` on an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The endpoints, comma-separated, for error messages.
    endpoints: String,
    /// Prepended to every key in etcd, stripped from every key read back.
    key_prefix: String,
    request_timeout: Duration,
}

/// A failed etcd request: the client's error, or no answer in time.
enum RpcError {
    Etcd(etcd_client::Error),
    Timeout(Duration),
}

impl RpcError {
    fn grpc_message(&self) -> Option<&str> {
        match self {
            RpcError::Etcd(etcd_client::Error::GRpcStatus(status)) => Some(status.message()),
            _ => None,
        }
    }

    /// etcd's `ErrCompacted`: the requested revision is older than the last compaction.
    fn is_compacted(&self) -> bool {
        self.grpc_message()
            .is_some_and(|m| m.contains("required revision has been compacted"))
    }

    /// etcd's `ErrFutureRev`: the requested revision is newer than the store.
    fn is_future_revision(&self) -> bool {
        self.grpc_message()
            .is_some_and(|m| m.contains("required revision is a future revision"))
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Etcd(e) => write!(f, "{e}"),
            RpcError::Timeout(t) => write!(f, "no answer within {}s", t.as_secs_f32()),
        }
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty or all 0xff: up to the end of the keyspace.
    vec![0]
}

/// The `[start, end)` range of the keys under `full_prefix` in etcd's terms.
fn prefix_range(full_prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if full_prefix.is_empty() {
        // Every key: etcd spells this as key "\0", range_end "\0".
        (vec![0], vec![0])
    } else {
        (
            full_prefix.as_bytes().to_vec(),
            prefix_end(full_prefix.as_bytes()),
        )
    }
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`http://host:port` or, with `tls`, `https://host:port`)
    /// and checks that it answers within a few seconds.
    pub async fn connect(endpoints: &[String], tls: Option<EtcdTls>) -> Result<Self, StoreError> {
        let joined = endpoints.join(",");
        let fail = |message: String| StoreError::Backend {
            path: format!("etcd {joined}"),
            message,
        };
        if endpoints.is_empty() {
            return Err(fail("no etcd endpoint given".into()));
        }
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        let http = endpoints
            .iter()
            .filter(|e| e.starts_with("http://"))
            .count();
        if https + http != endpoints.len() {
            return Err(fail(
                "every endpoint must be an http:// or https:// URL".into(),
            ));
        }
        if https > 0 && http > 0 {
            return Err(fail("endpoints mix http:// and https://".into()));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            // Detects a dead connection under a long-lived watch; etcd refuses pings more
            // often than every 5 seconds.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // Watches fail instead of hanging on a member that lost its leader.
            .with_require_leader(true);
        match (https > 0, tls) {
            (true, Some(tls)) => {
                let config = TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(tls.ca_pem))
                    .identity(Identity::from_pem(tls.cert_pem, tls.key_pem));
                options = options.with_tls(config);
            }
            (true, None) => {
                return Err(fail(
                    "https:// endpoints need a CA file, a client certificate and a key".into(),
                ))
            }
            (false, Some(_)) => {
                return Err(fail(
                    "TLS files were given but the endpoints are http://".into(),
                ))
            }
            (false, None) => {}
        }
        let client =
            match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(endpoints, Some(options)))
                .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => return Err(fail(format!("cannot connect: {e}"))),
                Err(_) => {
                    return Err(fail(format!(
                        "cannot connect within {}s",
                        CONNECT_TIMEOUT.as_secs()
                    )))
                }
            };
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                endpoints: joined.clone(),
                key_prefix: String::new(),
                request_timeout: REQUEST_TIMEOUT,
            }),
        };
        // The client connects lazily: make one cheap request so that an unreachable etcd
        // is reported here, not at the first real request.
        let mut kv = store.inner.client.kv_client();
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            kv.get(vec![0], Some(GetOptions::new().with_count_only())),
        )
        .await
        {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => {
                let text = e.to_string();
                // tonic's words for a failed handshake are deep in a long message: say what
                // to look at.
                let hint = if https > 0 && text.to_ascii_lowercase().contains("certificate") {
                    " (TLS: the CA file must be the one that signed etcd's serving certificate, for this endpoint's name or IP, and etcd must trust the client certificate's CA)"
                } else {
                    ""
                };
                Err(fail(format!("etcd is not reachable: {text}{hint}")))
            }
            Err(_) => Err(fail(format!(
                "etcd did not answer within {}s (is it running, and are the endpoints and TLS files right?)",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Keeps every key of this store under `prefix` in etcd (for example `/cluster-a`), so
    /// that several clusters can share one etcd. Keys read back have the prefix removed.
    pub fn with_key_prefix(self, prefix: impl Into<String>) -> Self {
        let inner = &self.inner;
        EtcdStore {
            inner: Arc::new(Inner {
                client: inner.client.clone(),
                endpoints: inner.endpoints.clone(),
                key_prefix: prefix.into(),
                request_timeout: inner.request_timeout,
            }),
        }
    }

    /// Bounds every request (default 10 s).
    pub fn with_request_timeout(self, timeout: Duration) -> Self {
        let inner = &self.inner;
        EtcdStore {
            inner: Arc::new(Inner {
                client: inner.client.clone(),
                endpoints: inner.endpoints.clone(),
                key_prefix: inner.key_prefix.clone(),
                request_timeout: timeout,
            }),
        }
    }

    pub fn endpoints(&self) -> &str {
        &self.inner.endpoints
    }
}

impl Inner {
    fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.key_prefix, key)
    }

    fn fail(&self, op: &str, key: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError::Backend {
            path: format!("etcd {}", self.endpoints),
            message: format!("{op} {key:?}: {err}"),
        }
    }

    async fn rpc<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, RpcError> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(RpcError::Etcd(e)),
            Err(_) => Err(RpcError::Timeout(self.request_timeout)),
        }
    }

    fn revision(
        &self,
        op: &str,
        key: &str,
        header: Option<&ResponseHeader>,
    ) -> Result<Revision, StoreError> {
        header
            .map(|h| h.revision())
            .ok_or_else(|| self.fail(op, key, "etcd response without a header"))
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let raw = std::str::from_utf8(kv.key())
            .map_err(|e| self.fail("read", &String::from_utf8_lossy(kv.key()), e))?;
        let key = raw.strip_prefix(self.key_prefix.as_str()).ok_or_else(|| {
            self.fail(
                "read",
                raw,
                format!("key is outside the store prefix {:?}", self.key_prefix),
            )
        })?;
        Ok(KeyValue {
            key: key.to_string(),
            value: Arc::from(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// `with_previous`: the watch asked for `prev_kv`, so a delete without it is an error.
    fn convert_event(
        &self,
        event: &etcd_client::Event,
        with_previous: bool,
    ) -> Result<Event, StoreError> {
        let kv = event
            .kv()
            .ok_or_else(|| self.fail("watch", "", "event without a key"))?;
        let prev = event.prev_kv().map(|p| self.convert(p)).transpose()?;
        match event.event_type() {
            EventType::Put => {
                let kv = self.convert(kv)?;
                let prev = if kv.create_revision == kv.mod_revision {
                    None
                } else {
                    prev
                };
                Ok(Event::Put { kv, prev })
            }
            EventType::Delete => {
                let revision = kv.mod_revision();
                if with_previous && prev.is_none() {
                    return Err(self.fail(
                        "watch",
                        &String::from_utf8_lossy(kv.key()),
                        "delete event without the previous value",
                    ));
                }
                // A delete event's kv holds the key and the deletion's revision only.
                let key = self.convert(kv)?.key;
                Ok(Event::Delete {
                    key,
                    revision,
                    prev,
                })
            }
        }
    }

    /// Opens an etcd watch on `[start_key, end)` from `start` and waits for etcd to confirm it.
    async fn open_watch(
        &self,
        start_key: &[u8],
        end: &[u8],
        start: Revision,
        with_previous: bool,
    ) -> Result<etcd_client::WatchStream, RpcError> {
        let mut options = WatchOptions::new()
            .with_range(end.to_vec())
            .with_start_revision(start);
        if with_previous {
            options = options.with_prev_key();
        }
        let mut watch = self.client.watch_client();
        let mut stream = self
            .rpc(watch.watch(start_key.to_vec(), Some(options)))
            .await?;
        match self.rpc(stream.message()).await? {
            Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
            Some(resp) => Err(RpcError::Etcd(etcd_client::Error::WatchError(format!(
                "etcd refused the watch: {}",
                resp.cancel_reason()
            )))),
            None => Err(RpcError::Etcd(etcd_client::Error::WatchError(
                "watch stream closed before it was created".into(),
            ))),
        }
    }

    /// Learns etcd's compaction revision by watching from `start`, which is known to be
    /// compacted: etcd answers with the compact revision shortly after creating the watch.
    async fn compact_revision(
        &self,
        start_key: &[u8],
        end: &[u8],
        start: Revision,
    ) -> Option<Revision> {
        let mut stream = self.open_watch(start_key, end, start, false).await.ok()?;
        let found = tokio::time::timeout(self.request_timeout, async {
            while let Ok(Some(resp)) = stream.message().await {
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
            }
            None
        })
        .await;
        found.ok().flatten()
    }
}

/// Forwards one etcd watch to `tx`, re-establishing it from the last delivered revision when
/// the connection breaks, until the receiver is dropped or etcd reports a compaction.
async fn pump_watch(
    inner: Arc<Inner>,
    mut stream: etcd_client::WatchStream,
    (start_key, end): (Vec<u8>, Vec<u8>),
    after: Revision,
    with_previous: bool,
    tx: mpsc::Sender<Result<Event, StoreError>>,
) {
    // Events at or below `last` have been delivered (or were asked to be skipped). etcd
    // never splits one revision's events over two responses, so resuming at `last + 1`
    // loses and repeats nothing.
    let mut last = after;
    loop {
        let message = tokio::select! {
            _ = tx.closed() => return,
            message = stream.message() => message,
        };
        let error = match message {
            Ok(Some(resp)) => {
                if resp.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            requested: last,
                            oldest: resp.compact_revision(),
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    let _ = tx
                        .send(Err(inner.fail(
                            "watch",
                            &String::from_utf8_lossy(&start_key),
                            format!("etcd canceled the watch: {}", resp.cancel_reason()),
                        )))
                        .await;
                    return;
                }
                let mut newest = last;
                for event in resp.events() {
                    let event = match inner.convert_event(event, with_previous) {
                        Ok(event) => event,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    };
                    if event.revision() <= last {
                        continue;
                    }
                    newest = newest.max(event.revision());
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                last = newest;
                continue;
            }
            Ok(None) => "the stream ended".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(endpoints = %inner.endpoints, error = %error, revision = last,
            "etcd watch broke; re-establishing it");
        let mut backoff = WATCH_RETRY_MIN;
        stream = loop {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            match inner
                .open_watch(&start_key, &end, last.max(1), with_previous)
                .await
            {
                Ok(stream) => break stream,
                Err(err) => {
                    tracing::debug!(endpoints = %inner.endpoints, error = %err,
                        "etcd watch not re-established yet");
                    backoff = (backoff * 2).min(WATCH_RETRY_MAX);
                }
            }
        };
    }
}

impl EtcdStore {
    /// A watch from `after`, with `prev_kv` when `with_previous`.
    async fn open(
        &self,
        prefix: &str,
        after: Revision,
        with_previous: bool,
    ) -> Result<WatchStream, StoreError> {
        let inner = &self.inner;
        let (start_key, end) = prefix_range(&inner.full_key(prefix));
        // etcd's watch start 0 means "from now": start at 1 at least.
        let start = after.max(1);
        // etcd reports a compacted start revision asynchronously, on the stream; a range read
        // at the start revision answers now, and callers expect `watch` itself to refuse.
        let mut kv = inner.client.kv_client();
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_revision(start)
            .with_count_only();
        match inner.rpc(kv.get(start_key.clone(), Some(options))).await {
            Ok(_) => {}
            Err(e) if e.is_future_revision() => {}
            Err(e) if e.is_compacted() => {
                let oldest = inner
                    .compact_revision(&start_key, &end, start)
                    .await
                    .unwrap_or(after + 1);
                return Err(StoreError::Compacted {
                    requested: after,
                    oldest,
                });
            }
            Err(e) => return Err(inner.fail("watch", prefix, e)),
        }
        let stream = inner
            .open_watch(&start_key, &end, start, with_previous)
            .await
            .map_err(|e| inner.fail("watch", prefix, e))?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(pump_watch(
            self.inner.clone(),
            stream,
            (start_key, end),
            after,
            with_previous,
            tx,
        ));
        Ok(rx)
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let inner = &self.inner;
        let mut kv = inner.client.kv_client();
        let resp = inner
            .rpc(kv.get(vec![0], Some(GetOptions::new().with_count_only())))
            .await
            .map_err(|e| inner.fail("current revision", "", e))?;
        inner.revision("current revision", "", resp.header())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let inner = &self.inner;
        let mut kv = inner.client.kv_client();
        let resp = inner
            .rpc(kv.get(inner.full_key(key), None))
            .await
            .map_err(|e| inner.fail("get", key, e))?;
        resp.kvs()
            .first()
            .map(|found| inner.convert(found))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let inner = &self.inner;
        let (first_key, end) = prefix_range(&inner.full_key(prefix));
        let mut kv = inner.client.kv_client();
        // Pages after the first are read at the first page's revision, so the result is one
        // consistent snapshot. A compaction between pages removes that snapshot: start over.
        let mut attempts = 0;
        'snapshot: loop {
            attempts += 1;
            let mut revision: Revision = 0;
            let mut from = first_key.clone();
            let mut out = Vec::new();
            loop {
                let options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(LIST_PAGE)
                    .with_revision(revision);
                let resp = match inner.rpc(kv.get(from.clone(), Some(options))).await {
                    Ok(resp) => resp,
                    Err(e) if e.is_compacted() && revision != 0 && attempts < 5 => {
                        continue 'snapshot
                    }
                    Err(e) => return Err(inner.fail("list", prefix, e)),
                };
                if revision == 0 {
                    revision = inner.revision("list", prefix, resp.header())?;
                }
                for found in resp.kvs() {
                    out.push(inner.convert(found)?);
                }
                match resp.kvs().last() {
                    Some(last) if resp.more() => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => return Ok((out, revision)),
                }
            }
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let inner = &self.inner;
        let full = inner.full_key(key);
        let stored: Arc<[u8]> = Arc::from(value.as_slice());
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value, None)]);
        let mut kv = inner.client.kv_client();
        let resp = inner
            .rpc(kv.txn(txn))
            .await
            .map_err(|e| inner.fail("create", key, e))?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let revision = inner.revision("create", key, resp.header())?;
        Ok(KeyValue {
            key: key.to_string(),
            value: stored,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let inner = &self.inner;
        let full = inner.full_key(key);
        let stored: Arc<[u8]> = Arc::from(value.as_slice());
        let txn = Txn::new()
            .when([
                // An absent key has mod_revision 0: also require that it exists.
                Compare::create_revision(full.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(full.clone(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(
                full.clone(),
                value,
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let mut kv = inner.client.kv_client();
        let resp = inner
            .rpc(kv.txn(txn))
            .await
            .map_err(|e| inner.fail("update", key, e))?;
        let responses = resp.op_responses();
        if !resp.succeeded() {
            return match responses.first() {
                Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
                    Some(current) => Err(StoreError::Conflict {
                        key: key.to_string(),
                        expected,
                        actual: current.mod_revision(),
                    }),
                    None => Err(StoreError::NotFound {
                        key: key.to_string(),
                    }),
                },
                _ => Err(inner.fail("update", key, "unexpected transaction response")),
            };
        }
        let revision = inner.revision("update", key, resp.header())?;
        let create_revision = match responses.first() {
            Some(TxnOpResponse::Put(put)) => put.prev_key().map(|p| p.create_revision()),
            _ => None,
        }
        .ok_or_else(|| inner.fail("update", key, "put response without the previous value"))?;
        Ok(KeyValue {
            key: key.to_string(),
            value: stored,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let inner = &self.inner;
        let full = inner.full_key(key);
        let mut compares = vec![Compare::create_revision(
            full.clone(),
            CompareOp::Greater,
            0,
        )];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected,
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                full.clone(),
                Some(etcd_client::DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let mut kv = inner.client.kv_client();
        let resp = inner
            .rpc(kv.txn(txn))
            .await
            .map_err(|e| inner.fail("delete", key, e))?;
        let responses = resp.op_responses();
        if !resp.succeeded() {
            return match (responses.first(), expected) {
                (Some(TxnOpResponse::Get(get)), Some(expected)) => match get.kvs().first() {
                    Some(current) => Err(StoreError::Conflict {
                        key: key.to_string(),
                        expected,
                        actual: current.mod_revision(),
                    }),
                    None => Err(StoreError::NotFound {
                        key: key.to_string(),
                    }),
                },
                (Some(TxnOpResponse::Get(_)), None) => Err(StoreError::NotFound {
                    key: key.to_string(),
                }),
                _ => Err(inner.fail("delete", key, "unexpected transaction response")),
            };
        }
        let revision = inner.revision("delete", key, resp.header())?;
        let prev = match responses.first() {
            Some(TxnOpResponse::Delete(deleted)) => deleted.prev_kvs().first().cloned(),
            _ => None,
        }
        .ok_or_else(|| inner.fail("delete", key, "delete response without the deleted value"))?;
        Ok((inner.convert(&prev)?, revision))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.open(prefix, after, true).await
    }

    async fn watch_without_previous(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<WatchStream, StoreError> {
        self.open(prefix, after, false).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let inner = &self.inner;
        if revision < 1 {
            return Ok(());
        }
        let target = revision.min(self.current_revision().await?);
        let mut kv = inner.client.kv_client();
        match inner.rpc(kv.compact(target, None)).await {
            Ok(_) => Ok(()),
            // Already compacted at or past `target`.
            Err(e) if e.is_compacted() => Ok(()),
            Err(e) => Err(inner.fail("compact", &format!("revision {target}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
    }
}
