//! The cluster DNS server on loopback: real UDP and TCP sockets, a fixed table, and a fake
//! upstream resolver on another loopback port for forwarded names.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use skiff_agent::dns::records::Table;
use skiff_agent::dns::server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// Upper bound for any single exchange, so a broken server fails the test instead of hanging.
const LIMIT: Duration = Duration::from_secs(10);

fn table(extra_service: Option<(&str, &str)>) -> Table {
    let mut services: Vec<Service> = vec![serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))
    .unwrap()];
    services.push(
        serde_json::from_value(json!({
            "metadata": {"name": "big", "namespace": "default"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]},
        }))
        .unwrap(),
    );
    if let Some((name, ip)) = extra_service {
        services.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "clusterIPs": [ip]},
            }))
            .unwrap(),
        );
    }
    let endpoints: Vec<_> = (0..60)
        .map(|i| json!({"addresses": [format!("10.244.3.{i}")], "conditions": {"ready": true}}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "big-x", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4", "endpoints": endpoints,
    }))
    .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default"},
        "status": {"podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}]},
    }))
    .unwrap();
    Table::build(
        "cluster.local",
        &services.iter().collect::<Vec<_>>(),
        &[&slice],
        &[&pod],
    )
    .unwrap()
}

fn ask(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

async fn udp_exchange(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, from) = tokio::time::timeout(LIMIT, sock.recv_from(&mut buf))
        .await
        .expect("no UDP answer")
        .unwrap();
    assert_eq!(from, server);
    buf.truncate(n);
    buf
}

async fn udp_ask(server: SocketAddr, m: &Message) -> Message {
    let reply = Message::from_vec(&udp_exchange(server, &m.to_vec().unwrap()).await).unwrap();
    assert_eq!(reply.metadata.id, m.metadata.id);
    reply
}

async fn tcp_ask_many(server: SocketAddr, msgs: &[Message]) -> Vec<Message> {
    let mut s = tokio::time::timeout(LIMIT, TcpStream::connect(server))
        .await
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    // Several questions on one connection, as RFC 7766 allows.
    for m in msgs {
        let bytes = m.to_vec().unwrap();
        s.write_u16(bytes.len() as u16).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let len = tokio::time::timeout(LIMIT, s.read_u16())
            .await
            .unwrap()
            .unwrap();
        let mut buf = vec![0u8; len as usize];
        s.read_exact(&mut buf).await.unwrap();
        let reply = Message::from_vec(&buf).unwrap();
        assert_eq!(reply.metadata.id, m.metadata.id);
        out.push(reply);
    }
    out
}

fn addrs(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

/// A resolver that answers every A question with 192.0.2.53, over UDP and TCP, counting them.
struct FakeUpstream {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn fake_answer(bytes: &[u8]) -> Vec<u8> {
    let req = Message::from_vec(bytes).unwrap();
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_available = true;
    resp.queries = req.queries.clone();
    let name = req.queries[0].name().clone();
    resp.answers.push(Record::from_rdata(
        name,
        60,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 53))),
    ));
    resp.to_vec().unwrap()
}

async fn fake_upstream() -> FakeUpstream {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let udp_seen = seen.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            udp_seen.fetch_add(1, Ordering::SeqCst);
            let _ = udp.send_to(&fake_answer(&buf[..n]), peer).await;
        }
    });
    let tcp_seen = seen.clone();
    let tcp_task = tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tcp_seen.fetch_add(1, Ordering::SeqCst);
            let Ok(len) = s.read_u16().await else {
                continue;
            };
            let mut buf = vec![0u8; len as usize];
            if s.read_exact(&mut buf).await.is_err() {
                continue;
            }
            let out = fake_answer(&buf);
            let _ = s.write_u16(out.len() as u16).await;
            let _ = s.write_all(&out).await;
        }
    });
    FakeUpstream {
        addr,
        seen,
        tasks: vec![udp_task, tcp_task],
    }
}

