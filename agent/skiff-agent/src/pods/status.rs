//! The pod status kubelet would write, computed from what the worker knows about each
//! container. Pure: no IO, so every phase rule is unit-tested.

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::backoff::Backoff;

/// How a container run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub started_at: String,
    pub finished_at: String,
    pub container_id: String,
}

impl Terminated {
    fn to_json(&self) -> Value {
        let mut t = json!({
            "exitCode": self.exit_code, "reason": self.reason,
            "startedAt": self.started_at, "finishedAt": self.finished_at,
            "containerID": self.container_id,
        });
        if let Some(s) = self.signal {
            t["signal"] = json!(s);
        }
        t
    }
}

/// What the runtime says about the container right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Current {
    /// Not created (yet, or removed for a restart).
    #[default]
    Absent,
    Running {
        started_at: String,
    },
    Exited(Terminated),
}

/// Everything the worker tracks about one container; persisted (without `current`) so a
/// restarted agent keeps restart counts and back-off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub restart_count: u32,
    pub backoff: Backoff,
    pub last_termination: Option<Terminated>,
    /// A reason and message while the container cannot be created
    /// (ErrImagePull, CreateContainerConfigError, …).
    pub waiting: Option<(String, String)>,
    pub image_id: String,
    /// The `finishedAt` of the exit whose restart is already scheduled.
    #[serde(default)]
    pub handled_exit: Option<String>,
    /// The startup probe has succeeded (or there is none) in this run.
    pub started: bool,
    pub ready: bool,
    #[serde(skip)]
    pub current: Current,
}

impl ContainerRecord {
    pub fn running(&self) -> bool {
        matches!(self.current, Current::Running { .. })
    }
}

/// One container as the status needs it.
pub struct ContainerView<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub id: String,
    pub record: &'a ContainerRecord,
    /// The container exited and will be started again after its back-off.
    pub restarting: bool,
}

pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub node_ip: &'a str,
    pub pod_ip: &'a str,
    pub start_time: &'a str,
    pub now: &'a str,
    pub sandbox_ready: bool,
    pub init: Vec<ContainerView<'a>>,
    pub containers: Vec<ContainerView<'a>>,
    /// Every init container has completed.
    pub initialized: bool,
    pub restart_policy: &'a str,
    /// Set when the pod can never run (reason, message), e.g. a failed init with Never.
    pub failed: Option<(String, String)>,
}

fn container_status(c: &ContainerView<'_>, pod: &Pod, waiting_default: &str) -> Value {
    let r = c.record;
    let mut last_state = json!({});
    let (state, ready, started) = match &r.current {
        Current::Running { started_at } => {
            if let Some(t) = &r.last_termination {
                last_state = json!({"terminated": t.to_json()});
            }
            (
                json!({"running": {"startedAt": started_at}}),
                r.ready,
                r.started,
            )
        }
        Current::Exited(t) if c.restarting => {
            last_state = json!({"terminated": t.to_json()});
            let message = format!(
                "back-off {}s restarting failed container={} pod={}_{}({})",
                r.backoff.delay_secs,
                c.name,
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.uid.as_deref().unwrap_or_default()
            );
            (
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}}),
                false,
                false,
            )
        }
        Current::Exited(t) => {
            if let Some(prev) = &r.last_termination {
                last_state = json!({"terminated": prev.to_json()});
            }
            (json!({"terminated": t.to_json()}), false, false)
        }
        Current::Absent => {
            if let Some(t) = &r.last_termination {
                last_state = json!({"terminated": t.to_json()});
            }
            let waiting = match &r.waiting {
                Some((reason, message)) if message.is_empty() => json!({"reason": reason}),
                Some((reason, message)) => json!({"reason": reason, "message": message}),
                None => json!({"reason": waiting_default}),
            };
            (json!({"waiting": waiting}), false, false)
        }
    };
    let mut s = json!({
        "name": c.name, "image": c.image, "imageID": r.image_id,
        "ready": ready, "started": started, "restartCount": r.restart_count,
        "state": state, "lastState": last_state,
    });
    if !matches!(r.current, Current::Absent) {
        s["containerID"] = json!(format!("skiff://{}", c.id));
    }
    s
}

fn init_status(c: &ContainerView<'_>, pod: &Pod) -> Value {
    let mut s = container_status(c, pod, "PodInitializing");
    // A completed init container counts as ready, as kubelet reports it.
    if matches!(&c.record.current, Current::Exited(t) if t.exit_code == 0) {
        s["ready"] = json!(true);
    }
    s
}

