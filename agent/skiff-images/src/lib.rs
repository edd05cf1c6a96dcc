//! Image handling of the Skiff node agent: a registry client for the distribution API, a
//! content-addressed store with deduplicated unpacked layers, layer unpacking for overlayfs,
//! image-config merging and imports of OCI-layout and docker-archive tarballs.

pub mod auth;
pub mod digest;
pub mod error;
pub mod import;
pub mod media;
pub mod merge;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use auth::{Credentials, DockerConfig};
pub use digest::Digest;
pub use error::{Error, Result};
pub use merge::{merge_config, ContainerOverrides, ProcessSpec};
pub use reference::Reference;
pub use registry::{ClientConfig, RegistryClient};
pub use store::{GcPolicy, GcReport, Image, ImageStore, LayerRef, PullPolicy};
pub use unpack::{unpack_layer, UnpackOptions, UnpackStats, WhiteoutMode};
