//! Decoder for Kubernetes protobuf request bodies.
//!
//! kubectl ≥ 1.32 sends typed creates (and sometimes updates) with
//! `Content-Type: application/vnd.kubernetes.protobuf`: the body is the 4-byte magic `k8s\0`
//! followed by a `runtime.Unknown` message
//! `{1 typeMeta {1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding, 4 contentType}` whose `raw`
//! is the object's own message (e.g. `k8s.io.api.apps.v1.Deployment`).
//!
//! [`decode`] turns such a body into the JSON object kube-apiserver would have received had the
//! client sent JSON, with `apiVersion` and `kind` set, ready for `serde_json::from_value` into
//! the k8s-openapi types.
//!
//! # Mapping rules
//! * Field numbers, wire types and JSON names come from a generated table
//!   (`schema_generated.rs`, see `codegen/gen_schema.py`) covering every message reachable from
//!   the supported kinds ([`supported_kinds`]).
//! * Go's gogo-protobuf writes non-pointer scalar fields even when they are zero, where Go's JSON
//!   (`omitempty`) would leave them out. Singular `""`, `0` and `false` are therefore dropped,
//!   except for fields that are required in the OpenAPI schema (Go JSON has no `omitempty` on
//!   them) and for Go pointer fields, where the zero value is meaningful (`replicas: 0`,
//!   `automountServiceAccountToken: false`, …). The pointer fields are an explicit allowlist in
//!   `pointer_fields.rs`.
//! * Messages are always kept, even when empty (`"resources": {}`, `"status": {}`), exactly as
//!   Go's JSON emits non-pointer struct fields; a pointer struct is only on the wire when set.
//! * Repeated scalars are accepted packed and unpacked. Maps become JSON objects.
//! * Wrapper types: `meta.v1.Time` → `"2024-01-02T03:04:05Z"` (nanoseconds dropped, as Go
//!   does), `meta.v1.MicroTime` → `"2024-01-02T03:04:05.123456Z"`, both `null` when empty;
//!   `intstr.IntOrString` → number or string; `resource.Quantity` → string;
//!   `runtime.RawExtension` and `meta.v1.FieldsV1` → the embedded JSON (a nested `k8s\0` body in
//!   a RawExtension is decoded recursively); certificates `ExtraValue` → array of strings;
//!   `bytes` → base64.
//! * Unknown field numbers, wire-type mismatches, truncated input, invalid UTF-8 and unknown
//!   kinds are errors. The decoder never panics.
//!
//! # Known deviations from Go's JSON (none changes the k8s-openapi value)
//! * Zero values of fields that OpenAPI marks required are kept even where the Go tag has
//!   `omitempty` (e.g. `imagePullSecrets: [{"name": ""}]`); k8s-openapi reads a missing
//!   required field as its default anyway.
//! * `autoscaling/v1 Scale` `spec.replicas: 0` is kept (Go omits it; same meaning).
//! * Quantity strings are passed through as sent; Go would re-canonicalize (`"1000m"` → `"1"`).
//!   Typed clients send canonical strings.
//! * k8s-pb 0.9 was generated from protos newer than 1.33, so fields added after 1.33
//!   (`spec.hostnameOverride`, …) are decoded under their JSON names; kubectl 1.33 never sends
//!   them and k8s-openapi's v1_33 types ignore them.
//! * `contentEncoding` (never set by client-go) is refused rather than decompressed.

mod decode;
mod pointer_fields;
mod schema;
mod schema_generated;
mod text;
mod wire;

#[cfg(test)]
mod coverage_tests;

use serde_json::Value;

/// The 4-byte prefix of every Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// The media type of Kubernetes protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// A decoded request body.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// `typeMeta.apiVersion` of the envelope, e.g. `apps/v1` or `v1`.
    pub api_version: String,
    /// `typeMeta.kind` of the envelope, e.g. `Deployment`.
    pub kind: String,
    /// The object as JSON, with `apiVersion` and `kind` set.
    pub object: Value,
}

