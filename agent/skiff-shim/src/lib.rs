//! skiff-shim: runs one OCI bundle as a container from raw Linux primitives
//! (namespaces, mounts, pivot_root, capabilities) and stays as its parent.
//! The library part is what the binary and, later, the agent use.

pub mod cgroup;
pub mod container;
pub mod error;
pub mod exec;
pub mod logger;
pub mod plan;
pub mod process;
pub mod rootfs;
pub mod state;
pub mod supervisor;
pub mod syscall;

pub use container::Options;
pub use error::{Result, ShimError};

#[cfg(test)]
mod unit_tests;
