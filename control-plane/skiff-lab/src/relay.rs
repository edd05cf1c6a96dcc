//! A TCP relay from the host's loopback into a network namespace, so that the host's kubectl
//! reaches a server that lives in the lab's underlay namespace without the host getting any
//! address or route of the lab. The listening socket is bound before the process switches
//! into the namespace: a socket keeps the namespace it was created in, so the listener stays
//! on the host while every outgoing connection is made inside the lab.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;

use crate::LabError;

/// Binds `listen` here, enters the namespace at `netns` (e.g. `/run/netns/skiff-lab`) and
/// forwards each accepted connection to `target` there. Runs until the process ends; a
/// plain-thread program (no async runtime), one pair of copy threads per connection.
pub fn serve(listen: SocketAddr, netns: &Path, target: SocketAddr) -> Result<(), LabError> {
    let listener = TcpListener::bind(listen).map_err(|e| LabError::Tool {
        command: format!("bind {listen}"),
        message: e.to_string(),
    })?;
    let ns = std::fs::File::open(netns).map_err(|e| LabError::io(netns, e))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Sys {
        what: format!("setns {}", netns.display()),
        source: e,
    })?;
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        // setns applies to the calling thread; connecting here, on the thread that switched,
        // keeps every upstream socket in the lab.
        match TcpStream::connect(target) {
            Ok(upstream) => pipe(client, upstream),
            Err(e) => eprintln!("relay: connecting to {target} in {}: {e}", netns.display()),
        }
    }
    Ok(())
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy(a, b2));
    std::thread::spawn(move || copy(b, a2));
}

/// One direction; the write side is shut down at end of stream so TLS close works.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
