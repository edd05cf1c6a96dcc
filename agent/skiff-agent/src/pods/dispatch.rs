//! The dispatcher: one worker per pod uid, fed from two sources — the API (a watch on
//! `spec.nodeName=<node>`, when the agent has an API server) and the static pod manifests
//! (`static_pods`). Mirror pods seen in the API are never run: they only tell the static
//! pod's worker where to report its status, and wake the mirror keeper (`mirror`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio::sync::watch;

use super::static_pods::{self, ManifestError};
use super::{sandbox, worker, Desired, PodManager, Source};

struct Dispatcher {
    mgr: Arc<PodManager>,
    workers: HashMap<String, watch::Sender<Option<Desired>>>,
    /// Static pods by uid, as last read from the manifests.
    statics: BTreeMap<String, Pod>,
    /// Mirror pods in the API: static uid → mirror uid (absent while being deleted).
    mirrors: HashMap<String, String>,
    /// Manifest errors already logged, so that a bad file is reported once per change.
    reported: BTreeSet<String>,
    /// The static pods the mirror keeper must mirror.
    mirror_desired: watch::Sender<BTreeMap<String, Pod>>,
    mirror_wake: Arc<tokio::sync::Notify>,
}

impl Dispatcher {
    fn send(&mut self, uid: &str, desired: Option<Desired>) {
        match self.workers.get(uid) {
            Some(tx) => {
                let _ = tx.send(desired);
            }
            None => {
                if let Some(d) = desired {
                    let (tx, rx) = watch::channel(Some(d));
                    self.workers.insert(uid.to_string(), tx);
                    tokio::spawn(worker::run(self.mgr.clone(), uid.to_string(), rx));
                }
            }
        }
    }

    fn static_desired(&self, uid: &str) -> Option<Desired> {
        let pod = self.statics.get(uid)?.clone();
        Some(Desired {
            pod,
            source: Source::File {
                mirror: self.mirrors.get(uid).cloned(),
            },
        })
    }

    /// Reads the manifests and starts, stops or replaces static pods accordingly.
    async fn scan_manifests(&mut self) {
        let Some(dir) = self.mgr.manifest_dir.clone() else {
            return;
        };
        let node = self.mgr.node.clone();
        let scan = match tokio::task::spawn_blocking(move || static_pods::scan(&dir, &node)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading the static pod manifests failed");
                return;
            }
        };
        let current: BTreeSet<String> = scan.errors.iter().map(ManifestError::to_string).collect();
        for e in &scan.errors {
            if !self.reported.contains(&e.to_string()) {
                tracing::error!("static pod manifest ignored: {e}");
            }
        }
        self.reported = current;
        let before: BTreeSet<String> = self.statics.keys().cloned().collect();
        let after: BTreeSet<String> = scan.pods.keys().cloned().collect();
        let diff = static_pods::diff(&before, &after);
        for uid in &diff.removed {
            if let Some(mut pod) = self.statics.remove(uid) {
                tracing::info!(
                    pod = pod.name_any(),
                    uid,
                    "static pod manifest removed or changed: stopping the pod"
                );
                // A graceful deletion, as if the pod had been deleted through the API.
                pod.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
                let source = Source::File {
                    mirror: self.mirrors.get(uid).cloned(),
                };
                self.send(uid, Some(Desired { pod, source }));
            }
        }
        for uid in &diff.added {
            let pod = scan.pods[uid].clone();
            tracing::info!(pod = pod.name_any(), uid, "static pod from a manifest");
            self.statics.insert(uid.clone(), pod);
            let d = self.static_desired(uid);
            self.send(uid, d);
        }
        if !diff.added.is_empty() || !diff.removed.is_empty() {
            self.mirror_desired.send_replace(self.statics.clone());
        }
    }

    /// A mirror pod changed in the API: its static pod's worker learns where to report.
    fn mirror_event(&mut self, static_uid: String, mirror: Option<&Pod>) {
        let live = mirror
            .filter(|m| m.metadata.deletion_timestamp.is_none())
            .and_then(|m| m.metadata.uid.clone());
        let changed = self.mirrors.get(&static_uid) != live.as_ref();
        match live {
            Some(uid) => self.mirrors.insert(static_uid.clone(), uid),
            None => self.mirrors.remove(&static_uid),
        };
        if changed && self.statics.contains_key(&static_uid) {
            let d = self.static_desired(&static_uid);
            self.send(&static_uid, d);
        }
        self.mirror_wake.notify_one();
    }

    /// Tears down pods that have a sandbox on this node but no source any more (deleted
    /// while the agent was away).
    async fn clean_orphans(&self, api_uids: &HashSet<String>) {
        for uid in sandbox::recorded(&self.mgr.root) {
            if api_uids.contains(&uid) || self.statics.contains_key(&uid) {
                continue;
            }
            tracing::info!(uid, "cleaning up a pod deleted while the agent was away");
            let m = self.mgr.clone();
            let _ = tokio::task::spawn_blocking(move || m.teardown(&uid, "", "")).await;
        }
    }
}

