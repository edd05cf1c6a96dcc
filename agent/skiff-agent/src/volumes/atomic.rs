//! Writing a set of files into a volume so that a running container never sees a mix of old
//! and new content (kubelet's AtomicWriter layout):
//!
//! ```text
//! <dir>/..2026_11_24_09_00_00.123456789/<paths>   the real files, one directory per version
//! <dir>/..data -> ..2026_11_24_09_00_00.123456789  switched with one rename(2)
//! <dir>/<top-level name> -> ..data/<top-level name>
//! ```
//!
//! Readers that follow `<dir>/key` see the old version until `..data` is renamed over, then
//! the new one; keys no longer in the payload disappear after the switch.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const DATA_LINK: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
const MAX_PATH: usize = 4096;
const MAX_NAME: usize = 255;

/// One file of the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (only 0o777 are used).
    pub mode: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// kubelet's rules for a payload path: relative, no `..` element, not starting with `..`
/// (those names are the writer's own), within the length limits. Returns the cleaned path.
pub fn validate_path(target: &str) -> Result<String, WriteError> {
    if target.is_empty() {
        return Err(WriteError::InvalidPath(format!(
            "must not be empty: {target:?}"
        )));
    }
    if target.starts_with('/') {
        return Err(WriteError::InvalidPath(format!(
            "must be relative path: {target}"
        )));
    }
    if target.len() > MAX_PATH {
        return Err(WriteError::InvalidPath(format!(
            "must be less than or equal to {MAX_PATH} characters"
        )));
    }
    let items: Vec<&str> = target.split('/').collect();
    for item in &items {
        if *item == ".." {
            return Err(WriteError::InvalidPath(format!(
                "must not contain '..': {target}"
            )));
        }
        if item.len() > MAX_NAME {
            return Err(WriteError::InvalidPath(format!(
                "filenames must be less than or equal to {MAX_NAME} characters"
            )));
        }
    }
    if items[0].starts_with("..") && items[0].len() > 2 {
        return Err(WriteError::InvalidPath(format!(
            "must not start with '..': {target}"
        )));
    }
    let cleaned: Vec<&str> = items
        .iter()
        .copied()
        .filter(|i| !i.is_empty() && *i != ".")
        .collect();
    if cleaned.is_empty() {
        return Err(WriteError::InvalidPath(format!(
            "must name a file: {target}"
        )));
    }
    Ok(cleaned.join("/"))
}

fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// What the current version holds, to skip rewriting an unchanged payload.
fn read_version(dir: &Path) -> Option<BTreeMap<String, FileProjection>> {
    fn walk(base: &Path, rel: &str, out: &mut BTreeMap<String, FileProjection>) -> Option<()> {
        for entry in std::fs::read_dir(base.join(rel)).ok()? {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let rel_path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                walk(base, &rel_path, out)?;
            } else if meta.is_file() {
                let data = std::fs::read(base.join(&rel_path)).ok()?;
                let mode = meta.permissions().mode() & 0o777;
                out.insert(rel_path, FileProjection { data, mode });
            } else {
                return None;
            }
        }
        Some(())
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out)?;
    Some(out)
}

fn new_version_dir(dir: &Path) -> Result<PathBuf, WriteError> {
    let now = jiff::Timestamp::now();
    let stamp = now.strftime("..%Y_%m_%d_%H_%M_%S").to_string();
    let nanos = now.subsec_nanosecond();
    for attempt in 0u32..1000 {
        let candidate = dir.join(format!("{stamp}.{nanos:09}{attempt}"));
        match std::fs::create_dir(&candidate) {
            Ok(()) => {
                std::fs::set_permissions(&candidate, std::fs::Permissions::from_mode(0o755))
                    .map_err(io("chmod", &candidate))?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("mkdir", &candidate)(e)),
        }
    }
    Err(io("mkdir", dir)(std::io::Error::other(
        "no free name for a new version directory",
    )))
}

fn write_files(
    version: &Path,
    payload: &BTreeMap<String, FileProjection>,
) -> Result<(), WriteError> {
    for (rel, file) in payload {
        let target = version.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("mkdir", parent))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode & 0o777)
            .open(&target)
            .map_err(io("create", &target))?;
        f.write_all(&file.data).map_err(io("write", &target))?;
        // The umask may have cleared bits the pod asked for.
        f.set_permissions(std::fs::Permissions::from_mode(file.mode & 0o777))
            .map_err(io("chmod", &target))?;
    }
    Ok(())
}

/// Writes `payload` (paths validated by `validate_path`) into `dir`, which must exist.
/// Returns whether anything changed.
pub fn write(dir: &Path, payload: &BTreeMap<String, FileProjection>) -> Result<bool, WriteError> {
    write_with_hook(dir, payload, || {})
}

