//! CNI specification types: the error object and its codes, the environment
//! a runtime passes, results, and cniVersion negotiation.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cidr::Cidr;

/// Versions this binary accepts in `cniVersion` and can emit results for.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version, used when a request names none.
pub const LATEST_VERSION: &str = "1.1.0";

/// Well-known error codes from the spec, plus Skiff's plugin-specific ones (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Internal failure that fits no finer code.
    pub const INTERNAL: u32 = 100;
    /// The IPAM range has no free address left.
    pub const RANGE_EXHAUSTED: u32 = 101;
    /// A netlink request failed.
    pub const NETLINK: u32 = 102;
    /// Entering or opening a network namespace failed.
    pub const NETNS: u32 = 103;
    /// An iptables command failed.
    pub const IPTABLES: u32 = 104;
    /// The delegated (IPAM) plugin could not be run.
    pub const DELEGATE: u32 = 105;
    /// CHECK found the container's network differs from prevResult.
    pub const CHECK_MISMATCH: u32 = 106;
    /// The requested plugin is not implemented by this binary.
    pub const NOT_IMPLEMENTED: u32 = 107;
    /// The interface name asked for already exists in the container.
    pub const INTERFACE_EXISTS: u32 = 108;
    /// A specifically requested address is taken or outside the ranges.
    pub const ADDRESS_UNAVAILABLE: u32 = 109;
}

/// The spec's error object. Printed on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct CniError {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            cni_version: String::new(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"unprintable error\"}}", self.code))
    }
}

/// The CNI verb in CNI_COMMAND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// The CNI_* environment of one invocation, validated for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub path: Vec<String>,
}

impl Env {
    /// Reads and validates the variables from a lookup function (the process
    /// environment in production, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let var = |k: &str| get(k).unwrap_or_default();
        let cmd_s = var("CNI_COMMAND");
        if cmd_s.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "required env variables [CNI_COMMAND] missing",
            ));
        }
        let command = Command::parse(&cmd_s).ok_or_else(|| {
            CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND: {cmd_s}"))
        })?;
        let required: &[&str] = match command {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc | Command::Status => &["CNI_PATH"],
            Command::Version => &[],
        };
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|k| var(k).is_empty())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("required env variables [{}] missing", missing.join(" ")),
            ));
        }
        let ifname = var("CNI_IFNAME");
        if !ifname.is_empty() {
            validate_ifname(&ifname)?;
        }
        let args = parse_args(&var("CNI_ARGS"))?;
        Ok(Env {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname,
            args,
            path: var("CNI_PATH")
                .split(':')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    pub fn from_process() -> Result<Env, CniError> {
        Env::from_lookup(|k| std::env::var(k).ok())
    }
}

/// Interface names: 1..=15 bytes, no '/', no whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {name:?} is not a valid interface name"),
        ));
    }
    Ok(())
}

/// CNI_ARGS: "K1=V1;K2=V2".
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS: invalid pair {pair:?}"),
            )
        })?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Reads `cniVersion` from a raw config and checks that it is supported.
/// Malformed JSON is code 6, an unsupported version code 1.
pub fn negotiate_version(raw: &[u8]) -> Result<(Value, String), CniError> {
    let v: Value = serde_json::from_slice(raw).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("failed to decode network config: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(CniError::new(
            code::DECODE,
            "network config is not a JSON object",
        ));
    }
    let version = match v.get("cniVersion") {
        None => "0.1.0".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(CniError::new(
                code::DECODE,
                format!("cniVersion must be a string, got {other}"),
            ))
        }
    };
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(
            CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(
                format!("config is {version:?}, plugin supports {SUPPORTED_VERSIONS:?}"),
            ),
        );
    }
    Ok((v, version))
}

/// Parses a (version-checked) config object into a plugin's typed config; type
/// errors are code 7 (invalid network config).
pub fn typed_config<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<T, CniError> {
    T::deserialize(v)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("invalid network config: {e}")))
}

/// True when `version` is at least `min` (both dotted triples).
pub fn version_at_least(version: &str, min: &str) -> bool {
    fn triple(s: &str) -> (u32, u32, u32) {
        let mut it = s.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
            it.next().unwrap_or(0),
        )
    }
    triple(version) >= triple(min)
}

