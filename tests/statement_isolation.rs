//! Prepared statements under transaction pooling cannot be used, dropped
//! or replaced by another client of the same server connection (issue 17
//! point 4), and a client's own SQL `DEALLOCATE` of a protocol-level
//! statement works. Each test performs the attack over the proxy.

mod common;

use common::raw::{self, Msg, Read};
use common::{TestPg, TestProxy};
use pgtenant::pgcluster::HostAuth;
use std::time::Duration;
use tokio::net::TcpStream;

fn cstr(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    raw::frame(b'P', &b)
}

/// Bind of `stmt` to the unnamed portal, no parameters, text results.
fn bind(stmt: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, stmt);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    raw::frame(b'B', &b)
}

fn execute() -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    b.extend_from_slice(&0i32.to_be_bytes());
    raw::frame(b'E', &b)
}

fn describe_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    raw::frame(b'D', &b)
}

fn sync() -> Vec<u8> {
    raw::frame(b'S', &[])
}

/// Every message up to and including ReadyForQuery (errors included).
async fn read_batch(s: &mut TcpStream, what: &str) -> Vec<Msg> {
    let mut got = Vec::new();
    loop {
        match raw::read_msg(s, Duration::from_secs(20)).await {
            Read::Msg(m) => {
                let z = m.tag == b'Z';
                got.push(m);
                if z {
                    return got;
                }
            }
            other => panic!("{what}: {other:?} after {got:?}"),
        }
    }
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// The proxy's server-side statement names, as any client of the
/// connection can list them (a simple query: nothing prepared for it).
async fn proxy_names(c: &tokio_postgres::Client) -> Vec<String> {
    c.simple_query("SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgt\\_%'")
        .await
        .expect("list")
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

async fn one_connection_proxy(pg: &TestPg) -> TestProxy {
    TestProxy::start(&pg.config(&["acme"], 1, "auth_type = \"trust\"")).await
}

#[tokio::test]
async fn another_client_deallocating_the_proxys_statements_does_not_break_mine() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = one_connection_proxy(&pg).await;
    let victim = proxy.connect("acme").await;
    let attacker = proxy.connect("acme").await;

    let stmt = victim.prepare("SELECT $1::int + 1").await.expect("prepare");
    let v: i32 = victim.query_one(&stmt, &[&1i32]).await.expect("run").get(0);
    assert_eq!(v, 2);

    // Pool size 1: the attacker's server connection is the victim's.
    let names = proxy_names(&attacker).await;
    assert!(!names.is_empty(), "the statement is listed");
    let sql: Vec<String> = names.iter().map(|n| format!("DEALLOCATE {n}")).collect();
    attacker
        .batch_execute(&sql.join("; "))
        .await
        .expect("deallocate");
    for round in 0..3 {
        let v: i32 = victim
            .query_one(&stmt, &[&41i32])
            .await
            .unwrap_or_else(|e| panic!("victim after DEALLOCATE, round {round}: {e}"))
            .get(0);
        assert_eq!(v, 42);
    }
}

#[tokio::test]
async fn a_replaced_statement_never_runs_for_the_victim() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = one_connection_proxy(&pg).await;
    let victim = proxy.connect("acme").await;
    let stmt = victim.prepare("SELECT $1::int + 1").await.expect("prepare");
    let v: i32 = victim.query_one(&stmt, &[&1i32]).await.expect("run").get(0);
    assert_eq!(v, 2);
    let names = proxy_names(&victim).await;
    assert_eq!(names.len(), 1, "{names:?}");
    let name = &names[0];

    // The attacker replaces the statement and leaves in the same packet,
    // before any check at an idle point could run.
    let mut s = raw::login_trust(proxy.port, "acme").await;
    let mut bytes = raw::query(&format!(
        "DEALLOCATE {name}; PREPARE {name}(int) AS SELECT 666 + 0 * $1"
    ));
    bytes.extend(raw::frame(b'X', &[]));
    raw::send(&mut s, &bytes).await;
    drop(s);

    for round in 0..3 {
        let v: i32 = victim
            .query_one(&stmt, &[&41i32])
            .await
            .unwrap_or_else(|e| panic!("victim after the swap, round {round}: {e}"))
            .get(0);
        assert_eq!(v, 42, "the victim ran the attacker's statement");
    }
}

