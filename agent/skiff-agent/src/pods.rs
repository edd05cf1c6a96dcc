//! Running the pods bound to this node, narrowly: pull the images, hold the sandbox, wire the
//! network through CNI when configured, start each container with skiff-shim on an overlay
//! of the image layers, report status as kubelet does, and tear everything down when the
//! pod is deleted. Restarts, probes, volumes and init containers come next.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use skiff_images::{ImageStore, RegistryClient};

use crate::bundle::{self, BundleInput, ImageConfig};
use crate::{cni, sandbox};

pub struct PodManager {
    pub client: kube::Client,
    pub node: String,
    pub node_ip: String,
    pub root: PathBuf,
    pub images: ImageStore,
    pub registry: RegistryClient,
    pub shim: PathBuf,
    pub shim_cgroup_root: Option<PathBuf>,
    pub agent_binary: PathBuf,
    pub cni: Option<cni::Runtime>,
    pub cluster_dns: String,
    pub cluster_domain: String,
    pub logs_dir: PathBuf,
    pub node_memory: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pulling {image}: {message}")]
    Pull { image: String, message: String },
    #[error("{0}")]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("{0}")]
    Network(#[from] cni::CniError),
    #[error("{0}")]
    Bundle(#[from] bundle::BundleError),
    #[error("{what}: {message}")]
    Runtime { what: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PodError + '_ {
    move |source| PodError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn container_id(uid: &str, name: &str) -> String {
    format!("{uid}-{name}")
}

impl PodManager {
    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    fn shim(&self, args: &[&str]) -> Result<String, PodError> {
        let mut cmd = Command::new(&self.shim);
        cmd.arg("--root").arg(self.root.join("shim"));
        if let Some(cg) = &self.shim_cgroup_root {
            cmd.arg("--cgroup-root").arg(cg);
        }
        let out = cmd.args(args).output().map_err(io(&self.shim))?;
        if !out.status.success() {
            return Err(PodError::Runtime {
                what: format!("skiff-shim {}", args.join(" ")),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The shim's view of a container: (status, exit code, started, finished).
    fn container_state(&self, id: &str) -> Option<Value> {
        self.shim(&["state", id])
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    }

    async fn pull(&self, image: &str) -> Result<(skiff_images::Image, ImageConfig), PodError> {
        let err = |e: skiff_images::Error| PodError::Pull {
            image: image.into(),
            message: e.to_string(),
        };
        let img = match self.images.get(image) {
            Some(i) => i,
            None => self
                .images
                .pull(&self.registry, image, None)
                .await
                .map_err(err)?,
        };
        let cfg = self
            .images
            .config(&img)
            .map_err(err)?
            .config
            .unwrap_or_default();
        Ok((
            img,
            ImageConfig {
                entrypoint: cfg.entrypoint.unwrap_or_default(),
                cmd: cfg.cmd.unwrap_or_default(),
                env: cfg.env.unwrap_or_default(),
                working_dir: cfg.working_dir.unwrap_or_default(),
                user: cfg.user.unwrap_or_default(),
            },
        ))
    }

    /// Everything a pod needs, then its containers started.
    async fn start(&self, pod: &Pod) -> Result<(), PodError> {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut pulled = Vec::new();
        for c in &spec.containers {
            pulled.push(self.pull(c.image.as_deref().unwrap_or_default()).await?);
        }
        let dir = self.pod_dir(&uid);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let hostname = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
        let sb = match sandbox::find(&self.root, &uid)? {
            Some(sb) => sb,
            None => sandbox::start(&self.root, &self.agent_binary, &uid, &hostname)?,
        };
        let mut pod_ip = String::new();
        if let Some(cni_rt) = &self.cni {
            let net = cni_rt.load()?;
            let attachment = cni::Attachment {
                container_id: uid.clone(),
                netns: sb.netns(),
                ifname: "eth0".into(),
                pod_namespace: pod.namespace().unwrap_or_default(),
                pod_name: pod.name_any(),
                pod_uid: uid.clone(),
                capabilities: BTreeMap::new(),
            };
            let result = cni_rt.add(&net, &attachment)?;
            pod_ip = result["ips"][0]["address"]
                .as_str()
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("")
                .to_string();
        }
        let files = [
            (
                "etc-hosts",
                bundle::hosts_file(
                    pod,
                    if pod_ip.is_empty() {
                        "127.0.0.1"
                    } else {
                        &pod_ip
                    },
                    &self.cluster_domain,
                ),
            ),
            ("etc-hostname", format!("{hostname}\n")),
            (
                "resolv.conf",
                bundle::resolv_conf(
                    pod,
                    &self.cluster_dns,
                    &self.cluster_domain,
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                ),
            ),
        ];
        for (name, content) in &files {
            std::fs::write(dir.join(name), content).map_err(io(&dir.join(name)))?;
        }
        let sandbox_paths = bundle::Sandbox {
            netns: sb.netns(),
            ipcns: Some(sb.ipcns()),
            utsns: Some(sb.utsns()),
            hosts: dir.join("etc-hosts"),
            hostname: dir.join("etc-hostname"),
            resolv_conf: dir.join("resolv.conf"),
            cgroup_parent: format!("skiff/pod{uid}"),
        };
        let qos = pod
            .status
            .as_ref()
            .and_then(|s| s.qos_class.clone())
            .unwrap_or_else(|| "BestEffort".into());
        for (c, (image, image_cfg)) in spec.containers.iter().zip(pulled) {
            self.start_container(pod, c, &image, &image_cfg, &sandbox_paths, &qos)?;
        }
        std::fs::write(dir.join("pod-ip"), &pod_ip).map_err(io(&dir.join("pod-ip")))?;
        Ok(())
    }

    fn start_container(
        &self,
        pod: &Pod,
        c: &Container,
        image: &skiff_images::Image,
        image_cfg: &ImageConfig,
        sb: &bundle::Sandbox,
        qos: &str,
    ) -> Result<(), PodError> {
        let uid = pod.uid().unwrap_or_default();
        let id = container_id(&uid, &c.name);
        let bundle_dir = self.pod_dir(&uid).join("containers").join(&c.name);
        let rootfs = bundle_dir.join("rootfs");
        for d in [
            bundle_dir.join("upper"),
            bundle_dir.join("work"),
            rootfs.clone(),
        ] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.images.lowerdir(image),
            bundle_dir.join("upper").display(),
            bundle_dir.join("work").display()
        );
        if !is_mountpoint(&rootfs) {
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(options.as_str()),
            )
            .map_err(|e| PodError::Runtime {
                what: format!("mount overlay at {}", rootfs.display()),
                message: e.to_string(),
            })?;
        }
        let env: Vec<(String, String)> = c
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| e.value.map(|v| (e.name, v)))
            .collect();
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
        let memory_request = 0;
        let config = bundle::config(&BundleInput {
            pod,
            container: c,
            image: image_cfg,
            image_passwd: &passwd,
            env: &env,
            rootfs: rootfs.clone(),
            sandbox: sb,
            volumes: &[],
            oom_score_adj: bundle::oom_score_adj(qos, memory_request, self.node_memory),
        })?;
        let config_path = bundle_dir.join("config.json");
        std::fs::write(&config_path, config.to_string()).map_err(io(&config_path))?;
        let log_dir = self
            .logs_dir
            .join(format!(
                "{}_{}_{}",
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                uid
            ))
            .join(&c.name);
        std::fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
        let log = log_dir.join("0.log");
        if self.container_state(&id).is_some() {
            let _ = self.shim(&["delete", "--force", &id]);
        }
        self.shim(&[
            "create",
            "--bundle",
            &bundle_dir.display().to_string(),
            "--log-path",
            &log.display().to_string(),
            &id,
        ])?;
        self.shim(&["start", &id])?;
        Ok(())
    }

    /// Stops and removes everything the pod had on this node. Safe to repeat.
    fn teardown(&self, uid: &str, containers: &[String], namespace: &str, name: &str) {
        for c in containers {
            let id = container_id(uid, c);
            let _ = self.shim(&["kill", "--all", &id, "SIGKILL"]);
            let _ = self.shim(&["delete", "--force", &id]);
            let rootfs = self.pod_dir(uid).join("containers").join(c).join("rootfs");
            if is_mountpoint(&rootfs) {
                if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
                    tracing::warn!(path = %rootfs.display(), error = %e, "unmounting a container rootfs failed");
                }
            }
        }
        if let (Some(cni_rt), Ok(Some(sb))) = (&self.cni, sandbox::find(&self.root, uid)) {
            if let Ok(net) = cni_rt.load() {
                let attachment = cni::Attachment {
                    container_id: uid.into(),
                    netns: sb.netns(),
                    ifname: "eth0".into(),
                    pod_namespace: namespace.into(),
                    pod_name: name.into(),
                    pod_uid: uid.into(),
                    capabilities: BTreeMap::new(),
                };
                if let Err(e) = cni_rt.del(&net, &attachment) {
                    tracing::warn!(uid, error = %e, "CNI DEL failed");
                }
            }
        }
        if let Err(e) = sandbox::stop(&self.root, uid) {
            tracing::warn!(uid, error = %e, "stopping the sandbox failed");
        }
        let _ = std::fs::remove_dir_all(self.pod_dir(uid));
    }

    /// The pod's status as kubelet reports it, from what the shim says.
    fn observe(&self, pod: &Pod, start_error: Option<&str>) -> Value {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let pod_ip = std::fs::read_to_string(self.pod_dir(&uid).join("pod-ip")).unwrap_or_default();
        let mut statuses = Vec::new();
        let (mut running, mut failed, mut succeeded) = (0, 0, 0);
        for c in &spec.containers {
            let id = container_id(&uid, &c.name);
            let state = self.container_state(&id);
            let status = state
                .as_ref()
                .and_then(|s| s["status"].as_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            let (state_json, ready) = match status.as_str() {
                "running" => {
                    running += 1;
                    (
                        json!({"running": {"startedAt": state.as_ref().and_then(|s| s["started"].as_str()).unwrap_or(&now())}}),
                        true,
                    )
                }
                "stopped" => {
                    let code = state
                        .as_ref()
                        .and_then(|s| s["exitCode"].as_i64())
                        .unwrap_or(0);
                    if code == 0 {
                        succeeded += 1
                    } else {
                        failed += 1
                    }
                    let reason =
                        if state.as_ref().and_then(|s| s["oomKilled"].as_bool()) == Some(true) {
                            "OOMKilled"
                        } else if code == 0 {
                            "Completed"
                        } else {
                            "Error"
                        };
                    (
                        json!({"terminated": {"exitCode": code, "reason": reason, "finishedAt": state.as_ref().and_then(|s| s["finished"].as_str()).unwrap_or(&now())}}),
                        false,
                    )
                }
                _ => (
                    json!({"waiting": {"reason": if start_error.is_some() { "CreateContainerError" } else { "ContainerCreating" }, "message": start_error.unwrap_or("")}}),
                    false,
                ),
            };
            statuses.push(json!({
                "name": c.name, "image": c.image, "imageID": "", "containerID": format!("skiff://{id}"),
                "ready": ready, "started": ready, "restartCount": 0, "state": state_json,
            }));
        }
        let total = spec.containers.len();
        let phase = if running == total && total > 0 {
            "Running"
        } else if succeeded == total && total > 0 {
            "Succeeded"
        } else if failed > 0 && running == 0 {
            "Failed"
        } else if running > 0 {
            "Running"
        } else {
            "Pending"
        };
        let ready = if running == total && total > 0 {
            "True"
        } else {
            "False"
        };
        let mut status = json!({
            "phase": phase,
            "hostIP": self.node_ip, "hostIPs": [{"ip": self.node_ip}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
            "containerStatuses": statuses,
        });
        if !pod_ip.is_empty() {
            status["podIP"] = json!(pod_ip);
            status["podIPs"] = json!([{"ip": pod_ip}]);
        }
        status
    }
}

fn is_mountpoint(path: &Path) -> bool {
    let target = match path.canonicalize() {
        Ok(p) => p,
        Err(_) => return false,
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|m| Path::new(m) == target)
        })
}

/// Drops timestamps so that an unchanged status is not written again.
fn comparable(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(Value::Array(cs)) = s.get_mut("conditions") {
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            c.remove("lastTransitionTime");
            c.remove("lastProbeTime");
        }
    }
    s
}

/// Reconciles the pods bound to this node once a second.
pub async fn run(mgr: Arc<PodManager>) {
    let pods: Api<Pod> = Api::all(mgr.client.clone());
    let mut start_errors: HashMap<String, (String, tokio::time::Instant)> = HashMap::new();
    let mut last_status: HashMap<String, Value> = HashMap::new();
    loop {
        match pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", mgr.node)))
            .await
        {
            Ok(list) => {
                let mut present = HashSet::new();
                for pod in list.items {
                    let uid = pod.uid().unwrap_or_default();
                    present.insert(uid.clone());
                    let ns = pod.namespace().unwrap_or_default();
                    let names: Vec<String> = pod
                        .spec
                        .as_ref()
                        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
                        .unwrap_or_default();
                    if pod.metadata.deletion_timestamp.is_some() {
                        let m = mgr.clone();
                        let (u, n, p) = (uid.clone(), ns.clone(), pod.name_any());
                        let _ = tokio::task::spawn_blocking(move || m.teardown(&u, &names, &n, &p))
                            .await;
                        let api: Api<Pod> = Api::namespaced(mgr.client.clone(), &ns);
                        let _ = api
                            .delete(
                                &pod.name_any(),
                                &DeleteParams {
                                    grace_period_seconds: Some(0),
                                    ..Default::default()
                                },
                            )
                            .await;
                        last_status.remove(&uid);
                        continue;
                    }
                    let started = mgr.pod_dir(&uid).join("pod-ip").exists();
                    let retry_due = start_errors
                        .get(&uid)
                        .is_none_or(|(_, at)| at.elapsed() > Duration::from_secs(10));
                    if !started && retry_due {
                        match mgr.start(&pod).await {
                            Ok(()) => {
                                start_errors.remove(&uid);
                            }
                            Err(e) => {
                                tracing::warn!(pod = pod.name_any(), error = %e, "starting the pod failed");
                                start_errors.insert(
                                    uid.clone(),
                                    (e.to_string(), tokio::time::Instant::now()),
                                );
                            }
                        }
                    }
                    let m = mgr.clone();
                    let p = pod.clone();
                    let err = start_errors.get(&uid).map(|(e, _)| e.clone());
                    let Ok(status) =
                        tokio::task::spawn_blocking(move || m.observe(&p, err.as_deref())).await
                    else {
                        continue;
                    };
                    if last_status.get(&uid).map(comparable) != Some(comparable(&status)) {
                        let api: Api<Pod> = Api::namespaced(mgr.client.clone(), &ns);
                        match api
                            .patch_status(
                                &pod.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(&json!({"status": status})),
                            )
                            .await
                        {
                            Ok(_) => {
                                last_status.insert(uid.clone(), status);
                            }
                            Err(e) => {
                                tracing::warn!(pod = pod.name_any(), error = %e, "posting pod status failed")
                            }
                        }
                    }
                }
                // Pods deleted while we were not looking: their leftovers go.
                for uid in sandbox::recorded(&mgr.root) {
                    if !present.contains(&uid) {
                        let dir = mgr.pod_dir(&uid).join("containers");
                        let names: Vec<String> = std::fs::read_dir(&dir)
                            .map(|d| {
                                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                                    .collect()
                            })
                            .unwrap_or_default();
                        let m = mgr.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || m.teardown(&uid, &names, "", ""))
                                .await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing this node's pods failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
