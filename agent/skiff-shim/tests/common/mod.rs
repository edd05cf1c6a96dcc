//! Fixtures for the privileged tests: a busybox rootfs, runc-like bundles,
//! and the three runtimes (skiff-shim, runc, crun) driven the same way.
//! Every test owns an [`Env`] whose Drop removes containers, state
//! directories, cgroup directories and the temp dir, failure or not.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

pub const SHIM: &str = env!("CARGO_BIN_EXE_skiff-shim");

/// Returns false (after printing a clear line) when not root.
pub fn need_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        println!("skipped: needs root ({test})");
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rt {
    Skiff,
    Runc,
    Crun,
}

pub const ALL: [Rt; 3] = [Rt::Skiff, Rt::Runc, Rt::Crun];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub name: String,
    ids: Mutex<Vec<(Rt, String)>>,
    pub cgroup_dirs: Mutex<Vec<PathBuf>>,
}

/// A config like `runc spec` writes (terminal off, no cgroup mount: the
/// host's hierarchy is hybrid and the three runtimes would mount different
/// things there), running `args`.
pub fn base_config(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "skiff-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    })
}

/// Build a busybox rootfs from Debian's busybox-static.
pub fn make_rootfs(root: &Path) {
    for d in ["bin", "etc", "tmp", "home/app", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("busybox-static installed");
    let list = Command::new("/usr/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\ntty:x:5:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/hello"), "hello from the image\n").unwrap();
}

impl Env {
    pub fn new(name: &str) -> Option<Env> {
        if !need_root(name) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("skiff-shim-{name}-"))
            .tempdir()
            .unwrap();
        make_rootfs(&dir.path().join("rootfs"));
        Some(Env {
            dir,
            name: name.to_string(),
            ids: Mutex::new(Vec::new()),
            cgroup_dirs: Mutex::new(Vec::new()),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }

    /// Write a bundle named `tag` whose rootfs is the shared one.
    pub fn bundle(&self, tag: &str, mut cfg: serde_json::Value) -> PathBuf {
        let b = self.path().join(format!("bundle-{tag}"));
        std::fs::create_dir_all(&b).unwrap();
        cfg["root"]["path"] = serde_json::json!(self.rootfs());
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&cfg).unwrap(),
        )
        .unwrap();
        b
    }

    pub fn state_root(&self, rt: Rt) -> PathBuf {
        self.path().join(format!("state-{rt:?}").to_lowercase())
    }

    /// The command for `rt` with its global options.
    pub fn cmd(&self, rt: Rt) -> Command {
        let root = self.state_root(rt);
        match rt {
            Rt::Skiff => {
                let mut c = Command::new(SHIM);
                c.arg("--root").arg(root);
                c
            }
            Rt::Runc => {
                let mut c = Command::new("runc");
                c.arg("--root").arg(root);
                c
            }
            Rt::Crun => {
                // crun refuses this host's hybrid cgroup layout: give it the
                // v2 hierarchy as /sys/fs/cgroup in a private mount
                // namespace of its own (the host's mounts are untouched) and
                // no cgroup manager.
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(
                        "if [ -d /sys/fs/cgroup/unified ]; then mount --bind /sys/fs/cgroup/unified /sys/fs/cgroup; fi; \
                         exec crun --cgroup-manager=disabled \"$@\"",
                    )
                    .arg("crun")
                    .arg("--root")
                    .arg(root);
                c
            }
        }
    }

    pub fn id(&self, rt: Rt, tag: &str) -> String {
        let id = format!("{}-{}-{}", self.name, tag, format!("{rt:?}").to_lowercase());
        self.ids.lock().unwrap().push((rt, id.clone()));
        id
    }

    pub fn output(c: &mut Command) -> Out {
        let o = c.stdin(Stdio::null()).output().expect("spawn runtime");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// For `create`: the container keeps the runtime's stdio open, so
    /// stdout goes to /dev/null and stderr to a file read afterwards.
    pub fn output_detached(&self, c: &mut Command) -> Out {
        let errf = tempfile::NamedTempFile::new_in(self.path()).unwrap();
        let status = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errf.reopen().unwrap())
            .status()
            .expect("spawn runtime");
        Out {
            code: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: std::fs::read_to_string(errf.path()).unwrap_or_default(),
        }
    }

    /// `RT run --bundle B ID`.
    pub fn run(&self, rt: Rt, tag: &str, bundle: &Path) -> Out {
        let id = self.id(rt, tag);
        Self::output(self.cmd(rt).arg("run").arg("--bundle").arg(bundle).arg(&id))
    }

    /// Run the same config under the three runtimes.
    pub fn run_all(&self, tag: &str, cfg: serde_json::Value) -> Vec<(Rt, Out)> {
        let b = self.bundle(tag, cfg);
        ALL.iter().map(|rt| (*rt, self.run(*rt, tag, &b))).collect()
    }
}

/// Assert that all runtimes agree on exit code and (normalised) stdout;
/// returns skiff-shim's output.
pub fn assert_same(outs: &[(Rt, Out)], norm: impl Fn(&str) -> String) -> Out {
    let first = &outs[0];
    assert_eq!(first.0, Rt::Skiff);
    for (rt, o) in &outs[1..] {
        let a = (first.1.code, norm(&first.1.stdout));
        let b = (o.code, norm(&o.stdout));
        assert_eq!(
            a, b,
            "skiff-shim vs {rt:?} differ\n--- skiff stderr:\n{}\n--- {rt:?} stderr:\n{}",
            first.1.stderr, o.stderr
        );
    }
    first.1.clone()
}

/// Like [`assert_same`], and all must have exited 0.
pub fn same_ok(outs: &[(Rt, Out)], norm: impl Fn(&str) -> String) -> Out {
    for (rt, o) in outs {
        assert_eq!(o.code, 0, "{rt:?} failed: {}", o.stderr);
    }
    assert_same(outs, norm)
}

pub fn ident(s: &str) -> String {
    s.to_string()
}

impl Drop for Env {
    fn drop(&mut self) {
        for (rt, id) in self.ids.lock().unwrap().iter() {
            let _ = Self::output(self.cmd(*rt).args(["delete", "--force"]).arg(id));
        }
        for d in self.cgroup_dirs.lock().unwrap().iter().rev() {
            rmdir_tree(d);
        }
    }
}

/// Host mount table, for "nothing left behind" checks.
pub fn host_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count()
}

/// Processes whose command line mentions `needle`.
pub fn processes_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// Remove a tree of (cgroup) directories bottom-up with rmdir only.
pub fn rmdir_tree(d: &Path) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(d);
}
