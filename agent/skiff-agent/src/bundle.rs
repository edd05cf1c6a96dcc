//! From a Kubernetes container to an OCI runtime bundle's `config.json`: the process (command,
//! args, env with `$(VAR)` expansion, working dir, user), capabilities, mounts, namespaces
//! shared with the pod sandbox, and the per-pod `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf`. Pure functions: the runtime (skiff-shim) does the syscalls.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("container {container}: no command: the image has no entrypoint or cmd and the pod gives none")]
    NoCommand { container: String },
    #[error("container {container}: user {user:?} is not in the image's /etc/passwd")]
    UnknownUser { container: String, user: String },
    #[error("container {container}: capability {cap:?} is not a Linux capability")]
    UnknownCapability { container: String, cap: String },
    #[error("container {container}: resources: {message}")]
    Resources { container: String, message: String },
}

/// What the image says about how to run it (OCI image config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// Where the pod sandbox keeps what its containers share.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub netns: PathBuf,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    pub hosts: PathBuf,
    pub hostname: PathBuf,
    pub resolv_conf: PathBuf,
    pub cgroup_parent: String,
}

/// A volume already prepared on the host, mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// containerd's default capability set for unprivileged containers.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` escapes, unknown
/// references stay as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    expand_with(input, |name| env.get(name).cloned())
}

/// `expand` with the variables looked up by `lookup`, so that callers can layer several
/// sources or notice references that have no value (as `subPathExpr` must).
pub fn expand_with(input: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment: the image's, then the pod's (which wins), in order. The pod's
/// values come from `env::resolve`, which already did kubelet's `$(VAR)` expansion; expanding
/// them again would undo `$$` escapes and expand references inside ConfigMap and Secret values,
/// which kubelet never does.
pub fn environment(
    image: &ImageConfig,
    resolved: &[(String, String)],
    hostname: &str,
) -> (Vec<String>, BTreeMap<String, String>) {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let set =
        |k: String, v: String, map: &mut BTreeMap<String, String>, order: &mut Vec<String>| {
            if !map.contains_key(&k) {
                order.push(k.clone());
            }
            map.insert(k, v);
        };
    set(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        &mut map,
        &mut order,
    );
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            set(k.into(), v.into(), &mut map, &mut order);
        }
    }
    set("HOSTNAME".into(), hostname.into(), &mut map, &mut order);
    for (k, v) in resolved {
        set(k.clone(), v.clone(), &mut map, &mut order);
    }
    let list = order.iter().map(|k| format!("{k}={}", map[k])).collect();
    (list, map)
}

/// Kubernetes' rule: `command` replaces the entrypoint, `args` replace cmd; command without
/// args drops the image's cmd.
pub fn process_args(
    c: &Container,
    image: &ImageConfig,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, BundleError> {
    let command = c.command.clone().unwrap_or_default();
    let args = c.args.clone().unwrap_or_default();
    let argv: Vec<String> = match (command.is_empty(), args.is_empty()) {
        (false, _) => command.into_iter().chain(args).collect(),
        (true, false) => image.entrypoint.iter().cloned().chain(args).collect(),
        (true, true) => image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect(),
    };
    if argv.is_empty() {
        return Err(BundleError::NoCommand {
            container: c.name.clone(),
        });
    }
    Ok(argv.iter().map(|a| expand(a, env)).collect())
}

/// uid/gid from the security context, else the image's `User` (numeric, or a name looked up
/// in the image's /etc/passwd).
pub fn user(
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    passwd: &str,
) -> Result<(u32, u32), BundleError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let (image_uid, image_gid) = if image.user.is_empty() {
        (0, 0)
    } else {
        let (u, g) = image
            .user
            .split_once(':')
            .map_or((image.user.as_str(), None), |(u, g)| (u, Some(g)));
        let from_passwd = |name: &str| {
            passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[0] == name)
                .map(|f| (f[2].parse().unwrap_or(0), f[3].parse().unwrap_or(0)))
        };
        let (uid, pgid) = match u.parse::<u32>() {
            Ok(n) => (
                n,
                passwd
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() > 3 && f[2] == u)
                    .and_then(|f| f[3].parse().ok())
                    .unwrap_or(0),
            ),
            Err(_) => from_passwd(u).ok_or_else(|| BundleError::UnknownUser {
                container: c.name.clone(),
                user: u.to_string(),
            })?,
        };
        (uid, g.and_then(|g| g.parse().ok()).unwrap_or(pgid))
    };
    Ok((
        uid.map(|u| u as u32).unwrap_or(image_uid),
        gid.map(|g| g as u32).unwrap_or(image_gid),
    ))
}

