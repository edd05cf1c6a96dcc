//! Running the pods bound to this node, like kubelet: one worker per pod
//! ([`worker`]) walks it through its lifecycle — sandbox and network, init containers in
//! order, containers with restarts and CrashLoopBackOff, probes and hooks, graceful
//! termination — and reports the status kubelet would ([`status`]). This module holds
//! what the workers share and the dispatcher that feeds them from a watch on the API.

pub mod backoff;
pub mod dial;
pub mod dispatch;
pub mod events;
pub mod mirror;
pub mod probe;
pub mod runtime;
pub mod static_pods;
pub mod status;
pub mod worker;

pub use dispatch::run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::ResourceExt;
use skiff_images::{ImageStore, RegistryClient};

use crate::bundle::{self, BundleInput, ImageConfig};
use crate::{cni, sandbox};
use runtime::{container_id, Runtime};

pub struct PodManager {
    /// The API server; `None` when the agent runs static pods alone.
    pub client: Option<kube::Client>,
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
    /// Pod cgroups (QoS parents, pod-level limits); `None` leaves containers under the
    /// shim's root without a pod cgroup of their own.
    pub cgroups: Option<Arc<dyn crate::cgroups::CgroupManager>>,
    pub pod_max_pids: i64,
    /// Static pod manifests (`--pod-manifest-path`) and how often they are read again.
    pub manifest_dir: Option<PathBuf>,
    pub file_check: Duration,
}

/// Where a worker's pod comes from, which decides where its status and deletion go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Bound to this node through the API: status to the pod, deletion through the API.
    Api,
    /// A manifest file; `mirror` is the uid of its mirror pod in the API when one exists,
    /// where the status is reported.
    File { mirror: Option<String> },
}

/// What a worker is told: the pod as it should be now.
#[derive(Clone, Debug)]
pub struct Desired {
    pub pod: Pod,
    pub source: Source,
}

/// ConfigMaps, Secrets and Services for pods when no API server is there: static pods may
/// not refer to API objects (kubelet refuses them too), and there are no services.
pub struct NoApiServer;