/// Why a body could not be decoded. Offsets are byte offsets into the whole body (magic
/// included); message names are protobuf names without the `io.k8s.` prefix
/// (`api.apps.v1.DeploymentSpec`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    /// The body does not start with `k8s\0`.
    #[error("not a Kubernetes protobuf body: missing the `k8s\\0` magic prefix")]
    MissingMagic,
    /// The input ends inside a field.
    #[error("{message}: input truncated in field {field} at byte offset {offset}")]
    Truncated {
        message: &'static str,
        field: u32,
        offset: usize,
    },
    /// A varint longer than 10 bytes or overflowing 64 bits.
    #[error("{message}: invalid varint in field {field} at byte offset {offset}")]
    InvalidVarint {
        message: &'static str,
        field: u32,
        offset: usize,
    },
    /// Field number 0 or out of range.
    #[error("{message}: invalid field number {field} at byte offset {offset}")]
    InvalidFieldNumber {
        message: &'static str,
        field: u32,
        offset: usize,
    },
    /// A field number the schema does not know.
    #[error(
        "{message}: unknown field number {field} (wire type {wire_type}) at byte offset {offset}"
    )]
    UnknownField {
        message: &'static str,
        field: u32,
        wire_type: u8,
        offset: usize,
    },
    /// A known field encoded with a wire type that does not fit its type.
    #[error(
        "{message}: field {field} at byte offset {offset} has unexpected wire type {wire_type}"
    )]
    WireType {
        message: &'static str,
        field: u32,
        offset: usize,
        wire_type: u8,
    },
    /// A well-formed field with an unusable value (invalid UTF-8, invalid embedded JSON, …).
    #[error("{message}: field {field} at byte offset {offset}: {reason}")]
    InvalidValue {
        message: &'static str,
        field: u32,
        offset: usize,
        reason: String,
    },
    /// The envelope names a type this decoder does not support.
    #[error("unsupported protobuf object: apiVersion {api_version:?}, kind {kind:?}")]
    UnknownKind { api_version: String, kind: String },
    /// `runtime.Unknown.contentEncoding` is set (e.g. gzip); not supported.
    #[error("unsupported protobuf content encoding {0:?}")]
    UnsupportedContentEncoding(String),
    /// `runtime.Unknown.contentType` is neither empty nor the protobuf media type.
    #[error("unsupported content type {0:?} inside the protobuf envelope")]
    UnsupportedContentType(String),
    /// Nested envelopes (RawExtension holding `k8s\0` bodies) deeper than the limit.
    #[error("nesting too deep at byte offset {offset}")]
    TooDeep { offset: usize },
}

/// Decodes a whole request body: `k8s\0` + `runtime.Unknown`.
pub fn decode(body: &[u8]) -> Result<Decoded, ProtobufError> {
    decode::decode_envelope(body, 0, 0)
}

/// Decodes a bare object message (the `raw` of the envelope) of the given type.
pub fn decode_object(api_version: &str, kind: &str, raw: &[u8]) -> Result<Value, ProtobufError> {
    decode::decode_object(api_version, kind, raw, 0, 0)
}

/// The `(apiVersion, kind)` pairs [`decode`] accepts. An apiVersion of `*` means any
/// apiVersion (`DeleteOptions` is registered in every group).
pub fn supported_kinds() -> impl Iterator<Item = (&'static str, &'static str)> {
    schema_generated::KINDS.iter().map(|&(v, k, _)| (v, k))
}

/// True when a `Content-Type` header value denotes a Kubernetes protobuf body
/// (parameters such as `;charset=` are ignored).
pub fn is_protobuf_content_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_detection() {
        assert!(is_protobuf_content_type(
            "application/vnd.kubernetes.protobuf"
        ));
        assert!(is_protobuf_content_type(
            "application/vnd.kubernetes.protobuf; charset=utf-8"
        ));
        assert!(is_protobuf_content_type(
            "Application/VND.Kubernetes.Protobuf"
        ));
        assert!(!is_protobuf_content_type("application/json"));
    }

    #[test]
    fn supported_kinds_cover_wave_one() {
        let kinds: Vec<_> = supported_kinds().collect();
        assert_eq!(kinds.len(), 21);
        for want in [
            ("v1", "Pod"),
            ("apps/v1", "Deployment"),
            ("coordination.k8s.io/v1", "Lease"),
            ("discovery.k8s.io/v1", "EndpointSlice"),
            ("*", "DeleteOptions"),
        ] {
            assert!(kinds.contains(&want), "{want:?}");
        }
    }
}
