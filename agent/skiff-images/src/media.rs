//! Media types and the JSON documents of the OCI image spec and Docker's schema 2.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: every kind we can handle.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Compression named by a layer media type; `Err` for anything that is not a layer we can
/// unpack (foreign layers are fetched like the others: `nondistributable` is only a hint).
pub fn layer_compression(media_type: &str) -> Result<Compression> {
    let mt = media_type
        .replace(".nondistributable", "")
        .replace(".foreign", "");
    match mt.as_str() {
        OCI_LAYER_TAR | DOCKER_LAYER_TAR => Ok(Compression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
        OCI_LAYER_ZSTD => Ok(Compression::Zstd),
        _ => Err(Error::UnsupportedMediaType {
            media_type: media_type.to_string(),
            what: "image layer".to_string(),
        }),
    }
}

/// Compression recognised from the first bytes of a blob (used for archives whose media types
/// are not reliable, and to double-check registries).
pub fn sniff_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// Platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a manifest endpoint returned.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    Index(Index),
    Manifest(Manifest),
}

/// Parses a manifest document. The media type comes from the document, else from the HTTP
/// `Content-Type`, else from its shape (OCI allows omitting it).
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<ManifestKind> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| Error::malformed(what, e))?;
    let content_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim());
    let mt = probe
        .media_type
        .clone()
        .or_else(|| {
            content_type
                .filter(|c| !c.is_empty() && *c != "application/json")
                .map(str::to_string)
        })
        .unwrap_or_else(|| {
            if probe.manifests.is_some() {
                OCI_INDEX.to_string()
            } else if probe.layers.is_some() {
                OCI_MANIFEST.to_string()
            } else {
                String::new()
            }
        });
    match mt.as_str() {
        OCI_INDEX | DOCKER_LIST => Ok(ManifestKind::Index(
            serde_json::from_slice(bytes).map_err(|e| Error::malformed(what, e))?,
        )),
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: Manifest =
                serde_json::from_slice(bytes).map_err(|e| Error::malformed(what, e))?;
            if m.schema_version != 2 {
                return Err(Error::malformed(
                    what,
                    format!("schemaVersion {}", m.schema_version),
                ));
            }
            Ok(ManifestKind::Manifest(m))
        }
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Err(Error::UnsupportedMediaType {
            media_type: mt,
            what: format!("{what} (Docker schema 1 is deprecated)"),
        }),
        _ if probe.schema_version == Some(1) => Err(Error::UnsupportedMediaType {
            media_type: DOCKER_SCHEMA1.to_string(),
            what: format!("{what} (Docker schema 1 is deprecated)"),
        }),
        _ => Err(Error::UnsupportedMediaType {
            media_type: mt,
            what: what.to_string(),
        }),
    }
}

/// Picks the manifest for `os`/`architecture` from an index (the first match; entries without
/// a platform are attestations or other artifacts and are skipped).
pub fn select_platform<'a>(
    index: &'a Index,
    os: &str,
    architecture: &str,
) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == architecture)
            && matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | "")
    })
}

/// The image configuration (only what the node uses).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ImageConfig>,
    pub rootfs: RootFs,
}

/// `rootfs` of the image configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// The runtime part of the image configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(mt: &str, os: &str, arch: &str) -> serde_json::Value {
        serde_json::json!({
            "mediaType": mt,
            "digest": Digest::of(format!("{os}{arch}").as_bytes()).to_string(),
            "size": 10,
            "platform": {"os": os, "architecture": arch}
        })
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_compression(OCI_LAYER_GZIP).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            layer_compression(DOCKER_LAYER_GZIP).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            layer_compression(OCI_LAYER_ZSTD).unwrap(),
            Compression::Zstd
        );
        assert_eq!(layer_compression(OCI_LAYER_TAR).unwrap(), Compression::None);
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")
                .unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip").unwrap(),
            Compression::Gzip
        );
        let e = layer_compression("application/vnd.in-toto+json").unwrap_err();
        assert!(e.to_string().contains("unsupported media type"), "{e}");
        assert_eq!(sniff_compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            sniff_compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(sniff_compression(b"etc/"), Compression::None);
    }

    #[test]
    fn index_selection_oci_and_docker() {
        for (index_mt, manifest_mt) in [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)] {
            let doc = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": index_mt,
                "manifests": [
                    desc(manifest_mt, "linux", "arm64"),
                    desc(manifest_mt, "unknown", "unknown"),
                    desc(manifest_mt, "linux", "amd64"),
                ]
            });
            let bytes = serde_json::to_vec(&doc).unwrap();
            let ManifestKind::Index(idx) = parse_manifest(&bytes, None, "test").unwrap() else {
                panic!("expected an index")
            };
            let d = select_platform(&idx, "linux", "amd64").unwrap();
            assert_eq!(d.digest, Digest::of(b"linuxamd64"));
            assert!(select_platform(&idx, "linux", "s390x").is_none());
        }
    }

    #[test]
    fn manifest_media_type_from_header_or_shape() {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "digest": Digest::of(b"c").to_string(), "size": 1},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": Digest::of(b"l").to_string(), "size": 2}]
        });
        let bytes = serde_json::to_vec(&m).unwrap();
        assert!(matches!(
            parse_manifest(&bytes, Some(DOCKER_MANIFEST), "m").unwrap(),
            ManifestKind::Manifest(_)
        ));
        assert!(matches!(
            parse_manifest(&bytes, None, "m").unwrap(),
            ManifestKind::Manifest(_)
        ));
        assert!(matches!(
            parse_manifest(&bytes, Some("application/json; charset=utf-8"), "m").unwrap(),
            ManifestKind::Manifest(_)
        ));
        let e = parse_manifest(&bytes, Some("text/html"), "m").unwrap_err();
        assert!(matches!(e, Error::UnsupportedMediaType { .. }), "{e}");
        let s1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        let e = parse_manifest(s1, None, "m").unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
        assert!(parse_manifest(b"not json", None, "m").is_err());
    }
}
