//! Scores: among the nodes that pass the filters, which is best? Each score is 0..=100.

use super::snapshot::{NodeInfo, PodInfo};

pub const MAX_SCORE: i64 = 100;

/// Weights of the scores in the total (kube: NodeResourcesFit 1, BalancedAllocation 1,
/// PodTopologySpread 2, which is what spreading by owner stands in for).
pub const LEAST_ALLOCATED_WEIGHT: i64 = 1;
pub const BALANCED_ALLOCATION_WEIGHT: i64 = 1;
pub const OWNER_SPREAD_WEIGHT: i64 = 2;

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

/// Pods of the pod's controller owner on each candidate node → 0..=100, fewer is better:
/// 100 × (most − here) / most, all 100 when no candidate has any.
pub fn owner_spread(counts: &[u32]) -> Vec<i64> {
    let most = counts.iter().copied().max().unwrap_or(0) as i64;
    counts
        .iter()
        .map(|c| {
            if most == 0 {
                MAX_SCORE
            } else {
                MAX_SCORE * (most - *c as i64) / most
            }
        })
        .collect()
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
