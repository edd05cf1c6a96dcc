//! Error type of the crate: every variant names what it was working on (reference, digest,
//! path or URL) so that an agent log line is enough to understand a failure.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of image handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType { media_type: String, what: String },

    #[error("no manifest for platform {platform} in index {reference}")]
    NoMatchingPlatform { reference: String, platform: String },

    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },

    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },

    #[error("timed out after {after:?} {during} {url}")]
    Timeout {
        url: String,
        during: &'static str,
        after: Duration,
    },

    #[error("HTTP error talking to {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },

    #[error("authentication to {registry} failed: {reason}")]
    Auth { registry: String, reason: String },

    #[error("invalid docker config JSON: {reason}")]
    DockerConfig { reason: String },

    #[error("layer entry {entry:?} escapes the layer root {root}")]
    PathEscape { entry: String, root: PathBuf },

    #[error("unpacking layer {layer} into {path}: {source}")]
    Unpack {
        layer: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("image {reference} is not present and the pull policy is Never")]
    NeverPull { reference: String },

    #[error("image {reference} not found in the store")]
    NotFound { reference: String },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("import of {path}: {reason}")]
    Import { path: PathBuf, reason: String },

    #[error("TLS setup: {reason}")]
    Tls { reason: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Adds a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
