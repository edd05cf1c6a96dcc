//! A multi-node Skiff cluster on one host, like kind but without containers: an "underlay"
//! network namespace holding a bridge, one network namespace per node attached to it by a
//! veth pair, skiff-server inside the underlay namespace (so every node reaches it on the
//! bridge address) and one skiff-agent per node namespace with its own root dir, CNI dirs
//! and iptables. Nothing of it lives in the host's network namespace except, for
//! `skiffadm up --nodes N`, a TCP relay on 127.0.0.1 that lets the host's kubectl in.
//!
//! One implementation for two owners: `skiffadm up --nodes N` runs the command lines under
//! its supervisor daemon, the end-to-end harness (`tests/e2e/src/cluster.rs`) runs them as
//! its own children. Both create and remove the network and the per-node files here.
//!
//! Processes enter a namespace through `nsenter --net=…` (an exec, never a fork of a
//! threaded process) and keep the host's mount namespace, so mounts the agents make stay
//! visible to the cleanup.

pub mod net;
pub mod relay;
pub mod spec;
pub mod sweep;

pub use spec::Spec;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {message}")]
    Tool { command: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
}

impl LabError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LabError {
        LabError::Io {
            path: path.into(),
            source,
        }
    }
}
