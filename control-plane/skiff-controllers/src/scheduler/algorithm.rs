//! One scheduling decision: filter every node, score the survivors, pick the best (ties at
//! random). A pure function of the pod and the snapshot.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use rand::Rng;

use super::filters::{run_filters, AntiAffinityState, Reason};
use super::scores;
use super::snapshot::{NodeInfo, PodInfo, Snapshot};

/// No node fits: per reason, how many nodes gave it (kube's FitError).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitError {
    pub num_nodes: usize,
    /// Reason text → number of nodes that gave it.
    pub reasons: BTreeMap<String, usize>,
    /// Nodes where evicting lower-priority pods could never help.
    pub unresolvable_nodes: usize,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        let n = self.num_nodes;
        // kube sorts the "<count> <reason>" strings themselves.
        let mut histogram: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, c)| format!("{c} {r}"))
            .collect();
        histogram.sort();
        write!(f, "0/{n} nodes are available: {}.", histogram.join(", "))?;
        // No preemption here: nodes that some eviction could free report that no victims were
        // found, the others that preemption cannot help, as kube words it.
        let mut preemption = Vec::new();
        let resolvable = n - self.unresolvable_nodes;
        if resolvable > 0 {
            preemption.push(format!(
                "{resolvable} No preemption victims found for incoming pod"
            ));
        }
        if self.unresolvable_nodes > 0 {
            preemption.push(format!(
                "{} Preemption is not helpful for scheduling",
                self.unresolvable_nodes
            ));
        }
        preemption.sort();
        write!(
            f,
            " preemption: 0/{n} nodes are available: {}.",
            preemption.join(", ")
        )
    }
}

impl std::error::Error for FitError {}

/// Picks a node for `pod` with a thread-local random source for ties.
pub fn schedule(pod: &Pod, snapshot: &Snapshot) -> Result<String, FitError> {
    schedule_with(pod, &PodInfo::new(pod), snapshot, &mut rand::thread_rng())
}

