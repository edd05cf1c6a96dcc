//! The DNS listener: UDP and TCP on one address, answers from the current table, truncation for
//! UDP, and forwarding of names outside the cluster to the node's upstream resolvers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::ProtoError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};

use super::query::{self, Outcome, MAX_UDP_PAYLOAD};
use super::records::Table;

/// Plain DNS over UDP without EDNS is limited to 512 bytes (RFC 1035 §4.2.1).
const CLASSIC_UDP_LIMIT: usize = 512;
/// Forwarded queries in flight at once; past that, SERVFAIL at once instead of piling up tasks.
const MAX_FORWARDS: usize = 1024;
/// A TCP client that sends nothing for this long is disconnected (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the DNS {proto} socket on {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading upstream resolvers from {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("bad DNS upstream {value:?}: expected IP or IP:port")]
    BadUpstream { value: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen, UDP and TCP (port 0: any free port, the same for both).
    pub bind: SocketAddr,
    /// Resolvers for names outside the cluster, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream gets to answer before the next is tried.
    pub forward_timeout: Duration,
}

pub struct Server {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    table: watch::Receiver<Arc<Table>>,
    upstreams: Vec<SocketAddr>,
    forward_timeout: Duration,
    forwards: Arc<Semaphore>,
}

impl Server {
    /// Binds both sockets; queries are answered from whatever table `table` holds at the time.
    pub async fn bind(
        config: Config,
        table: watch::Receiver<Arc<Table>>,
    ) -> Result<Server, ServerError> {
        let (udp, tcp) = bind_pair(config.bind).await?;
        if config.upstreams.is_empty() {
            tracing::warn!(
                "cluster DNS has no upstream resolver: names outside the cluster get SERVFAIL"
            );
        }
        Ok(Server {
            udp: Arc::new(udp),
            tcp,
            shared: Arc::new(Shared {
                table,
                upstreams: config.upstreams,
                forward_timeout: config.forward_timeout,
                forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.udp
            .local_addr()
            .expect("a bound UDP socket has an address")
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..workers {
            tasks.spawn(udp_worker(self.udp.clone(), self.shared.clone()));
        }
        tasks.spawn(tcp_acceptor(self.tcp, self.shared.clone()));
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "cluster DNS task ended");
            }
        }
    }
}

/// UDP and TCP on the same port; with port 0 the kernel picks the UDP port and TCP may find it
/// taken, so a few tries.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), ServerError> {
    let mut last = None;
    for _ in 0..if addr.port() == 0 { 16 } else { 1 } {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                proto: "UDP",
                addr,
                source,
            })?;
        let actual = udp.local_addr().map_err(|source| ServerError::Bind {
            proto: "UDP",
            addr,
            source,
        })?;
        match TcpListener::bind(actual).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(ServerError::Bind {
                    proto: "TCP",
                    addr: actual,
                    source,
                })
            }
        }
    }
    Err(last.expect("at least one try"))
}

async fn udp_worker(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; they concern one
                // client, not the socket.
                tracing::debug!(error = %e, "cluster DNS: UDP receive");
                continue;
            }
        };
        let bytes = &buf[..n];
        let Some(req) = parse_or_reject(bytes, |reply| {
            let _ = socket.try_send_to(&reply, peer);
        }) else {
            continue;
        };
        let table = shared.table.borrow().clone();
        match query::respond(&table, &req) {
            Outcome::Reply(resp) => {
                if let Ok(out) = encode_udp(&resp, udp_limit(&req)) {
                    let _ = socket.send_to(&out, peer).await;
                }
            }
            Outcome::Forward => {
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    send_servfail_udp(&socket, &req, peer).await;
                    continue;
                };
                let (socket, shared, bytes) = (socket.clone(), shared.clone(), bytes.to_vec());
                tokio::spawn(async move {
                    let _permit = permit;
                    match forward_udp(&shared, &bytes).await {
                        Some(answer) => {
                            let _ = socket.send_to(&answer, peer).await;
                        }
                        None => send_servfail_udp(&socket, &req, peer).await,
                    }
                });
            }
        }
    }
}

async fn send_servfail_udp(socket: &UdpSocket, req: &Message, peer: SocketAddr) {
    if let Ok(out) = servfail(req).to_vec() {
        let _ = socket.send_to(&out, peer).await;
    }
}

