//! Benchmark: pull + unpack of a ~50 MB image from a local `docker-registry`, against
//! `skopeo copy` + `umoci unpack` of the same image, in the same run.
//!
//! `cargo run --release -p skiff-images --example pull-bench [-- ROUNDS]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use skiff_images::{ClientConfig, ImageStore, RegistryClient};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    if !have_tools(&["docker-registry", "skopeo", "umoci"]) {
        return;
    }
    let reg = Registry::start();
    let base = busybox_layer();
    let mk = |seed: u64| {
        let files: Vec<(String, Vec<u8>)> = (0..15)
            .map(|i| {
                (
                    format!("data/{seed}/file{i}"),
                    compressible(2 << 20, seed * 100 + i),
                )
            })
            .collect();
        let refs: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
        files_layer(&refs)
    };
    let (l1, l2) = (mk(1), mk(2));
    let compressed = base.gz.len() + l1.gz.len() + l2.gz.len();
    let unpacked = base.tar.len() + l1.tar.len() + l2.tar.len();
    build_and_push(&reg, "big:1", &[&base, &l1, &l2], false);
    let image = format!("{}/big:1", reg.host());
    println!(
        "image {image}: 3 layers, {:.1} MB compressed, {:.1} MB unpacked; {rounds} rounds",
        compressed as f64 / 1e6,
        unpacked as f64 / 1e6
    );
    let root = unsafe { libc::geteuid() } == 0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = RegistryClient::new(ClientConfig::default());
    let (mut base_t, mut skiff_t) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let t = tempfile::tempdir().unwrap();
        let start = Instant::now();
        run(Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{image}"))
            .arg(format!("oci:{}:1", t.path().join("oci").display())));
        let mut umoci = Command::new("umoci");
        umoci.arg("unpack");
        if !root {
            umoci.arg("--rootless");
        }
        run(umoci
            .arg("--image")
            .arg(format!("{}:1", t.path().join("oci").display()))
            .arg(t.path().join("bundle")));
        let b = start.elapsed();
        drop(t);

        let t = tempfile::tempdir().unwrap();
        let store = ImageStore::open(t.path()).unwrap();
        let start = Instant::now();
        let img = rt
            .block_on(store.pull(&client, &image, None))
            .expect("pull");
        let s = start.elapsed();
        assert!(store.layer_dirs(&img)[0].join("bin/busybox").is_file());
        drop(t);
        println!(
            "round {round}: skopeo+umoci {:>7.1} ms   skiff {:>7.1} ms",
            b.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3
        );
        base_t.push(b);
        skiff_t.push(s);
    }
    let (b, s) = (median(base_t), median(skiff_t));
    println!(
        "median: skopeo copy + umoci unpack {:.1} ms, skiff pull+unpack {:.1} ms, ratio {:.2}x (target <= 1.0x)",
        b.as_secs_f64() * 1e3,
        s.as_secs_f64() * 1e3,
        s.as_secs_f64() / b.as_secs_f64()
    );
}
