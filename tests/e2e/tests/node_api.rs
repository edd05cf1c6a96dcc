//! The node API through the API server with the real kubectl: `kubectl logs` (tail,
//! timestamps, follow, previous, bad container), `kubectl exec` (output, exit code, stdin,
//! a terminal; over WebSocket and over the SPDY fallback), `kubectl port-forward` to busybox
//! httpd inside the pod (WebSocket tunnel and plain SPDY), and the agent's refusal of
//! callers without a cluster client certificate. Root only (namespaces, mounts).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_e2e::agent::{eventually, is_root, Agent};
use skiff_e2e::registry::Registry;
use skiff_e2e::{bin_dir, free_port, Server};

/// Kills a helper process (kubectl logs -f, port-forward) even when an assertion fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn missing_tools() -> Vec<&'static str> {
    ["kubectl", "umoci", "skopeo", "script", "curl"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect()
}

/// Reads lines from `child`'s stdout (on a thread) until one contains `want`.
fn wait_for_line(child: &mut Child, want: &str) -> Result<Vec<String>, Vec<String>> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads to the end even when nobody listens any more: a closed pipe would kill
        // kubectl (SIGPIPE) at its next line, e.g. port-forward's "Handling connection".
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let hit = line.contains(want);
                seen.push(line);
                if hit {
                    return Ok(seen);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    Err(seen)
}

