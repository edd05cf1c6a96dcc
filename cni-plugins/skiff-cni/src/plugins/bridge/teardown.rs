//! DEL's teardown of the veth pair: the container end is taken out of
//! service at once, the pair's deletion (slow in the kernel) is left to a
//! detached helper process.

use crate::netlink::{Link, NetOps, Netlink};
use crate::spec::{code, CniError};

use super::nl;

/// Deletes a host link after this process has answered.
pub trait Reaper {
    fn delete_later(&mut self, index: u32, name: &str) -> Result<(), CniError>;
}

/// Argument that makes the binary act as the deferred deleter.
pub const REAP_ARG: &str = "--skiff-reap-link";

/// Spawns this binary, detached in its own process group, to delete the link.
pub struct SpawnReaper;

impl Reaper for SpawnReaper {
    fn delete_later(&mut self, index: u32, name: &str) -> Result<(), CniError> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()
            .map_err(|e| CniError::new(code::INTERNAL, format!("current_exe: {e}")))?;
        std::process::Command::new(&exe)
            .args([REAP_ARG, &index.to_string(), name])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| CniError::new(code::INTERNAL, format!("spawn {}: {e}", exe.display())))?;
        Ok(())
    }
}

/// The deferred deleter's work: delete `name` if it still has `index`.
pub fn reap_link(index: u32, name: &str) -> Result<(), CniError> {
    let mut h = Netlink::open().map_err(nl)?;
    match h.link_by_index(index).map_err(nl)? {
        Some(l) if l.name == name => match h.del_link(index) {
            Err(e) if e.errno() != Some(libc::ENODEV) => Err(nl(e)),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Takes the container's interface out of service at once (down, renamed so
/// the name is free for a new ADD) and leaves the deletion of the pair,
/// which the kernel makes slow, to the reaper. False when that cannot be done
/// safely; the caller then deletes synchronously.
pub(super) fn defer_delete(
    cont: &mut dyn NetOps,
    host: &mut dyn NetOps,
    link: &Link,
    bridge: Option<u32>,
    reaper: &mut dyn Reaper,
) -> bool {
    let Some(peer) = link.peer_index else {
        return false;
    };
    let Ok(Some(h)) = host.link_by_index(peer) else {
        return false;
    };
    // Only a veth whose other end is this very interface, on our bridge.
    if h.peer_index != Some(link.index) || bridge.is_none() || h.master != bridge {
        return false;
    }
    if cont.set_up(link.index, false).is_err() {
        return false;
    }
    let parked = format!("skdel{:08x}", rand::random::<u32>());
    if cont.rename(link.index, &parked).is_err() {
        return false;
    }
    reaper.delete_later(h.index, &h.name).is_ok()
}