fn normalize_cap(c: &Container, cap: &str) -> Result<String, BundleError> {
    let upper = cap.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(BundleError::UnknownCapability {
            container: c.name.clone(),
            cap: cap.to_string(),
        })
    }
}

pub fn capabilities(c: &Container) -> Result<Vec<String>, BundleError> {
    let sc = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged) == Some(true) {
        return Ok(ALL_CAPS.iter().map(|s| s.to_string()).collect());
    }
    let mut caps: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    let add = sc
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    let drop = sc
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    if drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
        caps.clear();
    }
    for d in &drop {
        if !d.eq_ignore_ascii_case("ALL") {
            let d = normalize_cap(c, d)?;
            caps.retain(|x| *x != d);
        }
    }
    for a in &add {
        if a.eq_ignore_ascii_case("ALL") {
            caps = ALL_CAPS.iter().map(|s| s.to_string()).collect();
            continue;
        }
        let a = normalize_cap(c, a)?;
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    Ok(caps)
}

/// `/etc/resolv.conf` for a pod: ClusterFirst points at cluster DNS with the search path
/// kubelet writes; Default copies the node's; None uses only `dnsConfig`.
pub fn resolv_conf(pod: &Pod, cluster_dns: &str, domain: &str, node_resolv: &str) -> String {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match policy {
            "ClusterFirst" if !host_network => (
                vec![cluster_dns.into()],
                vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.into(),
                ],
                vec!["ndots:5".into()],
            ),
            "ClusterFirstWithHostNet" => (
                vec![cluster_dns.into()],
                vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.into(),
                ],
                vec!["ndots:5".into()],
            ),
            "None" => (vec![], vec![], vec![]),
            _ => {
                let mut s = Vec::new();
                let mut q = Vec::new();
                let mut o = Vec::new();
                for line in node_resolv.lines() {
                    let mut f = line.split_whitespace();
                    match f.next() {
                        Some("nameserver") => s.extend(f.next().map(str::to_string)),
                        Some("search") => q.extend(f.map(str::to_string)),
                        Some("options") => o.extend(f.map(str::to_string)),
                        _ => {}
                    }
                }
                (s, q, o)
            }
        };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(cfg.nameservers.clone().unwrap_or_default());
        searches.extend(cfg.searches.clone().unwrap_or_default());
        for o in cfg.options.clone().unwrap_or_default() {
            let text = match o.value {
                Some(v) => format!("{}:{v}", o.name.unwrap_or_default()),
                None => o.name.unwrap_or_default(),
            };
            options.retain(|x| x.split(':').next() != text.split(':').next());
            options.push(text);
        }
    }
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for s in servers.iter().take(3) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// The pod's `/etc/hosts`: localhost, its own name at its IP, and `hostAliases`.
pub fn hosts_file(pod: &Pod, pod_ip: &str, domain: &str) -> String {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let mut out = String::from("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    match spec.and_then(|s| s.subdomain.as_deref()) {
        Some(sub) => out.push_str(&format!(
            "{pod_ip}\t{name}.{sub}.{ns}.svc.{domain}\t{name}\n"
        )),
        None => out.push_str(&format!("{pod_ip}\t{name}\n")),
    }
    for alias in spec
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default()
    {
        out.push_str(&format!(
            "\n# Entries added by HostAliases.\n{}\t{}\n",
            alias.ip,
            alias.hostnames.unwrap_or_default().join("\t")
        ));
    }
    out
}

/// The OOM score kubelet gives by QoS class (Burstable scales with the memory request).
pub fn oom_score_adj(qos: &str, memory_request: u64, node_memory: u64) -> i32 {
    match qos {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let adj = 1000 - (1000 * memory_request / node_memory.max(1)) as i64;
            adj.clamp(2, 999) as i32
        }
    }
}

