//! Errors as kube-apiserver reports them: a `meta.k8s.io/v1` `Status` with a reason and code.

use serde_json::{json, Value};

/// One invalid field, as in `Status.details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, `FieldValueNotSupported`,
    /// `FieldValueForbidden`, `FieldValueTooLong`.
    pub reason: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn required(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        }
    }

    pub fn invalid(
        path: impl Into<String>,
        value: impl std::fmt::Display,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: {}: {}",
                quote(&value.to_string()),
                detail.into()
            ),
        }
    }

    pub fn duplicate(path: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Self {
            path: path.into(),
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {}", quote(&value.to_string())),
        }
    }

    pub fn not_supported(
        path: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: &[&str],
    ) -> Self {
        let list: Vec<String> = allowed.iter().map(|a| quote(a)).collect();
        Self {
            path: path.into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                quote(&value.to_string()),
                list.join(", ")
            ),
        }
    }

    pub fn forbidden(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {}", detail.into()),
        }
    }

    pub fn to_line(&self) -> String {
        format!("{}: {}", self.path, self.message)
    }
}

fn quote(s: &str) -> String {
    if s.parse::<f64>().is_ok() {
        s.to_string()
    } else {
        format!("\"{s}\"")
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found(qualified: &str, name: &str) -> Self {
        let (resource, group) = qualified.split_once('.').unwrap_or((qualified, ""));
        Self {
            details: Some(json!({"name": name, "group": group, "kind": resource})),
            ..Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
        }
    }

    pub fn already_exists(qualified: &str, name: &str) -> Self {
        let (resource, group) = qualified.split_once('.').unwrap_or((qualified, ""));
        Self {
            details: Some(json!({"name": name, "group": group, "kind": resource})),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{qualified} \"{name}\" already exists"),
            )
        }
    }

    pub fn conflict(qualified: &str, name: &str, why: &str) -> Self {
        let (resource, group) = qualified.split_once('.').unwrap_or((qualified, ""));
        Self {
            details: Some(json!({"name": name, "group": group, "kind": resource})),
            ..Self::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
            )
        }
    }

    pub fn invalid(kind: &str, group: &str, name: &str, errors: Vec<FieldError>) -> Self {
        let lines: Vec<String> = errors.iter().map(FieldError::to_line).collect();
        // kube-apiserver prints `Deployment.apps "x" is invalid` and `Pod "x" is invalid`.
        let subject = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let message = if lines.len() == 1 {
            format!("{subject} \"{name}\" is invalid: {}", lines[0])
        } else {
            format!("{subject} \"{name}\" is invalid: [{}]", lines.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.path}))
            .collect();
        Self {
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
            ..Self::new(422, "Invalid", message)
        }
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 504 with reason Timeout, kube-apiserver's answer when its watch cache does not reach
    /// a requested resourceVersion in time.
    pub fn cache_behind(behind: &crate::cache::Behind) -> Self {
        Self::new(
            504,
            "Timeout",
            format!(
                "Timeout: the server's watch cache is at resourceVersion {} and has not reached {}, \
                 the newest write it answered; the store's watch may be broken, try again later",
                behind.reached, behind.wanted
            ),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl From<skiff_store::StoreError> for ApiError {
    fn from(err: skiff_store::StoreError) -> Self {
        match err {
            skiff_store::StoreError::Compacted { .. } => ApiError::gone(err.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}
