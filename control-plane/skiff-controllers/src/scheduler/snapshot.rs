//! The cluster as one scheduling decision sees it: every node with the pods bound (or
//! assumed bound) to it, summed up. Built from the reflector stores once per batch and
//! updated in place as the batch places pods, so that a decision is a pure function.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::resources::{pod_non_zero_requests, pod_requests, Resources};
use crate::podutil;

pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A host port a container claims: (host IP, protocol, port). An empty IP means all.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    fn wildcard(&self) -> bool {
        self.ip.is_empty() || self.ip == "0.0.0.0" || self.ip == "::"
    }

    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.wildcard() || other.wildcard())
    }
}

/// A required pod (anti-)affinity term with its namespaces resolved.
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    pub selector: Option<LabelSelector>,
    /// Namespaces whose pods the term looks at; ignored when `all_namespaces`.
    pub namespaces: Vec<String>,
    pub all_namespaces: bool,
    pub topology_key: String,
}

impl AffinityTerm {
    /// Whether `pod` is one of the pods this term is about.
    pub fn matches(&self, pod: &PodInfo) -> bool {
        (self.all_namespaces || self.namespaces.contains(&pod.namespace))
            && podutil::selector_matches(self.selector.as_ref(), &pod.labels)
    }
}

/// What the scheduler needs to know of one pod, computed once.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
    pub host_ports: Vec<HostPort>,
    /// uid of the controller owner (ReplicaSet, DaemonSet, ...), for spreading.
    pub owner_uid: Option<String>,
    pub anti_affinity: Vec<AffinityTerm>,
    /// Succeeded or Failed: holds nothing on its node any more.
    pub terminal: bool,
}

impl PodInfo {
    pub fn new(pod: &Pod) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let mut host_ports = Vec::new();
        if let Some(spec) = spec {
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            for c in spec.containers.iter().chain(sidecars) {
                for p in c.ports.iter().flatten() {
                    if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                        host_ports.push(HostPort {
                            ip: p.host_ip.clone().unwrap_or_default(),
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            port: hp,
                        });
                    }
                }
            }
        }
        let anti_affinity = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|terms| {
                terms
                    .iter()
                    .map(|t| {
                        let explicit = t.namespaces.clone().unwrap_or_default();
                        // An empty namespaceSelector selects every namespace; a non-empty one
                        // would need namespace labels, which this scheduler does not watch:
                        // only the listed namespaces count then.
                        let all_namespaces = t.namespace_selector.as_ref().is_some_and(|s| {
                            s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                                && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
                        });
                        let namespaces = if explicit.is_empty() && t.namespace_selector.is_none() {
                            vec![namespace.clone()]
                        } else {
                            explicit
                        };
                        AffinityTerm {
                            selector: t.label_selector.clone(),
                            namespaces,
                            all_namespaces,
                            topology_key: t.topology_key.clone(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (non_zero_cpu, non_zero_memory) = pod_non_zero_requests(pod);
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("");
        PodInfo {
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node_name: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            requests: pod_requests(pod),
            non_zero_cpu,
            non_zero_memory,
            host_ports,
            owner_uid: podutil::controller_of(pod).map(|r| r.uid.clone()),
            anti_affinity,
            terminal: phase == "Succeeded" || phase == "Failed",
            namespace,
        }
    }
}

/// The state of a node's Ready condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady,
    Unknown,
}

pub struct NodeInfo {
    pub name: String,
    pub node: Arc<Node>,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    /// Sum of the requests of the pods on the node (`pods` counts them).
    pub requested: Resources,
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
    pub host_ports: Vec<HostPort>,
    pub pods: Vec<Arc<PodInfo>>,
    /// Pods on the node per controller owner uid.
    pub owners: HashMap<String, u32>,
    pub readiness: Readiness,
    pub unschedulable: bool,
    /// NoSchedule and NoExecute taints.
    pub taints: Vec<Taint>,
    /// PreferNoSchedule taints (scored, not filtered).
    pub soft_taints: Vec<Taint>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        let status = node.status.as_ref();
        let allocatable = status
            .and_then(|s| s.allocatable.as_ref())
            .or_else(|| status.and_then(|s| s.capacity.as_ref()));
        let readiness = match status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str())
        {
            Some("True") => Readiness::Ready,
            Some("False") => Readiness::NotReady,
            _ => Readiness::Unknown,
        };
        let spec = node.spec.as_ref();
        let (soft_taints, taints): (Vec<Taint>, Vec<Taint>) = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| {
                matches!(
                    t.effect.as_str(),
                    "NoSchedule" | "NoExecute" | "PreferNoSchedule"
                )
            })
            .cloned()
            .partition(|t| t.effect == "PreferNoSchedule");
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            allocatable: Resources::from_list(allocatable),
            requested: Resources::default(),
            non_zero_cpu: 0,
            non_zero_memory: 0,
            host_ports: Vec::new(),
            pods: Vec::new(),
            owners: HashMap::new(),
            readiness,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            taints,
            soft_taints,
            node,
        }
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_cpu = self.non_zero_cpu.saturating_add(pod.non_zero_cpu);
        self.non_zero_memory = self.non_zero_memory.saturating_add(pod.non_zero_memory);
        self.host_ports.extend(pod.host_ports.iter().cloned());
        if let Some(owner) = &pod.owner_uid {
            *self.owners.entry(owner.clone()).or_insert(0) += 1;
        }
        self.pods.push(pod);
    }
}

