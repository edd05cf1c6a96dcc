//! `skiff-overlay`: a Flannel-style meta plugin. It reads the node's subnet
//! file, written by the agent's overlay controller, and runs the delegate
//! (`bridge` + `host-local` unless configured otherwise) with the node's pod
//! CIDR, a route to the cluster network and the overlay MTU. The generated
//! delegate config is kept per attachment so that DEL and CHECK use exactly
//! what ADD used, even after the subnet file changed or went away.
//!
//! Subnet file (`subnetFile`, default `/run/skiff/subnet.env`):
//!
//! ```text
//! SKIFF_NETWORK=10.244.0.0/16   # cluster pod CIDR
//! SKIFF_SUBNET=10.244.3.0/24    # this node's pod CIDR
//! SKIFF_MTU=1450                # overlay MTU
//! SKIFF_IPMASQ=true             # the agent masquerades; the bridge must not
//! ```

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cidr::Cidr;
use crate::ipam::delegate::{exec_plugin, resolves_to_self};
use crate::spec::{code, typed_config, valid_attachments, CniError, CniResult, Command, Env};

pub const DEFAULT_SUBNET_FILE: &str = "/run/skiff/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/skiff-overlay";

#[derive(Debug, Clone, Deserialize)]
struct OverlayConf {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    name: String,
    #[serde(rename = "subnetFile", default)]
    subnet_file: Option<PathBuf>,
    #[serde(rename = "dataDir", default)]
    data_dir: Option<PathBuf>,
    /// Keys merged over the generated delegate config.
    #[serde(default)]
    delegate: Option<Map<String, Value>>,
}

/// The node's overlay facts from the subnet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetInfo {
    pub network: Cidr,
    pub subnet: Cidr,
    pub mtu: Option<u32>,
    pub ip_masq: bool,
}

/// Parses `KEY=value` lines; `#` comments and blank lines are skipped.
pub fn parse_subnet_file(text: &str) -> Result<SubnetInfo, String> {
    let mut network = None;
    let mut subnet = None;
    let mut mtu = None;
    let mut ip_masq = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {line:?} is not KEY=value"))?;
        let v = v.trim().trim_matches('"');
        match k.trim() {
            "SKIFF_NETWORK" => network = Some(v.parse::<Cidr>().map_err(|e| e.to_string())?),
            "SKIFF_SUBNET" => subnet = Some(v.parse::<Cidr>().map_err(|e| e.to_string())?),
            "SKIFF_MTU" => mtu = Some(v.parse::<u32>().map_err(|e| format!("SKIFF_MTU: {e}"))?),
            "SKIFF_IPMASQ" => ip_masq = v == "true" || v == "1",
            _ => {}
        }
    }
    let network = network.ok_or("SKIFF_NETWORK missing")?;
    let subnet = subnet.ok_or("SKIFF_SUBNET missing")?;
    if !network.contains(subnet.addr) || subnet.prefix < network.prefix {
        return Err(format!(
            "SKIFF_SUBNET {subnet} is not inside SKIFF_NETWORK {network}"
        ));
    }
    Ok(SubnetInfo {
        network: network.masked(),
        subnet: subnet.masked(),
        mtu,
        ip_masq,
    })
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The delegate config for this node.
pub fn delegate_config(
    version: &str,
    name: &str,
    info: &SubnetInfo,
    overrides: Option<&Map<String, Value>>,
) -> Value {
    let gateway = crate::cidr::offset(info.subnet.network(), 1).unwrap_or(info.subnet.addr);
    let mut d = json!({
        "cniVersion": version,
        "name": name,
        "type": "bridge",
        "bridge": "skiff0",
        "isGateway": true,
        "isDefaultGateway": true,
        "hairpinMode": true,
        "ipMasq": !info.ip_masq,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": info.subnet.to_string()}]],
            // With the gateway spelled out: CHECK of the reference bridge
            // cannot match gateway-less routes.
            "routes": [{"dst": info.network.to_string(), "gw": gateway.to_string()}]
        }
    });
    if let Some(mtu) = info.mtu {
        d["mtu"] = json!(mtu);
    }
    if let Some(o) = overrides {
        merge(&mut d, &Value::Object(o.clone()));
    }
    d
}

