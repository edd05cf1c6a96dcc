//! Import of image tarballs: an OCI image layout (`skopeo copy … oci-archive:FILE`, or a
//! tarred `oci:` directory) or a docker archive (`docker save`, `skopeo copy …
//! docker-archive:FILE:NAME`). The tarball may be gzip or zstd compressed.
//!
//! Two passes over the file: the first keeps small members (index, manifests, configs) in
//! memory, the second streams the large ones (layers) into the blob store, verified. Member
//! paths are only ever used as lookup keys: what is written goes to `blobs/` by digest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media::{
    parse_manifest, select_platform, sniff_compression, Compression, Descriptor, ImageConfigFile,
    Manifest, ManifestKind, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, DOCKER_MANIFEST,
    OCI_LAYER_ZSTD,
};
use crate::reference::Reference;
use crate::store::{Image, ImageStore};
use crate::unpack::decompressor;

const SMALL: u64 = 1 << 20;

struct Found {
    references: Vec<String>,
    manifest_digest: Digest,
    manifest_size: u64,
    manifest: Manifest,
    config: Vec<u8>,
}

fn clean(path: &[u8]) -> String {
    let s = String::from_utf8_lossy(path);
    s.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

fn open_tar(path: &Path) -> Result<tar::Archive<Box<dyn Read>>> {
    let err = |reason: String| Error::Import {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut head = [0u8; 4];
    let n = f.read(&mut head).map_err(|e| err(e.to_string()))?;
    let c = sniff_compression(&head[..n]);
    let f = fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let r = decompressor(io::BufReader::with_capacity(1 << 20, f), c)
        .map_err(|e| err(e.to_string()))?;
    Ok(tar::Archive::new(r))
}

impl ImageStore {
    /// Imports every image of a tarball. `name` names the image when the archive carries no
    /// full name (an OCI layout whose `ref.name` is only a tag, or a docker archive without
    /// RepoTags); a bare tag in the archive is appended to it.
    pub async fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>> {
        let _shared = self.shared().await;
        let store = self.clone();
        let p = path.to_path_buf();
        let name = name.map(str::to_string);
        let found = tokio::task::spawn_blocking(move || store.import_blobs(&p, name.as_deref()))
            .await
            .map_err(|e| Error::Import {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })??;
        let mut out = Vec::new();
        for f in found {
            for r in &f.references {
                out.push(
                    self.install_local(
                        r.clone(),
                        f.manifest_digest.clone(),
                        f.manifest_size,
                        &f.manifest,
                        &f.config,
                    )
                    .await?,
                );
            }
        }
        Ok(out)
    }

    fn import_blobs(&self, path: &Path, name: Option<&str>) -> Result<Vec<Found>> {
        let err = |reason: String| Error::Import {
            path: path.to_path_buf(),
            reason,
        };
        // Pass 1.
        let mut small: HashMap<String, Vec<u8>> = HashMap::new();
        let mut large: BTreeMap<String, u64> = BTreeMap::new();
        let mut ar = open_tar(path)?;
        for e in ar.entries().map_err(|e| err(e.to_string()))? {
            let mut e = e.map_err(|e| err(e.to_string()))?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let p = clean(&e.path_bytes());
            let size = e.size();
            if size <= SMALL {
                let mut b = Vec::with_capacity(size as usize);
                e.read_to_end(&mut b)
                    .map_err(|x| err(format!("{p}: {x}")))?;
                small.insert(p, b);
            } else {
                large.insert(p, size);
            }
        }
        let mut need: BTreeMap<String, Option<Digest>> = BTreeMap::new();
        let found = if small.contains_key("oci-layout") && small.contains_key("index.json") {
            self.oci_layout(&small, &large, &mut need, name, &err)?
        } else if small.contains_key("manifest.json") {
            return self.docker_archive(path, &small, name, &err);
        } else {
            return Err(err("neither an OCI layout (oci-layout, index.json) nor a docker archive (manifest.json)".into()));
        };
        self.pass2(path, &need, &large, &err)?;
        Ok(found)
    }

    /// Streams the members in `need` (path → expected digest) into the blob store.
    fn pass2(
        &self,
        path: &Path,
        need: &BTreeMap<String, Option<Digest>>,
        large: &BTreeMap<String, u64>,
        err: &dyn Fn(String) -> Error,
    ) -> Result<HashMap<String, (Digest, u64)>> {
        let mut got = HashMap::new();
        if need.is_empty() {
            return Ok(got);
        }
        let mut ar = open_tar(path)?;
        for e in ar.entries().map_err(|e| err(e.to_string()))? {
            let e = e.map_err(|e| err(e.to_string()))?;
            let p = clean(&e.path_bytes());
            if let Some(expected) = need.get(&p) {
                if got.contains_key(&p) {
                    continue;
                }
                let size = large.get(&p).copied();
                let r = self.inner_put_blob_reader(
                    e,
                    expected.as_ref(),
                    size,
                    &format!("{p} in {}", path.display()),
                )?;
                got.insert(p, r);
            }
        }
        if let Some(missing) = need.keys().find(|k| !got.contains_key(*k)) {
            return Err(err(format!("member {missing} vanished between passes")));
        }
        Ok(got)
    }

    fn oci_layout(
        &self,
        small: &HashMap<String, Vec<u8>>,
        large: &BTreeMap<String, u64>,
        need: &mut BTreeMap<String, Option<Digest>>,
        name: Option<&str>,
        err: &dyn Fn(String) -> Error,
    ) -> Result<Vec<Found>> {
        let blob = |d: &Digest| -> Result<&Vec<u8>> {
            let p = format!("blobs/sha256/{}", d.hex());
            let b = small
                .get(&p)
                .ok_or_else(|| err(format!("{p} missing or too large")))?;
            d.verify(&Digest::of(b), &p)?;
            Ok(b)
        };
        let index: crate::media::Index = serde_json::from_slice(&small["index.json"])
            .map_err(|e| err(format!("index.json: {e}")))?;
        let mut out = Vec::new();
        for top in &index.manifests {
            let mut desc: Descriptor = top.clone();
            let mut bytes = blob(&desc.digest)?;
            let manifest = loop {
                match parse_manifest(
                    bytes,
                    Some(&desc.media_type),
                    &format!("manifest {}", desc.digest),
                )? {
                    ManifestKind::Manifest(m) => break m,
                    ManifestKind::Index(i) => {
                        desc = select_platform(&i, "linux", "amd64")
                            .ok_or_else(|| {
                                err(format!("index {} has no linux/amd64 manifest", desc.digest))
                            })?
                            .clone();
                        bytes = blob(&desc.digest)?;
                    }
                }
            };
            let config = blob(&manifest.config.digest)?.clone();
            let references = image_names(&top.annotations, name).map_err(err)?;
            self.inner_put_blob_bytes(&desc.digest, bytes, "manifest")?;
            self.inner_put_blob_bytes(&manifest.config.digest, &config, "config")?;
            for l in &manifest.layers {
                let p = format!("blobs/sha256/{}", l.digest.hex());
                if self.blob_path(&l.digest).exists() {
                    continue;
                }
                if let Some(b) = small.get(&p) {
                    self.inner_put_blob_bytes(&l.digest, b, &p)?;
                } else if large.contains_key(&p) {
                    need.insert(p, Some(l.digest.clone()));
                } else {
                    return Err(err(format!("layer {p} missing")));
                }
            }
            out.push(Found {
                references,
                manifest_digest: desc.digest.clone(),
                manifest_size: bytes.len() as u64,
                manifest,
                config,
            });
        }
        Ok(out)
    }

    fn docker_archive(
        &self,
        path: &Path,
        small: &HashMap<String, Vec<u8>>,
        name: Option<&str>,
        err: &dyn Fn(String) -> Error,
    ) -> Result<Vec<Found>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = serde_json::from_slice(&small["manifest.json"])
            .map_err(|e| err(format!("manifest.json: {e}")))?;
        let mut need = BTreeMap::new();
        let mut pre: HashMap<String, (Digest, u64)> = HashMap::new();
        for e in &entries {
            for l in &e.layers {
                let p = clean(l.as_bytes());
                if let Some(b) = small.get(&p) {
                    if let std::collections::hash_map::Entry::Vacant(v) = pre.entry(p) {
                        let d = Digest::of(b);
                        self.inner_put_blob_bytes(&d, b, v.key())?;
                        v.insert((d, b.len() as u64));
                    }
                } else {
                    need.insert(p, None);
                }
            }
        }
        // Large members: sizes are not known up front here, the digest is computed.
        let mut got = self.pass2(path, &need, &BTreeMap::new(), err)?;
        got.extend(pre);
        let mut out = Vec::new();
        for e in entries {
            let cp = clean(e.config.as_bytes());
            let config = small
                .get(&cp)
                .ok_or_else(|| err(format!("config {cp} missing")))?
                .clone();
            let config_digest = Digest::of(&config);
            let parsed: ImageConfigFile =
                serde_json::from_slice(&config).map_err(|x| err(format!("{cp}: {x}")))?;
            let mut layers = Vec::new();
            for (i, l) in e.layers.iter().enumerate() {
                let p = clean(l.as_bytes());
                let (d, size) = got
                    .get(&p)
                    .cloned()
                    .ok_or_else(|| err(format!("layer {p} missing")))?;
                let mut head = [0u8; 4];
                let n = fs::File::open(self.blob_path(&d))
                    .and_then(|mut f| f.read(&mut head))
                    .unwrap_or(0);
                let media_type = match sniff_compression(&head[..n]) {
                    Compression::None => {
                        if let Some(expected) = parsed.rootfs.diff_ids.get(i) {
                            expected.verify(
                                &d,
                                format!("layer {p} (an uncompressed layer's digest is its DiffID)"),
                            )?;
                        }
                        DOCKER_LAYER_TAR
                    }
                    Compression::Gzip => DOCKER_LAYER_GZIP,
                    Compression::Zstd => OCI_LAYER_ZSTD,
                };
                layers.push(Descriptor {
                    media_type: media_type.to_string(),
                    digest: d,
                    size,
                    platform: None,
                    annotations: Default::default(),
                    urls: Vec::new(),
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(DOCKER_MANIFEST.to_string()),
                config: Descriptor {
                    media_type: DOCKER_CONFIG.to_string(),
                    digest: config_digest.clone(),
                    size: config.len() as u64,
                    platform: None,
                    annotations: Default::default(),
                    urls: Vec::new(),
                },
                layers,
                annotations: Default::default(),
            };
            let mbytes = serde_json::to_vec(&manifest).map_err(|x| err(x.to_string()))?;
            let mdigest = Digest::of(&mbytes);
            self.inner_put_blob_bytes(&mdigest, &mbytes, "synthesised manifest")?;
            self.inner_put_blob_bytes(&config_digest, &config, &cp)?;
            let mut references = BTreeSet::new();
            for t in e.repo_tags.iter().flatten() {
                references.insert(Reference::parse(t)?.to_string());
            }
            if references.is_empty() {
                let n = name.ok_or_else(|| {
                    err("the archive names no image (no RepoTags); give a name".into())
                })?;
                references.insert(Reference::parse(n)?.to_string());
            }
            out.push(Found {
                references: references.into_iter().collect(),
                manifest_digest: mdigest,
                manifest_size: mbytes.len() as u64,
                manifest,
                config,
            });
        }
        Ok(out)
    }
}

/// Names of an OCI layout entry: `io.containerd.image.name`, or `org.opencontainers.image.ref.name`
/// when it is a full reference, or `name` (+ the ref.name as tag).
fn image_names(
    annotations: &BTreeMap<String, String>,
    name: Option<&str>,
) -> std::result::Result<Vec<String>, String> {
    if let Some(n) = annotations.get("io.containerd.image.name") {
        return Ok(vec![Reference::parse(n)
            .map_err(|e| e.to_string())?
            .to_string()]);
    }
    let ref_name = annotations.get("org.opencontainers.image.ref.name");
    if let Some(r) = ref_name {
        if r.contains('/') {
            return Ok(vec![Reference::parse(r)
                .map_err(|e| e.to_string())?
                .to_string()]);
        }
    }
    match (name, ref_name) {
        (Some(n), Some(tag)) => {
            let base = Reference::parse(n).map_err(|e| e.to_string())?;
            let has_tag = n.rsplit('/').next().is_some_and(|last| last.contains(':'));
            let full = if has_tag || base.digest.is_some() {
                base
            } else {
                Reference {
                    tag: Some(tag.clone()),
                    ..base
                }
            };
            Reference::parse(&full.to_string())
                .map(|r| vec![r.to_string()])
                .map_err(|e| e.to_string())
        }
        (Some(n), None) => Ok(vec![Reference::parse(n)
            .map_err(|e| e.to_string())?
            .to_string()]),
        (None, Some(tag)) => Err(format!(
            "the image is named only by the tag {tag:?}; give a name"
        )),
        (None, None) => Err("the archive names no image; give a name".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names() {
        let a = |k: &str, v: &str| {
            [(k.to_string(), v.to_string())]
                .into_iter()
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            image_names(&a("io.containerd.image.name", "busybox:1"), None).unwrap(),
            vec!["docker.io/library/busybox:1"]
        );
        assert_eq!(
            image_names(
                &a("org.opencontainers.image.ref.name", "127.0.0.1:5000/x:v"),
                None
            )
            .unwrap(),
            vec!["127.0.0.1:5000/x:v"]
        );
        assert_eq!(
            image_names(
                &a("org.opencontainers.image.ref.name", "v2"),
                Some("lab/app")
            )
            .unwrap(),
            vec!["docker.io/lab/app:v2"]
        );
        assert_eq!(
            image_names(
                &a("org.opencontainers.image.ref.name", "v2"),
                Some("lab/app:pinned")
            )
            .unwrap(),
            vec!["docker.io/lab/app:pinned"]
        );
        assert!(image_names(&a("org.opencontainers.image.ref.name", "v2"), None).is_err());
        assert!(image_names(&BTreeMap::new(), None).is_err());
    }
}
