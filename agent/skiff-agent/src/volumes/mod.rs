//! Pod volumes on the node, laid out as kubelet lays them out:
//! `<pod_dir>/volumes/<plugin>/<volume name>` with plugin `kubernetes.io~empty-dir`,
//! `kubernetes.io~configmap`, `kubernetes.io~secret`, `kubernetes.io~downward-api` or
//! `kubernetes.io~projected`. hostPath volumes are the host path itself.
//!
//! API for the pod worker:
//! - `prepare(&client, &pod, &pod_dir, &facts).await` before creating any container: sets up
//!   every volume of the pod (creating dirs, tmpfs mounts, type checks, files) and returns one
//!   `PreparedVolume` per volume. Safe to call again. Every volume is attempted; the first
//!   failure is returned. On `Err(e)`: a Warning event with reason `e.reason()` (`FailedMount`)
//!   and message `e.message()` (`MountVolume.SetUp failed for volume "v" : configmap "x" not
//!   found`); the pod stays Pending with its containers waiting in `ContainerCreating`; retry
//!   on the next sync.
//! - `refresh(&client, &pod, &pod_dir, &facts).await` for a running pod, at least every 60 s:
//!   rewrites configMap, secret, downwardAPI and projected content that changed (atomically,
//!   see `atomic`) and touches nothing else. Errors as for `prepare` (FailedMount events).
//! - `mounts_for(&container, &prepared, &resolved_env.vars)` each time a container
//!   is (re)created: its volumeMounts as `bundle::VolumeMount`s. A `subPath`/`subPathExpr` is
//!   opened without leaving the volume (openat2 RESOLVE_BENEATH) and that very inode is
//!   bind-mounted on `<pod_dir>/volume-subpaths/<volume>/<container>/<index>`, which is what
//!   the runtime binds, so a symlink swapped in later changes nothing (kubelet's defence). On
//!   `Err(e)`: waiting reason `e.reason()` (`CreateContainerConfigError`), message
//!   `e.message()`, and a Warning event `Failed` with `Error: {message}`; `e.detail()` is for
//!   the log only (kubelet hides host paths from users).
//! - `teardown(&pod_dir)` after every container of the pod is gone: unmounts what is mounted
//!   under `<pod_dir>/volume-subpaths` and `<pod_dir>/volumes` and removes both, never following a symlink and never deleting
//!   through a mount point (hostPath sources are never touched). Safe to repeat.
//!
//! configMap, secret, downwardAPI and projected volumes are always mounted read-only, as
//! kubelet does. Secrets and projected volumes live on tmpfs, as does emptyDir with
//! `medium: Memory` (size: the least of `sizeLimit`, the pod's memory limit and node
//! allocatable memory). Not supported (clear FailedMount error): projected
//! serviceAccountToken (no TokenRequest API here yet), clusterTrustBundle, and volume types
//! other than those above (persistentVolumeClaim, nfs, csi…). With `fsGroup`, API content is
//! group-owned and group-readable and emptyDir roots are group-owned and setgid.

pub mod atomic;
pub mod mount;
pub mod subpath;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use crate::bundle::{self, VolumeMount};
use crate::env::{self, ContainerConfigError, NodeFacts, ObjectSource, SourceError};
use crate::quantity::{Quantity, QuantityError};
use atomic::FileProjection;
use mount::{Mounter, SysMounter};

pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
pub const CONFIG_MAP: &str = "kubernetes.io~configmap";
pub const SECRET: &str = "kubernetes.io~secret";
pub const DOWNWARD_API: &str = "kubernetes.io~downward-api";
pub const PROJECTED: &str = "kubernetes.io~projected";
pub const HOST_PATH: &str = "kubernetes.io~host-path";
/// Where subPaths are bound before the runtime sees them (kubelet's name).
pub const SUBPATHS_DIR: &str = "volume-subpaths";

/// kubelet's default file mode for API-data volumes (0644).
const DEFAULT_MODE: i32 = 0o644;

/// A volume ready on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedVolume {
    pub name: String,
    /// One of the plugin constants above.
    pub plugin: &'static str,
    /// What a container's mount binds: the volume dir, or the host path.
    pub path: PathBuf,
    /// Content the API owns is mounted read-only whatever the volumeMount says.
    pub read_only: bool,
    /// The pod's directory, under which subPaths are bound.
    pub pod_dir: PathBuf,
}

