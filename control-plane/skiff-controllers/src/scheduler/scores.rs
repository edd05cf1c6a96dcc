//! Scores: among the nodes that pass the filters, which is best? Each score is 0..=100.

use k8s_openapi::api::core::v1::Pod;

use super::filters::{term_matches, tolerates};
use super::snapshot::{NodeInfo, PodInfo};

pub const MAX_SCORE: i64 = 100;

/// Weights of the scores in the total, kube's defaults: NodeResourcesFit 1,
/// BalancedAllocation 1, PodTopologySpread 2 (which spreading by owner stands in for),
/// TaintToleration 3, NodeAffinity 2.
pub const LEAST_ALLOCATED_WEIGHT: i64 = 1;
pub const BALANCED_ALLOCATION_WEIGHT: i64 = 1;
pub const OWNER_SPREAD_WEIGHT: i64 = 2;
pub const TAINT_TOLERATION_WEIGHT: i64 = 3;
pub const NODE_AFFINITY_WEIGHT: i64 = 2;

fn free_share(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    ((capacity - requested) as i128 * MAX_SCORE as i128 / capacity as i128) as i64
}

/// The more cpu and memory stay free after placing the pod, the better (equal weights).
/// Containers without requests count as 100m / 200Mi here.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let cpu = free_share(
        node.non_zero_cpu.saturating_add(pod.non_zero_cpu),
        node.allocatable.milli_cpu,
    );
    let memory = free_share(
        node.non_zero_memory.saturating_add(pod.non_zero_memory),
        node.allocatable.memory,
    );
    (cpu + memory) / 2
}

fn fraction(requested: i64, capacity: i64) -> f64 {
    if capacity <= 0 {
        return 1.0;
    }
    (requested as f64 / capacity as f64).min(1.0)
}

/// The closer the cpu and memory fractions in use are to each other after placing the pod,
/// the better: 100 × (1 − |cpu − memory| / 2).
pub fn balanced_allocation(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let cpu = fraction(
        node.requested
            .milli_cpu
            .saturating_add(pod.requests.milli_cpu),
        node.allocatable.milli_cpu,
    );
    let memory = fraction(
        node.requested.memory.saturating_add(pod.requests.memory),
        node.allocatable.memory,
    );
    let deviation = (cpu - memory).abs() / 2.0;
    ((1.0 - deviation) * MAX_SCORE as f64) as i64
}

/// Scales raw per-node figures to 0..=100 by the largest (kube's DefaultNormalizeScore);
/// `reverse` when less is better. All zero figures give 0 (or 100 reversed).
pub fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let most = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|r| {
            let scaled = if most > 0 { MAX_SCORE * r / most } else { 0 };
            if reverse {
                MAX_SCORE - scaled
            } else {
                scaled
            }
        })
        .collect()
}

/// Pods of the pod's controller owner on each candidate node → 0..=100, fewer is better:
/// 100 × (most − here) / most, all 100 when no candidate has any.
pub fn owner_spread(counts: &[u32]) -> Vec<i64> {
    normalize(&counts.iter().map(|c| *c as i64).collect::<Vec<_>>(), true)
}

/// PreferNoSchedule taints of the node the pod does not tolerate (fewer is better; to be
/// normalized reversed). Only tolerations with no effect or PreferNoSchedule count.
pub fn intolerable_soft_taints(pod: &Pod, node: &NodeInfo) -> i64 {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    node.soft_taints
        .iter()
        .filter(|taint| {
            !tolerations.iter().any(|t| {
                t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
                    && tolerates(t, taint)
            })
        })
        .count() as i64
}

/// Sum of the weights of the pod's preferred node affinity terms the node matches (more is
/// better; to be normalized).
pub fn preferred_node_affinity(pod: &Pod, node: &NodeInfo) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|terms| {
            terms
                .iter()
                .filter(|t| t.weight > 0 && term_matches(&t.preference, node))
                .map(|t| t.weight as i64)
                .sum()
        })
        .unwrap_or(0)
}

