//! Hostile and malformed bytes on a raw TCP socket, before and after
//! login. Each case must end in a PostgreSQL ErrorResponse (SQLSTATE
//! `08P01` for malformed or oversized messages, CONTRACT §5) followed by
//! the close, never a hang, a panic, or a silent drop; and ordinary clients
//! of the same and of another tenant keep working throughout.

mod common;

use common::raw::{self, Read};
use common::{TestPg, TestProxy};
use pgtenant::pgcluster::HostAuth;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;

const TENANTS: [&str; 2] = ["acme", "globex"];

/// Proxy settings for these tests: no passwords to script by hand, a 1 MB
/// message cap, and a short login timeout.
const EXTRA: &str = "auth_type = \"trust\"\nmax_message_size = \"1MB\"\n\
                     client_login_timeout = \"1s\"\nquery_wait_timeout = \"5s\"";

/// Checks that long-lived clients of both tenants still answer, and that
/// new ones can connect and see their own tenant's data only.
async fn assert_healthy(proxy: &TestProxy, clients: &[(&str, &Client)], after: &str) {
    for (tenant, c) in clients {
        let db: String = c
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap_or_else(|e| panic!("after {after}: existing {tenant} client: {e}"))
            .get(0);
        assert_eq!(db, format!("tenant_{tenant}"), "after {after}");
    }
    for tenant in TENANTS {
        let c = proxy.connect(tenant).await;
        let owners: String = c
            .query_one("SELECT string_agg(DISTINCT tenant_id, ',') FROM notes", &[])
            .await
            .unwrap_or_else(|e| panic!("after {after}: new {tenant} client: {e}"))
            .get(0);
        assert_eq!(owners, tenant, "after {after}");
    }
}

/// A startup packet whose length word is `len` followed by `rest`.
fn with_len(len: i32, rest: &[u8]) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(rest);
    v
}

