//! Resource quantities as the scheduler counts them: cpu in millicores, everything else in
//! whole units (bytes, pods, devices), and a pod's effective request computed the way
//! kube-scheduler does (init containers' maximum, restartable sidecars added, overhead).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What a container without a cpu request counts as when nodes are scored (not filtered).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// What a container without a memory request counts as when nodes are scored: 200 MiB.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// The value of a Kubernetes quantity ("100m", "1.5Gi", "2e3") in thousandths, rounded up.
/// `None` for text that is not a quantity or does not fit.
pub fn parse_milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let split = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let digits = whole.chars().chain(fraction.chars());
    let mut mantissa: i128 = 0;
    for d in digits {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(d.to_digit(10)? as i128)?;
    }
    let mut exp10: i32 = -(fraction.len() as i32);
    let mut pow2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => pow2 = 10,
        "Mi" => pow2 = 20,
        "Gi" => pow2 = 30,
        "Ti" => pow2 = 40,
        "Pi" => pow2 = 50,
        "Ei" => pow2 = 60,
        other => {
            let exponent = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))?;
            exp10 += exponent.parse::<i32>().ok()?;
        }
    }
    let mut value = mantissa.checked_mul(1i128.checked_shl(pow2)?)?;
    let scale = exp10 + 3;
    if scale >= 0 {
        value = value.checked_mul(10i128.checked_pow(scale as u32)?)?;
    } else {
        let divisor = 10i128
            .checked_pow(scale.unsigned_abs())
            .unwrap_or(i128::MAX);
        value = value / divisor + i128::from(value % divisor != 0);
    }
    Some(if negative { -value } else { value })
}

fn clamp(v: i128) -> i64 {
    v.clamp(0, i64::MAX as i128) as i64
}

/// Millicores of a cpu quantity; 0 when unparsable.
pub fn milli_value(q: &Quantity) -> i64 {
    clamp(parse_milli(&q.0).unwrap_or(0))
}

/// Whole units (rounded up) of a quantity; 0 when unparsable.
pub fn unit_value(q: &Quantity) -> i64 {
    let milli = parse_milli(&q.0).unwrap_or(0);
    clamp(milli / 1000 + i128::from(milli % 1000 > 0))
}

/// Resources the scheduler accounts for. `scalar` holds extended resources (`vendor/name`)
/// and hugepages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    pub scalar: BTreeMap<String, i64>,
}

fn is_scalar(name: &str) -> bool {
    name.contains('/') || name.starts_with("hugepages-")
}

impl Resources {
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Self {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => r.milli_cpu = milli_value(q),
                "memory" => r.memory = unit_value(q),
                "ephemeral-storage" => r.ephemeral_storage = unit_value(q),
                "pods" => r.pods = unit_value(q),
                other if is_scalar(other) => {
                    r.scalar.insert(other.to_string(), unit_value(q));
                }
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        self.pods = self.pods.saturating_add(other.pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Field by field maximum.
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        self.pods = self.pods.max(other.pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }
}

fn is_restartable(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Combines per-container figures like kube: regular containers and restartable init
/// containers (sidecars) run together; each ordinary init container runs alone next to the
/// sidecars started before it; the pod needs the larger of the two, plus overhead.
fn combine(pod: &Pod, per_container: impl Fn(&Container) -> Resources) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&per_container(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let req = per_container(c);
        let during = if is_restartable(c) {
            total.add(&req);
            sidecars.add(&req);
            sidecars.clone()
        } else {
            let mut r = req;
            r.add(&sidecars);
            r
        };
        init_max.max_with(&during);
    }
    total.max_with(&init_max);
    if let Some(overhead) = spec.overhead.as_ref() {
        total.add(&Resources::from_list(Some(overhead)));
    }
    total
}

/// The pod's request as the filters see it (`pods` is 1: the pod itself).
pub fn pod_requests(pod: &Pod) -> Resources {
    let mut r = combine(pod, |c| {
        let mut r = Resources::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
        r.pods = 0;
        r
    });
    r.pods = 1;
    r
}

/// The (cpu, memory) the scores see: containers without a request count as the defaults.
pub fn pod_non_zero_requests(pod: &Pod) -> (i64, i64) {
    let r = combine(pod, |c| {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let cpu = requests
            .and_then(|m| m.get("cpu"))
            .map(milli_value)
            .unwrap_or(DEFAULT_MILLI_CPU_REQUEST);
        let memory = requests
            .and_then(|m| m.get("memory"))
            .map(unit_value)
            .unwrap_or(DEFAULT_MEMORY_REQUEST);
        Resources {
            milli_cpu: cpu,
            memory,
            ..Default::default()
        }
    });
    (r.milli_cpu, r.memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    fn container(cpu: Option<&str>, mem: Option<&str>, restart: Option<&str>) -> Container {
        let mut req = BTreeMap::new();
        if let Some(c) = cpu {
            req.insert("cpu".to_string(), Quantity(c.into()));
        }
        if let Some(m) = mem {
            req.insert("memory".to_string(), Quantity(m.into()));
        }
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(req),
                ..Default::default()
            }),
            restart_policy: restart.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("1.5Gi"), Some(1536 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("2k"), Some(2_000_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("1E-3"), Some(1));
        assert_eq!(parse_milli("1n"), Some(1), "rounds up");
        assert_eq!(parse_milli(".5"), Some(500));
        assert_eq!(parse_milli("-2"), Some(-2000));
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1.2.3"), None);
        assert_eq!(parse_milli("1Qi"), None);
        assert_eq!(unit_value(&Quantity("128Mi".into())), 128 * 1024 * 1024);
        assert_eq!(unit_value(&Quantity("1500m".into())), 2);
        assert_eq!(milli_value(&Quantity("2".into())), 2000);
    }

    #[test]
    fn init_containers_count_like_kube() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![
                    container(Some("100m"), Some("100Mi"), None),
                    container(Some("200m"), None, None),
                ],
                init_containers: Some(vec![
                    container(Some("1"), Some("50Mi"), None),
                    container(Some("50m"), Some("10Mi"), Some("Always")),
                    container(Some("400m"), None, None),
                ]),
                overhead: Some([("cpu".to_string(), Quantity("10m".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = pod_requests(&pod);
        // running: 100+200+50 (sidecar) = 350m; init: max(1000, 400+50) = 1000m; + 10m overhead
        assert_eq!(r.milli_cpu, 1010);
        // memory: running 100Mi+10Mi; init max(50Mi, 10Mi+0) → 110Mi
        assert_eq!(r.memory, 110 * 1024 * 1024);
        assert_eq!(r.pods, 1);
        let (cpu, mem) = pod_non_zero_requests(&pod);
        assert_eq!(cpu, 1010);
        // the second container has no memory request: 200Mi default
        assert_eq!(mem, 310 * 1024 * 1024);
    }
}
