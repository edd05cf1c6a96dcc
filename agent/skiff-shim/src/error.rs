//! Errors of the shim library. Every kernel or file error carries the
//! operation and the path it was about, so that a failure deep inside the
//! container's init can be reported to the user with enough context.

use std::path::PathBuf;

use nix::errno::Errno;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, ShimError>;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A system call failed; `target` names the path or object it acted on.
    #[error("{call}({target}): {errno}")]
    Sys {
        call: &'static str,
        target: String,
        errno: Errno,
    },

    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// The OCI configuration is invalid or asks for something unsupported.
    #[error("config.json: {field}: {msg}")]
    Spec { field: String, msg: String },

    /// The bundle could not be used (missing config or rootfs …).
    #[error("bundle {path}: {msg}")]
    Bundle { path: PathBuf, msg: String },

    /// A container with this id is unknown, already exists, or is in the
    /// wrong state for the requested operation.
    #[error("container {id}: {msg}")]
    Container { id: String, msg: String },

    /// The container's init process reported a failure during setup.
    #[error("container init failed: {0}")]
    Init(String),
}

impl ShimError {
    pub fn sys(call: &'static str, target: impl std::fmt::Display, errno: Errno) -> Self {
        ShimError::Sys {
            call,
            target: target.to_string(),
            errno,
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ShimError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn spec(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ShimError::Spec {
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub fn container(id: &str, msg: impl Into<String>) -> Self {
        ShimError::Container {
            id: id.to_string(),
            msg: msg.into(),
        }
    }
}

/// Attach a call name and target to a nix result.
pub trait SysContext<T> {
    fn ctx(self, call: &'static str, target: impl std::fmt::Display) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn ctx(self, call: &'static str, target: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| ShimError::sys(call, target, e))
    }
}
