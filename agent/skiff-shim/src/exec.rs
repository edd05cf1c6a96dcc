//! A new process inside a running container: all of the init's namespaces
//! (joined by setns, the PID namespace through one more fork), its cgroup,
//! the container's user, capabilities, rlimits and no_new_privs. Output is
//! captured through pipes; used for exec requests on the control socket.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::cgroup::Cgroup;
use crate::error::{Result, ShimError, SysContext};
use crate::plan::Plan;
use crate::process::{
    apply_user_and_caps, cloexec_from_3, find_executable, home_of, prctl, reset_signals,
    to_cstrings,
};
use crate::supervisor::ExecResult;

/// Output kept per stream.
const MAX_OUTPUT: usize = 1024 * 1024;

/// Namespaces in the order they are joined: user first (it grants the
/// rights for the others), mount last (it changes the root).
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Open the init's namespaces that differ from ours.
fn open_namespaces(init: Pid) -> Result<Vec<(File, CloneFlags)>> {
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{init}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            continue;
        };
        if t.ino() == o.ino() && t.dev() == o.dev() {
            continue;
        }
        let f = File::open(&theirs).map_err(|e| ShimError::io("open", &theirs, e))?;
        out.push((f, flag));
    }
    Ok(out)
}

/// What to run, for [`spawn_exec`] and [`exec_captured`].
#[derive(Debug, Clone, Copy)]
pub struct ExecSpec<'a> {
    pub args: &'a [String],
    /// Environment; the container's when `None`.
    pub env: Option<&'a [String]>,
    /// Working directory; the container's when `None`.
    pub cwd: Option<&'a Path>,
    /// stdin is a terminal: make it the controlling one of a new session.
    pub tty: bool,
}

fn exec_in_container(plan: &Plan, spec: &ExecSpec<'_>) -> Result<Infallible> {
    let ExecSpec {
        args,
        env,
        cwd,
        tty,
    } = *spec;
    if tty {
        nix::unistd::setsid().ctx("setsid", "exec")?;
        // SAFETY: TIOCSCTTY on our stdin.
        Errno::result(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })
            .ctx("ioctl(TIOCSCTTY)", "stdin")?;
    }
    let pr = &plan.process;
    if let Some(adj) = pr.oom_score_adj {
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    for r in &pr.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: valid resource and struct.
        let rc = unsafe { libc::setrlimit(r.resource as libc::__rlimit_resource_t, &lim) };
        Errno::result(rc).ctx("setrlimit", r.name)?;
    }
    apply_user_and_caps(plan)?;
    // After the user switch, which clears it: die with the helper.
    prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        "PR_SET_PDEATHSIG",
    )?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        pr.umask.unwrap_or(0o022),
    ));
    let cwd = cwd.unwrap_or(&pr.cwd);
    nix::unistd::chdir(cwd).ctx("chdir", cwd.display())?;
    if pr.no_new_privileges {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")?;
    }
    let mut env: Vec<String> = env
        .map(<[String]>::to_vec)
        .unwrap_or_else(|| pr.env.clone());
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        env.push(format!("HOME={}", home_of(&passwd, pr.uid)));
    }
    let exe = find_executable(&args[0], &env)?;
    let cexe = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| ShimError::spec("exec.args[0]", "contains a NUL byte"))?;
    let cargs = to_cstrings("exec.args", args)?;
    let cenv = to_cstrings("exec.env", &env)?;
    reset_signals();
    cloexec_from_3();
    let e = nix::unistd::execve(&cexe, &cargs, &cenv).unwrap_err();
    Err(ShimError::sys("execve", exe.display(), e))
}