#[tokio::test]
async fn naming_a_statement_the_client_never_prepared_gets_26000_from_the_proxy() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = one_connection_proxy(&pg).await;
    let victim = proxy.connect("acme").await;
    let stmt = victim
        .prepare("SELECT 'victim secret'::text")
        .await
        .expect("prepare");
    victim.query_one(&stmt, &[]).await.expect("run");
    let name = proxy_names(&victim).await.remove(0);

    let mut s = raw::login_trust(proxy.port, "acme").await;
    // Bind + Execute of the victim's server-side statement by its name:
    // the proxy answers as PostgreSQL would for an unknown name, drops the
    // rest of the batch, and the Sync ends it.
    let mut batch = bind(&name);
    batch.extend(execute());
    batch.extend(parse("", "SELECT 1"));
    batch.extend(sync());
    raw::send(&mut s, &batch).await;
    let got = read_batch(&mut s, "bind").await;
    assert_eq!(tags(&got), "EZ", "{got:?}");
    assert_eq!(got[0].code(), "26000");
    assert!(got[0].message().contains(&name), "{}", got[0].message());
    assert_eq!(got[1].body, b"I");

    // Describe likewise; the connection works on.
    let mut batch = describe_statement(&name);
    batch.extend(sync());
    raw::send(&mut s, &batch).await;
    let got = read_batch(&mut s, "describe").await;
    assert_eq!(tags(&got), "EZ", "{got:?}");
    assert_eq!(got[0].code(), "26000");

    // Messages before the refused one are answered; the one after the
    // Sync runs.
    let mut batch = parse("mine", "SELECT 7");
    batch.extend(bind("nope"));
    batch.extend(execute());
    batch.extend(sync());
    batch.extend(bind("mine"));
    batch.extend(execute());
    batch.extend(sync());
    raw::send(&mut s, &batch).await;
    let got = read_batch(&mut s, "mixed").await;
    assert_eq!(tags(&got), "1EZ", "{got:?}");
    let got = read_batch(&mut s, "after").await;
    assert_eq!(tags(&got), "2DCZ", "{got:?}");
    assert_eq!(raw::simple_query(&mut s, "SELECT 1").await, b'I');

    // As in PostgreSQL, the error aborts the transaction it happens in,
    // and the batch's earlier work in an implicit transaction is undone.
    assert_eq!(raw::simple_query(&mut s, "BEGIN").await, b'T');
    let mut batch = bind(&name);
    batch.extend(sync());
    raw::send(&mut s, &batch).await;
    let got = read_batch(&mut s, "in a transaction").await;
    assert_eq!(tags(&got), "EZ", "{got:?}");
    assert_eq!(got[1].body, b"E", "the transaction is aborted");
    assert_eq!(raw::simple_query(&mut s, "ROLLBACK").await, b'I');
    raw::simple_query(&mut s, "CREATE TABLE IF NOT EXISTS marks (n int)").await;
    let mut batch = parse("", "INSERT INTO marks VALUES (1)");
    batch.extend(bind(""));
    batch.extend(execute());
    batch.extend(bind("nope"));
    batch.extend(sync());
    raw::send(&mut s, &batch).await;
    let got = read_batch(&mut s, "implicit").await;
    assert_eq!(tags(&got), "12CEZ", "{got:?}");
    let (rows, _) = {
        raw::send(&mut s, &raw::query("SELECT count(*) FROM marks")).await;
        raw::read_to_ready(&mut s, "count").await
    };
    let row = rows.iter().find(|m| m.tag == b'D').expect("a row");
    assert!(
        row.body.ends_with(b"0"),
        "the INSERT was rolled back: {row:?}"
    );
}

/// Runs a simple query; returns every message up to ReadyForQuery.
async fn sql(s: &mut TcpStream, q: &str) -> Vec<Msg> {
    raw::send(s, &raw::query(q)).await;
    read_batch(s, q).await
}

async fn prepare_raw(s: &mut TcpStream, name: &str, q: &str) {
    let mut b = parse(name, q);
    b.extend(sync());
    raw::send(s, &b).await;
    assert_eq!(tags(&read_batch(s, "prepare").await), "1Z");
}

/// Bind + Execute + Sync of `name`: the messages that come back.
async fn run_raw(s: &mut TcpStream, name: &str) -> Vec<Msg> {
    let mut b = bind(name);
    b.extend(execute());
    b.extend(sync());
    raw::send(s, &b).await;
    read_batch(s, "run").await
}

