//! Which zero values survive decoding.
//!
//! gogo-protobuf writes every non-pointer scalar field of a Go struct, zero or not, while Go's
//! `encoding/json` drops zero values of `omitempty` fields. The decoder therefore drops singular
//! `""`, `0` and `false` — unless the field is required in the OpenAPI schema (no `omitempty`;
//! known from the generated table) or listed here.
//!
//! This list holds the optional scalar fields of the supported kinds that are **pointers** in the
//! Go types (`*int32`, `*bool`, `*string`, `*SomeStringType`): gogo only writes them when they are
//! set, so a zero on the wire is an explicit value (`replicas: 0`, `privileged: false`,
//! `runAsUser: 0`, `storageClassName: ""`, …) and must be kept. A few non-pointer fields whose Go
//! JSON tag has no `omitempty` although OpenAPI calls them optional are listed as well (marked).
//!
//! Message names are the generated table's (`io.k8s.` prefix removed). The unit test
//! `every_pointer_field_exists` checks each entry against the table.

/// `(message, [json field names])`.
pub(crate) static POINTER_FIELDS: &[(&str, &[&str])] = &[
    // ---- meta/v1 ----
    (
        "apimachinery.pkg.apis.meta.v1.ObjectMeta",
        &["deletionGracePeriodSeconds"],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.OwnerReference",
        &["controller", "blockOwnerDeletion"],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.DeleteOptions",
        &[
            "gracePeriodSeconds",
            "orphanDependents",
            "propagationPolicy",
            "ignoreStoreReadErrorWithClusterBreakingPotential",
        ],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.Preconditions",
        &["uid", "resourceVersion"],
    ),
    // ---- core/v1 objects ----
    ("api.core.v1.ConfigMap", &["immutable"]),
    ("api.core.v1.Secret", &["immutable"]),
    (
        "api.core.v1.ServiceAccount",
        &["automountServiceAccountToken"],
    ),
    (
        "api.core.v1.ServiceSpec",
        &[
            "ipFamilyPolicy",
            "allocateLoadBalancerNodePorts",
            "loadBalancerClass",
            "internalTrafficPolicy",
            "trafficDistribution",
        ],
    ),
    ("api.core.v1.ServicePort", &["appProtocol"]),
    ("api.core.v1.ClientIpConfig", &["timeoutSeconds"]),
    ("api.core.v1.LoadBalancerIngress", &["ipMode"]),
    ("api.core.v1.PortStatus", &["error"]),
    ("api.core.v1.EndpointAddress", &["nodeName"]),
    ("api.core.v1.EndpointPort", &["appProtocol"]),
    // NodeRuntimeHandler.name: `json:"name"` without omitempty ("" = the default handler).
    ("api.core.v1.NodeRuntimeHandler", &["name"]),
    (
        "api.core.v1.NodeRuntimeHandlerFeatures",
        &["recursiveReadOnlyMounts", "userNamespaces"],
    ),
    ("api.core.v1.NodeFeatures", &["supplementalGroupsPolicy"]),
    ("api.core.v1.NodeSwapStatus", &["capacity"]),
    // ---- core/v1 PodSpec and everything below it ----
    (
        "api.core.v1.PodSpec",
        &[
            "terminationGracePeriodSeconds",
            "activeDeadlineSeconds",
            "automountServiceAccountToken",
            "priority",
            "shareProcessNamespace",
            "runtimeClassName",
            "enableServiceLinks",
            "preemptionPolicy",
            "setHostnameAsFQDN",
            "hostUsers",
            "hostnameOverride",
        ],
    ),
    (
        "api.core.v1.PodSecurityContext",
        &[
            "runAsUser",
            "runAsGroup",
            "runAsNonRoot",
            "fsGroup",
            "fsGroupChangePolicy",
            "supplementalGroupsPolicy",
            "seLinuxChangePolicy",
        ],
    ),
    (
        "api.core.v1.SecurityContext",
        &[
            "privileged",
            "runAsUser",
            "runAsGroup",
            "runAsNonRoot",
            "readOnlyRootFilesystem",
            "allowPrivilegeEscalation",
            "procMount",
        ],
    ),
    (
        "api.core.v1.WindowsSecurityContextOptions",
        &[
            "gmsaCredentialSpecName",
            "gmsaCredentialSpec",
            "runAsUserName",
            "hostProcess",
        ],
    ),
    ("api.core.v1.SeccompProfile", &["localhostProfile"]),
    ("api.core.v1.AppArmorProfile", &["localhostProfile"]),
    ("api.core.v1.Container", &["restartPolicy"]),
    ("api.core.v1.EphemeralContainerCommon", &["restartPolicy"]),
    (
        "api.core.v1.VolumeMount",
        &["mountPropagation", "recursiveReadOnly"],
    ),
    ("api.core.v1.Probe", &["terminationGracePeriodSeconds"]),
    ("api.core.v1.Lifecycle", &["stopSignal"]),
    ("api.core.v1.GrpcAction", &["service"]),
    ("api.core.v1.ConfigMapEnvSource", &["optional"]),
    ("api.core.v1.SecretEnvSource", &["optional"]),
    ("api.core.v1.ConfigMapKeySelector", &["optional"]),
    ("api.core.v1.SecretKeySelector", &["optional"]),
    ("api.core.v1.FileKeySelector", &["optional"]),
    ("api.core.v1.Toleration", &["tolerationSeconds"]),
    (
        "api.core.v1.TopologySpreadConstraint",
        &["minDomains", "nodeAffinityPolicy", "nodeTaintsPolicy"],
    ),
    ("api.core.v1.PodDnsConfigOption", &["value"]),
    (
        "api.core.v1.PodResourceClaim",
        &["resourceClaimName", "resourceClaimTemplateName"],
    ),
    ("api.core.v1.PodResourceClaimStatus", &["resourceClaimName"]),
    ("api.core.v1.ContainerStatus", &["started", "stopSignal"]),
    ("api.core.v1.VolumeMountStatus", &["recursiveReadOnly"]),
    // Volumes.
    ("api.core.v1.HostPathVolumeSource", &["type"]),
    (
        "api.core.v1.SecretVolumeSource",
        &["defaultMode", "optional"],
    ),
    (
        "api.core.v1.ConfigMapVolumeSource",
        &["defaultMode", "optional"],
    ),
    ("api.core.v1.DownwardAPIVolumeSource", &["defaultMode"]),
    ("api.core.v1.ProjectedVolumeSource", &["defaultMode"]),
    ("api.core.v1.KeyToPath", &["mode"]),
    ("api.core.v1.DownwardAPIVolumeFile", &["mode"]),
    ("api.core.v1.SecretProjection", &["optional"]),
    ("api.core.v1.ConfigMapProjection", &["optional"]),
    (
        "api.core.v1.ServiceAccountTokenProjection",
        &["expirationSeconds"],
    ),
    (
        "api.core.v1.ClusterTrustBundleProjection",
        &["name", "signerName", "optional"],
    ),
    (
        "api.core.v1.PodCertificateProjection",
        &["maxExpirationSeconds"],
    ),
    ("api.core.v1.IscsiVolumeSource", &["initiatorName"]),
    ("api.core.v1.FcVolumeSource", &["lun"]),
    (
        "api.core.v1.AzureDiskVolumeSource",
        &["cachingMode", "fsType", "readOnly", "kind"],
    ),
    ("api.core.v1.CSIVolumeSource", &["readOnly", "fsType"]),
    (
        "api.core.v1.PersistentVolumeClaimSpec",
        &[
            "storageClassName",
            "volumeMode",
            "volumeAttributesClassName",
        ],
    ),
    (
        "api.core.v1.PersistentVolumeClaimStatus",
        &["currentVolumeAttributesClassName"],
    ),
    ("api.core.v1.TypedLocalObjectReference", &["apiGroup"]),
    (
        "api.core.v1.TypedObjectReference",
        &["apiGroup", "namespace"],
    ),
    // ---- apps/v1 ----
    (
        "api.apps.v1.DeploymentSpec",
        &[
            "replicas",
            "revisionHistoryLimit",
            "progressDeadlineSeconds",
        ],
    ),
    (
        "api.apps.v1.DeploymentStatus",
        &["collisionCount", "terminatingReplicas"],
    ),
    ("api.apps.v1.ReplicaSetSpec", &["replicas"]),
    ("api.apps.v1.ReplicaSetStatus", &["terminatingReplicas"]),
    ("api.apps.v1.DaemonSetSpec", &["revisionHistoryLimit"]),
    ("api.apps.v1.DaemonSetStatus", &["collisionCount"]),
    (
        "api.apps.v1.StatefulSetSpec",
        &["replicas", "revisionHistoryLimit"],
    ),
    // StatefulSetStatus.availableReplicas: `json:"availableReplicas"` without omitempty.
    (
        "api.apps.v1.StatefulSetStatus",
        &["collisionCount", "availableReplicas"],
    ),
    // StatefulSetOrdinals.start: `json:"start"` without omitempty.
    ("api.apps.v1.StatefulSetOrdinals", &["start"]),
    (
        "api.apps.v1.RollingUpdateStatefulSetStrategy",
        &["partition"],
    ),
    // ---- autoscaling/v1 ----
    // ScaleSpec.replicas is a plain `int32` with omitempty in Go; kept anyway (deliberate
    // deviation) so that a scale to zero reaches the server as an explicit `replicas: 0` —
    // the same meaning kube-apiserver gives to the absent field.
    ("api.autoscaling.v1.ScaleSpec", &["replicas"]),
    // ---- coordination.k8s.io/v1 ----
    (
        "api.coordination.v1.LeaseSpec",
        &[
            "holderIdentity",
            "leaseDurationSeconds",
            "leaseTransitions",
            "strategy",
            "preferredHolder",
        ],
    ),
    // ---- discovery.k8s.io/v1 ----
    (
        "api.discovery.v1.Endpoint",
        &["hostname", "nodeName", "zone"],
    ),
    (
        "api.discovery.v1.EndpointConditions",
        &["ready", "serving", "terminating"],
    ),
    (
        "api.discovery.v1.EndpointPort",
        &["name", "protocol", "port", "appProtocol"],
    ),
];

