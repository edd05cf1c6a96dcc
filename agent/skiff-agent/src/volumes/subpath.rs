//! Resolving a `subPath` inside a volume without ever leaving it. The volume's content is
//! written by the pod, so any component may be a symlink planted to reach the host: every
//! lookup goes through openat2(2) with RESOLVE_BENEATH, which refuses absolute symlinks and
//! any `..` or symlink that climbs above the volume (as kubelet refuses them), and missing
//! directories are created one component at a time relative to an already-checked parent.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

/// Why a subPath could not be used; kubelet shows users only which mount failed, so the
/// detail is for the agent's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Creating a missing directory of the subPath failed.
    Create(String),
    /// The subPath (or the volume) could not be opened inside the volume.
    Prepare(String),
}

fn open_beneath(root: &OwnedFd, rel: &str, extra: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | extra)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_raw_fd(), rel, how)?;
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_path(fd: &OwnedFd) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// A subPath opened inside its volume.
#[derive(Debug)]
pub struct Opened {
    /// An O_PATH descriptor of what the subPath names: binding `/proc/self/fd/<fd>` mounts
    /// exactly this inode, whatever the pod renames or replaces afterwards.
    pub fd: OwnedFd,
    /// Its real path when it was opened (for logs and tests; not safe to bind by name).
    pub path: PathBuf,
    pub is_dir: bool,
}

/// The real path of `sub_path` inside `volume`; see `open`.
pub fn resolve(volume: &Path, sub_path: &str) -> Result<PathBuf, Failure> {
    open(volume, sub_path).map(|o| o.path)
}

/// Opens `sub_path` (already checked to be relative and free of `..`) inside `volume`,
/// creating missing directories with the volume's own permissions, as kubelet does.
pub fn open(volume: &Path, sub_path: &str) -> Result<Opened, Failure> {
    let root_path = volume
        .canonicalize()
        .map_err(|e| Failure::Prepare(format!("{}: {e}", volume.display())))?;
    let root: OwnedFd = File::options()
        .read(true)
        .custom_flags(libc_o_path_dir())
        .open(&root_path)
        .map_err(|e| Failure::Prepare(format!("{}: {e}", root_path.display())))?
        .into();
    let parts: Vec<&str> = sub_path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return Ok(Opened {
            fd: root,
            path: root_path,
            is_dir: true,
        });
    }
    // Symlinks are followed, the last component's too, but RESOLVE_BENEATH makes the kernel
    // refuse any step (absolute target, `..`, magic link) that would leave the root.
    let resolve_last = |rel: &str| open_beneath(&root, rel, OFlag::empty());
    let full = parts.join("/");
    let fd = match resolve_last(&full) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            let mode = std::fs::metadata(&root_path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o755);
            make_dirs(&root, &parts, mode)?;
            resolve_last(&full).map_err(|e| {
                Failure::Prepare(format!("open {full} in {}: {e}", root_path.display()))
            })?
        }
        Err(e) => {
            return Err(Failure::Prepare(format!(
                "open {full} in {}: {e}",
                root_path.display()
            )))
        }
    };
    let real = fd_path(&fd).map_err(|e| Failure::Prepare(format!("readlink: {e}")))?;
    // Belt and braces: the kernel already refused to leave the root.
    if !real.starts_with(&root_path) {
        return Err(Failure::Prepare(format!(
            "subpath {} not within volume path {}",
            real.display(),
            root_path.display()
        )));
    }
    let is_dir = nix::sys::stat::fstat(fd.as_raw_fd())
        .map(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR)
        .map_err(|e| Failure::Prepare(format!("stat {}: {e}", real.display())))?;
    Ok(Opened {
        fd,
        path: real,
        is_dir,
    })
}

fn libc_o_path_dir() -> i32 {
    (OFlag::O_PATH | OFlag::O_DIRECTORY).bits()
}

