//! A client's limits on a paused clock: login (`client_startup_timeout`,
//! `client_login_timeout`) and session (`client_idle_timeout`,
//! `idle_transaction_timeout`, `client_message_timeout`, `pause_timeout`,
//! `query_wait_timeout`). A real accepted socket and the real client
//! path; the client and the server (`pool::stand_in`) are tasks of this
//! same runtime, so the clock moves only when all of them wait, and each
//! limit is checked to the millisecond in no wall-clock time. (Against a
//! real PostgreSQL, where a paused clock would be unsound: the tests in
//! `tests/` named in README, Tests.)

use crate::pool::stand_in;
use crate::runtime::{block_on_paused, net, spawn_local};
use crate::state::{ProxyState, Snapshot};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A proxy state whose one placement is never reached (these clients
/// never get that far); `extra` goes into `[proxy]`.
fn state(extra: &str) -> Arc<ProxyState> {
    state_on(1, 1, extra)
}

/// A proxy state whose placement (`pool_size`) is the server on `port`,
/// with no role check; `extra` goes into `[proxy]`.
fn state_on(port: u16, pool_size: u32, extra: &str) -> Arc<ProxyState> {
    let text = format!(
        "[proxy]\n{extra}\n\
         [placements.p]\nurl = \"postgres://u@127.0.0.1:{port}/db?require_auth=none\"\nisolation = \"database\"\n\
         pool_size = {pool_size}\ntrust_backend_role = true\n\
         [tenants.acme]\nplacement = \"p\"\nusers = {{ app = \"acme-secret\" }}\n"
    );
    let (cfg, src) = crate::config::parse_str(&text, "t.toml").expect("valid");
    let snap = Snapshot::build(cfg, &src, 1).expect("builds");
    Arc::new(ProxyState::new(snap, 1, Default::default()))
}

/// A client connected to a session of `state`'s, run on this runtime.
async fn client_of(state: &Arc<ProxyState>) -> TcpStream {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    // Already queued by the kernel: accept does not block.
    let (stream, peer) = listener.accept().expect("accept");
    let socket = net::Socket::from_std(stream).expect("register");
    let session = super::accept::accept(state, socket, peer).expect("admitted");
    assert!(spawn_local(session).is_ok());
    client
}

/// Everything the proxy sends until it closes, and when it closed.
async fn until_closed(client: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3600), client.read_to_end(&mut got))
        .await
        .expect("closed within the hour")
        .expect("read");
    (got, Instant::now())
}

/// The SQLSTATE of the ErrorResponse that is all of `bytes`.
fn sqlstate(bytes: &[u8]) -> String {
    assert_eq!(bytes.first(), Some(&b'E'), "{bytes:?}");
    code_of(&bytes[5..])
}

/// The code field of an ErrorResponse's body.
fn code_of(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .unwrap_or_else(|| panic!("no code in {body:?}"))
}

#[test]
fn a_silent_client_is_closed_at_the_default_startup_timeout() {
    block_on_paused(async {
        let state = state("");
        let accepted = Instant::now();
        let mut silent = client_of(&state).await;
        let (got, closed) = until_closed(&mut silent).await;
        assert_eq!(sqlstate(&got), "08P01");
        let took = closed - accepted;
        // 5 s (the default), to the timer's millisecond.
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_millis(5010),
            "{took:?}"
        );
    });
}

#[test]
fn a_stalled_password_exchange_ends_at_the_login_timeout_counted_from_accept() {
    block_on_paused(async {
        let state = state("client_startup_timeout = \"5s\"\nclient_login_timeout = \"20s\"");
        let accepted = Instant::now();
        let mut client = client_of(&state).await;
        // The startup packet comes late (but within its limit); the
        // password never does.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut startup = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "app.acme"), ("database", "acme")],
            &mut startup,
        )
        .expect("startup");
        client.write_all(&startup).await.expect("send");
        let (tag, _) = read_msg(&mut client).await.expect("SASL request");
        assert_eq!(tag, b'R');
        let (got, closed) = until_closed(&mut client).await;
        assert_eq!(sqlstate(&got), "08P01");
        let took = closed - accepted;
        assert!(
            took >= Duration::from_secs(20) && took < Duration::from_millis(20_010),
            "{took:?}"
        );
    });
}