/// How many pods with `pod`'s controller owner are on `node`.
pub fn owner_count(pod: &PodInfo, node: &NodeInfo) -> u32 {
    pod.owner_uid
        .as_ref()
        .and_then(|o| node.owners.get(o))
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::testutil::*;
    use super::*;

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let s = snapshot(
            &[node("busy", "4", "8Gi"), node("idle", "4", "8Gi")],
            &[on(pod("a", "2", "4Gi"), "busy")],
        );
        let p = PodInfo::new(&pod("p", "1", "2Gi"));
        let busy = least_allocated(&p, &s.nodes[0]);
        let idle = least_allocated(&p, &s.nodes[1]);
        assert_eq!(idle, 75);
        assert_eq!(busy, 25);
        // requests above capacity score 0, never negative
        let huge = PodInfo::new(&pod("h", "10", "100Gi"));
        assert_eq!(least_allocated(&huge, &s.nodes[1]), 0);
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        let s = snapshot(&[node("n", "4", "4Gi")], &[]);
        let even = PodInfo::new(&pod("e", "2", "2Gi"));
        let skewed = PodInfo::new(&pod("s", "4", "0"));
        assert_eq!(balanced_allocation(&even, &s.nodes[0]), 100);
        assert_eq!(balanced_allocation(&skewed, &s.nodes[0]), 50);
    }

    #[test]
    fn soft_taints_and_preferred_affinity() {
        use k8s_openapi::api::core::v1::{
            Affinity, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm,
            PreferredSchedulingTerm, Taint, Toleration,
        };
        let mut soft = node("soft", "1", "1Gi");
        soft.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "spot".into(),
            value: None,
            effect: "PreferNoSchedule".into(),
            time_added: None,
        }]);
        let mut fast = node("fast", "1", "1Gi");
        fast.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("disk".into(), "ssd".into());
        let s = snapshot(&[fast, soft], &[]);
        let mut p = pod("p", "", "");
        assert_eq!(intolerable_soft_taints(&p, &s.nodes[0]), 0);
        assert_eq!(intolerable_soft_taints(&p, &s.nodes[1]), 1);
        assert_eq!(normalize(&[0, 1], true), vec![100, 0]);
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("spot".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert_eq!(intolerable_soft_taints(&p, &s.nodes[1]), 0);

        let term = |weight, value: &str| PreferredSchedulingTerm {
            weight,
            preference: NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: "disk".into(),
                    operator: "In".into(),
                    values: Some(vec![value.into()]),
                }]),
                match_fields: None,
            },
        };
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    term(30, "ssd"),
                    term(5, "hdd"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(preferred_node_affinity(&p, &s.nodes[0]), 30);
        assert_eq!(preferred_node_affinity(&p, &s.nodes[1]), 0);
        assert_eq!(normalize(&[30, 0], false), vec![100, 0]);
        assert_eq!(normalize(&[0, 0], false), vec![0, 0]);
    }

    #[test]
    fn spread_by_owner() {
        assert_eq!(owner_spread(&[0, 0, 0]), vec![100, 100, 100]);
        assert_eq!(owner_spread(&[2, 1, 0]), vec![0, 50, 100]);
        let s = snapshot(
            &[node("n1", "1", "1Gi"), node("n2", "1", "1Gi")],
            &[
                on(owned(pod("a", "", ""), "rs"), "n1"),
                on(owned(pod("b", "", ""), "other"), "n2"),
            ],
        );
        let p = PodInfo::new(&owned(pod("p", "", ""), "rs"));
        assert_eq!(owner_count(&p, &s.nodes[0]), 1);
        assert_eq!(owner_count(&p, &s.nodes[1]), 0);
        assert_eq!(
            owner_count(&PodInfo::new(&pod("lone", "", "")), &s.nodes[0]),
            0
        );
    }
}
