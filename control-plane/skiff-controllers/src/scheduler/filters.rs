//! Filters: can this pod run on this node? Each failing filter names its reason in
//! kube-scheduler's words; the first failing filter decides, in kube's plugin order
//! (NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit,
//! InterPodAffinity).

use std::collections::HashSet;
use std::fmt;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

use super::snapshot::{NodeInfo, PodInfo, Readiness, Snapshot};

pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Why a node was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Unschedulable,
    UntoleratedTaint {
        key: String,
        value: String,
    },
    NodeAffinity,
    HostPorts,
    TooManyPods {
        unresolvable: bool,
    },
    Insufficient {
        resource: String,
        unresolvable: bool,
    },
    AntiAffinityRules,
    ExistingAntiAffinityRules,
}

impl Reason {
    /// Whether evicting other pods could never help (kube's UnschedulableAndUnresolvable).
    pub fn unresolvable(&self) -> bool {
        match self {
            Reason::Unschedulable | Reason::UntoleratedTaint { .. } | Reason::NodeAffinity => true,
            Reason::TooManyPods { unresolvable } | Reason::Insufficient { unresolvable, .. } => {
                *unresolvable
            }
            Reason::HostPorts | Reason::AntiAffinityRules | Reason::ExistingAntiAffinityRules => {
                false
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::HostPorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::TooManyPods { .. } => f.write_str("Too many pods"),
            Reason::Insufficient { resource, .. } => write!(f, "Insufficient {resource}"),
            Reason::AntiAffinityRules => {
                f.write_str("node(s) didn't match pod anti-affinity rules")
            }
            Reason::ExistingAntiAffinityRules => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
        }
    }
}

/// kube's ToleratesTaint.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    if toleration
        .key
        .as_deref()
        .is_some_and(|k| !k.is_empty() && k != taint.key)
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

fn tolerated(pod: &Pod, taint: &Taint) -> bool {
    tolerations(pod).iter().any(|t| tolerates(t, taint))
}

fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        effect: effect.into(),
        value: None,
        time_added: None,
    }
}

/// Cordoned nodes take only pods that tolerate `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn node_unschedulable(pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
    if node.unschedulable && !tolerated(pod, &taint(TAINT_UNSCHEDULABLE, "NoSchedule")) {
        return Err(Reason::Unschedulable);
    }
    Ok(())
}

/// NoSchedule/NoExecute taints. A node whose Ready condition is not True counts as carrying
/// the NoSchedule taint kube's node controller would put there (`not-ready` for False,
/// `unreachable` for Unknown or missing), whether or not it has been put there yet.
pub fn taint_toleration(pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
    if let Some(t) = node.taints.iter().find(|t| !tolerated(pod, t)) {
        return Err(Reason::UntoleratedTaint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
        });
    }
    let implied = match node.readiness {
        Readiness::Ready => None,
        Readiness::NotReady => Some(TAINT_NOT_READY),
        Readiness::Unknown => Some(TAINT_UNREACHABLE),
    };
    if let Some(key) = implied {
        if !tolerated(pod, &taint(key, "NoSchedule")) {
            return Err(Reason::UntoleratedTaint {
                key: key.into(),
                value: String::new(),
            });
        }
    }
    Ok(())
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or(&[]);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value, values) else {
                return false;
            };
            let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// One nodeSelectorTerm: all its expressions and fields must match; an empty term matches
/// nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, Some(&node.name))
        })
}

/// `spec.nodeSelector` and the required node affinity (its terms are ORed).
pub fn node_affinity(pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let selector_ok = spec
        .node_selector
        .as_ref()
        .is_none_or(|sel| sel.iter().all(|(k, v)| node.labels.get(k) == Some(v)));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|required| {
            required
                .node_selector_terms
                .iter()
                .any(|t| term_matches(t, node))
        });
    if selector_ok && affinity_ok {
        Ok(())
    } else {
        Err(Reason::NodeAffinity)
    }
}

