//! The shim's life while its container exists: one poll loop over the
//! init's pidfd, the exec fifo (waiting for `start`), the stdout/stderr
//! pipes (CRI log) and the control socket `<root>/<id>/shim.sock`.
//!
//! Control protocol: one JSON request per connection, one JSON response
//! line back (see [`Request`] and [`Response`]).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::error::{Result, ShimError, SysContext};
use crate::logger::{CriLog, LineSplitter};
use crate::plan::Plan;
use crate::process::InitHandle;
use crate::state::{now_rfc3339, ExitInfo, Report, StateDir};

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    State,
    /// Signal the init process.
    Signal {
        signal: i32,
    },
    /// Signal every process of the container (its cgroup, or the init
    /// when it has no cgroup).
    KillAll {
        signal: i32,
    },
    /// Run a process in all of the container's namespaces (and cgroup),
    /// as the container's user with its capabilities; output is captured.
    /// Set the window size of the container's terminal.
    Resize {
        rows: u16,
        cols: u16,
    },
    Exec {
        args: Vec<String>,
        #[serde(default)]
        env: Option<Vec<String>>,
        #[serde(default)]
        cwd: Option<PathBuf>,
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Instead of capturing: answer at once with the process's stdin,
        /// stdout and stderr (or, with `tty`, one terminal) passed over the
        /// socket (SCM_RIGHTS), then send the exit code when it ends.
        #[serde(default)]
        stream: bool,
        #[serde(default)]
        tty: bool,
    },
    /// Attach to the container's own stdio (not a new process): answered
    /// like a streaming exec with [stdin, stdout, stderr] descriptors —
    /// output from now on, a copy of what goes to the log; stdin the
    /// container's pipe (or a pipe nobody reads when it has none or `stdin`
    /// is false) — then the container's exit code when it ends.
    Attach {
        #[serde(default)]
        stdin: bool,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecResult {
    #[serde(default)]
    pub pid: i32,
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Report>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecResult>,
}

pub fn socket_path(sd: &StateDir) -> PathBuf {
    sd.dir.join("shim.sock")
}

/// sun_path holds 108 bytes: a longer socket path is reached through an
/// O_PATH descriptor of its directory (`/proc/self/fd/N/shim.sock`).
fn with_short_path<T>(p: &Path, f: impl FnOnce(&Path) -> std::io::Result<T>) -> Result<T> {
    if p.as_os_str().len() < 100 {
        return f(p).map_err(|e| ShimError::io("socket", p, e));
    }
    let dir = p.parent().unwrap_or(Path::new("/"));
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| ShimError::io("open", dir, e))?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd()))
        .join(p.file_name().unwrap_or_default());
    f(&short).map_err(|e| ShimError::io("socket", p, e))
}

/// Send one request to the shim of container `id` under `root`.
pub fn request(root: &Path, id: &str, req: &Request, timeout: Duration) -> Result<Response> {
    let sd = StateDir::new(root, id)?;
    let p = socket_path(&sd);
    let mut s = with_short_path(&p, |q| UnixStream::connect(q))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| ShimError::io("timeout", &p, e))?;
    let mut line = serde_json::to_vec(req).expect("serialisable");
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| ShimError::io("write", &p, e))?;
    let mut resp = String::new();
    BufReader::new(s)
        .read_line(&mut resp)
        .map_err(|e| ShimError::io("read", &p, e))?;
    serde_json::from_str(&resp)
        .map_err(|e| ShimError::container(id, format!("bad reply from shim: {e}")))
}

/// A streaming exec seen from the client: the process's stdin, stdout,
/// stderr (or its one terminal), and the connection that will carry its
/// exit code.
pub struct ExecStream {
    pub pid: i32,
    pub fds: Vec<OwnedFd>,
    sock: UnixStream,
    rest: Vec<u8>,
}

