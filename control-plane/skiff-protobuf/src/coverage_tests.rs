//! Exhaustive schema check: for every supported kind, synthesize a message with *every* field of
//! every reachable message set to a non-zero value, decode it, and push the JSON through the
//! k8s-openapi v1_33 type. A field whose JSON name or value shape k8s-openapi does not accept
//! shows up as a deserialization error or as a difference after the round trip.

use serde_json::Value;

use crate::schema::{Card, Ty};
use crate::schema_generated::{KINDS, MESSAGES};

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(tag: u32, wt: u8, out: &mut Vec<u8>) {
    varint(u64::from(tag) << 3 | u64::from(wt), out);
}

fn ld(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
    key(tag, 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Appends one value of `ty` as field `tag`.
fn value(tag: u32, ty: Ty, json: &str, out: &mut Vec<u8>) {
    match ty {
        Ty::Str => ld(tag, format!("v-{json}").as_bytes(), out),
        Ty::Bytes => ld(tag, b"\x00\x01bytes", out),
        Ty::Int32 => {
            key(tag, 0, out);
            varint(7, out);
        }
        Ty::Int64 => {
            key(tag, 0, out);
            varint(8_000_000_000, out);
        }
        Ty::Bool => {
            key(tag, 0, out);
            varint(1, out);
        }
        Ty::Double => {
            key(tag, 1, out);
            out.extend_from_slice(&1.5f64.to_le_bytes());
        }
        Ty::Msg(m) => ld(tag, &message(m), out),
        Ty::Time | Ty::MicroTime => {
            let mut t = Vec::new();
            key(1, 0, &mut t);
            varint(1_700_000_000, &mut t);
            key(2, 0, &mut t);
            varint(123_456_000, &mut t);
            ld(tag, &t, out);
        }
        Ty::IntOrString => {
            let mut t = Vec::new();
            key(1, 0, &mut t);
            varint(1, &mut t);
            ld(3, b"25%", &mut t);
            ld(tag, &t, out);
        }
        Ty::Quantity => {
            let mut t = Vec::new();
            ld(1, b"250m", &mut t);
            ld(tag, &t, out);
        }
        Ty::RawExtension | Ty::FieldsV1 => {
            let mut t = Vec::new();
            ld(1, br#"{"f:x":{}}"#, &mut t);
            ld(tag, &t, out);
        }
        Ty::StringList => {
            let mut t = Vec::new();
            ld(1, b"a", &mut t);
            ld(1, b"b", &mut t);
            ld(tag, &t, out);
        }
    }
}

/// A message with every field set (the schema has no cycles; see `schema_is_acyclic`).
fn message(m: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for f in MESSAGES[usize::from(m)].fields {
        match f.card {
            Card::Single | Card::Repeated => value(f.tag, f.ty, f.json, &mut out),
            Card::Map => {
                let mut entry = Vec::new();
                ld(1, b"key", &mut entry);
                value(2, f.ty, f.json, &mut entry);
                ld(f.tag, &entry, &mut out);
            }
        }
    }
    out
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn typed_round_trip(kind: &str, v: &Value) -> Result<Value, String> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core};
    match kind {
        "Namespace" => round_trip::<core::Namespace>(v),
        "Pod" => round_trip::<core::Pod>(v),
        "Service" => round_trip::<core::Service>(v),
        "Endpoints" => round_trip::<core::Endpoints>(v),
        "Node" => round_trip::<core::Node>(v),
        "ConfigMap" => round_trip::<core::ConfigMap>(v),
        "Secret" => round_trip::<core::Secret>(v),
        "Event" => round_trip::<core::Event>(v),
        "ServiceAccount" => round_trip::<core::ServiceAccount>(v),
        "Binding" => round_trip::<core::Binding>(v),
        "Deployment" => round_trip::<apps::Deployment>(v),
        "ReplicaSet" => round_trip::<apps::ReplicaSet>(v),
        "DaemonSet" => round_trip::<apps::DaemonSet>(v),
        "StatefulSet" => round_trip::<apps::StatefulSet>(v),
        "ControllerRevision" => round_trip::<apps::ControllerRevision>(v),
        "Scale" => round_trip::<k8s_openapi::api::autoscaling::v1::Scale>(v),
        "Eviction" => round_trip::<k8s_openapi::api::policy::v1::Eviction>(v),
        "Lease" => round_trip::<k8s_openapi::api::coordination::v1::Lease>(v),
        "EndpointSlice" => round_trip::<k8s_openapi::api::discovery::v1::EndpointSlice>(v),
        "CertificateSigningRequest" => {
            round_trip::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>(v)
        }
        "DeleteOptions" => {
            round_trip::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(v)
        }
        other => Err(format!("no k8s-openapi type for {other}")),
    }
}

/// Paths present in `a` but missing or different in `b`.
fn diff(path: &str, a: &Value, b: Option<&Value>, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(ma), Some(Value::Object(mb))) => {
            for (k, va) in ma {
                diff(&format!("{path}.{k}"), va, mb.get(k), out);
            }
        }
        (Value::Array(xa), Some(Value::Array(xb))) => {
            for (i, va) in xa.iter().enumerate() {
                diff(&format!("{path}[{i}]"), va, xb.get(i), out);
            }
        }
        (_, Some(vb)) if a == vb => {}
        (_, None) => out.push(format!("{path} (dropped)")),
        (_, Some(vb)) => out.push(format!("{path}: {a} became {vb}")),
    }
}

