//! The runtime side of CNI: load the network configuration list and run its plugins for a
//! pod sandbox — ADD in order passing each result on as `prevResult`, DEL in reverse, CHECK —
//! with results cached for DEL and CHECK and a time limit on every plugin. Any plugin that
//! follows the CNI spec works, not only Skiff's.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("no CNI network configuration in {0}")]
    NoConfig(PathBuf),
    #[error("CNI plugin {plugin:?} not found in {search:?}")]
    PluginNotFound {
        plugin: String,
        search: Vec<PathBuf>,
    },
    #[error("CNI plugin {plugin} ({command}) failed with code {code}: {message}{}", details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Plugin {
        plugin: String,
        command: String,
        code: i64,
        message: String,
        details: Option<String>,
    },
    #[error("CNI plugin {plugin} ({command}) did not finish within {timeout:?}; it was killed")]
    Timeout {
        plugin: String,
        command: String,
        timeout: Duration,
    },
    #[error(
        "CNI plugin {plugin} ({command}) exited with {status} and printed no CNI error: {stderr}"
    )]
    Crashed {
        plugin: String,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("CNI plugin {plugin} ({command}) printed invalid JSON: {message}")]
    BadOutput {
        plugin: String,
        command: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A loaded `.conflist` (or a single `.conf`, wrapped).
#[derive(Clone, Debug)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
    pub source: PathBuf,
}

/// The pod a sandbox belongs to, for `CNI_ARGS` and the cache key.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// Capability arguments (e.g. `portMappings`), passed to plugins that declare them.
    pub capabilities: BTreeMap<String, Value>,
}

pub struct Runtime {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub timeout: Duration,
}

fn config_error(path: &Path, message: impl Into<String>) -> CniError {
    CniError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Parses a network configuration: a list (`plugins`) or a single plugin config.
pub fn parse_network(path: &Path, text: &str) -> Result<NetworkList, CniError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| config_error(path, format!("invalid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| config_error(path, "not a JSON object"))?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| config_error(path, "missing \"name\""))?;
    let version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| config_error(path, "missing \"cniVersion\""))?;
    let plugins: Vec<Map<String, Value>> = match obj.get("plugins") {
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let p = p
                    .as_object()
                    .ok_or_else(|| config_error(path, format!("plugins[{i}] is not an object")))?;
                if p.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(config_error(path, format!("plugins[{i}] has no \"type\"")));
                }
                out.push(p.clone());
            }
            out
        }
        Some(_) => return Err(config_error(path, "\"plugins\" is not a list")),
        None if obj.get("type").and_then(Value::as_str).is_some() => vec![obj.clone()],
        None => return Err(config_error(path, "neither \"plugins\" nor \"type\"")),
    };
    if plugins.is_empty() {
        return Err(config_error(path, "\"plugins\" is empty"));
    }
    Ok(NetworkList {
        name: name.to_string(),
        cni_version: version.to_string(),
        plugins,
        source: path.to_path_buf(),
    })
}

impl Runtime {
    /// The first configuration in the directory, in file-name order, like kubelet and
    /// containerd (`.conflist`, `.conf`, `.json`).
    pub fn load(&self) -> Result<NetworkList, CniError> {
        let entries = std::fs::read_dir(&self.conf_dir).map_err(|source| CniError::Io {
            path: self.conf_dir.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let first = files
            .first()
            .ok_or_else(|| CniError::NoConfig(self.conf_dir.clone()))?;
        let text = std::fs::read_to_string(first).map_err(|source| CniError::Io {
            path: first.clone(),
            source,
        })?;
        parse_network(first, &text)
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if plugin.contains('/') {
            return Err(CniError::PluginNotFound {
                plugin: plugin.into(),
                search: self.bin_dirs.clone(),
            });
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.into(),
                search: self.bin_dirs.clone(),
            })
    }

    fn cache_path(&self, net: &NetworkList, a: &Attachment) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{}-{}-{}", net.name, a.container_id, a.ifname))
    }

    fn stdin_for(
        &self,
        net: &NetworkList,
        plugin: &Map<String, Value>,
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf.insert("name".into(), json!(net.name));
        conf.insert("cniVersion".into(), json!(net.cni_version));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        if let Some(Value::Object(caps)) = plugin.get("capabilities") {
            let mut runtime = Map::new();
            for (cap, enabled) in caps {
                if enabled.as_bool() == Some(true) {
                    if let Some(v) = a.capabilities.get(cap) {
                        runtime.insert(cap.clone(), v.clone());
                    }
                }
            }
            if !runtime.is_empty() {
                conf.insert("runtimeConfig".into(), Value::Object(runtime));
            }
        }
        Value::Object(conf)
    }

