//! `skiff-shim`: runc's command line over the skiff-shim library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use skiff_shim::container;
use skiff_shim::Options;

const USAGE: &str = "usage: skiff-shim [--root DIR] [--cgroup-root DIR] [--systemd-cgroup] COMMAND
commands:
  run    [--bundle|-b DIR] [LOG] ID  create, start, wait, delete; exits with the container's code
  create [--bundle|-b DIR] [--pid-file FILE] [--console-socket SOCK] [--stdin [--stdin-once]] [LOG] ID
                                   --stdin: the container reads a pipe the shim holds
                                   open for attach clients (`attach`), else /dev/null
  start  ID
  state  ID
  list                               all containers under --root, as JSON
  kill   [--all|-a] ID [SIGNAL]     (default SIGTERM)
  delete [--force|-f] ID
  exec   [-i] [-t] [--timeout SECS] ID CMD [ARG...]
                                   run CMD in the container (via the shim's socket);
                                   -i streams stdin, -t gives it a terminal
LOG: --log-path FILE [--log-max-size BYTES] [--log-max-files N]
     container stdout/stderr to FILE in CRI format (default: inherited stdio)";

struct Args {
    opts: Options,
    cmd: String,
    rest: Vec<String>,
}

fn parse_global(argv: Vec<String>) -> anyhow::Result<Args> {
    let mut opts = Options::default();
    let mut it = argv.into_iter().skip(1).peekable();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |n: &str| -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().with_context(|| format!("{n} needs a value")),
            }
        };
        match name.as_str() {
            "--root" => opts.root = PathBuf::from(value("--root")?),
            "--cgroup-root" => opts.cgroup_root = Some(PathBuf::from(value("--cgroup-root")?)),
            "--systemd-cgroup" => opts.systemd_cgroup = true,
            // Accepted for runc compatibility, without effect.
            "--log" | "--log-format" => {
                value(&name)?;
            }
            "--debug" => {}
            "-h" | "--help" | "help" => bail!("{USAGE}"),
            _ if a.starts_with('-') => bail!("unknown option {a}\n{USAGE}"),
            _ => {
                return Ok(Args {
                    opts,
                    cmd: a,
                    rest: it.collect(),
                })
            }
        }
    }
    bail!("missing command\n{USAGE}")
}

/// Parsed command options: (flags with values, bare flags, positionals).
type CmdArgs = (Vec<(String, String)>, Vec<String>, Vec<String>);

/// Split a command's arguments into options and positionals.
fn parse_cmd(rest: Vec<String>, with_value: &[&str], bare: &[&str]) -> anyhow::Result<CmdArgs> {
    let mut vals = Vec::new();
    let mut flags = Vec::new();
    let mut pos = Vec::new();
    let mut it = rest.into_iter();
    while let Some(a) = it.next() {
        if a.starts_with('-') && a.len() > 1 && pos.is_empty() {
            let (n, inline) = match a.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (a.clone(), None),
            };
            if with_value.contains(&n.as_str()) {
                let v = match inline {
                    Some(v) => v,
                    None => it.next().with_context(|| format!("{n} needs a value"))?,
                };
                vals.push((n, v));
            } else if bare.contains(&n.as_str()) {
                flags.push(n);
            } else {
                bail!("unknown option {a}\n{USAGE}");
            }
        } else {
            pos.push(a);
        }
    }
    Ok((vals, flags, pos))
}

fn one_id(pos: &[String]) -> anyhow::Result<&str> {
    match pos {
        [id] => Ok(id),
        _ => bail!("expected exactly one container id\n{USAGE}"),
    }
}

fn bundle_of(vals: &[(String, String)]) -> PathBuf {
    vals.iter()
        .rev()
        .find(|(n, _)| n == "--bundle" || n == "-b")
        .map(|(_, v)| PathBuf::from(v))
        .unwrap_or_else(|| PathBuf::from("."))
}

const LOG_OPTS: &[&str] = &["--log-path", "--log-max-size", "--log-max-files"];

