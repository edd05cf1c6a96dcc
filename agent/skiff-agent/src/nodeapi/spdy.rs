//! SPDY/3.1 framing, as kubectl's SPDY transport (moby/spdystream) speaks it: control frames
//! (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE) and
//! data frames; header blocks compressed with one zlib stream per direction, primed with the
//! SPDY/3 dictionary and sync-flushed after every block. Flow control is not enforced: the
//! client does not enforce it either, and WINDOW_UPDATE/SETTINGS are accepted and ignored.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_CANCEL: u32 = 5;
/// Frames above this size are refused (the wire format allows 16 MiB).
pub const MAX_FRAME: usize = 1 << 24;
/// Data is sent in pieces of at most this size.
pub const DATA_CHUNK: usize = 32 * 1024;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1):
/// length-prefixed header names and common values, then a run of status codes, reason
/// phrases, dates and media types. 1423 bytes, Adler-32 0xe3c6a7c2.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const PREFIXED: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const RAW: &[&str] = &[
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
            " 00:00:00",
            " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
            "application/xhtml+xml,text/plain,text/javascript,public",
            "privatemax-age=gzip,deflate,sdch",
            "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        ];
        let mut d = Vec::with_capacity(1423);
        for w in PREFIXED {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        for r in RAW {
            d.extend_from_slice(r.as_bytes());
        }
        d
    })
}

pub type Headers = Vec<(String, String)>;

/// Looks a header up by name, case-insensitively (SPDY names are lower case on the wire).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings,
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("SPDY header compression: {0}")]
    Zlib(String),
    #[error("SPDY connection: {0}")]
    Io(#[from] std::io::Error),
}

fn proto(msg: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(msg.into())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Encodes frames; holds the sending direction's compression context.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(dictionary())
            .expect("a fresh zlib stream takes a dictionary");
        Encoder { deflate }
    }
}

impl Encoder {
    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start = self.deflate.total_in();
        loop {
            let consumed = (self.deflate.total_in() - start) as usize;
            out.reserve(raw.len().max(64));
            self.deflate
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Zlib(e.to_string()))?;
            // A sync flush is complete once all input is taken and output space is left over.
            if (self.deflate.total_in() - start) as usize == raw.len() && out.len() < out.capacity()
            {
                return Ok(out);
            }
        }
    }

    pub fn encode(&mut self, frame: &Frame) -> Result<Vec<u8>, SpdyError> {
        let control = |kind: u16, flags: u8, body: Vec<u8>| {
            let mut out = Vec::with_capacity(body.len() + 8);
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(&body);
            out
        };
        Ok(match frame {
            Frame::SynStream {
                stream_id,
                associated,
                priority,
                flags,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&(associated & 0x7fff_ffff).to_be_bytes());
                body.push((priority & 0x7) << 5);
                body.push(0);
                body.extend(self.header_block(headers)?);
                control(SYN_STREAM, *flags, body)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend(self.header_block(headers)?);
                control(SYN_REPLY, *flags, body)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend(self.header_block(headers)?);
                control(HEADERS, *flags, body)
            }
            Frame::RstStream { stream_id, status } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(RST_STREAM, 0, body)
            }
            Frame::Settings => control(SETTINGS, 0, 0u32.to_be_bytes().to_vec()),
            Frame::Ping(id) => control(PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway { last_good, status } => {
                let mut body = (last_good & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(GOAWAY, 0, body)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(WINDOW_UPDATE, 0, body)
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() >= MAX_FRAME {
                    return Err(proto("data frame too large"));
                }
                let mut out = Vec::with_capacity(data.len() + 8);
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.push(*flags);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                out
            }
        })
    }
}

/// Decodes frames from a byte stream fed in any pieces; holds the receiving direction's
/// decompression context.
pub struct Decoder {
    inflate: Decompress,
    buf: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            inflate: Decompress::new(true),
            buf: Vec::new(),
        }
    }
}