#[test]
fn a_partial_startup_packet_has_the_startup_timeout_not_the_login_one() {
    block_on_paused(async {
        let state = state("client_startup_timeout = \"2s\"\nclient_login_timeout = \"60s\"");
        let accepted = Instant::now();
        let mut client = client_of(&state).await;
        client
            .write_all(&[0, 0, 0, 40, 0, 3])
            .await
            .expect("half a packet");
        let (got, closed) = until_closed(&mut client).await;
        assert_eq!(sqlstate(&got), "08P01");
        let took = closed - accepted;
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2010),
            "{took:?}"
        );
    });
}

/// One backend message: its tag and body; None at the close.
async fn read_msg(c: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    c.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    c.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}

/// Messages up to and including ReadyForQuery; its status last.
async fn until_ready(c: &mut TcpStream) -> (Vec<(u8, Vec<u8>)>, u8) {
    let mut got = Vec::new();
    loop {
        let (tag, body) = read_msg(c).await.expect("ReadyForQuery before the close");
        if tag == b'Z' {
            return (got, body[0]);
        }
        got.push((tag, body));
    }
}

/// A logged-in client of tenant acme (`auth_type = "trust"`).
async fn logged_in(state: &Arc<ProxyState>) -> TcpStream {
    let mut c = client_of(state).await;
    let mut startup = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "app.acme"), ("database", "acme")],
        &mut startup,
    )
    .expect("startup");
    c.write_all(&startup).await.expect("send");
    let (got, status) = until_ready(&mut c).await;
    assert!(got.iter().all(|(tag, _)| *tag != b'E'), "{got:?}");
    assert_eq!(status, b'I');
    c
}

/// Runs `sql`; the SQLSTATE if it failed, and the transaction status.
async fn query(c: &mut TcpStream, sql: &str) -> (Option<String>, u8) {
    let mut q = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut q).expect("query");
    c.write_all(&q).await.expect("send");
    let (got, status) = until_ready(c).await;
    let error = got
        .iter()
        .find(|(tag, _)| *tag == b'E')
        .map(|(_, body)| code_of(body));
    (error, status)
}

/// Within `[at, at + 10 ms)` of `since`.
fn assert_at(since: Instant, when: Instant, at: Duration) {
    let took = when - since;
    assert!(
        took >= at && took < at + Duration::from_millis(10),
        "{took:?}, not {at:?}"
    );
}

#[test]
fn an_idle_client_is_closed_at_client_idle_timeout_and_activity_restarts_it() {
    block_on_paused(async {
        let (port, _server) = stand_in::start().await;
        let state = state_on(
            port,
            2,
            "auth_type = \"trust\"\nclient_idle_timeout = \"600s\"",
        );
        let mut c = logged_in(&state).await;
        // A request a millisecond before the limit starts it again.
        tokio::time::sleep(Duration::from_millis(599_999)).await;
        assert_eq!(query(&mut c, "SELECT 1").await, (None, b'I'));
        let active = Instant::now();
        let (got, closed) = until_closed(&mut c).await;
        assert_eq!(sqlstate(&got), "57P05");
        assert_at(active, closed, Duration::from_secs(600));
    });
}

#[test]
fn idle_in_transaction_ends_at_idle_transaction_timeout_and_rolls_back() {
    block_on_paused(async {
        let (port, server) = stand_in::start().await;
        let state = state_on(
            port,
            1,
            "auth_type = \"trust\"\nidle_transaction_timeout = \"120s\"",
        );
        let mut c = logged_in(&state).await;
        assert_eq!(query(&mut c, "BEGIN").await, (None, b'T'));
        tokio::time::sleep(Duration::from_secs(119)).await;
        assert_eq!(query(&mut c, "SELECT 1").await, (None, b'T'));
        let active = Instant::now();
        let (got, closed) = until_closed(&mut c).await;
        assert_eq!(sqlstate(&got), "25P03");
        assert_at(active, closed, Duration::from_secs(120));
        // The transaction did not stay open on the server: it was rolled
        // back, or its connection closed.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let rolled_back = server.queries().last().is_some_and(|q| q == "ROLLBACK");
        let closed = server.open.load(std::sync::atomic::Ordering::Relaxed) == 0;
        assert!(rolled_back || closed, "{:?}", server.queries());
    });
}