/// Why a volume could not be set up; the text follows kubelet's.
#[derive(Debug, thiserror::Error)]
pub enum SetUpError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("configmap references non-existent config key: {0}")]
    ConfigMapKeyMissing(String),
    #[error("references non-existent secret key: {0}")]
    SecretKeyMissing(String),
    #[error("hostPath type check failed: {path} is not a {what}")]
    HostPathType { path: String, what: &'static str },
    #[error("{0} is an invalid volume type")]
    InvalidHostPathType(String),
    #[error("hostPath {0:?} must be an absolute path without '..'")]
    HostPathNotAbsolute(String),
    #[error("invalid volume name {0:?}")]
    BadName(String),
    #[error("emptyDir sizeLimit: {0}")]
    SizeLimit(QuantityError),
    #[error("{0}")]
    Downward(#[from] ContainerConfigError),
    #[error("{0}")]
    Write(#[from] atomic::WriteError),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is not supported by this node")]
    Unsupported { what: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SetUpError + 'a {
    move |source| SetUpError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A volume failure, at pod level (`FailedMount`) or for one container
/// (`CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {cause}")]
    SetUp { volume: String, cause: SetUpError },
    #[error("cannot find volume \"{volume}\" to mount into container \"{container}\"")]
    NoSuchVolume { volume: String, container: String },
    #[error("error SubPath `{sub_path}` must not be an absolute path")]
    SubPathAbsolute { sub_path: String },
    #[error("unable to provision SubPath `{sub_path}`: must not contain '..'")]
    SubPathBacksteps { sub_path: String },
    #[error("missing value for {names}")]
    SubPathExprMissing { names: String },
    #[error("failed to create subPath directory for volumeMount \"{volume}\" of container \"{container}\"")]
    SubPathCreate {
        volume: String,
        container: String,
        detail: String,
    },
    #[error("failed to prepare subPath for volumeMount \"{volume}\" of container \"{container}\"")]
    SubPathPrepare {
        volume: String,
        container: String,
        detail: String,
    },
}

impl VolumeError {
    /// The event reason (pod level) or the container's waiting reason (container level).
    pub fn reason(&self) -> &'static str {
        match self {
            VolumeError::SetUp { .. } => "FailedMount",
            _ => "CreateContainerConfigError",
        }
    }

    /// What kubelet shows: the event message, or the container's waiting message.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Host-side detail for the agent's log; empty when the message says it all.
    pub fn detail(&self) -> &str {
        match self {
            VolumeError::SubPathCreate { detail, .. }
            | VolumeError::SubPathPrepare { detail, .. } => detail,
            _ => "",
        }
    }

    /// True for failures of the pod's volumes (the pod waits in ContainerCreating).
    pub fn is_pod_level(&self) -> bool {
        matches!(self, VolumeError::SetUp { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("still mounted after unmounting, not removing: {0:?}")]
    StillMounted(Vec<PathBuf>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// First setup: everything.
    SetUp,
    /// A running pod: only the content that comes from the API.
    Refresh,
}

/// Sets up every volume of `pod` under `pod_dir`. See the module documentation.
pub async fn prepare(
    source: &dyn ObjectSource,
    pod: &Pod,
    pod_dir: &Path,
    node: &NodeFacts,
) -> Result<Vec<PreparedVolume>, VolumeError> {
    prepare_with(&SysMounter, source, pod, pod_dir, node).await
}

/// Updates the API-sourced content of a running pod's volumes. See the module documentation.
pub async fn refresh(
    source: &dyn ObjectSource,
    pod: &Pod,
    pod_dir: &Path,
    node: &NodeFacts,
) -> Result<Vec<PreparedVolume>, VolumeError> {
    refresh_with(&SysMounter, source, pod, pod_dir, node).await
}

/// `prepare` with a chosen `Mounter` (tests use a fake).
pub async fn prepare_with(
    mounter: &dyn Mounter,
    source: &dyn ObjectSource,
    pod: &Pod,
    pod_dir: &Path,
    node: &NodeFacts,
) -> Result<Vec<PreparedVolume>, VolumeError> {
    run(mounter, source, pod, pod_dir, node, Pass::SetUp).await
}

/// `refresh` with a chosen `Mounter`.
pub async fn refresh_with(
    mounter: &dyn Mounter,
    source: &dyn ObjectSource,
    pod: &Pod,
    pod_dir: &Path,
    node: &NodeFacts,
) -> Result<Vec<PreparedVolume>, VolumeError> {
    run(mounter, source, pod, pod_dir, node, Pass::Refresh).await
}

async fn run(
    mounter: &dyn Mounter,
    source: &dyn ObjectSource,
    pod: &Pod,
    pod_dir: &Path,
    node: &NodeFacts,
    pass: Pass,
) -> Result<Vec<PreparedVolume>, VolumeError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut prepared = Vec::new();
    let mut first_error = None;
    for v in &volumes {
        match set_up(mounter, source, pod, pod_dir, node, v, pass).await {
            Ok(p) => prepared.push(p),
            Err(cause) => {
                tracing::warn!(volume = %v.name, error = %cause, "volume setup failed");
                if first_error.is_none() {
                    first_error = Some(VolumeError::SetUp {
                        volume: v.name.clone(),
                        cause,
                    });
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(prepared),
    }
}

fn volume_dir(pod_dir: &Path, plugin: &str, name: &str) -> Result<PathBuf, SetUpError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(SetUpError::BadName(name.to_string()));
    }
    Ok(pod_dir.join("volumes").join(plugin).join(name))
}

fn make_dir(dir: &Path) -> Result<(), SetUpError> {
    std::fs::create_dir_all(dir).map_err(io("mkdir", dir))
}

/// A tmpfs on `dir`, unless one is there already (a second call, or an agent restart).
fn ensure_tmpfs(mounter: &dyn Mounter, dir: &Path, size: Option<u64>) -> Result<(), SetUpError> {
    make_dir(dir)?;
    let real = dir.canonicalize().map_err(io("resolve", dir))?;
    if !mounter
        .is_mount_point(&real)
        .map_err(io("read mounts", dir))?
    {
        mounter
            .mount_tmpfs(&real, size)
            .map_err(io("mount tmpfs on", dir))?;
    }
    Ok(())
}

fn mode_bits(mode: Option<i32>, default: Option<i32>) -> u32 {
    (mode.or(default).unwrap_or(DEFAULT_MODE) as u32) & 0o777
}

fn unsupported_kind(v: &Volume) -> String {
    let kind = serde_json::to_value(v)
        .ok()
        .and_then(|j| {
            j.as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "a volume without a source".into());
    format!("volume type {kind}")
}

async fn set_up(
    mounter: &dyn Mounter,
    source: &dyn ObjectSource,
    pod: &Pod,
    pod_dir: &Path,
    node: &NodeFacts,
    v: &Volume,
    pass: Pass,
) -> Result<PreparedVolume, SetUpError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let group = fs_group(pod);
    let done = |plugin: &'static str, path: PathBuf, read_only: bool| PreparedVolume {
        name: v.name.clone(),
        plugin,
        path,
        read_only,
        pod_dir: pod_dir.to_path_buf(),
    };
    if let Some(e) = &v.empty_dir {
        let dir = volume_dir(pod_dir, EMPTY_DIR, &v.name)?;
        if pass == Pass::Refresh {
            return Ok(done(EMPTY_DIR, dir, false));
        }
        match e.medium.as_deref().unwrap_or("") {
            "" => {
                make_dir(&dir)?;
                // World-writable like kubelet's, so that a non-root container can write.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(io("chmod", &dir))?;
            }
            "Memory" => {
                let limit = match &e.size_limit {
                    Some(q) => Some(Quantity::parse(&q.0).map_err(SetUpError::SizeLimit)?),
                    None => None,
                };
                ensure_tmpfs(mounter, &dir, memory_volume_size(pod, node, limit))?;
            }
            other => {
                return Err(SetUpError::Unsupported {
                    what: format!("emptyDir medium {other:?}"),
                })
            }
        }
        if let Some(gid) = group {
            // Only the root: what the pod wrote below is its own business, and chmod on a
            // path the pod controls could be redirected by a symlink. New files inherit
            // the group through the setgid bit.
            std::os::unix::fs::lchown(&dir, None, Some(gid)).map_err(io("chown", &dir))?;
            let mode = std::fs::metadata(&dir)
                .map_err(io("stat", &dir))?
                .permissions()
                .mode();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o2000))
                .map_err(io("chmod", &dir))?;
        }
        return Ok(done(EMPTY_DIR, dir, false));
    }
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        if pass == Pass::SetUp {
            check_host_path(&h.path, h.type_.as_deref().unwrap_or(""))?;
        }
        return Ok(done(HOST_PATH, path, false));
    }
    if let Some(c) = &v.config_map {
        let dir = volume_dir(pod_dir, CONFIG_MAP, &v.name)?;
        make_dir(&dir)?;
        let optional = c.optional == Some(true);
        let cm = match source.config_map(ns, &c.name).await? {
            Some(cm) => cm,
            None if optional => ConfigMap::default(),
            None => return Err(SetUpError::ConfigMapNotFound(c.name.clone())),
        };
        let payload = config_map_payload(&cm, c.items.as_deref(), c.default_mode, optional)?;
        write_api_volume(&dir, payload, group)?;
        return Ok(done(CONFIG_MAP, dir, true));
    }
    if let Some(s) = &v.secret {
        let dir = volume_dir(pod_dir, SECRET, &v.name)?;
        ensure_tmpfs(mounter, &dir, None)?;
        let optional = s.optional == Some(true);
        let name = s.secret_name.clone().unwrap_or_default();
        let secret = match source.secret(ns, &name).await? {
            Some(s) => s,
            None if optional => Secret::default(),
            None => return Err(SetUpError::SecretNotFound(name)),
        };
        let payload = secret_payload(&secret, s.items.as_deref(), s.default_mode, optional)?;
        write_api_volume(&dir, payload, group)?;
        return Ok(done(SECRET, dir, true));
    }
    if let Some(d) = &v.downward_api {
        let dir = volume_dir(pod_dir, DOWNWARD_API, &v.name)?;
        make_dir(&dir)?;
        let payload = downward_payload(
            pod,
            node,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode,
        )?;
        write_api_volume(&dir, payload, group)?;
        return Ok(done(DOWNWARD_API, dir, true));
    }
    if let Some(p) = &v.projected {
        let dir = volume_dir(pod_dir, PROJECTED, &v.name)?;
        let mut payload = BTreeMap::new();
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                let optional = c.optional == Some(true);
                let cm = match source.config_map(ns, &c.name).await? {
                    Some(cm) => cm,
                    None if optional => ConfigMap::default(),
                    None => return Err(SetUpError::ConfigMapNotFound(c.name.clone())),
                };
                payload.extend(config_map_payload(
                    &cm,
                    c.items.as_deref(),
                    p.default_mode,
                    optional,
                )?);
            } else if let Some(s) = &src.secret {
                let optional = s.optional == Some(true);
                let secret = match source.secret(ns, &s.name).await? {
                    Some(s) => s,
                    None if optional => Secret::default(),
                    None => return Err(SetUpError::SecretNotFound(s.name.clone())),
                };
                payload.extend(secret_payload(
                    &secret,
                    s.items.as_deref(),
                    p.default_mode,
                    optional,
                )?);
            } else if let Some(d) = &src.downward_api {
                payload.extend(downward_payload(
                    pod,
                    node,
                    d.items.as_deref().unwrap_or_default(),
                    p.default_mode,
                )?);
            } else if src.service_account_token.is_some() {
                return Err(SetUpError::Unsupported {
                    what: "projected serviceAccountToken (no TokenRequest API)".into(),
                });
            } else {
                return Err(SetUpError::Unsupported {
                    what: "this projected volume source".into(),
                });
            }
        }
        // Only now, so that an unsupported source leaves no tmpfs behind.
        ensure_tmpfs(mounter, &dir, None)?;
        write_api_volume(&dir, payload, group)?;
        return Ok(done(PROJECTED, dir, true));
    }
    Err(SetUpError::Unsupported {
        what: unsupported_kind(v),
    })
}

