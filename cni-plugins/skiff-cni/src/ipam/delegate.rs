//! Running another plugin binary (the IPAM plugin named in `ipam.type`) the
//! way a runtime would: found in CNI_PATH, same environment, config on stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};

use serde_json::Value;

use crate::spec::{code, CniError, CniResult, Command, Env};

/// The IPAM operations a main plugin needs; a trait so the bridge logic can be
/// tested with a fake.
pub trait Ipam {
    fn add(&mut self) -> Result<CniResult, CniError>;
    fn del(&mut self) -> Result<(), CniError>;
    fn check(&mut self) -> Result<(), CniError>;
    fn gc(&mut self) -> Result<(), CniError>;
    fn status(&mut self) -> Result<(), CniError>;
}

/// Executes the plugin binary `plugin` found in the CNI_PATH directories.
pub struct ExecIpam<'a> {
    pub plugin: String,
    pub env: &'a Env,
    pub stdin: &'a [u8],
}

/// Finds `plugin` in the given directories.
pub fn find_in_path(plugin: &str, dirs: &[String]) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid plugin type {plugin:?}"),
        ));
    }
    dirs.iter()
        .map(|d| Path::new(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::DELEGATE,
                format!("failed to find plugin {plugin:?} in path {dirs:?}"),
            )
        })
}

impl ExecIpam<'_> {
    fn exec(&self, cmd: Command) -> Result<Vec<u8>, CniError> {
        exec_plugin(&self.plugin, cmd, &self.env.path, self.stdin)
    }
}

/// Executes `plugin` from `dirs` with this process's environment, CNI_COMMAND
/// set to `cmd` and `stdin` as its config; its stdout on success, its CNI
/// error otherwise.
pub fn exec_plugin(
    plugin: &str,
    cmd: Command,
    dirs: &[String],
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let bin = find_in_path(plugin, dirs)?;
    let mut child = Proc::new(&bin)
        .env("CNI_COMMAND", cmd.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(code::DELEGATE, format!("exec {}: {e}", bin.display())))?;
    let mut input = child.stdin.take().expect("piped");
    // A plugin that exits without reading its stdin is not an error here.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::DELEGATE, format!("wait {}: {e}", bin.display())))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    match serde_json::from_slice::<CniError>(&out.stdout) {
        Ok(e) => Err(e),
        Err(_) => Err(CniError::new(
            code::DELEGATE,
            format!(
                "{} {} failed ({}) without a CNI error: {}",
                bin.display(),
                cmd.as_str(),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        )),
    }
}

impl Ipam for ExecIpam<'_> {
    fn add(&mut self) -> Result<CniResult, CniError> {
        let out = self.exec(Command::Add)?;
        let v: Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("decode result of {}: {e}", self.plugin),
            )
        })?;
        CniResult::from_value(&v)
    }
    fn del(&mut self) -> Result<(), CniError> {
        self.exec(Command::Del).map(drop)
    }
    fn check(&mut self) -> Result<(), CniError> {
        self.exec(Command::Check).map(drop)
    }
    fn gc(&mut self) -> Result<(), CniError> {
        self.exec(Command::Gc).map(drop)
    }
    fn status(&mut self) -> Result<(), CniError> {
        self.exec(Command::Status).map(drop)
    }
}

/// host-local run inside this process. Used only when the `host-local` that
/// CNI_PATH resolves to is this very binary, so the behaviour is that of
/// executing it, without the cost of a second process.
pub struct InProcessHostLocal<'a> {
    pub env: &'a Env,
    pub conf: &'a Value,
}

impl InProcessHostLocal<'_> {
    fn run(&self, cmd: Command) -> Result<Option<CniResult>, CniError> {
        let mut env = self.env.clone();
        env.command = cmd;
        crate::ipam::host_local::run(&env, self.conf)
    }
}

