//! From a pod's requests and limits to cgroup settings, with kubelet's numbers: the QoS
//! class (`GetPodQOS`), a container's OCI `linux.resources`
//! (`generateLinuxContainerResources`) and the pod cgroup's limits
//! (`ResourceConfigForPod`). Pure functions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::CgroupError;
use crate::quantity::Quantity;

/// cgroup v1 cpu.shares bounds and scale, which kubelet still computes in.
pub const MIN_SHARES: u64 = 2;
pub const MAX_SHARES: u64 = 262_144;
pub const SHARES_PER_CPU: u64 = 1024;
/// The CFS period kubelet uses (100 ms), and the smallest quota it writes (1 ms).
pub const QUOTA_PERIOD: u64 = 100_000;
pub const MIN_QUOTA: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// kubelet's `MilliCPUToShares`: 1024 shares per CPU, clamped to [2, 262144].
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    ((milli as u64).saturating_mul(SHARES_PER_CPU) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// kubelet's `MilliCPUToQuota`: the share of `period` the limit allows, at least 1 ms;
/// 0 means no limit.
pub fn milli_cpu_to_quota(milli: i64, period: u64) -> i64 {
    if milli <= 0 {
        return 0;
    }
    (milli.saturating_mul(period as i64) / 1000).max(MIN_QUOTA)
}

/// The cgroup v2 cpu.weight for cgroup v1 shares (runc's and kubelet's conversion from
/// [2, 262144] onto [1, 10000]).
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((s - 2) * 9999) / 262_142
}

/// What one cgroup gets, in OCI terms (cpu shares, quota and period, memory and pids
/// limits) plus raw cgroup v2 files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
    pub unified: BTreeMap<String, String>,
}

impl Resources {
    pub fn cpu_weight(&self) -> Option<u64> {
        self.cpu_shares.map(shares_to_weight)
    }

    /// `linux.resources` of an OCI runtime config.
    pub fn to_oci(&self) -> Value {
        let mut r = json!({});
        let mut cpu = json!({});
        if let Some(s) = self.cpu_shares {
            cpu["shares"] = json!(s);
        }
        if let Some(q) = self.cpu_quota {
            cpu["quota"] = json!(q);
        }
        if let Some(p) = self.cpu_period {
            cpu["period"] = json!(p);
        }
        if cpu.as_object().is_some_and(|o| !o.is_empty()) {
            r["cpu"] = cpu;
        }
        if let Some(m) = self.memory_limit {
            r["memory"] = json!({"limit": m});
        }
        if let Some(p) = self.pids_limit {
            r["pids"] = json!({"limit": p});
        }
        if !self.unified.is_empty() {
            r["unified"] = json!(self.unified);
        }
        r
    }

