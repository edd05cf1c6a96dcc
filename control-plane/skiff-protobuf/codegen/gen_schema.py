#!/usr/bin/env python3
"""Generate src/schema_generated.rs for skiff-protobuf.

Inputs (both from the local cargo registry, nothing is downloaded):
  * k8s-pb 0.9.x    -- prost-generated structs; gives every message's field tags and wire types.
  * k8s-openapi 0.29 (v1_33) -- gives every definition's JSON field names and which fields are
    required (non-`Option` in Rust, i.e. emitted by Go's encoding/json even when zero).

Usage (from the repository root):
  python3 control-plane/skiff-protobuf/codegen/gen_schema.py \
      > control-plane/skiff-protobuf/src/schema_generated.rs
  cargo fmt -p skiff-protobuf

Options: --registry DIR (default: the first ~/.cargo/registry/src/*/ holding both crates).

The generator walks the message graph from the ROOTS below (the API server's wave-1 kinds) and
emits one table entry per reachable message.  Matching a prost field to its JSON name is done by
comparing names with underscores removed, case-insensitively (prost's `host_i_ps` == JSON
`hostIPs`); any field that cannot be matched aborts generation.
"""

import glob
import os
import re
import sys

# (apiVersion, kind, OpenAPI definition name). apiVersion "*" = accepted under any apiVersion.
ROOTS = [
    ("v1", "Namespace", "io.k8s.api.core.v1.Namespace"),
    ("v1", "Pod", "io.k8s.api.core.v1.Pod"),
    ("v1", "Service", "io.k8s.api.core.v1.Service"),
    ("v1", "Endpoints", "io.k8s.api.core.v1.Endpoints"),
    ("v1", "Node", "io.k8s.api.core.v1.Node"),
    ("v1", "ConfigMap", "io.k8s.api.core.v1.ConfigMap"),
    ("v1", "Secret", "io.k8s.api.core.v1.Secret"),
    ("v1", "Event", "io.k8s.api.core.v1.Event"),
    ("v1", "ServiceAccount", "io.k8s.api.core.v1.ServiceAccount"),
    ("v1", "Binding", "io.k8s.api.core.v1.Binding"),
    ("apps/v1", "Deployment", "io.k8s.api.apps.v1.Deployment"),
    ("apps/v1", "ReplicaSet", "io.k8s.api.apps.v1.ReplicaSet"),
    ("apps/v1", "DaemonSet", "io.k8s.api.apps.v1.DaemonSet"),
    ("apps/v1", "StatefulSet", "io.k8s.api.apps.v1.StatefulSet"),
    ("apps/v1", "ControllerRevision", "io.k8s.api.apps.v1.ControllerRevision"),
    ("autoscaling/v1", "Scale", "io.k8s.api.autoscaling.v1.Scale"),
    ("policy/v1", "Eviction", "io.k8s.api.policy.v1.Eviction"),
    ("coordination.k8s.io/v1", "Lease", "io.k8s.api.coordination.v1.Lease"),
    ("discovery.k8s.io/v1", "EndpointSlice", "io.k8s.api.discovery.v1.EndpointSlice"),
    (
        "certificates.k8s.io/v1",
        "CertificateSigningRequest",
        "io.k8s.api.certificates.v1.CertificateSigningRequest",
    ),
    ("*", "DeleteOptions", "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"),
]

# Wrapper messages whose JSON form is not an object; decoded by hand-written code.
SPECIAL = {
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": "Time",
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "io.k8s.apimachinery.pkg.api.resource.Quantity": "Quantity",
    "io.k8s.apimachinery.pkg.runtime.RawExtension": "RawExtension",
    "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1": "FieldsV1",
    # CertificateSigningRequest.spec.extra values: {1: repeated string} whose JSON is the list.
    "io.k8s.api.certificates.v1.ExtraValue": "StringList",
}

SCALARS = {
    "string": "Str",
    "bytes": "Bytes",
    "int32": "Int32",
    "int64": "Int64",
    "bool": "Bool",
    "double": "Double",
}


def find_registry():
    for arg_i, arg in enumerate(sys.argv):
        if arg == "--registry":
            return sys.argv[arg_i + 1]
    for d in sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))):
        if glob.glob(d + "k8s-pb-0.9.*") and glob.glob(d + "k8s-openapi-0.29.*"):
            return d
    sys.exit("k8s-pb 0.9 and k8s-openapi 0.29 not found in ~/.cargo/registry/src (run cargo fetch)")


