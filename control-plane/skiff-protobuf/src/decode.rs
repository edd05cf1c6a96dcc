//! The generic wire walker: schema table + wire reader → `serde_json::Value`.

use serde_json::{Map, Number, Value};

use crate::pointer_fields::keeps_zero;
use crate::schema::{Card, Field, Message, Ty};
use crate::schema_generated::{KINDS, MESSAGES};
use crate::text::{base64, rfc3339};
use crate::wire::{Reader, WT_FIXED64, WT_LEN, WT_VARINT};
use crate::{Decoded, ProtobufError, MAGIC};

/// Limit for envelopes nested in RawExtensions (the schema itself is not recursive).
const MAX_ENVELOPE_DEPTH: u32 = 8;

const UNKNOWN: &str = "runtime.Unknown";
const TYPE_META: &str = "runtime.TypeMeta";

pub(crate) fn decode_envelope(
    body: &[u8],
    base: usize,
    depth: u32,
) -> Result<Decoded, ProtobufError> {
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or(ProtobufError::MissingMagic)?;
    let mut r = Reader::new(rest, base + MAGIC.len(), UNKNOWN);
    let (mut api_version, mut kind) = (String::new(), String::new());
    let (mut raw, mut raw_offset) = (&[][..], r.offset());
    let (mut encoding, mut content_type) = (String::new(), String::new());
    while !r.is_empty() {
        let (field, wt, key_offset) = r.key()?;
        expect_wire_type(UNKNOWN, field, wt, WT_LEN, key_offset, field <= 4)?;
        let (bytes, offset) = r.len_delimited(field)?;
        match field {
            1 => {
                let mut t = Reader::new(bytes, offset, TYPE_META);
                while !t.is_empty() {
                    let (f, wt, key_offset) = t.key()?;
                    expect_wire_type(TYPE_META, f, wt, WT_LEN, key_offset, f <= 2)?;
                    let (b, off) = t.len_delimited(f)?;
                    let s = utf8(TYPE_META, f, off, b)?;
                    if f == 1 {
                        api_version = s;
                    } else {
                        kind = s;
                    }
                }
            }
            2 => (raw, raw_offset) = (bytes, offset),
            3 => encoding = utf8(UNKNOWN, field, offset, bytes)?,
            _ => content_type = utf8(UNKNOWN, field, offset, bytes)?,
        }
    }
    if !encoding.is_empty() {
        return Err(ProtobufError::UnsupportedContentEncoding(encoding));
    }
    if !content_type.is_empty() && !crate::is_protobuf_content_type(&content_type) {
        return Err(ProtobufError::UnsupportedContentType(content_type));
    }
    let object = decode_object(&api_version, &kind, raw, raw_offset, depth)?;
    Ok(Decoded {
        api_version,
        kind,
        object,
    })
}

pub(crate) fn decode_object(
    api_version: &str,
    kind: &str,
    raw: &[u8],
    base: usize,
    depth: u32,
) -> Result<Value, ProtobufError> {
    let msg = KINDS
        .iter()
        .find(|&&(v, k, _)| k == kind && (v == api_version || v == "*"))
        .map(|&(_, _, m)| m)
        .ok_or_else(|| ProtobufError::UnknownKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        })?;
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), Value::String(api_version.to_string()));
    obj.insert("kind".into(), Value::String(kind.to_string()));
    let ctx = Ctx { depth };
    ctx.message_into(&MESSAGES[usize::from(msg)], raw, base, &mut obj)?;
    Ok(Value::Object(obj))
}

fn expect_wire_type(
    message: &'static str,
    field: u32,
    wire_type: u8,
    expected: u8,
    offset: usize,
    known: bool,
) -> Result<(), ProtobufError> {
    if !known {
        return Err(ProtobufError::UnknownField {
            message,
            field,
            wire_type,
            offset,
        });
    }
    if wire_type != expected {
        return Err(ProtobufError::WireType {
            message,
            field,
            offset,
            wire_type,
        });
    }
    Ok(())
}