/// kubelet's phase rules (getPhase), over regular containers once initialised.
pub fn phase(view: &PodView<'_>) -> &'static str {
    if view.failed.is_some() {
        return "Failed";
    }
    if !view.initialized {
        return "Pending";
    }
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &view.containers {
        match &c.record.current {
            Current::Running { .. } => running += 1,
            Current::Exited(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            Current::Absent if c.record.last_termination.is_some() => stopped += 1,
            Current::Absent => waiting += 1,
        }
    }
    if view.containers.is_empty() || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    match view.restart_policy {
        "Always" => "Running",
        "OnFailure" if succeeded == stopped => "Succeeded",
        "OnFailure" => "Running",
        _ if succeeded == stopped => "Succeeded",
        _ => "Failed",
    }
}

fn condition(
    previous: &[Value],
    kind: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c["type"] == kind && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    let mut c =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

pub fn pod_status(view: &PodView<'_>) -> Value {
    let pod = view.pod;
    let previous: Vec<Value> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default();
    let phase = phase(view);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let unready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !(c.record.ready && c.record.running()))
        .map(|c| c.name)
        .collect();
    let incomplete: Vec<&str> = view
        .init
        .iter()
        .filter(|c| !matches!(&c.record.current, Current::Exited(t) if t.exit_code == 0))
        .map(|c| c.name)
        .collect();
    let all_ready = unready.is_empty() && !view.containers.is_empty();
    let (ready_reason, ready_message) = if all_ready {
        (None, None)
    } else if terminal {
        (Some("PodCompleted"), None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let now = view.now;
    let (init_reason, init_message) = if view.initialized {
        (
            if terminal && !view.init.is_empty() {
                Some("PodCompleted")
            } else {
                None
            },
            None,
        )
    } else {
        (
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        )
    };
    let conditions = vec![
        condition(
            &previous,
            "PodReadyToStartContainers",
            view.sandbox_ready,
            None,
            None,
            now,
        ),
        condition(
            &previous,
            "Initialized",
            view.initialized,
            init_reason,
            init_message,
            now,
        ),
        condition(
            &previous,
            "Ready",
            all_ready,
            ready_reason,
            ready_message.clone(),
            now,
        ),
        condition(
            &previous,
            "ContainersReady",
            all_ready,
            ready_reason,
            ready_message,
            now,
        ),
        condition(&previous, "PodScheduled", true, None, None, now),
    ];
    let waiting_default = if view.initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": view.node_ip, "hostIPs": [{"ip": view.node_ip}],
        "startTime": view.start_time,
        "containerStatuses": view.containers.iter().map(|c| container_status(c, pod, waiting_default)).collect::<Vec<_>>(),
    });
    if !view.init.is_empty() {
        status["initContainerStatuses"] = json!(view
            .init
            .iter()
            .map(|c| init_status(c, pod))
            .collect::<Vec<_>>());
    }
    if let Some(qos) = pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        status["qosClass"] = json!(qos);
    }
    if !view.pod_ip.is_empty() {
        status["podIP"] = json!(view.pod_ip);
        status["podIPs"] = json!([{"ip": view.pod_ip}]);
    }
    if let Some((reason, message)) = &view.failed {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    status
}

/// The reason the node lifecycle controller gives when it marks the pods of an unreachable
/// node not ready.
pub const NODE_NOT_READY: &str = "NodeNotReady";

/// Whether the pod's Ready condition in the API is the node lifecycle controller's, not ours
/// (the agent never writes that reason).
pub fn marked_by_node_lifecycle(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Ready" && c.reason.as_deref() == Some(NODE_NOT_READY))
        })
}