fn is_deallocate(got: &[Msg], status: u8) -> bool {
    tags(got) == "CZ" && got[0].body == b"DEALLOCATE\0" && got[1].body == [status]
}

#[tokio::test]
async fn sql_deallocate_of_my_own_protocol_statement_works() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme"], 2, "auth_type = \"trust\"")).await;
    let mut s = raw::login_trust(proxy.port, "acme").await;
    let other = proxy.connect("acme").await;
    let other_stmt = other.prepare("SELECT 2").await.expect("other prepare");

    // Between transactions.
    prepare_raw(&mut s, "a", "SELECT 1").await;
    assert_eq!(tags(&run_raw(&mut s, "a").await), "2DCZ");
    let got = sql(&mut s, "DEALLOCATE a").await;
    assert!(is_deallocate(&got, b'I'), "{got:?}");
    let got = run_raw(&mut s, "a").await;
    assert_eq!((tags(&got).as_str(), got[0].code()), ("EZ", "26000".into()));

    // In a transaction, on the connection that has it, with the spellings
    // drivers use.
    for (name, spelling) in [
        ("b", "DEALLOCATE b"),
        ("Mixed", "deallocate prepare \"Mixed\";"),
    ] {
        prepare_raw(&mut s, name, "SELECT 2").await;
        assert_eq!(
            sql(&mut s, "BEGIN").await.last().map(|m| m.body.clone()),
            Some(b"T".to_vec())
        );
        assert_eq!(tags(&run_raw(&mut s, name).await), "2DCZ");
        let got = sql(&mut s, spelling).await;
        assert!(is_deallocate(&got, b'T'), "{spelling}: {got:?}");
        sql(&mut s, "COMMIT").await;
        let got = run_raw(&mut s, name).await;
        assert_eq!((tags(&got).as_str(), got[0].code()), ("EZ", "26000".into()));
    }

    // First thing in a transaction (the connection may not have it).
    prepare_raw(&mut s, "c", "SELECT 3").await;
    sql(&mut s, "BEGIN").await;
    let got = sql(&mut s, "DEALLOCATE c").await;
    assert!(is_deallocate(&got, b'T'), "{got:?}");
    sql(&mut s, "COMMIT").await;

    // The shared server-side statement still serves the other client.
    let v: i32 = other
        .query_one(&other_stmt, &[])
        .await
        .expect("other")
        .get(0);
    assert_eq!(v, 2);
}

#[tokio::test]
async fn a_statement_over_the_size_limit_gets_54000_and_the_session_goes_on() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\nmax_statement_size = \"64kB\"\nmax_client_memory = \"100kB\"",
    ))
    .await;
    let mut s = raw::login_trust(proxy.port, "acme").await;
    let big = format!("SELECT '{}'", "x".repeat(70_000));
    let mut b = parse("big", &big);
    b.extend(sync());
    raw::send(&mut s, &b).await;
    let got = read_batch(&mut s, "big").await;
    assert_eq!(tags(&got), "EZ", "{got:?}");
    assert_eq!(got[0].code(), "54000");
    assert!(got[0].message().contains("max_statement_size"));

    // Under the per-statement limit, but over the client's total.
    let mid = format!("SELECT '{}'", "y".repeat(40_000));
    prepare_raw(&mut s, "m1", &mid).await;
    prepare_raw(&mut s, "m2", &mid).await;
    let mut b = parse("m3", &mid);
    b.extend(sync());
    raw::send(&mut s, &b).await;
    let got = read_batch(&mut s, "m3").await;
    assert_eq!((tags(&got).as_str(), got[0].code()), ("EZ", "54000".into()));
    assert!(got[0].message().contains("max_client_memory"));
    assert_eq!(tags(&run_raw(&mut s, "m1").await), "2DCZ");
}

/// A Flush between transactions (psycopg sends one after its last Sync)
/// must not lease a server connection that no reply would release.
#[tokio::test]
async fn a_stray_flush_between_transactions_holds_no_server_connection() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\nquery_wait_timeout = \"5s\"",
    ))
    .await;
    let mut s = raw::login_trust(proxy.port, "acme").await;
    assert_eq!(raw::simple_query(&mut s, "SELECT 1").await, b'I');
    raw::send(&mut s, &raw::frame(b'H', &[])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = proxy.connect("acme").await;
    other
        .simple_query("SELECT 1")
        .await
        .expect("the only server connection is free");
    assert_eq!(raw::simple_query(&mut s, "SELECT 2").await, b'I');
}
