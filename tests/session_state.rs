//! Session settings in transaction mode follow the client, not the server
//! connection: what one client SETs never reaches another client on the
//! same server connection, and the client's own later transactions keep
//! seeing it.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;

async fn show(c: &tokio_postgres::Client, name: &str) -> String {
    let rows = c.simple_query(&format!("SHOW {name}")).await.expect("show");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test]
async fn set_follows_the_client_and_never_leaks() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    // One server connection: every client shares it.
    let proxy = TestProxy::start(&pg.config(&["acme"], 1, "auth_type = \"trust\"")).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let default_timeout = show(&b, "statement_timeout").await;
    let default_path = show(&b, "search_path").await;

    a.batch_execute("SET statement_timeout = '200ms'; SET search_path = pg_catalog, public; SET work_mem = '13MB'")
        .await
        .expect("set");
    // b runs on the same server connection and sees none of it.
    assert_eq!(show(&b, "statement_timeout").await, default_timeout);
    assert_eq!(show(&b, "search_path").await, default_path);
    assert_eq!(show(&b, "work_mem").await, "4MB");
    b.batch_execute("SELECT pg_sleep(0.4)")
        .await
        .expect("b's query is not timed out");

    // a still has its settings in later transactions.
    assert_eq!(show(&a, "statement_timeout").await, "200ms");
    assert_eq!(show(&a, "search_path").await, "pg_catalog, public");
    assert_eq!(show(&a, "work_mem").await, "13MB");
    let err = a
        .batch_execute("SELECT pg_sleep(0.4)")
        .await
        .expect_err("a's timeout applies");
    assert_eq!(sqlstate(&err), "57014");

    // RESET returns a to the defaults; SET LOCAL never sticks.
    a.batch_execute("RESET statement_timeout; RESET search_path")
        .await
        .expect("reset");
    assert_eq!(show(&a, "statement_timeout").await, default_timeout);
    assert_eq!(show(&a, "search_path").await, default_path);
    a.batch_execute("BEGIN; SET LOCAL work_mem = '1MB'; COMMIT")
        .await
        .expect("local");
    assert_eq!(show(&a, "work_mem").await, "13MB");
    assert_eq!(show(&b, "work_mem").await, "4MB");
}