#[tokio::test]
async fn malformed_startup_packets_get_08p01_and_close() {
    let pg = TestPg::start(HostAuth::Trust, &TENANTS).await;
    let proxy = TestProxy::start(&pg.config(&TENANTS, 2, EXTRA)).await;
    let acme = proxy.connect("acme").await;
    let globex = proxy.connect("globex").await;
    let clients = [("acme", &acme), ("globex", &globex)];
    assert_healthy(&proxy, &clients, "start").await;

    let ok_params = raw::startup(3, 0, &[("user", "app.acme"), ("database", "acme")]);
    let mut unterminated = ok_params.clone();
    unterminated.pop();
    let n = unterminated.len() as i32;
    unterminated[..4].copy_from_slice(&n.to_be_bytes());
    let mut not_utf8 = raw::startup(3, 0, &[("user", "app.acme"), ("database", "acme")]);
    let at = not_utf8.len() - 3;
    not_utf8[at] = 0xff;
    let mut ssl_with_body = raw::request_code(raw::SSL_REQUEST);
    ssl_with_body.extend_from_slice(&[0, 0, 0, 0]);
    ssl_with_body[..4].copy_from_slice(&12i32.to_be_bytes());

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length 0", with_len(0, &[])),
        ("length 4 (< 8)", with_len(4, &[0, 3, 0, 0])),
        ("length 7 (< 8)", with_len(7, &[0, 3, 0])),
        ("length 10001 (> 10000)", with_len(10_001, &[0, 3, 0, 0])),
        ("length 2^31-1", with_len(i32::MAX, &[0, 3, 0, 0])),
        ("length -1", with_len(-1, &[0, 3, 0, 0])),
        ("length i32::MIN", with_len(i32::MIN, &[0, 3, 0, 0])),
        ("unterminated parameters", unterminated),
        ("parameters not UTF-8", not_utf8),
        (
            "duplicate parameter",
            raw::startup(3, 0, &[("user", "app.acme"), ("user", "app.globex")]),
        ),
        ("no user", raw::startup(3, 0, &[("database", "acme")])),
        (
            "invalid setting name",
            raw::startup(
                3,
                0,
                &[
                    ("user", "app.acme"),
                    ("database", "acme"),
                    ("bad name;", "x"),
                ],
            ),
        ),
        ("SSLRequest with a body", ssl_with_body),
        (
            "cancel request of the wrong length",
            with_len(12, &[0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1]),
        ),
    ];
    for (what, bytes) in cases {
        let mut s = raw::connect(proxy.port).await;
        raw::send(&mut s, &bytes).await;
        raw::expect_error_then_close(&mut s, "08P01", what).await;
        assert_healthy(&proxy, &clients, what).await;
    }

    // Old protocol versions are refused with an error (PostgreSQL itself
    // says 0A000 for these; the contract's 08P01 is accepted too).
    for (what, major, minor) in [
        ("protocol 2.0", 2, 0),
        ("protocol 0.0", 0, 0),
        ("protocol 7.1", 7, 1),
    ] {
        let mut s = raw::connect(proxy.port).await;
        raw::send(
            &mut s,
            &raw::startup(major, minor, &[("user", "app.acme"), ("database", "acme")]),
        )
        .await;
        let got = raw::read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "{what}: one message then close: {got:?}");
        let e = &got[0];
        assert_eq!(e.tag, b'E', "{what}: {got:?}");
        assert!(
            ["08P01", "0A000"].contains(&e.code().as_str()),
            "{what}: {:?}",
            e.fields()
        );
        assert!(
            e.message().contains("protocol"),
            "{what}: {:?}",
            e.message()
        );
        assert_healthy(&proxy, &clients, what).await;
    }

    // A truncated startup packet, then the client half-closes: the proxy
    // says why and closes.
    let mut s = raw::connect(proxy.port).await;
    raw::send(&mut s, &ok_params[..ok_params.len() / 2]).await;
    s.shutdown().await.expect("half-close");
    raw::expect_error_then_close(&mut s, "08P01", "truncated startup then EOF").await;
    assert_healthy(&proxy, &clients, "truncated startup then EOF").await;

    // Only a length word, then a full close: nothing to read back, and
    // the proxy must not mind.
    let mut s = raw::connect(proxy.port).await;
    raw::send(&mut s, &100i32.to_be_bytes()).await;
    drop(s);
    assert_healthy(&proxy, &clients, "length word then close").await;

    // Too many encryption requests in a row: each is declined with 'N'
    // until the proxy gives up with an error.
    let mut s = raw::connect(proxy.port).await;
    for _ in 0..3 {
        raw::send(&mut s, &raw::request_code(raw::SSL_REQUEST)).await;
        assert_eq!(raw::read_byte(&mut s).await, b'N');
    }
    raw::send(&mut s, &raw::request_code(raw::SSL_REQUEST)).await;
    let e = raw::expect_error_then_close(&mut s, "08P01", "a fourth SSLRequest").await;
    assert!(e.message().contains("too many"), "{}", e.message());
    assert_healthy(&proxy, &clients, "repeated SSLRequest").await;
    // The same without waiting for the answers: refused as soon as a
    // request is found with data behind it (at the first, unless the
    // requests arrive apart).
    let mut s = raw::connect(proxy.port).await;
    let mut four = Vec::new();
    for _ in 0..4 {
        four.extend(raw::request_code(raw::SSL_REQUEST));
    }
    raw::send(&mut s, &four).await;
    let mut declined = 0;
    loop {
        match raw::read_byte(&mut s).await {
            b'N' => declined += 1,
            b'E' => break,
            b => panic!("unexpected answer {b:?} to an SSLRequest"),
        }
    }
    assert!(declined <= 3, "declined {declined} requests");
    assert_healthy(&proxy, &clients, "SSLRequests without waiting").await;

    // A CancelRequest with a key nobody holds: closed without a word (as
    // PostgreSQL does), and no one is cancelled.
    let mut s = raw::connect(proxy.port).await;
    let mut cancel = with_len(16, &[0x04, 0xd2, 0x16, 0x2e]);
    cancel.extend_from_slice(&1234i32.to_be_bytes());
    cancel.extend_from_slice(&5678i32.to_be_bytes());
    raw::send(&mut s, &cancel).await;
    let got = raw::read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(got.is_empty(), "cancel request answered with {got:?}");
    assert_healthy(&proxy, &clients, "forged cancel request").await;
}

