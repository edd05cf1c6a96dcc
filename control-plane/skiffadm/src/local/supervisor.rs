//! The local-mode supervisor: `skiffadm local-supervise`, a detached single-threaded daemon
//! (own session, pid file) that keeps skiff-server and skiff-agent running, restarting a
//! child that exits with a doubling delay. The restart policy is a small state machine driven
//! by an explicit clock and a [`Launcher`], so its tests use fake processes and fake time.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::layout::{Layout, Settings};
use super::{processes, LocalError};

/// Restart delays: `initial`, doubling up to `max`; a child that ran for `reset_after`
/// before exiting starts over at `initial`.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
    last: Option<Duration>,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            reset_after,
            last: None,
        }
    }

    /// The delay before the next start of a child that exited after running `ran_for`.
    pub fn after_exit(&mut self, ran_for: Duration) -> Duration {
        let next = match self.last {
            Some(prev) if ran_for < self.reset_after => (prev * 2).min(self.max),
            _ => self.initial,
        };
        self.last = Some(next);
        next
    }
}

/// Starts, polls and stops the supervised processes.
pub trait Launcher {
    type Child;
    fn start(&mut self, name: &str) -> Result<Self::Child, String>;
    /// `Some(description)` once the child has exited.
    fn exited(&mut self, name: &str, child: &mut Self::Child) -> Option<String>;
    fn stop(&mut self, name: &str, child: Self::Child);
}

enum State<C> {
    Running { child: C, since: Instant },
    Waiting { until: Instant },
    Held,
}

struct Slot<C> {
    name: String,
    state: State<C>,
    backoff: Backoff,
    restarts: u32,
}

/// What happened in one [`Supervisor::tick`], for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Started(String),
    StartFailed(String, String),
    Exited {
        name: String,
        how: String,
        restart_in: Duration,
    },
    Held(String),
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Started(n) => write!(f, "{n}: started"),
            Event::StartFailed(n, e) => write!(f, "{n}: could not start: {e}"),
            Event::Exited {
                name,
                how,
                restart_in,
            } => write!(
                f,
                "{name}: exited ({how}); restarting in {}s",
                restart_in.as_secs_f32()
            ),
            Event::Held(n) => write!(f, "{n}: stopped while held"),
        }
    }
}

pub struct Supervisor<L: Launcher> {
    launcher: L,
    slots: Vec<Slot<L::Child>>,
}

impl<L: Launcher> Supervisor<L> {
    /// Children in start order (and reverse stop order).
    pub fn new(launcher: L, names: &[&str], backoff: &Backoff, now: Instant) -> Self {
        let slots = names
            .iter()
            .map(|n| Slot {
                name: n.to_string(),
                state: State::Waiting { until: now },
                backoff: backoff.clone(),
                restarts: 0,
            })
            .collect();
        Supervisor { launcher, slots }
    }

    /// One round: reap exited children, schedule their restart, start those that are due and
    /// allowed (`may_run(name)`: e.g. the agent waits for the server's kubeconfig and stays
    /// stopped while an image is loaded), stop running ones that are no longer allowed.
    pub fn tick(&mut self, now: Instant, may_run: &dyn Fn(&str) -> bool) -> Vec<Event> {
        let mut events = Vec::new();
        for slot in &mut self.slots {
            let allowed = may_run(&slot.name);
            let state = std::mem::replace(&mut slot.state, State::Held);
            slot.state = match state {
                State::Running { mut child, since } => {
                    if let Some(how) = self.launcher.exited(&slot.name, &mut child) {
                        let restart_in = slot
                            .backoff
                            .after_exit(now.saturating_duration_since(since));
                        slot.restarts += 1;
                        events.push(Event::Exited {
                            name: slot.name.clone(),
                            how,
                            restart_in,
                        });
                        State::Waiting {
                            until: now + restart_in,
                        }
                    } else if !allowed {
                        self.launcher.stop(&slot.name, child);
                        events.push(Event::Held(slot.name.clone()));
                        State::Held
                    } else {
                        State::Running { child, since }
                    }
                }
                State::Waiting { until } if now >= until && allowed => {
                    Self::start(&mut self.launcher, slot, now, &mut events)
                }
                State::Held if allowed => Self::start(&mut self.launcher, slot, now, &mut events),
                other => other,
            };
        }
        events
    }

