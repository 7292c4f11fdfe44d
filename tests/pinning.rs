//! Session state that cannot move between server connections pins a
//! transaction-mode client to its connection (or, with pin_policy =
//! "error", ends the session with a clear message).

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::time::Duration;

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

#[tokio::test]
async fn session_state_pins_and_unpins() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        2,
        "auth_type = \"trust\"\nquery_wait_timeout = \"2s\"",
    ))
    .await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    // A temporary table keeps a on one connection across transactions.
    a.batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
        .await
        .expect("temp table");
    let pinned = pid(&a).await;
    for _ in 0..5 {
        // b's traffic cannot take a's connection.
        b.batch_execute("SELECT 1").await.expect("b");
        assert_eq!(pid(&a).await, pinned);
        let n: i64 = a
            .query_one("SELECT count(*) FROM scratch", &[])
            .await
            .expect("scratch")
            .get(0);
        assert_eq!(n, 1);
    }
    // b never sees a's temporary table.
    let err = b
        .batch_execute("SELECT * FROM scratch")
        .await
        .expect_err("not b's");
    assert_eq!(sqlstate(&err), "42P01");

    // Dropping it unpins: with pool_size 2 and a third client holding the
    // other connection in a transaction, b can only run if a let go.
    a.batch_execute("DROP TABLE scratch").await.expect("drop");
    let c = proxy.connect("acme").await;
    c.batch_execute("BEGIN").await.expect("c begins");
    b.batch_execute("SELECT 1")
        .await
        .expect("b gets a's former connection");
    c.batch_execute("COMMIT").await.expect("c commits");

    // An advisory lock held across transactions pins too, and unlocking
    // releases the pin.
    a.batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .expect("lock");
    let pinned = pid(&a).await;
    b.batch_execute("SELECT 1").await.expect("b");
    assert_eq!(pid(&a).await, pinned);
    a.batch_execute("SELECT pg_advisory_unlock(42)")
        .await
        .expect("unlock");

    // LISTEN keeps a pinned (a NOTIFY from b meanwhile does not unpin it).
    a.batch_execute("LISTEN chan").await.expect("listen");
    b.batch_execute("NOTIFY chan, 'hello'")
        .await
        .expect("notify");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pinned = pid(&a).await;
    assert_eq!(pid(&a).await, pinned);
    drop(a);

    // When a pinned client leaves, its connection is reset (DISCARD ALL)
    // before anyone else gets it: nobody inherits the LISTEN.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..4 {
        let channels: i64 = b
            .query_one("SELECT count(*) FROM pg_listening_channels()", &[])
            .await
            .expect("channels")
            .get(0);
        assert_eq!(channels, 0);
    }
    let admin = pg.cluster.admin("tenant_acme").await.expect("admin");
    let locks: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .expect("locks")
        .get(0);
    assert_eq!(locks, 0);
}

#[tokio::test]
async fn pin_policy_error_refuses_session_state() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\npin_policy = \"error\"",
    ))
    .await;
    let a = proxy.connect("acme").await;
    let err = a
        .batch_execute("SELECT pg_advisory_lock(7)")
        .await
        .map(|_| ())
        .and(a.batch_execute("SELECT 1").await)
        .expect_err("session state is refused");
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert_eq!(sqlstate(&err), "0A000", "{err}");
    assert!(
        msg.contains("advisory lock") && msg.contains("acme"),
        "{msg}"
    );
    // The connection was cleaned before reuse: the lock is gone.
    let b = proxy.connect("acme").await;
    let locks: i64 = b
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .expect("locks")
        .get(0);
    assert_eq!(locks, 0);
}