fn bytes(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<u64> {
    Quantity::parse(&q.0)
        .ok()?
        .value()
        .and_then(|v| u64::try_from(v).ok())
}

/// The pod's memory limit as its cgroup would get it: only when every container has one
/// (the sum, or the largest init container's when that is more).
fn pod_memory_limit(pod: &Pod) -> Option<u64> {
    let spec = pod.spec.as_ref()?;
    let limit = |c: &Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(bytes)
    };
    let mut sum = 0u64;
    for c in &spec.containers {
        sum = sum.checked_add(limit(c)?)?;
    }
    for c in spec.init_containers.iter().flatten() {
        sum = sum.max(limit(c)?);
    }
    Some(sum)
}

/// kubelet's size for a memory-backed emptyDir (SizeMemoryBackedVolumes): the smallest of
/// node allocatable memory, the pod's memory limit and the volume's `sizeLimit`, so that
/// the tmpfs can never hold more than the pod may use.
fn memory_volume_size(pod: &Pod, node: &NodeFacts, size_limit: Option<Quantity>) -> Option<u64> {
    let size_limit = size_limit
        .and_then(|q| q.value())
        .and_then(|v| u64::try_from(v).ok());
    [
        node.allocatable.get("memory").and_then(bytes),
        pod_memory_limit(pod),
        size_limit,
    ]
    .into_iter()
    .flatten()
    .filter(|b| *b > 0)
    .min()
}

