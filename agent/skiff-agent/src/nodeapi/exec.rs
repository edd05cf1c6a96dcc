//! `kubectl exec`: a process started in the container through its skiff-shim (the agent never
//! forks), its stdio relayed to whatever protocol carries the session (WebSocket channels
//! or SPDY streams), and the exit code returned as a `metav1.Status`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy;
use super::websocket::{self, Message};

/// What the client asked for (`/exec/...?command=…&stdin&stdout&stderr&tty`).
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub shim_root: PathBuf,
    pub container_id: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// Attach to the container's own process instead of running `command`.
    pub attach: bool,
}

/// From the client to the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin(Vec<u8>),
    StdinClosed,
    Resize { width: u16, height: u16 },
}

/// From the process to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// How the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

impl Outcome {
    /// The status kubelet sends on the error channel; kubectl maps `NonZeroExitCode` to its
    /// own exit code.
    pub fn status(&self, command: &[String]) -> Value {
        match self {
            Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited(code) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!(
                    "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                    command.join(" ")
                ),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(message) => json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "code": 500,
            }),
        }
    }
}

/// Parses a resize message: `{"Width":80,"Height":24}`.
pub fn parse_resize(data: &[u8]) -> Option<Input> {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    let s: Size = serde_json::from_slice(data).ok()?;
    Some(Input::Resize {
        width: s.width,
        height: s.height,
    })
}

/// A descriptor made non-blocking and driven by tokio.
struct Fd(AsyncFd<OwnedFd>);

impl Fd {
    fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the descriptor is owned by the AsyncFd and stays open for its whole life.
        let registered = unsafe { AsyncFd::register(fd) };
        registered
            .map(Fd)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// 0 at the end; a terminal whose other side is closed reads EIO, which is its end too.
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(std::io::Error::from))
            {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

async fn pump(fd: Arc<Fd>, to: mpsc::Sender<Output>, stderr: bool, forward: bool) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match fd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if forward => {
                let data = buf[..n].to_vec();
                let out = if stderr {
                    Output::Stderr(data)
                } else {
                    Output::Stdout(data)
                };
                if to.send(out).await.is_err() {
                    return;
                }
            }
            // Not wanted by the client, but drained so the process does not block.
            Ok(_) => {}
        }
    }
}

