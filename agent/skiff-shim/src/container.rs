//! runc-like operations on containers: create, start, run, state, kill,
//! delete. `create` forks a monitor process that clones the init, waits
//! for it and records its exit; `run` does the same in the calling process.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, SigHandler, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::cgroup::Cgroup;
use crate::error::{Result, ShimError, SysContext};
use crate::logger::{CriLog, LineSplitter, Rotation};
use crate::plan::{build_plan, load_spec, Plan};
use crate::process::{spawn, InitHandle};
use crate::state::{
    now_rfc3339, process_alive, process_start_time, Report, Saved, StateDir, Status,
};
use crate::supervisor::{LogIo, Supervisor};

/// Options shared by all commands.
#[derive(Debug, Clone)]
pub struct Options {
    /// State directory (`--root`).
    pub root: PathBuf,
    /// cgroup v2 directory under which `linux.cgroupsPath` is created;
    /// `None` leaves processes in the shim's cgroup (cgroupfs driver). With
    /// the systemd driver: the cgroup2 mount (default: found in
    /// /proc/self/mounts).
    pub cgroup_root: Option<PathBuf>,
    /// runc's `--systemd-cgroup`: cgroupsPath is `slice:prefix:name` and the
    /// container goes into a transient scope. A cgroupsPath of that form
    /// (no '/', two ':') selects the driver too.
    pub systemd_cgroup: bool,
    /// Container stdout/stderr to this file in CRI format (else inherited).
    pub log_path: Option<PathBuf>,
    pub log_rotation: Rotation,
    /// create with process.terminal: where to send the terminal's master
    /// side (runc's --console-socket).
    pub console_socket: Option<PathBuf>,
    /// With a log: the container's stdin is a pipe whose write end the shim keeps for
    /// attach clients (CRI's `stdin`), instead of /dev/null.
    pub open_stdin: bool,
    /// Close that pipe once the first attach client with stdin has gone (`stdinOnce`).
    pub stdin_once: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            root: PathBuf::from("/run/skiff/shim"),
            cgroup_root: None,
            systemd_cgroup: false,
            log_path: None,
            log_rotation: Rotation::default(),
            console_socket: None,
            open_stdin: false,
            stdin_once: false,
        }
    }
}

fn prepare(opts: &Options, id: &str, bundle: &Path, run_mode: bool) -> Result<(StateDir, Plan)> {
    let sd = StateDir::new(&opts.root, id)?;
    if sd.dir.exists() {
        return Err(ShimError::container(id, "already exists"));
    }
    let bundle = std::fs::canonicalize(bundle).map_err(|e| ShimError::Bundle {
        path: bundle.to_path_buf(),
        msg: e.to_string(),
    })?;
    let spec = load_spec(&bundle)?;
    let plan = build_plan(&bundle, &spec)?;
    if plan.process.terminal
        && !run_mode
        && opts.console_socket.is_none()
        && opts.log_path.is_none()
    {
        return Err(ShimError::spec(
            "process.terminal",
            "create with terminal=true needs --console-socket or --log-path",
        ));
    }
    // Validate now, before anything is created.
    match placement(opts, &plan)? {
        Placement::Systemd { .. } => crate::cgroup::systemd::check_running()?,
        Placement::Dir { root, path } => {
            crate::cgroup::cgroup_dir(&root, &path)?;
        }
        Placement::None => {}
    }
    std::fs::create_dir_all(&opts.root).map_err(|e| ShimError::io("mkdir", &opts.root, e))?;
    std::fs::create_dir(&sd.dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ShimError::container(id, "already exists")
        } else {
            ShimError::io("mkdir", &sd.dir, e)
        }
    })?;
    Ok((sd, plan))
}

/// Where the container's cgroup goes.
enum Placement {
    None,
    Dir {
        root: PathBuf,
        path: PathBuf,
    },
    Systemd {
        root: PathBuf,
        scope: crate::cgroup::systemd::ScopePath,
    },
}