#[tokio::test]
async fn encryption_requests_and_protocol_negotiation() {
    let pg = TestPg::start(HostAuth::Trust, &TENANTS).await;
    let proxy = TestProxy::start(&pg.config(&TENANTS, 2, EXTRA)).await;
    let acme = proxy.connect("acme").await;
    let globex = proxy.connect("globex").await;
    let clients = [("acme", &acme), ("globex", &globex)];
    let params = [("user", "app.acme"), ("database", "acme")];

    // SSLRequest without [tls]: 'N', then plaintext startup on the same
    // socket works.
    for (what, code) in [
        ("SSLRequest", raw::SSL_REQUEST),
        ("GSSENCRequest", raw::GSSENC_REQUEST),
    ] {
        let mut s = raw::connect(proxy.port).await;
        raw::send(&mut s, &raw::request_code(code)).await;
        assert_eq!(raw::read_byte(&mut s).await, b'N', "{what}");
        raw::send(&mut s, &raw::startup(3, 0, &params)).await;
        raw::read_to_ready(&mut s, what).await;
        assert_eq!(raw::simple_query(&mut s, "SELECT 1").await, b'I', "{what}");
        assert_healthy(&proxy, &clients, what).await;
    }
    // Data sent ahead of the answer to an encryption request would pass
    // as if it had come encrypted: refused (as PostgreSQL does since the
    // fix for CVE-2021-23214), not answered 'N'.
    let mut s = raw::connect(proxy.port).await;
    let mut ahead = raw::request_code(raw::SSL_REQUEST);
    ahead.extend(raw::startup(3, 0, &params));
    raw::send(&mut s, &ahead).await;
    let e = raw::expect_error_then_close(&mut s, "08P01", "data after SSLRequest").await;
    assert!(e.message().contains("unencrypted data"), "{}", e.message());
    // A startup packet and the first query in one write: the query waits
    // in the buffer through authentication and is answered after it.
    let mut s = raw::connect(proxy.port).await;
    let mut both = raw::startup(3, 0, &params);
    both.extend(raw::query("SELECT 1"));
    raw::send(&mut s, &both).await;
    raw::read_to_ready(&mut s, "startup with a query behind it").await;
    let (msgs, status) = raw::read_to_ready(&mut s, "the pipelined query").await;
    assert_eq!(status, b'I');
    assert!(msgs.iter().any(|m| m.tag == b'D'), "{msgs:?}");
    assert_healthy(&proxy, &clients, "after pipelined startup").await;

    // Both, one after the other (libpq with gssencmode=prefer, sslmode=prefer).
    let mut s = raw::connect(proxy.port).await;
    raw::send(&mut s, &raw::request_code(raw::GSSENC_REQUEST)).await;
    assert_eq!(raw::read_byte(&mut s).await, b'N');
    raw::send(&mut s, &raw::request_code(raw::SSL_REQUEST)).await;
    assert_eq!(raw::read_byte(&mut s).await, b'N');
    raw::send(&mut s, &raw::startup(3, 0, &params)).await;
    raw::read_to_ready(&mut s, "GSSENC then SSL").await;

    // Protocol 3.2 and unknown `_pq_.` options: NegotiateProtocolVersion
    // (newest minor 0, the unknown options listed), then authentication
    // goes on and the session works.
    let pq_params = [
        ("user", "app.acme"),
        ("database", "acme"),
        ("_pq_.foo", "bar"),
    ];
    for (what, minor, params, unknown) in [
        ("protocol 3.2", 2u16, &params[..], &[][..]),
        (
            "protocol 3.0 with _pq_.foo",
            0,
            &pq_params[..],
            &["_pq_.foo"][..],
        ),
        (
            "protocol 3.9999 with _pq_.foo",
            9999,
            &pq_params[..],
            &["_pq_.foo"][..],
        ),
    ] {
        let mut s = raw::connect(proxy.port).await;
        raw::send(&mut s, &raw::startup(3, minor, params)).await;
        let v = raw::expect_msg(&mut s, what).await;
        assert_eq!(v.tag, b'v', "{what}: {v:?}");
        assert_eq!(&v.body[..4], &0i32.to_be_bytes(), "{what}: newest minor");
        assert_eq!(
            &v.body[4..8],
            &(unknown.len() as i32).to_be_bytes(),
            "{what}: option count"
        );
        let mut names = Vec::new();
        for n in v.body[8..].split(|&b| b == 0) {
            if !n.is_empty() {
                names.push(String::from_utf8_lossy(n).into_owned());
            }
        }
        assert_eq!(names, unknown, "{what}");
        let r = raw::expect_msg(&mut s, what).await;
        assert_eq!(r.tag, b'R', "{what}: authentication follows: {r:?}");
        raw::read_to_ready(&mut s, what).await;
        assert_eq!(raw::simple_query(&mut s, "SELECT 1").await, b'I', "{what}");
        assert_healthy(&proxy, &clients, what).await;
    }
}

