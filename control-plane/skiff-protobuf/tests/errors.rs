//! Malformed input: clear errors, never a panic.

use skiff_protobuf::{decode, decode_object, ProtobufError};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(field: u32, wire_type: u8, out: &mut Vec<u8>) {
    varint(u64::from(field) << 3 | u64::from(wire_type), out);
}

fn len_field(field: u32, payload: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// `k8s\0` + Unknown{typeMeta{apiVersion, kind}, raw}; returns the body and raw's offset.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> (Vec<u8>, usize) {
    let mut tm = Vec::new();
    len_field(1, api_version.as_bytes(), &mut tm);
    len_field(2, kind.as_bytes(), &mut tm);
    let mut body = b"k8s\0".to_vec();
    len_field(1, &tm, &mut body);
    key(2, 2, &mut body);
    varint(raw.len() as u64, &mut body);
    let offset = body.len();
    body.extend_from_slice(raw);
    (body, offset)
}

#[test]
fn missing_magic() {
    assert_eq!(decode(b""), Err(ProtobufError::MissingMagic));
    assert_eq!(decode(b"k8s"), Err(ProtobufError::MissingMagic));
    assert_eq!(
        decode(b"{\"kind\":\"Pod\"}"),
        Err(ProtobufError::MissingMagic)
    );
}

#[test]
fn unknown_kind_and_api_version() {
    let (body, _) = envelope("v1", "Frobnicator", b"");
    let err = decode(&body).unwrap_err();
    assert_eq!(
        err,
        ProtobufError::UnknownKind {
            api_version: "v1".into(),
            kind: "Frobnicator".into()
        }
    );
    assert!(err.to_string().contains("Frobnicator"));
    // Deployment exists, but not in the core group.
    let (body, _) = envelope("v1", "Deployment", b"");
    assert!(matches!(
        decode(&body),
        Err(ProtobufError::UnknownKind { .. })
    ));
    // Missing typeMeta altogether.
    assert!(matches!(
        decode(b"k8s\0"),
        Err(ProtobufError::UnknownKind { .. })
    ));
}

#[test]
fn empty_raw_is_an_empty_object() {
    let (body, _) = envelope("v1", "Namespace", b"");
    let d = decode(&body).unwrap();
    assert_eq!(
        d.object,
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace"})
    );
}