/// The pod's `securityContext.fsGroup`: the group that owns its volumes' content.
fn fs_group(pod: &Pod) -> Option<u32> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.fs_group)
        .and_then(|g| u32::try_from(g).ok())
}

/// Writes API content and, with an fsGroup, hands it to that group readable as kubelet's
/// SetVolumeOwnership does (files g+r, directories g+rx and setgid). The group bits go into
/// the payload itself so that an unchanged payload still compares equal on refresh.
fn write_api_volume(
    dir: &Path,
    mut payload: BTreeMap<String, FileProjection>,
    group: Option<u32>,
) -> Result<(), SetUpError> {
    if group.is_some() {
        for f in payload.values_mut() {
            f.mode |= 0o440;
        }
    }
    atomic::write(dir, &payload)?;
    if let Some(gid) = group {
        give_to_group(dir, gid)?;
    }
    Ok(())
}

/// Content only the agent writes (the pod sees it read-only), so walking by path is safe.
fn give_to_group(path: &Path, gid: u32) -> Result<(), SetUpError> {
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io("chown", path))?;
    let meta = std::fs::symlink_metadata(path).map_err(io("stat", path))?;
    if meta.file_type().is_symlink() {
        // chmod would follow it; its target is handled on its own.
        return Ok(());
    }
    let mode = meta.permissions().mode();
    let wanted = if meta.is_dir() {
        mode | 0o2550
    } else {
        mode | 0o440
    };
    if wanted != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))
            .map_err(io("chmod", path))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io("read", path))? {
            let entry = entry.map_err(io("read", path))?;
            give_to_group(&entry.path(), gid)?;
        }
    }
    Ok(())
}

