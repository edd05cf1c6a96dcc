//! Local mode: a whole single-node cluster on this machine without systemd (`skiffadm up`,
//! `status`, `down`, `delete`, `service`, `image load`). skiff-server (embedded store) and
//! one skiff-agent run as children of a small supervisor daemon; everything they keep lives
//! under one root dir, so `delete` can remove exactly what local mode made.

pub mod checks;
pub mod image;
pub mod kubeconfig;
pub mod lab;
pub mod layout;
pub mod network;
pub mod processes;
pub mod service;
pub mod status;
pub mod stop;
pub mod supervisor;
pub mod up;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use layout::DEFAULT_ROOT;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("no local cluster in {} (run `skiffadm up --root-dir {}` first)", .0.display(), .0.display())]
    NotCreated(PathBuf),
    #[error("the local cluster in {} is not running (run `skiffadm up --root-dir {}`)", .0.display(), .0.display())]
    NotRunning(PathBuf),
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
    #[error("preflight: {0}")]
    Preflight(String),
    #[error("{what} did not happen within {secs} s; {hint}")]
    Timeout {
        what: String,
        secs: u64,
        hint: String,
    },
    #[error("API request failed ({what}): {source}")]
    Api { what: String, source: kube::Error },
    #[error("image import from {path}: {message}")]
    Image { path: PathBuf, message: String },
}

impl LocalError {
    pub fn io(path: &Path, source: std::io::Error) -> LocalError {
        LocalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes through a temp file and a rename, with `mode`, so that readers (kubectl, the
/// supervisor, CNI plugins) never see half a file and secrets are never world-readable.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), LocalError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, e))?;
    }
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| LocalError::io(&tmp, e))?;
    f.write_all(data).map_err(|e| LocalError::io(&tmp, e))?;
    f.sync_all().map_err(|e| LocalError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LocalError::io(path, e))
}

/// Local mode changes links, iptables and mounts: it needs root, and says so up front.
pub fn require_root() -> Result<(), LocalError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LocalError::Preflight(
            "local mode runs containers and changes the network: run it as root (sudo)".into(),
        ))
    }
}

/// A client with the cluster's admin credentials.
pub async fn client(layout: &layout::Layout) -> Result<kube::Client, LocalError> {
    // A lab's server names its underlay address, which the host cannot reach; the admin
    // kubeconfig goes through the relay on loopback.
    let lab = layout::Settings::load(layout)?.is_some_and(|s| s.nodes.is_some());
    let path = if lab {
        layout.admin_kubeconfig()
    } else {
        layout.server_kubeconfig()
    };
    let kc = kube::config::Kubeconfig::read_from(&path)
        .map_err(|e| LocalError::Invalid(format!("{}: {e}", path.display())))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| LocalError::Invalid(format!("{}: {e}", path.display())))?;
    kube::Client::try_from(config).map_err(|e| LocalError::Api {
        what: "building a client".into(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_sets_the_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/secret");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
