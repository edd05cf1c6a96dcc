//! Layer unpacking on temp dirs with tarballs built here (no network; overlay-specific checks
//! only when running as root).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use skiff_images::media::Compression;
use skiff_images::{unpack_layer, Digest, Error, UnpackOptions, WhiteoutMode};

enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A name written raw into the header, bypassing the tar crate's own checks.
    RawFile(&'a str, &'a [u8]),
}

fn build_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_uid(1234);
        h.set_gid(4321);
        match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                let name = &mut h.as_old_mut().name;
                name[..p.len()].copy_from_slice(p.as_bytes());
                let link = &mut h.as_old_mut().linkname;
                link[..target.len()].copy_from_slice(target.as_bytes());
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::RawFile(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let name = &mut h.as_old_mut().name;
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn markers() -> UnpackOptions {
    UnpackOptions {
        whiteouts: WhiteoutMode::OciMarkers,
        privileged: false,
    }
}

/// A sandbox: `outer/` holds `root/` (the layer) and `outside/` (must stay untouched).
struct Sandbox {
    _t: tempfile::TempDir,
    outer: std::path::PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let t = tempfile::tempdir().unwrap();
        let outer = t.path().to_path_buf();
        fs::create_dir(outer.join("root")).unwrap();
        fs::create_dir(outer.join("outside")).unwrap();
        fs::write(outer.join("outside/file"), b"original").unwrap();
        Sandbox { _t: t, outer }
    }
    fn root(&self) -> std::path::PathBuf {
        self.outer.join("root")
    }
    /// Everything under outer/ except root/: must be exactly what new() made.
    fn assert_outside_untouched(&self) {
        let mut names: Vec<String> = fs::read_dir(&self.outer)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["outside", "root"]);
        let inside: Vec<_> = fs::read_dir(self.outer.join("outside")).unwrap().collect();
        assert_eq!(inside.len(), 1);
        assert_eq!(
            fs::read(self.outer.join("outside/file")).unwrap(),
            b"original"
        );
    }
}

fn unpack(
    tar: &[u8],
    c: Compression,
    root: &Path,
    opts: &UnpackOptions,
) -> skiff_images::Result<skiff_images::UnpackStats> {
    unpack_layer(tar, c, root, opts, "test-layer")
}