    /// Runs one plugin binary; `Ok(None)` when it printed nothing (DEL, CHECK).
    fn exec(
        &self,
        command: &str,
        plugin: &Map<String, Value>,
        stdin: &Value,
        a: &Attachment,
    ) -> Result<Option<Value>, CniError> {
        let kind = plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let binary = self.find(&kind)?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            a.pod_namespace, a.pod_name, a.container_id, a.pod_uid
        );
        let path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let mut child = Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CniError::Io {
                path: binary.clone(),
                source,
            })?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin may exit before reading its input; its output says why.
            let _ = input.write_all(stdin.to_string().as_bytes());
        }
        let started = Instant::now();
        loop {
            match child.try_wait().map_err(|source| CniError::Io {
                path: binary.clone(),
                source,
            })? {
                Some(_) => break,
                None if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CniError::Timeout {
                        plugin: kind,
                        command: command.into(),
                        timeout: self.timeout,
                    });
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let out = child.wait_with_output().map_err(|source| CniError::Io {
            path: binary.clone(),
            source,
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: Option<Value> = if stdout.trim().is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(&stdout).map_err(|e| CniError::BadOutput {
                    plugin: kind.clone(),
                    command: command.into(),
                    message: e.to_string(),
                })?,
            )
        };
        if !out.status.success() {
            return Err(
                match parsed
                    .as_ref()
                    .and_then(|v| v.get("code").and_then(Value::as_i64).map(|c| (c, v)))
                {
                    Some((code, v)) => CniError::Plugin {
                        plugin: kind,
                        command: command.into(),
                        code,
                        message: v
                            .get("msg")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        details: v.get("details").and_then(Value::as_str).map(str::to_string),
                    },
                    None => CniError::Crashed {
                        plugin: kind,
                        command: command.into(),
                        status: out.status.to_string(),
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    },
                },
            );
        }
        Ok(parsed)
    }

    /// ADD through the whole chain; on failure, what was added is deleted again.
    pub fn add(&self, net: &NetworkList, a: &Attachment) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for (i, plugin) in net.plugins.iter().enumerate() {
            let stdin = self.stdin_for(net, plugin, a, prev.as_ref());
            match self.exec("ADD", plugin, &stdin, a) {
                Ok(result) => prev = result.or(prev),
                Err(e) => {
                    for done in net.plugins[..=i].iter().rev() {
                        let stdin = self.stdin_for(net, done, a, prev.as_ref());
                        let _ = self.exec("DEL", done, &stdin, a);
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": net.cni_version}));
        let cache = self.cache_path(net, a);
        if let Some(dir) = cache.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CniError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let record = json!({"kind": "cniCacheV1", "containerId": a.container_id, "ifName": a.ifname, "networkName": net.name, "result": result});
        std::fs::write(&cache, record.to_string()).map_err(|source| CniError::Io {
            path: cache.clone(),
            source,
        })?;
        Ok(result)
    }

    fn cached(&self, net: &NetworkList, a: &Attachment) -> Option<Value> {
        let text = std::fs::read_to_string(self.cache_path(net, a)).ok()?;
        serde_json::from_str::<Value>(&text)
            .ok()?
            .get("result")
            .cloned()
    }

    /// DEL in reverse order, with the cached result; keeps going past failures and reports the
    /// first one, so that as much as possible is released.
    pub fn del(&self, net: &NetworkList, a: &Attachment) -> Result<(), CniError> {
        let prev = self.cached(net, a);
        let mut first_error = None;
        for plugin in net.plugins.iter().rev() {
            let stdin = self.stdin_for(net, plugin, a, prev.as_ref());
            if let Err(e) = self.exec("DEL", plugin, &stdin, a) {
                tracing::warn!(error = %e, "CNI DEL failed");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                let _ = std::fs::remove_file(self.cache_path(net, a));
                Ok(())
            }
        }
    }

    pub fn check(&self, net: &NetworkList, a: &Attachment) -> Result<(), CniError> {
        let prev = self.cached(net, a);
        for plugin in &net.plugins {
            let stdin = self.stdin_for(net, plugin, a, prev.as_ref());
            self.exec("CHECK", plugin, &stdin, a)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn attachment() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            netns: "/var/run/netns/none".into(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: "u1".into(),
            capabilities: BTreeMap::from([(
                "portMappings".to_string(),
                json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
            )]),
        }
    }

    fn runtime(dir: &Path) -> Runtime {
        Runtime {
            conf_dir: dir.join("net.d"),
            bin_dirs: vec![dir.join("bin")],
            cache_dir: dir.join("cache"),
            timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn config_parsing_names_the_problem() {
        let p = Path::new("/x/10.conflist");
        assert!(parse_network(p, "{")
            .unwrap_err()
            .to_string()
            .contains("invalid JSON"));
        assert!(parse_network(p, r#"{"cniVersion":"1.0.0","plugins":[]}"#)
            .unwrap_err()
            .to_string()
            .contains("\"name\""));
        assert!(
            parse_network(p, r#"{"name":"n","cniVersion":"1.0.0","plugins":[{}]}"#)
                .unwrap_err()
                .to_string()
                .contains("plugins[0] has no \"type\"")
        );
        let single =
            parse_network(p, r#"{"name":"n","cniVersion":"0.4.0","type":"bridge"}"#).unwrap();
        assert_eq!(single.plugins.len(), 1);
    }

    #[test]
    fn chain_passes_prev_result_env_and_capabilities_then_del_reverses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        let log = dir.path().join("log");
        // Each fake plugin records its command, env and stdin, and prints a result.
        for name in ["first", "second"] {
            script(
                &dir.path().join("bin"),
                name,
                &format!(
                    "input=$(cat)\necho \"{name} $CNI_COMMAND $CNI_IFNAME $CNI_ARGS $input\" >> {log}\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.244.0.5/24\"}}],\"from\":\"{name}\"}}'; fi",
                    log = log.display()
                ),
            );
        }
        std::fs::write(
            dir.path().join("net.d/10-test.conflist"),
            r#"{"name":"test","cniVersion":"1.0.0","plugins":[{"type":"first"},{"type":"second","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("net.d/20-ignored.conflist"), "{").unwrap();
        let rt = runtime(dir.path());
        let net = rt.load().unwrap();
        let a = attachment();
        let result = rt.add(&net, &a).unwrap();
        assert_eq!(result["from"], "second");
        rt.check(&net, &a).unwrap();
        rt.del(&net, &a).unwrap();
        let lines: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let order: Vec<String> = lines
            .iter()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            order,
            [
                "first ADD",
                "second ADD",
                "first CHECK",
                "second CHECK",
                "second DEL",
                "first DEL"
            ]
        );
        assert!(lines[0].contains("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u1"));
        assert!(
            !lines[0].contains("prevResult"),
            "the first plugin has no previous result"
        );
        assert!(lines[1].contains("\"prevResult\"") && lines[1].contains("\"from\":\"first\""));
        assert!(lines[1].contains("\"runtimeConfig\":{\"portMappings\""));
        assert!(
            !lines[0].contains("runtimeConfig"),
            "only plugins that declare a capability get it"
        );
        assert!(
            lines[4].contains("\"from\":\"second\""),
            "DEL gets the cached final result"
        );
        assert!(
            !rt.cache_path(&net, &a).exists(),
            "a successful DEL clears the cache"
        );
    }

    #[test]
    fn plugin_errors_timeouts_and_crashes_are_reported_and_add_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        let undone = dir.path().join("undone");
        script(&dir.path().join("bin"), "ok", &format!("cat >/dev/null\n[ \"$CNI_COMMAND\" = DEL ] && touch {}\necho '{{\"cniVersion\":\"1.0.0\"}}'", undone.display()));
        script(&dir.path().join("bin"), "refuses", "cat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"invalid config\",\"details\":\"no bridge\"}'\nexit 1");
        script(&dir.path().join("bin"), "hangs", "sleep 30");
        script(&dir.path().join("bin"), "crashes", "echo boom >&2\nexit 2");
        let rt = runtime(dir.path());
        let net = |second: &str| {
            parse_network(Path::new("x"), &format!(r#"{{"name":"n","cniVersion":"1.0.0","plugins":[{{"type":"ok"}},{{"type":"{second}"}}]}}"#)).unwrap()
        };
        match rt.add(&net("refuses"), &attachment()) {
            Err(CniError::Plugin {
                code: 7,
                message,
                details,
                ..
            }) => {
                assert_eq!(message, "invalid config");
                assert_eq!(details.as_deref(), Some("no bridge"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            undone.exists(),
            "the plugins that had run were deleted again"
        );
        assert!(matches!(
            rt.add(&net("hangs"), &attachment()),
            Err(CniError::Timeout { .. })
        ));
        match rt.add(&net("crashes"), &attachment()) {
            Err(CniError::Crashed { stderr, .. }) => assert_eq!(stderr, "boom"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            rt.add(&net("missing"), &attachment()),
            Err(CniError::PluginNotFound { .. })
        ));
        assert!(matches!(
            runtime(dir.path()).load(),
            Err(CniError::NoConfig(_))
        ));
    }
}
