//! The process chain. The shim clones the container's init directly with
//! the new namespaces (so that with a new PID namespace the init is PID 1 and
//! the shim stays its parent), then talks to it over a SEQPACKET socketpair:
//!
//! ```text
//! shim                                   init (child)
//!  clone(NEW* flags) ───────────────────▶ wait for 'M'
//!  write uid/gid maps, cgroup placement
//!  send 'M' ────────────────────────────▶ setns joins, unshare the rest,
//!                                         rlimits, oom_score_adj, rootfs,
//!                                         pivot_root, masks, user, caps
//!  ◀──────────────────────────────────── 'R' ready (or 'E' + error text)
//!  (created; `start` arrives)
//!  send 'S' ────────────────────────────▶ execve; the socket is CLOEXEC, so
//!  EOF = exec done, 'E' = exec failed ◀── the shim sees EOF on success
//! ```
//!
//! The shim is single-threaded, so the child may allocate and use the
//! standard library between clone and exec.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::waitpid;
use nix::unistd::{Gid, Pid, Uid};

use crate::error::{Result, ShimError, SysContext};
use crate::plan::{CapsPlan, Plan};
use crate::rootfs;
use crate::syscall::LinuxSyscall;

const MSG_MAPPED: u8 = b'M';
const MSG_READY: u8 = b'R';
const MSG_START: u8 = b'S';
const MSG_ERROR: u8 = b'E';
const MSG_CONSOLE: u8 = b'T';

/// Flags given to clone(2) and flags the child unshares itself.
pub fn split_namespace_flags(plan: &Plan) -> (CloneFlags, CloneFlags) {
    let ns = &plan.namespaces;
    if ns.joins(CloneFlags::CLONE_NEWUSER).is_some() {
        // New namespaces must be owned by the joined user namespace: create
        // them after setns, from the child.
        (
            ns.new & CloneFlags::CLONE_NEWPID,
            ns.new - CloneFlags::CLONE_NEWPID,
        )
    } else {
        (ns.new, CloneFlags::empty())
    }
}

/// The running (not yet exec'd) init process seen from the shim.
#[derive(Debug)]
pub struct InitHandle {
    pub pid: Pid,
    sock: OwnedFd,
    /// Master side of the container's terminal (process.terminal).
    pub console: Option<OwnedFd>,
}

fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> Result<()> {
    loop {
        match nix::unistd::write(fd, msg) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ShimError::sys("write", "sync socket", e)),
        }
    }
}

/// Receive one message; `None` on EOF.
fn recv(fd: BorrowedFd<'_>) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 8192];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ShimError::sys("read", "sync socket", e)),
        }
    }
}

/// Receive one message and the descriptor passed with it, if any.
fn recv_with_fd(fd: BorrowedFd<'_>) -> Result<(Option<Vec<u8>>, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; 8192];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut passed = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for f in fds {
                                // SAFETY: the kernel just gave us this descriptor.
                                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                                if passed.is_none() {
                                    passed = Some(owned);
                                }
                            }
                        }
                    }
                }
                let n = msg.bytes;
                if n == 0 {
                    return Ok((None, passed));
                }
                buf.truncate(n);
                return Ok((Some(buf), passed));
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ShimError::sys("recvmsg", "sync socket", e)),
        }
    }
}

/// Send a message with a descriptor attached.
pub(crate) fn send_fd(sock: RawFd, msg: &[u8], fd: RawFd, what: &str) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(msg)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::empty(), None)
        .map(|_| ())
        .ctx("sendmsg", what)
}

/// Inside the container, after its /dev/pts is mounted: a new terminal
/// from the container's own devpts, its slave bound on /dev/console and
/// made the controlling terminal and stdio; the master goes to the shim.
fn setup_console(sock: BorrowedFd<'_>) -> Result<()> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx("open", "/dev/ptmx")?;
    grantpt(&master).ctx("grantpt", "/dev/ptmx")?;
    unlockpt(&master).ctx("unlockpt", "/dev/ptmx")?;
    let name = ptsname_r(&master).ctx("ptsname", "/dev/ptmx")?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .ctx("open", &name)?;
    // SAFETY: fresh descriptor.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let console = Path::new("/dev/console");
    if std::fs::symlink_metadata(console).is_err() {
        std::fs::File::create(console).map_err(|e| ShimError::io("create", console, e))?;
    }
    nix::mount::mount(
        Some(name.as_str()),
        console,
        Some("bind"),
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx("mount", format!("{name} on /dev/console"))?;
    send_fd(
        sock.as_raw_fd(),
        &[MSG_CONSOLE],
        master.as_raw_fd(),
        "console master",
    )?;
    drop(master);
    nix::unistd::setsid().ctx("setsid", "console")?;
    // SAFETY: TIOCSCTTY on our own terminal descriptor.
    Errno::result(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) })
        .ctx("ioctl(TIOCSCTTY)", &name)?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        Errno::result(unsafe { libc::dup2(slave.as_raw_fd(), target) }).ctx("dup2", &name)?;
    }
    Ok(())
}