    fn start(
        launcher: &mut L,
        slot: &mut Slot<L::Child>,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> State<L::Child> {
        match launcher.start(&slot.name) {
            Ok(child) => {
                events.push(Event::Started(slot.name.clone()));
                State::Running { child, since: now }
            }
            Err(e) => {
                events.push(Event::StartFailed(slot.name.clone(), e));
                State::Waiting {
                    until: now + slot.backoff.after_exit(Duration::ZERO),
                }
            }
        }
    }

    #[cfg(test)]
    pub fn restarts(&self, name: &str) -> u32 {
        self.slots
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.restarts)
    }

    #[cfg(test)]
    pub fn is_running(&self, name: &str) -> bool {
        self.slots
            .iter()
            .any(|s| s.name == name && matches!(s.state, State::Running { .. }))
    }

    /// Stops every child, last started first.
    pub fn stop_all(&mut self) {
        for slot in self.slots.iter_mut().rev() {
            if let State::Running { child, .. } = std::mem::replace(&mut slot.state, State::Held) {
                self.launcher.stop(&slot.name, child);
            }
        }
    }
}

/// Real processes: command lines from [`processes`], output appended to `<root>/logs/<name>.log`,
/// pid in `<root>/run/<name>.pid`.
pub struct ProcessLauncher {
    pub layout: Layout,
    pub commands: BTreeMap<String, Vec<std::ffi::OsString>>,
    pub stop_timeout: Duration,
}

impl Launcher for ProcessLauncher {
    type Child = Child;