#[test]
fn unknown_field_names_message_field_and_offset() {
    // Deployment{metadata{name:"x"}, 99: varint 1}
    let mut raw = Vec::new();
    let mut md = Vec::new();
    len_field(1, b"x", &mut md);
    len_field(1, &md, &mut raw);
    let unknown_at = raw.len();
    key(99, 0, &mut raw);
    raw.push(1);
    let (body, raw_offset) = envelope("apps/v1", "Deployment", &raw);
    let err = decode(&body).unwrap_err();
    assert_eq!(
        err,
        ProtobufError::UnknownField {
            message: "api.apps.v1.Deployment",
            field: 99,
            wire_type: 0,
            offset: raw_offset + unknown_at,
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("api.apps.v1.Deployment")
            && text.contains("99")
            && text.contains(&format!("{}", raw_offset + unknown_at)),
        "{text}"
    );
}

#[test]
fn unknown_field_in_a_nested_message() {
    // Deployment{spec(2){template(3){spec(2){77: "?"}}}}
    let mut pod_spec = Vec::new();
    len_field(77, b"?", &mut pod_spec);
    let mut template = Vec::new();
    len_field(2, &pod_spec, &mut template);
    let mut spec = Vec::new();
    len_field(3, &template, &mut spec);
    let mut raw = Vec::new();
    len_field(2, &spec, &mut raw);
    let (body, raw_offset) = envelope("apps/v1", "Deployment", &raw);
    match decode(&body).unwrap_err() {
        ProtobufError::UnknownField {
            message,
            field,
            offset,
            ..
        } => {
            assert_eq!(message, "api.core.v1.PodSpec");
            assert_eq!(field, 77);
            // 3 nested length-delimited headers of 2 bytes each precede the key.
            assert_eq!(offset, raw_offset + 6);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_fields_in_the_envelope_and_wrappers() {
    let mut body = b"k8s\0".to_vec();
    key(9, 0, &mut body);
    body.push(0);
    assert!(matches!(
        decode(&body),
        Err(ProtobufError::UnknownField {
            message: "runtime.Unknown",
            field: 9,
            offset: 4,
            ..
        })
    ));
    // ObjectMeta.creationTimestamp (8) = Time{3: 1}
    let mut t = Vec::new();
    key(3, 0, &mut t);
    t.push(1);
    let mut md = Vec::new();
    len_field(8, &t, &mut md);
    let mut raw = Vec::new();
    len_field(1, &md, &mut raw);
    let (body, _) = envelope("v1", "Namespace", &raw);
    assert!(matches!(
        decode(&body),
        Err(ProtobufError::UnknownField {
            message: "apis.meta.v1.Time",
            field: 3,
            ..
        })
    ));
}

#[test]
fn wrong_wire_type() {
    // ObjectMeta.name (1) sent as a varint.
    let mut md = Vec::new();
    key(1, 0, &mut md);
    md.push(5);
    let mut raw = Vec::new();
    len_field(1, &md, &mut raw);
    let (body, raw_offset) = envelope("v1", "Namespace", &raw);
    assert_eq!(
        decode(&body),
        Err(ProtobufError::WireType {
            message: "apimachinery.pkg.apis.meta.v1.ObjectMeta",
            field: 1,
            offset: raw_offset + 2,
            wire_type: 0,
        })
    );
    // Group wire types are never valid.
    let mut raw = Vec::new();
    key(1, 3, &mut raw);
    let (body, _) = envelope("v1", "Namespace", &raw);
    assert!(matches!(
        decode(&body),
        Err(ProtobufError::WireType { wire_type: 3, .. })
    ));
}

#[test]
fn invalid_utf8_and_invalid_values() {
    let mut md = Vec::new();
    len_field(1, &[0xff, 0xfe], &mut md);
    let mut raw = Vec::new();
    len_field(1, &md, &mut raw);
    let (body, _) = envelope("v1", "Namespace", &raw);
    let err = decode(&body).unwrap_err();
    assert!(
        matches!(err, ProtobufError::InvalidValue { field: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("UTF-8"));

    // ControllerRevision.data (2) = RawExtension{raw: "not json"}
    let mut ext = Vec::new();
    len_field(1, b"not json", &mut ext);
    let mut raw = Vec::new();
    len_field(2, &ext, &mut raw);
    let (body, _) = envelope("apps/v1", "ControllerRevision", &raw);
    assert!(decode(&body).unwrap_err().to_string().contains("not JSON"));

    // ServicePort.targetPort with IntOrString type 7.
    let mut ios = Vec::new();
    key(1, 0, &mut ios);
    ios.push(7);
    let mut port = Vec::new();
    len_field(4, &ios, &mut port);
    let mut spec = Vec::new();
    len_field(1, &port, &mut spec);
    let mut raw = Vec::new();
    len_field(2, &spec, &mut raw);
    let (body, _) = envelope("v1", "Service", &raw);
    assert!(decode(&body)
        .unwrap_err()
        .to_string()
        .contains("IntOrString type 7"));

    // A timestamp beyond year 9999.
    let mut t = Vec::new();
    key(1, 0, &mut t);
    varint(400_000_000_000, &mut t);
    let mut md = Vec::new();
    len_field(8, &t, &mut md);
    let mut raw = Vec::new();
    len_field(1, &md, &mut raw);
    let (body, _) = envelope("v1", "Namespace", &raw);
    assert!(decode(&body)
        .unwrap_err()
        .to_string()
        .contains("outside years"));
}

#[test]
fn content_encoding_and_type_are_checked() {
    let mut body = b"k8s\0".to_vec();
    len_field(3, b"gzip", &mut body);
    assert_eq!(
        decode(&body),
        Err(ProtobufError::UnsupportedContentEncoding("gzip".into()))
    );
    let mut body = b"k8s\0".to_vec();
    len_field(4, b"application/json", &mut body);
    assert_eq!(
        decode(&body),
        Err(ProtobufError::UnsupportedContentType(
            "application/json".into()
        ))
    );
    let mut tm = Vec::new();
    len_field(1, b"v1", &mut tm);
    len_field(2, b"Namespace", &mut tm);
    let mut body = b"k8s\0".to_vec();
    len_field(1, &tm, &mut body);
    len_field(4, b"application/vnd.kubernetes.protobuf", &mut body);
    assert!(decode(&body).is_ok());
}

#[test]
fn packed_and_unpacked_repeated_scalars() {
    // Pod.spec(2).securityContext(14).supplementalGroups(4): unpacked 1, packed [2, 300], unpacked 4.
    let mut psc = Vec::new();
    key(4, 0, &mut psc);
    varint(1, &mut psc);
    let mut packed = Vec::new();
    varint(2, &mut packed);
    varint(300, &mut packed);
    len_field(4, &packed, &mut psc);
    key(4, 0, &mut psc);
    varint(4, &mut psc);
    let mut spec = Vec::new();
    len_field(14, &psc, &mut spec);
    let mut raw = Vec::new();
    len_field(2, &spec, &mut raw);
    let o = decode_object("v1", "Pod", &raw).unwrap();
    assert_eq!(
        o["spec"]["securityContext"]["supplementalGroups"],
        serde_json::json!([1, 2, 300, 4])
    );
}

#[test]
fn negative_int32_and_last_value_wins() {
    // Deployment.spec(2).replicas(1) = -1 as a 10-byte varint, then minReadySeconds(5) = 7 then 0.
    let mut spec = Vec::new();
    key(1, 0, &mut spec);
    varint(u64::MAX, &mut spec);
    key(5, 0, &mut spec);
    varint(7, &mut spec);
    key(5, 0, &mut spec);
    varint(0, &mut spec);
    let mut raw = Vec::new();
    len_field(2, &spec, &mut raw);
    let o = decode_object("apps/v1", "Deployment", &raw).unwrap();
    assert_eq!(o["spec"], serde_json::json!({"replicas": -1}));
}

#[test]
fn repeated_message_fields_merge() {
    // Two occurrences of Deployment.metadata merge, as protobuf requires.
    let mut raw = Vec::new();
    let mut a = Vec::new();
    len_field(1, b"web", &mut a);
    let mut b = Vec::new();
    len_field(3, b"default", &mut b);
    len_field(1, &a, &mut raw);
    len_field(1, &b, &mut raw);
    let o = decode_object("apps/v1", "Deployment", &raw).unwrap();
    assert_eq!(
        o["metadata"],
        serde_json::json!({"name": "web", "namespace": "default"})
    );
}

#[test]
fn overlong_varints_and_lengths() {
    let mut body = b"k8s\0".to_vec();
    body.extend_from_slice(&[0x80; 11]);
    assert!(matches!(
        decode(&body),
        Err(ProtobufError::InvalidVarint { .. })
    ));
    // A length prefix far beyond the input.
    let mut body = b"k8s\0".to_vec();
    key(2, 2, &mut body);
    varint(u64::MAX, &mut body);
    assert!(matches!(
        decode(&body),
        Err(ProtobufError::Truncated { .. })
    ));
    // Field number 0.
    let body = b"k8s\0\x00\x00".to_vec();
    assert!(matches!(
        decode(&body),
        Err(ProtobufError::InvalidFieldNumber { field: 0, .. })
    ));
}

#[test]
fn deeply_nested_envelopes_are_refused() {
    // ControllerRevision whose data is a ControllerRevision whose data is … 100 levels deep.
    let mut body = {
        let (b, _) = envelope("v1", "Namespace", b"");
        b
    };
    for _ in 0..100 {
        let mut ext = Vec::new();
        len_field(1, &body, &mut ext);
        let mut raw = Vec::new();
        len_field(2, &ext, &mut raw);
        body = envelope("apps/v1", "ControllerRevision", &raw).0;
    }
    assert!(matches!(decode(&body), Err(ProtobufError::TooDeep { .. })));
}

/// Every prefix of every captured body: an error (or, rarely, a valid shorter message), never a
/// panic. Cutting inside a length-delimited field must always fail.
#[test]
fn truncated_fixtures_never_panic() {
    for name in [
        "create_deployment.pb",
        "create_configmap.pb",
        "create_service_nodeport.pb",
        "create_secret_docker_registry.pb",
    ] {
        let body = fixture(name);
        let mut ok = 0;
        for cut in 0..body.len() {
            if decode(&body[..cut]).is_ok() {
                ok += 1;
            }
        }
        // Only cuts on envelope field boundaries can still parse: after typeMeta (empty
        // object), after raw, after the empty contentEncoding (before the empty contentType).
        assert!(ok <= 3, "{name}: {ok} truncated prefixes decoded");
        assert!(decode(&body).is_ok());
    }
}

/// Small deterministic PRNG (xorshift64*), so the fuzz loop needs no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let fixtures: Vec<Vec<u8>> =
        std::fs::read_dir(format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "pb"))
            .map(|p| std::fs::read(p).unwrap())
            .collect();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut body = fixtures[rng.below(fixtures.len())].clone();
        for _ in 0..1 + rng.below(4) {
            let i = 4 + rng.below(body.len() - 4);
            match rng.below(4) {
                0 => body[i] = rng.next() as u8,
                1 => body[i] ^= 1 << rng.below(8),
                2 => {
                    body.remove(i);
                }
                _ => body.insert(i, rng.next() as u8),
            }
            if body.len() <= 5 {
                break;
            }
        }
        match decode(&body) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                err += 1;
            }
        }
    }
    assert!(err > 0 && ok + err == 20_000);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let mut body = b"k8s\0".to_vec();
        body.extend((0..len).map(|_| rng.next() as u8));
        let _ = decode(&body);
        // Also as a raw object of each supported kind.
        let kinds: Vec<_> = skiff_protobuf::supported_kinds().collect();
        let (v, k) = kinds[rng.below(kinds.len())];
        let _ = decode_object(if v == "*" { "v1" } else { v }, k, &body[4..]);
    }
}