/// Feeds every pod this node runs to its worker, starting workers for new pods and telling
/// workers when their pod is gone; cleans up after pods deleted while the agent was not
/// running.
pub async fn run(mgr: Arc<PodManager>) {
    let (mirror_desired, mirror_rx) = watch::channel(BTreeMap::new());
    let mirror_wake = Arc::new(tokio::sync::Notify::new());
    if let Some(client) = mgr.client.clone() {
        tokio::spawn(super::mirror::run(
            client,
            mgr.node.clone(),
            mirror_rx,
            mirror_wake.clone(),
        ));
    }
    let mut d = Dispatcher {
        mgr: mgr.clone(),
        workers: HashMap::new(),
        statics: BTreeMap::new(),
        mirrors: HashMap::new(),
        reported: BTreeSet::new(),
        mirror_desired,
        mirror_wake,
    };
    if let Some(dir) = &mgr.manifest_dir {
        tracing::info!(dir = %dir.display(), every = ?mgr.file_check, "static pods from manifests");
    }
    // The manifests are read before any cleanup, so that static pods that outlived an agent
    // restart are not taken for deleted ones.
    d.scan_manifests().await;
    let mut stream = match mgr.client.clone() {
        Some(client) => {
            let pods: Api<Pod> = Api::all(client);
            let config = watcher::Config::default().fields(&format!("spec.nodeName={}", mgr.node));
            watcher::watcher(pods, config).boxed()
        }
        None => {
            d.clean_orphans(&HashSet::new()).await;
            futures::stream::pending().boxed()
        }
    };
    let mut tick = tokio::time::interval(mgr.file_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listing: HashSet<String> = HashSet::new();
    let mut first_listing = true;
    loop {
        let event = tokio::select! {
            _ = tick.tick() => {
                d.workers.retain(|_, tx| !tx.is_closed());
                d.scan_manifests().await;
                continue;
            }
            event = stream.next() => match event {
                Some(e) => e,
                None => return,
            },
        };
        d.workers.retain(|_, tx| !tx.is_closed());
        match event {
            Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod)) => {
                if let Some(static_uid) = static_pods::mirror_of(&pod) {
                    d.mirror_event(static_uid, Some(&pod));
                    continue;
                }
                let uid = pod.uid().unwrap_or_default();
                listing.insert(uid.clone());
                d.send(
                    &uid,
                    Some(Desired {
                        pod,
                        source: Source::Api,
                    }),
                );
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(static_uid) = static_pods::mirror_of(&pod) {
                    d.mirror_event(static_uid, None);
                    continue;
                }
                let uid = pod.uid().unwrap_or_default();
                if let Some(tx) = d.workers.remove(&uid) {
                    let _ = tx.send(None);
                }
            }
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitDone) => {
                // Pods that vanished while the watch was down; static pods have no API
                // object to vanish.
                for (uid, tx) in d.workers.iter() {
                    if !listing.contains(uid) && !d.statics.contains_key(uid) {
                        let _ = tx.send(None);
                    }
                }
                if first_listing {
                    first_listing = false;
                    d.clean_orphans(&listing).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching this node's pods failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