def norm(name):
    if name.startswith("r#"):
        name = name[2:]
    return name.replace("_", "").lower()


def parse_pb(root):
    """Return {definition: [(tag, rust_name, attr, type_text, module_path)]}."""
    messages = {}
    for path in glob.glob(os.path.join(root, "src", "**", "mod.rs"), recursive=True):
        rel = os.path.relpath(os.path.dirname(path), os.path.join(root, "src"))
        module = rel.split(os.sep)
        prefix = "io.k8s." + ".".join(module)
        text = open(path, encoding="utf-8").read()
        # Drop doc comments so that attribute / field regexes do not trip over prose.
        text = "\n".join(line for line in text.split("\n") if not line.strip().startswith("//"))
        for m in re.finditer(r"^pub struct (\w+) \{\n(.*?)^\}", text, re.S | re.M):
            name, body = m.group(1), m.group(2)
            fields = []
            for chunk in body.split("#[prost(")[1:]:
                attr, rest = chunk.split(")]", 1)
                fm = re.match(r"\s*pub (r#)?(\w+)\s*:\s*(.*),\s*$", rest, re.S)
                if not fm:
                    sys.exit(f"cannot parse field in {prefix}.{name}: {rest!r}")
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                fields.append((tag, fm.group(2), attr, re.sub(r"\s+", "", fm.group(3)), module))
            messages[f"{prefix}.{name}"] = fields
    return messages


def resolve(type_text, module):
    t = type_text
    for wrapper in (
        "::core::option::Option<",
        "::prost::alloc::vec::Vec<",
        "::prost::alloc::boxed::Box<",
        "::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,",
    ):
        t = t.replace(wrapper, "")
    t = t.replace(">", "").rstrip(",")
    segs = t.split("::")
    if segs[0] == "crate":
        mod = []
        segs = segs[1:]
    else:
        mod = list(module)
        while segs and segs[0] == "super":
            mod.pop()
            segs = segs[1:]
    return "io.k8s." + ".".join(mod + segs)


def parse_openapi(root):
    """Return {definition: {json_name: required}}.

    v1_33 is authoritative.  k8s-pb 0.9 is generated from newer protos than 1.33, so fields that
    only exist in later releases (e.g. PodSpec.hostnameOverride) take their JSON name from the
    newest k8s-openapi module that has them; k8s-openapi's v1_33 types ignore them.
    """
    defs = {}
    versions = sorted(
        (os.path.basename(v) for v in glob.glob(os.path.join(root, "src", "v1_*"))),
        key=lambda v: int(v.split("_")[1]),
    )
    # v1_33 first, then newest to oldest; first definition of a JSON name wins.
    versions = ["v1_33"] + [v for v in reversed(versions) if v != "v1_33"]
    for version in versions:
        for defn, fields in parse_openapi_version(root, version).items():
            merged = defs.setdefault(defn, {})
            for jn, req in fields.items():
                merged.setdefault(jn, req)
    return defs


def parse_openapi_version(root, version):
    defs = {}
    for path in glob.glob(os.path.join(root, "src", version, "**", "*.rs"), recursive=True):
        text = open(path, encoding="utf-8").read()
        m = re.match(r"// Generated from definition (\S+)", text)
        if not m:
            continue
        sm = re.search(r"^pub struct \w+ \{\n(.*?)^\}", text, re.S | re.M)
        if not sm:
            continue  # newtype wrappers like Quantity(String)
        rust_required = {}
        for fm in re.finditer(r"^    pub (\w+): (.*),$", sm.group(1), re.M):
            rust_required[fm.group(1)] = not fm.group(2).startswith("Option<")
        fields = {}
        for jm in re.finditer(r'"([^"]+)" => Field::Key_(\w+),', text):
            if jm.group(2) in rust_required:  # apiVersion / kind live in the Resource impl
                fields[jm.group(1)] = rust_required[jm.group(2)]
        defs[m.group(1)] = fields
    return defs


def const_name(defn):
    short = defn.replace("io.k8s.", "").replace("apimachinery.pkg.apis.", "").replace("api.", "")
    return "M_" + re.sub(r"[^A-Za-z0-9]", "_", short).upper()


