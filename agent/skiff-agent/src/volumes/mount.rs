//! The few mount operations volumes need, behind a trait so that unit tests run without
//! root. Mount points are read from `/proc/thread-self/mountinfo`: the calling thread's mount
//! namespace, which is what a test thread that unshared its own namespace must see.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub trait Mounter: Send + Sync {
    /// Mounts a fresh tmpfs on `target` (an existing directory).
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> std::io::Result<()>;
    /// Unmounts `target`; lazily when it is busy, so that the mount point can go.
    fn unmount(&self, target: &Path) -> std::io::Result<()>;
    /// Bind-mounts what `fd` refers to (typically an O_PATH descriptor) on `target`, which
    /// must exist and be of the same kind (directory or file).
    fn bind_fd(&self, fd: &OwnedFd, target: &Path) -> std::io::Result<()>;
    /// Every mount point at or below `dir`.
    fn mounts_under(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>>;

    fn is_mount_point(&self, path: &Path) -> std::io::Result<bool> {
        Ok(self.mounts_under(path)?.iter().any(|m| m == path))
    }
}

/// The real kernel.
pub struct SysMounter;

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            if let Some(v) = octal {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The mount points listed in a mountinfo text (field 5).
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect()
}

impl Mounter for SysMounter {
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> std::io::Result<()> {
        use nix::mount::{mount, MsFlags};
        let options = size_bytes.map(|s| format!("size={s}"));
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            options.as_deref(),
        )
        .map_err(std::io::Error::from)
    }

    fn bind_fd(&self, fd: &OwnedFd, target: &Path) -> std::io::Result<()> {
        use nix::mount::{mount, MsFlags};
        // The magic link names the inode itself: nothing is looked up by name again.
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(
            Some(source.as_str()),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        use nix::mount::{umount2, MntFlags};
        match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Err(nix::errno::Errno::EBUSY) => {
                umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
                    .map_err(std::io::Error::from)
            }
            other => other.map_err(std::io::Error::from),
        }
    }

    fn mounts_under(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
        Ok(parse_mountinfo(&text)
            .into_iter()
            .filter(|m| m.starts_with(dir))
            .collect())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::Mutex;

    /// Records mounts instead of making them.
    #[derive(Default)]
    pub struct FakeMounter {
        pub mounted: Mutex<Vec<(PathBuf, Option<u64>)>>,
        pub unmounted: Mutex<Vec<PathBuf>>,
        /// (what the descriptor named, target) of every bind.
        pub bound: Mutex<Vec<(PathBuf, PathBuf)>>,
        /// Makes every unmount fail, as a busy mount that cannot be detached would.
        pub refuse_unmount: Mutex<bool>,
    }

    impl Mounter for FakeMounter {
        fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> std::io::Result<()> {
            if !target.is_dir() {
                return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
            }
            self.mounted
                .lock()
                .unwrap()
                .push((target.to_path_buf(), size_bytes));
            Ok(())
        }

        fn bind_fd(&self, fd: &OwnedFd, target: &Path) -> std::io::Result<()> {
            if !target.exists() {
                return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
            }
            let named = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
            self.bound
                .lock()
                .unwrap()
                .push((named, target.to_path_buf()));
            self.mounted
                .lock()
                .unwrap()
                .push((target.to_path_buf(), None));
            Ok(())
        }

        fn unmount(&self, target: &Path) -> std::io::Result<()> {
            if *self.refuse_unmount.lock().unwrap() {
                return Err(std::io::Error::from_raw_os_error(
                    nix::errno::Errno::EBUSY as i32,
                ));
            }
            let mut m = self.mounted.lock().unwrap();
            let before = m.len();
            m.retain(|(p, _)| p != target);
            if m.len() == before {
                return Err(std::io::Error::from_raw_os_error(
                    nix::errno::Errno::EINVAL as i32,
                ));
            }
            self.unmounted.lock().unwrap().push(target.to_path_buf());
            Ok(())
        }

        fn mounts_under(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
            Ok(self
                .mounted
                .lock()
                .unwrap()
                .iter()
                .filter(|(p, _)| p.starts_with(dir))
                .map(|(p, _)| p.clone())
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let text = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /run/a\\134b rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mountinfo(text),
            [PathBuf::from("/mnt/with space"), PathBuf::from("/run/a\\b")]
        );
    }
}
