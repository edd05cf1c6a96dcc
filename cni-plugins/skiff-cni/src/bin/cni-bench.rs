//! Benchmark: median CNI ADD and DEL latency of Skiff's bridge+host-local
//! against the reference plugins, same config, same run. Needs root; all
//! work happens in network namespaces created (and removed) here.
//!
//! cargo run --release -p skiff-cni --bin cni-bench -- [--iterations N] [--no-masq]
//!     [--sync-teardown] [--skiff-bin FILE] [--reference-dir DIR]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use skiff_cni::netns;

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Result<Ns, String> {
        let name = format!("skiff-bench-{tag}-{:08x}", rand::random::<u32>());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map_err(|e| format!("ip netns add: {e}"))?;
        if !st.success() {
            return Err(format!("ip netns add {name} failed"));
        }
        Ok(Ns(name))
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Setup {
    label: &'static str,
    dir: PathBuf,
    host: Ns,
    cont: Ns,
    conf: String,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn run_plugin(s: &Setup, cmd: &str, id: &str, conf: &str) -> Result<(Duration, String), String> {
    let host = netns::open(&s.host.path()).map_err(|e| e.to_string())?;
    // Children inherit the namespace of the (single) thread that spawns them.
    let _in = netns::Entered::enter(&host, &s.host.path()).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut child = Command::new(s.dir.join("bridge"))
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", s.cont.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &s.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", s.dir.join("bridge").display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{} {cmd} failed: {}",
            s.label,
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let mut iterations = 30usize;
    let mut masq = true;
    let mut sync_teardown = false;
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut skiff_bin = exe_dir.join("skiff-cni");
    let mut reference = PathBuf::from("/usr/lib/cni");
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--iterations" => {
                iterations = args
                    .get(i + 1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(iterations);
                i += 1;
            }
            "--no-masq" => masq = false,
            "--sync-teardown" => sync_teardown = true,
            "--skiff-bin" => {
                skiff_bin = args.get(i + 1).map(PathBuf::from).unwrap_or(skiff_bin);
                i += 1;
            }
            "--reference-dir" => {
                reference = args.get(i + 1).map(PathBuf::from).unwrap_or(reference);
                i += 1;
            }
            other => {
                eprintln!("unknown argument {other}");
                return ExitCode::FAILURE;
            }
        }
        i += 1;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("cni-bench needs root (it creates network namespaces)");
        return ExitCode::FAILURE;
    }
    match bench(
        iterations.max(1),
        masq,
        sync_teardown,
        &skiff_bin,
        &reference,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(
    iterations: usize,
    masq: bool,
    sync_teardown: bool,
    skiff_bin: &Path,
    reference: &Path,
) -> Result<(), String> {
    let work = std::env::temp_dir().join(format!("skiff-cni-bench-{}", std::process::id()));
    let r = measure(&work, iterations, masq, sync_teardown, skiff_bin, reference);
    let _ = std::fs::remove_dir_all(&work);
    r
}

fn measure(
    work: &Path,
    iterations: usize,
    masq: bool,
    sync_teardown: bool,
    skiff_bin: &Path,
    reference: &Path,
) -> Result<(), String> {
    let skiff_dir = work.join("bin");
    std::fs::create_dir_all(&skiff_dir).map_err(|e| e.to_string())?;
    for name in ["bridge", "host-local", "loopback"] {
        std::os::unix::fs::symlink(skiff_bin, skiff_dir.join(name)).map_err(|e| e.to_string())?;
    }
    let conf = |data: &Path| {
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "benchnet", "type": "bridge", "bridge": "skiff0",
            "isGateway": true, "isDefaultGateway": true, "ipMasq": masq, "hairpinMode": true, "mtu": 1450,
            "syncTeardown": sync_teardown,
            "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.244.0.0/24"}]]}
        })
        .to_string()
    };
    let mut setups = Vec::new();
    for (label, dir) in [
        ("skiff", skiff_dir.clone()),
        ("reference", reference.to_path_buf()),
    ] {
        let data = work.join(format!("data-{label}"));
        setups.push(Setup {
            label,
            dir,
            host: Ns::new("h")?,
            cont: Ns::new("c")?,
            conf: conf(&data),
            add: Vec::new(),
            del: Vec::new(),
        });
    }
    let warmup = 3;
    for round in 0..iterations + warmup {
        for s in setups.iter_mut() {
            let id = format!("bench-{round}");
            let (a, result) = run_plugin(s, "ADD", &id, &s.conf)?;
            // Like a runtime, DEL gets the cached ADD result as prevResult.
            let mut del_conf: serde_json::Value =
                serde_json::from_str(&s.conf).map_err(|e| e.to_string())?;
            del_conf["prevResult"] = serde_json::from_str(&result).map_err(|e| e.to_string())?;
            let (d, _) = run_plugin(s, "DEL", &id, &del_conf.to_string())?;
            if round >= warmup {
                s.add.push(a);
                s.del.push(d);
            }
        }
    }
    let (sk, rf) = (&setups[0], &setups[1]);
    println!("cni-bench: bridge+host-local, {iterations} iterations, ipMasq={masq}, medians in ms");
    println!("{:<10} {:>10} {:>10}", "", "ADD", "DEL");
    for s in [sk, rf] {
        println!(
            "{:<10} {:>10.2} {:>10.2}",
            s.label,
            ms(median(&s.add)),
            ms(median(&s.del))
        );
    }
    println!(
        "{:<10} {:>10.2} {:>10.2}   (skiff / reference; target <= 0.5)",
        "ratio",
        ms(median(&sk.add)) / ms(median(&rf.add)),
        ms(median(&sk.del)) / ms(median(&rf.del))
    );
    Ok(())
}