/// kubelet's hostPath `type` checks; the `…OrCreate` kinds create what is missing.
pub fn check_host_path(path: &str, kind: &str) -> Result<(), SetUpError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(SetUpError::HostPathNotAbsolute(path.to_string()));
    }
    let meta = std::fs::metadata(p).ok();
    let fail = |what| {
        Err(SetUpError::HostPathType {
            path: path.to_string(),
            what,
        })
    };
    match kind {
        // No check; a missing path becomes a directory, as containerd's CRI makes it.
        "" if meta.is_none() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
            .map_err(io("mkdir", p)),
        "" => Ok(()),
        "DirectoryOrCreate" if meta.is_none() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
            .map_err(io("mkdir", p)),
        "DirectoryOrCreate" | "Directory" => match meta {
            Some(m) if m.is_dir() => Ok(()),
            _ => fail("directory"),
        },
        "FileOrCreate" if meta.is_none() => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(p)
            .map(drop)
            .map_err(io("create", p)),
        "FileOrCreate" | "File" => match meta {
            Some(m) if m.is_file() => Ok(()),
            _ => fail("file"),
        },
        "Socket" => match meta {
            Some(m) if m.file_type().is_socket() => Ok(()),
            _ => fail("socket file"),
        },
        "CharDevice" => match meta {
            Some(m) if m.file_type().is_char_device() => Ok(()),
            _ => fail("character device"),
        },
        "BlockDevice" => match meta {
            Some(m) if m.file_type().is_block_device() => Ok(()),
            _ => fail("block device"),
        },
        other => Err(SetUpError::InvalidHostPathType(other.to_string())),
    }
}

/// The files of a configMap volume (or projection): every key, or the listed `items`.
pub fn config_map_payload(
    cm: &ConfigMap,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<BTreeMap<String, FileProjection>, SetUpError> {
    let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, v) in cm.data.iter().flatten() {
        all.insert(k.clone(), v.clone().into_bytes());
    }
    for (k, v) in cm.binary_data.iter().flatten() {
        all.entry(k.clone()).or_insert_with(|| v.0.clone());
    }
    select(
        all,
        items,
        default_mode,
        optional,
        SetUpError::ConfigMapKeyMissing,
    )
}