/// Runs the process and relays until it has exited and its output is drained. Closing
/// `input` (the client went away) closes the process's stdin, or hangs up its terminal.
pub async fn run(
    req: ExecRequest,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
) -> Outcome {
    let shim_req = if req.attach {
        skiff_shim::supervisor::Request::Attach { stdin: req.stdin }
    } else {
        skiff_shim::supervisor::Request::Exec {
            args: req.command.clone(),
            env: None,
            cwd: None,
            timeout_ms: None,
            stream: true,
            tty: req.tty,
        }
    };
    let (root, id) = (req.shim_root.clone(), req.container_id.clone());
    let started = tokio::task::spawn_blocking(move || {
        skiff_shim::supervisor::exec_stream(&root, &id, &shim_req)
    })
    .await;
    let mut stream = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Outcome::Failed(format!(
                "failed to exec in container {}: {e}",
                req.container_id
            ))
        }
        Err(e) => return Outcome::Failed(format!("exec task failed: {e}")),
    };
    let fds = std::mem::take(&mut stream.fds);
    let connection = stream.connection();
    let exit = tokio::task::spawn_blocking(move || stream.wait());
    // An attach gets what the container has: one terminal, or three streams.
    let tty = if req.attach { fds.len() == 1 } else { req.tty };
    let expected = if tty { 1 } else { 3 };
    if fds.len() != expected {
        return Outcome::Failed(format!(
            "the shim passed {} descriptors for the exec, expected {expected}",
            fds.len()
        ));
    }
    let fds: Vec<Arc<Fd>> = match fds
        .into_iter()
        .map(|f| Fd::new(f).map(Arc::new))
        .collect::<Result<_, _>>()
    {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("exec stdio: {e}")),
    };
    let (stdin, readers) = if tty {
        let t = fds[0].clone();
        (
            Some(t.clone()),
            vec![tokio::spawn(pump(t, output.clone(), false, req.stdout))],
        )
    } else {
        (
            Some(fds[0].clone()),
            vec![
                tokio::spawn(pump(fds[1].clone(), output.clone(), false, req.stdout)),
                tokio::spawn(pump(fds[2].clone(), output.clone(), true, req.stderr)),
            ],
        )
    };
    drop(fds);
    drop(output);
    let mut stdin = if req.stdin { stdin } else { None };
    let mut readers = readers;
    let feeder = async {
        while let Some(i) = input.recv().await {
            match i {
                Input::Stdin(data) => {
                    if let Some(fd) = &stdin {
                        if fd.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                // A terminal has no separate end of input; the process sees EOF when the
                // user types it.
                Input::StdinClosed if !tty => stdin = None,
                Input::StdinClosed => {}
                Input::Resize { width, height } if req.attach => {
                    // The terminal is the shim's; the client holds a socket to it.
                    let (root, id) = (req.shim_root.clone(), req.container_id.clone());
                    let resize = skiff_shim::supervisor::Request::Resize {
                        rows: height,
                        cols: width,
                    };
                    let _ = tokio::task::spawn_blocking(move || {
                        skiff_shim::supervisor::request(
                            &root,
                            &id,
                            &resize,
                            std::time::Duration::from_secs(2),
                        )
                    })
                    .await;
                }
                Input::Resize { width, height } => {
                    if let (true, Some(fd)) = (tty, &stdin) {
                        let _ = skiff_shim::supervisor::set_winsize(
                            fd.0.get_ref().as_raw_fd(),
                            height,
                            width,
                        );
                    }
                }
            }
        }
    };
    tokio::pin!(exit);
    let finished = tokio::select! {
        r = &mut exit => Some(r),
        _ = feeder => None,
    };
    let code = match finished {
        Some(r) => r,
        None if req.attach => {
            // The client detached; the container goes on. Hanging up tells the shim.
            for r in &readers {
                r.abort();
            }
            drop(stdin.take());
            if let Some(c) = connection {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            let _ = exit.await;
            return Outcome::Exited(0);
        }
        None => {
            // The client is gone: hang up so that an interactive shell ends too.
            for r in &readers {
                r.abort();
            }
            drop(stdin.take());
            exit.await
        }
    };
    for r in readers.drain(..) {
        let _ = r.await;
    }
    match code {
        // An attach ends with the container, whatever its exit code (kubelet's attach
        // reports success; `kubectl run -i` reads the exit code from the pod).
        Ok(Ok(_)) if req.attach => Outcome::Exited(0),
        Ok(Ok(c)) => Outcome::Exited(c),
        Ok(Err(e)) => Outcome::Failed(format!("exec in {}: {e}", req.container_id)),
        Err(e) => Outcome::Failed(format!("exec task failed: {e}")),
    }
}

/// The WebSocket subprotocols served, best first.
pub const WS_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Runs an exec session over an upgraded WebSocket connection (`v5.channel.k8s.io` or
/// `v4.channel.k8s.io`): channel 0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize, 255 close.
pub async fn serve_websocket<S>(conn: S, req: ExecRequest)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, w) = tokio::io::split(conn);
    let w = Arc::new(tokio::sync::Mutex::new(w));
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let command = req.command.clone();
    let session = tokio::spawn(run(req, in_rx, out_tx));
    let reader_w = w.clone();
    let reader = tokio::spawn(async move {
        let mut dec = websocket::Decoder::default();
        loop {
            match websocket::read_message(&mut r, &reader_w, &mut dec).await {
                Ok(Some(Message::Binary(m))) if !m.is_empty() => {
                    let input = match (m[0], &m[1..]) {
                        (0, data) => Some(Input::Stdin(data.to_vec())),
                        (4, data) => parse_resize(data),
                        (255, [0]) => Some(Input::StdinClosed),
                        _ => None,
                    };
                    if let Some(i) = input {
                        if in_tx.send(i).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    });
    while let Some(o) = out_rx.recv().await {
        let (ch, data) = match o {
            Output::Stdout(d) => (1u8, d),
            Output::Stderr(d) => (2u8, d),
        };
        let mut msg = Vec::with_capacity(data.len() + 1);
        msg.push(ch);
        msg.extend_from_slice(&data);
        let frame = websocket::encode_frame(websocket::OP_BINARY, &msg);
        if w.lock().await.write_all(&frame).await.is_err() {
            break;
        }
    }
    let outcome = session
        .await
        .unwrap_or_else(|e| Outcome::Failed(format!("exec session failed: {e}")));
    let mut status = vec![3u8];
    status.extend(serde_json::to_vec(&outcome.status(&command)).unwrap_or_default());
    let mut w = w.lock().await;
    let _ = w
        .write_all(&websocket::encode_frame(websocket::OP_BINARY, &status))
        .await;
    let _ = w.write_all(&websocket::close_frame(1000)).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
    reader.abort();
}

/// The SPDY stream protocol chosen from the client's `X-Stream-Protocol-Version` list:
/// v4 carries the exit status as a `metav1.Status` on the error stream.
pub const SPDY_PROTOCOL: &str = "v4.channel.k8s.io";

/// Runs an exec session over SPDY (the fallback when the WebSocket upgrade is refused):
/// the client opens `error`, `stdin`, `stdout`, `stderr` and `resize` streams as requested;
/// once the ones carrying stdio are there, the process starts.
pub async fn serve_spdy(mut session: spdy::Session, req: ExecRequest) {
    let out = session.outgoing.clone();
    let mut needed = vec!["error"];
    if req.stdin {
        needed.push("stdin");
    }
    if req.stdout {
        needed.push("stdout");
    }
    if req.stderr {
        needed.push("stderr");
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let mut in_tx = Some(in_tx);
    let mut in_rx = Some(in_rx);
    let mut resize_buf: Vec<u8> = Vec::new();
    let mut running: Option<tokio::task::JoinHandle<Outcome>> = None;
    let command = req.command.clone();
    loop {
        tokio::select! {
            frame = session.incoming.recv() => match frame {
                Some(spdy::Frame::SynStream { stream_id, headers, .. }) => {
                    let reply = spdy::Frame::SynReply { stream_id, flags: 0, headers: Vec::new() };
                    if out.send(reply).await.is_err() {
                        in_tx = None;
                    }
                    let kind = spdy::header(&headers, "streamtype").unwrap_or("").to_string();
                    ids.insert(kind, stream_id);
                    if running.is_none() && needed.iter().all(|n| ids.contains_key(*n)) {
                        let (out_tx, out_rx) = mpsc::channel::<Output>(16);
                        let pump = tokio::spawn(pump_spdy(
                            out.clone(),
                            out_rx,
                            ids.get("stdout").copied(),
                            ids.get("stderr").copied(),
                        ));
                        let input = in_rx.take().expect("started once");
                        let r = req.clone();
                        running = Some(tokio::spawn(async move {
                            let outcome = run(r, input, out_tx).await;
                            let _ = pump.await;
                            outcome
                        }));
                    }
                }
                Some(spdy::Frame::Data { stream_id, flags, data }) => {
                    let fin = flags & spdy::FLAG_FIN != 0;
                    if Some(&stream_id) == ids.get("stdin") {
                        if let Some(tx) = &in_tx {
                            if !data.is_empty() {
                                let _ = tx.send(Input::Stdin(data)).await;
                            }
                            if fin {
                                let _ = tx.send(Input::StdinClosed).await;
                            }
                        }
                    } else if Some(&stream_id) == ids.get("resize") {
                        resize_buf.extend_from_slice(&data);
                        for size in take_resizes(&mut resize_buf) {
                            if let Some(tx) = &in_tx {
                                let _ = tx.send(size).await;
                            }
                        }
                    }
                }
                Some(spdy::Frame::RstStream { .. } | spdy::Frame::SynReply { .. } | spdy::Frame::Headers { .. }) => {}
                Some(_) | None => {
                    // The client is gone (GOAWAY or closed): the process loses its input.
                    drop(in_tx.take());
                    match running.take() {
                        Some(r) => {
                            let _ = r.await;
                        }
                        None => return,
                    }
                    return;
                }
            },
            outcome = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                let outcome = outcome.unwrap_or_else(|e| Outcome::Failed(format!("exec session failed: {e}")));
                for name in ["stdout", "stderr"] {
                    if let Some(id) = ids.get(name) {
                        spdy::send_fin(&out, *id).await;
                    }
                }
                if let Some(id) = ids.get("error") {
                    let status = serde_json::to_vec(&outcome.status(&command)).unwrap_or_default();
                    spdy::send_data(&out, *id, &status).await;
                    spdy::send_fin(&out, *id).await;
                }
                // The client resets the streams and closes the connection; keep answering
                // until it does.
                drop(in_tx.take());
                while let Some(f) = session.incoming.recv().await {
                    if matches!(f, spdy::Frame::GoAway { .. }) {
                        break;
                    }
                }
                return;
            }
        }
    }
}

async fn pump_spdy(
    out: mpsc::Sender<spdy::Frame>,
    mut from: mpsc::Receiver<Output>,
    stdout: Option<u32>,
    stderr: Option<u32>,
) {
    while let Some(o) = from.recv().await {
        let (id, data) = match o {
            Output::Stdout(d) => (stdout, d),
            Output::Stderr(d) => (stderr, d),
        };
        if let Some(id) = id {
            if !spdy::send_data(&out, id, &data).await {
                return;
            }
        }
    }
}

/// Resize messages on SPDY are a stream of JSON objects; takes the complete ones.
pub fn take_resizes(buf: &mut Vec<u8>) -> Vec<Input> {
    let mut found = Vec::new();
    let mut consumed = 0;
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    while let Some(Ok(v)) = stream.next() {
        consumed = stream.byte_offset();
        if let Some(i) = parse_resize(v.to_string().as_bytes()) {
            found.push(i);
        }
    }
    buf.drain(..consumed);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_what_kubectl_decodes() {
        let cmd = vec!["sh".to_string(), "-c".into(), "exit 7".into()];
        assert_eq!(
            Outcome::Exited(0).status(&cmd),
            json!({"metadata": {}, "status": "Success"})
        );
        let s = Outcome::Exited(7).status(&cmd);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "7"})
        );
        assert!(s["message"].as_str().unwrap().contains("[sh -c exit 7]"));
        let f = Outcome::Failed("no such container".into()).status(&cmd);
        assert_eq!(
            (f["status"].as_str(), f["reason"].as_str()),
            (Some("Failure"), Some("InternalError"))
        );
    }

    #[test]
    fn resize_stream_on_spdy() {
        let mut buf = br#"{"Width":80,"Height":24}{"Width":100,"#.to_vec();
        assert_eq!(
            take_resizes(&mut buf),
            vec![Input::Resize {
                width: 80,
                height: 24
            }]
        );
        assert_eq!(buf, br#"{"Width":100,"#.to_vec());
        buf.extend_from_slice(br#""Height":50}"#);
        assert_eq!(
            take_resizes(&mut buf),
            vec![Input::Resize {
                width: 100,
                height: 50
            }]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn resize_messages() {
        assert_eq!(
            parse_resize(br#"{"Width":80,"Height":24}"#),
            Some(Input::Resize {
                width: 80,
                height: 24
            })
        );
        assert_eq!(parse_resize(b"{}"), None);
        assert_eq!(parse_resize(b"garbage"), None);
    }
}