fn utf8(
    message: &'static str,
    field: u32,
    offset: usize,
    bytes: &[u8],
) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| ProtobufError::InvalidValue {
        message,
        field,
        offset,
        reason: format!("invalid UTF-8: {e}"),
    })
}

fn invalid(
    message: &'static str,
    field: u32,
    offset: usize,
    reason: impl Into<String>,
) -> ProtobufError {
    ProtobufError::InvalidValue {
        message,
        field,
        offset,
        reason: reason.into(),
    }
}

/// The zero value of a singular scalar, which gogo-protobuf writes but `omitempty` JSON omits.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0) || n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn is_scalar(ty: Ty) -> bool {
    matches!(
        ty,
        Ty::Str | Ty::Bytes | Ty::Int32 | Ty::Int64 | Ty::Bool | Ty::Double
    )
}

struct Ctx {
    depth: u32,
}

impl Ctx {
    /// Decodes the fields of `msg` from `buf` into `obj` (merging, as protobuf does).
    fn message_into(
        &self,
        msg: &'static Message,
        buf: &[u8],
        base: usize,
        obj: &mut Map<String, Value>,
    ) -> Result<(), ProtobufError> {
        let mut r = Reader::new(buf, base, msg.name);
        while !r.is_empty() {
            let (tag, wt, key_offset) = r.key()?;
            let Some(field) = msg.field(tag) else {
                return Err(ProtobufError::UnknownField {
                    message: msg.name,
                    field: tag,
                    wire_type: wt,
                    offset: key_offset,
                });
            };
            match field.card {
                Card::Single => self.single(msg, field, wt, key_offset, &mut r, obj)?,
                Card::Repeated => {
                    let list = obj
                        .entry(field.json)
                        .or_insert_with(|| Value::Array(Vec::new()));
                    let Value::Array(list) = list else {
                        // Only reachable if an inline message shares a JSON name; treat as schema clash.
                        return Err(invalid(
                            msg.name,
                            tag,
                            key_offset,
                            "field clashes with an inline field",
                        ));
                    };
                    self.repeated(msg, field, wt, key_offset, &mut r, list)?;
                }
                Card::Map => {
                    expect_wire_type(msg.name, tag, wt, WT_LEN, key_offset, true)?;
                    let (entry, offset) = r.len_delimited(tag)?;
                    let (k, v) = self.map_entry(msg, field, entry, offset)?;
                    let map = obj
                        .entry(field.json)
                        .or_insert_with(|| Value::Object(Map::new()));
                    let Value::Object(map) = map else {
                        return Err(invalid(
                            msg.name,
                            tag,
                            key_offset,
                            "field clashes with an inline field",
                        ));
                    };
                    map.insert(k, v);
                }
            }
        }
        Ok(())
    }

    fn single(
        &self,
        msg: &'static Message,
        field: &'static Field,
        wt: u8,
        key_offset: usize,
        r: &mut Reader<'_>,
        obj: &mut Map<String, Value>,
    ) -> Result<(), ProtobufError> {
        if let Ty::Msg(m) = field.ty {
            // Sub-messages merge with an earlier occurrence of the same field; inline
            // (`json:",inline"`) messages merge into the parent object itself.
            expect_wire_type(msg.name, field.tag, wt, WT_LEN, key_offset, true)?;
            let (bytes, offset) = r.len_delimited(field.tag)?;
            let sub = &MESSAGES[usize::from(m)];
            if field.json.is_empty() {
                return self.message_into(sub, bytes, offset, obj);
            }
            let mut inner = match obj.remove(field.json) {
                Some(Value::Object(earlier)) => earlier,
                _ => Map::new(),
            };
            self.message_into(sub, bytes, offset, &mut inner)?;
            obj.insert(field.json.to_string(), Value::Object(inner));
            return Ok(());
        }
        let value = self.value(msg, field, wt, key_offset, r)?;
        if is_scalar(field.ty)
            && is_zero(&value)
            && !field.required
            && !keeps_zero(msg.name, field.json)
        {
            // Last occurrence wins, so a zero after a non-zero clears the field.
            obj.remove(field.json);
        } else {
            obj.insert(field.json.to_string(), value);
        }
        Ok(())
    }