/// Apply --log-path / --log-max-size / --log-max-files.
fn with_log_opts(o: &Options, vals: &[(String, String)]) -> anyhow::Result<Options> {
    let mut o = o.clone();
    for (n, v) in vals {
        match n.as_str() {
            "--log-path" => o.log_path = Some(PathBuf::from(v)),
            "--console-socket" => o.console_socket = Some(PathBuf::from(v)),
            "--log-max-size" => {
                o.log_rotation.max_size =
                    v.parse().with_context(|| format!("--log-max-size {v}"))?
            }
            "--log-max-files" => {
                o.log_rotation.max_files =
                    v.parse().with_context(|| format!("--log-max-files {v}"))?
            }
            _ => {}
        }
    }
    Ok(o)
}

fn real_main() -> anyhow::Result<i32> {
    let a = parse_global(std::env::args().collect())?;
    let o = &a.opts;
    match a.cmd.as_str() {
        "run" => {
            let (v, _, p) = parse_cmd(a.rest, &[&["--bundle", "-b"][..], LOG_OPTS].concat(), &[])?;
            let o = with_log_opts(o, &v)?;
            Ok(container::run(&o, one_id(&p)?, &bundle_of(&v))?)
        }
        "create" => {
            let (v, f, p) = parse_cmd(
                a.rest,
                &[
                    &["--bundle", "-b", "--pid-file", "--console-socket"][..],
                    LOG_OPTS,
                ]
                .concat(),
                &["--stdin", "--stdin-once"],
            )?;
            let mut o = with_log_opts(o, &v)?;
            o.open_stdin = f.iter().any(|n| n == "--stdin");
            o.stdin_once = f.iter().any(|n| n == "--stdin-once");
            if o.stdin_once && !o.open_stdin {
                bail!("--stdin-once needs --stdin");
            }
            let o = &o;
            let pid_file = v
                .iter()
                .find(|(n, _)| n == "--pid-file")
                .map(|(_, f)| PathBuf::from(f));
            container::create(o, one_id(&p)?, &bundle_of(&v), pid_file.as_deref())?;
            Ok(0)
        }
        "start" => {
            let (_, _, p) = parse_cmd(a.rest, &[], &[])?;
            container::start(o, one_id(&p)?)?;
            Ok(0)
        }
        "list" => {
            let (_, _, p) = parse_cmd(a.rest, &[], &[])?;
            if !p.is_empty() {
                bail!("list takes no arguments");
            }
            println!("{}", serde_json::to_string_pretty(&container::list(o)?)?);
            Ok(0)
        }
        "state" => {
            let (_, _, p) = parse_cmd(a.rest, &[], &[])?;
            let r = container::state(o, one_id(&p)?)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(0)
        }
        "kill" => {
            let (_, f, p) = parse_cmd(a.rest, &[], &["--all", "-a"])?;
            let (id, sig) = match p.as_slice() {
                [id] => (id.as_str(), "SIGTERM"),
                [id, s] => (id.as_str(), s.as_str()),
                _ => bail!("usage: kill [--all] ID [SIGNAL]"),
            };
            let sig = container::parse_signal(sig)?;
            container::kill_container(o, id, sig, !f.is_empty())?;
            Ok(0)
        }
        "delete" => {
            let (_, f, p) = parse_cmd(a.rest, &[], &["--force", "-f"])?;
            container::delete(o, one_id(&p)?, !f.is_empty())?;
            Ok(0)
        }
        "exec" => {
            // exec [--timeout SECS] ID CMD [ARG…]: through the shim's control socket.
            let mut rest = a.rest.into_iter().peekable();
            let mut timeout = 10u64;
            let (mut interactive, mut tty) = (false, false);
            while let Some(f) = rest.peek() {
                match f.as_str() {
                    "-i" | "--interactive" => {
                        interactive = true;
                        rest.next();
                    }
                    "-t" | "--tty" => {
                        tty = true;
                        rest.next();
                    }
                    "-it" | "-ti" => {
                        (interactive, tty) = (true, true);
                        rest.next();
                    }
                    "--timeout" => {
                        rest.next();
                        let v = rest.next().context("--timeout needs a value")?;
                        timeout = v.parse().with_context(|| format!("--timeout {v}"))?;
                    }
                    "--" => {
                        rest.next();
                    }
                    _ => break,
                }
            }
            let id = rest.next().context("exec needs an id")?;
            let args: Vec<String> = rest.filter(|a| a != "--").collect();
            if args.is_empty() {
                bail!("exec needs a command");
            }
            if interactive || tty {
                let req = skiff_shim::supervisor::Request::Exec {
                    args,
                    env: None,
                    cwd: None,
                    timeout_ms: None,
                    stream: true,
                    tty,
                };
                let mut st = skiff_shim::supervisor::exec_stream(&o.root, &id, &req)?;
                relay(std::mem::take(&mut st.fds), tty, interactive)?;
                return Ok(st.wait()?);
            }
            let req = skiff_shim::supervisor::Request::Exec {
                args,
                env: None,
                cwd: None,
                timeout_ms: Some(timeout * 1000),
                stream: false,
                tty: false,
            };
            let r = skiff_shim::supervisor::request(
                &o.root,
                &id,
                &req,
                std::time::Duration::from_secs(timeout + 5),
            )?;
            if !r.ok {
                bail!("{}", r.error.unwrap_or_default());
            }
            let e = r.exec.context("no exec result")?;
            print!("{}", e.stdout);
            eprint!("{}", e.stderr);
            if e.timed_out {
                bail!("timed out after {timeout}s");
            }
            Ok(e.exit_code)
        }
        other => bail!("unknown command {other}\n{USAGE}"),
    }
}