/// Every node with its pods. `anti_affinity_pods` indexes the pods that carry required
/// anti-affinity terms (usually few), so the reverse check does not walk every pod.
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pub anti_affinity_pods: Vec<(usize, Arc<PodInfo>)>,
}

impl Snapshot {
    pub fn new(nodes: impl IntoIterator<Item = Arc<Node>>) -> Self {
        let mut nodes: Vec<NodeInfo> = nodes.into_iter().map(NodeInfo::new).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        Snapshot {
            nodes,
            index,
            anti_affinity_pods: Vec::new(),
        }
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Counts `pod` on `node`; false when there is no such node (the pod then holds
    /// nothing the scheduler can give away).
    pub fn add_pod(&mut self, node: &str, pod: Arc<PodInfo>) -> bool {
        let Some(i) = self.node_index(node) else {
            return false;
        };
        if !pod.anti_affinity.is_empty() {
            self.anti_affinity_pods.push((i, pod.clone()));
        }
        self.nodes[i].add_pod(pod);
        true
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders for nodes and pods in unit tests.
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, NodeCondition, NodeSpec, NodeStatus, PodSpec,
        ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    pub fn node(name: &str, cpu: &str, memory: &str) -> Node {
        let alloc: BTreeMap<String, Quantity> = [
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
            ("pods".to_string(), Quantity("110".into())),
            ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
        ]
        .into();
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(HOSTNAME_LABEL.to_string(), name.to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(alloc.clone()),
                capacity: Some(alloc),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    pub fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_string(), Quantity(cpu.into()));
        }
        if !memory.is_empty() {
            requests.insert("memory".to_string(), Quantity(memory.into()));
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(requests),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn owned(mut pod: Pod, owner: &str) -> Pod {
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: owner.into(),
            uid: format!("uid-{owner}"),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        pod
    }

    pub fn labelled(mut pod: Pod, key: &str, value: &str) -> Pod {
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        pod
    }

    pub fn with_host_port(mut pod: Pod, port: i32, ip: Option<&str>) -> Pod {
        pod.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(port),
            host_ip: ip.map(Into::into),
            ..Default::default()
        }]);
        pod
    }

    pub fn on(mut pod: Pod, node: &str) -> Pod {
        pod.spec.as_mut().unwrap().node_name = Some(node.into());
        pod
    }

    /// A snapshot of `nodes` with `pods` (which name their node) counted.
    pub fn snapshot(nodes: &[Node], pods: &[Pod]) -> Snapshot {
        let mut s = Snapshot::new(nodes.iter().cloned().map(Arc::new));
        for p in pods {
            let info = Arc::new(PodInfo::new(p));
            let node = info.node_name.clone().expect("bound pod");
            s.add_pod(&node, info);
        }
        s
    }
}