#[tokio::test]
async fn malformed_messages_after_login_get_08p01_and_close() {
    let pg = TestPg::start(HostAuth::Trust, &TENANTS).await;
    // One server connection per tenant: a dirty one left behind by a
    // hostile client would be handed to the next client.
    let proxy = TestProxy::start(&pg.config(&TENANTS, 1, EXTRA)).await;
    let acme = proxy.connect("acme").await;
    let globex = proxy.connect("globex").await;
    let clients = [("acme", &acme), ("globex", &globex)];

    let over = |len: i32| raw::header(b'Q', len);
    let mut q_then_bad = raw::query("SELECT 1");
    q_then_bad.extend_from_slice(&raw::header(b'Q', i32::MAX));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length 3", over(3)),
        ("length 0", over(0)),
        ("length -5", over(-5)),
        ("length 0x7fffffff", over(i32::MAX)),
        ("length 1 MiB + 1", over((1 << 20) + 1)),
        ("Sync with length 3", raw::header(b'S', 3)),
        ("a query, then length 0x7fffffff", q_then_bad),
    ];
    for (what, bytes) in &cases {
        // Idle (between transactions) and inside a transaction.
        for in_txn in [false, true] {
            let what = format!("{what} (in transaction: {in_txn})");
            let mut s = raw::login_trust(proxy.port, "acme").await;
            if in_txn {
                assert_eq!(
                    raw::simple_query(
                        &mut s,
                        "BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('acme', 'hostile')"
                    )
                    .await,
                    b'T'
                );
            }
            raw::send(&mut s, bytes).await;
            let got = raw::read_until_closed(&mut s, Duration::from_secs(10)).await;
            let errors: Vec<_> = got.iter().filter(|m| m.tag == b'E').collect();
            assert_eq!(errors.len(), 1, "{what}: {got:?}");
            assert_eq!(
                errors[0].code(),
                "08P01",
                "{what}: {:?}",
                errors[0].fields()
            );
            assert_eq!(got.last().map(|m| m.tag), Some(b'E'), "{what}: {got:?}");
            assert_healthy(&proxy, &clients, &what).await;
            let hostile: i64 = acme
                .query_one("SELECT count(*) FROM notes WHERE body = 'hostile'", &[])
                .await
                .expect("count")
                .get(0);
            assert_eq!(
                hostile, 0,
                "{what}: the hostile transaction was not rolled back"
            );
        }
    }

    // A well-framed message of a type PostgreSQL does not know: the
    // server refuses it (08P01) and closes; the client hears about it and
    // the pool replaces the connection.
    let mut s = raw::login_trust(proxy.port, "acme").await;
    raw::send(&mut s, &raw::frame(0, b"")).await;
    let got = raw::read_until_closed(&mut s, Duration::from_secs(10)).await;
    let first_error = got.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(first_error.code(), "08P01", "{got:?}");
    assert_healthy(&proxy, &clients, "unknown message type").await;
}

