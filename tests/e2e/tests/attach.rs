//! `kubectl attach` and `kubectl run -i --rm`: the real kubectl, through skiff-server's
//! `pods/attach` proxy, to the agent's node API and the container's skiff-shim, which hands
//! out copies of the container's output and its stdin pipe. Root only (namespaces, mounts).

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use skiff_e2e::agent::Agent;
use skiff_e2e::registry::Registry;
use skiff_e2e::Server;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

fn wait_running(s: &Server, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = s.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"]);
        if String::from_utf8_lossy(&out.stdout) == "Running" {
            return;
        }
        assert!(Instant::now() < deadline, "pod {pod} never Running");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn kubectl_attach_and_run_interactive() {
    if !is_root() {
        println!("skipped: needs root (namespaces, overlay mounts)");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sh"]);
    let s = Server::start();
    let _agent = Agent::start(&s, "node-a", &[]);

    // Attach to a container that keeps printing: kubectl shows lines printed after it
    // attached, and detaching leaves the container running.
    s.ok(&[
        "run",
        "printer",
        "--image",
        &image,
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.2; done",
    ]);
    wait_running(&s, "printer");
    let mut child = s
        .kubectl_cmd(&["attach", "printer"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            seen.push(line);
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        seen.len() >= 3,
        "kubectl attach printed {seen:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let numbers: Vec<u64> = seen
        .iter()
        .map(|l| {
            l.strip_prefix("line-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected attach output {l:?}"))
        })
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive lines: {numbers:?}"
    );
    let pod = s.json(&["get", "pod", "printer"]);
    assert_eq!(
        pod["status"]["phase"], "Running",
        "detaching left it running"
    );
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);

    // `kubectl run -i --rm` attaches with stdin: the container reads what was piped in.
    let out = s.kubectl_stdin(
        &[
            "run",
            "reader",
            "-i",
            "--rm",
            "--restart=Never",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "read x; echo got $x",
        ],
        "hello\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("got hello"),
        "kubectl run -i: status {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The same over SPDY/3.1, the fallback older kubectls use.
    let mut child = s
        .kubectl_cmd(&[
            "run",
            "reader-spdy",
            "-i",
            "--rm",
            "--restart=Never",
            "--image",
            &image,
            "--",
            "sh",
            "-c",
            "read x; echo got $x over spdy",
        ])
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("got hi over spdy"),
        "kubectl run -i (SPDY): status {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // --rm deleted the pod once the session ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.kubectl(&["get", "pod", "reader"]).status.success() {
        assert!(Instant::now() < deadline, "--rm did not delete the pod");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `kubectl run -it` through a pseudo-terminal (`script`): the container gets a terminal,
/// kubectl's window size reaches it, and what is typed runs in the container's shell.
#[test]
fn kubectl_run_with_a_terminal() {
    if !is_root() {
        println!("skipped: needs root (namespaces, overlay mounts)");
        return;
    }
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: needs `script` (util-linux) to give kubectl a terminal");
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox("busybox", "1", &["sh"]);
    let s = Server::start();
    let _agent = Agent::start(&s, "node-t", &[]);
    // Pulled beforehand, so that kubectl attaches before anything is typed.
    s.ok(&[
        "run",
        "warm",
        "--image",
        &image,
        "--restart=Never",
        "--",
        "true",
    ]);
    let inner = format!(
        "stty rows 31 cols 97; kubectl run shell -it --rm --restart=Never --image {image} -- sh"
    );
    let mut child = std::process::Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .env("KUBECONFIG", s.kubeconfig())
        .env("KUBECACHEDIR", s.dir.path().join("kube-cache"))
        .env("HOME", s.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = stdout;
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            match std::io::Read::read(&mut r, &mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    // The pod must be Running (and kubectl attached) before typing.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    while !seen.contains("If you don't see a command prompt") {
        assert!(Instant::now() < deadline, "kubectl never attached: {seen}");
        if let Ok(out) = rx.recv_timeout(Duration::from_millis(500)) {
            seen = out;
        }
    }
    stdin.write_all(b"echo tty-$((6*7))\n").unwrap();
    // kubectl sends its window size as it attaches, which may land after the first
    // keystrokes: ask again until the size shows (or the deadline passes).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains("tty-42") || !seen.contains("31 97") {
        if Instant::now() >= deadline {
            break;
        }
        if seen.contains("tty-42") {
            let _ = stdin.write_all(b"stty size\n");
        }
        if let Ok(out) = rx.recv_timeout(Duration::from_millis(500)) {
            seen = out;
        }
    }
    let _ = stdin.write_all(b"exit\n");
    if !seen.contains("tty-42") {
        let logs = s.kubectl(&["logs", "shell"]);
        eprintln!(
            "container log: {:?} {:?}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        );
        eprintln!(
            "pod: {}",
            String::from_utf8_lossy(&s.kubectl(&["get", "pod", "shell", "-o", "json"]).stdout)
        );
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("tty-42"),
        "the shell ran what was typed: {seen:?}"
    );
    assert!(
        seen.contains("31 97"),
        "kubectl's window size reached the terminal: {seen:?}"
    );
}
