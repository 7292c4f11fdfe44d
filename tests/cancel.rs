//! Query cancellation through the proxy: a client's own cancel key stops
//! its running query; another client's key, or a key used while its
//! client is idle, cancels nothing (transaction pooling shares server
//! connections, so a stray cancel must never hit whoever holds the
//! connection next).

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const TENANTS: [&str; 2] = ["acme", "globex"];

async fn start() -> (TestPg, TestProxy) {
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let proxy = TestProxy::start(&pg.config(
        &TENANTS,
        2,
        "pool_mode = \"transaction\"\nquery_wait_timeout = \"10s\"",
    ))
    .await;
    (pg, proxy)
}

/// Long enough that only a cancel can end it within the test's bounds.
const LONG: &str = "SELECT pg_sleep(30)";

/// Waits until the server shows `n` sessions running `pg_sleep`, so a
/// cancel sent afterwards finds the query executing.
async fn wait_for_sleepers(pg: &TestPg, n: i64) {
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if running >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{running} of {n} sleepers started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn own_cancel_key_cancels_the_running_query() {
    let (pg, proxy) = start().await;
    let a = proxy.connect("acme").await;
    let token = a.cancel_token();

    let started = Instant::now();
    let running = tokio::spawn(async move {
        let r = a.simple_query(LONG).await;
        (a, r)
    });
    wait_for_sleepers(&pg, 1).await;
    token.cancel_query(NoTls).await.expect("cancel request");
    let (a, result) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancelled query returns")
        .expect("join");
    let err = result.expect_err("the query was cancelled");
    assert_eq!(sqlstate(&err), "57014", "{err}");
    assert!(
        err.as_db_error()
            .expect("server error")
            .message()
            .contains("cancel"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The connection is still usable, and so is the cancelled client.
    let one: i32 = a.query_one("SELECT 1", &[]).await.expect("q").get(0);
    assert_eq!(one, 1);

    // Inside an explicit transaction, too: the transaction is aborted,
    // the client can roll it back and go on.
    a.batch_execute("BEGIN").await.expect("begin");
    let token = a.cancel_token();
    let running = tokio::spawn(async move {
        let r = a.simple_query(LONG).await;
        (a, r)
    });
    wait_for_sleepers(&pg, 1).await;
    token.cancel_query(NoTls).await.expect("cancel request");
    let (a, result) = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancelled query returns")
        .expect("join");
    assert_eq!(sqlstate(&result.expect_err("cancelled")), "57014");
    a.batch_execute("ROLLBACK").await.expect("rollback");
    let one: i32 = a.query_one("SELECT 1", &[]).await.expect("q").get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn another_clients_key_does_not_cancel() {
    let (pg, proxy) = start().await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let other_tenant = proxy.connect("globex").await;

    // A is idle; B runs a short sleep. A's cancel must not touch B (B may
    // well be on the very server connection A used last).
    a.simple_query("SELECT 1").await.expect("A warms up");
    let started = Instant::now();
    let b_run = tokio::spawn(async move { b.simple_query("SELECT pg_sleep(1.5)").await });
    wait_for_sleepers(&pg, 1).await;
    a.cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("cancel request");
    other_tenant
        .cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("cancel request");
    b_run
        .await
        .expect("join")
        .expect("B's query is not cancelled by A's key");
    assert!(started.elapsed() >= Duration::from_millis(1400));

    // Both running: cancelling A stops A only.
    let b = proxy.connect("acme").await;
    let a_token = a.cancel_token();
    let a_run = tokio::spawn(async move { a.simple_query(LONG).await });
    let b_run = tokio::spawn(async move { b.simple_query("SELECT pg_sleep(1.5)").await });
    wait_for_sleepers(&pg, 2).await;
    a_token.cancel_query(NoTls).await.expect("cancel request");
    let a_result = tokio::time::timeout(Duration::from_secs(10), a_run)
        .await
        .expect("A returns")
        .expect("join");
    assert_eq!(sqlstate(&a_result.expect_err("A cancelled")), "57014");
    b_run.await.expect("join").expect("B completes normally");
}

#[tokio::test]
async fn a_late_cancel_cancels_nothing_later() {
    let (_pg, proxy) = start().await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    a.simple_query("SELECT 1")
        .await
        .expect("A runs and finishes");
    // A is idle now; its server connection is back in the pool. The
    // cancel is answered (the proxy closes the request socket) before
    // cancel_query returns, so anything it could do is done by then.
    a.cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("cancel request");
    a.cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("cancel request");
    // Give a stray cancel every chance to land on a server connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    a.simple_query("SELECT pg_sleep(1)")
        .await
        .expect("A's next query is not cancelled");
    assert!(started.elapsed() >= Duration::from_millis(900));
    b.simple_query("SELECT pg_sleep(0.5)")
        .await
        .expect("B's query is not cancelled");

    // A cancel key of a client that has since disconnected does nothing
    // to the next client either.
    let c = proxy.connect("acme").await;
    let stale = c.cancel_token();
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stale.cancel_query(NoTls).await.expect("cancel request");
    let started = Instant::now();
    b.simple_query("SELECT pg_sleep(1)")
        .await
        .expect("B's query is not cancelled by a stale key");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// A cancel that comes while the client's request still waits for a
/// server connection ends the wait: the request is answered as canceled
/// (57014) at once, never reaches a server, and the session goes on.
/// PgBouncer leaves such a client waiting (pgbouncer#1222).
#[tokio::test]
async fn a_cancel_ends_a_wait_for_a_server_connection() {
    let (pg, proxy) = start().await;
    // Both server connections busy.
    let mut sleepers = Vec::new();
    for _ in 0..2 {
        let s = proxy.connect("acme").await;
        let token = s.cancel_token();
        let run = tokio::spawn(async move { s.simple_query(LONG).await });
        sleepers.push((token, run));
    }
    wait_for_sleepers(&pg, 2).await;

    let w = std::sync::Arc::new(proxy.connect("acme").await);
    // A simple Query, then an extended-protocol one (tokio-postgres
    // prepares it: Parse, Describe, Sync), each canceled while it waits.
    for extended in [false, true] {
        let token = w.cancel_token();
        let waiter = std::sync::Arc::clone(&w);
        let started = Instant::now();
        let run = tokio::spawn(async move {
            let insert = "INSERT INTO notes (tenant_id, body) VALUES ('acme', 'canceled')";
            if extended {
                waiter.execute(insert, &[]).await.map(drop)
            } else {
                waiter.simple_query(insert).await.map(drop)
            }
        });
        // Long enough to be queued behind the sleepers.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!run.is_finished(), "the request waits for a connection");
        token.cancel_query(NoTls).await.expect("cancel request");
        let result = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the canceled request is answered at once, not after the sleepers")
            .expect("join");
        let err = result.expect_err("canceled");
        assert_eq!(sqlstate(&err), "57014", "extended {extended}: {err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // The sleepers go; the session that canceled twice goes on, and
    // neither canceled INSERT ever ran.
    for (token, run) in sleepers {
        token.cancel_query(NoTls).await.expect("cancel request");
        let _ = run.await;
    }
    let n: i64 = w
        .query_one("SELECT count(*) FROM notes WHERE body = 'canceled'", &[])
        .await
        .expect("after the cancels")
        .get(0);
    assert_eq!(n, 0, "a canceled request reached the server");
}

/// The same over a raw socket, with the batch cut in two around the
/// cancel: the error comes at once, the rest of the batch (sent after)
/// is dropped up to its Sync, which alone gets a ReadyForQuery, and the
/// next query runs normally.
#[tokio::test]
async fn a_batch_canceled_while_waiting_is_dropped_up_to_its_sync() {
    use common::raw;
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\nquery_wait_timeout = \"20s\"",
    ))
    .await;
    let holder = proxy.connect("acme").await;
    let holder_token = holder.cancel_token();
    let held = tokio::spawn(async move { holder.simple_query(LONG).await });
    wait_for_sleepers(&pg, 1).await;

    let mut s = raw::connect(proxy.port).await;
    raw::send(
        &mut s,
        &raw::startup(3, 0, &[("user", "app.acme"), ("database", "acme")]),
    )
    .await;
    let (login, _) = raw::read_to_ready(&mut s, "login").await;
    let key = login
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    let mut parse = b"\0INSERT INTO notes (tenant_id, body) VALUES ('acme', 'canceled')\0".to_vec();
    parse.extend_from_slice(&[0, 0]);
    let mut first = raw::frame(b'P', &parse);
    first.extend(raw::frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    raw::send(&mut s, &first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut cancel = 16i32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&80_877_102i32.to_be_bytes());
    cancel.extend_from_slice(&key.body);
    let mut c = raw::connect(proxy.port).await;
    raw::send(&mut c, &cancel).await;
    let err = raw::expect_msg(&mut s, "the cancel's error").await;
    assert_eq!(
        (err.tag, err.code()),
        (b'E', "57014".to_string()),
        "{:?}",
        err.fields()
    );

    // The rest of the batch, then its Sync: one ReadyForQuery, nothing
    // else.
    let mut rest = raw::frame(b'E', &[0, 0, 0, 0, 0]);
    rest.extend(raw::frame(b'S', &[]));
    raw::send(&mut s, &rest).await;
    let ready = raw::expect_msg(&mut s, "the Sync's ReadyForQuery").await;
    assert_eq!((ready.tag, ready.body.as_slice()), (b'Z', &b"I"[..]));

    holder_token
        .cancel_query(NoTls)
        .await
        .expect("cancel request");
    let _ = held.await;
    raw::send(
        &mut s,
        &raw::query("SELECT count(*) FROM notes WHERE body = 'canceled'"),
    )
    .await;
    let (answer, _) = raw::read_to_ready(&mut s, "the next query").await;
    let row = answer.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(&row.body[6..], b"0", "the canceled batch never ran");
}
