//! The node's registration and heartbeat: a Node object that says what this machine has
//! and how it is doing, and a Lease renewed every 10 s that says the agent is alive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
const STATUS_EVERY: Duration = Duration::from_secs(30);
pub const AGENT_VERSION: &str = concat!("v1.33.0-skiff-", env!("CARGO_PKG_VERSION"));

pub struct NodeConfig {
    pub name: String,
    pub ip: String,
    pub root_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Reserved for the system, subtracted from capacity: (millicores, bytes).
    pub system_reserved: (u64, u64),
    pub limits_enforced: bool,
    /// Where the node API listens (published as the kubelet endpoint).
    pub node_api_port: u16,
}

/// Facts read from the host; `facts_from` reads them under a root so tests can fake them.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub cpus: u64,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub disk_bytes: u64,
    pub disk_free_bytes: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn meminfo_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn facts_from(proc_root: &Path, etc_root: &Path, disk: &Path) -> HostFacts {
    let meminfo = read(&proc_root.join("meminfo"));
    let os_release = read(&etc_root.join("os-release"));
    let os_image = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let (disk_bytes, disk_free_bytes) = match nix::sys::statvfs::statvfs(disk) {
        Ok(s) => (
            s.blocks() * s.fragment_size(),
            s.blocks_available() * s.fragment_size(),
        ),
        Err(_) => (0, 0),
    };
    HostFacts {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1),
        memory_bytes: meminfo_kib(&meminfo, "MemTotal:") * 1024,
        memory_available_bytes: meminfo_kib(&meminfo, "MemAvailable:") * 1024,
        disk_bytes,
        disk_free_bytes,
        kernel: read(&proc_root.join("sys/kernel/osrelease")),
        os_image,
        machine_id: read(&etc_root.join("machine-id")),
        boot_id: read(&proc_root.join("sys/kernel/random/boot_id")),
    }
}

fn condition(
    kind: &str,
    bad: bool,
    good_reason: &str,
    bad_reason: &str,
    message: &str,
    now: &str,
) -> Value {
    // Ready is "True" when good; the pressure conditions are "True" when bad.
    let status = if kind == "Ready" {
        if bad {
            "False"
        } else {
            "True"
        }
    } else if bad {
        "True"
    } else {
        "False"
    };
    json!({"type": kind, "status": status, "reason": if bad { bad_reason } else { good_reason }, "message": message,
           "lastHeartbeatTime": now, "lastTransitionTime": now})
}

/// The node's `status`, as kubelet reports it.
pub fn status(cfg: &NodeConfig, facts: &HostFacts, now: &str) -> Value {
    let capacity = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{}Ki", facts.memory_bytes / 1024),
        "pods": "110",
        "ephemeral-storage": format!("{}Ki", facts.disk_bytes / 1024),
    });
    let alloc_cpu = (facts.cpus * 1000).saturating_sub(cfg.system_reserved.0);
    let alloc_mem = facts.memory_bytes.saturating_sub(cfg.system_reserved.1);
    let allocatable = json!({
        "cpu": format!("{alloc_cpu}m"),
        "memory": format!("{}Ki", alloc_mem / 1024),
        "pods": "110",
        "ephemeral-storage": format!("{}Ki", facts.disk_bytes / 1024),
    });
    let memory_pressure =
        facts.memory_available_bytes > 0 && facts.memory_available_bytes < 100 * 1024 * 1024;
    let disk_pressure = facts.disk_bytes > 0 && facts.disk_free_bytes * 10 < facts.disk_bytes;
    let ready_message = if cfg.limits_enforced {
        "skiff-agent is posting ready status".to_string()
    } else {
        "skiff-agent is posting ready status; resource limits are NOT enforced (cgroup controllers missing)".to_string()
    };
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": [
            condition("MemoryPressure", memory_pressure, "KubeletHasSufficientMemory", "KubeletHasInsufficientMemory", "memory available", now),
            condition("DiskPressure", disk_pressure, "KubeletHasNoDiskPressure", "KubeletHasDiskPressure", "disk available", now),
            condition("PIDPressure", false, "KubeletHasSufficientPID", "KubeletHasInsufficientPID", "PIDs available", now),
            condition("Ready", false, "KubeletReady", "KubeletNotReady", &ready_message, now),
        ],
        "addresses": [{"type": "InternalIP", "address": cfg.ip}, {"type": "Hostname", "address": cfg.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.node_api_port}},
        "nodeInfo": {
            "machineID": facts.machine_id, "systemUUID": facts.machine_id, "bootID": facts.boot_id,
            "kernelVersion": facts.kernel, "osImage": facts.os_image,
            "containerRuntimeVersion": format!("skiff://{}", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": AGENT_VERSION, "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH },
        },
    })
}