    fn repeated(
        &self,
        msg: &'static Message,
        field: &'static Field,
        wt: u8,
        key_offset: usize,
        r: &mut Reader<'_>,
        list: &mut Vec<Value>,
    ) -> Result<(), ProtobufError> {
        let packable = matches!(field.ty, Ty::Int32 | Ty::Int64 | Ty::Bool | Ty::Double);
        if packable && wt == WT_LEN {
            let (bytes, offset) = r.len_delimited(field.tag)?;
            let mut packed = Reader::new(bytes, offset, msg.name);
            while !packed.is_empty() {
                let off = packed.offset();
                let wire = if field.ty == Ty::Double {
                    WT_FIXED64
                } else {
                    WT_VARINT
                };
                list.push(self.value(msg, field, wire, off, &mut packed)?);
            }
            return Ok(());
        }
        if let Ty::Msg(m) = field.ty {
            expect_wire_type(msg.name, field.tag, wt, WT_LEN, key_offset, true)?;
            let (bytes, offset) = r.len_delimited(field.tag)?;
            let mut inner = Map::new();
            self.message_into(&MESSAGES[usize::from(m)], bytes, offset, &mut inner)?;
            list.push(Value::Object(inner));
            return Ok(());
        }
        list.push(self.value(msg, field, wt, key_offset, r)?);
        Ok(())
    }

    /// One `map<string, ty>` entry: {1: key, 2: value}. Missing parts take their zero values.
    fn map_entry(
        &self,
        msg: &'static Message,
        field: &'static Field,
        entry: &[u8],
        base: usize,
    ) -> Result<(String, Value), ProtobufError> {
        let mut r = Reader::new(entry, base, msg.name);
        let mut key = String::new();
        let mut value = None;
        while !r.is_empty() {
            let (tag, wt, key_offset) = r.key()?;
            match tag {
                1 => {
                    expect_wire_type(msg.name, field.tag, wt, WT_LEN, key_offset, true)?;
                    let (b, off) = r.len_delimited(field.tag)?;
                    key = utf8(msg.name, field.tag, off, b)?;
                }
                2 => {
                    value = Some(match field.ty {
                        Ty::Msg(m) => {
                            expect_wire_type(msg.name, field.tag, wt, WT_LEN, key_offset, true)?;
                            let (b, off) = r.len_delimited(field.tag)?;
                            let mut inner = Map::new();
                            self.message_into(&MESSAGES[usize::from(m)], b, off, &mut inner)?;
                            Value::Object(inner)
                        }
                        _ => self.value(msg, field, wt, key_offset, &mut r)?,
                    });
                }
                _ => {
                    return Err(ProtobufError::UnknownField {
                        message: msg.name,
                        field: tag,
                        wire_type: wt,
                        offset: key_offset,
                    })
                }
            }
        }
        let value = match value {
            Some(v) => v,
            None => match field.ty {
                Ty::Str | Ty::Bytes => Value::String(String::new()),
                Ty::Quantity => Value::String("0".into()),
                Ty::StringList => Value::Array(Vec::new()),
                Ty::Msg(_) => Value::Object(Map::new()),
                Ty::Int32 | Ty::Int64 => Value::from(0),
                Ty::Bool => Value::Bool(false),
                _ => Value::Null,
            },
        };
        Ok((key, value))
    }

