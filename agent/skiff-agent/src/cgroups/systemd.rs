//! The systemd driver: the QoS levels and pods are transient slices that systemd creates
//! on `StartTransientUnit` over the system bus (zbus), `kubepods.slice` →
//! `kubepods-burstable.slice` → `kubepods-burstable-pod<uid with _>.slice`; containers
//! are scopes that skiff-shim starts in the pod's slice. Pod limits are unit properties,
//! so that systemd itself keeps them across reloads. Every D-Bus call has a timeout.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::resources::{shares_to_weight, QosClass, MIN_SHARES};
use super::{CgroupError, CgroupManager, Driver, PodCgroup, Resources, SYSTEMD_MARKER};

/// A unit property as StartTransientUnit takes it.
pub type Property = (String, Value<'static>);

/// Which bus to talk to: the system bus, or an address (tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    System,
    Address(String),
}

impl std::fmt::Display for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bus::System => f.write_str("system bus"),
            Bus::Address(a) => f.write_str(a),
        }
    }
}

pub struct Systemd {
    /// The cgroup2 mount the slices appear under.
    pub root: PathBuf,
    pub bus: Bus,
    /// Present while systemd runs the host; checked before any call.
    pub marker: PathBuf,
    pub timeout: Duration,
    rt: tokio::runtime::Handle,
}

/// The slice name of a pod: uid dashes become underscores, because dashes nest slices.
pub fn pod_slice(pod: &PodCgroup) -> String {
    let uid = pod.uid.replace('-', "_");
    match pod.qos {
        QosClass::Guaranteed => format!("kubepods-pod{uid}.slice"),
        QosClass::Burstable => format!("kubepods-burstable-pod{uid}.slice"),
        QosClass::BestEffort => format!("kubepods-besteffort-pod{uid}.slice"),
    }
}

/// The slices from `kubepods.slice` down to the pod's.
pub fn slice_chain(pod: &PodCgroup) -> Vec<String> {
    let mut out = vec!["kubepods.slice".to_string()];
    if let Some(q) = pod.qos_dir() {
        out.push(format!("kubepods-{q}.slice"));
    }
    out.push(pod_slice(pod));
    out
}

/// The scope skiff-shim makes for a container (`slice:skiff:id` → `skiff-id.scope`).
pub fn container_scope(container_id: &str) -> String {
    format!("skiff-{container_id}.scope")
}

/// systemd's properties for a pod's limits; cpu quota in µs per second, rounded up to
/// systemd's 10 ms granularity as runc does.
pub fn slice_properties(res: &Resources) -> Vec<Property> {
    let mut p: Vec<Property> = Vec::new();
    if let Some(w) = res.cpu_weight() {
        p.push(("CPUWeight".into(), Value::from(w)));
    }
    if let Some(q) = res.cpu_quota.filter(|q| *q > 0) {
        let period = res
            .cpu_period
            .unwrap_or(super::resources::QUOTA_PERIOD)
            .max(1);
        let per_sec = (q as u64 * 1_000_000 / period).div_ceil(10_000) * 10_000;
        p.push(("CPUQuotaPerSecUSec".into(), Value::from(per_sec)));
        p.push(("CPUQuotaPeriodUSec".into(), Value::from(period)));
    }
    if let Some(m) = res.memory_limit {
        p.push(("MemoryMax".into(), Value::from(m as u64)));
    }
    if let Some(n) = res.pids_limit.filter(|n| *n > 0) {
        p.push(("TasksMax".into(), Value::from(n as u64)));
    }
    p
}

fn dbus_err(bus: &Bus, call: &str, e: zbus::Error) -> CgroupError {
    CgroupError::Dbus {
        bus: bus.to_string(),
        call: call.to_string(),
        message: e.to_string(),
    }
}

fn is_error_named(e: &zbus::Error, name: &str) -> bool {
    matches!(e, zbus::Error::MethodError(n, _, _) if n.as_str() == name)
}

impl Systemd {
    pub fn new(root: PathBuf, rt: tokio::runtime::Handle) -> Self {
        Systemd {
            root,
            bus: Bus::System,
            marker: PathBuf::from(SYSTEMD_MARKER),
            timeout: Duration::from_secs(30),
            rt,
        }
    }

    /// Point at another bus and marker (tests).
    pub fn with_bus(mut self, bus: Bus, marker: PathBuf) -> Self {
        self.bus = bus;
        self.marker = marker;
        self
    }

    fn check_running(&self) -> Result<(), CgroupError> {
        if !self.marker.exists() {
            return Err(CgroupError::SystemdNotRunning {
                marker: self.marker.clone(),
            });
        }
        Ok(())
    }