pub struct BundleInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageConfig,
    pub image_passwd: &'a str,
    /// Env after resolving valueFrom/envFrom and service variables, in order.
    pub env: &'a [(String, String)],
    pub rootfs: PathBuf,
    pub sandbox: &'a Sandbox,
    pub volumes: &'a [VolumeMount],
    pub oom_score_adj: i32,
}

/// The `config.json` for one container.
pub fn config(input: &BundleInput<'_>) -> Result<Value, BundleError> {
    let pod = input.pod;
    let c = input.container;
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let (env, env_map) = environment(input.image, input.env, &hostname);
    let args = process_args(c, input.image, &env_map)?;
    let (uid, gid) = user(pod, c, input.image, input.image_passwd)?;
    let caps = capabilities(c)?;
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| {
            if input.image.working_dir.is_empty() {
                "/".into()
            } else {
                input.image.working_dir.clone()
            }
        });
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/etc/hosts", "type": "bind", "source": input.sandbox.hosts, "options": ["rbind", "rprivate", "rw"]}),
        json!({"destination": "/etc/hostname", "type": "bind", "source": input.sandbox.hostname, "options": ["rbind", "rprivate", "rw"]}),
        json!({"destination": "/etc/resolv.conf", "type": "bind", "source": input.sandbox.resolv_conf, "options": ["rbind", "rprivate", "rw"]}),
    ];
    for v in input.volumes {
        mounts.push(json!({"destination": v.destination, "type": "bind", "source": v.source, "options": ["rbind", "rprivate", if v.read_only { "ro" } else { "rw" }]}));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
        json!({"type": "network", "path": input.sandbox.netns}),
    ];
    namespaces.push(match &input.sandbox.ipcns {
        Some(p) => json!({"type": "ipc", "path": p}),
        None => json!({"type": "ipc"}),
    });
    namespaces.push(match &input.sandbox.utsns {
        Some(p) => json!({"type": "uts", "path": p}),
        None => json!({"type": "uts"}),
    });
    let uid_str = pod.metadata.uid.clone().unwrap_or_default();
    let resources = crate::cgroups::bundle_resources(c).map_err(|e| BundleError::Resources {
        container: c.name.clone(),
        message: e.to_string(),
    })?;
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": crate::cgroups::container_cgroups_path(
            &input.sandbox.cgroup_parent,
            &format!("{uid_str}-{}", c.name),
        ),
        "resources": resources,
    });
    if !privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    let allow_escalation = sc
        .and_then(|s| s.allow_privilege_escalation)
        .unwrap_or(true);
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.tty.unwrap_or(false),
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": !allow_escalation && !privileged,
            "oomScoreAdj": input.oom_score_adj,
        },
        "root": {"path": input.rootfs, "readonly": sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false)},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    });
    // A container joining the sandbox's UTS namespace inherits the hostname the sandbox
    // set; runtimes refuse to set one in a namespace they did not create.
    if input.sandbox.utsns.is_some() {
        if let Some(o) = config.as_object_mut() {
            o.remove("hostname");
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1"}, "spec": spec}),
        )
        .unwrap()
    }

    fn container(v: Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let env = BTreeMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$(", &env), "x-$(B)-$(A)-$-$(");
    }

    #[test]
    fn command_and_args_replace_entrypoint_and_cmd() {
        let image = ImageConfig {
            entrypoint: vec!["/bin/httpd".into()],
            cmd: vec!["-f".into()],
            ..Default::default()
        };
        let env = BTreeMap::from([("PORT".to_string(), "80".to_string())]);
        let argv = |c: Value| process_args(&container(c), &image, &env);
        assert_eq!(argv(json!({"name": "c"})).unwrap(), ["/bin/httpd", "-f"]);
        assert_eq!(
            argv(json!({"name": "c", "args": ["-p", "$(PORT)"]})).unwrap(),
            ["/bin/httpd", "-p", "80"]
        );
        assert_eq!(
            argv(json!({"name": "c", "command": ["sh"]})).unwrap(),
            ["sh"],
            "command drops the image's cmd"
        );
        assert_eq!(
            argv(json!({"name": "c", "command": ["sh"], "args": ["-c", "true"]})).unwrap(),
            ["sh", "-c", "true"]
        );
        let empty = ImageConfig::default();
        assert_eq!(
            process_args(&container(json!({"name": "c"})), &empty, &env),
            Err(BundleError::NoCommand {
                container: "c".into()
            })
        );
    }

    #[test]
    fn env_order_override_and_no_second_expansion() {
        let image = ImageConfig {
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        };
        let (list, map) = environment(
            &image,
            &[("A".into(), "pod".into()), ("B".into(), "$(A)-b".into())],
            "h",
        );
        assert_eq!(map["A"], "pod");
        assert_eq!(
            map["B"], "$(A)-b",
            "resolved values are final: a literal $(A) left by env::resolve stays"
        );
        assert_eq!(list, ["PATH=/bin", "A=pod", "HOSTNAME=h", "B=$(A)-b"]);
    }

    #[test]
    fn users_and_capabilities() {
        let p = pod(json!({"containers": [], "securityContext": {"runAsUser": 1000}}));
        let image = ImageConfig {
            user: "www".into(),
            ..Default::default()
        };
        let passwd = "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n";
        assert_eq!(
            user(&p, &container(json!({"name": "c"})), &image, passwd).unwrap(),
            (1000, 33)
        );
        let p2 = pod(json!({"containers": []}));
        assert_eq!(
            user(&p2, &container(json!({"name": "c"})), &image, passwd).unwrap(),
            (33, 33)
        );
        assert!(user(
            &p2,
            &container(json!({"name": "c"})),
            &ImageConfig {
                user: "nobody".into(),
                ..Default::default()
            },
            passwd
        )
        .is_err());
        let caps = capabilities(&container(json!({"name": "c", "securityContext": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["KILL"]}}}))).unwrap();
        assert!(
            caps.contains(&"CAP_NET_ADMIN".to_string()) && !caps.contains(&"CAP_KILL".to_string())
        );
        let none = capabilities(&container(json!({"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}}))).unwrap();
        assert_eq!(none, ["CAP_CHOWN"]);
        assert!(capabilities(&container(
            json!({"name": "c", "securityContext": {"capabilities": {"add": ["FLY"]}}})
        ))
        .is_err());
        assert_eq!(
            capabilities(&container(
                json!({"name": "c", "securityContext": {"privileged": true}})
            ))
            .unwrap()
            .len(),
            ALL_CAPS.len()
        );
    }

    #[test]
    fn resolv_conf_by_dns_policy() {
        let cluster = resolv_conf(
            &pod(json!({"containers": []})),
            "10.96.0.10",
            "cluster.local",
            "",
        );
        assert_eq!(cluster, "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n");
        let node = "nameserver 192.0.2.53\nsearch lab.example\n";
        let default = resolv_conf(
            &pod(json!({"containers": [], "dnsPolicy": "Default"})),
            "10.96.0.10",
            "cluster.local",
            node,
        );
        assert_eq!(default, "search lab.example\nnameserver 192.0.2.53\n");
        let custom = resolv_conf(
            &pod(
                json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"], "options": [{"name": "ndots", "value": "2"}]}}),
            ),
            "10.96.0.10",
            "cluster.local",
            node,
        );
        assert_eq!(custom, "nameserver 1.2.3.4\noptions ndots:2\n");
    }

    #[test]
    fn hosts_and_oom_scores() {
        let p = pod(
            json!({"containers": [], "hostname": "db", "subdomain": "dbs", "hostAliases": [{"ip": "192.0.2.9", "hostnames": ["a", "b"]}]}),
        );
        let hosts = hosts_file(&p, "10.244.1.5", "cluster.local");
        assert!(hosts.contains("10.244.1.5\tdb.dbs.shop.svc.cluster.local\tdb\n"));
        assert!(hosts.contains("192.0.2.9\ta\tb\n"));
        assert_eq!(oom_score_adj("Guaranteed", 0, 1), -997);
        assert_eq!(oom_score_adj("BestEffort", 0, 1), 1000);
        assert_eq!(oom_score_adj("Burstable", 1 << 30, 4 << 30), 750);
        assert_eq!(oom_score_adj("Burstable", 8 << 30, 4 << 30), 2);
    }

    #[test]
    fn config_is_a_valid_oci_spec_joining_the_sandbox() {
        let p = pod(json!({"containers": [{"name": "web", "image": "busybox"}]}));
        let c = container(
            json!({"name": "web", "image": "busybox", "args": ["httpd", "-f"], "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false}}),
        );
        let image = ImageConfig {
            entrypoint: vec!["/bin/busybox".into()],
            ..Default::default()
        };
        let sandbox = Sandbox {
            netns: "/run/netns/p".into(),
            ipcns: Some("/proc/42/ns/ipc".into()),
            utsns: Some("/proc/42/ns/uts".into()),
            hosts: "/var/lib/skiff/pods/u-1/etc-hosts".into(),
            hostname: "/var/lib/skiff/pods/u-1/etc-hostname".into(),
            resolv_conf: "/var/lib/skiff/pods/u-1/resolv.conf".into(),
            cgroup_parent: "/kubepods/besteffort/podu-1".into(),
        };
        let volumes = [VolumeMount {
            source: "/var/lib/skiff/pods/u-1/volumes/data".into(),
            destination: "/data".into(),
            read_only: true,
        }];
        let cfg = config(&BundleInput {
            pod: &p,
            container: &c,
            image: &image,
            image_passwd: "",
            env: &[],
            rootfs: "/rootfs".into(),
            sandbox: &sandbox,
            volumes: &volumes,
            oom_score_adj: 1000,
        })
        .unwrap();
        let spec: oci_spec::runtime::Spec =
            serde_json::from_value(cfg.clone()).expect("a valid OCI runtime spec");
        assert_eq!(
            spec.hostname().as_deref(),
            None,
            "the sandbox's UTS namespace already has the name"
        );
        assert_eq!(
            cfg["process"]["args"],
            json!(["/bin/busybox", "httpd", "-f"])
        );
        assert_eq!(cfg["process"]["noNewPrivileges"], true);
        assert_eq!(cfg["root"]["readonly"], true);
        let ns = cfg["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/run/netns/p"})));
        assert!(ns.contains(&json!({"type": "ipc", "path": "/proc/42/ns/ipc"})));
        assert!(cfg["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/data" && m["options"][2] == "ro"));
        assert_eq!(
            cfg["linux"]["cgroupsPath"],
            "/kubepods/besteffort/podu-1/u-1-web"
        );
        // BestEffort: the minimum cpu shares and no swap.
        assert_eq!(
            cfg["linux"]["resources"],
            json!({"cpu": {"shares": 2}, "unified": {"memory.swap.max": "0"}})
        );
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(2));
        // Under a systemd slice the path takes runc's slice:prefix:name form, with limits.
        let limited = container(json!({"name": "web", "image": "busybox", "args": ["x"],
            "resources": {"limits": {"cpu": "250m", "memory": "32Mi"}}}));
        let slice = Sandbox {
            cgroup_parent: "kubepods-pod0f1e2d3c_aaaa.slice".into(),
            ..sandbox.clone()
        };
        let cfg = config(&BundleInput {
            pod: &p,
            container: &limited,
            image: &image,
            image_passwd: "",
            env: &[],
            rootfs: "/rootfs".into(),
            sandbox: &slice,
            volumes: &[],
            oom_score_adj: -997,
        })
        .unwrap();
        assert_eq!(
            cfg["linux"]["cgroupsPath"],
            "kubepods-pod0f1e2d3c_aaaa.slice:skiff:u-1-web"
        );
        assert_eq!(
            cfg["linux"]["resources"],
            json!({"cpu": {"shares": 256, "quota": 25000, "period": 100000},
                   "memory": {"limit": 33554432}, "unified": {"memory.swap.max": "0"}})
        );
        let bad = container(json!({"name": "web", "image": "busybox", "args": ["x"],
            "resources": {"limits": {"memory": "32Q"}}}));
        let e = config(&BundleInput {
            pod: &p,
            container: &bad,
            image: &image,
            image_passwd: "",
            env: &[],
            rootfs: "/rootfs".into(),
            sandbox: &slice,
            volumes: &[],
            oom_score_adj: 0,
        })
        .unwrap_err();
        assert!(matches!(e, BundleError::Resources { .. }), "{e}");
        assert!(e.to_string().contains("32Q"), "{e}");
    }
}