/// The VERSION command's answer.
pub fn version_result(requested: Option<&str>) -> Value {
    serde_json::json!({
        "cniVersion": requested.unwrap_or(LATEST_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A result in the 1.x shape; converted to older shapes on output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Parses a result of any supported version (0.3.x adds `version` to each ip;
    /// unknown fields are ignored).
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        CniResult::deserialize(v)
            .map_err(|e| CniError::new(code::DECODE, format!("failed to decode result: {e}")))
    }

    /// Renders the result for the negotiated version.
    pub fn to_value(&self, version: &str) -> Value {
        let mut me = self.clone();
        me.cni_version = version.to_string();
        if !version_at_least(version, "1.1.0") {
            for i in &mut me.interfaces {
                i.mtu = None;
            }
        }
        let mut v = serde_json::to_value(&me).unwrap_or(Value::Null);
        if !version_at_least(version, "1.0.0") {
            if let Some(Value::Array(ips)) = v.get_mut("ips") {
                for ip in ips.iter_mut() {
                    let fam = ip
                        .get("address")
                        .and_then(Value::as_str)
                        .map(|a| if a.contains(':') { "6" } else { "4" })
                        .unwrap_or("4");
                    ip["version"] = Value::String(fam.to_string());
                }
            }
        }
        v
    }
}

/// One `{containerID, ifname}` pair from `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// Reads the GC list of attachments that must be kept.
pub fn valid_attachments(conf: &Value) -> Result<Vec<Attachment>, CniError> {
    match conf.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => Vec::<Attachment>::deserialize(v).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid cni.dev/valid-attachments: {e}"),
            )
        }),
    }
}

/// Helper for tests and callers holding a map of variables.
pub fn env_from_map(m: &HashMap<String, String>) -> Result<Env, CniError> {
    Env::from_lookup(|k| m.get(k).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env_from_map(&m)
    }

    const FULL: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/a:/b"),
        ("CNI_ARGS", "K8S_POD_NAME=p;IgnoreUnknown=1"),
    ];

    #[test]
    fn env_full_add() {
        let e = env(FULL).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path, vec!["/a", "/b"]);
        assert_eq!(e.args[0], ("K8S_POD_NAME".into(), "p".into()));
    }

    #[test]
    fn env_missing_netns_is_code_4() {
        let pairs: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        let e = env(&pairs).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_NETNS"));
    }

    #[test]
    fn env_del_does_not_need_netns() {
        let mut pairs: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        pairs[0] = ("CNI_COMMAND", "DEL");
        assert!(env(&pairs).is_ok());
    }

    #[test]
    fn env_unknown_command_and_bad_ifname() {
        assert_eq!(
            env(&[("CNI_COMMAND", "FOO")]).unwrap_err().code,
            code::INVALID_ENV
        );
        let mut pairs = FULL.to_vec();
        pairs[3] = ("CNI_IFNAME", "a/b");
        assert_eq!(env(&pairs).unwrap_err().code, code::INVALID_ENV);
        pairs[3] = ("CNI_IFNAME", "a-name-that-is-too-long");
        assert_eq!(env(&pairs).unwrap_err().code, code::INVALID_ENV);
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn version_negotiation() {
        assert_eq!(negotiate_version(b"{bad").unwrap_err().code, code::DECODE);
        assert_eq!(negotiate_version(b"[1]").unwrap_err().code, code::DECODE);
        let e = negotiate_version(br#"{"cniVersion":"9.9.9"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert!(e.details.contains("9.9.9"));
        for v in SUPPORTED_VERSIONS {
            let raw = format!(r#"{{"cniVersion":"{v}","name":"n"}}"#);
            assert_eq!(negotiate_version(raw.as_bytes()).unwrap().1, *v);
        }
        assert!(version_at_least("1.1.0", "1.0.0"));
        assert!(!version_at_least("0.4.0", "1.0.0"));
    }

    #[test]
    fn version_answer_lists_supported() {
        let v = version_result(Some("1.0.0"));
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED_VERSIONS.len()
        );
        assert_eq!(version_result(None)["cniVersion"], LATEST_VERSION);
    }

    #[test]
    fn error_json_shape() {
        let e = CniError::new(7, "bad").with_details("more");
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad");
        assert_eq!(v["details"], "more");
        assert!(v.get("cniVersion").is_none());
    }

    #[test]
    fn result_conversion_per_version() {
        let r = CniResult {
            cni_version: String::new(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: Some(1400),
                sandbox: "/run/netns/x".into(),
            }],
            ips: vec![IpConfig {
                interface: Some(0),
                address: "10.0.0.2/24".parse().unwrap(),
                gateway: Some("10.0.0.1".parse().unwrap()),
            }],
            routes: vec![],
            dns: Dns::default(),
        };
        let v = r.to_value("0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = r.to_value("1.1.0");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["interfaces"][0]["mtu"], 1400);
        assert_eq!(v["dns"], serde_json::json!({}));
        let back = CniResult::from_value(&r.to_value("0.3.1")).unwrap();
        assert_eq!(back.ips, r.ips);
    }

    #[test]
    fn attachments_parse() {
        let v: Value = serde_json::from_str(
            r#"{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let a = valid_attachments(&v).unwrap();
        assert_eq!(a[0].container_id, "a");
        assert!(valid_attachments(&serde_json::json!({}))
            .unwrap()
            .is_empty());
    }
}