fn placement(opts: &Options, plan: &Plan) -> Result<Placement> {
    let Some(cp) = &plan.cgroups_path else {
        return Ok(Placement::None);
    };
    let text = cp.to_string_lossy();
    if opts.systemd_cgroup || crate::cgroup::systemd::is_systemd_form(&text) {
        let scope = crate::cgroup::systemd::ScopePath::parse(&text)?;
        let root = match &opts.cgroup_root {
            Some(r) => r.clone(),
            None => crate::cgroup::cgroup2_mount().ok_or_else(|| {
                ShimError::Init("systemd cgroup driver: no cgroup2 hierarchy is mounted".into())
            })?,
        };
        return Ok(Placement::Systemd { root, scope });
    }
    Ok(match &opts.cgroup_root {
        Some(root) => Placement::Dir {
            root: root.clone(),
            path: cp.clone(),
        },
        None => Placement::None,
    })
}

/// Everything that exists once the init is set up.
struct Created {
    init: InitHandle,
    cgroup: Option<Cgroup>,
    io: Option<LogIo>,
}

fn pipe_pair(what: &str) -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).ctx("pipe2", what)
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    )
    .map(|_| ())
    .ctx("fcntl", "O_NONBLOCK")
}

fn spawn_container(opts: &Options, sd: &StateDir, plan: &Plan, monitor: Pid) -> Result<Created> {
    let mut cgroup = None;
    let res = (|| {
        let mut not_enforced = Vec::new();
        let place = placement(opts, plan)?;
        match &place {
            Placement::Dir { root, path } => {
                let (cg, missing) = Cgroup::create_with_limits(root, path, &plan.cgroup_limits)?;
                cgroup = Some(cg);
                not_enforced = missing;
            }
            Placement::None => {
                not_enforced = plan
                    .cgroup_limits
                    .iter()
                    .map(|(k, v)| format!("{k}={v}: no cgroup (no --cgroup-root)"))
                    .collect();
            }
            // The scope needs the init's pid: it is started below.
            Placement::Systemd { .. } => {}
        }
        let cg = cgroup.clone();
        // With a log file the container writes into pipes that this
        // process reads; stdin is /dev/null.
        let mut child_ends = None;
        let mut io = None;
        if let Some(path) = &opts.log_path {
            let log = CriLog::open(path, opts.log_rotation)?;
            let (out_r, out_w) = pipe_pair("stdout")?;
            let (err_r, err_w) = pipe_pair("stderr")?;
            let (stdin_child, stdin_ours) = if opts.open_stdin {
                let (r, w) = pipe_pair("stdin")?;
                (r, Some(w))
            } else {
                let null =
                    File::open("/dev/null").map_err(|e| ShimError::io("open", "/dev/null", e))?;
                (OwnedFd::from(null), None)
            };
            set_nonblocking(&out_r)?;
            set_nonblocking(&err_r)?;
            io = Some(LogIo {
                log,
                pipes: vec![
                    (out_r, LineSplitter::new("stdout")),
                    (err_r, LineSplitter::new("stderr")),
                ],
                stdin: stdin_ours,
                stdin_once: opts.stdin_once,
            });
            child_ends = Some((stdin_child, out_w, err_w));
        }
        let stdio = child_ends
            .as_ref()
            .map(|(i, o, e)| [i.as_raw_fd(), o.as_raw_fd(), e.as_raw_fd()]);
        let mut scope_cg = None;
        let spawned = spawn(plan, stdio, &mut |pid| match (&cg, &place) {
            (Some(c), _) => c.add(pid),
            (None, Placement::Systemd { root, scope }) => {
                let dir =
                    crate::cgroup::systemd::start_scope(root, scope, pid, &plan.cgroup_limits)?;
                let c = Cgroup::at(dir, Some(scope.scope.clone()));
                // Delegate=yes: the scope's files are the shim's to write.
                not_enforced =
                    crate::cgroup::write_limits(&c.path, &plan.cgroup_limits, &Vec::new())?;
                scope_cg = Some(c);
                Ok(())
            }
            (None, _) => Ok(()),
        });
        if scope_cg.is_some() {
            cgroup = scope_cg;
        }
        let init = spawned?;
        drop(child_ends);
        let saved = Saved {
            oci_version: "1.0.2".to_string(),
            id: sd.id.clone(),
            pid: init.pid.as_raw(),
            pid_start_time: process_start_time(init.pid.as_raw()).unwrap_or(0),
            monitor_pid: monitor.as_raw(),
            monitor_start_time: process_start_time(monitor.as_raw()).unwrap_or(0),
            bundle: plan.bundle.clone(),
            rootfs: plan.rootfs.clone(),
            created: now_rfc3339(),
            cgroup_path: cgroup.as_ref().map(|c| c.path.clone()),
            systemd_unit: cgroup.as_ref().and_then(|c| c.unit.clone()),
            limits_not_enforced: not_enforced,
        };
        sd.save(&saved)?;
        Ok((init, io))
    })();
    match res {
        Ok((init, io)) => Ok(Created { init, cgroup, io }),
        Err(e) => {
            if let Some(c) = &cgroup {
                let _ = c.remove();
            }
            let _ = sd.remove();
            Err(e)
        }
    }
}

