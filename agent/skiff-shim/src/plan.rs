//! Translation of an OCI runtime spec into a [`Plan`]: plain data that says
//! which namespaces to create or join, which mounts to make with which flags,
//! which capabilities to keep, and how to start the process. Everything here
//! is pure (apart from checking that host paths exist), so it is unit tested
//! without root.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Spec};

use crate::error::{Result, ShimError};

/// Namespaces to create (in `new`) or join (in `join`, in the order given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    pub new: CloneFlags,
    pub join: Vec<(CloneFlags, PathBuf)>,
}

impl NamespacePlan {
    pub fn creates(&self, f: CloneFlags) -> bool {
        self.new.contains(f)
    }
    pub fn joins(&self, f: CloneFlags) -> Option<&Path> {
        self.join
            .iter()
            .find(|(k, _)| *k == f)
            .map(|(_, p)| p.as_path())
    }
    /// True when the container gets its own mount namespace, either new or
    /// joined (a joined one is set up just like a new one).
    pub fn has_mount_ns(&self) -> bool {
        self.creates(CloneFlags::CLONE_NEWNS) || self.joins(CloneFlags::CLONE_NEWNS).is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// What kind of mount a spec entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// Bind mount of a host path (absolute, resolved against the bundle).
    Bind { source: PathBuf, recursive: bool },
    /// A filesystem mount (proc, tmpfs, sysfs, devpts, mqueue, cgroup2, overlay …).
    Fs { fstype: String, source: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Destination inside the container (absolute, as in the spec).
    pub destination: PathBuf,
    pub kind: MountKind,
    /// Flags for the mount call (MS_BIND / MS_REC are added for binds).
    pub flags: MsFlags,
    /// Filesystem-specific data ("mode=755,size=65536k").
    pub data: String,
    /// Propagation changes applied after the mount (MS_PRIVATE, MS_SLAVE|MS_REC …).
    pub propagation: Vec<MsFlags>,
}

impl MountPlan {
    /// A bind mount whose flags include something besides MS_BIND/MS_REC
    /// needs a second, remount call to apply them (the kernel ignores them on
    /// the first one).
    pub fn bind_needs_remount(&self) -> bool {
        matches!(self.kind, MountKind::Bind { .. })
            && !(self.flags - (MsFlags::MS_BIND | MsFlags::MS_REC)).is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Capability sets as asked by `process.capabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapsPlan {
    pub bounding: caps::CapsHashSet,
    pub effective: caps::CapsHashSet,
    pub permitted: caps::CapsHashSet,
    pub inheritable: caps::CapsHashSet,
    pub ambient: caps::CapsHashSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: libc::c_int,
    pub name: &'static str,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    /// `None` leaves the capabilities untouched (the spec has no `capabilities`).
    pub caps: Option<CapsPlan>,
    pub no_new_privileges: bool,
    pub rlimits: Vec<Rlimit>,
    pub oom_score_adj: Option<i32>,
    /// Allocate a pseudo-terminal inside the container for stdio.
    pub terminal: bool,
}

/// Annotations that ask for an overlay rootfs: `root.path` becomes the
/// mount point of an overlay of these directories, mounted inside the
/// container's mount namespace (so it disappears with the container).
pub const ANN_LOWER: &str = "io.skiff.rootfs.lowerdirs";
pub const ANN_UPPER: &str = "io.skiff.rootfs.upperdir";
pub const ANN_WORK: &str = "io.skiff.rootfs.workdir";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// Lower layers, topmost first (overlayfs' order).
    pub lower: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

impl Overlay {
    /// The mount data string.
    pub fn data(&self) -> String {
        let lower: Vec<String> = self.lower.iter().map(|p| p.display().to_string()).collect();
        let mut d = format!("lowerdir={}", lower.join(":"));
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            d.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        d
    }
}

fn overlay_from(
    bundle: &Path,
    ann: &std::collections::HashMap<String, String>,
) -> Result<Option<Overlay>> {
    let Some(lower) = ann.get(ANN_LOWER) else {
        if ann.contains_key(ANN_UPPER) || ann.contains_key(ANN_WORK) {
            return Err(ShimError::spec(
                format!("annotations.{ANN_LOWER}"),
                "missing while upperdir/workdir are given",
            ));
        }
        return Ok(None);
    };
    let check = |key: &str, p: &str| -> Result<PathBuf> {
        let path = abs_in_bundle(bundle, Path::new(p));
        let text = path.to_string_lossy();
        if text.contains(',') || text.contains(':') {
            return Err(ShimError::spec(
                format!("annotations.{key}"),
                format!("{text}: ',' and ':' are not allowed"),
            ));
        }
        if !path.is_dir() {
            return Err(ShimError::spec(
                format!("annotations.{key}"),
                format!("{text}: not a directory"),
            ));
        }
        Ok(path)
    };
    let lower = lower
        .split(':')
        .filter(|l| !l.is_empty())
        .map(|l| check(ANN_LOWER, l))
        .collect::<Result<Vec<_>>>()?;
    if lower.is_empty() {
        return Err(ShimError::spec(format!("annotations.{ANN_LOWER}"), "empty"));
    }
    let upper = ann
        .get(ANN_UPPER)
        .map(|u| check(ANN_UPPER, u))
        .transpose()?;
    let work = ann.get(ANN_WORK).map(|w| check(ANN_WORK, w)).transpose()?;
    if upper.is_some() != work.is_some() {
        return Err(ShimError::spec(
            format!("annotations.{ANN_WORK}"),
            "upperdir and workdir go together",
        ));
    }
    Ok(Some(Overlay { lower, upper, work }))
}

/// cgroup v2 interface files to write, from `linux.resources`
/// (file name, value), e.g. ("memory.max", "67108864").
pub type CgroupLimits = Vec<(String, String)>;

/// runc's and kubelet's conversion of cgroup v1 cpu shares to v2 cpu.weight.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// runc's conversion of OCI `memory.swap` (memory + swap) to cgroup v2's
/// `memory.swap.max` (swap alone); `None` leaves the file alone.
pub fn swap_max(swap: i64, memory: Option<i64>) -> Result<Option<String>> {
    let bad = |m: String| ShimError::spec("linux.resources.memory.swap", m);
    let memory = memory.unwrap_or(0);
    match swap {
        -1 => return Ok(Some("max".into())),
        0 => return Ok(None),
        s if s < -1 => return Err(bad(format!("{s} is negative"))),
        _ => {}
    }
    if memory <= 0 {
        return Err(bad("a swap limit needs a memory limit".into()));
    }
    if swap < memory {
        return Err(bad(format!(
            "memory+swap {swap} is below the memory limit {memory}"
        )));
    }
    Ok(Some((swap - memory).to_string()))
}

fn cgroup_limits(r: &oci_spec::runtime::LinuxResources) -> Result<CgroupLimits> {
    let mut out = Vec::new();
    if let Some(cpu) = r.cpu() {
        if let Some(sh) = cpu.shares() {
            out.push(("cpu.weight".to_string(), shares_to_weight(sh).to_string()));
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let period = cpu.period().unwrap_or(100_000);
            let quota = match cpu.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            out.push(("cpu.max".to_string(), format!("{quota} {period}")));
        }
    }
    if let Some(m) = r.memory() {
        if let Some(l) = m.limit() {
            let v = if l > 0 {
                l.to_string()
            } else {
                "max".to_string()
            };
            out.push(("memory.max".to_string(), v));
        }
        if let Some(s) = m.swap() {
            if let Some(v) = swap_max(s, m.limit())? {
                out.push(("memory.swap.max".to_string(), v));
            }
        }
    }
    if let Some(p) = r.pids() {
        let l = p.limit();
        let v = if l > 0 {
            l.to_string()
        } else {
            "max".to_string()
        };
        out.push(("pids.max".to_string(), v));
    }
    if let Some(u) = r.unified() {
        let mut kv: Vec<_> = u.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        kv.sort();
        // An explicit unified key wins over the value derived above.
        out.retain(|(f, _)| !u.contains_key(f));
        out.extend(kv);
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Overlay mounted on `rootfs` instead of binding it onto itself.
    pub overlay: Option<Overlay>,
    pub root_readonly: bool,
    pub namespaces: NamespacePlan,
    pub uid_mappings: Vec<IdMap>,
    pub gid_mappings: Vec<IdMap>,
    /// Propagation applied recursively to "/" in the new mount namespace.
    pub rootfs_propagation: MsFlags,
    pub mounts: Vec<MountPlan>,
    pub devices: Vec<DevicePlan>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctl: Vec<(String, String)>,
    pub process: ProcessPlan,
    pub cgroups_path: Option<PathBuf>,
    pub cgroup_limits: CgroupLimits,
}

/// Read and parse `config.json` of a bundle. Parse errors keep serde's
/// line/column and name the file.
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| ShimError::io("read", &path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| ShimError::Bundle {
        path: path.clone(),
        msg: format!("invalid config.json: {e}"),
    })
}

/// The six devices every container gets in its /dev (as runc and crun do).
pub fn default_devices() -> Vec<DevicePlan> {
    let dev = |name: &str, major, minor| DevicePlan {
        path: PathBuf::from("/dev").join(name),
        kind: DeviceKind::Char,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    vec![
        dev("null", 1, 3),
        dev("zero", 1, 5),
        dev("full", 1, 7),
        dev("random", 1, 8),
        dev("urandom", 1, 9),
        dev("tty", 5, 0),
    ]
}

fn ns_flag(t: LinuxNamespaceType) -> Result<CloneFlags> {
    Ok(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => {
            return Err(ShimError::spec(
                "linux.namespaces",
                "time namespaces are not supported",
            ))
        }
    })
}

/// Parse the `options` of a mount the way runc does: known flags set or
/// clear bits, propagation words go to a separate list, the rest is data.
pub fn parse_mount_options(opts: &[String]) -> (MsFlags, MsFlags, Vec<MsFlags>, Vec<String>) {
    let mut set = MsFlags::empty();
    let mut clear = MsFlags::empty();
    let mut prop = Vec::new();
    let mut data = Vec::new();
    for o in opts {
        let (add, del): (MsFlags, MsFlags) = match o.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                prop.push(propagation_flag(o).expect("listed above"));
                continue;
            }
            // Options that only some runtimes understand and that change nothing here.
            "tmpcopyup" => continue,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        set |= add;
        set -= del;
        clear |= del;
        clear -= add;
    }
    (set, clear, prop, data)
}

/// The propagation flags for a word such as "rslave".
pub fn propagation_flag(word: &str) -> Option<MsFlags> {
    Some(match word {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn rlimit_resource(name: &str) -> Option<(libc::c_int, &'static str)> {
    let table: [(&'static str, libc::__rlimit_resource_t); 16] = [
        ("RLIMIT_CPU", libc::RLIMIT_CPU),
        ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
        ("RLIMIT_DATA", libc::RLIMIT_DATA),
        ("RLIMIT_STACK", libc::RLIMIT_STACK),
        ("RLIMIT_CORE", libc::RLIMIT_CORE),
        ("RLIMIT_RSS", libc::RLIMIT_RSS),
        ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
        ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
        ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
        ("RLIMIT_AS", libc::RLIMIT_AS),
        ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
        ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
        ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
        ("RLIMIT_NICE", libc::RLIMIT_NICE),
        ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
        ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
    ];
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, r)| (*r as libc::c_int, *n))
}

fn cap_set(
    field: &str,
    set: &Option<oci_spec::runtime::Capabilities>,
) -> Result<caps::CapsHashSet> {
    let mut out = caps::CapsHashSet::new();
    if let Some(set) = set {
        for c in set {
            let name = serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let cap = caps::Capability::from_str(&name).map_err(|_| {
                ShimError::spec(
                    format!("process.capabilities.{field}"),
                    format!("unknown capability {name}"),
                )
            })?;
            out.insert(cap);
        }
    }
    Ok(out)
}

fn abs_in_bundle(bundle: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        bundle.join(p)
    }
}

/// Build the plan for `spec` found in `bundle` (an absolute path).
pub fn build_plan(bundle: &Path, spec: &Spec) -> Result<Plan> {
    // Root filesystem.
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| ShimError::spec("root", "missing"))?;
    let rootfs = abs_in_bundle(bundle, root.path());
    let rootfs = std::fs::canonicalize(&rootfs).map_err(|e| ShimError::Bundle {
        path: bundle.to_path_buf(),
        msg: format!("root.path {}: {e}", rootfs.display()),
    })?;
    if !rootfs.is_dir() {
        return Err(ShimError::Bundle {
            path: bundle.to_path_buf(),
            msg: format!("root.path {}: not a directory", rootfs.display()),
        });
    }

    if let Some(h) = spec.hooks() {
        let any = [
            h.prestart().as_ref().map(Vec::len),
            h.create_runtime().as_ref().map(Vec::len),
            h.create_container().as_ref().map(Vec::len),
            h.start_container().as_ref().map(Vec::len),
            h.poststart().as_ref().map(Vec::len),
            h.poststop().as_ref().map(Vec::len),
        ]
        .iter()
        .any(|n| n.unwrap_or(0) > 0);
        if any {
            // Refused rather than silently skipped.
            return Err(ShimError::spec(
                "hooks",
                "OCI hooks are not supported by skiff-shim yet",
            ));
        }
    }
    let linux = spec.linux().clone().unwrap_or_default();
    if linux.seccomp().is_some() {
        // A filter that is asked for and not applied would be a silent
        // security hole: refuse.
        return Err(ShimError::spec(
            "linux.seccomp",
            "seccomp filters are not supported by skiff-shim yet",
        ));
    }
    let overlay = overlay_from(bundle, &spec.annotations().clone().unwrap_or_default())?;

    // Namespaces.
    let mut ns = NamespacePlan {
        new: CloneFlags::empty(),
        join: Vec::new(),
    };
    let mut seen = CloneFlags::empty();
    for n in linux.namespaces().clone().unwrap_or_default() {
        let f = ns_flag(n.typ())?;
        if seen.contains(f) {
            return Err(ShimError::spec(
                "linux.namespaces",
                format!("namespace type {} given twice", n.typ()),
            ));
        }
        seen |= f;
        match n.path() {
            Some(p) if !p.as_os_str().is_empty() => {
                if !p.exists() {
                    return Err(ShimError::spec(
                        "linux.namespaces",
                        format!("{} namespace path {}: does not exist", n.typ(), p.display()),
                    ));
                }
                ns.join.push((f, p.clone()))
            }
            _ => ns.new |= f,
        }
    }
    // A joined user namespace comes first so that later joins and new
    // namespaces are owned by it.
    ns.join.sort_by_key(|(f, _)| {
        if *f == CloneFlags::CLONE_NEWUSER {
            0
        } else {
            1
        }
    });
    if ns.joins(CloneFlags::CLONE_NEWUSER).is_some() && ns.creates(CloneFlags::CLONE_NEWPID) {
        return Err(ShimError::spec(
            "linux.namespaces",
            "joining a user namespace by path together with a new pid namespace is not supported",
        ));
    }

    let map_ids = |field: &str, v: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        v.clone()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                if m.size() == 0 {
                    return Err(ShimError::spec(field, "mapping with size 0"));
                }
                Ok(IdMap {
                    container_id: m.container_id(),
                    host_id: m.host_id(),
                    size: m.size(),
                })
            })
            .collect::<Result<Vec<_>>>()
    };
    let uid_mappings = map_ids("linux.uidMappings", linux.uid_mappings())?;
    let gid_mappings = map_ids("linux.gidMappings", linux.gid_mappings())?;
    if ns.creates(CloneFlags::CLONE_NEWUSER) && (uid_mappings.is_empty() || gid_mappings.is_empty())
    {
        return Err(ShimError::spec(
            "linux.uidMappings",
            "a new user namespace needs uidMappings and gidMappings",
        ));
    }
    if !ns.creates(CloneFlags::CLONE_NEWUSER) && !uid_mappings.is_empty() {
        return Err(ShimError::spec(
            "linux.uidMappings",
            "mappings given without a new user namespace",
        ));
    }

    let rootfs_propagation = match linux.rootfs_propagation() {
        None => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        Some(s) if s.is_empty() => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        Some(s) => {
            let f = propagation_flag(s).ok_or_else(|| {
                ShimError::spec("linux.rootfsPropagation", format!("unknown value {s:?}"))
            })?;
            // The rootfs is always at least recursive: a single level would
            // leave host submounts shared.
            f | MsFlags::MS_REC
        }
    };

    // Mounts.
    let mut mounts = Vec::new();
    for (i, m) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
        let field = format!("mounts[{i}]");
        let dest = m.destination();
        if !dest.is_absolute() {
            return Err(ShimError::spec(
                format!("{field}.destination"),
                format!("{} is not absolute", dest.display()),
            ));
        }
        let opts = m.options().clone().unwrap_or_default();
        let (mut flags, _clear, propagation, data) = parse_mount_options(&opts);
        let typ = m.typ().clone().unwrap_or_default();
        let is_bind = typ == "bind" || flags.contains(MsFlags::MS_BIND);
        let kind = if is_bind {
            let src = m.source().clone().ok_or_else(|| {
                ShimError::spec(format!("{field}.source"), "bind mount without source")
            })?;
            let src = abs_in_bundle(bundle, &src);
            if let Err(e) = std::fs::symlink_metadata(&src) {
                return Err(ShimError::spec(
                    format!("{field}.source"),
                    format!("bind mount source {}: {e}", src.display()),
                ));
            }
            flags |= MsFlags::MS_BIND;
            MountKind::Bind {
                source: src,
                recursive: flags.contains(MsFlags::MS_REC),
            }
        } else {
            if typ.is_empty() {
                return Err(ShimError::spec(
                    format!("{field}.type"),
                    format!("missing for {}", dest.display()),
                ));
            }
            // cgroup v1 is not supported: "cgroup" means the v2 hierarchy.
            let fstype = if typ == "cgroup" {
                "cgroup2".to_string()
            } else {
                typ.clone()
            };
            let source = m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| fstype.clone());
            MountKind::Fs { fstype, source }
        };
        mounts.push(MountPlan {
            destination: dest.clone(),
            kind,
            flags,
            data: data.join(","),
            propagation,
        });
    }

    // Devices: the defaults, overridden or extended by linux.devices.
    let mut devices = default_devices();
    for (i, d) in linux
        .devices()
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => DeviceKind::Char,
            LinuxDeviceType::B => DeviceKind::Block,
            LinuxDeviceType::P => DeviceKind::Fifo,
            LinuxDeviceType::A => {
                return Err(ShimError::spec(
                    format!("linux.devices[{i}].type"),
                    "type 'a' is not a device",
                ))
            }
        };
        let dp = DevicePlan {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        };
        devices.retain(|x| x.path != dp.path);
        devices.push(dp);
    }

    // Process.
    let p = spec
        .process()
        .as_ref()
        .ok_or_else(|| ShimError::spec("process", "missing"))?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(ShimError::spec("process.args", "empty"));
    }
    if !p.cwd().is_absolute() {
        return Err(ShimError::spec(
            "process.cwd",
            format!("{} is not absolute", p.cwd().display()),
        ));
    }
    let caps = match p.capabilities() {
        None => None,
        Some(c) => Some(CapsPlan {
            bounding: cap_set("bounding", c.bounding())?,
            effective: cap_set("effective", c.effective())?,
            permitted: cap_set("permitted", c.permitted())?,
            inheritable: cap_set("inheritable", c.inheritable())?,
            ambient: cap_set("ambient", c.ambient())?,
        }),
    };
    let mut rlimits = Vec::new();
    for (i, r) in p.rlimits().clone().unwrap_or_default().iter().enumerate() {
        let name = r.typ().to_string();
        let (resource, name) = rlimit_resource(&name).ok_or_else(|| {
            ShimError::spec(
                format!("process.rlimits[{i}].type"),
                format!("unknown {name}"),
            )
        })?;
        if r.soft() > r.hard() {
            return Err(ShimError::spec(
                format!("process.rlimits[{i}]"),
                format!("soft limit {} above hard limit {}", r.soft(), r.hard()),
            ));
        }
        rlimits.push(Rlimit {
            resource,
            name,
            soft: r.soft(),
            hard: r.hard(),
        });
    }
    let user = p.user();
    let process = ProcessPlan {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().clone(),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        caps,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        rlimits,
        oom_score_adj: p.oom_score_adj(),
        terminal: p.terminal().unwrap_or(false),
    };

    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if hostname.is_some() && !ns.creates(CloneFlags::CLONE_NEWUTS) {
        return Err(ShimError::spec(
            "hostname",
            "setting a hostname needs a new uts namespace",
        ));
    }
    let domainname = spec.domainname().clone().filter(|h| !h.is_empty());
    if domainname.is_some() && !ns.creates(CloneFlags::CLONE_NEWUTS) {
        return Err(ShimError::spec(
            "domainname",
            "setting a domainname needs a new uts namespace",
        ));
    }
    let mut sysctl: Vec<(String, String)> = linux
        .sysctl()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    sysctl.sort();
    // Like runc: a sysctl is only written when its namespace is the
    // container's own, never the host's.
    let own = |f: CloneFlags| ns.creates(f) || ns.joins(f).is_some();
    for (k, _) in &sysctl {
        let needs = if k.starts_with("net.") {
            CloneFlags::CLONE_NEWNET
        } else if k.starts_with("fs.mqueue.")
            || [
                "kernel.msgmax",
                "kernel.msgmnb",
                "kernel.msgmni",
                "kernel.sem",
                "kernel.shmall",
                "kernel.shmmax",
                "kernel.shmmni",
                "kernel.shm_rmid_forced",
            ]
            .contains(&k.as_str())
        {
            CloneFlags::CLONE_NEWIPC
        } else if k == "kernel.hostname" || k == "kernel.domainname" {
            CloneFlags::CLONE_NEWUTS
        } else {
            return Err(ShimError::spec(
                format!("linux.sysctl.{k}"),
                "not a namespaced sysctl",
            ));
        };
        if !own(needs) {
            return Err(ShimError::spec(
                format!("linux.sysctl.{k}"),
                format!("needs the container's own {needs:?} namespace"),
            ));
        }
    }
    // Without its own mount namespace the container would mount over the
    // host's /proc, /dev … (masked paths, read-only paths, devices).
    if !ns.has_mount_ns() {
        return Err(ShimError::spec(
            "linux.namespaces",
            "a mount namespace is required",
        ));
    }

    Ok(Plan {
        bundle: bundle.to_path_buf(),
        rootfs,
        overlay,
        root_readonly: root.readonly().unwrap_or(false),
        namespaces: ns,
        uid_mappings,
        gid_mappings,
        rootfs_propagation,
        mounts,
        devices,
        masked_paths: linux
            .masked_paths()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(PathBuf::from)
            .collect(),
        readonly_paths: linux
            .readonly_paths()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(PathBuf::from)
            .collect(),
        hostname,
        domainname,
        sysctl,
        process,
        cgroups_path: linux.cgroups_path().clone(),
        cgroup_limits: linux
            .resources()
            .as_ref()
            .map(cgroup_limits)
            .transpose()?
            .unwrap_or_default(),
    })
}