def main():
    reg = find_registry()
    pb_root = sorted(glob.glob(reg + "k8s-pb-0.9.*"))[-1]
    oa_root = sorted(glob.glob(reg + "k8s-openapi-0.29.*"))[-1]
    pb = parse_pb(pb_root)
    oa = parse_openapi(oa_root)

    order = []
    seen = set()
    todo = [r[2] for r in ROOTS]
    while todo:
        d = todo.pop(0)
        if d in seen or d in SPECIAL:
            continue
        seen.add(d)
        order.append(d)
        if d not in pb:
            sys.exit(f"message {d} not found in k8s-pb")
        for tag, rname, attr, ty, module in pb[d]:
            if attr.startswith("message") or "message" in attr.split("tag")[0]:
                todo.append(resolve(ty, module))
    index = {d: i for i, d in enumerate(order)}

    # Definition names differ in case between the two crates (PodDnsConfig vs PodDNSConfig).
    oa = {k.lower(): v for k, v in oa.items()}
    # Inline-embedded messages (VolumeSource, ProbeHandler, EphemeralContainerCommon) have no
    # OpenAPI definition of their own: their JSON names are the embedding object's.
    for d in order:
        if d.lower() not in oa:
            continue
        parent_norm = {norm(jn) for jn in oa[d.lower()]}
        for tag, rname, attr, ty, module in pb[d]:
            if norm(rname) not in parent_norm and attr.startswith("message"):
                inner = resolve(ty, module)
                oa.setdefault(inner.lower(), oa[d.lower()])

    out = []
    w = out.append
    w("// @generated by control-plane/skiff-protobuf/codegen/gen_schema.py -- do not edit by hand.")
    w(f"// Sources: {os.path.basename(pb_root)} (field tags, wire types) and")
    w(f"// {os.path.basename(oa_root)} v1_33 (JSON names, required fields).")
    w("// Regenerate from the repository root:")
    w("//   python3 control-plane/skiff-protobuf/codegen/gen_schema.py \\")
    w("//       > control-plane/skiff-protobuf/src/schema_generated.rs && cargo fmt -p skiff-protobuf")
    w("")
    w("use crate::schema::{Card::*, Field, Message, Ty::*};")
    w("")
    for d in order:
        w(f"pub(crate) const {const_name(d)}: u16 = {index[d]};")
    w("")
    w("/// `(apiVersion, kind, message)`; apiVersion `*` matches any apiVersion.")
    w("pub(crate) static KINDS: &[(&str, &str, u16)] = &[")
    for api_version, kind, d in ROOTS:
        w(f'    ("{api_version}", "{kind}", {const_name(d)}),')
    w("];")
    w("")
    w(f"pub(crate) static MESSAGES: [Message; {len(order)}] = [")
    for d in order:
        if d.lower() not in oa:
            sys.exit(f"definition {d} not found in k8s-openapi")
        json_fields = oa[d.lower()]
        by_norm = {}
        for jn in json_fields:
            if norm(jn) in by_norm:
                sys.exit(f"ambiguous JSON names in {d}: {jn} / {by_norm[norm(jn)]}")
            by_norm[norm(jn)] = jn
        w("    Message {")
        w(f'        name: "{d.replace("io.k8s.", "")}",')
        w("        fields: &[")
        for tag, rname, attr, ty, module in sorted(pb[d]):
            jn = by_norm.get(norm(rname))
            if jn is None and attr.startswith("message"):
                # Go `json:",inline"` embedding (Volume.volumeSource, Probe.handler, ...): the
                # embedded message's fields must all be fields of this JSON object.
                inner = resolve(ty, module)
                inner_fields = [norm(f[1]) for f in pb.get(inner, [])]
                if inner_fields and all(f in by_norm for f in inner_fields):
                    jn = ""
            if jn is None:
                sys.exit(f"{d}: prost field {rname} has no JSON counterpart in k8s-openapi")
            required = json_fields.get(jn, False)
            head = attr.split(",")[0].strip()
            if "map" in head:
                value = re.search(r'map = "string, (\w+)', attr).group(1)
                card = "Map"
                kind = value
            else:
                kind = head.split(" ")[0]
                card = "Repeated" if "repeated" in attr else "Single"
            if kind == "message":
                target = resolve(ty, module)
                if target in SPECIAL:
                    tyr = SPECIAL[target]
                else:
                    tyr = f"Msg({const_name(target)})"
            elif kind in SCALARS:
                tyr = SCALARS[kind]
            else:
                sys.exit(f"{d}.{rname}: unsupported prost kind {attr}")
            w(f'            Field::new({tag}, "{jn}", {tyr}, {card}, {"true" if required else "false"}),')
        w("        ],")
        w("    },")
    w("];")
    print("\n".join(out))


if __name__ == "__main__":
    main()
