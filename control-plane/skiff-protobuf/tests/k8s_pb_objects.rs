//! Objects built with the prost types of `k8s-pb`, encoded, wrapped in the `k8s\0` envelope and
//! decoded. Each test checks selected fields against the JSON kube-apiserver would have received
//! and that the whole object survives a round trip through the k8s-openapi (v1_33) type, which
//! proves that every emitted field name and value shape is known to k8s-openapi.
//!
//! prost emits every `Some(..)` field, so `Some(0)` / `Some(false)` / `Some("")` on a field that
//! is not a pointer in Go reproduces what gogo-protobuf sends; such zeros must disappear, while
//! zeros on Go pointer fields must stay.

use std::collections::BTreeMap;

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::autoscaling::v1 as autoscaling;
use k8s_pb::api::coordination::v1 as coordination;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::discovery::v1 as discovery;
use k8s_pb::api::policy::v1 as policy;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{RawExtension, TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn q(v: &str) -> Quantity {
    Quantity { string: s(v) }
}

fn int(v: i32) -> Option<IntOrString> {
    Some(IntOrString {
        r#type: Some(0),
        int_val: Some(v),
        str_val: Some(String::new()),
    })
}

fn string(v: &str) -> Option<IntOrString> {
    Some(IntOrString {
        r#type: Some(1),
        int_val: Some(0),
        str_val: s(v),
    })
}

fn time(seconds: i64) -> Option<meta::Time> {
    Some(meta::Time {
        seconds: Some(seconds),
        nanos: Some(0),
    })
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// gogo-style metadata: every non-pointer scalar present, zero or not.
fn metadata(name: &str, namespace: &str) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(namespace),
        self_link: s(""),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        creation_timestamp: Some(meta::Time::default()),
        labels: labels(&[("app", name)]),
        ..Default::default()
    })
}

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s(api_version),
            kind: s(kind),
        }),
        raw: Some(raw),
        content_encoding: s(""),
        content_type: s(""),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

