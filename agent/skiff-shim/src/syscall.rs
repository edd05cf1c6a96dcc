//! The kernel operations used to build a container's filesystem, behind a
//! trait: [`LinuxSyscall`] does them, [`FakeSyscall`] records them so that
//! the mount sequence can be checked by unit tests without root.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use crate::error::{Result, ShimError, SysContext};
use crate::plan::DeviceKind;

/// What is at a path (following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Other,
}

pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()>;
    fn chroot(&self, path: &Path) -> Result<()>;
    fn chdir(&self, path: &Path) -> Result<()>;
    fn mkdir_all(&self, path: &Path) -> Result<()>;
    /// Create an empty regular file (a mount point for a file bind mount).
    fn touch(&self, path: &Path) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn mknod(
        &self,
        path: &Path,
        kind: DeviceKind,
        mode: u32,
        major: u64,
        minor: u64,
        uid: u32,
        gid: u32,
    ) -> Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> Result<()>;
    fn remove_file(&self, path: &Path) -> Result<()>;
    fn kind(&self, path: &Path) -> Option<FileKind>;
    /// Mount flags (MS_RDONLY, MS_NOSUID …) of the mount holding `path`.
    fn mount_flags(&self, path: &Path) -> Result<MsFlags>;
    fn sethostname(&self, name: &str) -> Result<()>;
    fn setdomainname(&self, name: &str) -> Result<()>;
    fn write_file(&self, path: &Path, data: &str) -> Result<()>;
}

/// The real thing.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ShimError::spec("path", format!("{} contains a NUL byte", p.display())))
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(|e| {
            ShimError::sys(
                "mount",
                format!(
                    "{} on {} type {} flags {:?} data {:?}",
                    source.map(|s| s.display().to_string()).unwrap_or_default(),
                    target.display(),
                    fstype.unwrap_or("-"),
                    flags,
                    data.unwrap_or("")
                ),
                e,
            )
        })
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<()> {
        nix::mount::umount2(target, flags).ctx("umount2", target.display())
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        nix::unistd::pivot_root(new_root, put_old).ctx("pivot_root", new_root.display())
    }

    fn chroot(&self, path: &Path) -> Result<()> {
        nix::unistd::chroot(path).ctx("chroot", path.display())
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        nix::unistd::chdir(path).ctx("chdir", path.display())
    }

    fn mkdir_all(&self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path).map_err(|e| ShimError::io("mkdir", path, e))
    }

    fn touch(&self, path: &Path) -> Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(|_| ())
            .map_err(|e| ShimError::io("create", path, e))
    }

    fn mknod(
        &self,
        path: &Path,
        kind: DeviceKind,
        mode: u32,
        major: u64,
        minor: u64,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let sflag = match kind {
            DeviceKind::Char => SFlag::S_IFCHR,
            DeviceKind::Block => SFlag::S_IFBLK,
            DeviceKind::Fifo => SFlag::S_IFIFO,
        };
        let perm = Mode::from_bits_truncate(mode);
        nix::sys::stat::mknod(path, sflag, perm, nix::sys::stat::makedev(major, minor))
            .ctx("mknod", path.display())?;
        // mknod honours the umask: set the exact mode afterwards.
        nix::sys::stat::fchmodat(
            None,
            path,
            perm,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .ctx("chmod", path.display())?;
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .ctx("chown", path.display())
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        std::os::unix::fs::symlink(target, link).map_err(|e| ShimError::io("symlink", link, e))
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ShimError::io("remove", path, e)),
        }
    }

    fn kind(&self, path: &Path) -> Option<FileKind> {
        let m = std::fs::metadata(path).ok()?;
        Some(if m.is_dir() {
            FileKind::Dir
        } else if m.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        })
    }

    fn mount_flags(&self, path: &Path) -> Result<MsFlags> {
        let c = cpath(path)?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid C string and st a valid out pointer.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(ShimError::sys(
                "statvfs",
                path.display(),
                nix::errno::Errno::last(),
            ));
        }
        let f = st.f_flag;
        let mut out = MsFlags::empty();
        for (st_bit, ms) in [
            (libc::ST_RDONLY, MsFlags::MS_RDONLY),
            (libc::ST_NOSUID, MsFlags::MS_NOSUID),
            (libc::ST_NODEV, MsFlags::MS_NODEV),
            (libc::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (libc::ST_SYNCHRONOUS, MsFlags::MS_SYNCHRONOUS),
            (libc::ST_MANDLOCK, MsFlags::MS_MANDLOCK),
            (libc::ST_NOATIME, MsFlags::MS_NOATIME),
            (libc::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (libc::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f & st_bit != 0 {
                out |= ms;
            }
        }
        Ok(out)
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        nix::unistd::sethostname(name).ctx("sethostname", name)
    }

    fn setdomainname(&self, name: &str) -> Result<()> {
        // SAFETY: pointer and length describe `name`.
        let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        if rc != 0 {
            return Err(ShimError::sys(
                "setdomainname",
                name,
                nix::errno::Errno::last(),
            ));
        }
        Ok(())
    }

    fn write_file(&self, path: &Path, data: &str) -> Result<()> {
        std::fs::write(path, data).map_err(|e| ShimError::io("write", path, e))
    }
}

/// One recorded call of [`FakeSyscall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(PathBuf),
    PivotRoot(PathBuf),
    Chroot(PathBuf),
    Chdir(PathBuf),
    Mkdir(PathBuf),
    Touch(PathBuf),
    Mknod(PathBuf, u64, u64),
    Symlink(PathBuf, PathBuf),
    Remove(PathBuf),
    Hostname(String),
    Domainname(String),
    Write(PathBuf, String),
}

