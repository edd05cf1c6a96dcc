//! `api-bench`: measures skiff-server against the targets of the "Performance" section of
//! issue 2 and prints a table of figures next to their targets.
//!
//! It builds nothing: it runs the release `skiff-server` from `SKIFF_BIN_DIR` or the
//! workspace's `target/release`, and `etcd` from `PATH`, each on loopback in a temp dir. The
//! client is HTTPS (rustls, ring) with the admin client certificate over keep-alive HTTP/1.1
//! connections. Timings are reported, never asserted: the exit code is non-zero only when
//! setup fails (a binary is missing, a process does not start, a request cannot be sent).
//!
//! Environment: `SKIFF_BIN_DIR` (where `skiff-server` is), `SKIFF_BENCH_PODS` (pods per store,
//! 10,000 by default; the targets are stated for 10,000), `SKIFF_BENCH_ETCD_ROUNDS` (rounds of
//! the etcd comparison, 5 by default), `SKIFF_BENCH_CONTROLLERS=1` (keep the server's in-process
//! controllers running; by default they are disabled with `--disable all`).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Method, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

/// Pods created per store; the targets are stated for 10,000.
const PODS: usize = 10_000;
/// Concurrent clients (one keep-alive connection each) for the create and put loops.
const CLIENTS: usize = 16;
/// Rounds of (creates through skiff-server, raw puts) on etcd.
const ETCD_ROUNDS: usize = 5;
const GETS: usize = 2_000;
const GET_WARMUP: usize = 100;
const LISTS: usize = 30;
const CREATE_BOUND: Duration = Duration::from_secs(300);
const GET_BOUND: Duration = Duration::from_secs(60);
const LIST_BOUND: Duration = Duration::from_secs(180);
const PUT_BOUND: Duration = Duration::from_secs(300);
const START_BOUND: Duration = Duration::from_secs(60);
const POD_PATH: &str = "/api/v1/namespaces/default/pods";

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("api-bench: cannot start the tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("api-bench: setup failed: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let pods = match std::env::var("SKIFF_BENCH_PODS") {
        Ok(v) => v.parse().context("SKIFF_BENCH_PODS must be a number")?,
        Err(_) => PODS,
    };
    let etcd_rounds: usize = match std::env::var("SKIFF_BENCH_ETCD_ROUNDS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .context("SKIFF_BENCH_ETCD_ROUNDS must be a number above 0")?,
        Err(_) => ETCD_ROUNDS,
    };
    let bin = bin_dir().join("skiff-server");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p skiff-server` first (or set SKIFF_BIN_DIR)",
            bin.display()
        );
    }
    // The figures are the API server's: its in-process controllers (scheduler …) would write
    // to the pods too. SKIFF_BENCH_CONTROLLERS=1 keeps them running.
    let keep_controllers = std::env::var("SKIFF_BENCH_CONTROLLERS").is_ok_and(|v| v == "1");
    let help = Command::new(&bin)
        .arg("--help")
        .output()
        .with_context(|| format!("run {} --help", bin.display()))?;
    let mut extra: Vec<String> = Vec::new();
    if !keep_controllers && String::from_utf8_lossy(&help.stdout).contains("--disable") {
        extra.extend(["--disable".into(), "all".into()]);
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "api-bench: {pods} pods, {CLIENTS} concurrent clients, server {}",
        bin.display()
    );
    println!(
        "server flags: {}",
        if extra.is_empty() {
            "(none)".to_string()
        } else {
            extra.join(" ")
        }
    );
    println!(
        "machine: {cores} cores, load average at start {}",
        loadavg()
    );

    // Embedded store: create, then GET / LIST latency and memory with every pod stored.
    println!("\n[embedded] starting skiff-server");
    let work = tempfile::Builder::new().prefix("skiff-bench-").tempdir()?;
    let mut server = Server::start(&bin, &work.path().join("embedded"), &extra).await?;
    let cpu0 = cpu_seconds(server.proc.pid());
    let created = create_pods(&server.api, 0, pods).await?;
    let create_cpu = cpu_seconds(server.proc.pid()) - cpu0;
    server.proc.check_alive()?;
    println!(
        "[embedded] created {} pods in {:.2} s ({} errors){}; server CPU {:.1} s",
        created.ok.len(),
        created.elapsed.as_secs_f64(),
        created.errors,
        if created.timed_out {
            ", stopped at the time bound"
        } else {
            ""
        },
        create_cpu
    );
    print_first_error(&created);
    if created.ok.is_empty() {
        bail!("no pod could be created on the embedded store");
    }
    let rss_after_create = memory(server.proc.pid(), "VmRSS:");

    let cpu0 = cpu_seconds(server.proc.pid());
    let gets = get_pods(&server.api, &created.ok).await?;
    let get_cpu = cpu_seconds(server.proc.pid()) - cpu0;
    println!(
        "[embedded] {} GETs ({} errors); server CPU {:.2} s",
        gets.lat.len(),
        gets.errors,
        get_cpu
    );
    let cpu0 = cpu_seconds(server.proc.pid());
    let lists = list_pods(&server.api, created.ok.len()).await?;
    let list_cpu = cpu_seconds(server.proc.pid()) - cpu0;
    println!(
        "[embedded] {} LISTs of {} items, {:.1} MB each; server CPU {:.2} s ({:.0} ms per LIST)",
        lists.samples.lat.len(),
        lists.items,
        lists.bytes as f64 / 1e6,
        list_cpu,
        1e3 * list_cpu / lists.samples.lat.len().max(1) as f64
    );
    server.proc.check_alive()?;
    let rss = memory(server.proc.pid(), "VmRSS:");
    let hwm = memory(server.proc.pid(), "VmHWM:");
    drop(server);

    // etcd: the same create workload through skiff-server, then raw puts on the same etcd.
    println!("\n[etcd] starting etcd and skiff-server");
    let etcd_dir = work.path().join("etcd");
    let (etcd, etcd_url) = start_etcd(&etcd_dir)?;
    let mut on_etcd_args = extra.clone();
    on_etcd_args.extend(["--datastore-endpoint".into(), etcd_url.clone()]);
    let mut server = Server::start(&bin, &work.path().join("on-etcd"), &on_etcd_args).await?;
    let etcd_client = etcd_client::Client::connect([etcd_url.as_str()], None)
        .await
        .context("connect to etcd")?;
    // Rounds alternate which loop goes first, so that drift in the machine's load (other
    // builds, page cache, etcd's growing database) does not favour one side; the verdict is
    // the median of the rounds' ratios.
    let mut rounds: Vec<EtcdRound> = Vec::with_capacity(etcd_rounds);
    let mut sizes = None;
    for round in 0..etcd_rounds {
        let first = round * pods;
        let server_first = round % 2 == 0;
        let mut through_server = None;
        let mut raw = None;
        for step in 0..2 {
            if (step == 0) == server_first {
                through_server =
                    Some(etcd_round_through_server(&server, &etcd, first, pods, round).await?);
                if sizes.is_none() {
                    let created = through_server.as_ref().expect("just measured");
                    sizes = Some(
                        stored_pod_size(&etcd_client, &pod_name(created.samples.ok[0])).await?,
                    );
                }
            } else {
                let (key_len, value_len) = sizes.expect("the first round starts with the server");
                // The idle server only watches /registry/, which the raw keys are not under;
                // it is stopped anyway so that it cannot take CPU from the raw loop.
                server.proc.signal("STOP")?;
                let cpu0 = cpu_seconds(etcd.pid());
                let puts = raw_puts(&etcd_client, first, pods, key_len, value_len, false).await;
                let etcd_cpu = cpu_seconds(etcd.pid()) - cpu0;
                server.proc.signal("CONT")?;
                let puts = puts?;
                println!(
                    "[etcd] round {}: {} raw puts of {key_len} B keys and {value_len} B values in {:.2} s ({} errors){}; etcd CPU {:.1} s",
                    round + 1,
                    puts.ok.len(),
                    puts.elapsed.as_secs_f64(),
                    puts.errors,
                    if puts.timed_out { ", stopped at the time bound" } else { "" },
                    etcd_cpu
                );
                print_first_error(&puts);
                if puts.ok.is_empty() {
                    bail!("no raw put succeeded on etcd");
                }
                raw = Some(puts);
            }
        }
        let (through_server, raw) = (through_server.expect("measured"), raw.expect("measured"));
        println!(
            "[etcd] round {}: create / raw put = {:.0} / {:.0} per s = {:.2}x",
            round + 1,
            through_server.samples.rate(),
            raw.rate(),
            through_server.samples.rate() / raw.rate()
        );
        rounds.push(EtcdRound {
            through_server,
            raw,
        });
    }
    server.proc.check_alive()?;
    server.proc.signal("STOP")?;
    let (key_len, value_len) = sizes.expect("at least one round");
    let cpu0 = cpu_seconds(etcd.pid());
    let txns = raw_puts(
        &etcd_client,
        etcd_rounds * pods,
        pods,
        key_len,
        value_len,
        true,
    )
    .await?;
    let txn_cpu = cpu_seconds(etcd.pid()) - cpu0;
    println!(
        "[etcd] {} raw create transactions in {:.2} s ({} errors){}; etcd CPU {:.1} s",
        txns.ok.len(),
        txns.elapsed.as_secs_f64(),
        txns.errors,
        if txns.timed_out {
            ", stopped at the time bound"
        } else {
            ""
        },
        txn_cpu
    );
    print_first_error(&txns);
    drop(server);
    drop(etcd_client);
    drop(etcd);

    // The table.
    let mb = |kib: Option<u64>| kib.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let create_rate = created.rate();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let etcd_rate = median(
        rounds
            .iter()
            .map(|r| r.through_server.samples.rate())
            .collect(),
    );
    let put_rate = median(rounds.iter().map(|r| r.raw.rate()).collect());
    let ratio = median(
        rounds
            .iter()
            .map(|r| r.through_server.samples.rate() / r.raw.rate())
            .collect(),
    );
    // The median round by ratio gives the latencies and CPU figures printed below.
    let mid = rounds
        .iter()
        .min_by(|a, b| {
            let d = |r: &EtcdRound| (r.through_server.samples.rate() / r.raw.rate() - ratio).abs();
            d(a).total_cmp(&d(b))
        })
        .expect("at least one round");
    let (on_etcd, puts, on_etcd_cpu) = (
        &mid.through_server.samples,
        &mid.raw,
        mid.through_server.cpu,
    );
    let rows = [
        Row::at_least(
            "create pods/s, embedded, 16 clients",
            create_rate,
            2000.0,
            "/s",
        ),
        Row::at_most("GET one pod p50", ms(gets.pct(0.50)), 5.0, " ms"),
        Row::at_most("GET one pod p99", ms(gets.pct(0.99)), 5.0, " ms"),
        Row::at_most(
            "LIST all pods p50",
            ms(lists.samples.pct(0.50)),
            300.0,
            " ms",
        ),
        Row::at_most(
            "LIST all pods p99",
            ms(lists.samples.pct(0.99)),
            300.0,
            " ms",
        ),
        Row::at_most("server VmRSS, pods stored", mb(rss), 150.0, " MB"),
        Row::info("create pods/s, etcd, 16 clients (median)", etcd_rate, "/s"),
        Row::info("raw etcd puts/s, 16 clients (median)", put_rate, "/s"),
        Row::info("raw etcd create txns/s (info)", txns.rate(), "/s"),
        Row::at_least("etcd create / raw put (median round)", ratio, 0.5, "x"),
    ];
    println!(
        "\nResults ({} cores; load average now {}). ratio = measured/target for \">=\" targets,",
        cores,
        loadavg()
    );
    println!("target/measured for \"<=\" targets: 1.00 or more meets the target.\n");
    println!(
        "{:<38} {:>14} {:>14} {:>7}  result",
        "figure", "measured", "target", "ratio"
    );
    println!("{}", "-".repeat(84));
    for row in &rows {
        row.print();
    }
    println!("\nalso measured:");
    println!(
        "  create latency, embedded: p50 {:.1} ms, p99 {:.1} ms",
        ms(created.pct(0.50)),
        ms(created.pct(0.99))
    );
    println!(
        "  create latency, etcd:     p50 {:.1} ms, p99 {:.1} ms; raw put p50 {:.1} ms, p99 {:.1} ms",
        ms(on_etcd.pct(0.50)),
        ms(on_etcd.pct(0.99)),
        ms(puts.pct(0.50)),
        ms(puts.pct(0.99))
    );
    println!(
        "  raw create txn latency:   p50 {:.1} ms, p99 {:.1} ms",
        ms(txns.pct(0.50)),
        ms(txns.pct(0.99))
    );
    println!(
        "  server VmRSS after creates {:.1} MB, after GETs/LISTs {:.1} MB, peak (VmHWM) {:.1} MB",
        mb(rss_after_create),
        mb(rss),
        mb(hwm)
    );
    println!(
        "  server CPU per request: create {:.2} ms (embedded), {:.2} ms (etcd); GET {:.3} ms",
        1e3 * create_cpu / created.ok.len() as f64,
        1e3 * on_etcd_cpu.0 / on_etcd.ok.len() as f64,
        1e3 * get_cpu / gets.lat.len().max(1) as f64
    );
    Ok(())
}

/// One round of the etcd comparison: creates through skiff-server and raw puts.
struct EtcdRound {
    through_server: ThroughServer,
    raw: Samples,
}

struct ThroughServer {
    samples: Samples,
    /// CPU seconds of skiff-server and etcd during the creates.
    cpu: (f64, f64),
}

async fn etcd_round_through_server(
    server: &Server,
    etcd: &Proc,
    first: usize,
    count: usize,
    round: usize,
) -> Result<ThroughServer> {
    let cpu0 = (cpu_seconds(server.proc.pid()), cpu_seconds(etcd.pid()));
    let samples = create_pods(&server.api, first, count).await?;
    let cpu = (
        cpu_seconds(server.proc.pid()) - cpu0.0,
        cpu_seconds(etcd.pid()) - cpu0.1,
    );
    println!(
        "[etcd] round {}: created {} pods through skiff-server in {:.2} s ({} errors){}; CPU: server {:.1} s, etcd {:.1} s",
        round + 1,
        samples.ok.len(),
        samples.elapsed.as_secs_f64(),
        samples.errors,
        if samples.timed_out {
            ", stopped at the time bound"
        } else {
            ""
        },
        cpu.0,
        cpu.1
    );
    print_first_error(&samples);
    if samples.ok.is_empty() {
        bail!("no pod could be created on the etcd store");
    }
    Ok(ThroughServer { samples, cpu })
}

fn bin_dir() -> PathBuf {
    match std::env::var_os("SKIFF_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release"),
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn pod_name(i: usize) -> String {
    format!("bench-{i:05}")
}

fn pod_body(i: usize) -> Bytes {
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(i), "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}
    });
    Bytes::from(pod.to_string())
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed (SIGKILL) and reaped on drop.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Proc { name, child, log })
    }

    /// Sends a signal by name (`STOP`, `CONT`) with kill(1).
    fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .with_context(|| format!("kill -{name} {}", self.name))?;
        if !status.success() {
            bail!("kill -{name} {} failed: {status}", self.name);
        }
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited with {status}; log tail:\n{}",
                self.name,
                tail.join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A single-member etcd on loopback ports; returns the process and its client URL.
fn start_etcd(dir: &Path) -> Result<(Proc, String)> {
    std::fs::create_dir_all(dir)?;
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", "bench", "--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .arg("--data-dir")
        .arg(dir.join("data"));
    let mut proc = Proc::spawn("etcd", &mut cmd, dir.join("etcd.log"))
        .context("etcd (Debian package etcd-server) must be on PATH")?;
    let deadline = Instant::now() + START_BOUND;
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        proc.check_alive()?;
        if Instant::now() > deadline {
            bail!("etcd did not listen on {client_url} within {START_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc, client_url))
}

struct Server {
    api: Api,
    // Dropped last, after the connections of `api` users are gone.
    proc: Proc,
}

impl Server {
    async fn start(bin: &Path, dir: &Path, extra: &[String]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let data = dir.join("data");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(extra);
        let mut proc = Proc::spawn("skiff-server", &mut cmd, dir.join("server.log"))?;
        let deadline = Instant::now() + START_BOUND;
        loop {
            proc.check_alive()?;
            if data.join("admin.kubeconfig").exists() {
                if let Ok(api) = Api::new(&data, port) {
                    let ready = match api.connect().await {
                        Ok(mut conn) => conn
                            .request(Method::GET, "/readyz", None)
                            .await
                            .is_ok_and(|(status, _)| status == StatusCode::OK),
                        Err(_) => false,
                    };
                    if ready {
                        return Ok(Server { api, proc });
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("skiff-server on port {port} was not ready within {START_BOUND:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Kibibytes from a `/proc/<pid>/status` line such as `VmRSS:  123 kB`.
fn memory(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a process so far (clock ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// HTTPS client

#[derive(Clone)]
struct Api {
    tls: TlsConnector,
    port: u16,
}

impl Api {
    /// TLS with the cluster CA as the only root and the admin certificate as client identity.
    fn new(data_dir: &Path, port: u16) -> Result<Self> {
        let pki = data_dir.join("pki");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
            roots.add(cert?)?;
        }
        let chain =
            CertificateDer::pem_file_iter(pki.join("admin.crt"))?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(pki.join("admin.key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Api {
            tls: TlsConnector::from(Arc::new(config)),
            port,
        })
    }

    /// One keep-alive HTTP/1.1 connection.
    async fn connect(&self) -> Result<Conn> {
        let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let tls = self.tls.connect(name, tcp).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            send,
            host: format!("127.0.0.1:{}", self.port),
        })
    }
}

struct Conn {
    send: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes)> {
        self.send.ready().await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// Outcome of one loop: which indices succeeded, their latencies, and the failures.
#[derive(Default)]
struct Samples {
    ok: Vec<usize>,
    lat: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
    timed_out: bool,
}

impl Samples {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    fn merge(&mut self, other: Samples) {
        self.ok.extend(other.ok);
        self.lat.extend(other.lat);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.timed_out |= other.timed_out;
    }

    fn rate(&self) -> f64 {
        self.ok.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile of the latencies.
    fn pct(&self, q: f64) -> Option<Duration> {
        let mut lat = self.lat.clone();
        lat.sort_unstable();
        let rank = ((q * lat.len() as f64).ceil() as usize).max(1);
        lat.get(rank - 1).copied()
    }
}

fn print_first_error(s: &Samples) {
    if let Some(e) = &s.first_error {
        let short: String = e.chars().take(300).collect();
        println!("  first error: {short}");
    }
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// POSTs `count` pods from `CLIENTS` connections that take the next index from a shared counter.
/// Creates the pods numbered `first..first + count` from `CLIENTS` concurrent connections.
async fn create_pods(api: &Api, first: usize, count: usize) -> Result<Samples> {
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        conns.push(api.connect().await.context("connect to skiff-server")?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + CREATE_BOUND;
    let mut tasks = Vec::with_capacity(CLIENTS);
    for mut conn in conns {
        let (api, next) = (api.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            loop {
                let i = first + next.fetch_add(1, Ordering::Relaxed);
                if i >= first + count {
                    break;
                }
                if Instant::now() > deadline {
                    s.timed_out = true;
                    break;
                }
                let t = Instant::now();
                match conn
                    .request(Method::POST, POD_PATH, Some(pod_body(i)))
                    .await
                {
                    Ok((StatusCode::CREATED, _)) => {
                        s.lat.push(t.elapsed());
                        s.ok.push(i);
                    }
                    Ok((status, body)) => {
                        s.error(format!("{status}: {}", String::from_utf8_lossy(&body)))
                    }
                    Err(e) => {
                        s.error(format!("{e:#}"));
                        match api.connect().await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        all.merge(task.await?);
    }
    all.elapsed = start.elapsed();
    Ok(all)
}

/// Sequential GETs of random existing pods on one connection, after a short warm-up.
async fn get_pods(api: &Api, names: &[usize]) -> Result<Samples> {
    let mut conn = api.connect().await?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut s = Samples::default();
    let start = Instant::now();
    for n in 0..GET_WARMUP + GETS {
        if start.elapsed() > GET_BOUND {
            s.timed_out = true;
            break;
        }
        let i = names[rng.below(names.len())];
        let path = format!("{POD_PATH}/{}", pod_name(i));
        let t = Instant::now();
        let (status, body) = conn.request(Method::GET, &path, None).await?;
        let took = t.elapsed();
        if status != StatusCode::OK {
            s.error(format!("{status}: {}", String::from_utf8_lossy(&body)));
        } else if n >= GET_WARMUP {
            s.lat.push(took);
            s.ok.push(i);
        }
    }
    s.elapsed = start.elapsed();
    Ok(s)
}

struct Lists {
    samples: Samples,
    items: usize,
    bytes: usize,
}

/// Sequential full LISTs of the namespace on one connection; the first (unmeasured) one is
/// parsed to check that it returns every pod.
async fn list_pods(api: &Api, expected: usize) -> Result<Lists> {
    let mut conn = api.connect().await?;
    let (status, body) = conn.request(Method::GET, POD_PATH, None).await?;
    if status != StatusCode::OK {
        bail!("LIST answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    let items = list["items"]
        .as_array()
        .ok_or_else(|| anyhow!("LIST has no items"))?
        .len();
    if items < expected {
        bail!("LIST returned {items} pods, {expected} were created");
    }
    let mut s = Samples::default();
    let start = Instant::now();
    for _ in 0..LISTS {
        if start.elapsed() > LIST_BOUND {
            s.timed_out = true;
            break;
        }
        let t = Instant::now();
        let (status, body) = conn.request(Method::GET, POD_PATH, None).await?;
        let took = t.elapsed();
        if status == StatusCode::OK {
            s.lat.push(took);
        } else {
            s.error(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
    }
    s.elapsed = start.elapsed();
    Ok(Lists {
        samples: s,
        items,
        bytes: body.len(),
    })
}

/// Key and value length of the pod `name` as skiff-server stored it in etcd.
async fn stored_pod_size(client: &etcd_client::Client, name: &str) -> Result<(usize, usize)> {
    let mut kv = client.kv_client();
    let keys_only = etcd_client::GetOptions::new()
        .with_prefix()
        .with_keys_only();
    let resp = kv.get("/registry/", Some(keys_only)).await?;
    let suffix = format!("/default/{name}");
    let key = resp
        .kvs()
        .iter()
        .map(|kv| kv.key().to_vec())
        .find(|key| key.ends_with(suffix.as_bytes()))
        .ok_or_else(|| anyhow!("pod {name} not found under /registry/ in etcd"))?;
    let resp = kv.get(key.clone(), None).await?;
    let value = resp
        .kvs()
        .first()
        .ok_or_else(|| anyhow!("pod {name} vanished from etcd"))?;
    Ok((key.len(), value.value().len()))
}

/// `count` plain puts of new keys with the given sizes from `CLIENTS` concurrent tasks sharing
/// one client, as skiff-server shares one. With `as_create`, each put is the transaction
/// skiff-store's `create` sends instead (put if the key's create revision is 0).
async fn raw_puts(
    client: &etcd_client::Client,
    first: usize,
    count: usize,
    key_len: usize,
    value_len: usize,
    as_create: bool,
) -> Result<Samples> {
    let value: Arc<[u8]> = vec![b'v'; value_len].into();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + PUT_BOUND;
    let mut tasks = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (mut kv, next, value) = (client.kv_client(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            loop {
                let i = first + next.fetch_add(1, Ordering::Relaxed);
                if i >= first + count {
                    break;
                }
                if Instant::now() > deadline {
                    s.timed_out = true;
                    break;
                }
                let mut key = format!("/bench-{}/{i:05}-", if as_create { "txn" } else { "put" });
                let pad = key_len.saturating_sub(key.len());
                key.extend(std::iter::repeat_n('k', pad));
                let t = Instant::now();
                let done = if as_create {
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, value.to_vec(), None)]);
                    kv.txn(txn).await.map(|_| ())
                } else {
                    kv.put(key, value.to_vec(), None).await.map(|_| ())
                };
                match done {
                    Ok(()) => {
                        s.lat.push(t.elapsed());
                        s.ok.push(i);
                    }
                    Err(e) => s.error(e.to_string()),
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        all.merge(task.await?);
    }
    all.elapsed = start.elapsed();
    Ok(all)
}

/// Small deterministic generator for the GET names (the run is reproducible).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Table

struct Row {
    name: &'static str,
    value: f64,
    unit: &'static str,
    /// `Some((target, higher_is_better))`, or `None` for a figure without a target.
    target: Option<(f64, bool)>,
}

impl Row {
    fn at_least(name: &'static str, value: f64, target: f64, unit: &'static str) -> Self {
        Row {
            name,
            value,
            unit,
            target: Some((target, true)),
        }
    }

    fn at_most(name: &'static str, value: f64, target: f64, unit: &'static str) -> Self {
        Row {
            name,
            value,
            unit,
            target: Some((target, false)),
        }
    }

    fn info(name: &'static str, value: f64, unit: &'static str) -> Self {
        Row {
            name,
            value,
            unit,
            target: None,
        }
    }

    fn print(&self) {
        let measured = format!("{}{}", number(self.value), self.unit);
        let Some((target, higher)) = self.target else {
            println!("{:<38} {:>14}", self.name, measured);
            return;
        };
        let (sign, ratio) = if higher {
            (">=", self.value / target)
        } else {
            ("<=", target / self.value)
        };
        let verdict = if ratio.is_nan() {
            "no data"
        } else if ratio >= 1.0 {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "{:<38} {:>14} {:>14} {:>7.2}  {}",
            self.name,
            measured,
            format!("{sign} {}{}", number(target), self.unit),
            ratio,
            verdict
        );
    }
}

fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
