//! A real OCI registry on loopback (Debian's `docker-registry`) and a busybox image built
//! from Debian's busybox-static, pushed with skopeo: what the node tests pull.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

pub struct Registry {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    ip: String,
    /// The network namespace the registry (and every push to it) runs in; `None`: the host.
    netns: Option<String>,
}

/// `program` run in `netns` (through nsenter, so the host's mount namespace is kept).
fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Registry {
    pub fn start() -> Self {
        Self::start_at(None, "127.0.0.1", free_port())
    }

    /// A registry inside the network namespace `netns`, on `ip:port` there (the multi-node
    /// lab's nodes reach its underlay bridge address, never the host's loopback).
    pub fn start_in(netns: &str, ip: &str, port: u16) -> Self {
        Self::start_at(Some(netns), ip, port)
    }

    fn start_at(netns: Option<&str>, ip: &str, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("registry dir");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n", dir.path().join("data").display()),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = command_in(netns, "docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry (Debian package docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        let listening = || match netns {
            None => std::net::TcpStream::connect((ip, port)).is_ok(),
            Some(_) => command_in(netns, "curl")
                .args(["-sf", "-o", "/dev/null", &format!("http://{ip}:{port}/v2/")])
                .status()
                .is_ok_and(|s| s.success()),
        };
        while !listening() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            port,
            child,
            dir,
            ip: ip.to_string(),
            netns: netns.map(str::to_string),
        }
    }

    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Builds a busybox image whose default command is `cmd`, pushes it as `name:tag`,
    /// and returns the reference to use in pod specs.
    pub fn push_busybox(&self, name: &str, tag: &str, cmd: &[&str]) -> String {
        let work = self.dir.path().join(format!("build-{name}-{tag}"));
        let layout = work.join("layout");
        let bundle = work.join("bundle");
        let run = |args: &[&str]| {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let layout_s = layout.display().to_string();
        let image = format!("{layout_s}:{tag}");
        run(&["umoci", "init", "--layout", &layout_s]);
        run(&["umoci", "new", "--image", &image]);
        run(&[
            "umoci",
            "unpack",
            "--rootless",
            "--image",
            &image,
            &bundle.display().to_string(),
        ]);
        let rootfs = bundle.join("rootfs");
        populate_busybox(&rootfs);
        run(&[
            "umoci",
            "repack",
            "--image",
            &image,
            &bundle.display().to_string(),
        ]);
        let mut config = vec![
            "umoci",
            "config",
            "--image",
            &image,
            "--config.workingdir",
            "/",
            "--config.env",
            "PATH=/bin",
        ];
        for c in cmd {
            config.push("--config.cmd");
            config.push(c);
        }
        run(&config);
        let dest = format!("docker://{}/{name}:{tag}", self.host());
        let out = command_in(self.netns.as_deref(), "skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &format!("oci:{image}"),
                &dest,
            ])
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{}/{name}:{tag}", self.host())
    }
}

/// Debian's static busybox with the applets a test pod uses, and minimal /etc files.
pub fn populate_busybox(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/usr/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "echo", "cat", "sleep", "hostname", "httpd", "ls", "id", "env", "wget", "nslookup",
        "true", "false", "ps", "test", "[", "touch", "rm", "mkdir", "grep", "mv", "ln", "nc", "wc",
        "head", "tail", "sed", "date", "pwd", "stat", "readlink", "uname", "kill", "ip",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n",
    )
    .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\nwww:x:33:\n").unwrap();
    for d in ["proc", "sys", "dev", "tmp", "var/www"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