fn state_file(dir: &Path, env: &Env) -> Result<PathBuf, CniError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !ok(&env.container_id) || !ok(&env.ifname) {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_CONTAINERID and CNI_IFNAME must be [A-Za-z0-9_.-] for skiff-overlay",
        ));
    }
    Ok(dir.join(format!("{}-{}.json", env.container_id, env.ifname)))
}

fn io(op: &str, p: &Path, e: std::io::Error) -> CniError {
    CniError::new(code::IO_FAILURE, format!("{op} {}: {e}", p.display()))
}

/// Runs the delegate: in this process when CNI_PATH's binary of that name is
/// this one, else by executing it.
fn run_delegate(env: &Env, cmd: Command, conf: &Value) -> Result<Option<Value>, CniError> {
    let plugin = conf["type"].as_str().unwrap_or("").to_string();
    tracing::debug!(%plugin, command = cmd.as_str(), "running delegate");
    let raw = serde_json::to_vec(conf).expect("serializable");
    let out = if crate::PLUGINS.contains(&plugin.as_str()) && resolves_to_self(&plugin, &env.path) {
        let mut e = env.clone();
        e.command = cmd;
        crate::dispatch(&plugin, Ok(e), &raw)?
    } else {
        let bytes = exec_plugin(&plugin, cmd, &env.path, &raw)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                CniError::new(code::DECODE, format!("decode result of {plugin}: {e}"))
            })?)
        }
    };
    if let Some(v) = &out {
        // Make sure it is a result before handing it on.
        CniResult::from_value(v)?;
    }
    Ok(out)
}

fn read_info(path: &Path) -> Result<SubnetInfo, CniError> {
    let text = fs::read_to_string(path).map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "subnet file {} not readable (is the agent's overlay running?): {e}",
                path.display()
            ),
        )
    })?;
    parse_subnet_file(&text).map_err(|m| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("subnet file {}: {m}", path.display()),
        )
    })
}