fn write_id_map(pid: Pid, file: &str, maps: &[crate::plan::IdMap]) -> Result<()> {
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect();
    let p = PathBuf::from(format!("/proc/{pid}/{file}"));
    std::fs::write(&p, text).map_err(|e| ShimError::io("write", p, e))
}

/// Raw clone(2) without a new stack: the child continues on a copy of the
/// parent's stack, exactly like fork(2), and returns 0.
fn clone_fork(flags: CloneFlags) -> Result<Option<Pid>> {
    let f = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: with a NULL stack clone behaves like fork; the process is
    // single-threaded, so the child may keep running Rust code.
    let r = unsafe { libc::syscall(libc::SYS_clone, f, 0usize, 0usize, 0usize, 0usize) };
    let r = Errno::result(r).ctx("clone", format!("{flags:?}"))?;
    Ok(if r == 0 {
        None
    } else {
        Some(Pid::from_raw(r as i32))
    })
}

fn kill_and_reap(pid: Pid) {
    let _ = kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
}

/// Clone the init process and run it up to the point where it waits for
/// `start`. `place` runs in the shim after the clone and before the child
/// sets anything up (cgroup placement).
///
/// `stdio`, when given, becomes the init's descriptors 0, 1 and 2;
/// otherwise it inherits the shim's.
pub fn spawn(
    plan: &Plan,
    stdio: Option<[RawFd; 3]>,
    place: &mut dyn FnMut(Pid) -> Result<()>,
) -> Result<InitHandle> {
    let (clone_flags, _) = split_namespace_flags(plan);
    let (parent_sock, child_sock) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx("socketpair", "AF_UNIX SOCK_SEQPACKET")?;

    // Joining a PID namespace only affects children: do it here, around
    // the clone, and restore afterwards.
    let mut restore_pid_ns = None;
    if let Some(p) = plan.namespaces.joins(CloneFlags::CLONE_NEWPID) {
        let own = File::open("/proc/self/ns/pid")
            .map_err(|e| ShimError::io("open", "/proc/self/ns/pid", e))?;
        let target = File::open(p).map_err(|e| ShimError::io("open", p, e))?;
        nix::sched::setns(target.as_fd(), CloneFlags::CLONE_NEWPID).ctx("setns", p.display())?;
        restore_pid_ns = Some(own);
    }

    let forked = clone_fork(clone_flags);
    if let Some(own) = &restore_pid_ns {
        if !matches!(forked, Ok(None)) {
            let _ = nix::sched::setns(own.as_fd(), CloneFlags::CLONE_NEWPID);
        }
    }
    let pid = match forked? {
        None => {
            drop(parent_sock);
            child_main(plan, stdio, child_sock)
        }
        Some(pid) => pid,
    };
    drop(child_sock);

    let setup = (|| -> Result<()> {
        if plan.namespaces.creates(CloneFlags::CLONE_NEWUSER) {
            write_id_map(pid, "uid_map", &plan.uid_mappings)?;
            write_id_map(pid, "gid_map", &plan.gid_mappings)?;
        }
        place(pid)?;
        send(parent_sock.as_fd(), &[MSG_MAPPED])
    })();
    if let Err(e) = setup {
        kill_and_reap(pid);
        return Err(e);
    }
    let mut console = None;
    let mut reply = recv_with_fd(parent_sock.as_fd());
    if let Ok((Some(m), fd)) = &mut reply {
        if m.first() == Some(&MSG_CONSOLE) {
            console = fd.take();
            reply = recv_with_fd(parent_sock.as_fd());
        }
    }
    match reply.map(|(m, _)| m) {
        Ok(Some(m)) if m.first() == Some(&MSG_READY) => Ok(InitHandle {
            pid,
            sock: parent_sock,
            console,
        }),
        Ok(Some(m)) if m.first() == Some(&MSG_ERROR) => {
            kill_and_reap(pid);
            Err(ShimError::Init(
                String::from_utf8_lossy(&m[1..]).into_owned(),
            ))
        }
        Ok(_) => {
            kill_and_reap(pid);
            Err(ShimError::Init("init exited during setup".into()))
        }
        Err(e) => {
            kill_and_reap(pid);
            Err(e)
        }
    }
}