pub fn labels(cfg: &NodeConfig) -> BTreeMap<String, String> {
    let mut labels = cfg.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        if cfg!(target_arch = "x86_64") {
            "amd64".into()
        } else {
            std::env::consts::ARCH.into()
        },
    );
    labels
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Creates the Node if needed, then keeps its status and Lease fresh until the task ends.
pub async fn register_and_heartbeat(
    client: kube::Client,
    cfg: NodeConfig,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            labels: Some(labels(&cfg)),
            ..Default::default()
        },
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = cfg.name, "registered"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({"metadata": {"labels": labels(&cfg)}});
            nodes
                .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::info!(node = cfg.name, "node already registered; updated");
        }
        Err(e) => return Err(e),
    }
    // Registered is what `Type=notify` waits for: the node exists for the scheduler.
    if let Err(e) = skiff_daemon::sd_notify::ready() {
        tracing::warn!(error = %e, "telling systemd we are ready");
    }
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let mut last_status = tokio::time::Instant::now() - STATUS_EVERY;
    loop {
        if last_status.elapsed() >= STATUS_EVERY {
            let facts = facts_from(Path::new("/proc"), Path::new("/etc"), &cfg.root_dir);
            let patch = json!({"status": status(&cfg, &facts, &now())});
            match nodes
                .patch_status(&cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => last_status = tokio::time::Instant::now(),
                Err(e) => tracing::warn!(error = %e, "posting node status failed"),
            }
        }
        if let Err(e) = renew_lease(&leases, &cfg.name).await {
            tracing::warn!(error = %e, "renewing the node lease failed");
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

async fn renew_lease(leases: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    let renew = MicroTime(jiff::Timestamp::now());
    match leases.get_opt(node).await? {
        Some(mut lease) => {
            lease.spec.get_or_insert_with(Default::default).renew_time = Some(renew);
            leases.replace(node, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.into()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(renew),
                    ..Default::default()
                }),
            };
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_capacity_allocatable_and_conditions() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        std::fs::create_dir_all(proc_root.join("sys/kernel/random")).unwrap();
        std::fs::write(
            proc_root.join("meminfo"),
            "MemTotal:       8000000 kB\nMemAvailable:   50000 kB\n",
        )
        .unwrap();
        std::fs::write(proc_root.join("sys/kernel/osrelease"), "6.1.0-test\n").unwrap();
        std::fs::write(proc_root.join("sys/kernel/random/boot_id"), "boot-1\n").unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("os-release"),
            "NAME=Debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        )
        .unwrap();
        std::fs::write(etc.join("machine-id"), "abc123\n").unwrap();
        let facts = facts_from(&proc_root, &etc, dir.path());
        assert_eq!(facts.memory_bytes, 8_000_000 * 1024);
        assert_eq!(facts.kernel, "6.1.0-test");
        let cfg = NodeConfig {
            name: "n1".into(),
            ip: "192.0.2.10".into(),
            root_dir: dir.path().into(),
            labels: BTreeMap::new(),
            system_reserved: (500, 1024 * 1024 * 1024),
            limits_enforced: false,
            node_api_port: 10250,
        };
        let st = status(&cfg, &facts, "2026-01-01T00:00:00Z");
        assert_eq!(st["capacity"]["memory"], "8000000Ki");
        assert_eq!(
            st["allocatable"]["memory"],
            format!("{}Ki", 8_000_000 - 1024 * 1024)
        );
        assert_eq!(
            st["allocatable"]["cpu"],
            format!("{}m", facts.cpus * 1000 - 500)
        );
        assert_eq!(st["nodeInfo"]["osImage"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(
            st["nodeInfo"]["containerRuntimeVersion"],
            format!("skiff://{}", env!("CARGO_PKG_VERSION"))
        );
        let cond = |t: &str| {
            st["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()
                .clone()
        };
        assert_eq!(
            cond("MemoryPressure")["status"],
            "True",
            "50 MB available is pressure"
        );
        assert_eq!(cond("Ready")["status"], "True");
        assert!(cond("Ready")["message"]
            .as_str()
            .unwrap()
            .contains("NOT enforced"));
        assert_eq!(
            st["addresses"][0],
            json!({"type": "InternalIP", "address": "192.0.2.10"})
        );
        let l = labels(&cfg);
        assert_eq!(l["kubernetes.io/hostname"], "n1");
    }
}
