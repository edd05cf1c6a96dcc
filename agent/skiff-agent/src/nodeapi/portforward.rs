//! `kubectl port-forward` over SPDY (`portforward.k8s.io`): for each local connection the
//! client opens an error stream and a data stream with the same `requestID` and `port`
//! headers; the agent connects to that port on the pod's loopback from inside the pod's
//! network namespace and relays bytes until either side ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::spdy::{self, Frame, Session};

pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that tunnels the SPDY connection.
pub const WS_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pod whose ports are forwarded.
#[derive(Debug, Clone)]
pub struct PodNet {
    /// `namespace/name`, for error messages.
    pub pod: String,
    pub uid: String,
    pub netns: PathBuf,
}

/// One forwarded connection being set up: its two streams as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Option<Vec<u8>>>)>,
    port: Option<u16>,
}

/// Serves port-forward requests on a SPDY connection until the client ends it.
pub async fn serve(mut session: Session, target: PodNet) {
    let out = session.outgoing.clone();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Client bytes for each data stream: `Some(bytes)`, or `None` when the client ends it.
    let mut to_pod: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    while let Some(frame) = session.incoming.recv().await {
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => {
                let reply = Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                };
                if out.send(reply).await.is_err() {
                    break;
                }
                let kind = spdy::header(&headers, "streamtype").unwrap_or("");
                let port = spdy::header(&headers, "port").unwrap_or("");
                // Clients older than requestID pair streams by port.
                let id = spdy::header(&headers, "requestid")
                    .unwrap_or(port)
                    .to_string();
                let pair = pairs.entry(id.clone()).or_default();
                match port.parse::<u16>() {
                    Ok(p) if p > 0 => pair.port = Some(p),
                    _ => {}
                }
                match kind {
                    "error" => pair.error = Some(stream_id),
                    "data" => {
                        let (tx, rx) = mpsc::channel(32);
                        to_pod.insert(stream_id, tx);
                        pair.data = Some((stream_id, rx));
                    }
                    other => {
                        tracing::debug!(
                            stream_id,
                            kind = other,
                            "port-forward: unknown stream type"
                        );
                        let _ = out
                            .send(Frame::RstStream {
                                stream_id,
                                status: spdy::RST_PROTOCOL_ERROR,
                            })
                            .await;
                        continue;
                    }
                }
                if pair.error.is_some() && pair.data.is_some() {
                    let Pair { error, data, port } = pairs.remove(&id).expect("present");
                    let (error, (data, rx)) = (error.expect("set"), data.expect("set"));
                    tasks.retain(|t| !t.is_finished());
                    tasks.push(tokio::spawn(forward(
                        out.clone(),
                        target.clone(),
                        error,
                        data,
                        port,
                        header_port(port, &headers),
                        rx,
                    )));
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if let Some(tx) = to_pod.get(&stream_id) {
                    if !data.is_empty() && tx.send(Some(data)).await.is_err() {
                        to_pod.remove(&stream_id);
                        continue;
                    }
                    if flags & spdy::FLAG_FIN != 0 {
                        let _ = tx.send(None).await;
                        to_pod.remove(&stream_id);
                    }
                }
            }
            Frame::RstStream { stream_id, .. } => {
                to_pod.remove(&stream_id);
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    for t in tasks {
        t.abort();
    }
}

fn header_port(port: Option<u16>, headers: &spdy::Headers) -> String {
    port.map(|p| p.to_string())
        .unwrap_or_else(|| spdy::header(headers, "port").unwrap_or("").to_string())
}

async fn forward(
    out: mpsc::Sender<Frame>,
    target: PodNet,
    error_id: u32,
    data_id: u32,
    port: Option<u16>,
    port_text: String,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
) {
    let connected = match port {
        Some(p) => crate::pods::dial::connect(
            &target.netns,
            SocketAddr::from(([127, 0, 0, 1], p)),
            CONNECT_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string()),
        None => Err(format!("invalid port {port_text:?}")),
    };
    let tcp = match connected {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "error forwarding port {port_text} to pod {}, uid {}: {e}",
                target.pod, target.uid
            );
            spdy::send_data(&out, error_id, msg.as_bytes()).await;
            spdy::send_fin(&out, error_id).await;
            spdy::send_fin(&out, data_id).await;
            return;
        }
    };
    let (mut r, mut w) = tcp.into_split();
    let upstream = async move {
        // `None` (the client ended its side) and a closed channel (reset) both end it.
        while let Some(Some(bytes)) = from_client.recv().await {
            if w.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let down_out = out.clone();
    let downstream = async move {
        let mut buf = vec![0u8; spdy::DATA_CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !spdy::send_data(&down_out, data_id, &buf[..n]).await {
                        return;
                    }
                }
            }
        }
        spdy::send_fin(&down_out, data_id).await;
    };
    tokio::join!(upstream, downstream);
    spdy::send_fin(&out, error_id).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use spdy::{Decoder, Encoder, FLAG_FIN};

    fn h(pairs: &[(&str, &str)]) -> spdy::Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Without a pod network namespace the connection fails; the client gets replies to
    /// both streams, the error text on the error stream and both streams ended.
    #[tokio::test]
    async fn a_failed_connection_is_reported_on_the_error_stream() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let target = PodNet {
            pod: "default/web".into(),
            uid: "u1".into(),
            netns: PathBuf::from("/nonexistent/netns"),
        };
        let served = tokio::spawn(serve(spdy::start(server), target));
        let (mut cr, mut cw) = tokio::io::split(client);
        let mut enc = Encoder::default();
        for (id, kind) in [(1, "error"), (3, "data")] {
            let f = Frame::SynStream {
                stream_id: id,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", kind), ("port", "80"), ("requestid", "0")]),
            };
            cw.write_all(&enc.encode(&f).unwrap()).await.unwrap();
        }
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let mut fins = 0;
        while fins < 2 {
            let n = cr.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed early: {got:?}");
            dec.feed(&buf[..n]);
            while let Some(f) = dec.next_frame().unwrap() {
                if matches!(f, Frame::Data { flags, .. } if flags & FLAG_FIN != 0) {
                    fins += 1;
                }
                got.push(f);
            }
        }
        assert!(got.contains(&Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: vec![]
        }));
        assert!(got.contains(&Frame::SynReply {
            stream_id: 3,
            flags: 0,
            headers: vec![]
        }));
        let error_text: Vec<u8> = got
            .iter()
            .filter_map(|f| match f {
                Frame::Data {
                    stream_id: 1, data, ..
                } => Some(data.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let text = String::from_utf8(error_text).unwrap();
        assert!(
            text.starts_with("error forwarding port 80 to pod default/web, uid u1:"),
            "{text}"
        );
        cw.write_all(
            &enc.encode(&Frame::GoAway {
                last_good: 0,
                status: 0,
            })
            .unwrap(),
        )
        .await
        .unwrap();
        served.await.unwrap();
    }
}