impl crate::env::ObjectSource for NoApiServer {
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> crate::env::SourceFuture<'a, Option<ConfigMap>> {
        Box::pin(async move { Err(no_api("configmap", namespace, name)) })
    }

    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> crate::env::SourceFuture<'a, Option<Secret>> {
        Box::pin(async move { Err(no_api("secret", namespace, name)) })
    }

    fn services<'a>(&'a self, _namespace: &'a str) -> crate::env::SourceFuture<'a, Vec<Service>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn no_api(kind: &'static str, namespace: &str, name: &str) -> crate::env::SourceError {
    crate::env::SourceError {
        kind,
        namespace: namespace.into(),
        name: name.into(),
        message: "this agent runs without an API server (no --kubeconfig)".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0}")]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("{0}")]
    Network(#[from] cni::CniError),
    #[error("{0}")]
    Bundle(#[from] bundle::BundleError),
    #[error("{0}")]
    Runtime(#[from] runtime::RuntimeError),
    #[error("{0}")]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("{what}: {message}")]
    Mount { what: String, message: String },
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

/// The pod's sandbox as its containers need it, and its IP.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    pub sandbox: bundle::Sandbox,
    pub pod_ip: String,
}

impl PodManager {
    /// Where ConfigMaps, Secrets and Services are read from.
    pub fn objects(&self) -> &dyn crate::env::ObjectSource {
        match &self.client {
            Some(c) => c,
            None => &NoApiServer,
        }
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    pub fn runtime(&self) -> Runtime {
        Runtime {
            shim: self.shim.clone(),
            root: self.root.join("shim"),
            cgroup_root: self.shim_cgroup_root.clone(),
        }
    }

    /// `<logs>/<ns>_<name>_<uid>`, kubelet's layout.
    pub fn pod_logs_dir(&self, pod: &Pod) -> PathBuf {
        self.logs_dir.join(format!(
            "{}_{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.uid().unwrap_or_default()
        ))
    }

    /// The sandbox (namespaces held by a pause process), its network through CNI, and the
    /// files every container mounts. Reuses what a previous run of the agent set up.
    pub fn setup(&self, pod: &Pod) -> Result<PodNetwork, PodError> {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let dir = self.pod_dir(&uid);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let hostname = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
        let existing = sandbox::find(&self.root, &uid)?;
        let ip_file = dir.join("pod-ip");
        let (sb, pod_ip) = match (existing, std::fs::read_to_string(&ip_file)) {
            (Some(sb), Ok(ip)) => (sb, ip),
            (existing, _) => {
                let sb = match existing {
                    Some(sb) => sb,
                    None => sandbox::start(&self.root, &self.agent_binary, &uid, &hostname)?,
                };
                let mut pod_ip = String::new();
                if let Some(cni_rt) = &self.cni {
                    let net = cni_rt.load()?;
                    let result = cni_rt.add(&net, &self.attachment(pod, &sb))?;
                    pod_ip = result["ips"][0]["address"]
                        .as_str()
                        .unwrap_or("")
                        .split('/')
                        .next()
                        .unwrap_or("")
                        .to_string();
                }
                std::fs::write(&ip_file, &pod_ip).map_err(io(&ip_file))?;
                (sb, pod_ip)
            }
        };
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
        let cgroup_parent = match &self.cgroups {
            Some(m) => {
                let pc = crate::cgroups::PodCgroup::for_pod(pod)?;
                let resources = crate::cgroups::pod_resources(pod, self.pod_max_pids)?;
                let not_enforced = m.ensure_pod(&pc, &resources)?;
                if !not_enforced.is_empty() {
                    tracing::info!(uid, ?not_enforced, "pod cgroup limits not enforced");
                }
                m.cgroup_parent(&pc)
            }
            None => format!("skiff/pod{uid}"),
        };
        Ok(PodNetwork {
            sandbox: bundle::Sandbox {
                netns: sb.netns(),
                ipcns: Some(sb.ipcns()),
                utsns: Some(sb.utsns()),
                hosts: dir.join("etc-hosts"),
                hostname: dir.join("etc-hostname"),
                resolv_conf: dir.join("resolv.conf"),
                cgroup_parent,
            },
            pod_ip,
        })
    }

    fn attachment(&self, pod: &Pod, sb: &sandbox::Sandbox) -> cni::Attachment {
        let uid = pod.uid().unwrap_or_default();
        cni::Attachment {
            container_id: uid.clone(),
            netns: sb.netns(),
            ifname: "eth0".into(),
            pod_namespace: pod.namespace().unwrap_or_default(),
            pod_name: pod.name_any(),
            pod_uid: uid,
            capabilities: BTreeMap::new(),
        }
    }

    /// Writes the container's bundle on an overlay of its image and starts it, its
    /// output going to `<restart>.log`.
    #[allow(clippy::too_many_arguments)]
    pub fn start_container(
        &self,
        pod: &Pod,
        c: &Container,
        image: &skiff_images::Image,
        image_cfg: &ImageConfig,
        net: &PodNetwork,
        env: &[(String, String)],
        volumes: &[bundle::VolumeMount],
        restart_count: u32,
    ) -> Result<(), PodError> {
        let uid = pod.uid().unwrap_or_default();
        let id = container_id(&uid, &c.name);
        let rt = self.runtime();
        // The previous run's process state goes before its rootfs is reused.
        if rt.exists(&id) {
            rt.remove(&id)?;
        }
        let bundle_dir = self.pod_dir(&uid).join("containers").join(&c.name);
        let rootfs = bundle_dir.join("rootfs");
        if is_mountpoint(&rootfs) {
            nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                PodError::Mount {
                    what: format!("unmounting {}", rootfs.display()),
                    message: e.to_string(),
                }
            })?;
        }
        // A restarted container starts from its image again, as with any CRI runtime.
        let _ = std::fs::remove_dir_all(&bundle_dir);
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
        nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| PodError::Mount {
            what: format!("mount overlay at {}", rootfs.display()),
            message: e.to_string(),
        })?;
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
        let qos = pod
            .status
            .as_ref()
            .and_then(|s| s.qos_class.clone())
            .unwrap_or_else(|| "BestEffort".into());
        let memory_request = crate::cgroups::resources::container_cpu_mem(c)
            .ok()
            .and_then(|(requests, _)| requests.memory)
            .unwrap_or(0)
            .max(0) as u64;
        let config = bundle::config(&BundleInput {
            pod,
            container: c,
            image: image_cfg,
            image_passwd: &passwd,
            env,
            rootfs: rootfs.clone(),
            sandbox: &net.sandbox,
            volumes,
            oom_score_adj: bundle::oom_score_adj(&qos, memory_request, self.node_memory),
        })?;
        let config_path = bundle_dir.join("config.json");
        std::fs::write(&config_path, config.to_string()).map_err(io(&config_path))?;
        let log_dir = self.pod_logs_dir(pod).join(&c.name);
        std::fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
        let log = log_dir.join(format!("{restart_count}.log"));
        rt.create_and_start(
            &id,
            &bundle_dir,
            &log,
            (c.stdin.unwrap_or(false), c.stdin_once.unwrap_or(false)),
        )?;
        Ok(())
    }

    /// Stops and removes everything the pod had on this node. Safe to repeat.
    pub fn teardown(&self, uid: &str, namespace: &str, name: &str) {
        if self.release(uid, namespace, name) {
            let _ = std::fs::remove_dir_all(self.pod_dir(uid));
        }
    }

    /// Stops the pod's containers and gives back its sandbox, network (the IP) and volume
    /// mounts, keeping its directory (state, restart counts); false when something stayed
    /// mounted, so the directory must not be removed. Safe to repeat.
    pub fn release(&self, uid: &str, namespace: &str, name: &str) -> bool {
        let rt = self.runtime();
        let containers_dir = self.pod_dir(uid).join("containers");
        let names: Vec<String> = std::fs::read_dir(&containers_dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        for c in &names {
            let id = container_id(uid, c);
            rt.signal(&id, nix::sys::signal::Signal::SIGKILL, true);
            if let Err(e) = rt.remove(&id) {
                if rt.exists(&id) {
                    tracing::warn!(id, error = %e, "removing a container failed");
                }
            }
            let rootfs = containers_dir.join(c).join("rootfs");
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
        if let Some(m) = &self.cgroups {
            if let Err(e) = m.remove_pod_by_uid(uid) {
                tracing::warn!(uid, error = %e, "removing the pod cgroup failed");
            }
        }
        // Volume mounts go first; a pod dir with something still mounted is left alone so
        // that nothing is deleted through a mount.
        if let Err(e) = crate::volumes::teardown(&self.pod_dir(uid)) {
            tracing::warn!(uid, error = %e, "tearing down the pod's volumes failed; keeping its directory");
            return false;
        }
        true
    }
}

pub fn is_mountpoint(path: &Path) -> bool {
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
