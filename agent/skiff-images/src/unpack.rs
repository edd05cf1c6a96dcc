//! Unpacking one layer tarball into its own directory, ready to be an overlayfs lower dir.
//!
//! Safety rules:
//! - an entry whose path is absolute or contains `..` is refused ([`Error::PathEscape`]);
//! - parent directories are resolved inside the layer root: a symlink met on the way is
//!   followed *as the container would see it* (an absolute target is re-rooted at the layer
//!   root); a relative target that climbs above the root is refused;
//! - the last component is never followed: whatever is there is replaced;
//! - hard link targets follow the same rules.
//!
//! Whiteouts ([`WhiteoutMode`]): as root, `.wh.<name>` becomes a character device 0/0 and
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory, which is what
//! overlayfs reads from lower dirs. Without root neither can be created, so the OCI marker
//! files are kept as empty regular files; such layer dirs are fine for inspection but stacking
//! them with overlayfs would show deleted files again.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};
use crate::media::Compression;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const MAX_SYMLINK_HOPS: u32 = 40;

/// How whiteouts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// overlayfs format: char device 0/0 and `trusted.overlay.opaque=y` (needs root).
    Overlay,
    /// Keep the OCI marker files (`.wh.<name>`, `.wh..wh..opq`) as empty files.
    OciMarkers,
}

/// Options of [`unpack_layer`].
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    pub whiteouts: WhiteoutMode,
    /// Apply owners, device nodes and xattrs from the tarball (needs root).
    pub privileged: bool,
}

impl UnpackOptions {
    /// Overlay whiteouts and ownership when running as root, markers and no chown otherwise.
    pub fn for_current_user() -> UnpackOptions {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        UnpackOptions {
            whiteouts: if root {
                WhiteoutMode::Overlay
            } else {
                WhiteoutMode::OciMarkers
            },
            privileged: root,
        }
    }
}

/// What [`unpack_layer`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the uncompressed tar stream (the layer's DiffID).
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar stream.
    pub tar_size: u64,
    /// Bytes of regular file content written.
    pub content_size: u64,
    /// Number of entries.
    pub entries: u64,
}

/// Wraps a reader in the decompressor for `compression`.
pub fn decompressor<'a, R: Read + 'a>(
    r: R,
    compression: Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(256 * 1024, r),
        )),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Unpacks a (possibly compressed) layer tarball into `dest`, which must be an existing empty
/// directory. Returns the DiffID computed over the whole uncompressed stream; the caller
/// checks it against the image config. On error `dest` holds a partial tree that the caller
/// removes; nothing is ever written outside `dest`.
pub fn unpack_layer<R: Read>(
    reader: R,
    compression: Compression,
    dest: &Path,
    opts: &UnpackOptions,
    layer: &str,
) -> Result<UnpackStats> {
    let io_err = |path: &Path, e: io::Error| Error::Unpack {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        source: e,
    };
    let stream = decompressor(reader, compression).map_err(|e| io_err(dest, e))?;
    let mut archive = tar::Archive::new(HashingReader::new(stream));
    let mut u = Unpacker {
        root: dest.to_path_buf(),
        opts: *opts,
        layer: layer.to_string(),
        dirs: Vec::new(),
        parent_cache: HashMap::new(),
        buf: vec![0u8; 512 * 1024],
        content_size: 0,
    };
    let mut entries = 0u64;
    for entry in archive.entries().map_err(|e| io_err(dest, e))? {
        let mut entry = entry.map_err(|e| io_err(dest, e))?;
        entries += 1;
        u.entry(&mut entry)?;
    }
    u.finish_dirs()?;
    let (diff_id, tar_size) = archive.into_inner().finish().map_err(|e| io_err(dest, e))?;
    Ok(UnpackStats {
        diff_id,
        tar_size,
        content_size: u.content_size,
        entries,
    })
}

struct DirMeta {
    path: PathBuf,
    mode: u32,
    mtime: u64,
}

struct Unpacker {
    root: PathBuf,
    opts: UnpackOptions,
    layer: String,
    dirs: Vec<DirMeta>,
    /// Relative parent path (as in the tarball) → resolved real path.
    parent_cache: HashMap<Vec<u8>, PathBuf>,
    buf: Vec<u8>,
    content_size: u64,
}

/// Splits a tar path into normal components; `..` and absolute paths are escapes.
fn clean_components(raw: &[u8]) -> std::result::Result<Vec<OsString>, ()> {
    if raw.first() == Some(&b'/') {
        return Err(());
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(()),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lchown(p: &Path, uid: u64, gid: u64) -> io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t) })
}

