//! Raw-socket helpers for tests that send bytes no well-behaved driver
//! would: hand-built startup packets and frames, and a reader for the
//! backend messages that come back.

use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message: tag and body (without the length word).
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// The fields of an ErrorResponse/NoticeResponse, by field type.
    pub fn fields(&self) -> HashMap<u8, String> {
        let mut out = HashMap::new();
        let mut rest = &self.body[..];
        while let Some((&ty, tail)) = rest.split_first() {
            if ty == 0 {
                break;
            }
            let nul = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            out.insert(ty, String::from_utf8_lossy(&tail[..nul]).into_owned());
            rest = tail.get(nul + 1..).unwrap_or(&[]);
        }
        out
    }

    /// SQLSTATE of an ErrorResponse.
    pub fn code(&self) -> String {
        self.fields().get(&b'C').cloned().unwrap_or_default()
    }

    pub fn message(&self) -> String {
        self.fields().get(&b'M').cloned().unwrap_or_default()
    }
}

/// A StartupMessage for protocol `major.minor` with `params`.
pub fn startup(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&major.to_be_bytes());
    body.extend_from_slice(&minor.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// An SSLRequest (`code` 80877103) or GSSENCRequest (80877104).
pub fn request_code(code: u32) -> Vec<u8> {
    let mut p = 8i32.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p
}

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;

/// A tagged frame whose length word is correct.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A simple Query frame.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frame(b'Q', &body)
}

/// A frame header with an arbitrary length word and nothing after it.
pub fn header(tag: u8, len: i32) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

pub async fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the proxy");
    s.set_nodelay(true).expect("nodelay");
    s
}

pub async fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).await.expect("write");
}

/// What reading produced.
#[derive(Debug)]
pub enum Read {
    Msg(Msg),
    /// The peer closed (EOF or reset) with no further complete message.
    Closed,
    /// Nothing within the deadline.
    Timeout,
}

/// Reads one backend message within `within`.
pub async fn read_msg(s: &mut TcpStream, within: Duration) -> Read {
    let fut = async {
        let mut head = [0u8; 5];
        if s.read_exact(&mut head).await.is_err() {
            return Read::Closed;
        }
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        assert!(
            (4..=1 << 24).contains(&len),
            "proxy sent a bad length {len} for {:?}",
            head[0] as char
        );
        let mut body = vec![0u8; len as usize - 4];
        if s.read_exact(&mut body).await.is_err() {
            return Read::Closed;
        }
        Read::Msg(Msg { tag: head[0], body })
    };
    tokio::time::timeout(within, fut)
        .await
        .unwrap_or(Read::Timeout)
}

/// Reads one message and insists there is one.
pub async fn expect_msg(s: &mut TcpStream, what: &str) -> Msg {
    match read_msg(s, Duration::from_secs(10)).await {
        Read::Msg(m) => m,
        other => panic!("{what}: expected a message, got {other:?}"),
    }
}

/// Reads one byte (the answer to SSLRequest/GSSENCRequest).
pub async fn read_byte(s: &mut TcpStream) -> u8 {
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
        .await
        .expect("an answer in time")
        .expect("an answer byte");
    b[0]
}

/// Reads messages until the proxy closes the connection, within
/// `within`; panics if it stays open. Returns what was received.
pub async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<Msg> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match read_msg(s, left).await {
            Read::Msg(m) => got.push(m),
            Read::Closed => return got,
            Read::Timeout => panic!("connection still open after {within:?}; received {got:?}"),
        }
    }
}

/// Expects exactly one ErrorResponse with `code`, then the close.
pub async fn expect_error_then_close(s: &mut TcpStream, code: &str, what: &str) -> Msg {
    let got = read_until_closed(s, Duration::from_secs(10)).await;
    let errors: Vec<&Msg> = got.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!(errors.len(), 1, "{what}: one ErrorResponse, got {got:?}");
    let e = errors[0].clone();
    assert_eq!(e.code(), code, "{what}: {:?}", e.fields());
    assert_eq!(
        got.last().map(|m| m.tag),
        Some(b'E'),
        "{what}: the error is the last thing sent: {got:?}"
    );
    e
}

/// Logs in over a raw socket (proxy with `auth_type = "trust"`), reading
/// up to the first ReadyForQuery.
pub async fn login_trust(port: u16, tenant: &str) -> TcpStream {
    let mut s = connect(port).await;
    let user = format!("app.{tenant}");
    send(
        &mut s,
        &startup(3, 0, &[("user", &user), ("database", tenant)]),
    )
    .await;
    read_to_ready(&mut s, "login").await;
    s
}

/// Reads until ReadyForQuery, panicking on an ErrorResponse; returns the
/// messages read and the status byte.
pub async fn read_to_ready(s: &mut TcpStream, what: &str) -> (Vec<Msg>, u8) {
    let mut got = Vec::new();
    loop {
        let m = expect_msg(s, what).await;
        match m.tag {
            b'E' => panic!("{what}: error {:?}", m.fields()),
            b'Z' => {
                let status = m.body.first().copied().unwrap_or(0);
                got.push(m);
                return (got, status);
            }
            _ => got.push(m),
        }
    }
}

/// Runs a simple query over a raw, logged-in socket; returns the status
/// byte of the ReadyForQuery that ends it.
pub async fn simple_query(s: &mut TcpStream, sql: &str) -> u8 {
    send(s, &query(sql)).await;
    read_to_ready(s, sql).await.1
}

/// Reads until ReadyForQuery, errors included; returns the messages read
/// and the status byte.
pub async fn read_until_ready_any(s: &mut TcpStream) -> (Vec<Msg>, u8) {
    let mut got = Vec::new();
    loop {
        let m = expect_msg(s, "reply").await;
        if m.tag == b'Z' {
            let status = m.body.first().copied().unwrap_or(0);
            got.push(m);
            return (got, status);
        }
        got.push(m);
    }
}
