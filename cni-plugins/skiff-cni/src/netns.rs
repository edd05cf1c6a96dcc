//! Entering network namespaces: a guard that switches the calling thread into
//! a namespace and back on drop.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::netlink::{Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open netns {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setns into {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("netlink in netns {path}: {source}")]
    Netlink {
        path: PathBuf,
        #[source]
        source: NetlinkError,
    },
}

/// Opens a namespace file such as `/run/netns/x` or `/proc/<pid>/ns/net`.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// While alive, the calling thread is in another network namespace.
pub struct Entered {
    orig: File,
}

impl Entered {
    pub fn enter(target: &File, path: &Path) -> Result<Entered, NetnsError> {
        let self_ns = Path::new("/proc/thread-self/ns/net");
        let orig = open(self_ns)?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Entered { orig })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(self.orig.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Staying in the wrong namespace would misconfigure everything after:
            // stop here rather than go on.
            tracing::error!(error = %e, "cannot return to the original network namespace");
            std::process::abort();
        }
    }
}

/// Opens a netlink socket inside the namespace `ns`; the socket keeps working
/// there after the thread has returned to its own namespace.
pub fn netlink_in(ns: &File, path: &Path) -> Result<Netlink, NetnsError> {
    let _in = Entered::enter(ns, path)?;
    Netlink::open().map_err(|source| NetnsError::Netlink {
        path: path.to_path_buf(),
        source,
    })
}