fn set_mtime_nofollow(p: &Path, mtime: u64) -> io::Result<()> {
    let c = cstr(p)?;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: valid path and a two-element timespec array.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn mknod(p: &Path, kind: libc::mode_t, perm: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cstr(p)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: valid path.
    check(unsafe { libc::mknod(c.as_ptr(), kind | (perm as libc::mode_t & 0o7777), dev) })
}

fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c = cstr(p)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in xattr name"))?;
    // SAFETY: valid path, name and value buffer.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Removes whatever is at `p` without following it.
fn remove_existing(p: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map(|_| true),
        Ok(_) => fs::remove_file(p).map(|_| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Unpacker {
    fn err(&self, path: &Path, e: io::Error) -> Error {
        Error::Unpack {
            layer: self.layer.clone(),
            path: path.to_path_buf(),
            source: e,
        }
    }

    fn escape(&self, entry: &[u8]) -> Error {
        Error::PathEscape {
            entry: String::from_utf8_lossy(entry).into_owned(),
            root: self.root.clone(),
        }
    }

    /// Resolves `comps` (a directory path relative to the root) to a real directory inside
    /// the root, creating missing directories when `create` is set.
    fn resolve_dir(&mut self, entry: &[u8], comps: &[OsString], create: bool) -> Result<PathBuf> {
        let key: Vec<u8> = comps
            .iter()
            .flat_map(|c| c.as_bytes().iter().copied().chain(std::iter::once(b'/')))
            .collect();
        if let Some(p) = self.parent_cache.get(&key) {
            return Ok(p.clone());
        }
        let mut real: Vec<OsString> = Vec::new();
        let mut queue: std::collections::VecDeque<OsString> = comps.iter().cloned().collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if real.pop().is_none() {
                        return Err(self.escape(entry));
                    }
                    continue;
                }
                _ => {}
            }
            let mut p = self.root.clone();
            p.extend(&real);
            p.push(&c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(
                            self.err(&p, io::Error::other("too many levels of symbolic links"))
                        );
                    }
                    let target = fs::read_link(&p).map_err(|e| self.err(&p, e))?;
                    let tb = target.as_os_str().as_bytes();
                    if tb.first() == Some(&b'/') {
                        real.clear();
                    }
                    let mut front: Vec<OsString> = tb
                        .split(|&b| b == b'/')
                        .filter(|c| !c.is_empty())
                        .map(|c| OsStr::from_bytes(c).to_os_string())
                        .collect();
                    front.extend(queue.drain(..));
                    queue = front.into();
                }
                Ok(m) if m.is_dir() => real.push(c),
                Ok(_) => {
                    return Err(self.err(
                        &p,
                        io::Error::new(io::ErrorKind::NotADirectory, "parent is not a directory"),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&p)
                        .map_err(|e| self.err(&p, e))?;
                    real.push(c);
                }
                Err(e) => return Err(self.err(&p, e)),
            }
        }
        let mut out = self.root.clone();
        out.extend(&real);
        self.parent_cache.insert(key, out.clone());
        Ok(out)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let comps = clean_components(&raw).map_err(|_| self.escape(&raw))?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);

        let Some((name, parent)) = comps.split_last() else {
            // "./": the layer root itself.
            if kind.is_dir() {
                if self.opts.privileged {
                    lchown(&self.root, uid, gid).map_err(|e| self.err(&self.root, e))?;
                }
                self.dirs.push(DirMeta {
                    path: self.root.clone(),
                    mode,
                    mtime,
                });
            }
            return Ok(());
        };
        let name_b = name.as_bytes();

        // Whiteouts.
        if self.opts.whiteouts == WhiteoutMode::Overlay
            && name_b.starts_with(WHITEOUT_PREFIX.as_bytes())
        {
            let dir = self.resolve_dir(&raw, parent, true)?;
            if name_b == OPAQUE_MARKER.as_bytes() {
                lsetxattr(&dir, OPAQUE_XATTR, b"y").map_err(|e| self.err(&dir, e))?;
            } else if name_b.starts_with(b".wh..wh.") {
                // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to apply.
            } else {
                let target = dir.join(OsStr::from_bytes(&name_b[WHITEOUT_PREFIX.len()..]));
                if remove_existing(&target).map_err(|e| self.err(&target, e))? {
                    self.parent_cache.clear();
                }
                mknod(&target, libc::S_IFCHR, 0, 0, 0).map_err(|e| self.err(&target, e))?;
            }
            return Ok(());
        }

        let dir = self.resolve_dir(&raw, parent, true)?;
        let path = dir.join(name);
        let p = &path;

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match fs::symlink_metadata(p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_existing(p).map_err(|e| self.err(p, e))?;
                        self.parent_cache.clear();
                        fs::DirBuilder::new()
                            .mode(0o700)
                            .create(p)
                            .map_err(|e| self.err(p, e))?;
                    }
                    Err(_) => fs::DirBuilder::new()
                        .mode(0o700)
                        .create(p)
                        .map_err(|e| self.err(p, e))?,
                }
                if self.opts.privileged {
                    lchown(p, uid, gid).map_err(|e| self.err(p, e))?;
                }
                self.set_xattrs(entry, p)?;
                self.dirs.push(DirMeta {
                    path: path.clone(),
                    mode,
                    mtime,
                });
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                if remove_existing(p).map_err(|e| self.err(p, e))? {
                    self.parent_cache.clear();
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(p)
                    .map_err(|e| self.err(p, e))?;
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(self.err(p, e)),
                    };
                    f.write_all(&self.buf[..n]).map_err(|e| self.err(p, e))?;
                    self.content_size += n as u64;
                }
                if self.opts.privileged {
                    std::os::unix::fs::fchown(&f, Some(uid as u32), Some(gid as u32))
                        .map_err(|e| self.err(p, e))?;
                }
                // chmod after chown: chown clears set-id bits.
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| self.err(p, e))?;
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
                    .map_err(|e| self.err(p, e))?;
                drop(f);
                self.set_xattrs(entry, p)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        self.err(
                            p,
                            io::Error::new(io::ErrorKind::InvalidData, "symlink without target"),
                        )
                    })?
                    .into_owned();
                if remove_existing(p).map_err(|e| self.err(p, e))? {
                    self.parent_cache.clear();
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), p)
                    .map_err(|e| self.err(p, e))?;
                if self.opts.privileged {
                    lchown(p, uid, gid).map_err(|e| self.err(p, e))?;
                }
                set_mtime_nofollow(p, mtime).map_err(|e| self.err(p, e))?;
            }
            T::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        self.err(
                            p,
                            io::Error::new(io::ErrorKind::InvalidData, "hard link without target"),
                        )
                    })?
                    .into_owned();
                let tcomps = clean_components(&target_raw).map_err(|_| self.escape(&target_raw))?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(self.escape(&target_raw));
                };
                let tdir = self.resolve_dir(&target_raw, tparent, false)?;
                let target = tdir.join(tname);
                if target == path {
                    return Ok(());
                }
                if remove_existing(p).map_err(|e| self.err(p, e))? {
                    self.parent_cache.clear();
                }
                fs::hard_link(&target, p).map_err(|e| self.err(p, e))?;
            }
            T::Char | T::Block | T::Fifo => {
                if !self.opts.privileged && kind != T::Fifo {
                    tracing::warn!(layer = %self.layer, path = %p.display(), "skipping device node: not root");
                    return Ok(());
                }
                if remove_existing(p).map_err(|e| self.err(p, e))? {
                    self.parent_cache.clear();
                }
                let (ft, major, minor) = match kind {
                    T::Char => (libc::S_IFCHR, header.device_major(), header.device_minor()),
                    T::Block => (libc::S_IFBLK, header.device_major(), header.device_minor()),
                    _ => (libc::S_IFIFO, Ok(Some(0)), Ok(Some(0))),
                };
                let major = major.ok().flatten().unwrap_or(0);
                let minor = minor.ok().flatten().unwrap_or(0);
                mknod(p, ft, mode, major, minor).map_err(|e| self.err(p, e))?;
                if self.opts.privileged {
                    lchown(p, uid, gid).map_err(|e| self.err(p, e))?;
                }
                set_mtime_nofollow(p, mtime).map_err(|e| self.err(p, e))?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
            other => {
                tracing::warn!(layer = %self.layer, path = %p.display(), kind = ?other, "skipping unsupported tar entry");
            }
        }
        Ok(())
    }

    fn set_xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, p: &Path) -> Result<()> {
        if !self.opts.privileged {
            return Ok(());
        }
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return Ok(());
        };
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if let Err(e) = lsetxattr(p, name, ext.value_bytes()) {
                    tracing::warn!(layer = %self.layer, path = %p.display(), xattr = name, error = %e, "cannot set xattr");
                }
            }
        }
        Ok(())
    }

    /// Directory modes and times last: children changed them while they were written.
    fn finish_dirs(&mut self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for d in self.dirs.iter().rev() {
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(|e| self.err(&d.path, e))?;
            set_mtime_nofollow(&d.path, d.mtime).map_err(|e| self.err(&d.path, e))?;
        }
        Ok(())
    }
}
