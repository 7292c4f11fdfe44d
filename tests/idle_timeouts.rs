//! idle_transaction_timeout and client_idle_timeout (PgBouncer's names,
//! off by default): idle clients are disconnected with PostgreSQL's own
//! SQLSTATEs, their transactions rolled back, and the server connection
//! goes back to the pool.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::time::{Duration, Instant};

#[tokio::test]
async fn idle_in_transaction_is_ended_and_rolled_back() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\nidle_transaction_timeout = \"500ms\"\nquery_wait_timeout = \"5s\"",
    ))
    .await;
    let a = proxy.connect("acme").await;
    a.batch_execute("BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('acme', 'abandoned')")
        .await
        .expect("begin");
    // b needs the only server connection; it gets it once a is cut off.
    let b = proxy.connect("acme").await;
    let started = Instant::now();
    let n: i64 = b
        .query_one("SELECT count(*) FROM notes WHERE body = 'abandoned'", &[])
        .await
        .expect("b runs after a's timeout")
        .get(0);
    assert_eq!(n, 0, "a's transaction was rolled back");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    let err = a
        .batch_execute("SELECT 1")
        .await
        .expect_err("a was disconnected");
    // The FATAL arrived while a was idle; it surfaces as the closing error
    // (with its SQLSTATE when the driver kept it).
    if let Some(db) = err.as_db_error() {
        assert_eq!(db.code().code(), "25P03");
    }
    // Activity inside a transaction keeps it alive. (Gaps a tenth of the
    // limit, so that a loaded machine cannot stretch one past it; the
    // limits to the millisecond need a paused clock, which a real server
    // rules out: see README, Tests.)
    let c = proxy.connect("acme").await;
    c.batch_execute("BEGIN").await.expect("begin");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.batch_execute("SELECT 1").await.expect("still alive");
    }
    c.batch_execute("COMMIT").await.expect("commit");
}

#[tokio::test]
async fn idle_clients_are_disconnected_in_both_modes() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    for mode in ["transaction", "session"] {
        let proxy = TestProxy::start(&pg.config(
            &["acme"],
            2,
            &format!(
                "auth_type = \"trust\"\npool_mode = \"{mode}\"\nclient_idle_timeout = \"500ms\""
            ),
        ))
        .await;
        let a = proxy.connect("acme").await;
        a.batch_execute("SELECT 1").await.expect("first");
        // Busy clients stay (gaps a tenth of the limit).
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.batch_execute("SELECT 1")
                .await
                .expect("active client stays");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let err = a
            .batch_execute("SELECT 1")
            .await
            .expect_err("idle client was cut off");
        if let Some(db) = err.as_db_error() {
            assert_eq!(db.code().code(), "57P05", "{mode}");
        }
        assert!(a.is_closed(), "{mode}: {}", sqlstate(&err));
    }
}
