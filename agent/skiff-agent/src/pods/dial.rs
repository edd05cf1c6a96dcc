//! TCP connections made from inside a pod's network namespace, so that probes and hooks
//! reach the pod the same way whether or not the host can route to its IP.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connects to `addr` from inside the network namespace at `netns`. A fresh OS thread
/// enters the namespace (never a runtime worker) and exits afterwards; the socket keeps
/// the namespace it was created in.
pub async fn connect(
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    let netns: PathBuf = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-dial".into())
        .spawn(move || {
            let result = (|| -> std::io::Result<TcpStream> {
                let ns = std::fs::File::open(&netns)?;
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                let stream = TcpStream::connect_timeout(&addr, timeout)?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })();
            let _ = tx.send(result);
        })?;
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the namespace thread died"))??;
    tokio::net::TcpStream::from_std(stream)
}