    fn start(&mut self, name: &str) -> Result<Child, String> {
        let argv = self
            .commands
            .get(name)
            .ok_or_else(|| format!("no command for {name}"))?;
        let log_path = self.layout.logs_dir().join(format!("{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err_log = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            // Plain log files, without terminal colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("{}: {e}", Path::new(&argv[0]).display()))?;
        let pid_path = self.layout.child_pid(name);
        std::fs::write(&pid_path, format!("{}\n", child.id()))
            .map_err(|e| format!("{}: {e}", pid_path.display()))?;
        Ok(child)
    }

    fn exited(&mut self, name: &str, child: &mut Child) -> Option<String> {
        match child.try_wait() {
            Ok(Some(status)) => {
                let _ = std::fs::remove_file(self.layout.child_pid(name));
                Some(status.to_string())
            }
            Ok(None) => None,
            Err(e) => Some(format!("cannot be waited for: {e}")),
        }
    }

    fn stop(&mut self, name: &str, mut child: Child) {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + self.stop_timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.layout.child_pid(name));
    }
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: nix::libc::c_int) {
    // Only an atomic store: the one thing that is safe in a signal handler.
    TERMINATE.store(true, Ordering::SeqCst);
}

fn log_line(msg: &str) {
    let ts = jiff::Timestamp::now();
    eprintln!("{ts} {msg}");
}

/// Reads a pid file; `Some(pid)` only if that process is alive and is what the file says
/// (its command line contains `marker`), so a reused pid is never mistaken for ours.
pub fn live_pid(path: &Path, marker: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(marker).then_some(pid)
}

/// The daemon: `skiffadm local-supervise --root-dir D`. Runs before any async runtime exists.
pub fn run_daemon(root: &Path) -> Result<(), LocalError> {
    let layout = Layout::new(root)?;
    let settings = Settings::require(&layout)?;
    // A session of its own: the daemon outlives the `skiffadm up` that started it and its
    // terminal.
    nix::unistd::setsid().map_err(|e| LocalError::Sys {
        what: "setsid".into(),
        source: e,
    })?;
    let pid_path = layout.supervisor_pid();
    if let Some(pid) = live_pid(&pid_path, "local-supervise") {
        if pid != std::process::id() as i32 {
            return Err(LocalError::Invalid(format!(
                "a supervisor (pid {pid}) already runs for {}",
                root.display()
            )));
        }
    }
    super::write_atomic(
        &pid_path,
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    )?;
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_terminate),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for sig in [
        nix::sys::signal::SIGTERM,
        nix::sys::signal::SIGINT,
        nix::sys::signal::SIGHUP,
    ] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::sigaction(sig, &action) }.map_err(|e| LocalError::Sys {
            what: format!("sigaction {sig}"),
            source: e,
        })?;
    }
    let commands = match settings.nodes {
        Some(n) => super::lab::commands(&layout, &settings, n),
        None => BTreeMap::from([
            (
                "server".to_string(),
                processes::server_command(&layout, &settings),
            ),
            (
                "agent".to_string(),
                processes::agent_command(&layout, &settings),
            ),
        ]),
    };
    // The server first (stopped last), then the relay, then the agents in node order.
    let mut names: Vec<String> = commands.keys().cloned().collect();
    names.sort_by_key(|n| match n.as_str() {
        "server" => (0, 0),
        "relay" => (1, 0),
        other => (
            2,
            other
                .strip_prefix("agent-")
                .and_then(|i| i.parse::<usize>().ok())
                .unwrap_or(0),
        ),
    });
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let launcher = ProcessLauncher {
        layout: layout.clone(),
        commands,
        stop_timeout: Duration::from_secs(10),
    };
    let backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(60),
        Duration::from_secs(120),
    );
    let mut sup = Supervisor::new(launcher, &names, &backoff, Instant::now());
    log_line(&format!(
        "supervisor {} started for {}",
        std::process::id(),
        root.display()
    ));
    let server_kubeconfig: PathBuf = layout.server_kubeconfig();
    let hold = layout.agent_hold();
    while !TERMINATE.load(Ordering::SeqCst) {
        let may_run = |name: &str| match name {
            "agent" => server_kubeconfig.exists() && !hold.exists(),
            n if n.starts_with("agent-") => server_kubeconfig.exists(),
            _ => true,
        };
        for event in sup.tick(Instant::now(), &may_run) {
            log_line(&event.to_string());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    log_line("stopping");
    sup.stop_all();
    let _ = std::fs::remove_file(&pid_path);
    log_line("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(8),
            Duration::from_secs(60),
        );
        let quick = Duration::from_secs(2);
        let delays: Vec<u64> = (0..6).map(|_| b.after_exit(quick).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 8, 8]);
        // A child that stayed up long enough starts over.
        assert_eq!(b.after_exit(Duration::from_secs(61)).as_secs(), 1);
        assert_eq!(b.after_exit(quick).as_secs(), 2);
    }

    /// A fake process table: which children are alive, what was started and stopped.
    #[derive(Default)]
    struct World {
        next_id: u32,
        alive: BTreeMap<u32, String>,
        log: Vec<String>,
        fail_start: Vec<String>,
    }

    struct Fake(Rc<RefCell<World>>);

    impl Launcher for Fake {
        type Child = u32;
        fn start(&mut self, name: &str) -> Result<u32, String> {
            let mut w = self.0.borrow_mut();
            if w.fail_start.iter().any(|n| n == name) {
                return Err("no such file".into());
            }
            w.next_id += 1;
            let id = w.next_id;
            w.alive.insert(id, name.into());
            w.log.push(format!("start {name}"));
            Ok(id)
        }
        fn exited(&mut self, _: &str, child: &mut u32) -> Option<String> {
            (!self.0.borrow().alive.contains_key(child)).then(|| "exit status: 1".into())
        }
        fn stop(&mut self, name: &str, child: u32) {
            let mut w = self.0.borrow_mut();
            w.alive.remove(&child);
            w.log.push(format!("stop {name}"));
        }
    }

    fn crash(world: &Rc<RefCell<World>>, name: &str) {
        let mut w = world.borrow_mut();
        let id = *w.alive.iter().find(|(_, n)| *n == name).unwrap().0;
        w.alive.remove(&id);
    }

    fn setup() -> (Rc<RefCell<World>>, Supervisor<Fake>, Instant) {
        let world = Rc::new(RefCell::new(World::default()));
        let t0 = Instant::now();
        let b = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(4),
            Duration::from_secs(30),
        );
        let sup = Supervisor::new(Fake(world.clone()), &["server", "agent"], &b, t0);
        (world, sup, t0)
    }

    #[test]
    fn restarts_a_crashed_child_after_its_backoff() {
        let (world, mut sup, t0) = setup();
        let all = |_: &str| true;
        sup.tick(t0, &all);
        assert!(sup.is_running("server") && sup.is_running("agent"));
        crash(&world, "agent");
        let ev = sup.tick(t0 + Duration::from_secs(5), &all);
        assert_eq!(
            ev,
            vec![Event::Exited {
                name: "agent".into(),
                how: "exit status: 1".into(),
                restart_in: Duration::from_secs(1)
            }]
        );
        // Not before the delay is over.
        assert!(sup.tick(t0 + Duration::from_millis(5500), &all).is_empty());
        assert_eq!(
            sup.tick(t0 + Duration::from_secs(6), &all),
            vec![Event::Started("agent".into())]
        );
        // Crashing right away again: the delay doubles.
        crash(&world, "agent");
        let ev = sup.tick(t0 + Duration::from_secs(7), &all);
        assert!(
            matches!(&ev[0], Event::Exited { restart_in, .. } if *restart_in == Duration::from_secs(2))
        );
        assert!(sup.tick(t0 + Duration::from_secs(8), &all).is_empty());
        assert_eq!(
            sup.tick(t0 + Duration::from_secs(9), &all),
            vec![Event::Started("agent".into())]
        );
        assert_eq!(sup.restarts("agent"), 2);
        assert_eq!(sup.restarts("server"), 0);
    }

    #[test]
    fn gate_holds_and_releases_a_child() {
        let (world, mut sup, t0) = setup();
        let held = |n: &str| n != "agent";
        sup.tick(t0, &held);
        assert!(sup.is_running("server"));
        assert!(!sup.is_running("agent"), "the agent waits for its gate");
        let all = |_: &str| true;
        sup.tick(t0 + Duration::from_secs(1), &all);
        assert!(sup.is_running("agent"));
        // Holding stops a running child without counting a restart; releasing starts it.
        assert_eq!(
            sup.tick(t0 + Duration::from_secs(2), &held),
            vec![Event::Held("agent".into())]
        );
        assert!(!sup.is_running("agent"));
        sup.tick(t0 + Duration::from_secs(3), &all);
        assert!(sup.is_running("agent"));
        assert_eq!(sup.restarts("agent"), 0);
        sup.stop_all();
        let log = world.borrow().log.clone();
        assert_eq!(
            log,
            vec![
                "start server",
                "start agent",
                "stop agent",
                "start agent",
                "stop agent",
                "stop server"
            ]
        );
        assert!(world.borrow().alive.is_empty());
    }

    #[test]
    fn a_child_that_cannot_start_is_retried_with_backoff() {
        let (world, mut sup, t0) = setup();
        world.borrow_mut().fail_start.push("server".into());
        let all = |_: &str| true;
        let ev = sup.tick(t0, &all);
        assert_eq!(
            ev[0],
            Event::StartFailed("server".into(), "no such file".into())
        );
        world.borrow_mut().fail_start.clear();
        assert!(!sup.is_running("server"));
        sup.tick(t0 + Duration::from_secs(1), &all);
        assert!(sup.is_running("server"));
    }

    #[test]
    fn live_pid_checks_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.pid");
        assert_eq!(live_pid(&f, "anything"), None);
        std::fs::write(&f, format!("{}\n", std::process::id())).unwrap();
        let me = std::env::current_exe().unwrap();
        let name = me.file_name().unwrap().to_str().unwrap();
        assert_eq!(live_pid(&f, name), Some(std::process::id() as i32));
        assert_eq!(live_pid(&f, "local-supervise-not-this"), None);
        std::fs::write(&f, "garbage").unwrap();
        assert_eq!(live_pid(&f, name), None);
    }
}