/// Drops what changes without meaning anything, so an unchanged status is not written again.
pub fn comparable(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(Value::Array(cs)) = s.get_mut("conditions") {
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            c.remove("lastTransitionTime");
            c.remove("lastProbeTime");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "a", "image": "i"}]},
            "status": {"qosClass": "BestEffort", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}
        }))
        .unwrap()
    }

    fn exited(code: i32) -> Current {
        Current::Exited(Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            ..Default::default()
        })
    }

    fn view<'a>(
        pod: &'a Pod,
        recs: &'a [ContainerRecord],
        policy: &'a str,
        restarting: bool,
    ) -> PodView<'a> {
        PodView {
            pod,
            node_ip: "10.0.0.1",
            pod_ip: "10.244.0.5",
            start_time: "2026-01-01T00:00:00Z",
            now: "2026-01-01T00:01:00Z",
            sandbox_ready: true,
            init: vec![],
            containers: recs
                .iter()
                .enumerate()
                .map(|(i, r)| ContainerView {
                    name: ["a", "b", "c"][i],
                    image: "i",
                    id: format!("u1-{i}"),
                    record: r,
                    restarting,
                })
                .collect(),
            initialized: true,
            restart_policy: policy,
            failed: None,
        }
    }

    #[test]
    fn phases_follow_kubelet() {
        let p = pod();
        let running = ContainerRecord {
            current: Current::Running {
                started_at: "t".into(),
            },
            ready: true,
            started: true,
            ..Default::default()
        };
        let creating = ContainerRecord::default();
        assert_eq!(
            phase(&view(&p, std::slice::from_ref(&creating), "Always", false)),
            "Pending"
        );
        assert_eq!(
            phase(&view(&p, std::slice::from_ref(&running), "Always", false)),
            "Running"
        );
        let ok = ContainerRecord {
            current: exited(0),
            ..Default::default()
        };
        let bad = ContainerRecord {
            current: exited(1),
            ..Default::default()
        };
        assert_eq!(
            phase(&view(&p, std::slice::from_ref(&ok), "Never", false)),
            "Succeeded"
        );
        assert_eq!(
            phase(&view(&p, &[ok.clone(), bad.clone()], "Never", false)),
            "Failed"
        );
        assert_eq!(
            phase(&view(&p, std::slice::from_ref(&bad), "OnFailure", true)),
            "Running"
        );
        assert_eq!(
            phase(&view(&p, std::slice::from_ref(&ok), "OnFailure", false)),
            "Succeeded"
        );
        assert_eq!(
            phase(&view(&p, std::slice::from_ref(&bad), "Always", true)),
            "Running"
        );
        // Waiting for a restart after a crash is not "waiting to start".
        let restarting = ContainerRecord {
            last_termination: Some(Terminated::default()),
            ..Default::default()
        };
        assert_eq!(phase(&view(&p, &[restarting], "Always", true)), "Running");
        let runs = [running];
        let mut v = view(&p, &runs, "Always", false);
        v.initialized = false;
        assert_eq!(phase(&v), "Pending");
    }

    #[test]
    fn crash_loop_shows_waiting_with_the_last_termination() {
        let p = pod();
        let rec = ContainerRecord {
            restart_count: 2,
            backoff: Backoff {
                delay_secs: 40,
                not_before: 0,
            },
            current: exited(1),
            ..Default::default()
        };
        let s = pod_status(&view(&p, std::slice::from_ref(&rec), "Always", true));
        let cs = &s["containerStatuses"][0];
        assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(
            cs["state"]["waiting"]["message"],
            "back-off 40s restarting failed container=a pod=p_ns(u1)"
        );
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(cs["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(cs["restartCount"], 2);
        assert_eq!(cs["ready"], false);
        assert_eq!(s["phase"], "Running");
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "ContainersNotReady");
        assert_eq!(ready["message"], "containers with unready status: [a]");
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let p = pod();
        let rec = ContainerRecord::default();
        let s = pod_status(&view(&p, std::slice::from_ref(&rec), "Always", false));
        let sched = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PodScheduled")
            .unwrap()
            .clone();
        assert_eq!(sched["lastTransitionTime"], "2026-01-01T00:00:00Z");
        let init = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Initialized")
            .unwrap()
            .clone();
        assert_eq!(init["lastTransitionTime"], "2026-01-01T00:01:00Z");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        assert!(s["containerStatuses"][0].get("containerID").is_none());
        assert_eq!(s["podIP"], "10.244.0.5");
        assert_eq!(s["qosClass"], "BestEffort");
    }

    #[test]
    fn errors_while_creating_are_the_waiting_reason() {
        let p = pod();
        let rec = ContainerRecord {
            waiting: Some(("ErrImagePull".into(), "not found".into())),
            ..Default::default()
        };
        let s = pod_status(&view(&p, std::slice::from_ref(&rec), "Always", false));
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"],
            json!({"reason": "ErrImagePull", "message": "not found"})
        );
        assert_eq!(s["phase"], "Pending");
    }

    #[test]
    fn recognises_the_node_lifecycle_controllers_mark() {
        let mut p = pod();
        assert!(!marked_by_node_lifecycle(&p));
        p.status = serde_json::from_value(json!({"conditions": [
            {"type": "Ready", "status": "False", "reason": "NodeNotReady"},
        ]}))
        .unwrap();
        assert!(marked_by_node_lifecycle(&p));
        p.status = serde_json::from_value(json!({"conditions": [
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
        ]}))
        .unwrap();
        assert!(!marked_by_node_lifecycle(&p));
    }
}
