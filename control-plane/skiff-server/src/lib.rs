//! skiff-server: a Kubernetes API server on an embedded store (scheduler and controllers to
//! come), in one process.

pub mod admission;
pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod cache;
pub mod csr;
pub mod gc;
mod json_scan;
pub mod lifecycle;
pub mod pki;
pub mod registry;
pub mod serve;

/// The Kubernetes version this server speaks; kubectl's dispatcher picks its build by it.
pub const VERSION_GIT: &str = "v1.33.0-skiff";