    /// Reads one non-message value of `field.ty` (scalars and the wrapper types).
    fn value(
        &self,
        msg: &'static Message,
        field: &'static Field,
        wt: u8,
        key_offset: usize,
        r: &mut Reader<'_>,
    ) -> Result<Value, ProtobufError> {
        let name = msg.name;
        let tag = field.tag;
        let expected = match field.ty {
            Ty::Int32 | Ty::Int64 | Ty::Bool => WT_VARINT,
            Ty::Double => WT_FIXED64,
            _ => WT_LEN,
        };
        expect_wire_type(name, tag, wt, expected, key_offset, true)?;
        Ok(match field.ty {
            Ty::Int32 => Value::from(r.varint(tag)? as i32),
            Ty::Int64 => Value::from(r.varint(tag)? as i64),
            Ty::Bool => Value::Bool(r.varint(tag)? != 0),
            Ty::Double => {
                let off = r.offset();
                let f = f64::from_bits(r.fixed64(tag)?);
                Value::Number(
                    Number::from_f64(f)
                        .ok_or_else(|| invalid(name, tag, off, "non-finite double"))?,
                )
            }
            Ty::Str => {
                let (b, off) = r.len_delimited(tag)?;
                Value::String(utf8(name, tag, off, b)?)
            }
            Ty::Bytes => Value::String(base64(r.len_delimited(tag)?.0)),
            // Callers decode messages themselves; reaching this would be a schema/decoder bug.
            Ty::Msg(_) => {
                return Err(invalid(
                    name,
                    tag,
                    key_offset,
                    "internal: message read as a scalar",
                ))
            }
            Ty::Time | Ty::MicroTime => {
                let (b, off) = r.len_delimited(tag)?;
                time(name, tag, b, off, field.ty == Ty::MicroTime)?
            }
            Ty::IntOrString => {
                let (b, off) = r.len_delimited(tag)?;
                int_or_string(name, tag, b, off)?
            }
            Ty::Quantity => {
                let (b, off) = r.len_delimited(tag)?;
                let mut q = String::new();
                for_each(b, off, "api.resource.Quantity", |f, wt, key_off, r| {
                    expect_wire_type("api.resource.Quantity", f, wt, WT_LEN, key_off, f == 1)?;
                    let (s, o) = r.len_delimited(f)?;
                    q = utf8("api.resource.Quantity", f, o, s)?;
                    Ok(())
                })?;
                // A zero Quantity marshals as "0" in Go's JSON.
                Value::String(if q.is_empty() { "0".into() } else { q })
            }
            Ty::RawExtension | Ty::FieldsV1 => {
                let (b, off) = r.len_delimited(tag)?;
                self.raw_json(field.ty, b, off)?
            }
            Ty::StringList => {
                let (b, off) = r.len_delimited(tag)?;
                let mut items = Vec::new();
                for_each(b, off, "certificates.v1.ExtraValue", |f, wt, key_off, r| {
                    expect_wire_type("certificates.v1.ExtraValue", f, wt, WT_LEN, key_off, f == 1)?;
                    let (s, o) = r.len_delimited(f)?;
                    items.push(Value::String(utf8("certificates.v1.ExtraValue", f, o, s)?));
                    Ok(())
                })?;
                Value::Array(items)
            }
        })
    }

    /// RawExtension / FieldsV1: {1: raw bytes}. JSON is embedded as is; a nested `k8s\0`
    /// envelope (RawExtension only) is decoded recursively. Empty → null.
    fn raw_json(&self, ty: Ty, buf: &[u8], base: usize) -> Result<Value, ProtobufError> {
        let name = if ty == Ty::FieldsV1 {
            "apis.meta.v1.FieldsV1"
        } else {
            "runtime.RawExtension"
        };
        let mut raw: Option<(&[u8], usize)> = None;
        for_each(buf, base, name, |f, wt, key_off, r| {
            expect_wire_type(name, f, wt, WT_LEN, key_off, f == 1)?;
            raw = Some(r.len_delimited(f)?);
            Ok(())
        })?;
        let Some((raw, off)) = raw.filter(|(b, _)| !b.is_empty()) else {
            return Ok(Value::Null);
        };
        if ty == Ty::RawExtension && raw.starts_with(MAGIC) {
            if self.depth >= MAX_ENVELOPE_DEPTH {
                return Err(ProtobufError::TooDeep { offset: off });
            }
            return decode_envelope(raw, off, self.depth + 1).map(|d| d.object);
        }
        serde_json::from_slice(raw)
            .map_err(|e| invalid(name, 1, off, format!("raw is not JSON: {e}")))
    }
}

