//! The container's filesystem: rootfs bind mount, spec mounts, /dev,
//! pivot_root, then masked and read-only paths. Runs inside the container's
//! mount namespace, through the [`Syscall`] trait.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Result, ShimError};
use crate::plan::{MountKind, MountPlan, Plan};
use crate::syscall::{FileKind, Syscall};

/// Join `unsafe_path` to `root`, resolving every symlink inside `root` as if
/// `root` were "/", so that the result never points outside of it.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut queue: VecDeque<OsString> = unsafe_path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = queue.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match std::fs::read_link(root.join(&candidate)) {
            Ok(target) => {
                links += 1;
                if links > 255 {
                    return Err(ShimError::sys(
                        "resolve",
                        root.join(unsafe_path.strip_prefix("/").unwrap_or(unsafe_path))
                            .display(),
                        nix::errno::Errno::ELOOP,
                    ));
                }
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut front: Vec<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                while let Some(p) = front.pop() {
                    queue.push_front(p);
                }
            }
            Err(_) => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn is_dev_bind(plan: &Plan) -> bool {
    plan.mounts
        .iter()
        .any(|m| m.destination == Path::new("/dev") && matches!(m.kind, MountKind::Bind { .. }))
}

/// Make one spec mount at its place under the rootfs.
pub fn mount_one(sys: &dyn Syscall, rootfs: &Path, m: &MountPlan, in_userns: bool) -> Result<()> {
    let dest = secure_join(rootfs, &m.destination)?;
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    match &m.kind {
        MountKind::Bind { source, .. } => {
            match sys.kind(source) {
                Some(FileKind::Dir) => sys.mkdir_all(&dest)?,
                Some(_) => {
                    if let Some(parent) = dest.parent() {
                        sys.mkdir_all(parent)?;
                    }
                    if sys.kind(&dest).is_none() {
                        sys.touch(&dest)?;
                    }
                }
                None => {
                    return Err(ShimError::sys(
                        "stat",
                        format!("bind mount source {}", source.display()),
                        nix::errno::Errno::ENOENT,
                    ))
                }
            }
            let first = m.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
            sys.mount(Some(source), &dest, Some("bind"), first, data)?;
            if m.bind_needs_remount() {
                let flags = (m.flags - MsFlags::MS_REC) | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
                if let Err(e) = sys.mount(None, &dest, None, flags, None) {
                    // In a user namespace the flags the mount already has are
                    // locked: keep them and try again.
                    if !in_userns {
                        return Err(e);
                    }
                    let locked = sys.mount_flags(&dest)?
                        & (MsFlags::MS_NOSUID
                            | MsFlags::MS_NODEV
                            | MsFlags::MS_NOEXEC
                            | MsFlags::MS_RDONLY);
                    sys.mount(None, &dest, None, flags | locked, None)?;
                }
            }
        }
        MountKind::Fs { fstype, source } => {
            sys.mkdir_all(&dest)?;
            sys.mount(Some(Path::new(source)), &dest, Some(fstype), m.flags, data)?;
        }
    }
    for p in &m.propagation {
        sys.mount(None, &dest, None, *p, None)?;
    }
    Ok(())
}

/// Create the device nodes and the usual /dev symlinks.
fn setup_dev(sys: &dyn Syscall, plan: &Plan, in_userns: bool) -> Result<()> {
    let rootfs = &plan.rootfs;
    for d in &plan.devices {
        let dest = secure_join(rootfs, &d.path)?;
        if let Some(parent) = dest.parent() {
            sys.mkdir_all(parent)?;
        }
        if in_userns {
            // Device nodes cannot be created in a user namespace: bind the
            // host's instead.
            if sys.kind(&dest).is_none() {
                sys.touch(&dest)?;
            }
            sys.mount(Some(&d.path), &dest, Some("bind"), MsFlags::MS_BIND, None)?;
        } else {
            sys.remove_file(&dest)?;
            sys.mknod(&dest, d.kind, d.mode, d.major, d.minor, d.uid, d.gid)?;
        }
    }
    let dev = rootfs.join("dev");
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let link = dev.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            sys.symlink(Path::new(target), &link)?;
        }
    }
    let ptmx = dev.join("ptmx");
    sys.remove_file(&ptmx)?;
    sys.symlink(Path::new("pts/ptmx"), &ptmx)?;
    Ok(())
}

/// Everything up to and including pivot_root. On return the process is in
/// the new root with "/" as working directory.
pub fn prepare_rootfs(sys: &dyn Syscall, plan: &Plan, in_userns: bool) -> Result<()> {
    let rootfs = &plan.rootfs;
    let shared = plan.rootfs_propagation.contains(MsFlags::MS_SHARED);
    // pivot_root refuses shared mounts: stay private until after it.
    let first = if shared {
        MsFlags::MS_PRIVATE | MsFlags::MS_REC
    } else {
        plan.rootfs_propagation
    };
    sys.mount(None, Path::new("/"), None, first, None)?;
    match &plan.overlay {
        Some(o) => sys.mount(
            Some(Path::new("overlay")),
            rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(&o.data()),
        )?,
        None => sys.mount(
            Some(rootfs),
            rootfs,
            Some("bind"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?,
    }
    for m in &plan.mounts {
        mount_one(sys, rootfs, m, in_userns)?;
    }
    if !is_dev_bind(plan) {
        setup_dev(sys, plan, in_userns)?;
    }
    // pivot_root(".", "."): the old root ends up stacked under the new one,
    // and detaching "." afterwards removes it without needing a directory
    // for it inside the rootfs.
    sys.chdir(rootfs)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    sys.umount2(Path::new("."), MntFlags::MNT_DETACH)?;
    sys.chdir(Path::new("/"))?;
    if shared {
        sys.mount(None, Path::new("/"), None, plan.rootfs_propagation, None)?;
    }
    Ok(())
}

/// Hide a path: a read-only empty tmpfs over a directory, /dev/null over
/// anything else. Missing paths are skipped.
pub fn mask_path(sys: &dyn Syscall, path: &Path) -> Result<()> {
    match sys.kind(path) {
        None => Ok(()),
        Some(FileKind::Dir) => sys.mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        ),
        Some(_) => sys.mount(
            Some(Path::new("/dev/null")),
            path,
            Some("bind"),
            MsFlags::MS_BIND,
            None,
        ),
    }
}

/// Make a path read-only by bind mounting it onto itself and remounting;
/// the flags it already has (nosuid, noexec …) are kept.
pub fn readonly_path(sys: &dyn Syscall, path: &Path) -> Result<()> {
    if sys.kind(path).is_none() {
        return Ok(());
    }
    sys.mount(
        Some(path),
        path,
        Some("bind"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let flags = sys.mount_flags(path)?;
    sys.mount(
        None,
        path,
        None,
        flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None,
    )
}

/// What happens after pivot_root: hostname, sysctls, read-only and masked
/// paths, read-only root.
pub fn finish_rootfs(sys: &dyn Syscall, plan: &Plan) -> Result<()> {
    if let Some(h) = &plan.hostname {
        sys.sethostname(h)?;
    }
    if let Some(d) = &plan.domainname {
        sys.setdomainname(d)?;
    }
    for (k, v) in &plan.sysctl {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        sys.write_file(&p, v)?;
    }
    for p in &plan.readonly_paths {
        readonly_path(sys, p)?;
    }
    for p in &plan.masked_paths {
        mask_path(sys, p)?;
    }
    if plan.root_readonly {
        let flags = sys.mount_flags(Path::new("/"))?;
        sys.mount(
            None,
            Path::new("/"),
            None,
            flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}