async fn start(
    upstreams: Vec<SocketAddr>,
) -> (
    SocketAddr,
    watch::Sender<Arc<Table>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(Arc::new(table(None)));
    let server = Server::bind(
        Config {
            bind: "127.0.0.1:0".parse().unwrap(),
            upstreams,
            forward_timeout: Duration::from_millis(500),
        },
        rx,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    (addr, tx, tokio::spawn(server.run()))
}

#[tokio::test]
async fn answers_cluster_names_over_udp_and_tcp() {
    let (addr, _tx, task) = start(vec![]).await;
    let m = udp_ask(addr, &ask("web.default.svc.cluster.local.", RecordType::A)).await;
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.authoritative);
    assert_eq!(addrs(&m), ["10.96.0.20"]);

    let replies = tcp_ask_many(
        addr,
        &[
            ask("web.default.svc.cluster.local.", RecordType::A),
            ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            ask("7.1.244.10.in-addr.arpa.", RecordType::PTR),
            ask("10-244-1-7.default.pod.cluster.local.", RecordType::A),
            ask("nope.default.svc.cluster.local.", RecordType::A),
            ask("web.default.svc.cluster.local.", RecordType::AAAA),
        ],
    )
    .await;
    assert_eq!(addrs(&replies[0]), ["10.96.0.20"]);
    assert_eq!(
        addrs(&replies[1]),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        addrs(&replies[2]),
        ["10-244-1-7.default.pod.cluster.local."]
    );
    assert_eq!(addrs(&replies[3]), ["10.244.1.7"]);
    assert_eq!(replies[4].metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(replies[5].metadata.response_code, ResponseCode::NoError);
    assert!(replies[5].answers.is_empty());
    task.abort();
}

#[tokio::test]
async fn large_udp_answer_is_truncated_and_whole_over_tcp() {
    let (addr, _tx, task) = start(vec![]).await;
    let q = ask("big.default.svc.cluster.local.", RecordType::A);
    let udp = udp_ask(addr, &q).await;
    assert!(
        udp.metadata.truncation,
        "60 addresses do not fit in 512 bytes"
    );
    assert!(udp.answers.is_empty());
    let tcp = tcp_ask_many(addr, &[q]).await;
    assert!(!tcp[0].metadata.truncation);
    assert_eq!(tcp[0].answers.len(), 60);
    // With an EDNS buffer of 1232 bytes the answer fits in one datagram.
    let mut q = ask("big.default.svc.cluster.local.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    q.edns = Some(edns);
    let udp = udp_ask(addr, &q).await;
    assert!(!udp.metadata.truncation);
    assert_eq!(udp.answers.len(), 60);
    task.abort();
}

#[tokio::test]
async fn outside_names_go_to_the_upstream_over_the_same_transport() {
    let upstream = fake_upstream().await;
    let (addr, _tx, task) = start(vec![upstream.addr]).await;
    let m = udp_ask(addr, &ask("www.example.org.", RecordType::A)).await;
    assert_eq!(addrs(&m), ["192.0.2.53"]);
    assert_eq!(upstream.seen.load(Ordering::SeqCst), 1);
    let t = tcp_ask_many(addr, &[ask("www.example.org.", RecordType::A)]).await;
    assert_eq!(addrs(&t[0]), ["192.0.2.53"]);
    assert_eq!(upstream.seen.load(Ordering::SeqCst), 2);
    // Cluster names and search-path expansions of outside names never leave the node.
    let m = udp_ask(
        addr,
        &ask("www.example.org.default.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(upstream.seen.load(Ordering::SeqCst), 2);
    task.abort();
}

#[tokio::test]
async fn silent_upstream_is_skipped_and_none_left_gives_servfail() {
    // Bound but never read: queries to it go unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream = fake_upstream().await;
    let (addr, _tx, task) = start(vec![silent.local_addr().unwrap(), upstream.addr]).await;
    let m = udp_ask(addr, &ask("www.example.org.", RecordType::A)).await;
    assert_eq!(addrs(&m), ["192.0.2.53"]);
    task.abort();

    let (addr, _tx, task) = start(vec![silent.local_addr().unwrap()]).await;
    let m = udp_ask(addr, &ask("www.example.org.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let t = tcp_ask_many(addr, &[ask("www.example.org.", RecordType::A)]).await;
    assert_eq!(t[0].metadata.response_code, ResponseCode::ServFail);
    task.abort();

    let (addr, _tx, task) = start(vec![]).await;
    let m = udp_ask(addr, &ask("www.example.org.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    task.abort();
}

#[tokio::test]
async fn table_updates_are_served_at_once() {
    let (addr, tx, task) = start(vec![]).await;
    let q = ask("new.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        udp_ask(addr, &q).await.metadata.response_code,
        ResponseCode::NXDomain
    );
    tx.send(Arc::new(table(Some(("new", "10.96.0.99")))))
        .unwrap();
    assert_eq!(addrs(&udp_ask(addr, &q).await), ["10.96.0.99"]);
    task.abort();
}

#[tokio::test]
async fn malformed_query_gets_formerr() {
    let (addr, _tx, task) = start(vec![]).await;
    // A query header (id 0x1234, QR=0) announcing one question that is not there.
    let junk = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
    let reply = Message::from_vec(&udp_exchange(addr, &junk).await).unwrap();
    assert_eq!(reply.metadata.id, 0x1234);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // The server keeps answering afterwards.
    let m = udp_ask(addr, &ask("web.default.svc.cluster.local.", RecordType::A)).await;
    assert_eq!(addrs(&m), ["10.96.0.20"]);
    task.abort();
}