#[test]
fn regular_tree_modes_links_times_and_diffid() {
    let tar = build_tar(&[
        E::Dir("./", 0o755),
        E::Dir("bin/", 0o755),
        E::File("bin/tool", 0o4755, b"#!/bin/sh\necho hi\n"),
        E::Symlink("bin/alias", "tool"),
        E::Hardlink("bin/hard", "bin/tool"),
        E::Dir("etc/", 0o700),
        E::File("etc/conf", 0o600, b"x=1"),
        E::File("deep/implicit/parent/file", 0o644, b"deep"),
    ]);
    for (c, bytes) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd::encode_all(&tar[..], 3).unwrap()),
    ] {
        let sb = Sandbox::new();
        let root = sb.root();
        let stats = unpack(&bytes, c, &root, &UnpackOptions::for_current_user()).unwrap();
        assert_eq!(stats.diff_id, Digest::of(&tar), "{c:?}");
        assert_eq!(stats.tar_size, tar.len() as u64);
        assert_eq!(
            fs::read(root.join("bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let m = fs::symlink_metadata(root.join("bin/tool")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
        assert_eq!(m.mtime(), 1_600_000_000);
        assert_eq!(m.nlink(), 2, "hard link shares the inode");
        assert_eq!(
            m.ino(),
            fs::symlink_metadata(root.join("bin/hard")).unwrap().ino()
        );
        assert_eq!(
            fs::read_link(root.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            fs::symlink_metadata(root.join("bin/alias"))
                .unwrap()
                .mtime(),
            1_600_000_000
        );
        assert_eq!(
            fs::metadata(root.join("etc")).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        assert_eq!(
            fs::metadata(root.join("etc")).unwrap().mtime(),
            1_600_000_000
        );
        assert_eq!(
            fs::read(root.join("deep/implicit/parent/file")).unwrap(),
            b"deep"
        );
        if is_root() {
            assert_eq!((m.uid(), m.gid()), (1234, 4321));
        }
        sb.assert_outside_untouched();
    }
}

#[test]
fn dotdot_entry_is_refused_and_nothing_written_outside() {
    let sb = Sandbox::new();
    let tar = build_tar(&[
        E::File("ok", 0o644, b"fine"),
        E::RawFile("../../etc/passwd", b"root::0:0::/:/bin/sh\n"),
    ]);
    let e = unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap_err();
    assert!(matches!(e, Error::PathEscape { .. }), "{e}");
    assert!(e.to_string().contains("../../etc/passwd"), "{e}");
    let tar = build_tar(&[E::RawFile("a/../../outside/file", b"pwned")]);
    let e = unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap_err();
    assert!(matches!(e, Error::PathEscape { .. }), "{e}");
    sb.assert_outside_untouched();
}

#[test]
fn absolute_entry_is_refused() {
    let sb = Sandbox::new();
    let abs = format!("{}/outside/file", sb.outer.display());
    let tar = build_tar(&[E::RawFile(&abs, b"pwned")]);
    let e = unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap_err();
    assert!(matches!(e, Error::PathEscape { .. }), "{e}");
    sb.assert_outside_untouched();
}

#[test]
fn relative_symlink_out_of_root_is_refused() {
    let sb = Sandbox::new();
    let tar = build_tar(&[
        E::Symlink("up", "../outside"),
        E::File("up/pwned", 0o644, b"pwned"),
    ]);
    let e = unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap_err();
    assert!(matches!(e, Error::PathEscape { .. }), "{e}");
    assert!(e.to_string().contains("up/pwned"), "{e}");
    sb.assert_outside_untouched();
    // Through a chain of symlinks too.
    let sb = Sandbox::new();
    let tar = build_tar(&[
        E::Dir("d/", 0o755),
        E::Symlink("d/l1", "../l2"),
        E::Symlink("l2", "d/../../outside"),
        E::File("d/l1/pwned", 0o644, b"pwned"),
    ]);
    let e = unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap_err();
    assert!(matches!(e, Error::PathEscape { .. }), "{e}");
    sb.assert_outside_untouched();
}

#[test]
fn absolute_symlink_is_resolved_inside_the_root() {
    let sb = Sandbox::new();
    let outside = sb.outer.join("outside");
    let target = outside.to_str().unwrap();
    let tar = build_tar(&[
        E::Symlink("abs", target),
        E::File("abs/pwned", 0o644, b"contained"),
    ]);
    unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap();
    sb.assert_outside_untouched();
    let contained = sb.root().join(target.trim_start_matches('/')).join("pwned");
    assert_eq!(fs::read(contained).unwrap(), b"contained");
    // The symlink itself is kept as written (the container resolves it in its own root).
    assert_eq!(fs::read_link(sb.root().join("abs")).unwrap(), outside);
}

#[test]
fn last_component_symlink_is_replaced_not_followed() {
    let sb = Sandbox::new();
    let victim = sb.outer.join("outside/file");
    let tar = build_tar(&[
        E::Symlink("link", victim.to_str().unwrap()),
        E::File("link", 0o644, b"replaced"),
        E::Symlink("rel", "../outside/file"),
        E::File("rel", 0o644, b"replaced too"),
    ]);
    unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap();
    sb.assert_outside_untouched();
    assert_eq!(fs::read(sb.root().join("link")).unwrap(), b"replaced");
    assert!(fs::symlink_metadata(sb.root().join("rel"))
        .unwrap()
        .is_file());
}

#[test]
fn hardlink_out_of_root_is_refused() {
    let sb = Sandbox::new();
    let tar = build_tar(&[E::Hardlink("h", "../outside/file")]);
    let e = unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap_err();
    assert!(matches!(e, Error::PathEscape { .. }), "{e}");
    let tar = build_tar(&[E::Symlink("s", "../outside"), E::Hardlink("h", "s/file")]);
    let e = unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap_err();
    assert!(matches!(e, Error::PathEscape { .. }), "{e}");
    sb.assert_outside_untouched();
    assert_eq!(
        fs::metadata(sb.outer.join("outside/file")).unwrap().nlink(),
        1
    );
}

#[test]
fn corrupt_gzip_fails_cleanly() {
    let sb = Sandbox::new();
    let mut gz = gzip(&build_tar(&[E::File("a", 0o644, &[7u8; 100_000])]));
    let n = gz.len();
    gz.truncate(n / 2);
    let e = unpack(&gz, Compression::Gzip, &sb.root(), &markers()).unwrap_err();
    assert!(e.to_string().contains("test-layer"), "{e}");
    sb.assert_outside_untouched();
}

#[test]
fn whiteouts_as_oci_markers_without_root() {
    let sb = Sandbox::new();
    let tar = build_tar(&[
        E::Dir("etc/", 0o755),
        E::File("etc/.wh.passwd", 0o644, b""),
        E::Dir("var/", 0o755),
        E::File("var/.wh..wh..opq", 0o644, b""),
    ]);
    unpack(&tar, Compression::None, &sb.root(), &markers()).unwrap();
    assert!(sb.root().join("etc/.wh.passwd").is_file());
    assert!(sb.root().join("var/.wh..wh..opq").is_file());
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid pointers and length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

#[test]
fn whiteouts_in_overlay_format_as_root() {
    if !is_root() {
        println!("skipped: overlay whiteouts need root (char device 0/0, trusted.* xattr)");
        return;
    }
    let sb = Sandbox::new();
    let opts = UnpackOptions {
        whiteouts: WhiteoutMode::Overlay,
        privileged: true,
    };
    let tar = build_tar(&[
        E::Dir("etc/", 0o755),
        E::File("etc/.wh.passwd", 0o644, b""),
        E::File("etc/added", 0o644, b"x"),
        E::File("etc/.wh.added", 0o644, b""),
        E::Dir("var/", 0o755),
        E::File("var/.wh..wh..opq", 0o644, b""),
        E::File("var/kept", 0o644, b"mine"),
        E::File("new/dir/.wh..wh..opq", 0o644, b""),
    ]);
    unpack(&tar, Compression::None, &sb.root(), &opts).unwrap();
    for wh in ["etc/passwd", "etc/added"] {
        let m = fs::symlink_metadata(sb.root().join(wh)).unwrap();
        assert!(m.file_type().is_char_device(), "{wh}");
        assert_eq!(m.rdev(), 0, "{wh}");
    }
    assert!(!sb.root().join("etc/.wh.passwd").exists());
    assert_eq!(
        xattr(&sb.root().join("var"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&sb.root().join("new/dir"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&sb.root().join("etc"), "trusted.overlay.opaque"),
        None
    );
    assert!(!sb.root().join("var/.wh..wh..opq").exists());
    assert_eq!(fs::read(sb.root().join("var/kept")).unwrap(), b"mine");
}

/// Stacks two unpacked layers with a real overlayfs mount and checks what a container sees.
#[test]
fn layers_stack_as_overlay_lower_dirs() {
    if !is_root() {
        println!("skipped: mounting overlayfs needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (l1, l2, mnt) = (
        t.path().join("l1"),
        t.path().join("l2"),
        t.path().join("mnt"),
    );
    for d in [&l1, &l2, &mnt] {
        fs::create_dir(d).unwrap();
    }
    let opts = UnpackOptions::for_current_user();
    let base = build_tar(&[
        E::File("etc/passwd", 0o644, b"root"),
        E::File("etc/group", 0o644, b"root"),
        E::File("var/old/a", 0o644, b"a"),
        E::File("var/b", 0o644, b"b"),
    ]);
    let top = build_tar(&[
        E::File("etc/.wh.passwd", 0o644, b""),
        E::File("var/.wh..wh..opq", 0o644, b""),
        E::File("var/c", 0o644, b"c"),
    ]);
    unpack(&base, Compression::None, &l1, &opts).unwrap();
    unpack(&top, Compression::None, &l2, &opts).unwrap();
    let data = format!("lowerdir={}:{}", l2.display(), l1.display());
    let src = std::ffi::CString::new("overlay").unwrap();
    let target = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
    let d = std::ffi::CString::new(data).unwrap();
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            libc::MS_RDONLY,
            d.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        println!("skipped: overlayfs mount not possible here: {e}");
        return;
    }
    let list = |d: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let seen = (list(&mnt.join("etc")), list(&mnt.join("var")));
    // SAFETY: valid C string.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(seen.0, vec!["group"]);
    assert_eq!(seen.1, vec!["c"]);
}