/// The files of a secret volume (or projection).
pub fn secret_payload(
    secret: &Secret,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> Result<BTreeMap<String, FileProjection>, SetUpError> {
    let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (k, v) in secret.string_data.iter().flatten() {
        all.insert(k.clone(), v.clone().into_bytes());
    }
    for (k, v) in secret.data.iter().flatten() {
        all.insert(k.clone(), v.0.clone());
    }
    select(
        all,
        items,
        default_mode,
        optional,
        SetUpError::SecretKeyMissing,
    )
}

fn select(
    mut all: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    missing: fn(String) -> SetUpError,
) -> Result<BTreeMap<String, FileProjection>, SetUpError> {
    let mut out = BTreeMap::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, data) in all {
                let mode = mode_bits(None, default_mode);
                out.insert(k, FileProjection { data, mode });
            }
        }
        Some(items) => {
            for item in items {
                let data = match all.remove(&item.key) {
                    Some(d) => d,
                    None if optional => continue,
                    None => return Err(missing(item.key.clone())),
                };
                let mode = mode_bits(item.mode, default_mode);
                out.insert(item.path.clone(), FileProjection { data, mode });
            }
        }
    }
    Ok(out)
}

/// The files of a downwardAPI volume (or projection).
pub fn downward_payload(
    pod: &Pod,
    node: &NodeFacts,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<BTreeMap<String, FileProjection>, SetUpError> {
    let mut out = BTreeMap::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            env::pod_field(pod, &f.field_path, node)?
        } else if let Some(r) = &item.resource_field_ref {
            env::container_resource(pod, None, r, node)?
        } else {
            String::new()
        };
        out.insert(
            item.path.clone(),
            FileProjection {
                data: value.into_bytes(),
                mode: mode_bits(item.mode, default_mode),
            },
        );
    }
    Ok(out)
}

/// `$(VAR)` in `subPathExpr`, where, unlike in commands, a reference without a value is an
/// error.
fn expand_sub_path_expr(expr: &str, env: &[(String, String)]) -> Result<String, VolumeError> {
    let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut missing = BTreeSet::new();
    let out = bundle::expand_with(expr, |name| match vars.get(name) {
        Some(v) if !v.is_empty() => Some(v.to_string()),
        _ => {
            missing.insert(name.to_string());
            Some(String::new())
        }
    });
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(VolumeError::SubPathExprMissing {
            names: missing.into_iter().collect::<Vec<_>>().join(", "),
        })
    }
}

/// The container's volumeMounts as bind mounts. `env` is the container's resolved
/// environment (for `subPathExpr`). See the module documentation.
pub fn mounts_for(
    container: &Container,
    prepared: &[PreparedVolume],
    env: &[(String, String)],
) -> Result<Vec<VolumeMount>, VolumeError> {
    mounts_for_with(&SysMounter, container, prepared, env)
}

/// `mounts_for` with a chosen `Mounter`.
pub fn mounts_for_with(
    mounter: &dyn Mounter,
    container: &Container,
    prepared: &[PreparedVolume],
    env: &[(String, String)],
) -> Result<Vec<VolumeMount>, VolumeError> {
    let mut out = Vec::new();
    for (index, m) in container.volume_mounts.iter().flatten().enumerate() {
        let vol = prepared.iter().find(|p| p.name == m.name).ok_or_else(|| {
            VolumeError::NoSuchVolume {
                volume: m.name.clone(),
                container: container.name.clone(),
            }
        })?;
        let sub_path = match m.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
            Some(expr) => expand_sub_path_expr(expr, env)?,
            None => m.sub_path.clone().unwrap_or_default(),
        };
        let source = if sub_path.is_empty() {
            vol.path.clone()
        } else {
            if sub_path.starts_with('/') {
                return Err(VolumeError::SubPathAbsolute { sub_path });
            }
            if sub_path.split('/').any(|c| c == "..") {
                return Err(VolumeError::SubPathBacksteps { sub_path });
            }
            let prepare_failed = |detail: String| VolumeError::SubPathPrepare {
                volume: m.name.clone(),
                container: container.name.clone(),
                detail,
            };
            let opened = subpath::open(&vol.path, &sub_path).map_err(|f| match f {
                subpath::Failure::Create(detail) => VolumeError::SubPathCreate {
                    volume: m.name.clone(),
                    container: container.name.clone(),
                    detail,
                },
                subpath::Failure::Prepare(detail) => prepare_failed(detail),
            })?;
            freeze_sub_path(
                mounter,
                &vol.pod_dir,
                &m.name,
                &container.name,
                index,
                &opened,
            )
            .map_err(prepare_failed)?
        };
        out.push(VolumeMount {
            source,
            destination: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false) || vol.read_only,
        });
    }
    Ok(out)
}

