//! Named prepared statements in transaction mode: clients' statements work
//! on whichever server connection runs their next transaction, identical
//! statements share one server-side statement, and no "already exists" /
//! "does not exist" error caused by pooling reaches a client.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;

#[tokio::test]
async fn named_statements_follow_the_client_across_server_connections() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme"], 3, "auth_type = \"trust\"")).await;

    // tokio-postgres prepares every statement as a named one (s0, s1...),
    // outside any transaction.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(proxy.connect("acme").await);
    }
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let count = c
                .prepare("SELECT count(*) FROM notes WHERE tenant_id = $1")
                .await
                .expect("prepare");
            let insert = c
                .prepare("INSERT INTO notes (tenant_id, body) VALUES ($1, $2) RETURNING id")
                .await
                .expect("prepare insert");
            let mut mine = 0i64;
            for round in 0..20 {
                let n: i64 = c.query_one(&count, &[&"acme"]).await.expect("count").get(0);
                assert!(n >= 2);
                c.query_one(&insert, &[&format!("client{i}"), &format!("round {round}")])
                    .await
                    .expect("insert");
                mine += 1;
                let own: i64 = c
                    .query_one(&count, &[&format!("client{i}")])
                    .await
                    .expect("own")
                    .get(0);
                assert_eq!(own, mine);
            }
            // Describe of a named statement
            let described = c
                .prepare("SELECT $1::int + 1 AS next")
                .await
                .expect("describe");
            assert_eq!(described.columns()[0].name(), "next");
            let v: i32 = c
                .query_one(&described, &[&41i32])
                .await
                .expect("run")
                .get(0);
            assert_eq!(v, 42);
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }

    // Identical statements from many clients share server-side statements:
    // each of the 3 server connections holds each distinct statement once.
    let admin = pg.cluster.admin("tenant_acme").await.expect("admin");
    let rows = admin
        .query("SELECT count(*) FROM pg_stat_activity WHERE datname = 'tenant_acme' AND usename = 'pgt_acme'", &[])
        .await
        .expect("activity");
    assert!(rows[0].get::<_, i64>(0) <= 3);
}

#[tokio::test]
async fn close_deallocate_and_errors_behave_like_postgres() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme"], 1, "auth_type = \"trust\"")).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    let sa = a.prepare("SELECT 1 AS one").await.expect("prepare a");
    let sb = b
        .prepare("SELECT 1 AS one")
        .await
        .expect("prepare b (same text)");
    assert_eq!(a.query_one(&sa, &[]).await.expect("a").get::<_, i32>(0), 1);
    assert_eq!(b.query_one(&sb, &[]).await.expect("b").get::<_, i32>(0), 1);
    // Dropping a's statement (Close) must not break b's, which shares it.
    drop(sa);
    assert_eq!(
        b.query_one(&sb, &[])
            .await
            .expect("b after a's close")
            .get::<_, i32>(0),
        1
    );

    // A statement that fails to prepare reports the server's error, and the
    // connection stays usable.
    let err = a
        .prepare("SELECT * FROM no_such_table")
        .await
        .expect_err("fails");
    assert_eq!(sqlstate(&err), "42P01");
    let ok = a.prepare("SELECT 2").await.expect("prepare after error");
    assert_eq!(
        a.query_one(&ok, &[]).await.expect("run").get::<_, i32>(0),
        2
    );

    // DEALLOCATE ALL from a client clears its own statements and the
    // server connection's cache, and later statements still work.
    a.batch_execute("DEALLOCATE ALL")
        .await
        .expect("deallocate all");
    let again = a
        .prepare("SELECT 3")
        .await
        .expect("prepare after deallocate");
    assert_eq!(
        a.query_one(&again, &[])
            .await
            .expect("run")
            .get::<_, i32>(0),
        3
    );
    assert_eq!(
        b.query_one(&sb, &[])
            .await
            .expect("b after deallocate")
            .get::<_, i32>(0),
        1
    );

    // DISCARD ALL likewise.
    b.batch_execute("DISCARD ALL").await.expect("discard all");
    let sb2 = b.prepare("SELECT 4").await.expect("prepare after discard");
    assert_eq!(
        b.query_one(&sb2, &[]).await.expect("run").get::<_, i32>(0),
        4
    );
    assert_eq!(
        a.query_one(&again, &[])
            .await
            .expect("a after discard")
            .get::<_, i32>(0),
        3
    );
}

#[tokio::test]
async fn a_small_cache_evicts_without_errors() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\nmax_prepared_statements = 3",
    ))
    .await;
    let c = proxy.connect("acme").await;
    let mut stmts = Vec::new();
    for i in 0..10 {
        stmts.push(
            c.prepare(&format!("SELECT {i}::int"))
                .await
                .expect("prepare"),
        );
    }
    for _ in 0..3 {
        for (i, s) in stmts.iter().enumerate() {
            let v: i32 = c
                .query_one(s, &[])
                .await
                .expect("run evicted statement")
                .get(0);
            assert_eq!(v, i as i32);
        }
    }
    let admin = pg.cluster.admin("tenant_acme").await.expect("admin");
    // The server connection holds at most the cache size (checked from a
    // client of the same connection, pool_size 1).
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .expect("count")
        .get(0);
    assert!(n <= 4, "server holds {n} statements"); // 3 cached + this query's own
    drop(admin);
}