impl Decoder {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn header_block(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.inflate.total_in();
        loop {
            let consumed = (self.inflate.total_in() - start) as usize;
            if consumed == block.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(256);
            match self
                .inflate
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| SpdyError::Zlib(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Zlib(e.to_string())),
            }
            if out.len() > MAX_FRAME {
                return Err(proto("header block too large"));
            }
        }
        parse_headers(&out)
    }

    /// The next complete frame, if the bytes fed so far hold one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32_at(&self.buf, 4) & 0x00ff_ffff) as usize;
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        let head: [u8; 8] = self.buf[..8].try_into().expect("8 bytes");
        let body: Vec<u8> = self.buf[8..8 + len].to_vec();
        self.buf.drain(..8 + len);
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: u32_at(&head, 0) & 0x7fff_ffff,
                flags,
                data: body,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(proto(format!("SPDY version {version}, expected 3")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize| {
            if body.len() < n {
                Err(proto(format!("control frame {kind} too short")))
            } else {
                Ok(())
            }
        };
        let sid = |b: &[u8]| u32_at(b, 0) & 0x7fff_ffff;
        Ok(Some(match kind {
            SYN_STREAM => {
                need(10)?;
                Frame::SynStream {
                    stream_id: sid(&body),
                    associated: u32_at(&body, 4) & 0x7fff_ffff,
                    priority: body[8] >> 5,
                    flags,
                    headers: self.header_block(&body[10..])?,
                }
            }
            SYN_REPLY => {
                need(4)?;
                Frame::SynReply {
                    stream_id: sid(&body),
                    flags,
                    headers: self.header_block(&body[4..])?,
                }
            }
            HEADERS => {
                need(4)?;
                Frame::Headers {
                    stream_id: sid(&body),
                    flags,
                    headers: self.header_block(&body[4..])?,
                }
            }
            RST_STREAM => {
                need(8)?;
                Frame::RstStream {
                    stream_id: sid(&body),
                    status: u32_at(&body, 4),
                }
            }
            SETTINGS => Frame::Settings,
            PING => {
                need(4)?;
                Frame::Ping(u32_at(&body, 0))
            }
            GOAWAY => {
                need(4)?;
                Frame::GoAway {
                    last_good: sid(&body),
                    status: if body.len() >= 8 { u32_at(&body, 4) } else { 0 },
                }
            }
            WINDOW_UPDATE => {
                need(8)?;
                Frame::WindowUpdate {
                    stream_id: sid(&body),
                    delta: u32_at(&body, 4) & 0x7fff_ffff,
                }
            }
            other => return Err(proto(format!("unknown control frame type {other}"))),
        }))
    }
}

fn parse_headers(b: &[u8]) -> Result<Headers, SpdyError> {
    let short = || proto("truncated header block");
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let s = b.get(at..at + n).ok_or_else(short)?;
        at += n;
        Ok(s)
    };
    let count = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes"));
    let mut out = Vec::new();
    for _ in 0..count {
        let mut string = || -> Result<String, SpdyError> {
            let n = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            String::from_utf8(take(n)?.to_vec()).map_err(|_| proto("header is not UTF-8"))
        };
        let name = string()?;
        let value = string()?;
        out.push((name, value));
    }
    Ok(out)
}

/// A running SPDY connection: frames from the client arrive on `incoming` (pings are
/// answered here), frames for the client go to `outgoing`. The connection ends when the
/// client closes it or every `outgoing` sender is dropped.
pub struct Session {
    pub incoming: mpsc::Receiver<Frame>,
    pub outgoing: mpsc::Sender<Frame>,
}

pub fn start<S>(io: S) -> Session
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(io);
    let (in_tx, in_rx) = mpsc::channel::<Frame>(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
    let pong = out_tx.clone();
    tokio::spawn(async move {
        let mut dec = Decoder::default();
        let mut buf = vec![0u8; 32 * 1024];
        'read: loop {
            loop {
                match dec.next_frame() {
                    Ok(Some(Frame::Ping(id))) => {
                        if pong.send(Frame::Ping(id)).await.is_err() {
                            break 'read;
                        }
                    }
                    Ok(Some(Frame::Settings | Frame::WindowUpdate { .. })) => {}
                    Ok(Some(f)) => {
                        if in_tx.send(f).await.is_err() {
                            break 'read;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "SPDY: closing the connection");
                        break 'read;
                    }
                }
            }
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dec.feed(&buf[..n]),
            }
        }
    });
    tokio::spawn(async move {
        let mut enc = Encoder::default();
        while let Some(f) = out_rx.recv().await {
            let bytes = match enc.encode(&f) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "SPDY: encoding a frame");
                    break;
                }
            };
            if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    Session {
        incoming: in_rx,
        outgoing: out_tx,
    }
}

/// Sends `data` on a stream in pieces of at most [`DATA_CHUNK`].
pub async fn send_data(out: &mpsc::Sender<Frame>, stream_id: u32, data: &[u8]) -> bool {
    for piece in data.chunks(DATA_CHUNK) {
        let f = Frame::Data {
            stream_id,
            flags: 0,
            data: piece.to_vec(),
        };
        if out.send(f).await.is_err() {
            return false;
        }
    }
    true
}