/// Creates each missing component relative to its parent, itself opened beneath the root.
fn make_dirs(root: &OwnedFd, parts: &[&str], mode: u32) -> Result<(), Failure> {
    for i in 0..parts.len() {
        let prefix = parts[..=i].join("/");
        match open_beneath(root, &prefix, OFlag::empty()) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(Failure::Create(format!("open {prefix}: {e}"))),
        }
        let parent = if i == 0 {
            root.try_clone()
                .map_err(|e| Failure::Create(format!("dup: {e}")))?
        } else {
            open_beneath(root, &parts[..i].join("/"), OFlag::O_DIRECTORY)
                .map_err(|e| Failure::Create(format!("open {}: {e}", parts[..i].join("/"))))?
        };
        match mkdirat(
            Some(parent.as_raw_fd()),
            parts[i],
            Mode::from_bits_truncate(mode),
        ) {
            Ok(()) => {}
            // A dangling symlink is in the way: it must not be followed to create its target.
            Err(e) => return Err(Failure::Create(format!("mkdir {prefix}: {e}"))),
        }
        let made = open_beneath(root, &prefix, OFlag::O_DIRECTORY)
            .map_err(|e| Failure::Create(format!("open {prefix}: {e}")))?;
        // mkdirat applied the umask; the volume's own mode is what kubelet gives.
        let proc_path = format!("/proc/self/fd/{}", made.as_raw_fd());
        std::fs::set_permissions(&proc_path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Failure::Create(format!("chmod {prefix}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn volume() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let v = t.path().join("vol");
        std::fs::create_dir(&v).unwrap();
        std::fs::create_dir(t.path().join("outside")).unwrap();
        std::fs::write(t.path().join("outside/secret"), "host").unwrap();
        let canonical = v.canonicalize().unwrap();
        (t, canonical)
    }

    #[test]
    fn plain_and_missing_subpaths_resolve_inside() {
        let (_t, v) = volume();
        std::fs::create_dir_all(v.join("a/b")).unwrap();
        std::fs::write(v.join("a/b/f"), "x").unwrap();
        assert_eq!(resolve(&v, "a/b/f").unwrap(), v.join("a/b/f"));
        assert_eq!(resolve(&v, "./a//b").unwrap(), v.join("a/b"));
        let made = resolve(&v, "new/deeper").unwrap();
        assert_eq!(made, v.join("new/deeper"));
        assert!(made.is_dir(), "missing subPath directories are created");
        let vmode = std::fs::metadata(&v).unwrap().permissions().mode() & 0o7777;
        let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, vmode, "created with the volume's permissions");
    }

    #[test]
    fn symlinks_inside_the_volume_are_followed_to_their_real_path() {
        let (_t, v) = volume();
        std::fs::create_dir_all(v.join("..2026/conf")).unwrap();
        std::fs::write(v.join("..2026/conf/app"), "x").unwrap();
        symlink("..2026", v.join("..data")).unwrap();
        symlink("..data/conf", v.join("conf")).unwrap();
        symlink("./x/../conf", v.join("relative")).unwrap();
        std::fs::create_dir(v.join("x")).unwrap();
        assert_eq!(resolve(&v, "conf/app").unwrap(), v.join("..2026/conf/app"));
        assert_eq!(resolve(&v, "conf").unwrap(), v.join("..2026/conf"));
        assert_eq!(resolve(&v, "relative").unwrap(), v.join("..2026/conf"));
    }

    #[test]
    fn escapes_are_refused() {
        let (t, v) = volume();
        let outside = t.path().join("outside");
        symlink(&outside, v.join("abs")).unwrap();
        symlink("../outside", v.join("up")).unwrap();
        std::fs::create_dir(v.join("d")).unwrap();
        symlink("../../outside/secret", v.join("d/deep")).unwrap();
        symlink("hop2", v.join("hop1")).unwrap();
        symlink("d/../../outside", v.join("hop2")).unwrap();
        symlink("/proc/self/root", v.join("magic")).unwrap();
        for bad in [
            "abs",
            "abs/secret",
            "up",
            "up/secret",
            "d/deep",
            "hop1",
            "hop1/secret",
            "magic",
        ] {
            let r = resolve(&v, bad);
            assert!(
                matches!(r, Err(Failure::Prepare(_))),
                "{bad}: {r:?} must not resolve"
            );
        }
        // Creating below a symlink that leaves the volume must not create anything outside.
        let r = resolve(&v, "up/newdir");
        assert!(
            matches!(r, Err(Failure::Prepare(_) | Failure::Create(_))),
            "{r:?}"
        );
        assert!(!outside.join("newdir").exists(), "nothing created outside");
        symlink("../outside/nothing-here", v.join("dangling")).unwrap();
        let r = resolve(&v, "dangling/x");
        assert!(r.is_err(), "{r:?}");
        assert!(!outside.join("nothing-here").exists());
    }
}
