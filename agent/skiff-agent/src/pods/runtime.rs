//! The agent's side of skiff-shim: containers are created and started by exec'ing the shim
//! (which does the cloning, never this multi-threaded process); state, signals and exec go
//! through the shim library and the container's control socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_shim::container::{self, Options};
use skiff_shim::state::Status;
use skiff_shim::supervisor::{self, ExecResult, Request};

use super::status::{Current, Terminated};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("skiff-shim {args}: {message}")]
    Shim { args: String, message: String },
    #[error("running {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container {id}: {message}")]
    Container { id: String, message: String },
}

#[derive(Clone, Debug)]
pub struct Runtime {
    pub shim: PathBuf,
    /// The shim's state directory (`--root`).
    pub root: PathBuf,
    pub cgroup_root: Option<PathBuf>,
}

pub fn container_id(pod_uid: &str, name: &str) -> String {
    format!("{pod_uid}-{name}")
}

impl Runtime {
    fn options(&self) -> Options {
        Options {
            root: self.root.clone(),
            cgroup_root: self.cgroup_root.clone(),
            ..Default::default()
        }
    }

    fn run_shim(&self, args: &[&str]) -> Result<String, RuntimeError> {
        let mut cmd = Command::new(&self.shim);
        cmd.arg("--root").arg(&self.root);
        if let Some(cg) = &self.cgroup_root {
            cmd.arg("--cgroup-root").arg(cg);
        }
        let out = cmd
            .args(args)
            .output()
            .map_err(|source| RuntimeError::Spawn {
                path: self.shim.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(RuntimeError::Shim {
                args: args.join(" "),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates and starts the container of `bundle`, its output going to `log`.
    /// `stdin`: the container's `stdin` and `stdinOnce`, an open pipe for attach clients.
    pub fn create_and_start(
        &self,
        id: &str,
        bundle: &Path,
        log: &Path,
        stdin: (bool, bool),
    ) -> Result<(), RuntimeError> {
        if self.exists(id) {
            self.remove(id)?;
        }
        let (bundle, log) = (bundle.display().to_string(), log.display().to_string());
        let mut args = vec!["create", "--bundle", &bundle, "--log-path", &log];
        if stdin.0 {
            args.push("--stdin");
            if stdin.1 {
                args.push("--stdin-once");
            }
        }
        args.push(id);
        self.run_shim(&args)?;
        self.run_shim(&["start", id]).map(|_| ())
    }

    pub fn exists(&self, id: &str) -> bool {
        container::state(&self.options(), id).is_ok()
    }

    /// What the container is doing now; `Absent` when the shim does not know it.
    pub fn current(&self, id: &str) -> Current {
        let Ok(report) = container::state(&self.options(), id) else {
            return Current::Absent;
        };
        match report.status {
            Status::Running => Current::Running {
                started_at: report.started.unwrap_or(report.created),
            },
            Status::Stopped => {
                let exit_code = report
                    .exit_code
                    .or(report.signal.map(|s| 128 + s))
                    .unwrap_or(128);
                let reason = if report.oom_killed {
                    "OOMKilled"
                } else if exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                };
                Current::Exited(Terminated {
                    exit_code,
                    signal: report.signal,
                    reason: reason.into(),
                    started_at: report.started.unwrap_or_else(|| report.created.clone()),
                    finished_at: report.finished.unwrap_or_default(),
                    container_id: format!("skiff://{id}"),
                })
            }
            // Created but not started: the start failed half-way; treat it as gone.
            Status::Creating | Status::Created => Current::Absent,
        }
    }

    /// Signals the container's init, or with `all` every process in it.
    pub fn signal(&self, id: &str, signal: nix::sys::signal::Signal, all: bool) {
        if let Err(e) = container::kill_container(&self.options(), id, signal, all) {
            tracing::debug!(id, %signal, error = %e, "signalling a container failed");
        }
    }

    /// Removes a stopped (or, forcibly, a running) container and its shim state.
    pub fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.run_shim(&["delete", "--force", id]).map(|_| ())
    }

    /// Runs a command inside the container and captures its output.
    pub fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let req = Request::Exec {
            args: args.to_vec(),
            env: None,
            cwd: None,
            timeout_ms: Some(timeout.as_millis() as u64),
            stream: false,
            tty: false,
        };
        let response = supervisor::request(&self.root, id, &req, timeout + Duration::from_secs(5))
            .map_err(|e| RuntimeError::Container {
                id: id.into(),
                message: e.to_string(),
            })?;
        if !response.ok {
            return Err(RuntimeError::Container {
                id: id.into(),
                message: response.error.unwrap_or_default(),
            });
        }
        response.exec.ok_or_else(|| RuntimeError::Container {
            id: id.into(),
            message: "the shim sent no exec result".into(),
        })
    }
}