/// Ends the sending side of a stream.
pub async fn send_fin(out: &mpsc::Sender<Frame>, stream_id: u32) -> bool {
    out.send(Frame::Data {
        stream_id,
        flags: FLAG_FIN,
        data: Vec::new(),
    })
    .await
    .is_ok()
}

/// Runs a SPDY connection tunnelled in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`):
/// message boundaries mean nothing, so the messages are joined into a byte stream.
pub fn start_over_websocket<S>(conn: S) -> Session
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    use super::websocket::{self, Message};
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut ws_r, ws_w) = tokio::io::split(conn);
    let ws_w = std::sync::Arc::new(tokio::sync::Mutex::new(ws_w));
    let (mut spdy_r, mut spdy_w) = tokio::io::split(theirs);
    let down = ws_w.clone();
    tokio::spawn(async move {
        let mut dec = websocket::Decoder::default();
        while let Ok(Some(m)) = websocket::read_message(&mut ws_r, &down, &mut dec).await {
            if let Message::Binary(data) = m {
                if spdy_w.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
        let _ = spdy_w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match spdy_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = websocket::encode_frame(websocket::OP_BINARY, &buf[..n]);
                    if ws_w.lock().await.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        }
        let mut w = ws_w.lock().await;
        let _ = w.write_all(&websocket::close_frame(1000)).await;
        let _ = w.shutdown().await;
    });
    start(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for x in data {
            a = (a + *x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn the_dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(adler32(d), 0xe3c6_a7c2);
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn frames_round_trip_through_shared_compression_contexts() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated: 0,
                priority: 2,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: Vec::new(),
            },
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            },
            Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Vec::new(),
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
            Frame::Ping(7),
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 65536,
            },
            Frame::Headers {
                stream_id: 5,
                flags: 0,
                headers: h(&[("x", "a\0b")]),
            },
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
        ];
        let mut enc = Encoder::default();
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(enc.encode(f).unwrap());
        }
        // Fed a byte at a time: frame headers arrive in pieces through the WebSocket tunnel.
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        for b in wire {
            dec.feed(&[b]);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn header_blocks_use_the_dictionary_and_one_stream_per_direction() {
        let mut enc = Encoder::default();
        let headers = h(&[("streamtype", "stdout"), ("content-type", "text/plain")]);
        let frame = Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: headers.clone(),
        };
        let first = enc.encode(&frame).unwrap();
        let second = enc.encode(&frame).unwrap();
        // The zlib header announces a preset dictionary (FDICT) with the SPDY/3 Adler-32.
        let block = &first[12..];
        assert_eq!(block[1] & 0x20, 0x20, "FDICT set");
        assert_eq!(u32_at(block, 2), 0xe3c6_a7c2);
        assert!(
            second.len() < first.len(),
            "the second block reuses the context"
        );
        // A fresh decoder cannot read the second block alone.
        let mut lone = Decoder::default();
        lone.feed(&second);
        assert!(lone.next_frame().is_err());
        // Inflated by hand: zlib asks for exactly the SPDY/3 dictionary, then yields the block.
        let mut inflate = Decompress::new(true);
        let mut out = Vec::with_capacity(4096);
        match inflate.decompress_vec(block, &mut out, FlushDecompress::Sync) {
            Err(e) => assert_eq!(e.needs_dictionary(), Some(0xe3c6_a7c2)),
            Ok(_) => panic!("a dictionary must be asked for"),
        }
        inflate.set_dictionary(dictionary()).unwrap();
        let taken = inflate.total_in() as usize;
        inflate
            .decompress_vec(&block[taken..], &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(parse_headers(&out).unwrap(), headers);
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut dec = Decoder::default();
        dec.feed(&[0x80, 2, 0, 1, 0, 0, 0, 0]);
        assert!(dec.next_frame().is_err(), "SPDY/2");
        let mut dec = Decoder::default();
        dec.feed(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0]);
        assert!(dec.next_frame().is_err(), "short RST_STREAM");
        let mut dec = Decoder::default();
        dec.feed(&[0x80, 3, 0, 99, 0, 0, 0, 0]);
        assert!(dec.next_frame().is_err(), "unknown type");
        assert!(parse_headers(&[0, 0, 0, 1, 0, 0, 0, 5, b'a']).is_err());
        assert_eq!(
            header(&h(&[("StreamType", "data")]), "streamtype"),
            Some("data")
        );
    }
}