#[test]
fn half_a_message_ends_at_client_message_timeout() {
    block_on_paused(async {
        let (port, _server) = stand_in::start().await;
        let state = state_on(
            port,
            1,
            "auth_type = \"trust\"\nclient_message_timeout = \"45s\"",
        );
        let mut c = logged_in(&state).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.write_all(b"Q\0\0\0\x68SELECT")
            .await
            .expect("half a Query");
        let sent = Instant::now();
        let (got, closed) = until_closed(&mut c).await;
        assert_eq!(sqlstate(&got), "08P01");
        assert_at(sent, closed, Duration::from_secs(45));
    });
}

/// Sends `sql`; what came back before the close (ErrorResponse body's
/// SQLSTATE) and when the proxy closed.
async fn refused(c: &mut TcpStream, sql: &str) -> (String, Instant) {
    let mut q = BytesMut::new();
    postgres_protocol::message::frontend::query(sql, &mut q).expect("query");
    c.write_all(&q).await.expect("send");
    let (got, closed) = until_closed(c).await;
    (sqlstate(&got), closed)
}

#[test]
fn a_paused_tenant_s_request_is_refused_at_pause_timeout() {
    block_on_paused(async {
        let (port, server) = stand_in::start().await;
        let state = state_on(port, 1, "auth_type = \"trust\"\npause_timeout = \"90s\"");
        let mut c = logged_in(&state).await;
        let mut other = logged_in(&state).await;
        state.controls.pause(None);
        let asked = Instant::now();
        let (code, closed) = refused(&mut c, "SELECT 1").await;
        assert_eq!(code, "57014");
        assert_at(asked, closed, Duration::from_secs(90));
        assert!(!server.queries().iter().any(|q| q == "SELECT 1"));
        // Resumed: the tenant's other client goes on.
        state.controls.resume(None);
        assert_eq!(query(&mut other, "SELECT 1").await, (None, b'I'));
    });
}

#[test]
fn a_request_waits_for_a_server_connection_up_to_query_wait_timeout() {
    block_on_paused(async {
        let (port, _server) = stand_in::start().await;
        let state = state_on(
            port,
            1,
            "auth_type = \"trust\"\nquery_wait_timeout = \"30s\"",
        );
        let mut holder = logged_in(&state).await;
        let mut waiter = logged_in(&state).await;
        let mut next = logged_in(&state).await;
        assert_eq!(query(&mut holder, "BEGIN").await, (None, b'T'));
        let asked = Instant::now();
        let (code, closed) = refused(&mut waiter, "SELECT 1").await;
        assert_eq!(code, "57014");
        assert_at(asked, closed, Duration::from_secs(30));
        // Once the holder commits, the next client gets the connection.
        assert_eq!(query(&mut holder, "COMMIT").await, (None, b'I'));
        assert_eq!(query(&mut next, "SELECT 1").await, (None, b'I'));
    });
}

#[test]
fn the_wait_for_a_server_starts_after_a_pause_not_before() {
    block_on_paused(async {
        let (port, _server) = stand_in::start().await;
        let state = state_on(
            port,
            1,
            "auth_type = \"trust\"\nquery_wait_timeout = \"30s\"\npause_timeout = \"90s\"",
        );
        let mut c = logged_in(&state).await;
        state.controls.pause(None);
        let resumer = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                state.controls.resume(None);
            })
        };
        let asked = Instant::now();
        // Held twice query_wait_timeout, then run.
        assert_eq!(query(&mut c, "SELECT 1").await, (None, b'I'));
        assert_at(asked, Instant::now(), Duration::from_secs(60));
        resumer.await.expect("join");
    });
}
