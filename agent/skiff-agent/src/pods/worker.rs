//! One pod's life on this node. The worker owns the pod: it sets up the sandbox, runs the
//! init containers in order, then keeps the containers as the spec and restart policy
//! want them (restarts paced by CrashLoopBackOff, probes, hooks), reports the status, and
//! on deletion stops everything gracefully and removes the pod from the API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::ResourceExt;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::events::{Kind, Recorder};
use super::probe::{self, Handler, Prober, Step, Target};
use super::runtime::container_id;
use super::status::{self, ContainerRecord, ContainerView, Current, PodView};
use super::{Desired, PodManager, PodNetwork, Source};
use crate::bundle::ImageConfig;
use crate::env::{self, NodeFacts};
use crate::volumes::{self, PreparedVolume};

/// How often configMap, secret and downwardAPI volumes are rewritten from the API, so that
/// an update shows in running pods well within kubelet's minute.
const VOLUME_REFRESH: Duration = Duration::from_secs(20);

/// What must survive an agent restart, in `<pod dir>/state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    start_time: String,
    containers: BTreeMap<String, ContainerRecord>,
    image_backoff: BTreeMap<String, Backoff>,
}

/// The probes of one container run.
#[derive(Default)]
struct Probers {
    startup: Option<Prober>,
    liveness: Option<Prober>,
    readiness: Option<Prober>,
}

impl Probers {
    /// Fresh probers for a container run that starts (or is first seen) at `now`.
    fn for_container(c: &Container, now: Instant) -> Self {
        Probers {
            startup: c.startup_probe.clone().map(|p| Prober::new(p, now)),
            liveness: c.liveness_probe.clone().map(|p| Prober::new(p, now)),
            readiness: c.readiness_probe.clone().map(|p| Prober::new(p, now)),
        }
    }
}

struct Worker {
    mgr: Arc<PodManager>,
    uid: String,
    state: Persisted,
    net: Option<PodNetwork>,
    sandbox_error: Option<String>,
    volumes: Option<Vec<PreparedVolume>>,
    volumes_refreshed: Instant,
    volume_error: Option<String>,
    allocatable: Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    probers: HashMap<String, Probers>,
    events: Recorder,
    last_status: Option<Value>,
    initialized: bool,
    failed: Option<(String, String)>,
    /// The pod has finished (Succeeded or Failed): nothing runs or restarts any more.
    terminal: bool,
    source: Source,
    /// The mirror pod `last_status` was posted to (static pods).
    posted_mirror: Option<String>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn unix_of(stamp: &str) -> u64 {
    stamp
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_second().max(0) as u64)
        .unwrap_or_else(|_| unix_now())
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

/// Whether a container that exited with `code` is started again.
fn restarts(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

fn lifecycle_handler(h: &LifecycleHandler) -> Option<Handler<'_>> {
    if let Some(e) = &h.exec {
        Some(Handler::Exec(e))
    } else if let Some(g) = &h.http_get {
        Some(Handler::Http(g))
    } else {
        h.tcp_socket.as_ref().map(Handler::Tcp)
    }
}

pub async fn run(mgr: Arc<PodManager>, uid: String, mut rx: watch::Receiver<Option<Desired>>) {
    let state_path = mgr.pod_dir(&uid).join("state.json");
    let state: Persisted = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut w = Worker {
        events: Recorder::new(mgr.client.clone(), mgr.node.clone()),
        mgr,
        uid,
        state,
        net: None,
        sandbox_error: None,
        volumes: None,
        volumes_refreshed: Instant::now(),
        volume_error: None,
        allocatable: None,
        probers: HashMap::new(),
        last_status: None,
        initialized: false,
        failed: None,
        terminal: false,
        source: Source::Api,
        posted_mirror: None,
    };
    loop {
        let desired = rx.borrow_and_update().clone();
        let pod = desired.map(|d| {
            w.source = d.source;
            d.pod
        });
        match pod {
            None => {
                w.force_stop().await;
                return;
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                w.terminate(&pod).await;
                return;
            }
            Some(pod) => {
                w.sync(&pod).await;
                w.save();
                w.report(&pod).await;
                w.release_if_finished(&pod).await;
            }
        }
        let wake = w.next_wakeup();
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

impl Worker {
    fn save(&self) {
        let dir = self.mgr.pod_dir(&self.uid);
        if !dir.exists() {
            return;
        }
        let path = dir.join("state.json");
        let tmp = dir.join("state.json.tmp");
        let bytes = serde_json::to_vec(&self.state).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), error = %e, "saving pod state failed");
        }
    }