/// Runs one command; ADD returns the delegate's result as it printed it.
pub fn run(env: &Env, conf_v: &Value) -> Result<Option<Value>, CniError> {
    let conf: OverlayConf = typed_config(conf_v)?;
    let subnet_file = conf
        .subnet_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE));
    let dir = conf
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    // Keys the runtime adds that the delegate needs as well.
    let pass = |mut d: Value| {
        for k in [
            "runtimeConfig",
            "args",
            "prevResult",
            "cni.dev/valid-attachments",
        ] {
            if let Some(v) = conf_v.get(k) {
                d[k] = v.clone();
            }
        }
        d
    };
    match env.command {
        Command::Add => {
            let info = read_info(&subnet_file)?;
            let d = delegate_config(&conf.cni_version, &conf.name, &info, conf.delegate.as_ref());
            let state = state_file(&dir, env)?;
            fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
            fs::write(&state, d.to_string()).map_err(|e| io("write", &state, e))?;
            match run_delegate(env, Command::Add, &pass(d)) {
                Ok(Some(r)) => Ok(Some(r)),
                Ok(None) => Err(CniError::new(
                    code::DELEGATE,
                    "delegate ADD printed no result",
                )),
                Err(e) => {
                    let _ = fs::remove_file(&state);
                    Err(e)
                }
            }
        }
        Command::Del => {
            let state = state_file(&dir, env)?;
            let saved = match fs::read_to_string(&state) {
                Ok(t) => t,
                // Never added, or already deleted.
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io("read", &state, e)),
            };
            let d: Value = serde_json::from_str(&saved).map_err(|e| {
                CniError::new(
                    code::DECODE,
                    format!("saved config {}: {e}", state.display()),
                )
            })?;
            run_delegate(env, Command::Del, &pass(d))?;
            match fs::remove_file(&state) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(io("remove", &state, e)),
                _ => Ok(None),
            }
        }
        Command::Check => {
            let state = state_file(&dir, env)?;
            let saved = fs::read_to_string(&state).map_err(|e| {
                CniError::new(
                    code::CHECK_MISMATCH,
                    format!("no saved config {}: {e}", state.display()),
                )
            })?;
            let d: Value = serde_json::from_str(&saved).map_err(|e| {
                CniError::new(
                    code::DECODE,
                    format!("saved config {}: {e}", state.display()),
                )
            })?;
            run_delegate(env, Command::Check, &pass(d)).map(|_| None)
        }
        Command::Status => {
            let info = read_info(&subnet_file)?;
            let d = delegate_config(&conf.cni_version, &conf.name, &info, conf.delegate.as_ref());
            run_delegate(env, Command::Status, &pass(d)).map(|_| None)
        }
        Command::Gc => {
            let keep: HashSet<(String, String)> = valid_attachments(conf_v)?
                .into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect();
            if let Ok(rd) = fs::read_dir(&dir) {
                for entry in rd.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(stem) = name.strip_suffix(".json") else {
                        continue;
                    };
                    let stale = !keep.iter().any(|(id, ifn)| stem == format!("{id}-{ifn}"));
                    if stale {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
            // The delegate collects its own leftovers (addresses, rules).
            match read_info(&subnet_file) {
                Ok(info) => {
                    let d = delegate_config(
                        &conf.cni_version,
                        &conf.name,
                        &info,
                        conf.delegate.as_ref(),
                    );
                    run_delegate(env, Command::Gc, &pass(d)).map(|_| None)
                }
                Err(_) => Ok(None),
            }
        }
        Command::Version => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# written by skiff-agent\nSKIFF_NETWORK=10.244.0.0/16\nSKIFF_SUBNET=10.244.3.1/24\nSKIFF_MTU=1450\nSKIFF_IPMASQ=true\n";

    #[test]
    fn parses_subnet_file() {
        let i = parse_subnet_file(FILE).unwrap();
        assert_eq!(i.network.to_string(), "10.244.0.0/16");
        assert_eq!(i.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(i.mtu, Some(1450));
        assert!(i.ip_masq);
    }

    #[test]
    fn rejects_bad_subnet_files() {
        assert!(parse_subnet_file("SKIFF_SUBNET=10.244.3.0/24\n").is_err());
        assert!(parse_subnet_file("SKIFF_NETWORK=10.244.0.0/16\n").is_err());
        assert!(
            parse_subnet_file("SKIFF_NETWORK=10.244.0.0/16\nSKIFF_SUBNET=10.9.0.0/24\n").is_err()
        );
        assert!(parse_subnet_file("garbage\n").is_err());
        assert!(parse_subnet_file(
            "SKIFF_NETWORK=10.244.0.0/16\nSKIFF_SUBNET=10.244.1.0/24\nSKIFF_MTU=x\n"
        )
        .is_err());
    }

    #[test]
    fn delegate_config_from_subnet_and_overrides() {
        let i = parse_subnet_file(FILE).unwrap();
        let d = delegate_config("1.0.0", "skiff", &i, None);
        assert_eq!(d["type"], "bridge");
        assert_eq!(d["mtu"], 1450);
        assert_eq!(d["ipMasq"], false, "the agent masquerades");
        assert_eq!(d["ipam"]["ranges"][0][0]["subnet"], "10.244.3.0/24");
        assert_eq!(d["ipam"]["routes"][0]["dst"], "10.244.0.0/16");
        assert_eq!(d["ipam"]["routes"][0]["gw"], "10.244.3.1");
        let over = json!({"bridge": "br9", "ipam": {"dataDir": "/x"}});
        let d = delegate_config("1.0.0", "skiff", &i, over.as_object());
        assert_eq!(d["bridge"], "br9");
        assert_eq!(d["ipam"]["dataDir"], "/x");
        assert_eq!(d["ipam"]["type"], "host-local", "nested keys merge");
    }

    #[test]
    fn missing_subnet_file_is_not_available() {
        let e = read_info(Path::new("/nonexistent/subnet.env")).unwrap_err();
        assert_eq!(e.code, code::NOT_AVAILABLE);
    }

    #[test]
    fn del_without_state_succeeds_and_ids_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let mut env = Env {
            command: Command::Del,
            container_id: "abc".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: vec![],
            path: vec![],
        };
        let conf = json!({"cniVersion": "1.0.0", "name": "skiff", "type": "skiff-overlay", "dataDir": d.path()});
        assert_eq!(run(&env, &conf).unwrap(), None);
        env.container_id = "../../etc".into();
        assert_eq!(run(&env, &conf).unwrap_err().code, code::INVALID_ENV);
    }
}