impl ExecStream {
    /// A second handle on the connection, to shut it down from another thread (an attach
    /// client leaving while `wait` blocks).
    pub fn connection(&self) -> Option<UnixStream> {
        self.sock.try_clone().ok()
    }

    /// Wait for the exit code.
    pub fn wait(self) -> Result<i32> {
        let mut data = self.rest;
        let mut r = BufReader::new(self.sock);
        let mut line = String::new();
        if !data.contains(&b'\n') {
            r.read_line(&mut line)
                .map_err(|e| ShimError::io("read", "exec stream", e))?;
            data.extend_from_slice(line.as_bytes());
        }
        let resp: Response =
            serde_json::from_slice(data.split(|b| *b == b'\n').next().unwrap_or(&[]))
                .map_err(|e| ShimError::Init(format!("bad exec reply: {e}")))?;
        match resp.exec {
            Some(e) if resp.ok => Ok(e.exit_code),
            _ => Err(ShimError::Init(
                resp.error.unwrap_or_else(|| "exec lost".into()),
            )),
        }
    }
}

/// Start a streaming exec (`req` must be an Exec with `stream: true`).
pub fn exec_stream(root: &Path, id: &str, req: &Request) -> Result<ExecStream> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let sd = StateDir::new(root, id)?;
    let p = socket_path(&sd);
    let s = with_short_path(&p, |q| UnixStream::connect(q))?;
    let mut line = serde_json::to_vec(req).expect("serialisable");
    line.push(b'\n');
    (&s).write_all(&line)
        .map_err(|e| ShimError::io("write", &p, e))?;
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 3]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ctx("recvmsg", p.display())?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ctx("recvmsg", "cmsgs")? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: descriptors just received.
            fds.extend(v.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    let n = msg.bytes;
    buf.truncate(n);
    let end = buf.iter().position(|b| *b == b'\n').unwrap_or(buf.len());
    let resp: Response = serde_json::from_slice(&buf[..end])
        .map_err(|e| ShimError::container(id, format!("bad reply from shim: {e}")))?;
    if !resp.ok {
        return Err(ShimError::container(id, resp.error.unwrap_or_default()));
    }
    let rest = buf.get(end + 1..).map(<[u8]>::to_vec).unwrap_or_default();
    Ok(ExecStream {
        pid: resp.exec.map(|e| e.pid).unwrap_or(0),
        fds,
        sock: s,
        rest,
    })
}

/// The read ends of the container's stdout/stderr pipes and the log.
pub struct LogIo {
    pub log: CriLog,
    pub pipes: Vec<(OwnedFd, LineSplitter)>,
    /// The write end of the container's stdin (`--stdin`), for attach clients.
    pub stdin: Option<OwnedFd>,
    pub stdin_once: bool,
}

/// A client attached to the container's output.
struct Attached {
    /// Where stdout goes; for a terminal, one end of a socket pair that also carries the
    /// client's keystrokes to the terminal.
    out: OwnedFd,
    /// Where stderr goes; `None` for a terminal (it has one stream).
    err: Option<OwnedFd>,
    conn: UnixStream,
    /// It was given the container's stdin (matters for stdin_once), or, for a terminal,
    /// its input is read from `out`.
    stdin: bool,
    tty: bool,
}

pub fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(r).ctx("pidfd_open", pid)?;
    // SAFETY: a new fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub fn exit_info(ws: WaitStatus) -> Option<(Pid, ExitInfo)> {
    let (p, exit_code, signal) = match ws {
        WaitStatus::Exited(p, code) => (p, code, None),
        WaitStatus::Signaled(p, sig, _) => (p, 128 + sig as i32, Some(sig as i32)),
        _ => return None,
    };
    Some((
        p,
        ExitInfo {
            exit_code,
            signal,
            finished: now_rfc3339(),
            oom_killed: false,
        },
    ))
}

#[derive(Clone, Copy)]
enum Src {
    Pipe(usize),
    Pidfd,
    Fifo,
    Listener,
    Sigchld,
    Console,
    Stdin,
    Attached(usize),
    AttachedInput(usize),
}