/// Fields k8s-pb 0.9 knows (protos newer than 1.33) that k8s-openapi's v1_33 types do not;
/// kubectl 1.33 never sends them. Matched as suffixes of paths without array indices.
const NEWER_THAN_1_33: &[&str] = &[
    "spec.hostnameOverride",
    "spec.workloadRef",
    ".containers.restartPolicyRules",
    ".initContainers.restartPolicyRules",
    ".ephemeralContainers.restartPolicyRules",
    ".valueFrom.fileKeyRef",
    ".sources.podCertificate",
    "Pod.status.allocatedResources",
    "Pod.status.resources",
    "Pod.status.extendedResourceClaimStatus",
    "Node.status.declaredFeatures",
];

#[test]
fn every_field_of_every_kind_round_trips_through_k8s_openapi() {
    let mut problems = Vec::new();
    for &(api_version, kind, m) in KINDS {
        let api_version = if api_version == "*" {
            "v1"
        } else {
            api_version
        };
        let raw = message(m);
        let decoded =
            crate::decode_object(api_version, kind, &raw).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let again = match typed_round_trip(kind, &decoded) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{kind}: k8s-openapi rejects it: {e}"));
                continue;
            }
        };
        let mut lost = Vec::new();
        diff(kind, &decoded, Some(&again), &mut lost);
        for l in lost {
            let generic: String = {
                // Strip array indices for matching against NEWER_THAN_1_33.
                let mut s = String::new();
                let mut skip = false;
                for c in l.split(' ').next().unwrap_or("").chars() {
                    match c {
                        '[' => skip = true,
                        ']' => skip = false,
                        _ if !skip => s.push(c),
                        _ => {}
                    }
                }
                s
            };
            if !NEWER_THAN_1_33.iter().any(|n| generic.ends_with(n)) {
                problems.push(l);
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn schema_is_acyclic() {
    fn visit(m: u16, stack: &mut Vec<u16>) {
        assert!(
            !stack.contains(&m),
            "cycle through {}",
            MESSAGES[usize::from(m)].name
        );
        stack.push(m);
        for f in MESSAGES[usize::from(m)].fields {
            if let Ty::Msg(n) = f.ty {
                visit(n, stack);
            }
        }
        stack.pop();
    }
    for &(_, _, m) in KINDS {
        visit(m, &mut Vec::new());
    }
}

#[test]
fn schema_fields_are_sorted_and_unique() {
    for m in MESSAGES.iter() {
        for w in m.fields.windows(2) {
            assert!(w[0].tag < w[1].tag, "{}: tags out of order", m.name);
        }
        let mut names: Vec<_> = m
            .fields
            .iter()
            .map(|f| f.json)
            .filter(|j| !j.is_empty())
            .collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "{}: duplicate JSON names", m.name);
    }
}
