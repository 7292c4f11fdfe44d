//! Limits that keep one client or tenant from holding a placement's server
//! connections: a half-sent message holds none (or not for long), and
//! pins are capped per tenant.

mod common;

use common::{TestPg, TestProxy, raw, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::time::{Duration, Instant};

/// A one-connection pool with the given client_message_timeout.
async fn one_connection_proxy(message_timeout: &str) -> (TestPg, TestProxy) {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        &format!(
            "auth_type = \"trust\"\nclient_message_timeout = \"{message_timeout}\"\nquery_wait_timeout = \"30s\""
        ),
    ))
    .await;
    (pg, proxy)
}

/// Sends the first 10 bytes of a 100-byte Query.
async fn send_half_a_query(s: &mut tokio::net::TcpStream) {
    let mut partial = raw::header(b'Q', 104);
    partial.extend_from_slice(b"SELECT 1; ");
    raw::send(s, &partial).await;
}

/// Another client's query goes through within `within`, and the stalled
/// client is told about client_message_timeout and closed.
async fn other_client_goes_on(proxy: &TestProxy, stalled: &mut tokio::net::TcpStream, within: u64) {
    let other = proxy.connect("acme").await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(within), other.batch_execute("SELECT 1"))
        .await
        .expect("the half-sent message does not hold the server connection")
        .expect("query");
    println!("other client's query took {:?}", started.elapsed());
    let e = raw::expect_error_then_close(stalled, "08P01", "stalled message").await;
    assert!(
        e.message().contains("client_message_timeout"),
        "{:?}",
        e.fields()
    );
}

/// A client that starts a message and never finishes it holds no server
/// connection: another client of a one-connection pool goes on at once,
/// and the stalled one is told why after client_message_timeout.
#[tokio::test]
async fn a_half_sent_message_holds_no_server_connection() {
    // Longer than the other client may take: it must not wait for it.
    let (_pg, proxy) = one_connection_proxy("2s").await;
    let mut stalled = raw::login_trust(proxy.port, "acme").await;
    send_half_a_query(&mut stalled).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    other_client_goes_on(&proxy, &mut stalled, 5).await;
}

/// The same inside a transaction, where the client holds its server
/// connection: half a message is bounded by client_message_timeout, then
/// the transaction is rolled back and the connection goes to the next
/// client.
#[tokio::test]
async fn a_half_sent_message_inside_a_transaction_is_bounded() {
    let (_pg, proxy) = one_connection_proxy("1s").await;
    let mut stalled = raw::login_trust(proxy.port, "acme").await;
    assert_eq!(raw::simple_query(&mut stalled, "BEGIN").await, b'T');
    send_half_a_query(&mut stalled).await;
    other_client_goes_on(&proxy, &mut stalled, 15).await;
}

/// A tenant's clients may pin at most max_pinned_connections server
/// connections; past it, session state is refused with 53300 and the
/// rest of the pool stays free.
#[tokio::test]
async fn pins_are_capped_per_tenant() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let config = pg.config(&["acme"], 4, "auth_type = \"trust\"").replace(
        "[tenants.acme]\n",
        "[tenants.acme]\nmax_pinned_connections = 1\n",
    );
    let proxy = TestProxy::start(&config).await;
    let a = proxy.connect("acme").await;
    a.batch_execute("LISTEN one").await.expect("a pins");
    let b = proxy.connect("acme").await;
    let err = b
        .batch_execute("LISTEN two")
        .await
        .expect_err("a second pin is over the cap");
    assert_eq!(sqlstate(&err), "53300", "{err}");
    let message = err.as_db_error().map(|d| d.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("max_pinned_connections")),
        "{message:?}"
    );
    // Others still run, and once a lets go another client may pin.
    let c = proxy.connect("acme").await;
    c.batch_execute("SELECT 1").await.expect("unpinned work");
    a.batch_execute("UNLISTEN *").await.expect("a unpins");
    c.batch_execute("LISTEN three").await.expect("c pins now");
}

/// A large message that keeps arriving, slowly, is not cut off: the bound
/// is for a client that stops.
#[tokio::test]
async fn a_slow_upload_is_not_a_stalled_one() {
    let (_pg, proxy) = one_connection_proxy("2s").await;
    let mut slow = raw::login_trust(proxy.port, "acme").await;
    // About 250 kB of Query in 20 kB pieces, 300 ms apart: nearly 4 s in
    // all (twice the timeout), never 2 s without progress.
    let sql = format!("SELECT length('{}')", "x".repeat(250 * 1024));
    let msg = raw::query(&sql);
    for piece in msg.chunks(20 * 1024) {
        raw::send(&mut slow, piece).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (got, status) = raw::read_to_ready(&mut slow, "slow upload").await;
    assert_eq!(status, b'I');
    assert!(got.iter().any(|m| m.tag == b'D'), "a row: {got:?}");
}

/// A named Parse the pump stopped at (for the statement mapping) and whose
/// rest never comes is bounded too.
#[tokio::test]
async fn half_a_named_statement_is_bounded() {
    let (_pg, proxy) = one_connection_proxy("1s").await;
    let mut stalled = raw::login_trust(proxy.port, "acme").await;
    assert_eq!(raw::simple_query(&mut stalled, "BEGIN").await, b'T');
    // Parse "s1" of a 200 kB text, of which 100 kB come.
    let text = format!("SELECT '{}'", "y".repeat(200 * 1024));
    let mut body = b"s1\0".to_vec();
    body.extend_from_slice(text.as_bytes());
    body.extend_from_slice(b"\0\0\0");
    let parse = raw::frame(b'P', &body);
    raw::send(&mut stalled, &parse[..100 * 1024]).await;
    other_client_goes_on(&proxy, &mut stalled, 15).await;
}

/// Between transactions, a request followed by a length word far past
/// max_message_size is refused as malformed; the proxy does not buffer
/// what follows it.
#[tokio::test]
async fn a_huge_length_word_between_transactions_is_refused() {
    let (_pg, proxy) = one_connection_proxy("1s").await;
    let mut c = raw::login_trust(proxy.port, "acme").await;
    let mut bytes = raw::frame(b'C', b"Sx\0");
    bytes.extend_from_slice(&raw::header(b'P', 0x7fff_fff0));
    bytes.extend_from_slice(&vec![b'z'; 128 * 1024]);
    raw::send(&mut c, &bytes).await;
    let e = raw::expect_error_then_close(&mut c, "08P01", "huge length").await;
    assert!(e.message().contains("over the limit"), "{:?}", e.fields());
}