    /// The cgroup v2 files and values these settings become.
    pub fn cgroup_files(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(w) = self.cpu_weight() {
            out.push(("cpu.weight".to_string(), w.to_string()));
        }
        if let Some(q) = self.cpu_quota {
            let quota = if q > 0 { q.to_string() } else { "max".into() };
            let period = self.cpu_period.unwrap_or(QUOTA_PERIOD);
            out.push(("cpu.max".to_string(), format!("{quota} {period}")));
        }
        if let Some(m) = self.memory_limit {
            out.push(("memory.max".to_string(), m.to_string()));
        }
        if let Some(p) = self.pids_limit {
            let v = if p > 0 { p.to_string() } else { "max".into() };
            out.push(("pids.max".to_string(), v));
        }
        out.retain(|(f, _)| !self.unified.contains_key(f));
        out.extend(self.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
}

/// The cpu (in millicores) and memory (in bytes) of a resource list; absent or zero is None.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuMem {
    pub cpu_milli: Option<i64>,
    pub memory: Option<i64>,
}

fn quantity(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    name: &str,
    milli: bool,
    owner: &str,
) -> Result<Option<i64>, CgroupError> {
    let Some(q) = list.and_then(|l| l.get(name)) else {
        return Ok(None);
    };
    let bad = |message: String| CgroupError::Quantity {
        owner: owner.to_string(),
        resource: name.to_string(),
        message,
    };
    let parsed = Quantity::parse(&q.0).map_err(|e| bad(e.to_string()))?;
    let v = if milli {
        parsed.milli_value()
    } else {
        parsed.value()
    }
    .ok_or_else(|| bad(format!("{:?} is out of range", q.0)))?;
    if v < 0 {
        return Err(bad(format!("{:?} is negative", q.0)));
    }
    let v = i64::try_from(v).map_err(|_| bad(format!("{:?} is out of range", q.0)))?;
    Ok((v > 0).then_some(v))
}

/// A container's limits and requests; a request left out defaults to the limit, as the
/// API server's defaulting does.
pub fn container_cpu_mem(c: &Container) -> Result<(CpuMem, CpuMem), CgroupError> {
    let owner = format!("container {}", c.name);
    let res = c.resources.as_ref();
    let lim = res.and_then(|r| r.limits.as_ref());
    let req = res.and_then(|r| r.requests.as_ref());
    let limits = CpuMem {
        cpu_milli: quantity(lim, "cpu", true, &owner)?,
        memory: quantity(lim, "memory", false, &owner)?,
    };
    let requests = CpuMem {
        cpu_milli: match req.is_some_and(|r| r.contains_key("cpu")) {
            true => quantity(req, "cpu", true, &owner)?,
            false => limits.cpu_milli,
        },
        memory: match req.is_some_and(|r| r.contains_key("memory")) {
            true => quantity(req, "memory", false, &owner)?,
            false => limits.memory,
        },
    };
    Ok((requests, limits))
}

fn all_containers(pod: &Pod) -> Vec<&Container> {
    let spec = pod.spec.as_ref();
    spec.map(|s| s.containers.iter())
        .into_iter()
        .flatten()
        .chain(
            spec.and_then(|s| s.init_containers.as_ref())
                .into_iter()
                .flatten(),
        )
        .collect()
}

/// kubelet's `ComputePodQOS`: BestEffort without any cpu/memory request or limit,
/// Guaranteed when every container limits both and requests equal limits in total,
/// else Burstable.
pub fn qos_class(pod: &Pod) -> Result<QosClass, CgroupError> {
    let (mut req_cpu, mut req_mem, mut lim_cpu, mut lim_mem) = (None, None, None, None);
    let add = |acc: &mut Option<i64>, v: Option<i64>| {
        if let Some(v) = v {
            *acc = Some(acc.unwrap_or(0).saturating_add(v));
        }
    };
    let mut guaranteed = true;
    for c in all_containers(pod) {
        let (r, l) = container_cpu_mem(c)?;
        add(&mut req_cpu, r.cpu_milli);
        add(&mut req_mem, r.memory);
        add(&mut lim_cpu, l.cpu_milli);
        add(&mut lim_mem, l.memory);
        if l.cpu_milli.is_none() || l.memory.is_none() {
            guaranteed = false;
        }
    }
    let requests = [req_cpu, req_mem];
    let limits = [lim_cpu, lim_mem];
    if requests.iter().all(Option::is_none) && limits.iter().all(Option::is_none) {
        return Ok(QosClass::BestEffort);
    }
    let equal = requests
        .iter()
        .zip(limits.iter())
        .all(|(r, l)| r.is_none() || r == l);
    let same_count = requests.iter().filter(|r| r.is_some()).count()
        == limits.iter().filter(|l| l.is_some()).count();
    if guaranteed && equal && same_count {
        Ok(QosClass::Guaranteed)
    } else {
        Ok(QosClass::Burstable)
    }
}

/// kubelet's container resources: cpu shares from the cpu request (the limit when only
/// that is given, 2 shares without either), a CFS quota over a 100 ms period from the
/// cpu limit, memory.max from the memory limit, and no swap (kubelet's NoSwap).
pub fn container_resources(c: &Container) -> Result<Resources, CgroupError> {
    let (requests, limits) = container_cpu_mem(c)?;
    let mut r = Resources {
        // A zero request with a limit counts as the limit (kubelet's IsZero check).
        cpu_shares: Some(milli_cpu_to_shares(
            requests.cpu_milli.or(limits.cpu_milli).unwrap_or(0),
        )),
        memory_limit: limits.memory,
        ..Default::default()
    };
    if let Some(l) = limits.cpu_milli {
        r.cpu_quota = Some(milli_cpu_to_quota(l, QUOTA_PERIOD));
        r.cpu_period = Some(QUOTA_PERIOD);
    }
    r.unified.insert("memory.swap.max".into(), "0".into());
    Ok(r)
}

/// The effective total of a pod (kubelet's `PodRequests`/`PodLimits`): app containers
/// run together and add up, init containers run one at a time, so the larger of the
/// two counts; the pod's overhead comes on top.
fn pod_total(pod: &Pod, pick: impl Fn(&(CpuMem, CpuMem)) -> CpuMem) -> Result<CpuMem, CgroupError> {
    let spec = pod.spec.as_ref();
    let mut sum = CpuMem::default();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or(&[]) {
        let v = pick(&container_cpu_mem(c)?);
        sum.cpu_milli = add_opt(sum.cpu_milli, v.cpu_milli);
        sum.memory = add_opt(sum.memory, v.memory);
    }
    for c in spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[])
    {
        let v = pick(&container_cpu_mem(c)?);
        sum.cpu_milli = max_opt(sum.cpu_milli, v.cpu_milli);
        sum.memory = max_opt(sum.memory, v.memory);
    }
    let overhead = spec.and_then(|s| s.overhead.as_ref());
    let owner = "pod overhead";
    sum.cpu_milli = add_opt(sum.cpu_milli, quantity(overhead, "cpu", true, owner)?);
    sum.memory = add_opt(sum.memory, quantity(overhead, "memory", false, owner)?);
    Ok(sum)
}

