//! Other clients than kubectl, watch edge cases, and crash safety of the embedded store.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_e2e::Server;

const PYTHON: &str = "/usr/bin/python3";

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn python_client_available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import kubernetes"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn official_python_client_lists_creates_and_watches() {
    assert!(
        python_client_available(),
        "Debian's python3-kubernetes is required (tests/packages.txt installs it)"
    );
    let s = Server::start();
    let out = Command::new(PYTHON)
        .arg(script("python_client.py"))
        .arg(s.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client OK"));
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    assert!(
        python_client_available(),
        "Debian's python3-kubernetes is required"
    );
    let mut s = Server::start();
    let mut writer = Command::new(PYTHON)
        .arg(script("write_stream.py"))
        .arg(s.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = writer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // Let a stream of writes build up, then crash the server in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let count = s
            .ok(&["get", "configmaps", "-o", "name"])
            .lines()
            .filter(|l| l.contains("/w-"))
            .count();
        if count >= 40 || Instant::now() > deadline {
            break;
        }
    }
    s.kill();
    let _ = writer.wait();
    let acknowledged = reader.join().unwrap();
    assert!(
        acknowledged.len() >= 20,
        "the writer got going ({} writes)",
        acknowledged.len()
    );
    s.restart();
    let stored: std::collections::HashSet<String> = s
        .ok(&["get", "configmaps", "-o", "name"])
        .lines()
        .map(|l| l.trim_start_matches("configmap/").to_string())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !stored.contains(*n))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after kill -9: {lost:?}"
    );
    // The store is usable after the crash.
    s.ok(&["create", "configmap", "after-crash", "--from-literal=a=b"]);
    println!(
        "{} acknowledged writes, all present after kill -9 and restart",
        acknowledged.len()
    );
}

fn raw_watch(s: &Server, query: &str) -> Vec<serde_json::Value> {
    let out = s.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/default/configmaps?watch=true&{query}"),
    ]);
    serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn watch_edge_cases() {
    let mut s = Server::start();
    s.ok(&["create", "configmap", "a", "--from-literal=x=1"]);
    let rv = s.raw_json("/api/v1/namespaces/default/configmaps")["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok(&["create", "configmap", "b", "--from-literal=x=1"]);
    // timeoutSeconds ends the stream; events after the given resourceVersion only.
    let events = raw_watch(&s, &format!("resourceVersion={rv}&timeoutSeconds=1"));
    let names: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("ADDED", "b")]);
    // The initial state, then a bookmark marking its end (the watch-list protocol).
    let events = raw_watch(&s, "sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "ADDED", "BOOKMARK"]);
    assert_eq!(
        events[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // History does not survive a restart: an old resourceVersion is 410 Gone.
    s.restart();
    let events = raw_watch(&s, &format!("resourceVersion={rv}&timeoutSeconds=5"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
}