    async fn timed<T>(
        &self,
        call: &str,
        f: impl std::future::Future<Output = zbus::Result<T>>,
    ) -> Result<T, CgroupError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(|e| dbus_err(&self.bus, call, e)),
            Err(_) => Err(CgroupError::Timeout {
                bus: self.bus.to_string(),
                call: call.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    async fn manager(&self) -> Result<zbus::Proxy<'static>, CgroupError> {
        let builder = match &self.bus {
            Bus::System => zbus::connection::Builder::system(),
            Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
        }
        .map_err(|e| dbus_err(&self.bus, "connect", e))?
        .method_timeout(self.timeout);
        let conn = self.timed("connect", builder.build()).await?;
        let proxy = zbus::proxy::Builder::<zbus::Proxy<'static>>::new(&conn)
            .destination("org.freedesktop.systemd1")
            .and_then(|b| b.path("/org/freedesktop/systemd1"))
            .and_then(|b| b.interface("org.freedesktop.systemd1.Manager"))
            .map_err(|e| dbus_err(&self.bus, "proxy", e))?
            .cache_properties(zbus::proxy::CacheProperties::No);
        self.timed("proxy", proxy.build()).await
    }

    /// Run a call that returns a job and wait for the job's JobRemoved signal; the
    /// subscription is made first so that a fast job is not missed.
    async fn run_job<B>(
        &self,
        proxy: &zbus::Proxy<'static>,
        method: &str,
        unit: &str,
        body: &B,
    ) -> Result<Option<()>, CgroupError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let call = format!("{method} {unit}");
        // Without Subscribe systemd may not broadcast job signals; an error here only
        // means someone already subscribed this connection.
        let _ = self
            .timed("Subscribe", proxy.call::<_, _, ()>("Subscribe", &()))
            .await;
        let mut removed = self
            .timed("JobRemoved", proxy.receive_signal("JobRemoved"))
            .await?;
        let answer = tokio::time::timeout(self.timeout, proxy.call(method, body)).await;
        let job: OwnedObjectPath = match answer {
            Ok(Ok(j)) => j,
            // Already there (start) or already gone (stop): nothing to wait for.
            Ok(Err(e))
                if is_error_named(&e, "org.freedesktop.systemd1.UnitExists")
                    || is_error_named(&e, "org.freedesktop.systemd1.NoSuchUnit") =>
            {
                return Ok(None)
            }
            Ok(Err(e)) => return Err(dbus_err(&self.bus, &call, e)),
            Err(_) => {
                return Err(CgroupError::Timeout {
                    bus: self.bus.to_string(),
                    call,
                    timeout: self.timeout,
                })
            }
        };
        let wait = async {
            while let Some(msg) = removed.next().await {
                let Ok((_, path, _, result)) = msg
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return Some(result);
                }
            }
            None
        };
        let result = tokio::time::timeout(self.timeout, wait)
            .await
            .map_err(|_| CgroupError::Timeout {
                bus: self.bus.to_string(),
                call: format!("{call} (job {})", job.as_str()),
                timeout: self.timeout,
            })?;
        match result.as_deref() {
            Some("done") => Ok(Some(())),
            other => Err(CgroupError::Dbus {
                bus: self.bus.to_string(),
                call,
                message: format!("job ended with {:?}", other.unwrap_or("no signal")),
            }),
        }
    }

    /// Start a slice, or update the properties of one that already exists.
    async fn ensure_slice(
        &self,
        proxy: &zbus::Proxy<'static>,
        name: &str,
        mut props: Vec<Property>,
    ) -> Result<(), CgroupError> {
        let base: Vec<Property> = vec![
            ("Description".into(), Value::from(format!("skiff {name}"))),
            ("DefaultDependencies".into(), Value::from(false)),
        ];
        let extra = props.clone();
        let mut all = base;
        all.append(&mut props);
        let aux: Vec<(String, Vec<Property>)> = Vec::new();
        let started = self
            .run_job(
                proxy,
                "StartTransientUnit",
                name,
                &(name, "replace", &all, &aux),
            )
            .await?;
        if started.is_none() && !extra.is_empty() {
            let call = format!("SetUnitProperties {name}");
            self.timed(
                &call,
                proxy.call::<_, _, ()>("SetUnitProperties", &(name, true, &extra)),
            )
            .await?;
        }
        Ok(())
    }

    fn slice_dir(&self, pod: &PodCgroup) -> PathBuf {
        let mut p = self.root.clone();
        for s in slice_chain(pod) {
            p.push(s);
        }
        p
    }
}

impl CgroupManager for Systemd {
    fn driver(&self) -> Driver {
        Driver::Systemd
    }

    fn shim_root(&self) -> PathBuf {
        self.root.clone()
    }

    fn cgroup_parent(&self, pod: &PodCgroup) -> String {
        pod_slice(pod)
    }

    fn pod_dir(&self, pod: &PodCgroup) -> PathBuf {
        self.slice_dir(pod)
    }

    fn container_dir(&self, pod: &PodCgroup, container_id: &str) -> PathBuf {
        self.slice_dir(pod).join(container_scope(container_id))
    }

    fn ensure_pod(&self, pod: &PodCgroup, res: &Resources) -> Result<Vec<String>, CgroupError> {
        self.check_running()?;
        let chain = slice_chain(pod);
        let props = slice_properties(res);
        self.rt.block_on(async {
            let proxy = self.manager().await?;
            for (i, slice) in chain.iter().enumerate() {
                let p = if i + 1 == chain.len() {
                    props.clone()
                } else if slice == "kubepods-besteffort.slice" {
                    vec![(
                        "CPUWeight".to_string(),
                        Value::from(shares_to_weight(MIN_SHARES)),
                    )]
                } else {
                    Vec::new()
                };
                self.ensure_slice(&proxy, slice, p).await?;
            }
            Ok::<(), CgroupError>(())
        })?;
        // systemd accepts properties whose controller the host lacks: say what is absent.
        let dir = self.slice_dir(pod);
        Ok(res
            .cgroup_files()
            .into_iter()
            .filter(|(f, _)| f.contains('.') && !dir.join(f).exists())
            .map(|(f, v)| {
                let c = f.split('.').next().unwrap_or_default().to_string();
                format!("{f}={v}: {c} controller not enabled for {}", dir.display())
            })
            .collect())
    }

    fn remove_pod(&self, pod: &PodCgroup) -> Result<(), CgroupError> {
        self.check_running()?;
        let name = pod_slice(pod);
        self.rt.block_on(async {
            let proxy = self.manager().await?;
            self.run_job(&proxy, "StopUnit", &name, &(name.as_str(), "replace"))
                .await
                .map(|_| ())
        })
    }
}
