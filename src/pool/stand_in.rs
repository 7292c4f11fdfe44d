//! A stand-in PostgreSQL server for tests on a paused clock: a task of
//! the test's own runtime, so the clock moves only when both the proxy
//! and the "server" wait, and no reply can be overtaken by a timer (a
//! real server answers in real time; see README, Tests).
//!
//! It logs anyone in (AuthenticationOk, ReadyForQuery) and answers each
//! simple Query with its CommandComplete and a ReadyForQuery whose status
//! follows BEGIN / COMMIT / ROLLBACK; an empty query (the pool's check)
//! gets EmptyQueryResponse. Nothing else: no rows, no extended protocol.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the stand-in saw.
#[derive(Default)]
pub struct Seen {
    pub logins: AtomicU64,
    /// Connections still open.
    pub open: AtomicU64,
    /// Empty queries (the pool's checks).
    pub checks: AtomicU64,
    /// Every other query, in order.
    pub queries: Mutex<Vec<String>>,
}

impl Seen {
    pub fn queries(&self) -> Vec<String> {
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Starts the stand-in on a free loopback port, as a task of the current
/// runtime.
pub async fn start() -> (u16, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, Arc::clone(&counts)));
        }
    });
    (port, seen)
}

async fn serve(mut s: TcpStream, seen: Arc<Seen>) {
    seen.logins.fetch_add(1, Ordering::Relaxed);
    seen.open.fetch_add(1, Ordering::Relaxed);
    let _ = converse(&mut s, &seen).await;
    seen.open.fetch_sub(1, Ordering::Relaxed);
}

async fn converse(s: &mut TcpStream, seen: &Seen) -> std::io::Result<()> {
    // An SSLRequest (sslmode=prefer, the default) is declined, as by a
    // server without TLS; then the StartupMessage.
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut packet = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        s.read_exact(&mut packet).await?;
        if packet != [4, 210, 22, 47] {
            break;
        }
        s.write_all(b"N").await?;
    }
    s.write_all(b"R\0\0\0\x08\0\0\0\0K\0\0\0\x0c\0\0\0\x07\0\0\0\x2aZ\0\0\0\x05I")
        .await?;
    let mut status = b'I';
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        s.read_exact(&mut body).await?;
        if head[0] != b'Q' {
            return Ok(()); // Terminate, or something it does not speak
        }
        let sql = String::from_utf8_lossy(&body)
            .trim_end_matches('\0')
            .to_string();
        let mut out = Vec::new();
        if sql.trim() == ";" {
            seen.checks.fetch_add(1, Ordering::Relaxed);
            out.extend_from_slice(b"I\0\0\0\x04");
        } else {
            let verb = sql
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            status = match verb.as_str() {
                "BEGIN" | "START" => b'T',
                "COMMIT" | "ROLLBACK" | "END" | "ABORT" => b'I',
                _ => status,
            };
            let tag = match verb.as_str() {
                "SELECT" => "SELECT 0".to_string(),
                "DISCARD" => "DISCARD ALL".to_string(),
                _ => verb,
            };
            out.push(b'C');
            out.extend_from_slice(&(tag.len() as u32 + 5).to_be_bytes());
            out.extend_from_slice(tag.as_bytes());
            out.push(0);
            seen.queries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sql);
        }
        out.extend_from_slice(&[b'Z', 0, 0, 0, 5, status]);
        s.write_all(&out).await?;
    }
}