/// Reap whatever other children are already gone.
fn reap_leftovers() {
    while let Ok(s) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
}

fn set_subreaper() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    Errno::result(r)
        .map(|_| ())
        .ctx("prctl", "PR_SET_CHILD_SUBREAPER")
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn forward_signals_to(pid: Pid) {
    FORWARD_TO.store(pid.as_raw(), Ordering::Relaxed);
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: the handler only calls kill(2).
        let _ = unsafe { nix::sys::signal::signal(s, SigHandler::Handler(forward_signal)) };
    }
}

/// `run`: create, start, wait, delete. Returns the container's exit code
/// (128 + signal when it was killed).
pub fn run(opts: &Options, id: &str, bundle: &Path) -> Result<i32> {
    let (sd, plan) = prepare(opts, id, bundle, true)?;
    if let Err(e) = set_subreaper() {
        let _ = sd.remove();
        return Err(e);
    }
    let c = spawn_container(opts, &sd, &plan, nix::unistd::getpid())?;
    let pid = c.init.pid;
    forward_signals_to(pid);
    let mut sup = Supervisor::new(&sd, &plan, pid);
    sup.cgroup = c.cgroup.clone();
    sup.io = c.io;
    let mut init = c.init;
    sup.console = init.console.take();
    if let Some(c) = &sup.console {
        sup.terminal = c.try_clone().ok();
        if let Some((rows, cols)) = crate::supervisor::get_winsize(0) {
            let _ = crate::supervisor::set_winsize(c.as_raw_fd(), rows, cols);
        }
    }
    let raw = sup.console.as_ref().and_then(|_| RawStdin::enter());
    let started = init.start();
    let exit = sup.run();
    drop(raw);
    reap_leftovers();
    if let Some(cg) = &c.cgroup {
        let _ = cg.kill_all(Signal::SIGKILL);
        let _ = cg.remove();
    }
    sd.remove()?;
    started?;
    Ok(exit.exit_code)
}

/// Open the exec fifo for the monitor: non-blocking read end.
fn make_fifo(sd: &StateDir) -> Result<OwnedFd> {
    let p = sd.fifo();
    nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).ctx("mkfifo", p.display())?;
    let fd = nix::fcntl::open(
        &p,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", p.display())?;
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The monitor's life after create: supervise until the init is gone,
/// record its exit, leave.
fn monitor(sd: &StateDir, sup: Supervisor<'_>) -> ! {
    let exit = sup.run();
    reap_leftovers();
    let _ = sd.save_exit(&exit);
    // SAFETY: end the monitor without unwinding into the caller's code.
    unsafe { libc::_exit(0) }
}

/// The monitor lives as long as its container: give back what setting it
/// up used. Free heap goes back to the kernel, and the page-table entries
/// of executable file mappings are dropped (the pages stay in the page
/// cache and fault back in when the monitor's loop needs them), so the
/// resident set holds only what supervising touches.
fn shed_setup_memory() {
    // SAFETY: plain libc call.
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        // Only code: never written, so dropping it loses nothing.
        if perms != "r-xp" || !line.contains('/') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        // SAFETY: a private, read-only, executable file mapping: its
        // pages are re-read from the file on the next access.
        unsafe {
            libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED);
        }
    }
}

