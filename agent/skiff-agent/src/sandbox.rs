//! Pod sandboxes: the network, IPC and UTS namespaces a pod's containers share, held open
//! for the pod's lifetime by a tiny "pause" process (`skiff-agent pause`, a separate
//! single-threaded process: the agent itself never forks). The pause process starts its own
//! session, so it outlives an agent restart; its pid and start time are recorded so that a
//! restarted agent finds it again and never mistakes a reused pid for it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pause process for pod {pod_uid} did not come up: {message}")]
    Start { pod_uid: String, message: String },
    #[error("sandbox state {path} is unreadable: {message}")]
    State { path: PathBuf, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub pod_uid: String,
    pub pid: i32,
    /// `/proc/<pid>/stat` field 22: tells a live pause process from a reused pid.
    pub start_time: u64,
}

impl Sandbox {
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }
    pub fn ipcns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/ipc", self.pid))
    }
    pub fn utsns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/uts", self.pid))
    }

    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn state_path(root: &Path, pod_uid: &str) -> PathBuf {
    root.join("sandboxes").join(format!("{pod_uid}.json"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Starts a pause process in new net/ipc/uts namespaces with the pod's hostname.
pub fn start(
    root: &Path,
    agent_binary: &Path,
    pod_uid: &str,
    hostname: &str,
) -> Result<Sandbox, SandboxError> {
    let mut child = Command::new(agent_binary)
        .args(["pause", hostname])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(agent_binary))?;
    // The pause process writes one byte once its namespaces exist.
    let mut ready = [0u8; 1];
    let mut stdout = child.stdout.take().expect("piped stdout");
    if stdout.read_exact(&mut ready).is_err() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = child.kill();
        let _ = child.wait();
        return Err(SandboxError::Start {
            pod_uid: pod_uid.into(),
            message: err.trim().to_string(),
        });
    }
    let pid = child.id() as i32;
    let start_time = process_start_time(pid).ok_or_else(|| SandboxError::Start {
        pod_uid: pod_uid.into(),
        message: "exited right after starting".into(),
    })?;
    let sandbox = Sandbox {
        pod_uid: pod_uid.into(),
        pid,
        start_time,
    };
    let path = state_path(root, pod_uid);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(
        &path,
        json!({"pid": pid, "startTime": start_time}).to_string(),
    )
    .map_err(io(&path))?;
    // The pause process is reaped by whoever inherits it once we drop the handle; it lives on.
    std::mem::forget(child);
    Ok(sandbox)
}

/// The sandbox recorded for a pod, if its pause process still runs.
pub fn find(root: &Path, pod_uid: &str) -> Result<Option<Sandbox>, SandboxError> {
    let path = state_path(root, pod_uid);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SandboxError::Io { path, source: e }),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| SandboxError::State {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let sandbox = Sandbox {
        pod_uid: pod_uid.into(),
        pid: v["pid"].as_i64().unwrap_or(0) as i32,
        start_time: v["startTime"].as_u64().unwrap_or(0),
    };
    Ok(sandbox.is_alive().then_some(sandbox))
}

/// Every pod uid with a recorded sandbox (alive or not), for cleanup after a restart.
pub fn recorded(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("sandboxes"))
        .map(|d| {
            d.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Stops the pause process (which releases the namespaces once no container holds them)
/// and forgets the sandbox. Safe to call twice.
pub fn stop(root: &Path, pod_uid: &str) -> Result<(), SandboxError> {
    if let Some(sandbox) = find(root, pod_uid)? {
        let pid = nix::unistd::Pid::from_raw(sandbox.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        for _ in 0..100 {
            if !sandbox.is_alive() {
                break;
            }
            // Reap it if this agent started it; after an agent restart it belongs to init,
            // which reaps it (then waitpid says ECHILD and /proc shows it gone).
            let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let path = state_path(root, pod_uid);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SandboxError::Io { path, source: e }),
    }
}

/// The body of `skiff-agent pause HOSTNAME`: run in a fresh, single-threaded process.
pub fn pause_main(hostname: &str) -> ! {
    use nix::sched::{unshare, CloneFlags};
    use std::io::Write;
    let fail = |what: &str, e: nix::Error| -> ! {
        eprintln!("pause: {what}: {e}");
        std::process::exit(1)
    };
    if let Err(e) = nix::unistd::setsid() {
        fail("setsid", e);
    }
    if let Err(e) =
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
    {
        fail("unshare(net, ipc, uts)", e);
    }
    if let Err(e) = nix::unistd::sethostname(hostname) {
        fail("sethostname", e);
    }
    // Every pod has a working loopback, with or without a CNI configuration (the CNI
    // loopback plugin finds it up already, which it accepts).
    if let Err(e) = loopback_up() {
        fail("bringing lo up", e);
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(b"r");
    let _ = out.flush();
    // Nothing more to say: stdio goes to /dev/null so the agent's pipes do not stay open.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    loop {
        nix::unistd::pause();
    }
}

/// `ip link set lo up` in the current network namespace, with the classic interface ioctls
/// (no netlink needed for one flag, and this runs in the single-threaded pause process).
fn loopback_up() -> Result<(), nix::Error> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; a zeroed one with the name set is what the
    // SIOCGIFFLAGS/SIOCSIFFLAGS ioctls expect, and the kernel writes only inside it.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(nix::Error::last());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(nix::Error::last());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_parses_names_with_spaces_and_parens() {
        let me = std::process::id() as i32;
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(i32::MAX), None);
    }

    #[test]
    fn a_dead_or_reused_pid_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path(), "u1");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let me = std::process::id();
        std::fs::write(&path, json!({"pid": me, "startTime": 1}).to_string()).unwrap();
        assert_eq!(
            find(dir.path(), "u1").unwrap(),
            None,
            "same pid, other start time: not ours"
        );
        assert_eq!(recorded(dir.path()), ["u1"]);
        stop(dir.path(), "u1").unwrap();
        stop(dir.path(), "u1").unwrap();
        assert!(recorded(dir.path()).is_empty());
        assert_eq!(find(dir.path(), "missing").unwrap(), None);
    }
}