#[tokio::test]
async fn silent_and_stalled_clients_are_dropped_after_login_timeout() {
    let pg = TestPg::start(HostAuth::Trust, &TENANTS).await;
    let trust = TestProxy::start(&pg.config(&TENANTS, 2, EXTRA)).await;
    // The default auth_type (SCRAM) for stalls inside authentication.
    let scram = TestProxy::start(&pg.config(
        &TENANTS,
        2,
        "max_message_size = \"1MB\"\nclient_login_timeout = \"1s\"",
    ))
    .await;
    let acme = trust.connect("acme").await;
    let globex = trust.connect("globex").await;
    let clients = [("acme", &acme), ("globex", &globex)];
    let params = raw::startup(3, 0, &[("user", "app.acme"), ("database", "acme")]);

    // Open all the stalled connections at once, check that everyone else
    // is served meanwhile, then that each stalled one is closed in time.
    let started = Instant::now();
    let mut stalled = Vec::new();
    stalled.push(("sends nothing", raw::connect(trust.port).await));
    let mut s = raw::connect(trust.port).await;
    raw::send(&mut s, &params[..3]).await;
    stalled.push(("partial length word", s));
    let mut s = raw::connect(trust.port).await;
    raw::send(&mut s, &params[..params.len() - 4]).await;
    stalled.push(("truncated startup packet", s));
    let mut s = raw::connect(trust.port).await;
    raw::send(&mut s, &raw::request_code(raw::SSL_REQUEST)).await;
    assert_eq!(raw::read_byte(&mut s).await, b'N');
    stalled.push(("SSLRequest then nothing", s));
    let mut s = raw::connect(scram.port).await;
    raw::send(&mut s, &params).await;
    let r = raw::expect_msg(&mut s, "SASL offer").await;
    assert_eq!(r.tag, b'R');
    stalled.push(("SCRAM: startup then nothing", s));
    let mut s = raw::connect(scram.port).await;
    raw::send(&mut s, &params).await;
    raw::expect_msg(&mut s, "SASL offer").await;
    raw::send(&mut s, &raw::header(b'p', 100)).await;
    stalled.push(("SCRAM: partial SASLInitialResponse", s));

    assert_healthy(&trust, &clients, "stalled clients connected").await;

    for (what, mut s) in stalled {
        let got = raw::read_until_closed(&mut s, Duration::from_secs(6)).await;
        // If the proxy says anything, it is one 08P01 ErrorResponse.
        for m in &got {
            assert_eq!(m.tag, b'E', "{what}: {got:?}");
            assert_eq!(m.code(), "08P01", "{what}: {:?}", m.fields());
        }
        assert!(got.len() <= 1, "{what}: {got:?}");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed before client_login_timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_healthy(&trust, &clients, "stalled clients dropped").await;

    // An oversized message inside SCRAM authentication is refused at once.
    let mut s = raw::connect(scram.port).await;
    raw::send(&mut s, &params).await;
    raw::expect_msg(&mut s, "SASL offer").await;
    raw::send(&mut s, &raw::header(b'p', i32::MAX)).await;
    let t = Instant::now();
    raw::expect_error_then_close(&mut s, "08P01", "oversized SASLInitialResponse").await;
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // And a negative one.
    let mut s = raw::connect(scram.port).await;
    raw::send(&mut s, &params).await;
    raw::expect_msg(&mut s, "SASL offer").await;
    raw::send(&mut s, &raw::header(b'p', -1)).await;
    raw::expect_error_then_close(&mut s, "08P01", "negative SASLInitialResponse").await;

    // A logged-in client that goes quiet is not subject to the login
    // timeout.
    let mut s = raw::login_trust(trust.port, "globex").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match raw::read_msg(&mut s, Duration::from_millis(10)).await {
        Read::Timeout => {}
        other => panic!("an idle logged-in client was disturbed: {other:?}"),
    }
    assert_eq!(raw::simple_query(&mut s, "SELECT 1").await, b'I');
}
