//! The server side of RFC 6455 WebSocket, as much as the Kubernetes streaming protocols
//! use: the handshake answer, binary messages (possibly fragmented), ping/pong and close.
//! kubectl's channel protocols put a channel byte in front of each binary message.

use std::io;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Opcodes of RFC 6455 §5.2.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Refuse messages above this size: kubectl's are a few KiB.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// One frame, as a server sends it (never masked).
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A close frame with a status code (1000 = normal).
pub fn close_frame(code: u16) -> Vec<u8> {
    encode_frame(OP_CLOSE, &code.to_be_bytes())
}

/// A complete message or control frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Binary(Vec<u8>),
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("websocket: {0}")]
    Io(#[from] io::Error),
}

/// Turns the client's byte stream into messages: unmasks, joins fragments.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    fragments: Option<(u8, Vec<u8>)>,
}

impl Decoder {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if the bytes fed so far hold one.
    pub fn next_message(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            let Some((fin, opcode, payload)) = self.next_frame()? else {
                return Ok(None);
            };
            match opcode {
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(Message::Close(code)));
                }
                OP_PING => return Ok(Some(Message::Ping(payload))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_TEXT | OP_BINARY => {
                    if self.fragments.is_some() {
                        return Err(WsError::Protocol("new message inside a fragmented one"));
                    }
                    if fin {
                        return Ok(Some(Self::message(opcode, payload)));
                    }
                    self.fragments = Some((opcode, payload));
                }
                OP_CONTINUATION => {
                    let Some((op, mut data)) = self.fragments.take() else {
                        return Err(WsError::Protocol("continuation without a message"));
                    };
                    data.extend_from_slice(&payload);
                    if data.len() > MAX_MESSAGE {
                        return Err(WsError::Protocol("message too large"));
                    }
                    if fin {
                        return Ok(Some(Self::message(op, data)));
                    }
                    self.fragments = Some((op, data));
                }
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
        }
    }

    fn message(opcode: u8, data: Vec<u8>) -> Message {
        if opcode == OP_TEXT {
            Message::Text(data)
        } else {
            Message::Binary(data)
        }
    }

    fn next_frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, WsError> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        if !masked {
            return Err(WsError::Protocol("client frames must be masked"));
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
                10,
            ),
            126 | 127 => return Ok(None),
            n => (n as u64, 2),
        };
        if len > MAX_MESSAGE as u64 {
            return Err(WsError::Protocol("frame too large"));
        }
        if opcode >= 0x8 && (len > 125 || !fin) {
            return Err(WsError::Protocol("bad control frame"));
        }
        let len = len as usize;
        if b.len() < at + 4 + len {
            return Ok(None);
        }
        let mask: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        at += 4;
        let payload: Vec<u8> = b[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ mask[i % 4])
            .collect();
        self.buf.drain(..at + len);
        Ok(Some((fin, opcode, payload)))
    }
}

/// Reads the next data message, answering pings on `w` on the way. `None` when the client
/// closed (its close is answered) or the connection ended.
pub async fn read_message<R, W>(
    r: &mut R,
    w: &tokio::sync::Mutex<W>,
    dec: &mut Decoder,
) -> Result<Option<Message>, WsError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(m) = dec.next_message()? {
            match m {
                Message::Ping(p) => {
                    w.lock().await.write_all(&encode_frame(OP_PONG, &p)).await?;
                }
                Message::Pong => {}
                Message::Close(_) => {
                    let _ = w.lock().await.write_all(&close_frame(1000)).await;
                    return Ok(None);
                }
                m => return Ok(Some(m)),
            }
        }
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        dec.feed(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn handshake_key_from_rfc_6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn server_frames_have_the_right_length_encoding() {
        assert_eq!(
            encode_frame(OP_BINARY, &[1, b'h', b'i']),
            vec![0x82, 3, 1, b'h', b'i']
        );
        let mid = encode_frame(OP_BINARY, &[0u8; 300]);
        assert_eq!(&mid[..4], &[0x82, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = encode_frame(OP_BINARY, &vec![0u8; 70_000]);
        assert_eq!(&big[..2], &[0x82, 127]);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
        assert_eq!(close_frame(1000), vec![0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn client_messages_unmask_and_reassemble_from_pieces() {
        let mut wire = masked(0x82, &[0, b'a', b'b'], [1, 2, 3, 4]);
        // A fragmented message with a ping in the middle.
        wire.extend(masked(0x02, &[4, b'{'], [9, 9, 9, 9]));
        wire.extend(masked(0x89, b"p", [5, 6, 7, 8]));
        wire.extend(masked(0x80, b"}", [7, 7, 7, 7]));
        wire.extend(masked(0x82, &[7u8; 200], [1, 1, 1, 1]));
        wire.extend(masked(0x88, &1000u16.to_be_bytes(), [0, 1, 0, 1]));
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        // Byte by byte: the decoder must not depend on read boundaries.
        for b in wire {
            dec.feed(&[b]);
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                Message::Binary(vec![0, b'a', b'b']),
                Message::Ping(b"p".to_vec()),
                Message::Binary(vec![4, b'{', b'}']),
                Message::Binary(vec![7u8; 200]),
                Message::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut dec = Decoder::default();
        dec.feed(&[0x82, 0x01, b'x']);
        assert!(dec.next_message().is_err(), "unmasked client frame");
        let mut dec = Decoder::default();
        dec.feed(&masked(0x80, b"x", [1, 2, 3, 4]));
        assert!(dec.next_message().is_err(), "continuation first");
        let mut dec = Decoder::default();
        dec.feed(&masked(0x09, b"x", [1, 2, 3, 4]));
        assert!(dec.next_message().is_err(), "fragmented ping");
    }

    #[tokio::test]
    async fn pings_are_answered_while_reading() {
        let mut input = masked(0x89, b"hb", [1, 2, 3, 4]);
        input.extend(masked(0x82, &[0, b'z'], [4, 3, 2, 1]));
        let mut r: &[u8] = &input;
        let w = tokio::sync::Mutex::new(Vec::new());
        let mut dec = Decoder::default();
        let m = read_message(&mut r, &w, &mut dec).await.unwrap();
        assert_eq!(m, Some(Message::Binary(vec![0, b'z'])));
        assert_eq!(*w.lock().await, encode_frame(OP_PONG, b"hb"));
        assert_eq!(read_message(&mut r, &w, &mut dec).await.unwrap(), None);
    }
}