/// Iterates over the fields of a small wrapper message.
fn for_each<'a>(
    buf: &'a [u8],
    base: usize,
    name: &'static str,
    mut f: impl FnMut(u32, u8, usize, &mut Reader<'a>) -> Result<(), ProtobufError>,
) -> Result<(), ProtobufError> {
    let mut r = Reader::new(buf, base, name);
    while !r.is_empty() {
        let (field, wt, key_offset) = r.key()?;
        f(field, wt, key_offset, &mut r)?;
    }
    Ok(())
}

/// meta.v1.Time / MicroTime: {1 seconds int64, 2 nanos int32}. Go's metav1.Time keeps whole
/// seconds only; MicroTime keeps microseconds. An empty message is the zero time → null.
fn time(
    name: &'static str,
    tag: u32,
    buf: &[u8],
    base: usize,
    micro: bool,
) -> Result<Value, ProtobufError> {
    if buf.is_empty() {
        return Ok(Value::Null);
    }
    let wrapper = if micro {
        "apis.meta.v1.MicroTime"
    } else {
        "apis.meta.v1.Time"
    };
    let (mut seconds, mut nanos) = (0i64, 0i32);
    for_each(buf, base, wrapper, |f, wt, key_off, r| {
        expect_wire_type(wrapper, f, wt, WT_VARINT, key_off, f <= 2)?;
        let v = r.varint(f)?;
        if f == 1 {
            seconds = v as i64;
        } else {
            nanos = v as i32;
        }
        Ok(())
    })?;
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(invalid(
            name,
            tag,
            base,
            format!("nanos {nanos} out of range"),
        ));
    }
    let micros = micro.then_some(nanos as u32 / 1000);
    rfc3339(seconds, micros).map(Value::String).ok_or_else(|| {
        invalid(
            name,
            tag,
            base,
            format!("timestamp {seconds} outside years 0..=9999"),
        )
    })
}

/// intstr.IntOrString: {1 type (0 int, 1 string), 2 intVal, 3 strVal}.
fn int_or_string(
    name: &'static str,
    tag: u32,
    buf: &[u8],
    base: usize,
) -> Result<Value, ProtobufError> {
    const W: &str = "util.intstr.IntOrString";
    let (mut kind, mut int_val, mut str_val) = (0i64, 0i32, String::new());
    for_each(buf, base, W, |f, wt, key_off, r| {
        match f {
            1 | 2 => {
                expect_wire_type(W, f, wt, WT_VARINT, key_off, true)?;
                let v = r.varint(f)?;
                if f == 1 {
                    kind = v as i64;
                } else {
                    int_val = v as i32;
                }
            }
            _ => {
                expect_wire_type(W, f, wt, WT_LEN, key_off, f == 3)?;
                let (s, o) = r.len_delimited(f)?;
                str_val = utf8(W, f, o, s)?;
            }
        }
        Ok(())
    })?;
    match kind {
        0 => Ok(Value::from(int_val)),
        1 => Ok(Value::String(str_val)),
        other => Err(invalid(
            name,
            tag,
            base,
            format!("IntOrString type {other} is neither 0 (int) nor 1 (string)"),
        )),
    }
}

#[cfg(test)]
pub(crate) fn all_messages() -> &'static [Message] {
    &MESSAGES
}
