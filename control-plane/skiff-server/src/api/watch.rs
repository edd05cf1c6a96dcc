//! Watches: a chunked stream of `{"type": …, "object": …}` events, served from the cache.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::objects::{RequestContext, Selectors};
use super::status::ApiError;
use super::table::{self, IncludeObject};
use super::{ApiServer, Body, Target};
use crate::cache::{CacheEvent, EventType};
use crate::registry::ResourceType;

const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Encoder {
    rt: &'static ResourceType,
    table: bool,
    include: IncludeObject,
    headers_sent: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, object: &Value) -> Bytes {
        let object = if self.table {
            let rv = object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let t = table::table(
                self.rt.kind,
                &[object],
                &rv,
                None,
                self.include,
                !self.headers_sent,
            );
            self.headers_sent = true;
            t
        } else {
            let mut o = object.clone();
            if let Some(m) = o.as_object_mut() {
                m.insert("apiVersion".into(), json!(self.rt.api_version()));
                m.insert("kind".into(), json!(self.rt.kind));
            }
            o
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, revision: i64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": metadata});
        let mut line =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Translates a store change into what this watcher sees, given its selectors: an object
/// that starts matching is ADDED, one that stops matching is DELETED.
fn visible(
    rt: &ResourceType,
    selectors: &Selectors,
    prefix: &str,
    event: &CacheEvent,
) -> Option<(&'static str, Value)> {
    if !event.key.starts_with(prefix) {
        return None;
    }
    let object = crate::cache::decode(&event.object);
    let now = selectors.matches(rt, &object);
    let before = event
        .prev
        .as_ref()
        .is_some_and(|p| selectors.matches(rt, &crate::cache::decode(p)));
    let kind = match event.kind {
        EventType::Added => now.then_some("ADDED"),
        EventType::Deleted => (before || now).then_some("DELETED"),
        EventType::Modified => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
    }?;
    Some((kind, object))
}

impl ApiServer {
    pub async fn watch(
        self: &Arc<Self>,
        t: &Target,
        ctx: &RequestContext,
    ) -> Result<Response<Body>, ApiError> {
        let selectors = match &t.name {
            // A watch on a named object is a watch with a name field selector.
            Some(name) => {
                let mut q = ctx.query.0.clone();
                let existing = ctx.query.get("fieldSelector").unwrap_or("").to_string();
                q.retain(|(k, _)| k != "fieldSelector");
                let fs = if existing.is_empty() {
                    format!("metadata.name={name}")
                } else {
                    format!("{existing},metadata.name={name}")
                };
                q.push(("fieldSelector".into(), fs));
                Selectors::parse(t.rt, &super::Query(q))?
            }
            None => Selectors::parse(t.rt, &ctx.query)?,
        };
        let timeout = ctx
            .query
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT);
        let bookmarks = ctx.query.flag("allowWatchBookmarks");
        let send_initial = ctx
            .query
            .get("sendInitialEvents")
            .map(|_| ctx.query.flag("sendInitialEvents"));
        let rv = ctx.query.get("resourceVersion").filter(|s| !s.is_empty());
        let rt = t.rt;
        let prefix = rt.key_prefix(t.namespace.as_deref());
        let mut encoder = Encoder {
            rt,
            table: ctx.wants_table(),
            include: IncludeObject::parse(ctx.query.get("includeObject")),
            headers_sent: false,
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
        // The initial state, and where the live stream starts.
        let (initial, start, mut live, backlog) = match (rv, send_initial) {
            (None | Some("0"), _) | (_, Some(true)) => {
                let (items, revision, live) = self.cache.snapshot_and_subscribe(&prefix);
                let items: Vec<Arc<Value>> = items
                    .into_iter()
                    .filter(|o| selectors.matches(rt, o))
                    .collect();
                (items, revision, live, Vec::new())
            }
            (Some(v), _) => {
                let after: i64 = v
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?;
                match self.cache.subscribe(after) {
                    Ok((backlog, live)) => (Vec::new(), after, live, backlog),
                    Err(too_old) => {
                        let status = ApiError::gone(format!(
                            "too old resource version: {after} ({})",
                            too_old.oldest
                        ))
                        .to_status();
                        let mut line =
                            serde_json::to_vec(&json!({"type": "ERROR", "object": status}))
                                .unwrap_or_default();
                        line.push(b'\n');
                        let _ = tx.try_send(Bytes::from(line));
                        drop(tx);
                        return Ok(stream_response(rx));
                    }
                }
            }
        };
        let initial_end_bookmark = send_initial == Some(true) && bookmarks;
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            for obj in &initial {
                if tx.send(encoder.event("ADDED", obj)).await.is_err() {
                    return;
                }
            }
            if initial_end_bookmark && tx.send(encoder.bookmark(start, true)).await.is_err() {
                return;
            }
            let mut last = start;
            for event in backlog {
                if let Some((kind, object)) = visible(rt, &selectors, &prefix, &event) {
                    if tx.send(encoder.event(kind, &object)).await.is_err() {
                        return;
                    }
                }
                last = event.revision;
            }
            let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = ticker.tick(), if bookmarks => {
                        if tx.send(encoder.bookmark(last, false)).await.is_err() { return; }
                    }
                    received = live.recv() => match received {
                        Ok(event) => {
                            if event.revision <= last { continue; }
                            last = event.revision;
                            if let Some((kind, object)) = visible(rt, &selectors, &prefix, &event) {
                                if tx.send(encoder.event(kind, &object)).await.is_err() { return; }
                            }
                        }
                        Err(RecvError::Lagged(_)) => {
                            // Too slow to keep up: end with 410 so the client relists.
                            let status = ApiError::gone("the watch fell too far behind; relist").to_status();
                            let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
                            line.push(b'\n');
                            let _ = tx.send(Bytes::from(line)).await;
                            return;
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(stream_response(rx))
    }
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(Frame::data(chunk)), rx))
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(StreamBody::new(stream).boxed())
        .expect("valid response")
}
