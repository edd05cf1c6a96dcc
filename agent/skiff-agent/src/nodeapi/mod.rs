//! The node API on :10250, kubelet's endpoints that the API server proxies `kubectl logs`,
//! `exec` and `port-forward` to: HTTPS, callers authenticated by a client certificate of
//! the cluster CA.
//!
//! - `server`: TLS, authentication, routing, pod and container lookup.
//! - `logs`: CRI log files to plain text (tail, since, timestamps, previous, follow).
//! - `exec` over `websocket` (v5.channel.k8s.io) or over `spdy` (the fallback).
//! - `portforward`: SPDY streams to a TCP port inside the pod's network namespace.
//! - `stats`: `/stats/summary`, node and pod usage in kubelet's Summary shape.

pub mod exec;
pub mod logs;
pub mod portforward;
pub mod server;
pub mod spdy;
pub mod stats;
pub mod websocket;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum NodeApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    #[error("node API TLS setup: {0}")]
    Tls(String),
}

impl NodeApiError {
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        NodeApiError::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn code(&self) -> u16 {
        match self {
            NodeApiError::BadRequest(_) => 400,
            NodeApiError::NotFound(_) => 404,
            NodeApiError::Unauthorized(_) => 401,
            _ => 500,
        }
    }

    /// The error as a `metav1.Status`, which is what the API server and kubectl decode.
    pub fn to_status(&self) -> Value {
        let reason = match self.code() {
            400 => "BadRequest",
            401 => "Unauthorized",
            404 => "NotFound",
            _ => "InternalError",
        };
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": self.code(),
        })
    }
}