/// `write`, calling `before_switch` once the new version is complete but not yet visible.
pub(crate) fn write_with_hook(
    dir: &Path,
    payload: &BTreeMap<String, FileProjection>,
    before_switch: impl FnOnce(),
) -> Result<bool, WriteError> {
    let mut clean = BTreeMap::new();
    for (path, file) in payload {
        clean.insert(validate_path(path)?, file.clone());
    }
    let link = dir.join(DATA_LINK);
    let old = std::fs::read_link(&link).ok();
    if let Some(old) = &old {
        let same = read_version(&dir.join(old)).is_some_and(|current| current == clean);
        if same {
            return Ok(false);
        }
    }

    let version = new_version_dir(dir)?;
    if let Err(e) = write_files(&version, &clean) {
        let _ = std::fs::remove_dir_all(&version);
        return Err(e);
    }
    let version_name = version.file_name().map(PathBuf::from).unwrap_or_default();
    before_switch();

    let tmp = dir.join(DATA_TMP);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &tmp)(e)),
    }
    std::os::unix::fs::symlink(&version_name, &tmp).map_err(io("symlink", &tmp))?;
    std::fs::rename(&tmp, &link).map_err(io("rename", &link))?;

    let wanted: BTreeSet<&str> = clean.keys().map(|p| top_level(p)).collect();
    for name in &wanted {
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &visible)
                .map_err(io("symlink", &visible))?;
        }
    }
    for entry in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("..") || wanted.contains(name.as_ref()) {
            continue;
        }
        // Only the writer's own symlinks are removed; anything else is not ours to delete.
        let is_ours = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false)
            && std::fs::read_link(entry.path()).is_ok_and(|t| t.starts_with(DATA_LINK));
        if is_ours {
            std::fs::remove_file(entry.path()).map_err(io("remove", &entry.path()))?;
        }
    }
    if let Some(old) = old {
        let old_dir = dir.join(&old);
        let is_version = old.components().all(|c| matches!(c, Component::Normal(_)))
            && old.to_string_lossy().starts_with("..");
        if is_version && old_dir != version {
            std::fs::remove_dir_all(&old_dir).map_err(io("remove", &old_dir))?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn payload(items: &[(&str, &str, u32)]) -> BTreeMap<String, FileProjection> {
        items
            .iter()
            .map(|(p, d, m)| (p.to_string(), file(d, *m)))
            .collect()
    }

    fn read(dir: &Path, p: &str) -> String {
        std::fs::read_to_string(dir.join(p)).unwrap()
    }

    #[test]
    fn the_switch_is_one_rename_and_old_content_stays_readable_until_then() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        assert!(write(dir, &payload(&[("a", "one", 0o644), ("b", "bee", 0o644)])).unwrap());
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        assert!(first.to_string_lossy().starts_with("..20"), "{first:?}");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );

        let mut seen_before = None;
        let changed = write_with_hook(dir, &payload(&[("a", "two", 0o600)]), || {
            seen_before = Some((read(dir, "a"), read(dir, "b")));
        })
        .unwrap();
        assert!(changed);
        assert_eq!(
            seen_before,
            Some(("one".to_string(), "bee".to_string())),
            "complete old version visible right up to the switch"
        );
        assert_eq!(read(dir, "a"), "two");
        assert!(
            std::fs::symlink_metadata(dir.join("b")).is_err(),
            "a removed key disappears"
        );
        assert!(!dir.join(&first).exists(), "the old version is removed");
        let mode = std::fs::metadata(dir.join("a"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "a, ..data and one version: {names:?}");
    }

    #[test]
    fn unchanged_payload_is_not_rewritten_but_a_mode_change_is() {
        let t = tempfile::tempdir().unwrap();
        let p = payload(&[("x", "1", 0o644)]);
        assert!(write(t.path(), &p).unwrap());
        let v1 = std::fs::read_link(t.path().join("..data")).unwrap();
        assert!(!write(t.path(), &p).unwrap());
        assert_eq!(std::fs::read_link(t.path().join("..data")).unwrap(), v1);
        assert!(write(t.path(), &payload(&[("x", "1", 0o400)])).unwrap());
        assert_ne!(std::fs::read_link(t.path().join("..data")).unwrap(), v1);
    }

    #[test]
    fn modes_are_exact_despite_the_umask_and_nested_paths_work() {
        let t = tempfile::tempdir().unwrap();
        write(
            t.path(),
            &payload(&[("conf/app.yaml", "k: v", 0o777), ("./top", "t", 0o440)]),
        )
        .unwrap();
        assert_eq!(read(t.path(), "conf/app.yaml"), "k: v");
        assert_eq!(read(t.path(), "top"), "t");
        let mode = |p: &str| {
            std::fs::metadata(t.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("conf/app.yaml"), 0o777);
        assert_eq!(mode("top"), 0o440);
        assert_eq!(
            std::fs::read_link(t.path().join("conf")).unwrap(),
            Path::new("..data/conf")
        );
    }

    #[test]
    fn bad_paths_are_refused_before_anything_is_written() {
        for (bad, why) in [
            ("", "must not be empty"),
            ("/etc/passwd", "must be relative path"),
            ("a/../../x", "must not contain '..'"),
            ("..", "must not contain '..'"),
            ("..data", "must not start with '..'"),
            ("..2026_01_01/x", "must not start with '..'"),
        ] {
            let t = tempfile::tempdir().unwrap();
            let err = write(t.path(), &payload(&[("ok", "1", 0o644), (bad, "x", 0o644)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0, "{bad:?}");
        }
        assert!(validate_path(&"a".repeat(256)).is_err());
        assert_eq!(validate_path("a//b/./c").unwrap(), "a/b/c");
    }

    #[test]
    fn foreign_files_in_the_volume_are_left_alone() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), &payload(&[("a", "1", 0o644)])).unwrap();
        std::fs::write(t.path().join("stray"), "not ours").unwrap();
        write(t.path(), &payload(&[("b", "2", 0o644)])).unwrap();
        assert_eq!(read(t.path(), "stray"), "not ours");
        assert_eq!(read(t.path(), "b"), "2");
    }
}