#[test]
fn logs_exec_and_port_forward_through_the_api_server() {
    if !is_root() {
        println!("skipped: needs root (namespaces, overlay mounts)");
        return;
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        println!("skipped: missing tools {missing:?}");
        return;
    }
    if !bin_dir().join("skiff-cni").exists() {
        println!(
            "skipped: {} is not built (cargo build -p skiff-cni)",
            bin_dir().join("skiff-cni").display()
        );
        return;
    }
    let registry = Registry::start();
    let image = registry.push_busybox(
        "web",
        "1",
        &[
            "sh",
            "-c",
            "echo hello-from-pod > /var/www/index.html; echo started; echo oops >&2; exec httpd -f -p 80 -h /var/www",
        ],
    );
    let s = Server::start();
    let api_port = free_port();
    // The pod's loopback comes up through CNI (skiff-cni's loopback plugin), as with
    // kubelet; port-forward connects to it inside the pod.
    let cni_bin = s.dir.path().join("cni-bin");
    let cni_conf = s.dir.path().join("cni-conf");
    std::fs::create_dir_all(&cni_bin).unwrap();
    std::fs::create_dir_all(&cni_conf).unwrap();
    std::os::unix::fs::symlink(bin_dir().join("skiff-cni"), cni_bin.join("loopback")).unwrap();
    std::fs::write(
        cni_conf.join("10-lo.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]}"#,
    )
    .unwrap();
    // Its drop deletes the pods through the agent, then removes whatever is left.
    let _agent = Agent::start(
        &s,
        "node-1",
        &[
            "--node-api-port",
            &api_port.to_string(),
            "--cni-conf-dir",
            cni_conf.to_str().unwrap(),
            "--cni-bin-dir",
            cni_bin.to_str().unwrap(),
            // This agent runs in the host's network namespace: the service proxy must not
            // program the host's iptables.
            "--proxy-mode",
            "none",
        ],
    );
    let node = s.json(&["get", "node", "node-1"]);
    assert_eq!(
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], api_port,
        "the node publishes its API port"
    );

    // Anonymous callers are refused by the agent itself.
    let anon = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://127.0.0.1:{api_port}/healthz"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anon.stdout), "401");
    // A client certificate of the cluster CA (the admin's) is let in.
    let pki = s.data_dir().join("pki");
    let admin = Command::new("curl")
        .args(["-sk", "--cert"])
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(format!("https://127.0.0.1:{api_port}/healthz"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&admin.stdout), "ok");

    s.ok(&["run", "web", &format!("--image={image}")]);
    eventually("the pod Running", Duration::from_secs(90), || {
        s.json(&["get", "pod", "web"])["status"]["phase"] == "Running"
    });

    // --- the node's summary lists its pods
    let summary = Command::new("curl")
        .args(["-sk", "--cert"])
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(format!("https://127.0.0.1:{api_port}/stats/summary"))
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&summary.stdout).expect("JSON summary");
    assert_eq!(summary["node"]["nodeName"], "node-1");
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(summary["pods"][0]["podRef"]["name"], "web", "{summary}");
    assert_eq!(summary["pods"][0]["containers"][0]["name"], "web");

    // --- logs
    eventually(
        "both lines in kubectl logs",
        Duration::from_secs(20),
        || {
            let out = s.kubectl(&["logs", "web"]);
            let text = String::from_utf8_lossy(&out.stdout);
            out.status.success() && text.contains("started\n") && text.contains("oops\n")
        },
    );
    let all = s.ok(&["logs", "web"]);
    assert!(
        !all.contains(" stdout F ") && !all.contains(" stderr F "),
        "the CRI prefix is stripped: {all:?}"
    );
    assert_eq!(all.lines().count(), 2, "{all:?}");
    let last = s.ok(&["logs", "web", "--tail=1"]);
    assert_eq!(last.lines().count(), 1, "{last:?}");
    assert!(all.ends_with(&last), "--tail=1 is the last line: {last:?}");
    let stamped = s.ok(&["logs", "web", "--timestamps"]);
    for line in stamped.lines() {
        let (ts, text) = line.split_once(' ').expect("timestamp and text");
        assert!(
            ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T') && ts.ends_with('Z'),
            "RFC 3339 timestamp first: {line:?}"
        );
        assert!(text == "started" || text == "oops", "{line:?}");
    }
    assert_eq!(s.ok(&["logs", "web", "--since=1h"]).lines().count(), 2);
    let err = s.fails(&["logs", "web", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );
    let err = s.fails(&["logs", "web", "--previous"]);
    assert!(err.contains("previous terminated container"), "{err}");
    let err = s.fails(&["logs", "no-such-pod"]);
    assert!(err.contains("not found"), "{err}");

    // Follow: a line written to the container's stdout later arrives on the open stream.
    let mut follow = Reaped(
        s.kubectl_cmd(&["logs", "-f", "web"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    s.ok(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo written-later > /proc/1/fd/1",
    ]);
    let seen = wait_for_line(&mut follow.0, "written-later")
        .unwrap_or_else(|seen| panic!("kubectl logs -f never showed the new line: {seen:?}"));
    assert!(seen.iter().any(|l| l == "started"), "{seen:?}");
    drop(follow);

    // --- exec
    assert_eq!(
        s.ok(&["exec", "web", "--", "cat", "/etc/hostname"]),
        "web\n"
    );
    let out = s.kubectl(&["exec", "web", "--", "sh", "-c", "echo to-err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "the exit code propagates");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().next(),
        Some("to-err")
    );
    let piped = s.kubectl_stdin(&["exec", "-i", "web", "--", "cat"], "piped input\nsecond\n");
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout),
        "piped input\nsecond\n"
    );
    let err = s.fails(&["exec", "web", "-c", "nope", "--", "true"]);
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );

    // A terminal: `script` gives kubectl one; what we type reaches a shell in the pod.
    let mut tty = Command::new("script")
        .args(["-qec", "kubectl exec -it web -- sh", "/dev/null"])
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", s.dir.path())
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = tty.stdin.take().unwrap();
        // Typed after the shell had time to start; terminal input is not lost if early, the
        // pause only keeps the transcript readable.
        std::thread::sleep(Duration::from_secs(2));
        stdin
            .write_all(b"tty; echo $((6*7))-answer; exit 3\n")
            .unwrap();
        let out = tty.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("/dev/pts/"),
            "a terminal in the pod: {text:?}"
        );
        assert!(text.contains("42-answer"), "{text:?}");
        assert_eq!(out.status.code(), Some(3), "{text:?}");
    }

    // --- a container that crashed: --previous shows the run before, and following the
    // log of a stopped container ends by itself.
    s.ok(&[
        "run",
        "crash",
        &format!("--image={image}"),
        "--command",
        "--",
        "sh",
        "-c",
        "echo boot $(cat /proc/uptime); exit 1",
    ]);
    eventually("a restart of crash", Duration::from_secs(90), || {
        s.json(&["get", "pod", "crash"])["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    eventually("the previous log", Duration::from_secs(30), || {
        let out = s.kubectl(&["logs", "crash", "--previous"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("boot ")
    });
    let previous = s.ok(&["logs", "crash", "--previous"]);
    eventually("the current run's log", Duration::from_secs(30), || {
        let out = s.kubectl(&["logs", "crash"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("boot ")
    });
    assert_ne!(
        s.ok(&["logs", "crash"]),
        previous,
        "two runs, two logs (their uptimes differ)"
    );
    let mut follow = s
        .kubectl_cmd(&["logs", "-f", "crash"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = follow.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            panic!("kubectl logs -f of a stopped container did not end");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());

    // --- exec over SPDY, the fallback older servers need
    let spdy = s
        .kubectl_cmd(&[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo over-spdy; echo e >&2; exit 5",
        ])
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&spdy.stdout), "over-spdy\n");
    assert_eq!(
        String::from_utf8_lossy(&spdy.stderr).lines().next(),
        Some("e")
    );
    assert_eq!(spdy.status.code(), Some(5));
    let mut child = s
        .kubectl_cmd(&["exec", "-i", "web", "--", "cat"])
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through spdy\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through spdy\n");
    assert!(out.status.success());

    // --- port-forward: the WebSocket tunnel (default), then plain SPDY
    for websockets in ["true", "false"] {
        let local = free_port();
        let pf_log = s.dir.path().join(format!("port-forward-{websockets}.log"));
        let mut pf = Reaped(
            s.kubectl_cmd(&["port-forward", "-v=6", "pod/web", &format!("{local}:80")])
                .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&pf_log).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_for_line(&mut pf.0, "Forwarding from")
            .unwrap_or_else(|seen| panic!("port-forward did not start: {seen:?}"));
        // Two connections: each gets its own pair of streams.
        for _ in 0..2 {
            let got = Command::new("curl")
                .args(["-sS", "--max-time", "20"])
                .arg(format!("http://127.0.0.1:{local}/index.html"))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got.stdout),
                "hello-from-pod\n",
                "websockets={websockets}: {}\nkubectl: {}",
                String::from_utf8_lossy(&got.stderr),
                std::fs::read_to_string(&pf_log).unwrap_or_default()
            );
        }
    }
}

/// What the API server says when it cannot get to a pod's node agent: the wording
/// kube-apiserver uses, before and without any agent. Needs no root.
#[test]
fn the_api_server_explains_why_it_cannot_reach_the_node() {
    if missing_tools().contains(&"kubectl") {
        println!("skipped: kubectl is not installed");
        return;
    }
    // No scheduler: the pods stay where this test puts them.
    let s = Server::start_with(&["--disable", "all"]);
    s.ok(&["run", "lonely", "--image=busybox"]);
    let err = s.fails(&["logs", "lonely"]);
    assert!(
        err.contains("pod lonely does not have a host assigned"),
        "{err}"
    );
    let err = s.fails(&["exec", "lonely", "--", "true"]);
    assert!(
        err.contains("pod lonely does not have a host assigned"),
        "{err}"
    );

    // A node whose agent does not answer at its published endpoint.
    let dead_port = free_port();
    let node = s.write_file(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: gone\n",
    );
    s.ok(&["create", "-f", node.to_str().unwrap()]);
    s.ok(&[
        "patch",
        "node",
        "gone",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{dead_port}}}}}}}}}"#
        ),
    ]);
    let pod = s.write_file(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bound\nspec:\n  nodeName: gone\n  containers:\n  - name: main\n    image: busybox\n  - name: side\n    image: busybox\n",
    );
    s.ok(&["create", "-f", pod.to_str().unwrap()]);
    let err = s.fails(&["logs", "bound", "-c", "main"]);
    assert!(
        err.contains("error dialing backend") && err.contains(&format!("127.0.0.1:{dead_port}")),
        "{err}"
    );
    let err = s.fails(&["logs", "bound", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod bound"),
        "{err}"
    );
    // Two containers and none named: the raw API answer names the choices.
    let raw = s.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/bound/log"]);
    let text = String::from_utf8_lossy(&raw.stderr);
    assert!(
        !raw.status.success() && text.contains("choose one of: [main side]"),
        "{text}"
    );
    // Attach is proxied like exec: to a node that is not there.
    let err = s.fails(&["attach", "bound", "-c", "main"]);
    assert!(err.contains("error dialing backend"), "{err}");
    let err = s.fails(&["logs", "missing"]);
    assert!(err.contains("pods \"missing\" not found"), "{err}");
}