impl InitHandle {
    /// Let the init exec the container process; returns once it has
    /// exec'd (or with the reason it could not).
    pub fn start(self) -> Result<()> {
        send(self.sock.as_fd(), &[MSG_START])?;
        match recv(self.sock.as_fd())? {
            None => Ok(()),
            Some(m) if m.first() == Some(&MSG_ERROR) => Err(ShimError::Init(
                String::from_utf8_lossy(&m[1..]).into_owned(),
            )),
            Some(_) => Err(ShimError::Init("unexpected message from init".into())),
        }
    }
}

// ---------------------------------------------------------------- child side

fn child_main(plan: &Plan, stdio: Option<[RawFd; 3]>, sock: OwnedFd) -> ! {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(fds) = stdio {
            for (target, fd) in fds.iter().enumerate() {
                // SAFETY: dup2 of descriptors we own onto 0, 1, 2.
                let rc = unsafe { libc::dup2(*fd, target as i32) };
                Errno::result(rc).ctx("dup2", format!("fd {fd} to {target}"))?;
            }
        }
        init(plan, sock.as_fd())
    }));
    let msg = match r {
        Ok(Ok(never)) => match never {},
        Ok(Err(e)) => e.to_string(),
        Err(_) => "panic in container init".to_string(),
    };
    let mut m = vec![MSG_ERROR];
    m.extend_from_slice(msg.as_bytes());
    let _ = send(sock.as_fd(), &m);
    // SAFETY: leaving the child without running the parent's atexit handlers.
    unsafe { libc::_exit(1) }
}

fn wait_for(sock: BorrowedFd<'_>, what: u8) -> Result<()> {
    match recv(sock)? {
        Some(m) if m.first() == Some(&what) => Ok(()),
        Some(_) => Err(ShimError::Init("unexpected message from shim".into())),
        // The shim went away: nothing left to do.
        None => unsafe { libc::_exit(1) },
    }
}

fn become_root() -> Result<()> {
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .ctx("setresgid", 0)?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).ctx("setresuid", 0)
}