pub fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    if pod
        .host_ports
        .iter()
        .any(|want| node.host_ports.iter().any(|used| want.conflicts(used)))
    {
        return Err(Reason::HostPorts);
    }
    Ok(())
}

/// Requests against allocatable minus what the node's pods already request. A request
/// larger than the node's whole allocatable can never fit there (unresolvable).
pub fn node_resources_fit(pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    let mut reasons = Vec::new();
    let (alloc, used, want) = (&node.allocatable, &node.requested, &pod.requests);
    if used.pods + 1 > alloc.pods {
        reasons.push(Reason::TooManyPods {
            unresolvable: alloc.pods < 1,
        });
    }
    let mut check = |name: &str, want: i64, alloc: i64, used: i64| {
        if want > 0 && want > alloc.saturating_sub(used) {
            reasons.push(Reason::Insufficient {
                resource: name.to_string(),
                unresolvable: want > alloc,
            });
        }
    };
    check("cpu", want.milli_cpu, alloc.milli_cpu, used.milli_cpu);
    check("memory", want.memory, alloc.memory, used.memory);
    check(
        "ephemeral-storage",
        want.ephemeral_storage,
        alloc.ephemeral_storage,
        used.ephemeral_storage,
    );
    for (name, amount) in &want.scalar {
        let a = alloc.scalar.get(name).copied().unwrap_or(0);
        let u = used.scalar.get(name).copied().unwrap_or(0);
        check(name, *amount, a, u);
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// Per-pod facts the anti-affinity filter needs, computed once over the whole snapshot:
/// topology domains (label key, value) the pod must stay out of.
#[derive(Debug, Default)]
pub struct AntiAffinityState {
    /// Domains holding pods that the incoming pod's terms match.
    pub own: HashSet<(String, String)>,
    /// Domains of existing pods whose terms match the incoming pod.
    pub existing: HashSet<(String, String)>,
}

impl AntiAffinityState {
    pub fn compute(pod: &PodInfo, snapshot: &Snapshot) -> Self {
        let mut state = AntiAffinityState::default();
        if !pod.anti_affinity.is_empty() {
            for node in &snapshot.nodes {
                for term in &pod.anti_affinity {
                    let Some(value) = node.labels.get(&term.topology_key) else {
                        continue;
                    };
                    if node
                        .pods
                        .iter()
                        .any(|p| p.uid != pod.uid && term.matches(p))
                    {
                        state.own.insert((term.topology_key.clone(), value.clone()));
                    }
                }
            }
        }
        for (i, existing) in &snapshot.anti_affinity_pods {
            if existing.uid == pod.uid {
                continue;
            }
            let node = &snapshot.nodes[*i];
            for term in existing.anti_affinity.iter().filter(|t| t.matches(pod)) {
                if let Some(value) = node.labels.get(&term.topology_key) {
                    state
                        .existing
                        .insert((term.topology_key.clone(), value.clone()));
                }
            }
        }
        state
    }

    fn in_domain(set: &HashSet<(String, String)>, node: &NodeInfo) -> bool {
        // Few domains per pod: walk the set rather than allocate a key per node.
        set.iter().any(|(k, v)| node.labels.get(k) == Some(v))
    }
}

/// The pod's own required anti-affinity first, then that of the pods already placed (kube's
/// order, which decides the reason when both fail).
pub fn inter_pod_anti_affinity(state: &AntiAffinityState, node: &NodeInfo) -> Result<(), Reason> {
    if AntiAffinityState::in_domain(&state.own, node) {
        return Err(Reason::AntiAffinityRules);
    }
    if AntiAffinityState::in_domain(&state.existing, node) {
        return Err(Reason::ExistingAntiAffinityRules);
    }
    Ok(())
}

/// Every filter in order; the first that fails gives the node's reasons.
pub fn run_filters(
    pod: &Pod,
    info: &PodInfo,
    state: &AntiAffinityState,
    node: &NodeInfo,
) -> Result<(), Vec<Reason>> {
    node_unschedulable(pod, node).map_err(|r| vec![r])?;
    taint_toleration(pod, node).map_err(|r| vec![r])?;
    node_affinity(pod, node).map_err(|r| vec![r])?;
    node_ports(info, node).map_err(|r| vec![r])?;
    node_resources_fit(info, node)?;
    inter_pod_anti_affinity(state, node).map_err(|r| vec![r])
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::testutil::*;
    use super::super::snapshot::HostPort;
    use super::*;
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, PodAffinityTerm, PodAntiAffinity,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::sync::Arc;

    fn info(node: k8s_openapi::api::core::v1::Node) -> NodeInfo {
        NodeInfo::new(Arc::new(node))
    }

    fn toleration(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.into()),
            operator: Some(op.into()),
            value: (!value.is_empty()).then(|| value.into()),
            effect: (!effect.is_empty()).then(|| effect.into()),
            toleration_seconds: None,
        }
    }

    fn tainted(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: (!value.is_empty()).then(|| value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    #[test]
    fn toleration_matching() {
        let t = tainted("dedicated", "gpu", "NoSchedule");
        assert!(tolerates(
            &toleration("dedicated", "Equal", "gpu", "NoSchedule"),
            &t
        ));
        assert!(tolerates(&toleration("dedicated", "Equal", "gpu", ""), &t));
        assert!(!tolerates(&toleration("dedicated", "Equal", "cpu", ""), &t));
        assert!(!tolerates(
            &toleration("dedicated", "Equal", "gpu", "NoExecute"),
            &t
        ));
        assert!(tolerates(&toleration("dedicated", "Exists", "", ""), &t));
        assert!(
            tolerates(&toleration("", "Exists", "", ""), &t),
            "empty key with Exists tolerates everything"
        );
        assert!(!tolerates(&toleration("other", "Exists", "", ""), &t));
    }

    #[test]
    fn taints_and_readiness() {
        let mut n = node("n1", "1", "1Gi");
        n.spec.as_mut().unwrap().taints = Some(vec![
            tainted("node-role.kubernetes.io/control-plane", "", "NoSchedule"),
            tainted("soft", "", "PreferNoSchedule"),
        ]);
        let p = pod("p", "", "");
        let err = taint_toleration(&p, &info(n.clone())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"
        );
        let mut tolerant = p.clone();
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![toleration(
            "node-role.kubernetes.io/control-plane",
            "Exists",
            "",
            "NoSchedule",
        )]);
        assert!(
            taint_toleration(&tolerant, &info(n.clone())).is_ok(),
            "PreferNoSchedule does not filter"
        );

        let mut not_ready = node("n2", "1", "1Gi");
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        assert_eq!(
            taint_toleration(&p, &info(not_ready.clone())).unwrap_err(),
            Reason::UntoleratedTaint {
                key: TAINT_NOT_READY.into(),
                value: String::new()
            }
        );
        let mut unknown = node("n3", "1", "1Gi");
        unknown.status.as_mut().unwrap().conditions = None;
        assert_eq!(
            taint_toleration(&p, &info(unknown)).unwrap_err(),
            Reason::UntoleratedTaint {
                key: TAINT_UNREACHABLE.into(),
                value: String::new()
            }
        );
        let mut all = p.clone();
        all.spec.as_mut().unwrap().tolerations = Some(vec![toleration("", "Exists", "", "")]);
        assert!(taint_toleration(&all, &info(not_ready)).is_ok());
    }

    #[test]
    fn cordon() {
        let mut n = node("n1", "1", "1Gi");
        n.spec.as_mut().unwrap().unschedulable = Some(true);
        let p = pod("p", "", "");
        assert_eq!(
            node_unschedulable(&p, &info(n.clone())),
            Err(Reason::Unschedulable)
        );
        let mut t = p.clone();
        t.spec.as_mut().unwrap().tolerations = Some(vec![toleration(
            TAINT_UNSCHEDULABLE,
            "Exists",
            "",
            "NoSchedule",
        )]);
        assert!(node_unschedulable(&t, &info(n)).is_ok());
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn with_affinity(terms: Vec<NodeSelectorTerm>) -> Pod {
        let mut p = pod("p", "", "");
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn node_selector_and_affinity() {
        let mut n = node("n1", "1", "1Gi");
        n.metadata.labels.as_mut().unwrap().extend([
            ("disk".to_string(), "ssd".to_string()),
            ("cores".to_string(), "8".to_string()),
        ]);
        let n = info(n);
        let mut p = pod("p", "", "");
        p.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "ssd".to_string())].into());
        assert!(node_affinity(&p, &n).is_ok());
        p.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "hdd".to_string())].into());
        assert_eq!(
            node_affinity(&p, &n).unwrap_err().to_string(),
            "node(s) didn't match Pod's node affinity/selector"
        );

        let expr = |reqs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: Some(reqs),
            match_fields: None,
        };
        let cases: Vec<(Vec<NodeSelectorRequirement>, bool)> = vec![
            (vec![req("disk", "In", &["ssd", "nvme"])], true),
            (vec![req("disk", "In", &["hdd"])], false),
            (vec![req("disk", "NotIn", &["hdd"])], true),
            (vec![req("missing", "NotIn", &["x"])], true),
            (vec![req("disk", "Exists", &[])], true),
            (vec![req("disk", "DoesNotExist", &[])], false),
            (vec![req("missing", "DoesNotExist", &[])], true),
            (vec![req("cores", "Gt", &["4"])], true),
            (vec![req("cores", "Lt", &["4"])], false),
            (vec![req("cores", "Gt", &["x"])], false),
            (vec![req("disk", "Gt", &["1"])], false),
            (
                vec![req("disk", "In", &["ssd"]), req("cores", "Lt", &["4"])],
                false,
            ),
        ];
        for (reqs, want) in cases {
            let p = with_affinity(vec![expr(reqs.clone())]);
            assert_eq!(node_affinity(&p, &n).is_ok(), want, "{reqs:?}");
        }
        // terms are ORed
        let p = with_affinity(vec![
            expr(vec![req("disk", "In", &["hdd"])]),
            expr(vec![req("disk", "In", &["ssd"])]),
        ]);
        assert!(node_affinity(&p, &n).is_ok());
        // an empty term matches nothing
        let p = with_affinity(vec![NodeSelectorTerm::default()]);
        assert!(node_affinity(&p, &n).is_err());
        // matchFields on metadata.name
        let field = |op: &str, v: &str| NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", op, &[v])]),
        };
        assert!(node_affinity(&with_affinity(vec![field("In", "n1")]), &n).is_ok());
        assert!(node_affinity(&with_affinity(vec![field("In", "n2")]), &n).is_err());
        assert!(node_affinity(&with_affinity(vec![field("NotIn", "n2")]), &n).is_ok());
    }

    #[test]
    fn host_ports() {
        let used = on(with_host_port(pod("a", "", ""), 8080, None), "n1");
        let s = snapshot(&[node("n1", "1", "1Gi")], &[used]);
        let n = &s.nodes[0];
        let same = PodInfo::new(&with_host_port(pod("b", "", ""), 8080, Some("10.0.0.1")));
        assert_eq!(
            node_ports(&same, n),
            Err(Reason::HostPorts),
            "a wildcard IP conflicts with any IP"
        );
        let other = PodInfo::new(&with_host_port(pod("c", "", ""), 8081, None));
        assert!(node_ports(&other, n).is_ok());
        let mut udp = with_host_port(pod("d", "", ""), 8080, None);
        udp.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .protocol = Some("UDP".into());
        assert!(node_ports(&PodInfo::new(&udp), n).is_ok());

        let a = HostPort {
            ip: "10.0.0.1".into(),
            protocol: "TCP".into(),
            port: 1,
        };
        let b = HostPort {
            ip: "10.0.0.2".into(),
            protocol: "TCP".into(),
            port: 1,
        };
        assert!(!a.conflicts(&b));
        assert!(a.conflicts(&a.clone()));
    }

    #[test]
    fn resources() {
        let s = snapshot(
            &[node("n1", "2", "4Gi")],
            &[on(pod("a", "1500m", "1Gi"), "n1")],
        );
        let n = &s.nodes[0];
        assert!(node_resources_fit(&PodInfo::new(&pod("p", "500m", "3Gi")), n).is_ok());
        let err = node_resources_fit(&PodInfo::new(&pod("p", "600m", "3500Mi")), n).unwrap_err();
        assert_eq!(
            err.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ["Insufficient cpu", "Insufficient memory"]
        );
        assert!(err.iter().all(|r| !r.unresolvable()));
        let err = node_resources_fit(&PodInfo::new(&pod("p", "3", "")), n).unwrap_err();
        assert!(err[0].unresolvable(), "more than the node has at all");
        // a pod without requests fits on a full node, unless the pod count is exhausted
        let full = snapshot(&[node("n1", "1", "1Gi")], &[on(pod("a", "1", "1Gi"), "n1")]);
        assert!(node_resources_fit(&PodInfo::new(&pod("p", "", "")), &full.nodes[0]).is_ok());
        let mut tiny = node("n1", "1", "1Gi");
        tiny.status
            .as_mut()
            .unwrap()
            .allocatable
            .as_mut()
            .unwrap()
            .insert(
                "pods".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
            );
        let full = snapshot(&[tiny], &[on(pod("a", "", ""), "n1")]);
        let err = node_resources_fit(&PodInfo::new(&pod("p", "", "")), &full.nodes[0]).unwrap_err();
        assert_eq!(err[0].to_string(), "Too many pods");
        // extended resources the node lacks
        let mut gpu = pod("p", "", "");
        gpu.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert(
                "nvidia.com/gpu".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
            );
        let err = node_resources_fit(&PodInfo::new(&gpu), n).unwrap_err();
        assert_eq!(err[0].to_string(), "Insufficient nvidia.com/gpu");
    }

    fn anti(mut p: Pod, app: &str, namespaces: Option<Vec<String>>) -> Pod {
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some([("app".to_string(), app.to_string())].into()),
                        match_expressions: None,
                    }),
                    namespaces,
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn pod_anti_affinity() {
        let nodes = [node("n1", "1", "1Gi"), node("n2", "1", "1Gi")];
        let web = on(labelled(pod("w1", "", ""), "app", "web"), "n1");
        let mut elsewhere = on(labelled(pod("w2", "", ""), "app", "web"), "n2");
        elsewhere.metadata.namespace = Some("other".into());
        let s = snapshot(&nodes, &[web, elsewhere]);
        let incoming = PodInfo::new(&anti(
            labelled(pod("w3", "", ""), "app", "web"),
            "web",
            None,
        ));
        let state = AntiAffinityState::compute(&incoming, &s);
        assert_eq!(
            inter_pod_anti_affinity(&state, &s.nodes[0]),
            Err(Reason::AntiAffinityRules)
        );
        assert!(
            inter_pod_anti_affinity(&state, &s.nodes[1]).is_ok(),
            "other namespaces do not count by default"
        );
        let incoming = PodInfo::new(&anti(pod("w3", "", ""), "web", Some(vec!["other".into()])));
        let state = AntiAffinityState::compute(&incoming, &s);
        assert!(inter_pod_anti_affinity(&state, &s.nodes[0]).is_ok());
        assert!(inter_pod_anti_affinity(&state, &s.nodes[1]).is_err());

        // the existing pod's anti-affinity keeps matching pods away from its node
        let guard = on(anti(pod("g", "", ""), "db", None), "n2");
        let s = snapshot(&nodes, &[guard]);
        let db = PodInfo::new(&labelled(pod("db", "", ""), "app", "db"));
        let state = AntiAffinityState::compute(&db, &s);
        assert!(inter_pod_anti_affinity(&state, &s.nodes[0]).is_ok());
        assert_eq!(
            inter_pod_anti_affinity(&state, &s.nodes[1]),
            Err(Reason::ExistingAntiAffinityRules)
        );
    }
}
