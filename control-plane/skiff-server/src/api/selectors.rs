//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and field selectors.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for term in split_terms(s) {
            let term = term.trim();
            if term.is_empty() {
                return Err(format!("invalid label selector {s:?}: empty term"));
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(open) = term.find('(') {
                let head = term[..open].trim();
                let close = term
                    .rfind(')')
                    .ok_or_else(|| format!("invalid label selector {s:?}: missing ')'"))?;
                let values: Vec<String> = term[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                let mut words = head.split_whitespace();
                let key = words.next().unwrap_or_default().to_string();
                match words.next() {
                    Some("in") => Requirement::In(key, values),
                    Some("notin") => Requirement::NotIn(key, values),
                    other => {
                        return Err(format!(
                            "invalid label selector {s:?}: unknown operator {:?}",
                            other.unwrap_or("")
                        ))
                    }
                }
            } else {
                Requirement::Exists(term.to_string())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(format!("invalid label selector {s:?}: invalid key {key:?}"));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }

    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(
            object
                .pointer("/metadata/labels")
                .and_then(Value::as_object),
        )
    }
}

#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// The fields kube-apiserver lets each kind be selected by (besides metadata.name/namespace).
fn field_value(kind: &str, object: &Value, field: &str) -> Option<Result<String, ()>> {
    let text = |ptr: &str| {
        object
            .pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let common = match field {
        "metadata.name" => Some(text("/metadata/name")),
        "metadata.namespace" => Some(text("/metadata/namespace")),
        _ => None,
    };
    if let Some(v) = common {
        return Some(Ok(v));
    }
    let specific = match (kind, field) {
        ("Pod", "spec.nodeName") => text("/spec/nodeName"),
        ("Pod", "spec.restartPolicy") => text("/spec/restartPolicy"),
        ("Pod", "spec.schedulerName") => text("/spec/schedulerName"),
        ("Pod", "spec.serviceAccountName") => text("/spec/serviceAccountName"),
        ("Pod", "spec.hostNetwork") => object
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        ("Pod", "status.phase") => text("/status/phase"),
        ("Pod", "status.podIP") => text("/status/podIP"),
        ("Pod", "status.nominatedNodeName") => text("/status/nominatedNodeName"),
        ("Event", f) if f.starts_with("involvedObject.") => text(&format!(
            "/involvedObject/{}",
            &f["involvedObject.".len()..]
        )),
        ("Event", "reason") => text("/reason"),
        ("Event", "type") => text("/type"),
        ("Event", "source") => text("/source/component"),
        ("Event", "reportingComponent") => text("/reportingComponent"),
        ("Namespace", "status.phase") => text("/status/phase"),
        ("Node", "spec.unschedulable") => object
            .pointer("/spec/unschedulable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        ("Secret", "type") => text("/type"),
        ("ReplicaSet", "status.replicas") => object
            .pointer("/status/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        _ => return Some(Err(())),
    };
    Some(Ok(specific))
}

impl FieldSelector {
    pub fn parse(kind: &str, s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, negate, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            if let Some(Err(())) = field_value(kind, &Value::Null, field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), negate, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, kind: &str, object: &Value) -> bool {
        self.0.iter().all(
            |(field, negate, value)| match field_value(kind, object, field) {
                Some(Ok(actual)) => (actual == *value) != *negate,
                _ => false,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_operators() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches_object(&obj);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("tier in (fe, be)"));
        assert!(!m("tier notin (fe)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m(""));
        assert!(LabelSelector::parse("a in (x").is_err());
        assert!(LabelSelector::parse("a foo (x)").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn field_selector_per_kind() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse("Pod", "spec.nodeName=n1,status.phase!=Failed").unwrap();
        assert!(f.matches("Pod", &pod));
        assert!(!FieldSelector::parse("Pod", "metadata.name=q")
            .unwrap()
            .matches("Pod", &pod));
        assert!(FieldSelector::parse("Pod", "spec.bogus=1").is_err());
        let ev = json!({"involvedObject": {"name": "p", "uid": "u"}});
        assert!(
            FieldSelector::parse("Event", "involvedObject.name=p,involvedObject.uid=u")
                .unwrap()
                .matches("Event", &ev)
        );
    }
}