/// Encodes `msg`, decodes it, checks the k8s-openapi round trip, returns the JSON.
fn decode<M: Message, T: DeserializeOwned + serde::Serialize>(
    api_version: &str,
    kind: &str,
    msg: &M,
) -> Value {
    let decoded = skiff_protobuf::decode(&envelope(api_version, kind, msg.encode_to_vec()))
        .unwrap_or_else(|e| panic!("decode {kind}: {e}"));
    assert_eq!(decoded.api_version, api_version);
    assert_eq!(decoded.kind, kind);
    assert_eq!(decoded.object["apiVersion"], api_version);
    assert_eq!(decoded.object["kind"], kind);
    let typed: T = serde_json::from_value(decoded.object.clone())
        .unwrap_or_else(|e| panic!("k8s-openapi {kind}: {e}"));
    let mut again = serde_json::to_value(&typed).unwrap();
    if let Value::Object(m) = &mut again {
        m.entry("apiVersion").or_insert_with(|| api_version.into());
        m.entry("kind").or_insert_with(|| kind.into());
    }
    // k8s-openapi writes apiVersion/kind for every embedded resource type (StatefulSet's
    // PersistentVolumeClaim templates); Go's JSON and the protobuf body carry none.
    if let Some(Value::Array(templates)) = again.pointer_mut("/spec/volumeClaimTemplates") {
        for t in templates.iter_mut().filter_map(Value::as_object_mut) {
            t.remove("apiVersion");
            t.remove("kind");
        }
    }
    assert_eq!(
        again,
        without_nulls(&decoded.object),
        "{kind}: k8s-openapi round trip changed the object"
    );
    decoded.object
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn container(name: &str) -> core::Container {
    core::Container {
        name: s(name),
        image: s("busybox:1.36"),
        command: vec!["sh".into(), "-c".into()],
        args: vec!["sleep 1000".into()],
        working_dir: s(""),
        ports: vec![core::ContainerPort {
            name: s("http"),
            host_port: Some(0),
            container_port: Some(8080),
            protocol: s("TCP"),
            host_ip: s(""),
        }],
        env_from: vec![
            core::EnvFromSource {
                prefix: s("CM_"),
                config_map_ref: Some(core::ConfigMapEnvSource {
                    local_object_reference: Some(core::LocalObjectReference { name: s("cm") }),
                    optional: Some(false),
                }),
                secret_ref: None,
            },
            core::EnvFromSource {
                prefix: s(""),
                config_map_ref: None,
                secret_ref: Some(core::SecretEnvSource {
                    local_object_reference: Some(core::LocalObjectReference { name: s("sec") }),
                    optional: Some(true),
                }),
            },
        ],
        env: vec![
            core::EnvVar {
                name: s("PLAIN"),
                value: s("1"),
                value_from: None,
            },
            core::EnvVar {
                name: s("EMPTY"),
                value: s(""),
                value_from: None,
            },
            core::EnvVar {
                name: s("FROM_SECRET"),
                value: s(""),
                value_from: Some(core::EnvVarSource {
                    secret_key_ref: Some(core::SecretKeySelector {
                        local_object_reference: Some(core::LocalObjectReference { name: s("sec") }),
                        key: s("password"),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
            core::EnvVar {
                name: s("POD_NAME"),
                value: s(""),
                value_from: Some(core::EnvVarSource {
                    field_ref: Some(core::ObjectFieldSelector {
                        api_version: s("v1"),
                        field_path: s("metadata.name"),
                    }),
                    ..Default::default()
                }),
            },
            core::EnvVar {
                name: s("MEM"),
                value: s(""),
                value_from: Some(core::EnvVarSource {
                    resource_field_ref: Some(core::ResourceFieldSelector {
                        container_name: s(""),
                        resource: s("limits.memory"),
                        divisor: Some(q("1Mi")),
                    }),
                    ..Default::default()
                }),
            },
        ],
        resources: Some(core::ResourceRequirements {
            limits: [
                ("cpu".to_string(), q("500m")),
                ("memory".to_string(), q("128Mi")),
            ]
            .into(),
            requests: [("cpu".to_string(), q("100m"))].into(),
            claims: vec![],
        }),
        volume_mounts: vec![core::VolumeMount {
            name: s("data"),
            read_only: Some(false),
            mount_path: s("/data"),
            sub_path: s(""),
            mount_propagation: None,
            sub_path_expr: s(""),
            recursive_read_only: None,
        }],
        liveness_probe: Some(core::Probe {
            handler: Some(core::ProbeHandler {
                http_get: Some(core::HttpGetAction {
                    path: s("/healthz"),
                    port: int(8080),
                    host: s(""),
                    scheme: s("HTTP"),
                    http_headers: vec![core::HttpHeader {
                        name: s("X-Probe"),
                        value: s("1"),
                    }],
                }),
                ..Default::default()
            }),
            initial_delay_seconds: Some(0),
            timeout_seconds: Some(1),
            period_seconds: Some(10),
            success_threshold: Some(1),
            failure_threshold: Some(3),
            termination_grace_period_seconds: Some(0),
        }),
        readiness_probe: Some(core::Probe {
            handler: Some(core::ProbeHandler {
                tcp_socket: Some(core::TcpSocketAction {
                    port: string("http"),
                    host: s(""),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        startup_probe: Some(core::Probe {
            handler: Some(core::ProbeHandler {
                grpc: Some(core::GrpcAction {
                    port: Some(9000),
                    service: s(""),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        lifecycle: Some(core::Lifecycle {
            post_start: Some(core::LifecycleHandler {
                exec: Some(core::ExecAction {
                    command: vec!["true".into()],
                }),
                ..Default::default()
            }),
            pre_stop: Some(core::LifecycleHandler {
                sleep: Some(core::SleepAction { seconds: Some(5) }),
                ..Default::default()
            }),
            stop_signal: None,
        }),
        termination_message_path: s("/dev/termination-log"),
        termination_message_policy: s("File"),
        image_pull_policy: s("IfNotPresent"),
        security_context: Some(core::SecurityContext {
            capabilities: Some(core::Capabilities {
                add: vec!["NET_ADMIN".into()],
                drop: vec!["ALL".into()],
            }),
            privileged: Some(false),
            se_linux_options: Some(core::SeLinuxOptions {
                user: s(""),
                role: s(""),
                r#type: s("spc_t"),
                level: s(""),
            }),
            windows_options: None,
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(false),
            allow_privilege_escalation: Some(false),
            proc_mount: s("Default"),
            seccomp_profile: Some(core::SeccompProfile {
                r#type: s("RuntimeDefault"),
                localhost_profile: None,
            }),
            app_armor_profile: None,
        }),
        stdin: Some(false),
        stdin_once: Some(false),
        tty: Some(true),
        ..Default::default()
    }
}

fn pod_spec() -> core::PodSpec {
    core::PodSpec {
        volumes: vec![
            core::Volume {
                name: s("data"),
                volume_source: Some(core::VolumeSource {
                    empty_dir: Some(core::EmptyDirVolumeSource {
                        medium: s(""),
                        size_limit: Some(q("1Gi")),
                    }),
                    ..Default::default()
                }),
            },
            core::Volume {
                name: s("cfg"),
                volume_source: Some(core::VolumeSource {
                    config_map: Some(core::ConfigMapVolumeSource {
                        local_object_reference: Some(core::LocalObjectReference { name: s("cm") }),
                        items: vec![core::KeyToPath {
                            key: s("a"),
                            path: s("a.txt"),
                            mode: Some(0o600),
                        }],
                        default_mode: Some(0),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
            core::Volume {
                name: s("host"),
                volume_source: Some(core::VolumeSource {
                    host_path: Some(core::HostPathVolumeSource {
                        path: s("/var/log"),
                        r#type: s(""),
                    }),
                    ..Default::default()
                }),
            },
            core::Volume {
                name: s("projected"),
                volume_source: Some(core::VolumeSource {
                    projected: Some(core::ProjectedVolumeSource {
                        sources: vec![
                            core::VolumeProjection {
                                service_account_token: Some(core::ServiceAccountTokenProjection {
                                    audience: s(""),
                                    expiration_seconds: Some(3607),
                                    path: s("token"),
                                }),
                                ..Default::default()
                            },
                            core::VolumeProjection {
                                downward_api: Some(core::DownwardAPIProjection {
                                    items: vec![core::DownwardAPIVolumeFile {
                                        path: s("labels"),
                                        field_ref: Some(core::ObjectFieldSelector {
                                            api_version: s("v1"),
                                            field_path: s("metadata.labels"),
                                        }),
                                        resource_field_ref: None,
                                        mode: None,
                                    }],
                                }),
                                ..Default::default()
                            },
                        ],
                        default_mode: Some(420),
                    }),
                    ..Default::default()
                }),
            },
            core::Volume {
                name: s("scratch"),
                volume_source: Some(core::VolumeSource {
                    ephemeral: Some(core::EphemeralVolumeSource {
                        volume_claim_template: Some(core::PersistentVolumeClaimTemplate {
                            metadata: Some(meta::ObjectMeta::default()),
                            spec: Some(core::PersistentVolumeClaimSpec {
                                access_modes: vec!["ReadWriteOnce".into()],
                                resources: Some(core::VolumeResourceRequirements {
                                    requests: [("storage".to_string(), q("1Gi"))].into(),
                                    limits: BTreeMap::new(),
                                }),
                                storage_class_name: s(""),
                                volume_mode: s("Filesystem"),
                                volume_name: s(""),
                                ..Default::default()
                            }),
                        }),
                    }),
                    ..Default::default()
                }),
            },
            core::Volume {
                name: s("sec"),
                volume_source: Some(core::VolumeSource {
                    secret: Some(core::SecretVolumeSource {
                        secret_name: s("sec"),
                        items: vec![],
                        default_mode: Some(0o400),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
        ],
        init_containers: vec![core::Container {
            name: s("init"),
            image: s("busybox"),
            restart_policy: s("Always"),
            resources: Some(core::ResourceRequirements::default()),
            ..Default::default()
        }],
        containers: vec![container("main")],
        restart_policy: s("Always"),
        termination_grace_period_seconds: Some(0),
        active_deadline_seconds: None,
        dns_policy: s("ClusterFirst"),
        node_selector: labels(&[("kubernetes.io/os", "linux")]),
        service_account_name: s("default"),
        service_account: s(""),
        automount_service_account_token: Some(false),
        node_name: s(""),
        host_network: Some(false),
        host_pid: Some(false),
        host_ipc: Some(false),
        share_process_namespace: Some(false),
        security_context: Some(core::PodSecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            supplemental_groups: vec![0, 1000],
            fs_group: Some(2000),
            sysctls: vec![core::Sysctl {
                name: s("net.ipv4.ip_unprivileged_port_start"),
                value: s("0"),
            }],
            fs_group_change_policy: s("OnRootMismatch"),
            seccomp_profile: Some(core::SeccompProfile {
                r#type: s("Localhost"),
                localhost_profile: s(""),
            }),
            ..Default::default()
        }),
        image_pull_secrets: vec![core::LocalObjectReference { name: s("regcred") }],
        hostname: s(""),
        subdomain: s(""),
        affinity: Some(core::Affinity {
            node_affinity: Some(core::NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(core::NodeSelector {
                    node_selector_terms: vec![core::NodeSelectorTerm {
                        match_expressions: vec![core::NodeSelectorRequirement {
                            key: s("zone"),
                            operator: s("In"),
                            values: vec!["a".into(), "b".into()],
                        }],
                        match_fields: vec![],
                    }],
                }),
                preferred_during_scheduling_ignored_during_execution: vec![],
            }),
            pod_affinity: None,
            pod_anti_affinity: Some(core::PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: vec![],
                preferred_during_scheduling_ignored_during_execution: vec![
                    core::WeightedPodAffinityTerm {
                        weight: Some(100),
                        pod_affinity_term: Some(core::PodAffinityTerm {
                            label_selector: Some(meta::LabelSelector {
                                match_labels: labels(&[("app", "p")]),
                                match_expressions: vec![meta::LabelSelectorRequirement {
                                    key: s("tier"),
                                    operator: s("Exists"),
                                    values: vec![],
                                }],
                            }),
                            namespaces: vec![],
                            topology_key: s("kubernetes.io/hostname"),
                            namespace_selector: None,
                            match_label_keys: vec!["pod-template-hash".into()],
                            mismatch_label_keys: vec![],
                        }),
                    },
                ],
            }),
        }),
        scheduler_name: s("default-scheduler"),
        tolerations: vec![core::Toleration {
            key: s("node.kubernetes.io/not-ready"),
            operator: s("Exists"),
            value: s(""),
            effect: s("NoExecute"),
            toleration_seconds: Some(0),
        }],
        host_aliases: vec![core::HostAlias {
            ip: s("10.0.0.1"),
            hostnames: vec!["db".into()],
        }],
        priority_class_name: s(""),
        priority: Some(0),
        dns_config: Some(core::PodDnsConfig {
            nameservers: vec!["1.1.1.1".into()],
            searches: vec![],
            options: vec![core::PodDnsConfigOption {
                name: s("ndots"),
                value: s(""),
            }],
        }),
        readiness_gates: vec![core::PodReadinessGate {
            condition_type: s("example.com/ready"),
        }],
        runtime_class_name: None,
        enable_service_links: Some(false),
        preemption_policy: s("PreemptLowerPriority"),
        overhead: [("cpu".to_string(), q("10m"))].into(),
        topology_spread_constraints: vec![core::TopologySpreadConstraint {
            max_skew: Some(1),
            topology_key: s("zone"),
            when_unsatisfiable: s("DoNotSchedule"),
            label_selector: None,
            min_domains: None,
            node_affinity_policy: None,
            node_taints_policy: None,
            match_label_keys: vec![],
        }],
        set_hostname_as_fqdn: None,
        os: Some(core::PodOs { name: s("linux") }),
        host_users: Some(false),
        scheduling_gates: vec![core::PodSchedulingGate { name: s("gate") }],
        resource_claims: vec![],
        ..Default::default()
    }
}

#[test]
fn pod_with_every_corner_of_podspec() {
    let mut md = metadata("p", "default").unwrap();
    md.creation_timestamp = time(1_700_000_000);
    md.deletion_timestamp = time(1_700_000_100);
    md.deletion_grace_period_seconds = Some(0);
    md.annotations = labels(&[("note", "")]);
    md.finalizers = vec!["example.com/f".into()];
    md.owner_references = vec![meta::OwnerReference {
        api_version: s("apps/v1"),
        kind: s("ReplicaSet"),
        name: s("rs"),
        uid: s("u-1"),
        controller: Some(true),
        block_owner_deletion: Some(false),
    }];
    md.managed_fields = vec![meta::ManagedFieldsEntry {
        manager: s("kubectl"),
        operation: s("Update"),
        api_version: s("v1"),
        time: time(1_700_000_000),
        fields_type: s("FieldsV1"),
        fields_v1: Some(meta::FieldsV1 {
            raw: Some(br#"{"f:metadata":{"f:labels":{".":{},"f:app":{}}}}"#.to_vec()),
        }),
        subresource: s(""),
    }];
    let pod = core::Pod {
        metadata: Some(md),
        spec: Some(pod_spec()),
        status: Some(core::PodStatus {
            phase: s("Running"),
            conditions: vec![core::PodCondition {
                r#type: s("Ready"),
                status: s("True"),
                last_probe_time: Some(meta::Time::default()),
                last_transition_time: time(1_700_000_050),
                reason: s(""),
                message: s(""),
                observed_generation: Some(0),
            }],
            host_ip: s("192.168.1.10"),
            pod_ip: s("10.244.1.5"),
            pod_ips: vec![core::PodIp {
                ip: s("10.244.1.5"),
            }],
            start_time: time(1_700_000_001),
            container_statuses: vec![core::ContainerStatus {
                name: s("main"),
                state: Some(core::ContainerState {
                    running: Some(core::ContainerStateRunning {
                        started_at: time(1_700_000_002),
                    }),
                    ..Default::default()
                }),
                last_state: Some(core::ContainerState {
                    terminated: Some(core::ContainerStateTerminated {
                        exit_code: Some(0),
                        signal: Some(0),
                        reason: s("Completed"),
                        message: s(""),
                        started_at: Some(meta::Time::default()),
                        finished_at: time(1_700_000_000),
                        container_id: s("containerd://abc"),
                    }),
                    ..Default::default()
                }),
                ready: Some(false),
                restart_count: Some(0),
                image: s("busybox:1.36"),
                image_id: s(""),
                container_id: s("containerd://def"),
                started: Some(false),
                ..Default::default()
            }],
            qos_class: s("Burstable"),
            ..Default::default()
        }),
    };
    let o = decode::<_, k8s_openapi::api::core::v1::Pod>("v1", "Pod", &pod);

    let md = &o["metadata"];
    assert_eq!(md["creationTimestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(md["deletionTimestamp"], "2023-11-14T22:15:00Z");
    assert_eq!(md["deletionGracePeriodSeconds"], 0);
    assert!(
        md.get("generation").is_none()
            && md.get("uid").is_none()
            && md.get("generateName").is_none()
    );
    assert_eq!(
        md["annotations"],
        json!({"note": ""}),
        "map values are never dropped"
    );
    assert_eq!(
        md["ownerReferences"],
        json!([{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"rs","uid":"u-1","controller":true,"blockOwnerDeletion":false}])
    );
    assert_eq!(
        md["managedFields"][0],
        json!({"manager":"kubectl","operation":"Update","apiVersion":"v1","time":"2023-11-14T22:13:20Z",
               "fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{}}}}})
    );

    let spec = &o["spec"];
    assert_eq!(spec["terminationGracePeriodSeconds"], 0);
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["priority"], 0);
    assert_eq!(spec["enableServiceLinks"], false);
    assert_eq!(spec["hostUsers"], false);
    assert_eq!(spec["shareProcessNamespace"], false);
    for absent in [
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "nodeName",
        "hostname",
        "serviceAccount",
        "priorityClassName",
    ] {
        assert!(
            spec.get(absent).is_none(),
            "spec.{absent} should be dropped"
        );
    }
    assert_eq!(
        spec["securityContext"],
        json!({"runAsUser":0,"runAsGroup":0,"runAsNonRoot":false,"supplementalGroups":[0,1000],"fsGroup":2000,
               "sysctls":[{"name":"net.ipv4.ip_unprivileged_port_start","value":"0"}],
               "fsGroupChangePolicy":"OnRootMismatch","seccompProfile":{"type":"Localhost","localhostProfile":""}})
    );
    assert_eq!(spec["tolerations"][0]["tolerationSeconds"], 0);
    assert!(spec["tolerations"][0].get("value").is_none());
    assert_eq!(
        spec["dnsConfig"]["options"],
        json!([{"name":"ndots","value":""}])
    );
    assert_eq!(spec["overhead"], json!({"cpu":"10m"}));
    assert_eq!(
        spec["initContainers"][0],
        json!({"name":"init","image":"busybox","restartPolicy":"Always","resources":{}})
    );

    let vols = &spec["volumes"];
    assert_eq!(
        vols[0],
        json!({"name":"data","emptyDir":{"sizeLimit":"1Gi"}})
    );
    assert_eq!(
        vols[1],
        json!({"name":"cfg","configMap":{"name":"cm","items":[{"key":"a","path":"a.txt","mode":384}],"defaultMode":0,"optional":false}})
    );
    assert_eq!(
        vols[2],
        json!({"name":"host","hostPath":{"path":"/var/log","type":""}})
    );
    assert_eq!(
        vols[3]["projected"]["sources"][0],
        json!({"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}})
    );
    assert_eq!(
        vols[4]["ephemeral"]["volumeClaimTemplate"],
        json!({"metadata":{},"spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}},
               "storageClassName":"","volumeMode":"Filesystem"}})
    );

    let c = &spec["containers"][0];
    assert_eq!(
        c["ports"],
        json!([{"name":"http","containerPort":8080,"protocol":"TCP"}])
    );
    assert_eq!(c["tty"], true);
    assert!(
        c.get("stdin").is_none() && c.get("stdinOnce").is_none() && c.get("workingDir").is_none()
    );
    assert_eq!(
        c["envFrom"],
        json!([{"prefix":"CM_","configMapRef":{"name":"cm","optional":false}},{"secretRef":{"name":"sec","optional":true}}])
    );
    assert_eq!(
        c["env"],
        json!([
            {"name":"PLAIN","value":"1"},
            {"name":"EMPTY"},
            {"name":"FROM_SECRET","valueFrom":{"secretKeyRef":{"name":"sec","key":"password","optional":false}}},
            {"name":"POD_NAME","valueFrom":{"fieldRef":{"apiVersion":"v1","fieldPath":"metadata.name"}}},
            {"name":"MEM","valueFrom":{"resourceFieldRef":{"resource":"limits.memory","divisor":"1Mi"}}}
        ])
    );
    assert_eq!(
        c["resources"],
        json!({"limits":{"cpu":"500m","memory":"128Mi"},"requests":{"cpu":"100m"}})
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name":"data","mountPath":"/data"}])
    );
    assert_eq!(
        c["livenessProbe"],
        json!({"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP","httpHeaders":[{"name":"X-Probe","value":"1"}]},
               "timeoutSeconds":1,"periodSeconds":10,"successThreshold":1,"failureThreshold":3,"terminationGracePeriodSeconds":0})
    );
    assert_eq!(c["readinessProbe"], json!({"tcpSocket":{"port":"http"}}));
    assert_eq!(
        c["startupProbe"],
        json!({"grpc":{"port":9000,"service":""}})
    );
    assert_eq!(
        c["lifecycle"],
        json!({"postStart":{"exec":{"command":["true"]}},"preStop":{"sleep":{"seconds":5}}})
    );
    assert_eq!(
        c["securityContext"],
        json!({"capabilities":{"add":["NET_ADMIN"],"drop":["ALL"]},"privileged":false,"seLinuxOptions":{"type":"spc_t"},
               "runAsUser":0,"runAsGroup":0,"runAsNonRoot":false,"readOnlyRootFilesystem":false,
               "allowPrivilegeEscalation":false,"procMount":"Default","seccompProfile":{"type":"RuntimeDefault"}})
    );

    let st = &o["status"];
    assert_eq!(
        st["conditions"],
        json!([{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"2023-11-14T22:14:10Z"}])
    );
    assert_eq!(st["podIPs"], json!([{"ip":"10.244.1.5"}]));
    assert_eq!(st["hostIP"], "192.168.1.10");
    let cs = &st["containerStatuses"][0];
    assert_eq!(cs["ready"], false, "required: kept");
    assert_eq!(cs["restartCount"], 0, "required: kept");
    assert_eq!(cs["started"], false, "pointer: kept");
    assert_eq!(cs["imageID"], "", "required: kept");
    assert_eq!(
        cs["state"],
        json!({"running":{"startedAt":"2023-11-14T22:13:22Z"}})
    );
    assert_eq!(
        cs["lastState"],
        json!({"terminated":{"exitCode":0,"reason":"Completed","startedAt":null,"finishedAt":"2023-11-14T22:13:20Z","containerID":"containerd://abc"}})
    );
}

#[test]
fn deployment_with_strategy_and_status() {
    let d = apps::Deployment {
        metadata: metadata("web", "default"),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: labels(&[("app", "web")]),
                match_expressions: vec![],
            }),
            template: Some(core::PodTemplateSpec {
                metadata: metadata("", ""),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: s("nginx"),
                        image: s("nginx"),
                        resources: Some(Default::default()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: int(0),
                    max_surge: string("25%"),
                }),
            }),
            min_ready_seconds: Some(0),
            revision_history_limit: Some(0),
            paused: Some(false),
            progress_deadline_seconds: Some(600),
        }),
        status: Some(apps::DeploymentStatus {
            observed_generation: Some(3),
            replicas: Some(0),
            conditions: vec![apps::DeploymentCondition {
                r#type: s("Available"),
                status: s("True"),
                last_update_time: time(0),
                last_transition_time: Some(meta::Time::default()),
                reason: s("MinimumReplicasAvailable"),
                message: s(""),
            }],
            collision_count: Some(0),
            ..Default::default()
        }),
    };
    let o = decode::<_, k8s_openapi::api::apps::v1::Deployment>("apps/v1", "Deployment", &d);
    assert_eq!(
        o["spec"],
        json!({
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"creationTimestamp": null, "labels": {"app": ""}},
                         "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "revisionHistoryLimit": 0,
            "progressDeadlineSeconds": 600
        })
    );
    assert_eq!(
        o["status"],
        json!({"observedGeneration": 3, "conditions": [{"type": "Available", "status": "True",
               "lastUpdateTime": "1970-01-01T00:00:00Z", "lastTransitionTime": null,
               "reason": "MinimumReplicasAvailable"}], "collisionCount": 0})
    );
}

#[test]
fn replicaset_daemonset_statefulset() {
    let template = || {
        Some(core::PodTemplateSpec {
            metadata: metadata("t", ""),
            spec: Some(core::PodSpec {
                containers: vec![container("c")],
                ..Default::default()
            }),
        })
    };
    let selector = || {
        Some(meta::LabelSelector {
            match_labels: labels(&[("app", "t")]),
            match_expressions: vec![],
        })
    };
    let rs = apps::ReplicaSet {
        metadata: metadata("rs", "default"),
        spec: Some(apps::ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: Some(0),
            selector: selector(),
            template: template(),
        }),
        status: Some(apps::ReplicaSetStatus {
            replicas: Some(0),
            fully_labeled_replicas: Some(0),
            ..Default::default()
        }),
    };
    let o = decode::<_, k8s_openapi::api::apps::v1::ReplicaSet>("apps/v1", "ReplicaSet", &rs);
    assert_eq!(o["spec"]["replicas"], 0);
    assert!(o["spec"].get("minReadySeconds").is_none());
    assert_eq!(
        o["status"],
        json!({"replicas": 0}),
        "ReplicaSetStatus.replicas is required"
    );

    let ds = apps::DaemonSet {
        metadata: metadata("ds", "kube-system"),
        spec: Some(apps::DaemonSetSpec {
            selector: selector(),
            template: template(),
            update_strategy: Some(apps::DaemonSetUpdateStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDaemonSet {
                    max_unavailable: int(1),
                    max_surge: int(0),
                }),
            }),
            min_ready_seconds: Some(0),
            revision_history_limit: Some(10),
        }),
        status: Some(apps::DaemonSetStatus {
            current_number_scheduled: Some(0),
            number_misscheduled: Some(0),
            desired_number_scheduled: Some(0),
            number_ready: Some(0),
            ..Default::default()
        }),
    };
    let o = decode::<_, k8s_openapi::api::apps::v1::DaemonSet>("apps/v1", "DaemonSet", &ds);
    assert_eq!(
        o["spec"]["updateStrategy"],
        json!({"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":1,"maxSurge":0}})
    );
    assert_eq!(
        o["status"],
        json!({"currentNumberScheduled":0,"numberMisscheduled":0,"desiredNumberScheduled":0,"numberReady":0})
    );

    let sts = apps::StatefulSet {
        metadata: metadata("db", "default"),
        spec: Some(apps::StatefulSetSpec {
            replicas: Some(3),
            selector: selector(),
            template: template(),
            volume_claim_templates: vec![core::PersistentVolumeClaim {
                metadata: metadata("data", ""),
                spec: Some(core::PersistentVolumeClaimSpec {
                    access_modes: vec!["ReadWriteOnce".into()],
                    resources: Some(core::VolumeResourceRequirements {
                        requests: [("storage".to_string(), q("10Gi"))].into(),
                        limits: BTreeMap::new(),
                    }),
                    ..Default::default()
                }),
                status: Some(Default::default()),
            }],
            service_name: s("db"),
            pod_management_policy: s("Parallel"),
            update_strategy: Some(apps::StatefulSetUpdateStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    max_unavailable: string("50%"),
                }),
            }),
            revision_history_limit: Some(10),
            min_ready_seconds: Some(0),
            persistent_volume_claim_retention_policy: Some(
                apps::StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: s("Retain"),
                    when_scaled: s("Delete"),
                },
            ),
            ordinals: Some(apps::StatefulSetOrdinals { start: Some(0) }),
        }),
        status: Some(apps::StatefulSetStatus {
            replicas: Some(0),
            ..Default::default()
        }),
    };
    let o = decode::<_, k8s_openapi::api::apps::v1::StatefulSet>("apps/v1", "StatefulSet", &sts);
    assert_eq!(o["spec"]["ordinals"], json!({"start": 0}));
    assert_eq!(
        o["spec"]["updateStrategy"]["rollingUpdate"],
        json!({"partition": 0, "maxUnavailable": "50%"})
    );
    assert_eq!(o["spec"]["volumeClaimTemplates"][0]["status"], json!({}));
}

#[test]
fn service_with_everything() {
    let svc = core::Service {
        metadata: metadata("web", "default"),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                name: s(""),
                protocol: s("TCP"),
                app_protocol: s(""),
                port: Some(80),
                target_port: int(8080),
                node_port: Some(0),
            }],
            selector: labels(&[("app", "web")]),
            cluster_ip: s("10.96.0.20"),
            cluster_ips: vec!["10.96.0.20".into()],
            r#type: s("LoadBalancer"),
            external_ips: vec![],
            session_affinity: s("ClientIP"),
            load_balancer_ip: s(""),
            load_balancer_source_ranges: vec![],
            external_name: s(""),
            external_traffic_policy: s("Cluster"),
            health_check_node_port: Some(0),
            publish_not_ready_addresses: Some(false),
            session_affinity_config: Some(core::SessionAffinityConfig {
                client_ip: Some(core::ClientIpConfig {
                    timeout_seconds: Some(10800),
                }),
            }),
            ip_families: vec!["IPv4".into()],
            ip_family_policy: s("SingleStack"),
            allocate_load_balancer_node_ports: Some(false),
            load_balancer_class: None,
            internal_traffic_policy: s("Cluster"),
            traffic_distribution: None,
        }),
        status: Some(core::ServiceStatus {
            load_balancer: Some(core::LoadBalancerStatus {
                ingress: vec![core::LoadBalancerIngress {
                    ip: s("192.0.2.1"),
                    hostname: s(""),
                    ip_mode: s("VIP"),
                    ports: vec![core::PortStatus {
                        port: Some(80),
                        protocol: s("TCP"),
                        error: None,
                    }],
                }],
            }),
            conditions: vec![meta::Condition {
                r#type: s("Ready"),
                status: s("True"),
                observed_generation: Some(0),
                last_transition_time: time(1),
                reason: s("Ok"),
                message: s(""),
            }],
        }),
    };
    let o = decode::<_, k8s_openapi::api::core::v1::Service>("v1", "Service", &svc);
    assert_eq!(
        o["spec"]["ports"],
        json!([{"protocol":"TCP","appProtocol":"","port":80,"targetPort":8080}]),
        "appProtocol is a *string: an explicit empty value is kept"
    );
    assert_eq!(o["spec"]["allocateLoadBalancerNodePorts"], false);
    assert_eq!(
        o["spec"]["sessionAffinityConfig"],
        json!({"clientIP":{"timeoutSeconds":10800}})
    );
    assert!(o["spec"].get("publishNotReadyAddresses").is_none());
    assert!(o["spec"].get("healthCheckNodePort").is_none());
    assert_eq!(
        o["status"],
        json!({"loadBalancer":{"ingress":[{"ip":"192.0.2.1","ipMode":"VIP","ports":[{"port":80,"protocol":"TCP"}]}]},
               "conditions":[{"type":"Ready","status":"True","lastTransitionTime":"1970-01-01T00:00:01Z","reason":"Ok","message":""}]})
    );
}

#[test]
fn endpoints_and_endpointslice() {
    let ep = core::Endpoints {
        metadata: metadata("web", "default"),
        subsets: vec![core::EndpointSubset {
            addresses: vec![core::EndpointAddress {
                ip: s("10.244.1.5"),
                hostname: s(""),
                node_name: s("n1"),
                target_ref: Some(core::ObjectReference {
                    kind: s("Pod"),
                    namespace: s("default"),
                    name: s("p"),
                    uid: s("u"),
                    api_version: s(""),
                    resource_version: s(""),
                    field_path: s(""),
                }),
            }],
            not_ready_addresses: vec![],
            ports: vec![core::EndpointPort {
                name: s(""),
                port: Some(8080),
                protocol: s("TCP"),
                app_protocol: None,
            }],
        }],
    };
    let o = decode::<_, k8s_openapi::api::core::v1::Endpoints>("v1", "Endpoints", &ep);
    assert_eq!(
        o["subsets"],
        json!([{"addresses":[{"ip":"10.244.1.5","nodeName":"n1","targetRef":{"kind":"Pod","namespace":"default","name":"p","uid":"u"}}],
                "ports":[{"port":8080,"protocol":"TCP"}]}])
    );

    let slice = discovery::EndpointSlice {
        metadata: metadata("web-abc", "default"),
        address_type: s("IPv4"),
        endpoints: vec![discovery::Endpoint {
            addresses: vec!["10.244.1.5".into()],
            conditions: Some(discovery::EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating: Some(false),
            }),
            hostname: None,
            target_ref: None,
            deprecated_topology: BTreeMap::new(),
            node_name: s("n1"),
            zone: s(""),
            hints: Some(discovery::EndpointHints {
                for_zones: vec![discovery::ForZone { name: s("a") }],
                for_nodes: vec![],
            }),
        }],
        ports: vec![discovery::EndpointPort {
            name: s(""),
            protocol: s("TCP"),
            port: Some(0),
            app_protocol: None,
        }],
    };
    let o = decode::<_, k8s_openapi::api::discovery::v1::EndpointSlice>(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        &slice,
    );
    assert_eq!(
        o["endpoints"],
        json!([{"addresses":["10.244.1.5"],"conditions":{"ready":false,"serving":true,"terminating":false},
                "nodeName":"n1","zone":"","hints":{"forZones":[{"name":"a"}]}}])
    );
    assert_eq!(o["ports"], json!([{"name":"","protocol":"TCP","port":0}]));
    assert_eq!(o["addressType"], "IPv4");
}

#[test]
fn node_with_status() {
    let node = core::Node {
        metadata: metadata("n1", ""),
        spec: Some(core::NodeSpec {
            pod_cidr: s("10.244.1.0/24"),
            pod_cid_rs: vec!["10.244.1.0/24".into()],
            provider_id: s(""),
            unschedulable: Some(false),
            taints: vec![core::Taint {
                key: s("node.kubernetes.io/unreachable"),
                value: s(""),
                effect: s("NoSchedule"),
                time_added: time(100),
            }],
            config_source: None,
            external_id: s(""),
        }),
        status: Some(core::NodeStatus {
            capacity: [("cpu".to_string(), q("2")), ("pods".to_string(), q("110"))].into(),
            allocatable: [("memory".to_string(), q("1Gi"))].into(),
            phase: s(""),
            conditions: vec![core::NodeCondition {
                r#type: s("Ready"),
                status: s("True"),
                last_heartbeat_time: time(200),
                last_transition_time: time(100),
                reason: s("KubeletReady"),
                message: s("ok"),
            }],
            addresses: vec![core::NodeAddress {
                r#type: s("InternalIP"),
                address: s("192.168.1.10"),
            }],
            daemon_endpoints: Some(core::NodeDaemonEndpoints {
                kubelet_endpoint: Some(core::DaemonEndpoint { port: Some(10250) }),
            }),
            node_info: Some(core::NodeSystemInfo {
                machine_id: s("m"),
                system_uuid: s(""),
                boot_id: s("b"),
                kernel_version: s("6.1"),
                os_image: s("Debian"),
                container_runtime_version: s("skiff://0.1"),
                kubelet_version: s("v1.33.0"),
                kube_proxy_version: s(""),
                operating_system: s("linux"),
                architecture: s("amd64"),
                swap: Some(core::NodeSwapStatus { capacity: Some(0) }),
            }),
            images: vec![core::ContainerImage {
                names: vec!["nginx:latest".into()],
                size_bytes: Some(70_000_000_000),
            }],
            volumes_in_use: vec![],
            volumes_attached: vec![],
            config: None,
            runtime_handlers: vec![core::NodeRuntimeHandler {
                name: s(""),
                features: Some(core::NodeRuntimeHandlerFeatures {
                    recursive_read_only_mounts: Some(false),
                    user_namespaces: Some(false),
                }),
            }],
            features: Some(core::NodeFeatures {
                supplemental_groups_policy: Some(true),
            }),
            ..Default::default()
        }),
    };
    let o = decode::<_, k8s_openapi::api::core::v1::Node>("v1", "Node", &node);
    assert_eq!(
        o["spec"],
        json!({"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"],
               "taints":[{"key":"node.kubernetes.io/unreachable","effect":"NoSchedule","timeAdded":"1970-01-01T00:01:40Z"}]})
    );
    let st = &o["status"];
    assert_eq!(st["capacity"], json!({"cpu":"2","pods":"110"}));
    assert_eq!(
        st["daemonEndpoints"],
        json!({"kubeletEndpoint":{"Port":10250}})
    );
    assert_eq!(st["nodeInfo"]["systemUUID"], "", "required: kept");
    assert_eq!(st["nodeInfo"]["swap"], json!({"capacity":0}));
    assert_eq!(st["images"][0]["sizeBytes"], 70_000_000_000i64);
    assert_eq!(
        st["runtimeHandlers"],
        json!([{"name":"","features":{"recursiveReadOnlyMounts":false,"userNamespaces":false}}])
    );
    assert!(st.get("phase").is_none());
}

#[test]
fn event_times_and_microtimes() {
    let ev = core::Event {
        metadata: metadata("p.17a", "default"),
        involved_object: Some(core::ObjectReference {
            kind: s("Pod"),
            name: s("p"),
            namespace: s("default"),
            ..Default::default()
        }),
        reason: s("Scheduled"),
        message: s("assigned"),
        source: Some(core::EventSource {
            component: s("default-scheduler"),
            host: s(""),
        }),
        first_timestamp: time(1_700_000_000),
        last_timestamp: Some(meta::Time::default()),
        count: Some(0),
        r#type: s("Normal"),
        event_time: Some(meta::MicroTime {
            seconds: Some(1_700_000_000),
            nanos: Some(123_456_789),
        }),
        series: Some(core::EventSeries {
            count: Some(2),
            last_observed_time: Some(meta::MicroTime {
                seconds: Some(1_700_000_001),
                nanos: Some(0),
            }),
        }),
        action: s("Binding"),
        related: None,
        reporting_component: s("default-scheduler"),
        reporting_instance: s(""),
    };
    let o = decode::<_, k8s_openapi::api::core::v1::Event>("v1", "Event", &ev);
    assert_eq!(o["firstTimestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(o["lastTimestamp"], Value::Null);
    assert_eq!(o["eventTime"], "2023-11-14T22:13:20.123456Z");
    assert_eq!(
        o["series"],
        json!({"count":2,"lastObservedTime":"2023-11-14T22:13:21.000000Z"})
    );
    assert!(o.get("count").is_none() && o.get("reportingInstance").is_none());
    assert_eq!(o["source"], json!({"component":"default-scheduler"}));
}

#[test]
fn lease_keeps_pointer_zeros() {
    let lease = coordination::Lease {
        metadata: metadata("n1", "kube-node-lease"),
        spec: Some(coordination::LeaseSpec {
            holder_identity: s("n1"),
            lease_duration_seconds: Some(40),
            acquire_time: Some(meta::MicroTime {
                seconds: Some(1_700_000_000),
                nanos: Some(1_000),
            }),
            renew_time: Some(meta::MicroTime {
                seconds: Some(1_700_000_010),
                nanos: Some(999_999_999),
            }),
            lease_transitions: Some(0),
            strategy: None,
            preferred_holder: None,
        }),
    };
    let o = decode::<_, k8s_openapi::api::coordination::v1::Lease>(
        "coordination.k8s.io/v1",
        "Lease",
        &lease,
    );
    assert_eq!(
        o["spec"],
        json!({"holderIdentity":"n1","leaseDurationSeconds":40,"acquireTime":"2023-11-14T22:13:20.000001Z",
               "renewTime":"2023-11-14T22:13:30.999999Z","leaseTransitions":0})
    );
}

#[test]
fn configmap_secret_serviceaccount_namespace() {
    let cm = core::ConfigMap {
        metadata: metadata("c", "default"),
        immutable: Some(false),
        data: labels(&[("k", "v"), ("empty", "")]),
        binary_data: [("b".to_string(), vec![0u8, 1, 2, 255])].into(),
    };
    let o = decode::<_, k8s_openapi::api::core::v1::ConfigMap>("v1", "ConfigMap", &cm);
    assert_eq!(o["immutable"], false);
    assert_eq!(o["data"], json!({"k":"v","empty":""}));
    assert_eq!(o["binaryData"], json!({"b":"AAEC/w=="}));

    let secret = core::Secret {
        metadata: metadata("s", "default"),
        immutable: Some(true),
        data: [("k".to_string(), b"v".to_vec()), ("e".to_string(), vec![])].into(),
        string_data: labels(&[("plain", "text")]),
        r#type: s(""),
    };
    let o = decode::<_, k8s_openapi::api::core::v1::Secret>("v1", "Secret", &secret);
    assert_eq!(o["data"], json!({"k":"dg==","e":""}));
    assert_eq!(o["stringData"], json!({"plain":"text"}));
    assert_eq!(o["immutable"], true);
    assert!(o.get("type").is_none());

    let sa = core::ServiceAccount {
        metadata: metadata("sa", "default"),
        secrets: vec![core::ObjectReference {
            name: s("sa-token"),
            ..Default::default()
        }],
        image_pull_secrets: vec![core::LocalObjectReference { name: s("reg") }],
        automount_service_account_token: Some(false),
    };
    let o = decode::<_, k8s_openapi::api::core::v1::ServiceAccount>("v1", "ServiceAccount", &sa);
    assert_eq!(o["automountServiceAccountToken"], false);
    assert_eq!(o["secrets"], json!([{"name":"sa-token"}]));
    assert_eq!(o["imagePullSecrets"], json!([{"name":"reg"}]));

    let ns = core::Namespace {
        metadata: metadata("x", ""),
        spec: Some(core::NamespaceSpec {
            finalizers: vec!["kubernetes".into()],
        }),
        status: Some(core::NamespaceStatus {
            phase: s("Active"),
            conditions: vec![],
        }),
    };
    let o = decode::<_, k8s_openapi::api::core::v1::Namespace>("v1", "Namespace", &ns);
    assert_eq!(o["spec"], json!({"finalizers":["kubernetes"]}));
    assert_eq!(o["status"], json!({"phase":"Active"}));
    assert_eq!(
        o["metadata"],
        json!({"name":"x","creationTimestamp":null,"labels":{"app":"x"}})
    );
}

#[test]
fn binding_scale_eviction_deleteoptions_controllerrevision() {
    let b = core::Binding {
        metadata: metadata("p", "default"),
        target: Some(core::ObjectReference {
            kind: s("Node"),
            name: s("n1"),
            api_version: s("v1"),
            ..Default::default()
        }),
    };
    let o = decode::<_, k8s_openapi::api::core::v1::Binding>("v1", "Binding", &b);
    assert_eq!(
        o["target"],
        json!({"kind":"Node","name":"n1","apiVersion":"v1"})
    );

    let scale = autoscaling::Scale {
        metadata: metadata("web", "default"),
        spec: Some(autoscaling::ScaleSpec { replicas: Some(0) }),
        status: Some(autoscaling::ScaleStatus {
            replicas: Some(0),
            selector: s(""),
        }),
    };
    let o =
        decode::<_, k8s_openapi::api::autoscaling::v1::Scale>("autoscaling/v1", "Scale", &scale);
    assert_eq!(o["spec"], json!({"replicas":0}));
    assert_eq!(o["status"], json!({"replicas":0}));

    let delete_options = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        preconditions: Some(meta::Preconditions {
            uid: s("u-1"),
            resource_version: s(""),
        }),
        orphan_dependents: None,
        propagation_policy: s("Foreground"),
        dry_run: vec!["All".into()],
        ignore_store_read_error_with_cluster_breaking_potential: Some(false),
    };
    let ev = policy::Eviction {
        metadata: metadata("p", "default"),
        delete_options: Some(delete_options.clone()),
    };
    let o = decode::<_, k8s_openapi::api::policy::v1::Eviction>("policy/v1", "Eviction", &ev);
    let expected = json!({"gracePeriodSeconds":0,"preconditions":{"uid":"u-1","resourceVersion":""},
                          "propagationPolicy":"Foreground","dryRun":["All"],
                          "ignoreStoreReadErrorWithClusterBreakingPotential":false});
    assert_eq!(o["deleteOptions"], expected);

    for api_version in ["v1", "meta.k8s.io/v1", "apps/v1"] {
        let o = decode::<_, k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(
            api_version,
            "DeleteOptions",
            &delete_options,
        );
        let mut want = expected.clone();
        want["apiVersion"] = api_version.into();
        want["kind"] = "DeleteOptions".into();
        assert_eq!(o, want);
    }

    let rev = apps::ControllerRevision {
        metadata: metadata("web-5d4f", "default"),
        data: Some(RawExtension {
            raw: Some(br#"{"spec":{"template":{"$patch":"replace","spec":{"containers":[{"name":"c","image":"x"}]}}}}"#.to_vec()),
        }),
        revision: Some(0),
    };
    let o = decode::<_, k8s_openapi::api::apps::v1::ControllerRevision>(
        "apps/v1",
        "ControllerRevision",
        &rev,
    );
    assert_eq!(o["revision"], 0, "required: kept");
    assert_eq!(o["data"]["spec"]["template"]["$patch"], "replace");
}

#[test]
fn controller_revision_with_a_nested_protobuf_object() {
    // A RawExtension holding a protobuf body (k8s\0 + Unknown) is decoded recursively.
    let inner = envelope(
        "v1",
        "ConfigMap",
        core::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: s("c"),
                ..Default::default()
            }),
            data: labels(&[("a", "b")]),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let rev = apps::ControllerRevision {
        metadata: metadata("r", "default"),
        data: Some(RawExtension { raw: Some(inner) }),
        revision: Some(2),
    };
    let o = decode::<_, k8s_openapi::api::apps::v1::ControllerRevision>(
        "apps/v1",
        "ControllerRevision",
        &rev,
    );
    assert_eq!(o["data"]["kind"], "ConfigMap");
    assert_eq!(o["data"]["data"], json!({"a":"b"}));
}

#[test]
fn empty_raw_extension_and_fields_v1_are_null() {
    let rev = apps::ControllerRevision {
        metadata: Some(meta::ObjectMeta {
            name: s("r"),
            managed_fields: vec![meta::ManagedFieldsEntry {
                manager: s("m"),
                fields_v1: Some(meta::FieldsV1 { raw: None }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        data: Some(RawExtension { raw: None }),
        revision: Some(1),
    };
    let body = envelope("apps/v1", "ControllerRevision", rev.encode_to_vec());
    let o = skiff_protobuf::decode(&body).unwrap().object;
    assert_eq!(o["data"], Value::Null);
    assert_eq!(
        o["metadata"]["managedFields"],
        json!([{"manager":"m","fieldsV1":null}])
    );
}
