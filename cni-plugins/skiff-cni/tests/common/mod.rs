//! The privileged tests' harness: named network namespaces removed on drop,
//! a "lab" (host namespace, container namespaces, data dir) that runs a
//! plugin set the way a runtime would, and helpers to compare results.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

pub const REFERENCE_DIR: &str = "/usr/lib/cni";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            // Written to the stderr handle, not eprintln!, so that the test
            // harness does not swallow it.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped: needs root");
            return;
        }
    };
}

pub fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("exec {cmd}: {e}"))
}

pub fn must(cmd: &str, args: &[&str]) -> String {
    let o = sh(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
    pub deleted: bool,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("skiff-test-{tag}-{:08x}", rand::random::<u32>());
        must("ip", &["netns", "add", &name]);
        Netns {
            name,
            deleted: false,
        }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    pub fn delete(&mut self) {
        if !self.deleted {
            let _ = sh("ip", &["netns", "del", &self.name]);
            self.deleted = true;
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Which plugin set runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Skiff,
    /// Skiff's bridge delegating to the reference host-local binary: the
    /// exec path of IPAM delegation.
    Mixed,
    /// Skiff's skiff-overlay delegating to the reference bridge and host-local.
    OverlayOnReference,
    Reference,
}

pub const IMPLS: [Impl; 2] = [Impl::Skiff, Impl::Reference];
pub const ALL: [Impl; 3] = [Impl::Skiff, Impl::Mixed, Impl::Reference];

/// A directory with the skiff-cni binary installed under each plugin name.
/// A bin dir for `imp`: each plugin name links to skiff-cni or to the
/// reference binary of that name.
pub fn skiff_bin_dir(imp: Impl) -> PathBuf {
    let tag = format!("{imp:?}").to_lowercase();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("skiff-cni-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        "bridge",
        "host-local",
        "loopback",
        "portmap",
        "skiff-overlay",
    ] {
        let link = dir.join(name);
        let reference = match imp {
            Impl::Mixed => name == "host-local",
            Impl::OverlayOnReference => name != "skiff-overlay",
            _ => false,
        };
        let target = if reference {
            PathBuf::from(REFERENCE_DIR).join(name)
        } else {
            PathBuf::from(env!("CARGO_BIN_EXE_skiff-cni"))
        };
        if !link.exists() {
            // Concurrent tests may race to create the same link.
            let _ = std::os::unix::fs::symlink(target, &link);
        }
    }
    dir
}

pub fn bin_dir(i: Impl) -> PathBuf {
    match i {
        Impl::Skiff | Impl::Mixed | Impl::OverlayOnReference => skiff_bin_dir(i),
        Impl::Reference => {
            let d = PathBuf::from(REFERENCE_DIR);
            assert!(
                d.join("bridge").is_file(),
                "reference plugins missing in {REFERENCE_DIR}: install Debian's containernetworking-plugins"
            );
            d
        }
    }
}

/// One test's world: a host namespace, container namespaces, a data dir.
pub struct Lab {
    pub imp: Impl,
    pub host: Netns,
    pub data: tempfile::TempDir,
    pub containers: Vec<Netns>,
}

/// What one plugin call returned.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub json: Value,
    pub raw: String,
}

impl Reply {
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected failure, got {}", self.raw);
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.raw))
    }
}

impl Lab {
    pub fn new(imp: Impl) -> Lab {
        Lab {
            imp,
            host: Netns::new("h"),
            data: tempfile::tempdir().unwrap(),
            containers: Vec::new(),
        }
    }

    pub fn container(&mut self) -> usize {
        self.containers.push(Netns::new("c"));
        self.containers.len() - 1
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Runs `plugin` inside the host namespace with CNI_* from `env`.
    pub fn call(&self, plugin: &str, env: &[(&str, &str)], stdin: &str) -> Reply {
        let dir = bin_dir(self.imp);
        let bin = dir.join(plugin);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.name])
            .arg(&bin)
            .env("CNI_PATH", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("CNI_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = if raw.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap_or_else(|e| {
                panic!(
                    "{:?} {plugin} printed non-JSON ({e}): {raw:?} stderr {}",
                    self.imp,
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        };
        // A failure that printed nothing on stdout is a crash: keep what it said instead.
        let raw = if !out.status.success() && raw.trim().is_empty() {
            format!(
                "(no stdout; {}; stderr: {})",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        } else {
            raw
        };
        Reply {
            ok: out.status.success(),
            json,
            raw,
        }
    }

    pub fn env_for(&self, cmd: &'static str, c: usize, id: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", self.containers[c].path()),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
    }

    pub fn cni(&self, plugin: &str, cmd: &'static str, c: usize, id: &str, conf: &Value) -> Reply {
        let env = self.env_for(cmd, c, id);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.call(plugin, &env, &conf.to_string())
    }

    /// IP address files currently in the host-local store of `network`.
    pub fn allocations(&self, network: &str) -> BTreeSet<String> {
        let dir = self.data_dir().join(network);
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// nat rules in the host namespace that are not the built-in policies.
    pub fn nat_rules(&self) -> Vec<String> {
        let o = self.host.exec(&["iptables-save", "-t", "nat"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    }

    pub fn host_veths(&self) -> usize {
        let o = self
            .host
            .exec(&["ip", "-o", "link", "show", "type", "veth"]);
        String::from_utf8_lossy(&o.stdout).lines().count()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.containers {
            c.delete();
        }
        self.host.delete();
    }
}

pub fn bridge_conf(data: &Path, version: &str, subnet: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "skiffnet",
        "type": "bridge",
        "bridge": "skiff0",
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "mtu": 1400,
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
        "ipam": {
            "type": "host-local",
            "dataDir": data,
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "10.96.0.0/12"}]
        }
    })
}

/// Replaces values that differ run to run (MACs, veth names, netns paths).
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let x = match (k.as_str(), x) {
                        ("mac", Value::String(_)) => json!("<mac>"),
                        ("sandbox", Value::String(_)) => json!("<sandbox>"),
                        ("name", Value::String(s)) if s.starts_with("veth") => json!("<veth>"),
                        ("routes", Value::Array(a)) => {
                            let mut a: Vec<Value> = a.iter().map(normalize).collect();
                            a.sort_by_key(|r| r.to_string());
                            return (k.clone(), Value::Array(a));
                        }
                        _ => normalize(x),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// `ip` output from a namespace with volatile parts removed.
pub fn net_state(ns: &Netns) -> String {
    let addrs = ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    let routes = ns.exec(&["ip", "-4", "route"]);
    let a: Vec<String> = String::from_utf8_lossy(&addrs.stdout)
        .lines()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(5)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    format!(
        "{}\n{}",
        a.join("\n"),
        String::from_utf8_lossy(&routes.stdout)
    )
}

/// A process started in a namespace, killed on drop.
pub struct Bg(pub std::process::Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET /index.html from `ip:port` inside `ns` (bash's /dev/tcp: busybox's
/// static wget crashes on this host); returns the body.
pub fn http_get(ns: &Netns, ip: &str, port: u16) -> Option<String> {
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{port} && printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let o = ns.exec(&["timeout", "3", "bash", "-c", &script]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    if o.status.success() {
        body
    } else {
        None
    }
}

pub fn write_subnet_file(path: &Path, subnet: &str) {
    std::fs::write(
        path,
        format!("SKIFF_NETWORK=10.245.0.0/16\nSKIFF_SUBNET={subnet}\nSKIFF_MTU=1400\nSKIFF_IPMASQ=true\n"),
    )
    .unwrap();
}