pub struct Supervisor<'a> {
    pub sd: &'a StateDir,
    pub plan: &'a Plan,
    pub pid: Pid,
    pub cgroup: Option<Cgroup>,
    pub io: Option<LogIo>,
    /// Create mode: the init waiting for `start`, and the exec fifo.
    pub pending: Option<(InitHandle, OwnedFd)>,
    /// Run mode with a terminal: the master side, relayed to our stdout
    /// (or the log) and fed from our stdin.
    pub console: Option<OwnedFd>,
    /// The terminal's master kept for resize requests.
    pub terminal: Option<OwnedFd>,
    console_split: LineSplitter,
    stdin_open: bool,
    /// Streaming execs: helper pid and the connection to answer on exit.
    streams: Vec<(Pid, UnixStream)>,
    attached: Vec<Attached>,
    listener: Option<UnixListener>,
    pidfd: Option<OwnedFd>,
    /// SIGCHLD as a descriptor: orphans handed to the shim (subreaper)
    /// must be reaped even while the init lives, or a PID namespace whose
    /// init is exiting waits for them forever.
    sigchld: Option<nix::sys::signalfd::SignalFd>,
}

impl<'a> Supervisor<'a> {
    pub fn new(sd: &'a StateDir, plan: &'a Plan, pid: Pid) -> Self {
        let listener = with_short_path(&socket_path(sd), |q| UnixListener::bind(q)).ok();
        if let Some(l) = &listener {
            let _ = l.set_nonblocking(true);
        }
        let mut mask = nix::sys::signal::SigSet::empty();
        mask.add(Signal::SIGCHLD);
        let sigchld = mask.thread_block().ok().and_then(|_| {
            nix::sys::signalfd::SignalFd::with_flags(
                &mask,
                nix::sys::signalfd::SfdFlags::SFD_NONBLOCK
                    | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
            )
            .ok()
        });
        Supervisor {
            console: None,
            terminal: None,
            console_split: LineSplitter::new("stdout"),
            stdin_open: true,
            streams: Vec::new(),
            attached: Vec::new(),
            sigchld,
            sd,
            plan,
            pid,
            cgroup: None,
            io: None,
            pending: None,
            listener,
            pidfd: pidfd_open(pid).ok(),
        }
    }