pub(crate) fn prctl(op: libc::c_int, a: libc::c_ulong, what: &str) -> Result<()> {
    // SAFETY: plain prctl with integer arguments.
    let r = unsafe {
        libc::prctl(
            op,
            a,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    Errno::result(r).map(|_| ()).ctx("prctl", what)
}

fn cap_mask(set: &caps::CapsHashSet) -> u64 {
    set.iter().fold(0u64, |m, c| m | c.bitmask())
}

/// Effective, permitted and inheritable in one capset(2), so that the
/// kernel checks them against the sets before the call.
fn capset(c: &CapsPlan) -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let (e, p, i) = (
        cap_mask(&c.effective),
        cap_mask(&c.permitted),
        cap_mask(&c.inheritable),
    );
    let mut hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        Data {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        Data {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: header and two data words laid out as the kernel expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
    Errno::result(r)
        .map(|_| ())
        .ctx("capset", format!("eff={e:#x} prm={p:#x} inh={i:#x}"))
}

pub(crate) fn apply_user_and_caps(plan: &Plan) -> Result<()> {
    let pr = &plan.process;
    if let Some(c) = &pr.caps {
        for cap in caps::read(None, caps::CapSet::Bounding)
            .map_err(|e| ShimError::Init(format!("read bounding set: {e}")))?
        {
            if !c.bounding.contains(&cap) {
                prctl(
                    libc::PR_CAPBSET_DROP,
                    cap.index() as libc::c_ulong,
                    "PR_CAPBSET_DROP",
                )?;
            }
        }
    }
    prctl(libc::PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")?;
    let groups: Vec<Gid> = pr
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).ctx("setgroups", format!("{:?}", pr.additional_gids))?;
    let g = Gid::from_raw(pr.gid);
    nix::unistd::setresgid(g, g, g).ctx("setresgid", pr.gid)?;
    let u = Uid::from_raw(pr.uid);
    nix::unistd::setresuid(u, u, u).ctx("setresuid", pr.uid)?;
    prctl(libc::PR_SET_KEEPCAPS, 0, "PR_SET_KEEPCAPS")?;
    if let Some(c) = &pr.caps {
        capset(c)?;
        for cap in &c.ambient {
            // Like runc: a capability that is not both permitted and
            // inheritable cannot be ambient; that is not an error.
            let _ = nix::errno::Errno::result(unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap.index() as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            });
        }
    }
    Ok(())
}

/// Give the new program default signal dispositions and an empty mask:
/// ignored signals (the Rust runtime ignores SIGPIPE) and the shim's
/// blocked SIGCHLD would otherwise survive execve.
/// Mark every descriptor above stderr close-on-exec, so that nothing the
/// shim's caller leaked reaches the container (runc does the same).
pub(crate) fn cloexec_from_3() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags here.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r != 0 {
        // Older kernels: walk /proc/self/fd.
        if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = rd
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2)
                .collect();
            for fd in fds {
                // SAFETY: setting FD_CLOEXEC on a descriptor number.
                unsafe {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
    }
}

pub(crate) fn reset_signals() {
    // The kernel's struct sigaction; the raw call also reaches the two
    // real-time signals glibc reserves for itself.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: 0, // SIG_DFL
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a valid sigaction for SIG_DFL; no old action requested.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Resolve the program like execvp would, with PATH from the container's
/// environment.
pub fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
            && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        if is_exec(&p) {
            return Ok(p);
        }
        return Err(ShimError::Init(format!(
            "process.args[0] {arg0}: not an executable file in the container"
        )));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(arg0);
        if is_exec(&p) {
            return Ok(p);
        }
    }
    Err(ShimError::Init(format!(
        "process.args[0] {arg0}: executable file not found in $PATH ({path})"
    )))
}

fn init(plan: &Plan, sock: BorrowedFd<'_>) -> Result<Infallible> {
    wait_for(sock, MSG_MAPPED)?;
    let ns = &plan.namespaces;
    if ns.creates(CloneFlags::CLONE_NEWUSER) {
        become_root()?;
    }
    for (flag, path) in &ns.join {
        if *flag == CloneFlags::CLONE_NEWPID {
            continue;
        }
        let f = File::open(path).map_err(|e| ShimError::io("open", path, e))?;
        nix::sched::setns(f.as_fd(), *flag).ctx("setns", path.display())?;
        if *flag == CloneFlags::CLONE_NEWUSER {
            become_root()?;
        }
    }
    let (_, unshare) = split_namespace_flags(plan);
    if !unshare.is_empty() {
        nix::sched::unshare(unshare).ctx("unshare", format!("{unshare:?}"))?;
    }
    let in_userns =
        ns.creates(CloneFlags::CLONE_NEWUSER) || ns.joins(CloneFlags::CLONE_NEWUSER).is_some();

    let pr = &plan.process;
    if let Some(adj) = pr.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| ShimError::io("write", "/proc/self/oom_score_adj", e))?;
    }
    for r in &pr.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: valid resource number from the plan and a valid struct.
        let rc = unsafe { libc::setrlimit(r.resource as libc::__rlimit_resource_t, &lim) };
        Errno::result(rc).ctx("setrlimit", r.name)?;
    }

    let sys = LinuxSyscall;
    // The plan guarantees a mount namespace of the container's own.
    rootfs::prepare_rootfs(&sys, plan, in_userns)?;
    if plan.process.terminal {
        setup_console(sock)?;
    }
    rootfs::finish_rootfs(&sys, plan)?;
    if !pr.cwd.exists() {
        // Like runc, create a missing working directory (as root, before
        // the user switch); a read-only rootfs makes this fail later at chdir.
        let _ = std::fs::create_dir_all(&pr.cwd);
    }

    apply_user_and_caps(plan)?;
    let mask = pr.umask.unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    nix::unistd::chdir(&pr.cwd).ctx("chdir", format!("process.cwd {}", pr.cwd.display()))?;
    if pr.no_new_privileges {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")?;
    }

    let mut env = pr.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        // Like runc and crun: HOME from the container's /etc/passwd.
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        env.push(format!("HOME={}", home_of(&passwd, pr.uid)));
    }
    let exe = find_executable(&pr.args[0], &env)?;
    let cexe = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| ShimError::spec("process.args[0]", "contains a NUL byte"))?;
    let args = to_cstrings("process.args", &pr.args)?;
    let env = to_cstrings("process.env", &env)?;

    send(sock, &[MSG_READY])?;
    wait_for(sock, MSG_START)?;
    reset_signals();
    cloexec_from_3();
    let e = nix::unistd::execve(&cexe, &args, &env).unwrap_err();
    Err(ShimError::sys("execve", exe.display(), e))
}

/// The home directory of `uid` in a passwd file, "/" when unknown.
pub fn home_of(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[2].parse::<u32>().ok() == Some(uid))
        .map(|f| f[5].to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

pub(crate) fn to_cstrings(field: &str, v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| ShimError::spec(field, format!("{s:?} contains a NUL byte")))
        })
        .collect()
}