/// Copy our stdin to the process and its output to our stdout/stderr
/// until its output ends. `fds` is [stdin, stdout, stderr] or, with a
/// terminal, [master].
fn relay(mut fds: Vec<std::os::fd::OwnedFd>, tty: bool, interactive: bool) -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Write;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
    if fds.is_empty() || (!tty && fds.len() < 3) {
        bail!("shim passed {} descriptors", fds.len());
    }
    // outputs: (fd, is_stderr); input: where our stdin goes.
    let (mut input, outputs): (Option<OwnedFd>, Vec<(OwnedFd, bool)>) = if tty {
        let m = fds.remove(0);
        let dup = m.try_clone()?;
        (interactive.then_some(dup), vec![(m, false)])
    } else {
        let err = fds.remove(2);
        let out = fds.remove(1);
        let inp = fds.remove(0);
        // Not interactive: the process sees EOF on stdin at once.
        (interactive.then_some(inp), vec![(out, false), (err, true)])
    };
    let mut open = outputs;
    let mut buf = vec![0u8; 32 * 1024];
    // SAFETY: fd 0 lives for the whole program.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    while !open.is_empty() {
        let mut pfds: Vec<PollFd> = open
            .iter()
            .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        if input.is_some() {
            pfds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        match poll(&mut pfds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("poll: {e}"),
            Ok(_) => {}
        }
        let ready: Vec<bool> = pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(pfds);
        if input.is_some() && ready.get(open.len()).copied().unwrap_or(false) {
            match nix::unistd::read(0, &mut buf) {
                // EOF: close the process's stdin (a terminal stays open).
                Ok(0) | Err(_) => input = None,
                Ok(n) => {
                    if let Some(i) = &input {
                        let _ = nix::unistd::write(i, &buf[..n]);
                    }
                }
            }
        }
        for i in (0..open.len()).rev() {
            if !ready[i] {
                continue;
            }
            match nix::unistd::read(open[i].0.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => {
                    open.remove(i);
                }
                Ok(n) => {
                    if open[i].1 {
                        let _ = std::io::stderr().write_all(&buf[..n]);
                    } else {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("skiff-shim: {e:#}");
            ExitCode::from(1)
        }
    }
}
