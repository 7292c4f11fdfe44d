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

/// PostgreSQL's RESET returns a setting to the value the client sent at
/// startup. On a connection the client keeps (session mode), the server
/// connection's own default is another one: the proxy puts the client's
/// back before the client hears the server is idle.
#[tokio::test]
async fn reset_returns_to_the_startup_value_on_a_kept_connection() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\npool_mode = \"session\"",
    ))
    .await;
    let (a, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.port)
        .user("app.acme")
        .dbname("acme")
        .application_name("from-startup")
        .options("-c work_mem=13MB")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    for reset in [
        "RESET application_name; RESET work_mem",
        "RESET ALL",
        "DISCARD ALL",
        "BEGIN; RESET ALL; COMMIT",
    ] {
        a.batch_execute("SET application_name = 'changed'; SET work_mem = '1MB'")
            .await
            .expect("set");
        assert_eq!(show(&a, "application_name").await, "changed");
        a.batch_execute(reset).await.expect("reset");
        assert_eq!(
            show(&a, "application_name").await,
            "from-startup",
            "{reset}"
        );
        assert_eq!(show(&a, "work_mem").await, "13MB", "{reset}");
    }
    // RESET inside a transaction block is undone by its ROLLBACK.
    a.batch_execute("SET work_mem = '2MB'").await.expect("set");
    a.batch_execute("BEGIN; RESET work_mem; ROLLBACK")
        .await
        .expect("rollback");
    assert_eq!(show(&a, "work_mem").await, "2MB");
}