    fn id(&self, name: &str) -> String {
        container_id(&self.uid, name)
    }

    fn target(&self, name: &str) -> Option<Target> {
        self.net.as_ref().map(|n| Target {
            runtime: self.mgr.runtime(),
            container_id: self.id(name),
            netns: n.sandbox.netns.clone(),
            pod_ip: n.pod_ip.clone(),
        })
    }

    /// The soonest moment something is due: a probe, the end of a back-off, or the
    /// regular check of the containers.
    fn next_wakeup(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(1);
        for p in self.probers.values() {
            for prober in [&p.startup, &p.liveness, &p.readiness]
                .into_iter()
                .flatten()
            {
                wake = wake.min(prober.next_due());
            }
        }
        wake.max(Instant::now() + Duration::from_millis(50))
    }

    fn refresh(&mut self, pod: &Pod) {
        let rt = self.mgr.runtime();
        let spec = pod.spec.clone().unwrap_or_default();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
        {
            let current = rt.current(&self.id(&c.name));
            let rec = self.state.containers.entry(c.name.clone()).or_default();
            if !matches!(current, Current::Running { .. }) {
                rec.ready = false;
                rec.started = false;
                self.probers.remove(&c.name);
            }
            rec.current = current;
        }
    }

    async fn sync(&mut self, pod: &Pod) {
        if self.state.start_time.is_empty() {
            self.state.start_time = rfc3339_now();
        }
        if self.failed.is_some() || self.terminal {
            return;
        }
        // A pod that finished before this worker existed (an agent restart) stays finished.
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) && self.last_status.is_none() {
            self.terminal = true;
            return;
        }
        // Without init containers a pod is initialised from the start, as kubelet reports.
        self.initialized = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_none_or(|ics| ics.is_empty());
        if self.net.is_none() {
            let mgr = self.mgr.clone();
            let p = pod.clone();
            match tokio::task::spawn_blocking(move || mgr.setup(&p)).await {
                Ok(Ok(net)) => {
                    self.net = Some(net);
                    self.sandbox_error = None;
                }
                Ok(Err(e)) => {
                    let message = format!("Failed to create pod sandbox: {e}");
                    if self.sandbox_error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(pod = pod.name_any(), error = %e, "pod sandbox setup failed");
                        self.events
                            .record(pod, None, Kind::Warning, "FailedCreatePodSandBox", &message)
                            .await;
                    }
                    self.sandbox_error = Some(message);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the sandbox setup task failed");
                    return;
                }
            }
        }
        if !self.sync_volumes(pod).await {
            return;
        }
        self.refresh(pod);
        let policy = restart_policy(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        self.initialized = true;
        for ic in spec.init_containers.iter().flatten() {
            let rec = self
                .state
                .containers
                .get(&ic.name)
                .cloned()
                .unwrap_or_default();
            match &rec.current {
                Current::Exited(t) if t.exit_code == 0 => continue,
                Current::Running { .. } => {}
                Current::Exited(t) => {
                    if policy == "Never" {
                        self.failed = Some((
                            "Failed".into(),
                            format!(
                                "init container {} failed with exit code {}",
                                ic.name, t.exit_code
                            ),
                        ));
                    } else {
                        self.restart_after_backoff(pod, ic, t.clone()).await;
                    }
                }
                Current::Absent => self.start(pod, ic).await,
            }
            self.initialized = false;
            return;
        }
        for c in &spec.containers {
            let rec = self
                .state
                .containers
                .get(&c.name)
                .cloned()
                .unwrap_or_default();
            match &rec.current {
                Current::Running { .. } => self.probe(pod, c).await,
                Current::Exited(t) => {
                    if restarts(&policy, t.exit_code) {
                        self.restart_after_backoff(pod, c, t.clone()).await;
                    }
                }
                Current::Absent => {
                    if !rec.backoff.waiting(unix_now()) {
                        self.start(pod, c).await;
                    }
                }
            }
        }
    }

    /// A container exited and will run again: schedule the restart once per exit and
    /// start it when its back-off is over.
    async fn restart_after_backoff(&mut self, pod: &Pod, c: &Container, t: status::Terminated) {
        let now = unix_now();
        let rec = self.state.containers.entry(c.name.clone()).or_default();
        if rec.handled_exit.as_deref() != Some(t.finished_at.as_str()) {
            rec.handled_exit = Some(t.finished_at.clone());
            rec.backoff
                .crashed(unix_of(&t.started_at), unix_of(&t.finished_at));
        }
        if rec.backoff.waiting(now) {
            let message = format!(
                "Back-off restarting failed container {} in pod {}_{}({})",
                c.name,
                pod.name_any(),
                pod.namespace().unwrap_or_default(),
                self.uid
            );
            self.container_event(pod, c, Kind::Warning, "BackOff", &message)
                .await;
            return;
        }
        self.start(pod, c).await;
    }

    /// Pulls the image if the policy asks, then creates and starts the container; a
    /// failure becomes the container's waiting reason and an event.
    async fn start(&mut self, pod: &Pod, c: &Container) {
        let Some(net) = self.net.clone() else { return };
        let image_ref = c.image.clone().unwrap_or_default();
        let (image, image_cfg) = match self.pull(pod, c, &image_ref).await {
            Some(pulled) => pulled,
            None => return,
        };
        let facts = self.facts().await;
        let env = match env::resolve(self.mgr.objects(), pod, c, &facts).await {
            Ok(resolved) => {
                for w in &resolved.warnings {
                    self.container_event(pod, c, Kind::Warning, w.reason, &w.message)
                        .await;
                }
                resolved.vars
            }
            Err(e) => {
                self.container_error(pod, c, e.reason(), &e.to_string())
                    .await;
                return;
            }
        };
        let mounts = match volumes::mounts_for(c, self.volumes.as_deref().unwrap_or_default(), &env)
        {
            Ok(m) => m,
            Err(e) => {
                if !e.detail().is_empty() {
                    tracing::warn!(
                        pod = pod.name_any(),
                        container = c.name,
                        detail = e.detail(),
                        "volume mount failed"
                    );
                }
                self.container_error(pod, c, e.reason(), &e.message()).await;
                return;
            }
        };
        let rec = self.state.containers.entry(c.name.clone()).or_default();
        // A run that ended becomes the last state; the new run counts as a restart.
        if let Current::Exited(t) = std::mem::take(&mut rec.current) {
            rec.last_termination = Some(t);
            rec.restart_count += 1;
        }
        let restart_count = rec.restart_count;
        let mgr = self.mgr.clone();
        let (p, cc, img) = (pod.clone(), c.clone(), image.clone());
        let result = tokio::task::spawn_blocking(move || {
            mgr.start_container(
                &p,
                &cc,
                &img,
                &image_cfg,
                &net,
                &env,
                &mounts,
                restart_count,
            )
        })
        .await;
        let rec = self.state.containers.entry(c.name.clone()).or_default();
        match result {
            Ok(Ok(())) => {
                rec.waiting = None;
                rec.image_id = image_id(&image);
                rec.current = Current::Running {
                    started_at: rfc3339_now(),
                };
                rec.started = c.startup_probe.is_none();
                rec.ready = c.readiness_probe.is_none() && rec.started;
                let now = Instant::now();
                self.probers
                    .insert(c.name.clone(), Probers::for_container(c, now));
                self.container_event(
                    pod,
                    c,
                    Kind::Normal,
                    "Created",
                    &format!("Created container: {}", c.name),
                )
                .await;
                self.container_event(
                    pod,
                    c,
                    Kind::Normal,
                    "Started",
                    &format!("Started container {}", c.name),
                )
                .await;
                if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                    if let Err(message) = self.run_hook(h, c, Duration::from_secs(30)).await {
                        self.container_event(
                            pod,
                            c,
                            Kind::Warning,
                            "FailedPostStartHook",
                            &format!("PostStartHook failed: {message}"),
                        )
                        .await;
                        self.stop_container(pod, c, grace_of(pod), false).await;
                    }
                }
            }
            Ok(Err(e)) => {
                let reason = match &e {
                    super::PodError::Runtime(_) => "RunContainerError",
                    _ => "CreateContainerError",
                };
                let message = e.to_string();
                if rec.waiting.as_ref().map(|w| &w.1) != Some(&message) {
                    tracing::warn!(pod = pod.name_any(), container = c.name, error = %e, "starting a container failed");
                }
                // Failing to start counts against the back-off like a crash does.
                self.container_error(pod, c, reason, &message).await;
            }
            Err(e) => tracing::warn!(error = %e, "the container start task failed"),
        }
    }

    async fn pull(
        &mut self,
        pod: &Pod,
        c: &Container,
        image_ref: &str,
    ) -> Option<(skiff_images::Image, ImageConfig)> {
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            let tagged = image_ref
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':') && !last.ends_with(":latest"));
            if tagged || image_ref.contains('@') {
                "IfNotPresent".into()
            } else {
                "Always".into()
            }
        });
        let present = self.mgr.images.get(image_ref);
        let image = match (policy.as_str(), present) {
            ("Never", None) => {
                let message = format!(
                    "Container image \"{image_ref}\" is not present with pull policy of Never"
                );
                self.set_waiting(&c.name, "ErrImageNeverPull", &message);
                self.container_event(pod, c, Kind::Warning, "ErrImageNeverPull", &message)
                    .await;
                return None;
            }
            ("Always", _) | (_, None) => {
                let now = unix_now();
                let backoff = self
                    .state
                    .image_backoff
                    .get(image_ref)
                    .cloned()
                    .unwrap_or_default();
                if backoff.waiting(now) {
                    let message = format!("Back-off pulling image \"{image_ref}\"");
                    self.set_waiting(&c.name, "ImagePullBackOff", &message);
                    self.container_event(pod, c, Kind::Normal, "BackOff", &message)
                        .await;
                    return None;
                }
                self.container_event(
                    pod,
                    c,
                    Kind::Normal,
                    "Pulling",
                    &format!("Pulling image \"{image_ref}\""),
                )
                .await;
                let began = std::time::Instant::now();
                match self
                    .mgr
                    .images
                    .pull(&self.mgr.registry, image_ref, None)
                    .await
                {
                    Ok(img) => {
                        self.state.image_backoff.remove(image_ref);
                        self.container_event(
                            pod,
                            c,
                            Kind::Normal,
                            "Pulled",
                            &format!(
                                "Successfully pulled image \"{image_ref}\" in {:.3}s",
                                began.elapsed().as_secs_f64()
                            ),
                        )
                        .await;
                        img
                    }
                    Err(e) => {
                        let message = format!("Failed to pull image \"{image_ref}\": {e}");
                        self.state
                            .image_backoff
                            .entry(image_ref.to_string())
                            .or_default()
                            .crashed(now, now);
                        self.set_waiting(&c.name, "ErrImagePull", &message);
                        self.container_event(pod, c, Kind::Warning, "Failed", &message)
                            .await;
                        return None;
                    }
                }
            }
            (_, Some(img)) => {
                self.container_event(
                    pod,
                    c,
                    Kind::Normal,
                    "Pulled",
                    &format!("Container image \"{image_ref}\" already present on machine"),
                )
                .await;
                img
            }
        };
        match self.mgr.images.config(&image) {
            Ok(cfg) => {
                let cfg = cfg.config.unwrap_or_default();
                Some((
                    image,
                    ImageConfig {
                        entrypoint: cfg.entrypoint.unwrap_or_default(),
                        cmd: cfg.cmd.unwrap_or_default(),
                        env: cfg.env.unwrap_or_default(),
                        working_dir: cfg.working_dir.unwrap_or_default(),
                        user: cfg.user.unwrap_or_default(),
                    },
                ))
            }
            Err(e) => {
                let message = format!("reading the configuration of image \"{image_ref}\": {e}");
                self.set_waiting(&c.name, "CreateContainerError", &message);
                None
            }
        }
    }

    /// The container cannot be configured or started (a missing ConfigMap key, a subPath
    /// that leaves its volume, a command not found …): it waits with kubelet's reason, and
    /// the worker tries again after its back-off.
    async fn container_error(&mut self, pod: &Pod, c: &Container, reason: &str, message: &str) {
        self.set_waiting(&c.name, reason, message);
        let rec = self.state.containers.entry(c.name.clone()).or_default();
        let now = unix_now();
        if !rec.backoff.waiting(now) {
            rec.backoff.crashed(now, now);
        }
        self.container_event(
            pod,
            c,
            Kind::Warning,
            "Failed",
            &format!("Error: {message}"),
        )
        .await;
    }

    /// What kubelet knows about this node and pod that the API objects may not say yet.
    async fn facts(&mut self) -> NodeFacts {
        if let (None, Some(client)) = (&self.allocatable, &self.mgr.client) {
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
            if let Ok(node) = nodes.get(&self.mgr.node).await {
                self.allocatable = node.status.and_then(|s| s.allocatable);
            }
        }
        NodeFacts {
            node_name: self.mgr.node.clone(),
            host_ips: vec![self.mgr.node_ip.clone()],
            pod_ips: self
                .net
                .as_ref()
                .filter(|n| !n.pod_ip.is_empty())
                .map(|n| vec![n.pod_ip.clone()])
                .unwrap_or_default(),
            allocatable: self.allocatable.clone().unwrap_or_default(),
        }
    }

    /// Sets the pod's volumes up once, then keeps API-backed content fresh; false while a
    /// volume cannot be set up (the containers wait in ContainerCreating).
    async fn sync_volumes(&mut self, pod: &Pod) -> bool {
        let due = self.volumes.is_none() || self.volumes_refreshed.elapsed() >= VOLUME_REFRESH;
        if !due {
            return true;
        }
        let facts = self.facts().await;
        let dir = self.mgr.pod_dir(&self.uid);
        let result = if self.volumes.is_none() {
            volumes::prepare(self.mgr.objects(), pod, &dir, &facts).await
        } else {
            volumes::refresh(self.mgr.objects(), pod, &dir, &facts).await
        };
        self.volumes_refreshed = Instant::now();
        match result {
            Ok(prepared) => {
                self.volumes = Some(prepared);
                self.volume_error = None;
                true
            }
            Err(e) => {
                let message = e.message();
                self.events
                    .record(pod, None, Kind::Warning, e.reason(), &message)
                    .await;
                self.volume_error = Some(message);
                // A failed refresh keeps the running containers on their old content.
                self.volumes.is_some()
            }
        }
    }

    /// Records an event about one of the pod's containers.
    async fn container_event(
        &mut self,
        pod: &Pod,
        c: &Container,
        kind: Kind,
        reason: &str,
        message: &str,
    ) {
        self.events
            .record(pod, Some(&c.name), kind, reason, message)
            .await;
    }

    fn set_waiting(&mut self, name: &str, reason: &str, message: &str) {
        self.state
            .containers
            .entry(name.to_string())
            .or_default()
            .waiting = Some((reason.into(), message.into()));
    }

    async fn run_hook(
        &self,
        h: &LifecycleHandler,
        c: &Container,
        timeout: Duration,
    ) -> Result<(), String> {
        if let Some(sleep) = &h.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
            return Ok(());
        }
        let (Some(handler), Some(target)) = (lifecycle_handler(h), self.target(&c.name)) else {
            return Ok(());
        };
        probe::run(&handler, &target, c, timeout).await
    }

    /// Runs the probes that are due and acts on their verdicts.
    async fn probe(&mut self, pod: &Pod, c: &Container) {
        let Some(target) = self.target(&c.name) else {
            return;
        };
        let now = Instant::now();
        if !self.probers.contains_key(&c.name) {
            // A container found running after an agent restart: probe it afresh.
            self.probers
                .insert(c.name.clone(), Probers::for_container(c, now));
        }
        let rec = self.state.containers.entry(c.name.clone()).or_default();
        if c.startup_probe.is_none() {
            rec.started = true;
        }
        if c.readiness_probe.is_none() {
            rec.ready = rec.started;
        }
        let started = rec.started;
        // Startup first; liveness and readiness wait until it has passed.
        let kinds: &[&str] = if started {
            &["Liveness", "Readiness"]
        } else {
            &["Startup"]
        };
        for kind in kinds {
            let Some(probers) = self.probers.get_mut(&c.name) else {
                return;
            };
            let slot = match *kind {
                "Startup" => &mut probers.startup,
                "Liveness" => &mut probers.liveness,
                _ => &mut probers.readiness,
            };
            let Some(prober) = slot.as_mut() else {
                continue;
            };
            if !prober.due(now) {
                continue;
            }
            let Some(handler) = probe::probe_handler(&prober.probe) else {
                continue;
            };
            let timeout = prober.timeout();
            let outcome = probe::run(&handler, &target, c, timeout).await;
            let step = prober.record(Instant::now(), outcome);
            if let Step::Failed(message) | Step::Changed(false, message) = &step {
                self.container_event(
                    pod,
                    c,
                    Kind::Warning,
                    "Unhealthy",
                    &format!("{kind} probe failed: {message}"),
                )
                .await;
            }
            let rec = self.state.containers.entry(c.name.clone()).or_default();
            match step {
                Step::Same | Step::Failed(_) => {}
                Step::Changed(true, _) => match *kind {
                    "Startup" => rec.started = true,
                    "Readiness" => rec.ready = true,
                    _ => {}
                },
                Step::Changed(false, _) => {
                    if *kind == "Readiness" {
                        rec.ready = false;
                    } else {
                        let lowered = kind.to_ascii_lowercase();
                        self.container_event(
                            pod,
                            c,
                            Kind::Normal,
                            "Killing",
                            &format!(
                                "Container {} failed {lowered} probe, will be restarted",
                                c.name
                            ),
                        )
                        .await;
                        self.stop_container(pod, c, grace_of(pod), false).await;
                        return;
                    }
                }
            }
        }
    }

    /// SIGTERM (after preStop when asked), then SIGKILL once `grace` is over.
    async fn stop_container(&mut self, pod: &Pod, c: &Container, grace: Duration, pre_stop: bool) {
        let deadline = Instant::now() + grace;
        let rt = self.mgr.runtime();
        let id = self.id(&c.name);
        if pre_stop {
            if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                if let Err(message) = self.run_hook(h, c, grace).await {
                    self.container_event(
                        pod,
                        c,
                        Kind::Warning,
                        "FailedPreStopHook",
                        &format!("PreStopHook failed: {message}"),
                    )
                    .await;
                }
            }
        }
        rt.signal(&id, Signal::SIGTERM, false);
        loop {
            if !matches!(rt.current(&id), Current::Running { .. }) {
                break;
            }
            if Instant::now() >= deadline {
                rt.signal(&id, Signal::SIGKILL, true);
                tokio::time::sleep(Duration::from_millis(100)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rec = self.state.containers.entry(c.name.clone()).or_default();
        rec.current = rt.current(&id);
        rec.ready = false;
        self.probers.remove(&c.name);
    }

    /// Graceful deletion: preStop hooks, SIGTERM, SIGKILL after the grace period, then
    /// everything on the node removed and the pod deleted for good.
    async fn terminate(&mut self, pod: &Pod) {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .map(|g| Duration::from_secs(g.max(0) as u64))
            .unwrap_or_else(|| grace_of(pod));
        let spec = pod.spec.clone().unwrap_or_default();
        let rt = self.mgr.runtime();
        let running: Vec<Container> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter(|c| matches!(rt.current(&self.id(&c.name)), Current::Running { .. }))
            .cloned()
            .collect();
        for c in &running {
            self.container_event(
                pod,
                c,
                Kind::Normal,
                "Killing",
                &format!("Stopping container {}", c.name),
            )
            .await;
        }
        // Containers stop side by side within one grace period, as kubelet stops them.
        let stops = running.iter().map(|c| {
            let rt = rt.clone();
            let id = self.id(&c.name);
            let hook = c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone());
            let target = self.target(&c.name);
            let c = c.clone();
            async move {
                let deadline = Instant::now() + grace;
                if let (Some(h), Some(target)) = (hook, target) {
                    let outcome = match (&h.sleep, lifecycle_handler(&h)) {
                        (Some(s), _) => {
                            tokio::time::sleep(
                                Duration::from_secs(s.seconds.max(0) as u64).min(grace),
                            )
                            .await;
                            Ok(())
                        }
                        (None, Some(handler)) => {
                            tokio::time::timeout(grace, probe::run(&handler, &target, &c, grace))
                                .await
                                .unwrap_or_else(|_| Err("timed out".into()))
                        }
                        (None, None) => Ok(()),
                    };
                    if let Err(message) = outcome {
                        tracing::info!(container = c.name, message, "preStop hook failed");
                    }
                }
                rt.signal(&id, Signal::SIGTERM, false);
                while matches!(rt.current(&id), Current::Running { .. }) {
                    if Instant::now() >= deadline {
                        rt.signal(&id, Signal::SIGKILL, true);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        futures::future::join_all(stops).await;
        let mgr = self.mgr.clone();
        let (uid, ns, name) = (
            self.uid.clone(),
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
        );
        let logs = mgr.pod_logs_dir(pod);
        let _ = tokio::task::spawn_blocking(move || {
            mgr.teardown(&uid, &ns, &name);
            let _ = std::fs::remove_dir_all(logs);
        })
        .await;
        // A static pod has no API object of its own; its mirror pod is the mirror keeper's.
        let (Source::Api, Some(client)) = (&self.source, &self.mgr.client) else {
            return;
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = api.delete(&pod.name_any(), &params).await {
            if !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409) {
                tracing::warn!(pod = pod.name_any(), error = %e, "deleting the terminated pod failed");
            }
        }
    }

    /// Once the pod has finished, its sandbox, IP and volumes go back, as kubelet gives them
    /// back; the pod object and its final status stay until someone deletes it.
    async fn release_if_finished(&mut self, pod: &Pod) {
        let finished = self
            .last_status
            .as_ref()
            .and_then(|s| s["phase"].as_str())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if !finished || self.terminal {
            return;
        }
        self.terminal = true;
        self.probers.clear();
        let mgr = self.mgr.clone();
        let (uid, ns, name) = (
            self.uid.clone(),
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
        );
        let _ = tokio::task::spawn_blocking(move || mgr.release(&uid, &ns, &name)).await;
    }

    /// The pod is gone from the API without a graceful deletion: stop at once.
    async fn force_stop(&mut self) {
        let mgr = self.mgr.clone();
        let uid = self.uid.clone();
        let _ = tokio::task::spawn_blocking(move || mgr.teardown(&uid, "", "")).await;
    }

    async fn report(&mut self, pod: &Pod) {
        let spec = pod.spec.clone().unwrap_or_default();
        let now_unix = unix_now();
        let policy = restart_policy(pod);
        let default_rec = ContainerRecord::default();
        fn view<'a>(
            c: &'a Container,
            records: &'a BTreeMap<String, ContainerRecord>,
            default_rec: &'a ContainerRecord,
            uid: &str,
            policy: &str,
            now_unix: u64,
        ) -> ContainerView<'a> {
            let record = records.get(&c.name).unwrap_or(default_rec);
            let restarting = match &record.current {
                Current::Exited(t) => {
                    restarts(policy, t.exit_code) && record.backoff.waiting(now_unix)
                }
                _ => false,
            };
            ContainerView {
                name: c.name.as_str(),
                image: c.image.as_deref().unwrap_or_default(),
                id: container_id(uid, &c.name),
                record,
                restarting,
            }
        }
        let records = &self.state.containers;
        let view_of = |c| view(c, records, &default_rec, &self.uid, &policy, now_unix);
        let now = rfc3339_now();
        let (pod_ip, sandbox_ready) = match &self.net {
            Some(n) => (n.pod_ip.as_str(), true),
            None => ("", false),
        };
        let view = PodView {
            pod,
            node_ip: &self.mgr.node_ip,
            pod_ip,
            start_time: &self.state.start_time,
            now: &now,
            sandbox_ready,
            init: spec.init_containers.iter().flatten().map(view_of).collect(),
            containers: spec.containers.iter().map(view_of).collect(),
            initialized: self.initialized,
            restart_policy: &policy,
            failed: self.failed.clone(),
        };
        let mut new_status = status::pod_status(&view);
        let pending_error = self
            .sandbox_error
            .clone()
            .or(self.volume_error.clone().filter(|_| self.volumes.is_none()));
        if let (Some(err), Some(cs)) = (
            pending_error,
            new_status["containerStatuses"].as_array_mut(),
        ) {
            for c in cs {
                if c["state"]["waiting"]["reason"] == "ContainerCreating" {
                    c["state"]["waiting"]["message"] = json!(err);
                }
            }
        }
        let mirror = match &self.source {
            Source::Api => None,
            Source::File { mirror } => mirror.clone(),
        };
        if matches!(self.source, Source::Api) && status::marked_by_node_lifecycle(pod) {
            // The control plane marked the pod not ready while this node was unreachable;
            // what we posted before is no longer what the API holds.
            self.last_status = None;
        }
        let unchanged = self
            .last_status
            .as_ref()
            .is_some_and(|s| status::comparable(s) == status::comparable(&new_status))
            && self.posted_mirror == mirror;
        if unchanged {
            return;
        }
        // Without an API server, or for a static pod whose mirror does not exist (yet), the
        // status is only kept here.
        let client = match (&self.mgr.client, &self.source, &mirror) {
            (Some(c), Source::Api, _) | (Some(c), Source::File { .. }, Some(_)) => c.clone(),
            _ => {
                self.last_status = Some(new_status);
                self.posted_mirror = None;
                return;
            }
        };
        let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": new_status})),
            )
            .await
        {
            Ok(_) => {
                self.last_status = Some(new_status);
                self.posted_mirror = mirror;
            }
            Err(e) => tracing::warn!(pod = pod.name_any(), error = %e, "posting pod status failed"),
        }
    }
}

fn grace_of(pod: &Pod) -> Duration {
    Duration::from_secs(
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64,
    )
}

/// `repository@digest`, the form kubelet reports as imageID.
fn image_id(image: &skiff_images::Image) -> String {
    let reference = &image.reference;
    let repo = match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => &reference[..i],
        _ => reference.as_str(),
    };
    let repo = repo.split('@').next().unwrap_or(repo);
    format!("{repo}@{}", image.manifest_digest)
}