async fn tcp_acceptor(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(tcp_connection(stream, shared.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "cluster DNS: TCP accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Length-prefixed messages (RFC 1035 §4.2.2), several per connection, answered in order.
async fn tcp_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut bytes = vec![0u8; len as usize];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut bytes)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut rejected = None;
        let Some(req) = parse_or_reject(&bytes, |r| rejected = Some(r)) else {
            match rejected {
                Some(reply) if write_framed(&mut stream, &reply).await.is_ok() => continue,
                _ => return,
            }
        };
        let table = shared.table.borrow().clone();
        let out = match query::respond(&table, &req) {
            Outcome::Reply(resp) => resp.to_vec().ok(),
            Outcome::Forward => match shared.forwards.clone().try_acquire_owned() {
                Ok(_permit) => forward_tcp(&shared, &bytes).await,
                Err(_) => None,
            },
        };
        let out = match out {
            Some(out) => out,
            None => match servfail(&req).to_vec() {
                Ok(out) => out,
                Err(_) => return,
            },
        };
        if write_framed(&mut stream, &out).await.is_err() {
            return;
        }
    }
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::other("DNS message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

/// Parses a query. A message that is not one gets FORMERR when it has a query header to answer
/// to, and nothing otherwise (never answer a response: that is how reflection loops start).
fn parse_or_reject(bytes: &[u8], reject: impl FnOnce(Vec<u8>)) -> Option<Message> {
    match Message::from_vec(bytes) {
        Ok(m) if m.metadata.message_type == hickory_proto::op::MessageType::Query => Some(m),
        Ok(_) => None,
        Err(_) => {
            let is_query = bytes.len() >= 12 && bytes[2] & 0x80 == 0;
            if is_query {
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                if let Ok(out) = query::format_error(id).to_vec() {
                    reject(out);
                }
            }
            None
        }
    }
}

/// The UDP size a client accepts: 512 without EDNS, its advertised size (capped at ours) with.
pub fn udp_limit(req: &Message) -> usize {
    req.edns
        .as_ref()
        .map(|e| usize::from(e.max_payload().min(MAX_UDP_PAYLOAD)).max(CLASSIC_UDP_LIMIT))
        .unwrap_or(CLASSIC_UDP_LIMIT)
}

/// Encodes a UDP answer; one that does not fit goes out as header + question with TC set, and
/// the client retries over TCP.
pub fn encode_udp(resp: &Message, limit: usize) -> Result<Vec<u8>, ProtoError> {
    let out = resp.to_vec()?;
    if out.len() <= limit {
        return Ok(out);
    }
    resp.truncate().to_vec()
}

fn servfail(req: &Message) -> Message {
    let mut m = Message::error_msg(
        req.metadata.id,
        req.metadata.op_code,
        ResponseCode::ServFail,
    );
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = req.queries.clone();
    m
}

/// Sends the client's bytes as they are to each upstream in turn; the first answer with the
/// query's id wins.
async fn forward_udp(shared: &Shared, query: &[u8]) -> Option<Vec<u8>> {
    for upstream in &shared.upstreams {
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (IpAddr::from([0u8; 4]), 0).into(),
            SocketAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
        };
        let Ok(sock) = UdpSocket::bind(local).await else {
            continue;
        };
        if sock.connect(upstream).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let wait = async {
            let mut buf = vec![0u8; 65535];
            loop {
                let n = sock.recv(&mut buf).await.ok()?;
                // Anything but the answer to this id (late junk, spoofing attempts) is ignored.
                if n >= 12 && buf[..2] == query[..2] && buf[2] & 0x80 != 0 {
                    return Some(buf[..n].to_vec());
                }
            }
        };
        match tokio::time::timeout(shared.forward_timeout, wait).await {
            Ok(Some(answer)) => return Some(answer),
            _ => tracing::debug!(%upstream, "cluster DNS: upstream did not answer"),
        }
    }
    None
}

async fn forward_tcp(shared: &Shared, query: &[u8]) -> Option<Vec<u8>> {
    for upstream in &shared.upstreams {
        let exchange = async {
            let mut s = TcpStream::connect(upstream).await.ok()?;
            write_framed(&mut s, query).await.ok()?;
            let len = s.read_u16().await.ok()?;
            let mut buf = vec![0u8; len as usize];
            s.read_exact(&mut buf).await.ok()?;
            (buf.len() >= 12 && buf[..2] == query[..2]).then_some(buf)
        };
        if let Ok(Some(answer)) = tokio::time::timeout(shared.forward_timeout, exchange).await {
            return Some(answer);
        }
        tracing::debug!(%upstream, "cluster DNS: upstream did not answer over TCP");
    }
    None
}

/// `nameserver` lines of a resolv.conf, port 53.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        // A scoped IPv6 address (`fe80::1%eth0`) does not parse; such resolvers are skipped.
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// `IP` or `IP:port` (`[v6]:port`) from `--dns-upstream`.
pub fn parse_upstream(value: &str) -> Result<SocketAddr, ServerError> {
    value
        .parse::<SocketAddr>()
        .or_else(|_| value.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| ServerError::BadUpstream {
            value: value.to_string(),
        })
}

/// The upstreams that are not this server itself: forwarding to the cluster DNS service or to
/// our own socket would send a query around in circles until it times out.
pub fn without_loops(
    upstreams: Vec<SocketAddr>,
    bind: SocketAddr,
    cluster_dns: Option<IpAddr>,
) -> Vec<SocketAddr> {
    upstreams
        .into_iter()
        .filter(|u| {
            let is_self = *u == bind
                || (bind.ip().is_unspecified()
                    && u.port() == bind.port()
                    && (u.ip().is_loopback() || u.ip().is_unspecified()));
            let is_service = Some(u.ip()) == cluster_dns;
            if is_self || is_service {
                tracing::warn!(upstream = %u, "cluster DNS: skipping an upstream that is the cluster DNS itself");
            }
            !is_self && !is_service
        })
        .collect()
}

/// Upstreams from `--dns-upstream` if given, else the resolv.conf at `path`, loops removed.
pub fn upstreams(
    explicit: &[String],
    resolv_conf: &std::path::Path,
    bind: SocketAddr,
    cluster_dns: Option<IpAddr>,
) -> Result<Vec<SocketAddr>, ServerError> {
    let found = if explicit.is_empty() {
        let text =
            std::fs::read_to_string(resolv_conf).map_err(|source| ServerError::ResolvConf {
                path: resolv_conf.display().to_string(),
                source,
            })?;
        resolv_conf_nameservers(&text)
    } else {
        explicit
            .iter()
            .map(|u| parse_upstream(u))
            .collect::<Result<_, _>>()?
    };
    Ok(without_loops(found, bind, cluster_dns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_from_resolv_conf() {
        let text = "# comment\nsearch example.org\nnameserver 10.0.0.2\nnameserver  fd00::53\n\
                    nameserver fe80::1%eth0\nnameserver\noptions ndots:5\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn upstream_flag_values() {
        assert_eq!(
            parse_upstream("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_upstream("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_upstream("[::1]:54").unwrap(),
            "[::1]:54".parse::<SocketAddr>().unwrap()
        );
        let err = parse_upstream("dns.example").unwrap_err().to_string();
        assert!(err.contains("dns.example"), "{err}");
    }

    #[test]
    fn loops_are_removed() {
        let up = |s: &str| s.parse::<SocketAddr>().unwrap();
        let list = vec![
            up("10.96.0.10:53"),
            up("192.0.2.1:53"),
            up("127.0.0.53:53"),
            up("10.0.0.5:53"),
        ];
        let cluster_dns = Some("10.96.0.10".parse().unwrap());
        // Bound on all addresses, port 53: a loopback resolver on 53 would be ourselves.
        assert_eq!(
            without_loops(list.clone(), up("0.0.0.0:53"), cluster_dns),
            [up("192.0.2.1:53"), up("10.0.0.5:53")]
        );
        // Bound on one address: only that one is ourselves.
        assert_eq!(
            without_loops(list, up("10.0.0.5:53"), cluster_dns),
            [up("192.0.2.1:53"), up("127.0.0.53:53")]
        );
    }

    #[test]
    fn upstreams_from_file_or_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 127.0.0.2\n").unwrap();
        let bind = "127.0.0.1:53".parse().unwrap();
        assert_eq!(
            upstreams(&[], &path, bind, None).unwrap(),
            ["127.0.0.2:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            upstreams(&["127.0.0.3:99".into()], &path, bind, None).unwrap(),
            ["127.0.0.3:99".parse::<SocketAddr>().unwrap()]
        );
        let missing = dir.path().join("nope");
        let err = upstreams(&[], &missing, bind, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