fn redirect_stdio_to_null() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// `create`: set the container up and leave it waiting for `start`. A
/// monitor process stays behind as the init's parent.
pub fn create(opts: &Options, id: &str, bundle: &Path, pid_file: Option<&Path>) -> Result<()> {
    let (sd, plan) = prepare(opts, id, bundle, false)?;
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ctx("pipe2", "create status")?;
    // SAFETY: the shim is single-threaded.
    match unsafe { nix::unistd::fork() }.ctx("fork", "monitor")? {
        nix::unistd::ForkResult::Child => {
            drop(rd);
            let mut wr = File::from(wr);
            let _ = nix::unistd::setsid();
            let res = set_subreaper()
                .and_then(|_| make_fifo(&sd))
                .and_then(|fifo| {
                    spawn_container(opts, &sd, &plan, nix::unistd::getpid()).map(|c| (c, fifo))
                });
            match res {
                Ok((mut c, fifo)) => {
                    let pid = c.init.pid;
                    let terminal = c.init.console.as_ref().and_then(|m| m.try_clone().ok());
                    let for_socket = match &opts.console_socket {
                        Some(sock) => c.init.console.take().map(|m| (m, sock)),
                        None => None,
                    };
                    if let Some((master, sock)) = for_socket {
                        if let Err(e) = send_console(sock, &master) {
                            let _ = kill(pid, Signal::SIGKILL);
                            let _ = sd.remove();
                            let _ = wr.write_all(format!("E{e}").as_bytes());
                            // SAFETY: leave the forked monitor.
                            unsafe { libc::_exit(1) }
                        }
                    }
                    // The control socket exists before `create` returns.
                    let mut sup = Supervisor::new(&sd, &plan, pid);
                    sup.cgroup = c.cgroup;
                    sup.io = c.io;
                    // No console socket: the shim keeps the terminal, its output goes to
                    // the log and to attach clients.
                    if opts.console_socket.is_none() {
                        sup.console = c.init.console.take();
                    }
                    sup.pending = Some((c.init, fifo));
                    sup.terminal = terminal;
                    let _ = wr.write_all(format!("O{pid}").as_bytes());
                    drop(wr);
                    redirect_stdio_to_null();
                    shed_setup_memory();
                    monitor(&sd, sup)
                }
                Err(e) => {
                    let _ = sd.remove();
                    let _ = wr.write_all(format!("E{e}").as_bytes());
                    // SAFETY: leave the forked monitor.
                    unsafe { libc::_exit(1) }
                }
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(wr);
            // One read: the init holds a copy of the write end until it
            // execs, so EOF would only come at `start`. The message is far
            // below PIPE_BUF, so it arrives whole.
            let mut buf = [0u8; 4096];
            let n = loop {
                match nix::unistd::read(rd.as_raw_fd(), &mut buf) {
                    Err(Errno::EINTR) => continue,
                    r => break r.unwrap_or(0),
                }
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(pid) = msg.strip_prefix('O') {
                if let Some(pf) = pid_file {
                    std::fs::write(pf, pid).map_err(|e| ShimError::io("write", pf, e))?;
                }
                Ok(())
            } else {
                let _ = waitpid(child, None);
                let _ = sd.remove();
                match msg.strip_prefix('E') {
                    Some(m) => Err(ShimError::container(id, format!("create failed: {m}"))),
                    None => Err(ShimError::container(id, "create failed: monitor died")),
                }
            }
        }
    }
}

/// runc's console-socket protocol: connect, send the master with SCM_RIGHTS.
fn send_console(sock: &Path, master: &OwnedFd) -> Result<()> {
    let s = std::os::unix::net::UnixStream::connect(sock)
        .map_err(|e| ShimError::io("connect", sock, e))?;
    crate::process::send_fd(
        s.as_raw_fd(),
        b"console",
        master.as_raw_fd(),
        "console socket",
    )
}

/// Our stdin in raw mode while a terminal is relayed (when it is a tty).
struct RawStdin(nix::sys::termios::Termios);

impl RawStdin {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawStdin(saved))
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

fn monitor_alive(s: &Saved) -> bool {
    process_alive(s.monitor_pid, s.monitor_start_time)
}

/// `start`: release a created container.
pub fn start(opts: &Options, id: &str) -> Result<()> {
    let sd = StateDir::new(&opts.root, id)?;
    let s = sd.load()?;
    let st = sd.status(&s);
    if st != Status::Created {
        return Err(ShimError::container(
            id,
            format!("cannot start a container that is {st}"),
        ));
    }
    let fifo = sd.fifo();
    let fd = nix::fcntl::open(
        &fifo,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == Errno::ENXIO {
            ShimError::container(id, "its monitor is gone")
        } else {
            ShimError::sys("open", fifo.display(), e)
        }
    })?;
    // SAFETY: fresh fd.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(b"1")
        .map_err(|e| ShimError::io("write", &fifo, e))?;
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(e) = std::fs::read_to_string(sd.dir.join("start-error")) {
            return Err(ShimError::container(id, format!("start failed: {e}")));
        }
        if !fifo.exists() {
            return Ok(());
        }
        if !monitor_alive(&s) {
            return Err(ShimError::container(id, "its monitor died during start"));
        }
        if Instant::now() > deadline {
            return Err(ShimError::container(id, "start timed out"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Every container under `--root` (how a restarted agent finds its shims).
pub fn list(opts: &Options) -> Result<Vec<Report>> {
    let rd = match std::fs::read_dir(&opts.root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ShimError::io("read", &opts.root, e)),
    };
    let mut out: Vec<Report> = rd
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            StateDir::new(&opts.root, &id).ok()?.report().ok()
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

pub fn state(opts: &Options, id: &str) -> Result<Report> {
    StateDir::new(&opts.root, id)?.report()
}

/// Parse "KILL", "SIGKILL" or "9".
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n)
            .map_err(|_| ShimError::spec("signal", format!("unknown signal {s}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| ShimError::spec("signal", format!("unknown signal {s}")))
}

/// `kill`: signal the init (or, with `all`, every process of the container).
pub fn kill_container(opts: &Options, id: &str, sig: Signal, all: bool) -> Result<()> {
    let sd = StateDir::new(&opts.root, id)?;
    let s = sd.load()?;
    let st = sd.status(&s);
    if st == Status::Stopped {
        return Err(ShimError::container(id, "container is not running"));
    }
    if all {
        if let Some(p) = &s.cgroup_path {
            return Cgroup::at(p.clone(), s.systemd_unit.clone()).kill_all(sig);
        }
    }
    kill(Pid::from_raw(s.pid), sig).ctx("kill", s.pid)
}

/// `delete`: remove a stopped container (a created one is killed first, as
/// runc does; a running one only with `force`).
pub fn delete(opts: &Options, id: &str, force: bool) -> Result<()> {
    let sd = StateDir::new(&opts.root, id)?;
    let s = match sd.load() {
        Ok(s) => s,
        Err(e) => {
            // A half-created directory without state: remove it when forced.
            if force && sd.dir.exists() {
                return sd.remove();
            }
            return Err(e);
        }
    };
    let st = sd.status(&s);
    if st == Status::Running && !force {
        return Err(ShimError::container(
            id,
            "cannot delete a running container (stop it first or use --force)",
        ));
    }
    if st != Status::Stopped {
        if let Some(p) = &s.cgroup_path {
            let _ = Cgroup::at(p.clone(), s.systemd_unit.clone()).kill_all(Signal::SIGKILL);
        }
        let _ = kill(Pid::from_raw(s.pid), Signal::SIGKILL);
    }
    // Let the monitor record the exit and go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while monitor_alive(&s) && s.monitor_pid != nix::unistd::getpid().as_raw() {
        if Instant::now() > deadline {
            return Err(ShimError::container(
                id,
                "monitor did not exit after SIGKILL",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Some(p) = &s.cgroup_path {
        Cgroup::at(p.clone(), s.systemd_unit.clone()).remove()?;
    }
    sd.remove()
}