/// Picks a node for `pod` (whose facts are `info`): the best total score among the nodes
/// that pass every filter; ties broken uniformly at random.
pub fn schedule_with(
    pod: &Pod,
    info: &PodInfo,
    snapshot: &Snapshot,
    rng: &mut impl Rng,
) -> Result<String, FitError> {
    let state = AntiAffinityState::compute(info, snapshot);
    let mut feasible = Vec::with_capacity(snapshot.nodes.len());
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut unresolvable_nodes = 0;
    for (i, node) in snapshot.nodes.iter().enumerate() {
        match run_filters(pod, info, &state, node) {
            Ok(()) => feasible.push(i),
            Err(failed) => {
                if failed.iter().any(Reason::unresolvable) {
                    unresolvable_nodes += 1;
                }
                for r in failed {
                    *reasons.entry(r.to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        return Err(FitError {
            num_nodes: snapshot.nodes.len(),
            reasons,
            unresolvable_nodes,
        });
    }
    if feasible.len() == 1 {
        return Ok(snapshot.nodes[feasible[0]].name.clone());
    }
    let nodes: Vec<&NodeInfo> = feasible.iter().map(|i| &snapshot.nodes[*i]).collect();
    let counts: Vec<u32> = nodes.iter().map(|n| scores::owner_count(info, n)).collect();
    let spread = scores::owner_spread(&counts);
    let soft: Vec<i64> = nodes
        .iter()
        .map(|n| scores::intolerable_soft_taints(pod, n))
        .collect();
    let soft = scores::normalize(&soft, true);
    let preferred: Vec<i64> = nodes
        .iter()
        .map(|n| scores::preferred_node_affinity(pod, n))
        .collect();
    let preferred = scores::normalize(&preferred, false);
    let mut best = i64::MIN;
    let mut chosen = feasible[0];
    let mut ties = 0u32;
    for (k, (i, node)) in feasible.iter().zip(&nodes).enumerate() {
        let total = scores::LEAST_ALLOCATED_WEIGHT * scores::least_allocated(info, node)
            + scores::BALANCED_ALLOCATION_WEIGHT * scores::balanced_allocation(info, node)
            + scores::OWNER_SPREAD_WEIGHT * spread[k]
            + scores::TAINT_TOLERATION_WEIGHT * soft[k]
            + scores::NODE_AFFINITY_WEIGHT * preferred[k];
        if total > best {
            best = total;
            chosen = *i;
            ties = 1;
        } else if total == best {
            // Reservoir sampling: each of the tied nodes ends up chosen with equal chance.
            ties += 1;
            if rng.gen_range(0..ties) == 0 {
                chosen = *i;
            }
        }
    }
    Ok(snapshot.nodes[chosen].name.clone())
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::testutil::*;
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Taint};
    use std::collections::HashSet;
    use std::sync::Arc;

    fn control_plane(name: &str) -> Node {
        let mut n = node(name, "4", "8Gi");
        n.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "node-role.kubernetes.io/control-plane".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        }]);
        n
    }

    #[test]
    fn fit_error_reads_like_kube() {
        let s = snapshot(
            &[
                node("w1", "1", "4Gi"),
                control_plane("cp1"),
                control_plane("cp2"),
            ],
            &[],
        );
        let err = schedule(&pod("big", "2", ""), &s).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }. \
             preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
        let s = snapshot(
            &[node("w1", "1", "4Gi"), control_plane("cp1")],
            &[on(pod("a", "800m", ""), "w1")],
        );
        let err = schedule(&pod("p", "500m", ""), &s).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }. \
             preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            schedule(&pod("p", "", ""), &Snapshot::new(Vec::<Arc<Node>>::new()))
                .unwrap_err()
                .to_string(),
            "no nodes available to schedule pods"
        );
        // strings sort as kube sorts them: "12 …" before "2 …"
        let e = FitError {
            num_nodes: 14,
            reasons: [("a".to_string(), 2), ("b".to_string(), 12)].into(),
            unresolvable_nodes: 14,
        };
        assert!(e
            .to_string()
            .starts_with("0/14 nodes are available: 12 b, 2 a."));
    }

    #[test]
    fn spreads_one_owner_over_nodes() {
        let nodes = [
            node("n1", "4", "8Gi"),
            node("n2", "4", "8Gi"),
            node("n3", "4", "8Gi"),
        ];
        let mut s = snapshot(&nodes, &[]);
        let mut used = HashSet::new();
        for i in 0..3 {
            let p = owned(pod(&format!("web-{i}"), "100m", "128Mi"), "rs");
            let name = schedule(&p, &s).unwrap();
            used.insert(name.clone());
            s.add_pod(&name, Arc::new(PodInfo::new(&p)));
        }
        assert_eq!(used.len(), 3);
    }

    #[test]
    fn ties_are_random_and_fill_respects_capacity() {
        let nodes: Vec<Node> = (0..4).map(|i| node(&format!("n{i}"), "1", "1Gi")).collect();
        let s = snapshot(&nodes, &[]);
        let picks: HashSet<String> = (0..200)
            .map(|_| schedule(&pod("p", "100m", "100Mi"), &s).unwrap())
            .collect();
        assert!(picks.len() > 1, "equal nodes are picked at random");

        // 10 pods of 400m on 4 nodes of 1 cpu: 8 fit, 2 do not.
        let mut s = snapshot(&nodes, &[]);
        let mut placed = 0;
        for i in 0..10 {
            let p = pod(&format!("p{i}"), "400m", "");
            if let Ok(n) = schedule(&p, &s) {
                s.add_pod(&n, Arc::new(PodInfo::new(&p)));
                placed += 1;
            }
        }
        assert_eq!(placed, 8);
        assert!(s.nodes.iter().all(|n| n.requested.milli_cpu <= 1000));
    }

    #[test]
    fn least_allocated_wins_without_owner() {
        let s = snapshot(
            &[node("busy", "4", "8Gi"), node("idle", "4", "8Gi")],
            &[on(pod("a", "2", "4Gi"), "busy")],
        );
        for _ in 0..20 {
            assert_eq!(schedule(&pod("p", "500m", "1Gi"), &s).unwrap(), "idle");
        }
    }

    /// Not a test of speed: prints what one decision over 100 nodes with 10,000 bound pods
    /// costs (`cargo test -p skiff-controllers --release schedule_microbenchmark -- --nocapture`).
    #[test]
    fn schedule_microbenchmark() {
        let nodes: Vec<Node> = (0..100)
            .map(|i| {
                let mut n = node(&format!("node-{i:03}"), "64", "256Gi");
                let alloc = n.status.as_mut().unwrap().allocatable.as_mut().unwrap();
                alloc.insert(
                    "pods".into(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("500".into()),
                );
                n
            })
            .collect();
        let mut s = snapshot(&nodes, &[]);
        for i in 0..10_000 {
            let p = owned(
                pod(&format!("bound-{i}"), "10m", "16Mi"),
                &format!("rs-{}", i % 50),
            );
            s.add_pod(&format!("node-{:03}", i % 100), Arc::new(PodInfo::new(&p)));
        }
        let pods: Vec<Pod> = (0..2_000)
            .map(|i| owned(pod(&format!("new-{i}"), "10m", "16Mi"), "rs-new"))
            .collect();
        let start = std::time::Instant::now();
        for p in &pods {
            let info = Arc::new(PodInfo::new(p));
            let n = schedule_with(p, &info, &s, &mut rand::thread_rng()).unwrap();
            s.add_pod(&n, info);
        }
        let elapsed = start.elapsed();
        println!(
            "schedule(): {} pods over 100 nodes in {:?}: {:.1} µs per pod, {:.0} pods/s",
            pods.len(),
            elapsed,
            elapsed.as_secs_f64() * 1e6 / pods.len() as f64,
            pods.len() as f64 / elapsed.as_secs_f64()
        );
    }
}
