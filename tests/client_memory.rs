//! Every client is bounded (issue 17 point 5): a client that pipelines
//! Close/Parse/Sync without reading, behind a busy statement, cannot grow
//! the proxy's memory without bound. The real binary runs as a child
//! process so its resident set can be read from /proc.

mod common;

use common::TestPg;
use common::raw;
use pgtenant::pgcluster::HostAuth;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the client floods. A proxy that kept reading a client it
/// cannot forward for would take in far more than `BOUND_KB` at loopback
/// speed within the first second; the rest shows it stays put.
const FLOOD: Duration = Duration::from_secs(10);

/// The most the proxy's resident set may grow during the flood.
const BOUND_KB: u64 = 64 * 1024;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

#[tokio::test]
async fn a_client_that_never_reads_cannot_grow_the_proxy() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = pg.config(&["acme"], 1, "auth_type = \"trust\"").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(&path, config).expect("write config");
    let proxy = Proxy(
        Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .arg("-c")
            .arg(&path)
            .env("PGTENANT_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start pgtenant"),
    );
    let pid = proxy.0.id();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A busy statement, then Close/Parse/Sync without end, never reading.
    let (mut s, chunk) = flood_setup(port).await;
    let before = rss_kb(pid);
    let start = Instant::now();
    let mut sent = 0usize;
    let mut at = 0;
    while start.elapsed() < FLOOD {
        // Writes block once the proxy stops reading: that is the point.
        if let Ok(n) = tokio::time::timeout(Duration::from_millis(200), s.write(&chunk[at..])).await
        {
            let n = n.expect("write");
            sent += n;
            at = (at + n) % chunk.len();
        }
    }
    let after = rss_kb(pid);
    let grew = after.saturating_sub(before);
    println!(
        "sent {} MB in {FLOOD:?}; proxy RSS {before} kB -> {after} kB (+{grew} kB)",
        sent >> 20
    );
    assert!(
        grew < BOUND_KB,
        "the proxy grew by {grew} kB (bound {BOUND_KB} kB) after {} MB from a client that never reads",
        sent >> 20
    );
    drop(s);
    drop(proxy);
}

/// A client that never reads its results is disconnected once its backlog
/// has been over the limit for `client_read_timeout`, and the server
/// connection it held serves others again.
#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_and_frees_its_connection() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = common::TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\nclient_read_timeout = \"2s\"\nquery_wait_timeout = \"25s\"",
    ))
    .await;
    let (mut s, chunk) = flood_setup(proxy.port).await;
    let flood = tokio::spawn(async move {
        let mut at = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(40) {
            match tokio::time::timeout(Duration::from_millis(200), s.write(&chunk[at..])).await {
                Ok(Ok(n)) => at = (at + n) % chunk.len(),
                Ok(Err(_)) => return true, // the proxy closed the connection
                Err(_) => {}
            }
        }
        false
    });

    let started = Instant::now();
    let other = proxy.connect("acme").await;
    other
        .simple_query("SELECT 1")
        .await
        .expect("the server connection is free again");
    let waited = started.elapsed();
    println!("the other client got the connection after {waited:?}");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    assert!(
        flood.await.expect("flood task"),
        "the client that never read is disconnected"
    );
}

/// A client that asks for a result far larger than the buffers between
/// it and the server, and reads none of it, holds its server connection
/// by back-pressure alone (the proxy's backlog never grows): it is
/// disconnected once it has taken nothing for `client_read_timeout`, the
/// query is stopped, and the connection serves others again.
#[tokio::test]
async fn a_client_that_stops_reading_a_streamed_result_is_disconnected() {
    // About 1 GB, made as it is sent.
    let (_pg, proxy, mut s) = streaming("2s", 1_000_000).await;

    let started = Instant::now();
    let other = proxy.connect("acme").await;
    other
        .simple_query("SELECT 1")
        .await
        .expect("the server connection is free again");
    let waited = started.elapsed();
    println!("the other client got the connection after {waited:?}");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    // What the buffers held reaches the client, then the end.
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stalled client is disconnected ({got} bytes read)"
    );
    assert!(
        got < 500 << 20,
        "the whole result was not sent: {got} bytes"
    );
}

/// A client that reads its streamed result slowly but steadily (pauses
/// shorter than the timeout, the proxy blocked on it most of the time) is
/// not mistaken for one that stopped.
#[tokio::test]
async fn a_slow_steady_reader_is_not_disconnected() {
    // About 40 MB, read at about 5 MB/s: 8 s, every period of the
    // timeout with the proxy waiting on the client for most of it.
    let (_pg, _proxy, mut s) = streaming("1s", 40_000).await;
    let mut tail = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut total = 0usize;
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let mut this_round = 0;
            while this_round < 512 << 10 {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => {
                        this_round += n;
                        tail.extend_from_slice(&chunk[..n]);
                        if tail.len() > 64 {
                            tail.drain(..tail.len() - 64);
                        }
                        // ReadyForQuery 'I' ends the result.
                        if tail.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
                            return true;
                        }
                    }
                }
            }
            total += this_round;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        done,
        Ok(true),
        "the whole result arrived ({total} bytes before the end)"
    );
}

/// A proxy with one server connection and `client_read_timeout =
/// read_timeout`, and a raw client that has asked it for `rows` rows of
/// 1,000 bytes, made as they are sent.
async fn streaming(
    read_timeout: &str,
    rows: u32,
) -> (TestPg, common::TestProxy, tokio::net::TcpStream) {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = common::TestProxy::start(&pg.config(
        &["acme"],
        1,
        &format!(
            "auth_type = \"trust\"\nclient_read_timeout = \"{read_timeout}\"\nquery_wait_timeout = \"25s\""
        ),
    ))
    .await;
    let mut s = raw::login_trust(proxy.port, "acme").await;
    raw::send(
        &mut s,
        &raw::query(&format!(
            "SELECT repeat('x', 1000) FROM generate_series(1, {rows})"
        )),
    )
    .await;
    (pg, proxy, s)
}

/// Logs in, prepares "s1", starts a 60 s statement, and returns the socket
/// with a chunk of 1,000 Close/Parse/Sync triples to pipeline behind it.
async fn flood_setup(port: u16) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut s = raw::login_trust(port, "acme").await;
    let mut parse = Vec::new();
    cstr(&mut parse, "s1");
    cstr(&mut parse, "SELECT 1");
    parse.extend_from_slice(&[0, 0]);
    let parse = raw::frame(b'P', &parse);
    let mut first = parse.clone();
    first.extend(raw::frame(b'S', &[]));
    raw::send(&mut s, &first).await;
    raw::read_to_ready(&mut s, "prepare").await;

    raw::send(&mut s, &raw::query("SELECT pg_sleep(60)")).await;
    let mut close = vec![b'S'];
    cstr(&mut close, "s1");
    let mut chunk = Vec::new();
    for _ in 0..1000 {
        chunk.extend(raw::frame(b'C', &close));
        chunk.extend(&parse);
        chunk.extend(raw::frame(b'S', &[]));
    }
    (s, chunk)
}
