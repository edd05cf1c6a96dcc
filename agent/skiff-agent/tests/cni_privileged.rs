//! The agent's CNI runtime with real plugins — Debian's reference plugins and Skiff's own —
//! in network namespaces this test creates. The plugins' "host" side is a namespace too
//! (wrappers run them under `ip netns exec`), so the real host is never touched.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_agent::cni::{Attachment, Runtime};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("skiff-agt-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        Netns(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.0))
    }
    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn skiff_cni() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/skiff-cni")
}

/// Plugin wrappers that run `real_dir/<plugin>` inside the "host" namespace.
fn wrappers(dir: &Path, host: &Netns, real: &dyn Fn(&str) -> PathBuf) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for plugin in ["bridge", "host-local", "loopback"] {
        let target = real(plugin);
        let body = format!(
            "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
            host.0,
            target.display()
        );
        std::fs::write(bin.join(plugin), body).unwrap();
        std::fs::set_permissions(bin.join(plugin), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn run_chain(label: &str, real: &dyn Fn(&str) -> PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let host = Netns::new(&format!("{label}-host"));
    let pod = Netns::new(&format!("{label}-pod"));
    let bin = wrappers(dir.path(), &host, real);
    let netd = dir.path().join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    let data = dir.path().join("ipam");
    std::fs::write(
        netd.join("10-test.conflist"),
        format!(
            r#"{{"name":"skiffnet","cniVersion":"1.0.0","plugins":[
              {{"type":"bridge","bridge":"skiff0","isGateway":true,"ipMasq":false,
                "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.244.7.0/24"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}},
              {{"type":"loopback"}}]}}"#,
            data.display()
        ),
    )
    .unwrap();
    let rt = Runtime {
        conf_dir: netd,
        bin_dirs: vec![bin],
        cache_dir: dir.path().join("cache"),
        timeout: Duration::from_secs(20),
    };
    let net = rt.load().unwrap();
    let a = Attachment {
        container_id: format!("{label}-sandbox"),
        netns: pod.path(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: "web".into(),
        pod_uid: "uid-1".into(),
        capabilities: BTreeMap::new(),
    };
    let result = rt.add(&net, &a).unwrap();
    let ip = result["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.244.7."), "{label}: {result}");
    let inside = pod.exec(&["ip", "-4", "addr", "show", "eth0"]);
    assert!(
        inside.contains(ip.split('/').next().unwrap()),
        "{label}: the pod has its address: {inside}"
    );
    let lo = pod.exec(&["ip", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{label}: loopback is up: {lo}");
    rt.check(&net, &a).unwrap();
    rt.del(&net, &a).unwrap();
    rt.del(&net, &a)
        .unwrap_or_else(|e| panic!("{label}: DEL is idempotent: {e}"));
    let leftover: Vec<_> = std::fs::read_dir(data.join("skiffnet"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftover.is_empty(),
        "{label}: allocations released: {leftover:?}"
    );
}

#[test]
fn runs_reference_and_skiff_plugins_in_test_namespaces() {
    if !is_root() {
        println!("skipped: needs root (creates network namespaces)");
        return;
    }
    if Path::new("/usr/lib/cni/bridge").exists() {
        run_chain("ref", &|p| PathBuf::from(format!("/usr/lib/cni/{p}")));
    } else {
        println!("skipped half: Debian's containernetworking-plugins are not installed");
    }
    assert!(
        skiff_cni().exists(),
        "build skiff-cni first (cargo build --workspace --bins)"
    );
    // skiff-cni picks its plugin from the name it runs as: link it under each name.
    let links = tempfile::tempdir().unwrap();
    for p in ["bridge", "host-local", "loopback"] {
        std::os::unix::fs::symlink(skiff_cni(), links.path().join(p)).unwrap();
    }
    let base = links.path().to_path_buf();
    run_chain("skiff", &move |p| base.join(p));
}
