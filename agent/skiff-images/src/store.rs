//! The content-addressed image store.
//!
//! ```text
//! <root>/blobs/sha256/<hex>     manifests, configs, layer tarballs (verified, then renamed)
//! <root>/layers/sha256/<hex>/   one unpacked layer per DiffID, shared by every image using it
//! <root>/index.json             reference → manifest, config, layers (+ sizes, times)
//! <root>/tmp/                   downloads and unpacks in progress (emptied at open)
//! ```
//!
//! Concurrency: one download per blob digest and one unpack per DiffID at a time (a per-key
//! async lock; whoever waits finds the result in place). Pulls and imports hold a shared lock,
//! `remove` and `gc` an exclusive one, so a layer is never deleted under a pull that uses it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::media::{layer_compression, sniff_compression, Descriptor, ImageConfigFile, Manifest};
use crate::reference::Reference;
use crate::registry::RegistryClient;
use crate::unpack::{unpack_layer, UnpackOptions};

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    pub media_type: String,
    /// Digest of the uncompressed tar: names the unpacked directory.
    pub diff_id: Digest,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Normalised reference (`docker.io/library/busybox:latest`).
    pub reference: String,
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    /// The image ID.
    pub config_digest: Digest,
    pub config_size: u64,
    /// Base layer first.
    pub layers: Vec<LayerRef>,
    /// Unix seconds.
    pub pulled_at: u64,
    pub last_used: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LayerInfo {
    /// Disk usage of the unpacked directory (st_blocks).
    disk_usage: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    images: BTreeMap<String, Image>,
    layers: BTreeMap<Digest, LayerInfo>,
}

/// Kubernetes' `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry every time (a pull only downloads what changed).
    Always,
    /// Pull only when the store has no image under that reference.
    IfNotPresent,
    /// Never contact the registry.
    Never,
}

impl PullPolicy {
    /// The kubelet's default: `Always` for `:latest` or untagged references, else
    /// `IfNotPresent`.
    pub fn default_for(reference: &str) -> PullPolicy {
        match Reference::parse(reference) {
            Ok(r) if r.digest.is_none() && r.tag.as_deref() == Some("latest") => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// When to collect garbage (bytes of store usage, as in the kubelet's high/low thresholds).
#[derive(Debug, Clone, Copy)]
pub struct GcPolicy {
    /// Collect when usage is above this.
    pub high_bytes: u64,
    /// Collect until usage is at or below this.
    pub low_bytes: u64,
}

/// What [`ImageStore::gc`] did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub usage_before: u64,
    pub usage_after: u64,
    pub removed: Vec<String>,
}

struct Inner {
    root: PathBuf,
    unpack: UnpackOptions,
    index: Mutex<IndexFile>,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    exclusive: tokio::sync::RwLock<()>,
}

/// The image store of one node agent. Clones share the store.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A unique path under `tmp/`.
fn tmp_path(root: &Path, prefix: &str) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    root.join("tmp")
        .join(format!("{prefix}-{}-{n}", std::process::id()))
}

/// Disk usage of a tree (st_blocks), without following symlinks.
fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = m.blocks() * 512;
    if m.is_dir() {
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                total += du(&e.path());
            }
        }
    }
    total
}

/// Removes the key of a finished in-flight operation when nobody else waits on it.
struct InflightGuard<'a> {
    inner: &'a Inner,
    key: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.inner.inflight.lock().unwrap();
        // 2 = the map's Arc + the one inside our guard.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) <= 2)
        {
            map.remove(&self.key);
        }
    }
}

