//! The multi-call entry point, without root: dispatch on argv[0] and on
//! `skiff-cni <plugin>`, errors as JSON on stdout, logs on stderr only.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_skiff-cni");

fn run(program: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> (Output, Value) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("SKIFF_CNI_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // A plugin that rejects its environment exits without reading stdin: a broken pipe
    // here is expected, what counts is what it printed.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing the plugin's stdin: {e}"
        );
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text:?}"))
    };
    (out, v)
}

#[test]
fn plugin_from_first_argument() {
    let (out, v) = run(
        Path::new(BIN),
        &["host-local"],
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"1.1.0"}"#,
    );
    assert!(out.status.success());
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(v["supportedVersions"].as_array().unwrap().len() >= 5);
}

#[test]
fn plugin_from_argv0_and_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let lo = dir.path().join("loopback");
    std::os::unix::fs::symlink(BIN, &lo).unwrap();
    let (out, v) = run(&lo, &[], &[("CNI_COMMAND", "VERSION")], "");
    assert!(out.status.success(), "{v}");
    let weird = dir.path().join("weird");
    std::os::unix::fs::symlink(BIN, &weird).unwrap();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c"),
        ("CNI_NETNS", "/nonexistent"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ];
    let (out, v) = run(
        &weird,
        &[],
        &env,
        r#"{"cniVersion":"1.0.0","name":"n","type":"weird"}"#,
    );
    assert!(!out.status.success());
    assert_eq!(v["code"], 107);
    assert!(v["msg"].as_str().unwrap().contains("weird"));
    assert_eq!(v["cniVersion"], "1.0.0");
}

#[test]
fn usage_and_env_errors_are_cni_errors() {
    let (out, v) = run(Path::new(BIN), &[], &[], "");
    assert!(!out.status.success());
    assert_eq!(v["code"], 4);
    let (out, v) = run(Path::new(BIN), &["bridge"], &[], "{}");
    assert!(!out.status.success());
    assert_eq!(v["code"], 4, "CNI_COMMAND missing");
    assert!(v["msg"].as_str().unwrap().contains("CNI_COMMAND"));
}

#[test]
fn logs_never_reach_stdout() {
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/x"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "n", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": dir.path(), "ranges": [[{"subnet": "10.1.0.0/24"}]]}
    });
    let (out, v) = run(Path::new(BIN), &["host-local"], &env, &conf.to_string());
    assert!(out.status.success(), "{v}");
    assert_eq!(v, Value::Null, "DEL prints nothing on stdout");
    assert!(!out.stderr.is_empty(), "debug logs go to stderr");
}

#[test]
fn reap_helper_needs_arguments() {
    let (out, v) = run(Path::new(BIN), &["--skiff-reap-link"], &[], "");
    assert!(!out.status.success());
    assert_eq!(v, Value::Null);
}