/// Binds the opened subPath on `<pod_dir>/volume-subpaths/<volume>/<container>/<index>`, as
/// kubelet does: the runtime then binds a path the pod cannot change, so a symlink swapped in
/// after the check cannot redirect the container's mount onto the host.
fn freeze_sub_path(
    mounter: &dyn Mounter,
    pod_dir: &Path,
    volume: &str,
    container: &str,
    index: usize,
    opened: &subpath::Opened,
) -> Result<PathBuf, String> {
    for name in [volume, container] {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!("invalid name {name:?}"));
        }
    }
    let parent = pod_dir.join(SUBPATHS_DIR).join(volume).join(container);
    std::fs::create_dir_all(&parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    let target = parent.join(index.to_string());
    let real_parent = parent
        .canonicalize()
        .map_err(|e| format!("resolve {}: {e}", parent.display()))?;
    let real_target = real_parent.join(index.to_string());
    // A restarted container binds afresh: the subPath may now name something else.
    let mounted = mounter
        .is_mount_point(&real_target)
        .map_err(|e| format!("read mounts: {e}"))?;
    if mounted {
        mounter
            .unmount(&real_target)
            .map_err(|e| format!("unmount {}: {e}", real_target.display()))?;
    }
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() == opened.is_dir && !m.file_type().is_symlink() => {}
        Ok(m) => {
            let removed = if m.is_dir() {
                std::fs::remove_dir(&target)
            } else {
                std::fs::remove_file(&target)
            };
            removed.map_err(|e| format!("remove {}: {e}", target.display()))?;
        }
        Err(_) => {}
    }
    if !target.exists() {
        let made = if opened.is_dir {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|e| format!("create {}: {e}", target.display()))?;
    }
    mounter.bind_fd(&opened.fd, &real_target).map_err(|e| {
        format!(
            "bind {} on {}: {e}",
            opened.path.display(),
            target.display()
        )
    })?;
    Ok(target)
}

/// Removes the pod's volumes. See the module documentation.
pub fn teardown(pod_dir: &Path) -> Result<(), TeardownError> {
    teardown_with(&SysMounter, pod_dir)
}

/// `teardown` with a chosen `Mounter`.
pub fn teardown_with(mounter: &dyn Mounter, pod_dir: &Path) -> Result<(), TeardownError> {
    // The subPath binds first: they hold volume content.
    remove_tree(mounter, &pod_dir.join(SUBPATHS_DIR))?;
    remove_tree(mounter, &pod_dir.join("volumes"))
}

/// Unmounts everything below `base`, then removes it, refusing while a mount remains.
fn remove_tree(mounter: &dyn Mounter, base: &Path) -> Result<(), TeardownError> {
    let meta = match std::fs::symlink_metadata(base) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(TeardownError::Io {
                op: "stat",
                path: base.to_path_buf(),
                source: e,
            })
        }
    };
    if !meta.is_dir() {
        // A symlink (or file) in place of the directory is removed itself, never followed.
        return std::fs::remove_file(base).map_err(|source| TeardownError::Io {
            op: "remove",
            path: base.to_path_buf(),
            source,
        });
    }
    let real = base.canonicalize().map_err(|source| TeardownError::Io {
        op: "resolve",
        path: base.to_path_buf(),
        source,
    })?;
    let read_mounts = |m: &dyn Mounter| {
        m.mounts_under(&real).map_err(|source| TeardownError::Io {
            op: "read mounts under",
            path: real.clone(),
            source,
        })
    };
    let mut mounts = read_mounts(mounter)?;
    // Deepest first; a path mounted several times is listed once per mount.
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in &mounts {
        if let Err(e) = mounter.unmount(m) {
            tracing::warn!(path = %m.display(), error = %e, "unmount failed");
        }
    }
    let left = read_mounts(mounter)?;
    if !left.is_empty() {
        return Err(TeardownError::StillMounted(left));
    }
    // remove_dir_all unlinks symlinks without following them, and no mount is left below.
    std::fs::remove_dir_all(base).map_err(|source| TeardownError::Io {
        op: "remove",
        path: base.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
