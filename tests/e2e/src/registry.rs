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
}

impl Registry {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("registry dir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", dir.path().join("data").display()),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry (Debian package docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { port, child, dir }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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
        run(&[
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{image}"),
            &dest,
        ]);
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