    /// Loop until the init has exited and its output is drained.
    pub fn run(mut self) -> ExitInfo {
        let mut exit: Option<ExitInfo> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let pipes_left = self.io.as_ref().map(|i| i.pipes.len()).unwrap_or(0);
            if exit.is_some() && pipes_left == 0 {
                break;
            }
            let (ready, nready) = {
                let mut srcs = Vec::new();
                let mut fds = Vec::new();
                if let Some(io) = &self.io {
                    for (i, (fd, _)) in io.pipes.iter().enumerate() {
                        srcs.push(Src::Pipe(i));
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    }
                }
                if exit.is_none() {
                    if let Some(p) = &self.pidfd {
                        srcs.push(Src::Pidfd);
                        fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                    }
                    if let Some((_, f)) = &self.pending {
                        srcs.push(Src::Fifo);
                        fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                    }
                    if let Some(l) = &self.listener {
                        srcs.push(Src::Listener);
                        fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                    }
                    if let Some(c) = &self.console {
                        srcs.push(Src::Console);
                        fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                        if self.stdin_open {
                            srcs.push(Src::Stdin);
                            // SAFETY: fd 0 outlives this poll.
                            let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
                            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
                        }
                    }
                    for (i, a) in self.attached.iter().enumerate() {
                        srcs.push(Src::Attached(i));
                        fds.push(PollFd::new(a.conn.as_fd(), PollFlags::POLLIN));
                        if a.tty && a.stdin {
                            srcs.push(Src::AttachedInput(i));
                            fds.push(PollFd::new(a.out.as_fd(), PollFlags::POLLIN));
                        }
                    }
                    if let Some(sfd) = &self.sigchld {
                        srcs.push(Src::Sigchld);
                        fds.push(PollFd::new(sfd.as_fd(), PollFlags::POLLIN));
                    }
                }
                let timeout = if exit.is_some() {
                    PollTimeout::ZERO
                } else if self.pidfd.is_none() {
                    PollTimeout::from(100u16)
                } else {
                    PollTimeout::NONE
                };
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(n) => {
                        let r: Vec<Src> = fds
                            .iter()
                            .zip(srcs.iter())
                            .filter(|(f, _)| f.revents().map(|r| !r.is_empty()).unwrap_or(false))
                            .map(|(_, s)| *s)
                            .collect();
                        (r, n)
                    }
                    Err(Errno::EINTR) => continue,
                    Err(_) => (Vec::new(), 0),
                }
            };
            // Pipes in reverse index order, so removals keep indices valid.
            let mut pipe_idx: Vec<usize> = ready
                .iter()
                .filter_map(|s| if let Src::Pipe(i) = s { Some(*i) } else { None })
                .collect();
            pipe_idx.sort_unstable_by(|a, b| b.cmp(a));
            for i in pipe_idx {
                self.drain_pipe(i, &mut buf);
            }
            for s in &ready {
                if let Src::AttachedInput(i) = s {
                    self.on_attached_input(*i, &mut buf);
                }
            }
            // Detached clients, in reverse index order like the pipes.
            let mut gone: Vec<usize> = ready
                .iter()
                .filter_map(|s| {
                    if let Src::Attached(i) = s {
                        Some(*i)
                    } else {
                        None
                    }
                })
                .collect();
            gone.sort_unstable_by(|a, b| b.cmp(a));
            for i in gone {
                self.on_attached(i);
            }
            for s in &ready {
                match s {
                    Src::Fifo => self.on_fifo(),
                    Src::Listener => self.on_connection(),
                    Src::Console => self.on_console(&mut buf),
                    Src::Stdin => self.on_stdin(&mut buf),
                    Src::Sigchld => {
                        if let Some(sfd) = &mut self.sigchld {
                            while let Ok(Some(_)) = sfd.read_signal() {}
                        }
                    }
                    _ => {}
                }
            }
            // Reap: the init, and orphans handed to us as subreaper.
            while let Ok(ws) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                match exit_info(ws) {
                    Some((p, info)) if p == self.pid => exit = Some(info),
                    Some((p, info)) => self.stream_done(p, Some(info.exit_code)),
                    None => break,
                }
            }
            if exit.is_some() && nready == 0 {
                break;
            }
        }
        // What the terminal still holds.
        while self.console.is_some() {
            let Some(c) = &self.console else { break };
            let mut pfd = [PollFd::new(c.as_fd(), PollFlags::POLLIN)];
            if !matches!(nix::poll::poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0) {
                break;
            }
            self.on_console(&mut buf);
        }
        if let Some(io) = &mut self.io {
            for (_, s) in io.pipes.iter_mut() {
                let _ = s.finish(&mut io.log);
            }
            let _ = self.console_split.finish(&mut io.log);
        }
        let _ = std::fs::remove_file(socket_path(self.sd));
        for (p, _) in std::mem::take(&mut self.streams) {
            let _ = kill(p, Signal::SIGKILL);
        }
        let mut exit = exit.unwrap_or(ExitInfo {
            exit_code: 255,
            signal: None,
            finished: now_rfc3339(),
            oom_killed: false,
        });
        exit.oom_killed = self
            .cgroup
            .as_ref()
            .map(|c| c.oom_kills() > 0)
            .unwrap_or(false);
        // Attached clients have all the output; their pipes close with them.
        for a in std::mem::take(&mut self.attached) {
            let resp = Response {
                ok: true,
                exec: Some(ExecResult {
                    pid: self.pid.as_raw(),
                    exit_code: exit.exit_code,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut out = serde_json::to_vec(&resp).expect("serialisable");
            out.push(b'\n');
            let _ = (&a.conn).write_all(&out);
        }
        exit
    }

    fn drain_pipe(&mut self, i: usize, buf: &mut [u8]) {
        let Some(io) = &mut self.io else { return };
        loop {
            let (fd, splitter) = &mut io.pipes[i];
            match nix::unistd::read(fd.as_raw_fd(), buf) {
                Ok(0) => {
                    let _ = splitter.finish(&mut io.log);
                    io.pipes.remove(i);
                    return;
                }
                Ok(n) => {
                    let _ = splitter.feed(&buf[..n], &mut io.log);
                    let stderr = splitter.stream == "stderr";
                    // Attached clients get a copy; one that does not keep up loses
                    // output rather than stalling the container (the log has it all).
                    self.attached.retain(|a| {
                        let fd = if stderr { a.err.as_ref() } else { Some(&a.out) };
                        !fd.is_some_and(|fd| {
                            matches!(nix::unistd::write(fd, &buf[..n]), Err(Errno::EPIPE))
                        })
                    });
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    /// Terminal output: to the log as stdout, or to our stdout.
    fn on_console(&mut self, buf: &mut [u8]) {
        let Some(c) = &self.console else { return };
        match nix::unistd::read(c.as_raw_fd(), buf) {
            Ok(0) | Err(Errno::EIO) => self.console = None,
            Ok(n) => {
                let data = &buf[..n];
                self.attached.retain(|a| {
                    !(a.tty && matches!(nix::unistd::write(&a.out, data), Err(Errno::EPIPE)))
                });
                match &mut self.io {
                    Some(io) => {
                        let _ = self.console_split.feed(data, &mut io.log);
                    }
                    None => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(data);
                        let _ = out.flush();
                    }
                }
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(_) => self.console = None,
        }
    }

    /// Our stdin to the terminal.
    fn on_stdin(&mut self, buf: &mut [u8]) {
        let Some(c) = &self.console else { return };
        match nix::unistd::read(0, buf) {
            Ok(0) | Err(Errno::EBADF) => self.stdin_open = false,
            Ok(n) => {
                let _ = nix::unistd::write(c, &buf[..n]);
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(_) => self.stdin_open = false,
        }
    }

    /// A byte on the exec fifo: `start` was called.
    fn on_fifo(&mut self) {
        let Some((init, fifo)) = self.pending.take() else {
            return;
        };
        let mut b = [0u8; 1];
        match nix::unistd::read(fifo.as_raw_fd(), &mut b) {
            Ok(1) => {
                match init.start() {
                    Ok(()) => {
                        let _ = self.sd.mark_started();
                    }
                    Err(e) => {
                        let _ = std::fs::write(self.sd.dir.join("start-error"), e.to_string());
                    }
                }
                let _ = std::fs::remove_file(self.sd.fifo());
            }
            Ok(_) => {
                // A writer came and went without a byte: reopen to clear
                // the hangup, keep waiting.
                drop(fifo);
                if let Ok(f) = nix::fcntl::open(
                    &self.sd.fifo(),
                    nix::fcntl::OFlag::O_RDONLY
                        | nix::fcntl::OFlag::O_NONBLOCK
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                ) {
                    // SAFETY: fresh fd.
                    self.pending = Some((init, unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
            Err(_) => self.pending = Some((init, fifo)),
        }
    }

    /// Tell a streaming exec's client how its process ended.
    fn stream_done(&mut self, helper: Pid, code: Option<i32>) {
        if let Some(i) = self.streams.iter().position(|(p, _)| *p == helper) {
            let (_, s) = self.streams.remove(i);
            let resp = Response {
                ok: code.is_some(),
                exec: code.map(|c| ExecResult {
                    pid: helper.as_raw(),
                    exit_code: c,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut out = serde_json::to_vec(&resp).expect("serialisable");
            out.push(b'\n');
            let _ = (&s).write_all(&out);
        }
    }

    /// Start a streaming exec: answer with the client's ends of its stdio.
    fn exec_stream(
        &mut self,
        stream: &UnixStream,
        spec: &crate::exec::ExecSpec<'_>,
    ) -> Result<Pid> {
        if self.pending.is_some() {
            return Err(ShimError::container(&self.sd.id, "exec before start"));
        }
        let (theirs, ours): (Vec<OwnedFd>, Vec<OwnedFd>) = if spec.tty {
            // A terminal from the container's own devpts (reached through
            // the init's root), so that it is /dev/pts/N in there too.
            let root = format!("/proc/{}/root", self.pid);
            let ptmx = format!("{root}/dev/ptmx");
            let m = nix::fcntl::open(
                ptmx.as_str(),
                nix::fcntl::OFlag::O_RDWR
                    | nix::fcntl::OFlag::O_NOCTTY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ctx("open", &ptmx)?;
            // SAFETY: fresh descriptor.
            let m = unsafe { OwnedFd::from_raw_fd(m) };
            let unlock: libc::c_int = 0;
            let mut n: libc::c_uint = 0;
            // SAFETY: TIOCSPTLCK and TIOCGPTN with valid int pointers.
            unsafe {
                Errno::result(libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &unlock))
                    .ctx("ioctl(TIOCSPTLCK)", &ptmx)?;
                Errno::result(libc::ioctl(m.as_raw_fd(), libc::TIOCGPTN, &mut n))
                    .ctx("ioctl(TIOCGPTN)", &ptmx)?;
            }
            let slave_path = format!("{root}/dev/pts/{n}");
            let slave = nix::fcntl::open(
                slave_path.as_str(),
                nix::fcntl::OFlag::O_RDWR
                    | nix::fcntl::OFlag::O_NOCTTY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ctx("open", &slave_path)?;
            // SAFETY: fresh descriptor.
            let slave = unsafe { OwnedFd::from_raw_fd(slave) };
            (vec![slave], vec![m])
        } else {
            let (in_r, in_w) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx("pipe2", "exec stdin")?;
            let (out_r, out_w) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx("pipe2", "exec stdout")?;
            let (err_r, err_w) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx("pipe2", "exec stderr")?;
            (vec![in_r, out_w, err_w], vec![in_w, out_r, err_r])
        };
        let stdio = if spec.tty {
            [theirs[0].as_raw_fd(); 3]
        } else {
            [
                theirs[0].as_raw_fd(),
                theirs[1].as_raw_fd(),
                theirs[2].as_raw_fd(),
            ]
        };
        let helper =
            crate::exec::spawn_exec(self.pid, self.plan, self.cgroup.as_ref(), spec, stdio)?;
        drop(theirs);
        let fds: Vec<i32> = ours.iter().map(|f| f.as_raw_fd()).collect();
        send_with_fds(stream, helper.as_raw(), &fds, "exec stdio")?;
        Ok(helper)
    }

    /// Keystrokes of a client attached to the terminal.
    fn on_attached_input(&mut self, i: usize, buf: &mut [u8]) {
        let (Some(a), Some(c)) = (self.attached.get_mut(i), &self.console) else {
            return;
        };
        match nix::unistd::read(a.out.as_raw_fd(), buf) {
            Ok(0) => a.stdin = false,
            Ok(n) => {
                let _ = nix::unistd::write(c, &buf[..n]);
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(_) => a.stdin = false,
        }
    }

    /// The attach client's connection is readable: it only ever closes it.
    fn on_attached(&mut self, i: usize) {
        let mut b = [0u8; 64];
        let closed = match nix::unistd::read(self.attached[i].conn.as_raw_fd(), &mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => false,
            Err(_) => true,
        };
        if !closed {
            return;
        }
        let a = self.attached.remove(i);
        if let Some(io) = &mut self.io {
            if a.stdin && io.stdin_once {
                // stdinOnce: the container sees EOF once its first client is done.
                io.stdin = None;
            }
        }
    }

    /// Attach a client to the container's stdio: see [`Request::Attach`].
    fn attach(&mut self, stream: UnixStream, want_stdin: bool) -> Result<()> {
        let Some(io) = &self.io else {
            return Err(ShimError::container(
                &self.sd.id,
                "attach needs a container whose output the shim keeps (--log-path)",
            ));
        };
        if self.console.is_some() {
            return self.attach_terminal(stream, want_stdin);
        }
        let stdin = match (&io.stdin, want_stdin) {
            (Some(w), true) => Some(
                w.try_clone()
                    .map_err(|e| ShimError::io("dup", "container stdin", e))?,
            ),
            _ => None,
        };
        let gave_stdin = stdin.is_some();
        let stdin = match stdin {
            Some(fd) => fd,
            // A pipe nobody reads: what the client writes fails (EPIPE) and is dropped.
            // Not /dev/null, which the client could not poll.
            None => {
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .ctx("pipe2", "attach stdin")?
                    .1
            }
        };
        let (out_r, out_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx("pipe2", "attach stdout")?;
        let (err_r, err_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx("pipe2", "attach stderr")?;
        for fd in [&out_w, &err_w] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .ctx("fcntl", "attach O_NONBLOCK")?;
        }
        let fds = [stdin.as_raw_fd(), out_r.as_raw_fd(), err_r.as_raw_fd()];
        send_with_fds(&stream, self.pid.as_raw(), &fds, "attach stdio")?;
        let _ = stream.set_nonblocking(true);
        self.attached.push(Attached {
            out: out_w,
            err: Some(err_w),
            conn: stream,
            stdin: gave_stdin,
            tty: false,
        });
        Ok(())
    }

    /// Attach to a container with a terminal: the client gets one socket, its end of a
    /// pair whose other end receives the terminal's output (as the log does) and, with
    /// `stdin`, feeds the terminal. Window size goes through `resize`.
    fn attach_terminal(&mut self, stream: UnixStream, want_stdin: bool) -> Result<()> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .ctx("socketpair", "attach terminal")?;
        if !want_stdin {
            let _ =
                nix::sys::socket::shutdown(theirs.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        }
        send_with_fds(
            &stream,
            self.pid.as_raw(),
            &[theirs.as_raw_fd()],
            "attach terminal",
        )?;
        let _ = stream.set_nonblocking(true);
        self.attached.push(Attached {
            out: ours,
            err: None,
            conn: stream,
            stdin: want_stdin,
            tty: true,
        });
        Ok(())
    }

    fn on_connection(&mut self) {
        let Some(l) = &self.listener else { return };
        let Ok((stream, _)) = l.accept() else { return };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        let req = match reader.read_line(&mut line) {
            Ok(_) => serde_json::from_str::<Request>(&line)
                .map_err(|e| ShimError::spec("request", e.to_string())),
            Err(e) => Err(ShimError::io("read", "control socket", e)),
        };
        if let Ok(Request::Attach { stdin }) = &req {
            let stdin = *stdin;
            let Ok(clone) = stream.try_clone() else {
                return;
            };
            if let Err(e) = self.attach(clone, stdin) {
                let resp = Response {
                    ok: false,
                    error: Some(e.to_string()),
                    ..Default::default()
                };
                let mut out = serde_json::to_vec(&resp).expect("serialisable");
                out.push(b'\n');
                let _ = (&stream).write_all(&out);
            }
            return;
        }
        if let Ok(Request::Exec {
            args,
            env,
            cwd,
            stream: true,
            tty,
            ..
        }) = &req
        {
            let spec = crate::exec::ExecSpec {
                args,
                env: env.as_deref(),
                cwd: cwd.as_deref(),
                tty: *tty,
            };
            match self.exec_stream(&stream, &spec) {
                Ok(helper) => {
                    let _ = stream.set_read_timeout(None);
                    self.streams.push((helper, stream));
                    return;
                }
                Err(e) => {
                    let resp = Response {
                        ok: false,
                        error: Some(e.to_string()),
                        ..Default::default()
                    };
                    let mut out = serde_json::to_vec(&resp).expect("serialisable");
                    out.push(b'\n');
                    let _ = (&stream).write_all(&out);
                    return;
                }
            }
        }
        let resp = req.and_then(|r| self.handle(r));
        let resp = resp.unwrap_or_else(|e| Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        });
        let mut out = serde_json::to_vec(&resp).expect("serialisable");
        out.push(b'\n');
        let _ = (&stream).write_all(&out);
    }

    fn handle(&mut self, req: Request) -> Result<Response> {
        let ok = Response {
            ok: true,
            ..Default::default()
        };
        match req {
            Request::State => Ok(Response {
                state: Some(self.sd.report()?),
                ..ok
            }),
            Request::Signal { signal } => {
                let sig = Signal::try_from(signal).ctx("signal", signal)?;
                kill(self.pid, sig).ctx("kill", self.pid)?;
                Ok(ok)
            }
            Request::Resize { rows, cols } => {
                let t = self
                    .terminal
                    .as_ref()
                    .ok_or_else(|| ShimError::container(&self.sd.id, "has no terminal"))?;
                set_winsize(t.as_raw_fd(), rows, cols)?;
                Ok(ok)
            }
            Request::KillAll { signal } => {
                let sig = Signal::try_from(signal).ctx("signal", signal)?;
                match &self.cgroup {
                    Some(c) => c.kill_all(sig)?,
                    None => kill(self.pid, sig).ctx("kill", self.pid)?,
                }
                Ok(ok)
            }
            Request::Attach { .. } => {
                Err(ShimError::spec("attach", "answered on its own connection"))
            }
            Request::Exec {
                args,
                env,
                cwd,
                timeout_ms,
                tty,
                ..
            } => {
                if self.pending.is_some() {
                    return Err(ShimError::container(&self.sd.id, "exec before start"));
                }
                let spec = crate::exec::ExecSpec {
                    args: &args,
                    env: env.as_deref(),
                    cwd: cwd.as_deref(),
                    tty,
                };
                if tty {
                    return Err(ShimError::spec("exec.tty", "needs stream=true"));
                }
                let r = crate::exec::exec_captured(
                    self.pid,
                    self.plan,
                    self.cgroup.as_ref(),
                    &spec,
                    Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(10_000)),
                )?;
                Ok(Response {
                    exec: Some(r),
                    ..ok
                })
            }
        }
    }
}

/// TIOCSWINSZ on a terminal descriptor.
pub fn set_winsize(fd: i32, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid winsize for TIOCSWINSZ.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) })
        .map(|_| ())
        .ctx("ioctl(TIOCSWINSZ)", format!("{rows}x{cols}"))
}

/// The window size of a terminal, if it is one.
pub fn get_winsize(fd: i32) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: a valid out pointer for TIOCGWINSZ.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some((ws.ws_row, ws.ws_col))
}

/// Answers an exec or attach request: one JSON line naming `pid`, with the client's ends of
/// the stdio descriptors passed alongside (SCM_RIGHTS), so the bytes never go through us.
fn send_with_fds(stream: &UnixStream, pid: i32, fds: &[i32], what: &str) -> Result<()> {
    let resp = Response {
        ok: true,
        exec: Some(ExecResult {
            pid,
            exit_code: -1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut line = serde_json::to_vec(&resp).expect("serialisable");
    line.push(b'\n');
    let iov = [std::io::IoSlice::new(&line)];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(fds)];
    nix::sys::socket::sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .ctx("sendmsg", what)?;
    Ok(())
}
