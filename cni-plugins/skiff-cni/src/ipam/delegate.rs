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
        let bin = find_in_path(&self.plugin, &self.env.path)?;
        let mut child = Proc::new(&bin)
            .env("CNI_COMMAND", cmd.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                CniError::new(code::DELEGATE, format!("exec {}: {e}", bin.display()))
            })?;
        let mut stdin = child.stdin.take().expect("piped");
        // A plugin that exits without reading its stdin is not an error here.
        let _ = stdin.write_all(self.stdin);
        drop(stdin);
        let out = child.wait_with_output().map_err(|e| {
            CniError::new(code::DELEGATE, format!("wait {}: {e}", bin.display()))
        })?;
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
}

impl Ipam for ExecIpam<'_> {
    fn add(&mut self) -> Result<CniResult, CniError> {
        let out = self.exec(Command::Add)?;
        let v: Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::new(code::DECODE, format!("decode result of {}: {e}", self.plugin))
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