/// Records every call; `kind()` answers from a table given by the test.
#[derive(Debug)]
pub struct FakeSyscall {
    pub calls: RefCell<Vec<Call>>,
    pub kinds: RefCell<Vec<(PathBuf, FileKind)>>,
    /// Flags reported by mount_flags for every path.
    pub flags: MsFlags,
}

impl Default for FakeSyscall {
    fn default() -> Self {
        FakeSyscall {
            calls: RefCell::default(),
            kinds: RefCell::default(),
            flags: MsFlags::empty(),
        }
    }
}

impl FakeSyscall {
    pub fn with_kind(self, p: impl Into<PathBuf>, k: FileKind) -> Self {
        self.kinds.borrow_mut().push((p.into(), k));
        self
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
    /// Only the mount calls, as (target, fstype, flags).
    pub fn mounts(&self) -> Vec<(PathBuf, Option<String>, MsFlags)> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    target,
                    fstype,
                    flags,
                    ..
                } => Some((target.clone(), fstype.clone(), *flags)),
                _ => None,
            })
            .collect()
    }
    fn push(&self, c: Call) {
        self.calls.borrow_mut().push(c);
    }
}

impl Syscall for FakeSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        self.push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        });
        Ok(())
    }
    fn umount2(&self, target: &Path, _flags: MntFlags) -> Result<()> {
        self.push(Call::Umount(target.to_path_buf()));
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path, _put_old: &Path) -> Result<()> {
        self.push(Call::PivotRoot(new_root.to_path_buf()));
        Ok(())
    }
    fn chroot(&self, path: &Path) -> Result<()> {
        self.push(Call::Chroot(path.to_path_buf()));
        Ok(())
    }
    fn chdir(&self, path: &Path) -> Result<()> {
        self.push(Call::Chdir(path.to_path_buf()));
        Ok(())
    }
    fn mkdir_all(&self, path: &Path) -> Result<()> {
        self.push(Call::Mkdir(path.to_path_buf()));
        Ok(())
    }
    fn touch(&self, path: &Path) -> Result<()> {
        self.push(Call::Touch(path.to_path_buf()));
        Ok(())
    }
    fn mknod(
        &self,
        path: &Path,
        _kind: DeviceKind,
        _mode: u32,
        major: u64,
        minor: u64,
        _uid: u32,
        _gid: u32,
    ) -> Result<()> {
        self.push(Call::Mknod(path.to_path_buf(), major, minor));
        Ok(())
    }
    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        self.push(Call::Symlink(target.to_path_buf(), link.to_path_buf()));
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> Result<()> {
        self.push(Call::Remove(path.to_path_buf()));
        Ok(())
    }
    fn kind(&self, path: &Path) -> Option<FileKind> {
        self.kinds
            .borrow()
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, k)| *k)
    }
    fn mount_flags(&self, _path: &Path) -> Result<MsFlags> {
        Ok(self.flags)
    }
    fn sethostname(&self, name: &str) -> Result<()> {
        self.push(Call::Hostname(name.to_string()));
        Ok(())
    }
    fn setdomainname(&self, name: &str) -> Result<()> {
        self.push(Call::Domainname(name.to_string()));
        Ok(())
    }
    fn write_file(&self, path: &Path, data: &str) -> Result<()> {
        self.push(Call::Write(path.to_path_buf(), data.to_string()));
        Ok(())
    }
}