fn add_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (None, None) => None,
        _ => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (None, None) => None,
        _ => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
    }
}

/// kubelet's `ResourceConfigForPod`: Guaranteed pods get shares, quota and memory.max
/// from their totals; Burstable ones get shares, and quota or memory.max only when every
/// container declares that limit; BestEffort pods get the minimum shares. pids.max is
/// `--pod-max-pids` when positive.
pub fn pod_resources(pod: &Pod, pod_max_pids: i64) -> Result<Resources, CgroupError> {
    let qos = qos_class(pod)?;
    let requests = pod_total(pod, |(r, _)| *r)?;
    let limits = pod_total(pod, |(_, l)| *l)?;
    let mut cpu_limits_declared = true;
    let mut memory_limits_declared = true;
    for c in all_containers(pod) {
        let (_, l) = container_cpu_mem(c)?;
        cpu_limits_declared &= l.cpu_milli.is_some();
        memory_limits_declared &= l.memory.is_some();
    }
    let shares = milli_cpu_to_shares(requests.cpu_milli.unwrap_or(0));
    let quota = milli_cpu_to_quota(limits.cpu_milli.unwrap_or(0), QUOTA_PERIOD);
    let mut r = Resources::default();
    match qos {
        QosClass::Guaranteed => {
            r.cpu_shares = Some(shares);
            r.cpu_quota = Some(quota);
            r.cpu_period = Some(QUOTA_PERIOD);
            r.memory_limit = limits.memory;
        }
        QosClass::Burstable => {
            r.cpu_shares = Some(shares);
            if cpu_limits_declared {
                r.cpu_quota = Some(quota);
                r.cpu_period = Some(QUOTA_PERIOD);
            }
            if memory_limits_declared {
                r.memory_limit = limits.memory;
            }
        }
        QosClass::BestEffort => r.cpu_shares = Some(MIN_SHARES),
    }
    if pod_max_pids > 0 {
        r.pids_limit = Some(pod_max_pids);
    }
    Ok(r)
}