impl Inner {
    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    async fn lock_key(&self, key: String) -> InflightGuard<'_> {
        let m = self
            .inflight
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = m.lock_owned().await;
        InflightGuard {
            inner: self,
            key,
            _guard: guard,
        }
    }

    fn save_index(&self, index: &IndexFile) -> Result<()> {
        let path = self.root.join("index.json");
        let tmp = tmp_path(&self.root, "index");
        let bytes =
            serde_json::to_vec_pretty(index).map_err(|e| Error::malformed("store index", e))?;
        let mut f = fs::File::create(&tmp).at(&tmp)?;
        f.write_all(&bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)
    }

    /// Writes in-memory bytes as a blob after checking their digest.
    fn put_blob_bytes(&self, expected: &Digest, bytes: &[u8], what: &str) -> Result<()> {
        expected.verify(&Digest::of(bytes), what)?;
        let path = self.blob_path(expected);
        if path.exists() {
            return Ok(());
        }
        let tmp = tmp_path(&self.root, "blob");
        fs::write(&tmp, bytes).at(&tmp)?;
        fs::rename(&tmp, &path).at(&path)
    }

    /// Copies a reader into the store as a blob, verifying digest (and size when known).
    /// Returns the digest and size. Used by imports.
    pub(crate) fn put_blob_reader(
        &self,
        mut r: impl io::Read,
        expected: Option<&Digest>,
        size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let tmp = tmp_path(&self.root, "blob");
        let res = (|| {
            let f = fs::File::create(&tmp).at(&tmp)?;
            let mut w = crate::digest::HashingWriter::new(io::BufWriter::with_capacity(1 << 20, f));
            io::copy(&mut r, &mut w).at(&tmp)?;
            let (mut bw, digest, n) = w.finish();
            bw.flush().at(&tmp)?;
            if let Some(e) = expected {
                e.verify(&digest, what)?;
            }
            if let Some(s) = size {
                if s != n {
                    return Err(Error::SizeMismatch {
                        what: what.to_string(),
                        expected: s,
                        actual: n,
                    });
                }
            }
            let path = self.blob_path(&digest);
            fs::rename(&tmp, &path).at(&path)?;
            Ok((digest, n))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Unpacks a layer blob into `layers/sha256/<diff_id>` (blocking). Returns disk usage.
    fn unpack_blob(&self, layer: &LayerRef) -> Result<u64> {
        let final_dir = self.layer_path(&layer.diff_id);
        if final_dir.is_dir() {
            return Ok(du(&final_dir));
        }
        layer_compression(&layer.media_type)?;
        let blob = self.blob_path(&layer.digest);
        let mut f = fs::File::open(&blob).at(&blob)?;
        let mut head = [0u8; 4];
        let n = io::Read::read(&mut f, &mut head).at(&blob)?;
        let compression = sniff_compression(&head[..n]);
        io::Seek::seek(&mut f, io::SeekFrom::Start(0)).at(&blob)?;
        let tmp = tmp_path(&self.root, "layer");
        fs::create_dir(&tmp).at(&tmp)?;
        let res = (|| {
            let what = format!("layer {}", layer.digest);
            let stats = unpack_layer(
                io::BufReader::with_capacity(1 << 20, f),
                compression,
                &tmp,
                &self.unpack,
                &what,
            )?;
            layer
                .diff_id
                .verify(&stats.diff_id, format!("DiffID of {what}"))?;
            fs::rename(&tmp, &final_dir).at(&final_dir)?;
            tracing::debug!(layer = %layer.diff_id, entries = stats.entries, bytes = stats.content_size, "layer unpacked");
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fs::remove_dir_all(&tmp);
            if final_dir.is_dir() {
                // Someone else (another store handle) won the race.
                return Ok(du(&final_dir));
            }
            return Err(e);
        }
        Ok(du(&final_dir))
    }

    fn record_layer(&self, diff_id: &Digest, disk_usage: u64) {
        self.index
            .lock()
            .unwrap()
            .layers
            .insert(diff_id.clone(), LayerInfo { disk_usage });
    }

    fn usage(index: &IndexFile) -> u64 {
        let mut blobs: BTreeMap<&Digest, u64> = BTreeMap::new();
        let mut layers: BTreeSet<&Digest> = BTreeSet::new();
        for img in index.images.values() {
            blobs.insert(&img.manifest_digest, img.manifest_size);
            blobs.insert(&img.config_digest, img.config_size);
            for l in &img.layers {
                blobs.insert(&l.digest, l.size);
                layers.insert(&l.diff_id);
            }
        }
        blobs.values().sum::<u64>()
            + layers
                .iter()
                .map(|d| index.layers.get(*d).map(|l| l.disk_usage).unwrap_or(0))
                .sum::<u64>()
    }

    /// Commits a fully unpacked image under `reference`.
    fn commit(&self, image: Image) -> Result<Image> {
        let mut index = self.index.lock().unwrap();
        // When a tag moved, what only the old image used is left for `gc`'s orphan sweep: it
        // cannot be deleted here, where other pulls may be about to use the same layers.
        index.images.insert(image.reference.clone(), image.clone());
        self.save_index(&index)?;
        Ok(image)
    }

    /// Deletes blobs and layer dirs that no image references (callers hold the exclusive lock).
    fn sweep_orphans(&self, index: &IndexFile) {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for img in index.images.values() {
            blobs.insert(img.manifest_digest.hex().to_string());
            blobs.insert(img.config_digest.hex().to_string());
            for l in &img.layers {
                blobs.insert(l.digest.hex().to_string());
                layers.insert(l.diff_id.hex().to_string());
            }
        }
        for (dir, keep) in [("blobs/sha256", &blobs), ("layers/sha256", &layers)] {
            let Ok(rd) = fs::read_dir(self.root.join(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let p = e.path();
                tracing::info!(path = %p.display(), "removing unreferenced store entry");
                let _ = if p.is_dir() {
                    let trash = tmp_path(&self.root, "trash");
                    fs::rename(&p, &trash).and_then(|_| fs::remove_dir_all(&trash))
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }

    /// Deletes blobs and layer dirs of `removed` that no image in `index` references.
    fn free_unreferenced(&self, index: &mut IndexFile, removed: &[Image]) {
        let mut used_blobs = BTreeSet::new();
        let mut used_layers = BTreeSet::new();
        for img in index.images.values() {
            used_blobs.insert(img.manifest_digest.clone());
            used_blobs.insert(img.config_digest.clone());
            for l in &img.layers {
                used_blobs.insert(l.digest.clone());
                used_layers.insert(l.diff_id.clone());
            }
        }
        for img in removed {
            let blobs = [img.manifest_digest.clone(), img.config_digest.clone()]
                .into_iter()
                .chain(img.layers.iter().map(|l| l.digest.clone()));
            for b in blobs {
                if !used_blobs.contains(&b) {
                    let _ = fs::remove_file(self.blob_path(&b));
                }
            }
            for l in &img.layers {
                if !used_layers.contains(&l.diff_id) {
                    let dir = self.layer_path(&l.diff_id);
                    // Rename first so that a half-deleted tree never looks like a layer.
                    let trash = tmp_path(&self.root, "trash");
                    if fs::rename(&dir, &trash).is_ok() {
                        if let Err(e) = fs::remove_dir_all(&trash) {
                            tracing::warn!(path = %trash.display(), error = %e, "cannot remove layer");
                        }
                    }
                    index.layers.remove(&l.diff_id);
                }
            }
        }
    }
}

/// Where the agent keeps images, below its `--root-dir` prefix.
pub const DEFAULT_ROOT: &str = "var/lib/skiff/images";

impl ImageStore {
    /// `<root_dir>/var/lib/skiff/images` (`root_dir` is `/` on a real node).
    pub fn default_root(root_dir: &Path) -> PathBuf {
        root_dir.join(DEFAULT_ROOT)
    }

    /// Opens (creating) a store under `root` (e.g. `<root-dir>/var/lib/skiff/images`), with
    /// unpack options for the current user.
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore> {
        Self::open_with(root, UnpackOptions::for_current_user())
    }

    /// Opens a store with explicit unpack options.
    pub fn open_with(root: impl Into<PathBuf>, unpack: UnpackOptions) -> Result<ImageStore> {
        let root = root.into();
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).at(&p)?;
        }
        // Leftovers of interrupted downloads/unpacks.
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).at(&tmp)?.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
        let index_path = root.join("index.json");
        let index = match fs::read(&index_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::malformed(index_path.display().to_string(), e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => IndexFile::default(),
            Err(e) => return Err(Error::io(index_path, e)),
        };
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root,
                unpack,
                index: Mutex::new(index),
                inflight: Mutex::new(HashMap::new()),
                exclusive: tokio::sync::RwLock::new(()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Path of a blob (it may not exist).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.blob_path(d)
    }

    /// Unpacked directory of a layer.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.inner.layer_path(diff_id)
    }

    /// Layer directories of an image, base first.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .map(|l| self.layer_path(&l.diff_id))
            .collect()
    }

    /// The overlayfs `lowerdir=` value for an image (top layer first). A layer that occurs
    /// more than once (the same DiffID twice in one image) is kept only at its topmost place,
    /// which shows the same tree and avoids overlayfs' refusal of repeated lower dirs.
    pub fn lowerdir(&self, image: &Image) -> String {
        let mut seen = BTreeSet::new();
        let dirs: Vec<String> = self
            .layer_dirs(image)
            .iter()
            .rev()
            .filter(|p| seen.insert(p.to_path_buf()))
            .map(|p| p.display().to_string())
            .collect();
        dirs.join(":")
    }

    /// Bytes used and capacity of the filesystem holding the store (for thresholds given as
    /// percentages, like the kubelet's `imageGCHighThresholdPercent`).
    pub fn filesystem_usage(&self) -> Result<(u64, u64)> {
        let c = std::ffi::CString::new(self.inner.root.as_os_str().as_encoded_bytes()).map_err(
            |_| {
                Error::io(
                    &self.inner.root,
                    io::Error::from(io::ErrorKind::InvalidInput),
                )
            },
        )?;
        // SAFETY: statvfs is plain data; c is a valid NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(Error::io(&self.inner.root, io::Error::last_os_error()));
        }
        let frsize = st.f_frsize as u64;
        let total = st.f_blocks as u64 * frsize;
        let free = st.f_bfree as u64 * frsize;
        Ok((total - free, total))
    }

    /// Looks an image up by reference (normalised), or by manifest or config digest.
    pub fn get(&self, reference: &str) -> Option<Image> {
        let index = self.inner.index.lock().unwrap();
        Self::find(&index, reference).map(|k| index.images[&k].clone())
    }

    fn find(index: &IndexFile, reference: &str) -> Option<String> {
        if index.images.contains_key(reference) {
            return Some(reference.to_string());
        }
        if let Ok(r) = Reference::parse(reference) {
            let k = r.to_string();
            if index.images.contains_key(&k) {
                return Some(k);
            }
        }
        let id = reference.strip_prefix("sha256:").unwrap_or(reference);
        if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return index
                .images
                .values()
                .find(|i| {
                    i.config_digest.hex().starts_with(id) || i.manifest_digest.hex().starts_with(id)
                })
                .map(|i| i.reference.clone());
        }
        None
    }

    /// All images, sorted by reference.
    pub fn list(&self) -> Vec<Image> {
        self.inner
            .index
            .lock()
            .unwrap()
            .images
            .values()
            .cloned()
            .collect()
    }

    /// Marks an image as used now (for GC ordering).
    pub fn touch(&self, reference: &str) -> Result<()> {
        let mut index = self.inner.index.lock().unwrap();
        let k = Self::find(&index, reference).ok_or_else(|| Error::NotFound {
            reference: reference.to_string(),
        })?;
        index.images.get_mut(&k).expect("found").last_used = now();
        self.inner.save_index(&index)
    }

    /// Reads and parses the config of an image.
    pub fn config(&self, image: &Image) -> Result<ImageConfigFile> {
        let p = self.blob_path(&image.config_digest);
        let b = fs::read(&p).at(&p)?;
        serde_json::from_slice(&b).map_err(|e| {
            Error::malformed(
                format!("config {} of {}", image.config_digest, image.reference),
                e,
            )
        })
    }

    /// Store usage in bytes (blobs + unpacked layers), from the index.
    pub fn disk_usage(&self) -> u64 {
        Inner::usage(&self.inner.index.lock().unwrap())
    }

    /// Pulls an image (if its manifest changed or is not there yet) and returns it.
    pub async fn pull(
        &self,
        client: &RegistryClient,
        reference: &str,
        creds: Option<&Credentials>,
    ) -> Result<Image> {
        let r = Reference::parse(reference)?;
        let _shared = self.inner.exclusive.read().await;
        let started = std::time::Instant::now();
        let resolved = client.resolve(&r, creds).await?;
        let key = r.to_string();
        if let Some(existing) = self.get(&key) {
            if existing.manifest_digest == resolved.digest
                && self.layer_dirs(&existing).iter().all(|d| d.is_dir())
            {
                return Ok(existing);
            }
        }
        self.inner.put_blob_bytes(
            &resolved.digest,
            &resolved.bytes,
            &format!("manifest of {r}"),
        )?;
        let manifest = resolved.manifest;
        let config_bytes = self
            .ensure_small_blob(client, &r, &manifest.config, creds)
            .await?;
        let layers = self.layer_refs(&manifest, &config_bytes, &key)?;
        let jobs = layers
            .iter()
            .map(|l| self.ensure_layer(client, &r, l, creds));
        futures_util::future::try_join_all(jobs).await?;
        tracing::info!(
            image = %key,
            manifest = %resolved.digest,
            layers = layers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "image pulled"
        );
        let t = now();
        self.inner.commit(Image {
            reference: key,
            manifest_digest: resolved.digest,
            manifest_size: resolved.bytes.len() as u64,
            config_digest: manifest.config.digest.clone(),
            config_size: manifest.config.size,
            layers,
            pulled_at: t,
            last_used: t,
        })
    }

    /// Makes an image available according to a pull policy (what the kubelet does before
    /// creating a container).
    pub async fn ensure(
        &self,
        client: &RegistryClient,
        reference: &str,
        policy: PullPolicy,
        creds: Option<&Credentials>,
    ) -> Result<Image> {
        let present = self
            .get(reference)
            .filter(|i| self.layer_dirs(i).iter().all(|d| d.is_dir()));
        match (policy, present) {
            (PullPolicy::Always, _) => self.pull(client, reference, creds).await,
            (_, Some(img)) => Ok(img),
            (PullPolicy::IfNotPresent, None) => self.pull(client, reference, creds).await,
            (PullPolicy::Never, None) => Err(Error::NeverPull {
                reference: reference.to_string(),
            }),
        }
    }

    /// Pairs the manifest's layers with the config's DiffIDs.
    pub(crate) fn layer_refs(
        &self,
        manifest: &Manifest,
        config_bytes: &[u8],
        reference: &str,
    ) -> Result<Vec<LayerRef>> {
        let config: ImageConfigFile = serde_json::from_slice(config_bytes).map_err(|e| {
            Error::malformed(
                format!("config {} of {reference}", manifest.config.digest),
                e,
            )
        })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::malformed(
                format!("image {reference}"),
                format!(
                    "manifest has {} layers but the config {} DiffIDs",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        manifest
            .layers
            .iter()
            .zip(config.rootfs.diff_ids)
            .map(|(d, diff_id)| {
                layer_compression(&d.media_type)?;
                Ok(LayerRef {
                    digest: d.digest.clone(),
                    size: d.size,
                    media_type: d.media_type.clone(),
                    diff_id,
                })
            })
            .collect()
    }

    async fn ensure_small_blob(
        &self,
        client: &RegistryClient,
        r: &Reference,
        desc: &Descriptor,
        creds: Option<&Credentials>,
    ) -> Result<Bytes> {
        let path = self.blob_path(&desc.digest);
        if let Ok(b) = fs::read(&path) {
            return Ok(b.into());
        }
        let _g = self.inner.lock_key(format!("blob:{}", desc.digest)).await;
        if let Ok(b) = fs::read(&path) {
            return Ok(b.into());
        }
        let bytes = client.fetch_small_blob(r, desc, creds).await?;
        self.inner
            .put_blob_bytes(&desc.digest, &bytes, &format!("blob {}", desc.digest))?;
        Ok(bytes)
    }

    async fn ensure_layer(
        &self,
        client: &RegistryClient,
        r: &Reference,
        layer: &LayerRef,
        creds: Option<&Credentials>,
    ) -> Result<()> {
        let dir = self.layer_path(&layer.diff_id);
        let known = |s: &Self| {
            s.inner
                .index
                .lock()
                .unwrap()
                .layers
                .contains_key(&layer.diff_id)
        };
        if dir.is_dir() && known(self) {
            return Ok(());
        }
        let _g = self
            .inner
            .lock_key(format!("layer:{}", layer.diff_id))
            .await;
        if dir.is_dir() && known(self) {
            return Ok(());
        }
        if !dir.is_dir() {
            self.download_blob(client, r, layer, creds).await?;
        }
        let inner = self.inner.clone();
        let l = layer.clone();
        let usage = tokio::task::spawn_blocking(move || inner.unpack_blob(&l))
            .await
            .map_err(|e| Error::Unpack {
                layer: layer.digest.to_string(),
                path: dir.clone(),
                source: io::Error::other(e),
            })??;
        self.inner.record_layer(&layer.diff_id, usage);
        Ok(())
    }

    /// Downloads a blob into `blobs/`, verifying size and digest while streaming; on any
    /// error the partial file is removed and nothing is left under `blobs/`.
    async fn download_blob(
        &self,
        client: &RegistryClient,
        r: &Reference,
        layer: &LayerRef,
        creds: Option<&Credentials>,
    ) -> Result<()> {
        let path = self.blob_path(&layer.digest);
        if path.exists() {
            return Ok(());
        }
        let _g = self.inner.lock_key(format!("blob:{}", layer.digest)).await;
        if path.exists() {
            return Ok(());
        }
        let tmp = tmp_path(&self.inner.root, "blob");
        // Removes the partial file when the pull is cancelled (the future dropped) mid-way.
        struct RemoveOnDrop<'a>(&'a Path, bool);
        impl Drop for RemoveOnDrop<'_> {
            fn drop(&mut self) {
                if self.1 {
                    let _ = fs::remove_file(self.0);
                }
            }
        }
        let mut cleanup = RemoveOnDrop(&tmp, true);
        let desc = Descriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            platform: None,
            annotations: Default::default(),
            urls: Vec::new(),
        };
        let res = async {
            let mut stream = client.open_blob(r, &desc, creds).await?;
            let url = stream.url().to_string();
            let what = || format!("blob {} from {url}", layer.digest);
            let mut file = tokio::fs::File::create(&tmp).await.at(&tmp)?;
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            let mut buf = bytes::BytesMut::with_capacity(1 << 20);
            while let Some(chunk) = stream.next_chunk().await? {
                total += chunk.len() as u64;
                if total > layer.size {
                    return Err(Error::SizeMismatch {
                        what: what(),
                        expected: layer.size,
                        actual: total,
                    });
                }
                hasher.update(&chunk);
                buf.extend_from_slice(&chunk);
                if buf.len() >= 1 << 20 {
                    file.write_all(&buf).await.at(&tmp)?;
                    buf.clear();
                }
            }
            file.write_all(&buf).await.at(&tmp)?;
            file.flush().await.at(&tmp)?;
            drop(file);
            if total != layer.size {
                return Err(Error::SizeMismatch {
                    what: what(),
                    expected: layer.size,
                    actual: total,
                });
            }
            layer.digest.verify(&Digest::from_hasher(hasher), what())?;
            tokio::fs::rename(&tmp, &path).await.at(&path)?;
            Ok(())
        }
        .await;
        cleanup.1 = res.is_err();
        drop(cleanup);
        res
    }

    /// Removes an image reference; layers and blobs nobody else uses are deleted.
    pub async fn remove(&self, reference: &str) -> Result<Image> {
        let _x = self.inner.exclusive.write().await;
        let mut index = self.inner.index.lock().unwrap();
        let k = Self::find(&index, reference).ok_or_else(|| Error::NotFound {
            reference: reference.to_string(),
        })?;
        let img = index.images.remove(&k).expect("found");
        self.inner
            .free_unreferenced(&mut index, std::slice::from_ref(&img));
        self.inner.save_index(&index)?;
        Ok(img)
    }

    /// Removes unused images, least recently used first, while usage is above
    /// `policy.high_bytes`, until it is at or below `policy.low_bytes`. `in_use` holds the
    /// references (or image IDs) of images that running or pending containers use.
    pub async fn gc(&self, in_use: &[String], policy: GcPolicy) -> Result<GcReport> {
        let _x = self.inner.exclusive.write().await;
        let mut index = self.inner.index.lock().unwrap();
        let before = Inner::usage(&index);
        let mut report = GcReport {
            usage_before: before,
            usage_after: before,
            removed: Vec::new(),
        };
        // No pull or import runs now (they hold the shared lock): whatever the index does not
        // reference is left over from a failed one.
        self.inner.sweep_orphans(&index);
        if before <= policy.high_bytes {
            return Ok(report);
        }
        // An image is in use when any of its references or its ID is.
        let used_ids: BTreeSet<Digest> = in_use
            .iter()
            .filter_map(|r| Self::find(&index, r))
            .map(|k| index.images[&k].config_digest.clone())
            .collect();
        let mut candidates: Vec<Image> = index
            .images
            .values()
            .filter(|i| !used_ids.contains(&i.config_digest))
            .cloned()
            .collect();
        candidates.sort_by_key(|i| (i.last_used, i.pulled_at));
        let mut usage = before;
        for img in candidates {
            if usage <= policy.low_bytes {
                break;
            }
            index.images.remove(&img.reference);
            self.inner
                .free_unreferenced(&mut index, std::slice::from_ref(&img));
            usage = Inner::usage(&index);
            tracing::info!(image = %img.reference, usage, "image garbage-collected");
            report.removed.push(img.reference);
        }
        self.inner.save_index(&index)?;
        report.usage_after = usage;
        Ok(report)
    }

    pub(crate) fn inner_put_blob_reader(
        &self,
        r: impl io::Read,
        expected: Option<&Digest>,
        size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        self.inner.put_blob_reader(r, expected, size, what)
    }

    pub(crate) fn inner_put_blob_bytes(
        &self,
        expected: &Digest,
        bytes: &[u8],
        what: &str,
    ) -> Result<()> {
        self.inner.put_blob_bytes(expected, bytes, what)
    }

    /// Unpacks the layers of an image whose blobs are all in the store and commits it.
    pub(crate) async fn install_local(
        &self,
        reference: String,
        manifest_digest: Digest,
        manifest_size: u64,
        manifest: &Manifest,
        config_bytes: &[u8],
    ) -> Result<Image> {
        let layers = self.layer_refs(manifest, config_bytes, &reference)?;
        let jobs = layers.iter().map(|l| async move {
            let _g = self.inner.lock_key(format!("layer:{}", l.diff_id)).await;
            let inner = self.inner.clone();
            let lc = l.clone();
            let usage = tokio::task::spawn_blocking(move || inner.unpack_blob(&lc))
                .await
                .map_err(|e| Error::Unpack {
                    layer: l.digest.to_string(),
                    path: self.layer_path(&l.diff_id),
                    source: io::Error::other(e),
                })??;
            self.inner.record_layer(&l.diff_id, usage);
            Ok::<(), Error>(())
        });
        futures_util::future::try_join_all(jobs).await?;
        let t = now();
        self.inner.commit(Image {
            reference,
            manifest_digest,
            manifest_size,
            config_digest: manifest.config.digest.clone(),
            config_size: manifest.config.size,
            layers,
            pulled_at: t,
            last_used: t,
        })
    }

    /// Shared lock held by imports (see the module docs).
    pub(crate) async fn shared(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.inner.exclusive.read().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ImageStore) {
        let t = tempfile::tempdir().unwrap();
        let s = ImageStore::open(t.path()).unwrap();
        (t, s)
    }

    fn blobs(s: &ImageStore) -> usize {
        fs::read_dir(s.root().join("blobs/sha256")).unwrap().count()
    }

    #[test]
    fn digest_mismatch_leaves_no_blob() {
        let (_t, s) = store();
        let wrong = Digest::of(b"something else");
        let e = s
            .inner
            .put_blob_reader(&b"payload"[..], Some(&wrong), None, "test blob")
            .unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains("test blob"), "{e}");
        let e = s
            .inner
            .put_blob_reader(&b"payload"[..], None, Some(3), "short blob")
            .unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
        let e = s
            .inner
            .put_blob_bytes(&wrong, b"payload", "bytes")
            .unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
        assert_eq!(blobs(&s), 0);
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
        let (d, n) = s
            .inner
            .put_blob_reader(
                &b"payload"[..],
                Some(&Digest::of(b"payload")),
                Some(7),
                "ok",
            )
            .unwrap();
        assert_eq!((d, n), (Digest::of(b"payload"), 7));
        assert_eq!(
            fs::read(s.blob_path(&Digest::of(b"payload"))).unwrap(),
            b"payload"
        );
    }

    #[test]
    fn wrong_diff_id_leaves_no_layer() {
        let (_t, s) = store();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let (digest, size) = s
            .inner
            .put_blob_reader(&tar[..], None, None, "layer")
            .unwrap();
        let layer = LayerRef {
            digest,
            size,
            media_type: crate::media::OCI_LAYER_TAR.to_string(),
            diff_id: Digest::of(b"not the tar"),
        };
        let e = s.inner.unpack_blob(&layer).unwrap_err();
        assert!(
            matches!(e, Error::DigestMismatch { .. }) && e.to_string().contains("DiffID"),
            "{e}"
        );
        assert_eq!(
            fs::read_dir(s.root().join("layers/sha256"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
        let good = LayerRef {
            diff_id: Digest::of(&tar),
            ..layer
        };
        s.inner.unpack_blob(&good).unwrap();
        assert_eq!(
            fs::read(s.layer_path(&good.diff_id).join("f")).unwrap(),
            b"hi"
        );
    }

    #[test]
    fn lowerdir_dedups_repeated_layers_and_fs_usage() {
        let (_t, s) = store();
        let l = |x: &[u8]| LayerRef {
            digest: Digest::of(x),
            size: 1,
            media_type: crate::media::OCI_LAYER_GZIP.into(),
            diff_id: Digest::of(x),
        };
        let img = Image {
            reference: "r".into(),
            manifest_digest: Digest::of(b"m"),
            manifest_size: 1,
            config_digest: Digest::of(b"c"),
            config_size: 1,
            layers: vec![l(b"a"), l(b"b"), l(b"a")],
            pulled_at: 0,
            last_used: 0,
        };
        let (a, b) = (
            s.layer_path(&Digest::of(b"a")),
            s.layer_path(&Digest::of(b"b")),
        );
        assert_eq!(s.lowerdir(&img), format!("{}:{}", a.display(), b.display()));
        assert_eq!(s.layer_dirs(&img), vec![a.clone(), b, a]);
        let (used, total) = s.filesystem_usage().unwrap();
        assert!(total > 0 && used <= total);
        assert_eq!(
            ImageStore::default_root(Path::new("/x")),
            Path::new("/x/var/lib/skiff/images")
        );
    }

    #[tokio::test]
    async fn pull_policies() {
        assert_eq!(PullPolicy::default_for("busybox"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::default_for("busybox:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::default_for("busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        let d = format!("busybox@sha256:{}", "0".repeat(64));
        assert_eq!(PullPolicy::default_for(&d), PullPolicy::IfNotPresent);
        let (_t, s) = store();
        // Port 9 on loopback: nothing listens; Never and a present image must not connect.
        let c = RegistryClient::new(Default::default());
        let e = s
            .ensure(&c, "127.0.0.1:9/a:1", PullPolicy::Never, None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NeverPull { .. }), "{e}");
        let e = s
            .ensure(&c, "127.0.0.1:9/a:1", PullPolicy::IfNotPresent, None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e}");
        let img = Image {
            reference: "127.0.0.1:9/a:1".into(),
            manifest_digest: Digest::of(b"m"),
            manifest_size: 1,
            config_digest: Digest::of(b"c"),
            config_size: 1,
            layers: vec![],
            pulled_at: 0,
            last_used: 0,
        };
        s.inner.commit(img.clone()).unwrap();
        for p in [PullPolicy::Never, PullPolicy::IfNotPresent] {
            assert_eq!(s.ensure(&c, "127.0.0.1:9/a:1", p, None).await.unwrap(), img);
        }
        let e = s
            .ensure(&c, "127.0.0.1:9/a:1", PullPolicy::Always, None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn gc_sweeps_orphans_and_lookup_by_id() {
        let (_t, s) = store();
        s.inner
            .put_blob_bytes(&Digest::of(b"orphan"), b"orphan", "orphan")
            .unwrap();
        fs::create_dir(s.layer_path(&Digest::of(b"x"))).unwrap();
        let r = s
            .gc(
                &[],
                GcPolicy {
                    high_bytes: u64::MAX,
                    low_bytes: 0,
                },
            )
            .await
            .unwrap();
        assert!(r.removed.is_empty());
        assert_eq!(blobs(&s), 0);
        assert_eq!(
            fs::read_dir(s.root().join("layers/sha256"))
                .unwrap()
                .count(),
            0
        );
        assert!(s.get("sha256:0123456789ab").is_none());
        assert!(matches!(
            s.touch("busybox").unwrap_err(),
            Error::NotFound { .. }
        ));
    }
}