impl Ipam for InProcessHostLocal<'_> {
    fn add(&mut self) -> Result<CniResult, CniError> {
        self.run(Command::Add)?
            .ok_or_else(|| CniError::new(code::INTERNAL, "host-local ADD returned no result"))
    }
    fn del(&mut self) -> Result<(), CniError> {
        self.run(Command::Del).map(drop)
    }
    fn check(&mut self) -> Result<(), CniError> {
        self.run(Command::Check).map(drop)
    }
    fn gc(&mut self) -> Result<(), CniError> {
        self.run(Command::Gc).map(drop)
    }
    fn status(&mut self) -> Result<(), CniError> {
        self.run(Command::Status).map(drop)
    }
}

/// True when `plugin` in CNI_PATH is this executable (installed under another name).
pub fn resolves_to_self(plugin: &str, dirs: &[String]) -> bool {
    let Ok(found) = find_in_path(plugin, dirs) else {
        return false;
    };
    let (Ok(me), Ok(it)) = (
        std::env::current_exe().and_then(std::fs::canonicalize),
        std::fs::canonicalize(found),
    ) else {
        return false;
    };
    me == it
}

/// The IPAM for a main plugin: in-process host-local when CNI_PATH's
/// host-local is this binary, otherwise the plugin binary per the spec.
pub fn for_plugin<'a>(
    plugin: &str,
    env: &'a Env,
    conf: &'a Value,
    raw: &'a [u8],
) -> Box<dyn Ipam + 'a> {
    if plugin == "host-local" && resolves_to_self(plugin, &env.path) {
        Box::new(InProcessHostLocal { env, conf })
    } else {
        Box::new(ExecIpam {
            plugin: plugin.to_string(),
            env,
            stdin: raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(path: Vec<String>) -> Env {
        Env {
            command: Command::Add,
            container_id: "c".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: vec![],
            path,
        }
    }

    #[test]
    fn missing_plugin_is_a_delegate_error() {
        let d = tempfile::tempdir().unwrap();
        let e = env(vec![d.path().to_string_lossy().into_owned()]);
        let mut ipam = ExecIpam {
            plugin: "host-local".into(),
            env: &e,
            stdin: b"{}",
        };
        assert_eq!(ipam.add().unwrap_err().code, code::DELEGATE);
        assert_eq!(
            find_in_path("../x", &e.path).unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    /// Runs `call` again while the exec fails with ETXTBSY: a process forked by another test
    /// thread can hold the fresh script's write descriptor until it execs itself.
    fn unless_text_busy<T>(mut call: impl FnMut() -> Result<T, CniError>) -> Result<T, CniError> {
        for _ in 0..50 {
            match call() {
                Err(e) if e.msg.contains("Text file busy") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other,
            }
        }
        call()
    }

    #[test]
    fn delegate_error_object_is_passed_through() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fake-ipam");
        std::fs::write(
            &p,
            "#!/bin/sh\ncat >/dev/null\necho '{\"code\":11,\"msg\":\"busy\"}'\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = env(vec![d.path().to_string_lossy().into_owned()]);
        let mut ipam = ExecIpam {
            plugin: "fake-ipam".into(),
            env: &e,
            stdin: b"{}",
        };
        let err = unless_text_busy(|| ipam.add()).unwrap_err();
        assert_eq!((err.code, err.msg.as_str()), (11, "busy"));
        assert!(!resolves_to_self("fake-ipam", &e.path));
    }

    #[test]
    fn delegate_result_is_parsed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fake-ipam");
        std::fs::write(
            &p,
            "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"0.3.1\",\"ips\":[{\"version\":\"4\",\"address\":\"10.1.0.2/24\",\"gateway\":\"10.1.0.1\"}]}'\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = env(vec![d.path().to_string_lossy().into_owned()]);
        let mut ipam = ExecIpam {
            plugin: "fake-ipam".into(),
            env: &e,
            stdin: b"{}",
        };
        let r = unless_text_busy(|| ipam.add()).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.2/24");
        unless_text_busy(|| ipam.del()).unwrap();
    }
}
