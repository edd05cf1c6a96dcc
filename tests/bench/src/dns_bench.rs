//! Cluster DNS throughput and latency (issue 7): Skiff's DNS server (the agent's `dns` module,
//! in its own runtime threads) and dnsmasq (Debian's `dnsmasq-base`, its own process) serve the
//! same service names on loopback in the same run; a Rust client loop keeps a fixed number of
//! UDP queries in flight for a fixed time against each and reports queries/s and p50/p99.
//! Targets: ≥ 20,000 q/s and p99 ≤ 2 ms. Timings are printed, never asserted.
//!
//! `cargo run --release -p skiff-bench --bin dns-bench [SERVICES] [SECONDS] [IN_FLIGHT]`
//! (defaults 1000, 5, 8). Without dnsmasq on PATH the comparison is skipped and says so.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use skiff_agent::dns::records::Table;
use skiff_agent::dns::server::{Config, Server};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// A query that gets no answer within this long counts as lost, not as a latency sample.
const LOST_AFTER: Duration = Duration::from_secs(1);

struct Figures {
    answered: usize,
    lost: usize,
    wrong: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn qps(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
}

fn service_ip(i: usize) -> Ipv4Addr {
    // 10.96.1.0 onwards, clear of the addresses the cluster reserves.
    let n = (1u32 << 8) + i as u32;
    Ipv4Addr::new(10, 96, (n >> 8) as u8, (n & 0xff) as u8)
}

fn services(count: usize) -> Vec<(String, Ipv4Addr)> {
    (0..count)
        .map(|i| (format!("svc-{i}.bench.svc.cluster.local"), service_ip(i)))
        .collect()
}

fn table(names: &[(String, Ipv4Addr)]) -> anyhow::Result<Table> {
    let objects: Vec<Service> = names
        .iter()
        .enumerate()
        .map(|(i, (_, ip))| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                "spec": {"clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                         "ports": [{"name": "http", "port": 80}]},
            }))
        })
        .collect::<Result<_, _>>()?;
    Ok(Table::build(
        "cluster.local",
        &objects.iter().collect::<Vec<_>>(),
        &[],
        &[],
    )?)
}

/// Skiff's server on its own two-thread runtime, so it does not share the client's threads.
fn start_skiff(table: Table) -> anyhow::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let (_tx, rx) = watch::channel(Arc::new(table));
            let server = Server::bind(
                Config {
                    bind: "127.0.0.1:0".parse().expect("address"),
                    upstreams: vec![],
                    forward_timeout: Duration::from_secs(1),
                },
                rx,
            )
            .await
            .expect("bind the DNS server");
            addr_tx.send(server.local_addr()).expect("report address");
            // Serve until the benchmark process exits.
            server.run().await;
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10))?;
    Ok((addr, handle))
}

struct Dnsmasq {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dnsmasq(names: &[(String, Ipv4Addr)]) -> anyhow::Result<Option<(SocketAddr, Dnsmasq)>> {
    let Some(bin) = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        println!(
            "dnsmasq not installed (Debian: apt-get install dnsmasq-base): comparison skipped"
        );
        return Ok(None);
    };
    let dir = tempfile::tempdir()?;
    let hosts = dir.path().join("hosts");
    let text: String = names.iter().map(|(n, ip)| format!("{ip} {n}\n")).collect();
    std::fs::write(&hosts, text)?;
    // dnsmasq drops to `nobody`: the file must be readable by it.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let port = free_udp_port()?;
    let child = Command::new(bin)
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--local=/cluster.local/",
            "--local-ttl=30",
            "--cache-size=10000",
            &format!("--port={port}"),
            &format!("--addn-hosts={}", hosts.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Some((
        SocketAddr::from(([127, 0, 0, 1], port)),
        Dnsmasq { child, _dir: dir },
    )))
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn encoded_queries(names: &[(String, Ipv4Addr)]) -> anyhow::Result<Vec<Vec<u8>>> {
    names
        .iter()
        .map(|(n, _)| {
            let mut m = Message::query();
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(
                Name::from_ascii(format!("{n}."))?,
                RecordType::A,
            ));
            Ok(m.to_vec()?)
        })
        .collect()
}

/// Waits until `server` answers, so start-up time is not measured.
async fn wait_ready(server: SocketAddr, query: &[u8]) -> anyhow::Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let mut buf = [0u8; 512];
    for _ in 0..50 {
        sock.send_to(query, server).await?;
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(100), sock.recv(&mut buf)).await
        {
            return Ok(());
        }
    }
    anyhow::bail!("{server} never answered")
}