/// True when a zero value of `message.field` must be kept.
pub(crate) fn keeps_zero(message: &str, field: &str) -> bool {
    POINTER_FIELDS
        .iter()
        .any(|&(m, fields)| m == message && fields.contains(&field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Card, Ty};

    #[test]
    fn every_pointer_field_exists() {
        let messages = crate::decode::all_messages();
        for &(m, fields) in POINTER_FIELDS {
            let msg = messages
                .iter()
                .find(|x| x.name == m)
                .unwrap_or_else(|| panic!("allowlist names unknown message {m}"));
            for &f in fields {
                let field = msg
                    .fields
                    .iter()
                    .find(|x| x.json == f)
                    .unwrap_or_else(|| panic!("allowlist names unknown field {m}.{f}"));
                assert_eq!(field.card, Card::Single, "{m}.{f} must be singular");
                assert!(
                    matches!(field.ty, Ty::Str | Ty::Int32 | Ty::Int64 | Ty::Bool),
                    "{m}.{f} must be a scalar"
                );
                assert!(
                    !field.required,
                    "{m}.{f} is required; listing it is redundant"
                );
            }
        }
    }

    #[test]
    fn allowlist_has_no_duplicate_messages() {
        let mut names: Vec<_> = POINTER_FIELDS.iter().map(|(m, _)| *m).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn keeps_zero_examples() {
        assert!(keeps_zero("api.apps.v1.DeploymentSpec", "replicas"));
        assert!(keeps_zero("api.core.v1.SecurityContext", "privileged"));
        assert!(keeps_zero(
            "api.core.v1.PodSpec",
            "automountServiceAccountToken"
        ));
        assert!(!keeps_zero("api.core.v1.PodSpec", "hostNetwork"));
        assert!(!keeps_zero("api.apps.v1.DeploymentSpec", "minReadySeconds"));
    }
}