fn child_side(
    init: Pid,
    ns: &[(File, CloneFlags)],
    cgroup: Option<&Cgroup>,
    stdio: [i32; 3],
    plan: &Plan,
    spec: &ExecSpec<'_>,
) -> Result<i32> {
    for (target, fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 of our descriptors onto 0, 1, 2.
        Errno::result(unsafe { libc::dup2(*fd, target as i32) }).ctx("dup2", target)?;
    }
    if let Some(c) = cgroup {
        c.add(nix::unistd::getpid())?;
    }
    for (f, flag) in ns {
        nix::sched::setns(f.as_fd(), *flag).ctx("setns", format!("{flag:?} of pid {init}"))?;
    }
    // The helper only waits: keep nothing but stdio, or it would hold
    // the shim's copies of pipes (a stdin that never reaches EOF).
    // SAFETY: closes descriptors this process no longer uses.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    // The PID namespace applies to children: fork once more.
    // SAFETY: single-threaded process.
    match unsafe { nix::unistd::fork() }.ctx("fork", "exec")? {
        ForkResult::Child => {
            let e = match exec_in_container(plan, spec) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            eprintln!("skiff-shim exec: {e}");
            // SAFETY: leave the forked child.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, c)) => return Ok(c),
                Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(ShimError::sys("waitpid", child, e)),
            }
        },
    }
}

/// Fork the exec helper: it joins the container and forks the process
/// that execs, waits for it and exits with its code (128 + signal when
/// killed). `stdio` becomes the process's 0, 1 and 2. Returns the
/// helper's pid.
pub fn spawn_exec(
    init: Pid,
    plan: &Plan,
    cgroup: Option<&Cgroup>,
    spec: &ExecSpec<'_>,
    stdio: [RawFd; 3],
) -> Result<Pid> {
    if spec.args.is_empty() {
        return Err(ShimError::spec("exec.args", "empty"));
    }
    let ns = open_namespaces(init)?;
    // SAFETY: the shim is single-threaded.
    match unsafe { nix::unistd::fork() }.ctx("fork", "exec")? {
        ForkResult::Child => {
            let code = match child_side(init, &ns, cgroup, stdio, plan, spec) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("skiff-shim exec: {e}");
                    126
                }
            };
            // SAFETY: leave the forked child.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Run a process in the container of `init` and collect its output until
/// it exits or `deadline` passes (then it is killed).
pub fn exec_captured(
    init: Pid,
    plan: &Plan,
    cgroup: Option<&Cgroup>,
    spec: &ExecSpec<'_>,
    deadline: Instant,
) -> Result<ExecResult> {
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ctx("pipe2", "exec stdout")?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ctx("pipe2", "exec stderr")?;
    let null = File::open("/dev/null").map_err(|e| ShimError::io("open", "/dev/null", e))?;
    let stdio = [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
    let child = spawn_exec(init, plan, cgroup, spec, stdio)?;
    drop((out_w, err_w, null));

    let mut res = ExecResult::default();
    let mut open: Vec<(OwnedFd, Vec<u8>)> = vec![(out_r, Vec::new()), (err_r, Vec::new())];
    let mut done: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut idx: Vec<usize> = vec![0, 1];
    let mut buf = vec![0u8; 64 * 1024];
    while !open.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            res.timed_out = true;
            let _ = kill(child, Signal::SIGKILL);
            break;
        }
        let ms = left.as_millis().min(60_000) as u16;
        let mut fds: Vec<PollFd> = open
            .iter()
            .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Err(Errno::EINTR) | Ok(0) => continue,
            Err(e) => return Err(ShimError::sys("poll", "exec output", e)),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().map(|r| !r.is_empty()).unwrap_or(false))
            .collect();
        drop(fds);
        for i in (0..open.len()).rev() {
            if !ready[i] {
                continue;
            }
            match nix::unistd::read(open[i].0.as_raw_fd(), &mut buf) {
                Ok(0) | Err(Errno::EBADF) => {
                    let (_, data) = open.remove(i);
                    done.push((idx.remove(i), data));
                }
                Ok(n) => {
                    let data = &mut open[i].1;
                    let room = MAX_OUTPUT.saturating_sub(data.len());
                    data.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(_) => {}
            }
        }
    }
    for ((_, data), i) in open.into_iter().zip(idx) {
        done.push((i, data));
    }
    for (i, data) in done {
        let text = String::from_utf8_lossy(&data).into_owned();
        if i == 0 {
            res.stdout = text;
        } else {
            res.stderr = text;
        }
    }
    res.exit_code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(ShimError::sys("waitpid", child, e)),
        }
    };
    Ok(res)
}