/// `in_flight` client tasks, each one UDP socket with one query outstanding, for `duration`.
/// An answer counts when its id matches, RCODE is NOERROR and it has exactly one answer.
async fn load(
    server: SocketAddr,
    queries: Arc<Vec<Vec<u8>>>,
    in_flight: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for worker in 0..in_flight {
        let queries = queries.clone();
        tasks.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await?;
            sock.connect(server).await?;
            let mut f = Figures {
                answered: 0,
                lost: 0,
                wrong: 0,
                elapsed: Duration::ZERO,
                latencies: Vec::with_capacity(200_000),
            };
            let mut buf = [0u8; 1500];
            let mut i = worker;
            let mut id: u16 = (worker as u16).wrapping_mul(4099);
            while Instant::now() < deadline {
                let mut q = queries[i % queries.len()].clone();
                i += in_flight;
                id = id.wrapping_add(1);
                q[..2].copy_from_slice(&id.to_be_bytes());
                let sent = Instant::now();
                sock.send(&q).await?;
                let got = tokio::time::timeout(LOST_AFTER, async {
                    loop {
                        let n = sock.recv(&mut buf).await?;
                        // A late answer to an earlier, lost query is skipped.
                        if n >= 12 && buf[..2] == id.to_be_bytes() {
                            return Ok::<usize, std::io::Error>(n);
                        }
                    }
                })
                .await;
                match got {
                    Ok(Ok(_)) => {
                        let rcode = buf[3] & 0x0f;
                        let answers = u16::from_be_bytes([buf[6], buf[7]]);
                        if rcode == 0 && answers == 1 {
                            f.answered += 1;
                            f.latencies.push(sent.elapsed());
                        } else {
                            f.wrong += 1;
                        }
                    }
                    Ok(Err(e)) => return Err(anyhow::Error::from(e)),
                    Err(_) => f.lost += 1,
                }
            }
            Ok::<Figures, anyhow::Error>(f)
        }));
    }
    let mut all = Figures {
        answered: 0,
        lost: 0,
        wrong: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        let f = t.await??;
        all.answered += f.answered;
        all.lost += f.lost;
        all.wrong += f.wrong;
        all.latencies.extend(f.latencies);
    }
    all.elapsed = start.elapsed();
    all.latencies.sort();
    Ok(all)
}

fn report(label: &str, f: &Figures) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {label} | {:.0} q/s | {:.3} ms | {:.3} ms | {} lost, {} wrong |",
        f.qps(),
        ms(f.percentile(0.50)),
        ms(f.percentile(0.99)),
        f.lost,
        f.wrong
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let arg = |n: usize, default: u64| -> anyhow::Result<u64> {
        Ok(std::env::args()
            .nth(n)
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let count = arg(1, 1000)? as usize;
    let seconds = arg(2, 5)?.min(120);
    let in_flight = arg(3, 8)?.clamp(1, 256) as usize;
    anyhow::ensure!((1..=60_000).contains(&count), "SERVICES must be 1..=60000");
    let names = services(count);
    let queries = Arc::new(encoded_queries(&names)?);
    let duration = Duration::from_secs(seconds);
    println!(
        "{count} services, {in_flight} queries in flight, {seconds} s per server, UDP on loopback"
    );
    println!("| server | throughput | p50 | p99 | errors |");
    println!("|---|---|---|---|---|");

    let (skiff_addr, _server_thread) = start_skiff(table(&names)?)?;
    wait_ready(skiff_addr, &queries[0]).await?;
    let skiff = load(skiff_addr, queries.clone(), in_flight, duration).await?;
    report("skiff-agent dns", &skiff);

    let dnsmasq = match start_dnsmasq(&names)? {
        Some((addr, guard)) => {
            wait_ready(addr, &queries[0]).await?;
            let f = load(addr, queries.clone(), in_flight, duration).await?;
            report("dnsmasq", &f);
            drop(guard);
            Some(f)
        }
        None => None,
    };
    println!();
    println!(
        "target ≥ 20,000 q/s: {:.0} q/s (ratio {:.2}); target p99 ≤ 2 ms: {:.3} ms (ratio {:.2})",
        skiff.qps(),
        skiff.qps() / 20_000.0,
        skiff.percentile(0.99).as_secs_f64() * 1000.0,
        2.0 / (skiff.percentile(0.99).as_secs_f64() * 1000.0).max(1e-6)
    );
    if let Some(d) = dnsmasq {
        println!(
            "skiff / dnsmasq throughput: {:.2}×, p99 {:.2}×",
            skiff.qps() / d.qps().max(1e-9),
            skiff.percentile(0.99).as_secs_f64() / d.percentile(0.99).as_secs_f64().max(1e-9)
        );
    }
    // The server thread serves forever; leaving main ends the process and it with it.
    Ok(())
}
