//! The side effects of init/join/reset: files, binaries and systemctl.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::NodeError;

pub trait System {
    /// Whether systemd runs this machine (PID 1), which the units need.
    fn systemd_is_init(&self) -> bool;
    fn exists(&self, path: &Path) -> bool;
    fn create_dir(&mut self, path: &Path) -> Result<(), NodeError>;
    fn write_file(&mut self, path: &Path, data: &[u8], mode: u32) -> Result<(), NodeError>;
    fn install_binary(&mut self, from: &Path, to: &Path) -> Result<(), NodeError>;
    fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), NodeError>;
    fn systemctl(&mut self, args: &[&str]) -> Result<(), NodeError>;
}

pub struct RealSystem;

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".skiffadm{}", std::process::id()));
    PathBuf::from(tmp)
}

fn parent_dir(path: &Path) -> Result<(), NodeError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    }
    Ok(())
}

impl System for RealSystem {
    fn systemd_is_init(&self) -> bool {
        // systemd's own test (sd_booted): this directory exists only when it is init.
        Path::new("/run/systemd/system").is_dir()
            && std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create_dir(&mut self, path: &Path) -> Result<(), NodeError> {
        std::fs::create_dir_all(path).map_err(|e| NodeError::io(path, e))
    }

    fn write_file(&mut self, path: &Path, data: &[u8], mode: u32) -> Result<(), NodeError> {
        parent_dir(path)?;
        let tmp = tmp_path(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| NodeError::io(&tmp, e))?;
        f.write_all(data).map_err(|e| NodeError::io(&tmp, e))?;
        f.sync_all().map_err(|e| NodeError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| NodeError::io(path, e))
    }

    fn install_binary(&mut self, from: &Path, to: &Path) -> Result<(), NodeError> {
        parent_dir(to)?;
        let tmp = tmp_path(to);
        std::fs::copy(from, &tmp).map_err(|e| NodeError::io(from, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| NodeError::io(&tmp, e))?;
        // A rename, not a copy over: the old binary may be running ("text file busy").
        std::fs::rename(&tmp, to).map_err(|e| NodeError::io(to, e))
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), NodeError> {
        parent_dir(link)?;
        match std::fs::remove_file(link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(NodeError::io(link, e)),
        }
        std::os::unix::fs::symlink(target, link).map_err(|e| NodeError::io(link, e))
    }

    fn systemctl(&mut self, args: &[&str]) -> Result<(), NodeError> {
        let out =
            Command::new("systemctl")
                .args(args)
                .output()
                .map_err(|e| NodeError::Command {
                    command: format!("systemctl {}", args.join(" ")),
                    message: e.to_string(),
                })?;
        if out.status.success() {
            return Ok(());
        }
        let unit = args.last().copied().unwrap_or_default();
        Err(NodeError::Command {
            command: format!("systemctl {}", args.join(" ")),
            message: format!(
                "{}; see `journalctl -u {unit}`",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;

    /// Records what would be done; files "exist" once written or when seeded.
    #[derive(Default)]
    pub struct FakeSystem {
        pub systemd: bool,
        pub files: BTreeMap<PathBuf, String>,
        pub log: Vec<String>,
    }

    impl System for FakeSystem {
        fn systemd_is_init(&self) -> bool {
            self.systemd
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.contains_key(path)
        }
        fn create_dir(&mut self, path: &Path) -> Result<(), NodeError> {
            self.log.push(format!("mkdir {}", path.display()));
            Ok(())
        }
        fn write_file(&mut self, path: &Path, data: &[u8], mode: u32) -> Result<(), NodeError> {
            self.log.push(format!("write {} {mode:o}", path.display()));
            self.files
                .insert(path.into(), String::from_utf8_lossy(data).into_owned());
            Ok(())
        }
        fn install_binary(&mut self, from: &Path, to: &Path) -> Result<(), NodeError> {
            self.log
                .push(format!("install {} {}", from.display(), to.display()));
            Ok(())
        }
        fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), NodeError> {
            self.log
                .push(format!("ln {} {}", target.display(), link.display()));
            Ok(())
        }
        fn systemctl(&mut self, args: &[&str]) -> Result<(), NodeError> {
            self.log.push(format!("systemctl {}", args.join(" ")));
            Ok(())
        }
    }
}
