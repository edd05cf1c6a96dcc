//! Shapes of the generated schema table (`schema_generated.rs`).

/// The wire/JSON type of one field (or of a repeated element, or of a map value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    /// `string` → JSON string.
    Str,
    /// `bytes` → base64 JSON string (Go's `[]byte` JSON encoding).
    Bytes,
    /// `int32` → JSON number.
    Int32,
    /// `int64` → JSON number.
    Int64,
    /// `bool` → JSON bool.
    Bool,
    /// `double` → JSON number.
    Double,
    /// A nested message, by index into [`crate::schema_generated::MESSAGES`].
    Msg(u16),
    /// `meta.v1.Time` → RFC 3339 seconds (`null` when empty).
    Time,
    /// `meta.v1.MicroTime` → RFC 3339 with microseconds (`null` when empty).
    MicroTime,
    /// `intstr.IntOrString` → JSON number or string.
    IntOrString,
    /// `resource.Quantity` → JSON string.
    Quantity,
    /// `runtime.RawExtension` → the embedded JSON document.
    RawExtension,
    /// `meta.v1.FieldsV1` → the embedded JSON document.
    FieldsV1,
    /// A `{1: repeated string}` wrapper (certificates `ExtraValue`) → JSON array of strings.
    StringList,
}

/// How often a field occurs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Card {
    /// Optional singular field.
    Single,
    /// `repeated` (packed or unpacked for scalars).
    Repeated,
    /// `map<string, ty>`: repeated entry messages {1: key, 2: value}.
    Map,
}

/// One field of a message.
#[derive(Debug)]
pub(crate) struct Field {
    pub tag: u32,
    /// JSON name; empty for a Go `json:",inline"` embedded message whose fields are merged
    /// into the parent object.
    pub json: &'static str,
    pub ty: Ty,
    pub card: Card,
    /// Required in the OpenAPI schema (non-`Option` in k8s-openapi): Go's JSON emits it even
    /// when zero, so zero values are kept.
    pub required: bool,
}

impl Field {
    pub(crate) const fn new(
        tag: u32,
        json: &'static str,
        ty: Ty,
        card: Card,
        required: bool,
    ) -> Self {
        Field {
            tag,
            json,
            ty,
            card,
            required,
        }
    }
}

/// One message: its fully-qualified name (without `io.k8s.`) and fields sorted by tag.
#[derive(Debug)]
pub(crate) struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Message {
    pub(crate) fn field(&self, tag: u32) -> Option<&'static Field> {
        self.fields
            .binary_search_by_key(&tag, |f| f.tag)
            .ok()
            .map(|i| &self.fields[i])
    }
}
