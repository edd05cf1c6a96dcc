//! Small facts about pods and selectors that several controllers share.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::{Resource, ResourceExt};

/// Whether `labels` satisfy a `metav1.LabelSelector`. An empty selector matches everything;
/// a missing one matches nothing (as for workload controllers).
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(sel) = selector else { return false };
    let labels_ok = sel
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let exprs_ok = sel.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or(&[]);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

/// `a=b,c=d` for list requests; only matchLabels are expressible this way, expressions are
/// checked on the results with `selector_matches`.
pub fn selector_query(selector: Option<&LabelSelector>) -> String {
    selector
        .and_then(|s| s.match_labels.as_ref())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Running or about to run: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    !is_terminating(pod) && phase != "Succeeded" && phase != "Failed"
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    let Some(cond) = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
    else {
        return false;
    };
    if cond.status != "True" {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    cond.last_transition_time
        .as_ref()
        .is_some_and(|t| now.as_second() - t.0.as_second() >= min_ready_seconds as i64)
}

pub fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

pub fn is_controlled_by<K: Resource, O: Resource>(obj: &K, owner: &O) -> bool {
    controller_of(obj).is_some_and(|r| Some(&r.uid) == owner.meta().uid.as_ref())
}

/// A controller owner reference to `owner`.
pub fn owner_reference<O: Resource<DynamicType = ()>>(owner: &O) -> OwnerReference {
    OwnerReference {
        api_version: O::api_version(&()).into_owned(),
        kind: O::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from a template, named `<prefix>-<random>`, owned by `owner`.
pub fn pod_from_template<O: Resource<DynamicType = ()>>(
    template: &PodTemplateSpec,
    owner: &O,
    prefix: &str,
) -> Pod {
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some(format!("{prefix}-"));
    meta.namespace = owner.namespace();
    meta.owner_references = Some(vec![owner_reference(owner)]);
    meta.resource_version = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    Pod {
        metadata: meta,
        spec: template.spec.clone(),
        status: None,
    }
}

/// kube's pod-template-hash: FNV-1a (32 bit) of the template, printed in the "safe" alphabet
/// (no vowels) so that it never spells a word.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= *b as u32;
            hash = hash.wrapping_mul(0x01000193);
        }
    };
    let mut normalized = template.clone();
    if let Some(labels) = normalized.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove("pod-template-hash");
    }
    feed(
        serde_json::to_string(&normalized)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = hash as u64;
    let mut out = Vec::new();
    loop {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize]);
        n /= ALPHABET.len() as u64;
        if n == 0 {
            break;
        }
    }
    String::from_utf8(out).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let sel = LabelSelector {
            match_labels: Some(labels.clone()),
            match_expressions: None,
        };
        assert!(selector_matches(Some(&sel), &labels));
        assert!(!selector_matches(None, &labels));
        let expr = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "NotIn".into(),
                values: Some(vec!["web".into()]),
            }]),
        };
        assert!(!selector_matches(Some(&expr), &labels));
        assert_eq!(selector_query(Some(&sel)), "app=web");
    }

    #[test]
    fn template_hash_is_stable_and_ignores_its_own_label() {
        let mut t = PodTemplateSpec::default();
        let h1 = template_hash(&t, None);
        t.metadata = Some(Default::default());
        t.metadata.as_mut().unwrap().labels =
            Some([("pod-template-hash".to_string(), "x".to_string())].into());
        let h2 = template_hash(&t, None);
        assert_eq!(h1.len(), h2.len());
        assert_ne!(template_hash(&t, Some(1)), h2);
        assert!(h1.bytes().all(|b| !b"aeiou".contains(&b)));
    }
}
