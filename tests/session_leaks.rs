//! Session state never leaves a lease unnoticed. Each test smuggles state
//! (a temporary table, LISTEN, a session advisory lock, a role change)
//! past the proxy's keyword scan by one route (a Query followed by
//! Terminate in the same packet, a FunctionCall, a text longer than the
//! scanned prefix, a DO block that builds its SQL from pieces), and then
//! another client of the same one-connection pool checks that it sees none
//! of it. Also: the proxy's own control queries cannot be faked or failed
//! by the client's session (operators on its search_path, a 1 ms
//! statement_timeout).

mod common;

use common::{TestPg, TestProxy, backend_user, raw, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

/// State kinds, each with the SQL that creates it directly and the
/// function (created by the fixture, hidden behind EXECUTE of pieces)
/// that creates it by FunctionCall.
const KINDS: [(&str, &str); 4] = [
    ("advisory lock", "SELECT pg_advisory_lock(1)"),
    ("temporary table", "CREATE TEMP TABLE leak (x int)"),
    ("LISTEN", "LISTEN leak"),
    ("role", "SET ROLE other"),
];

/// The same SQL with its keywords built at run time, for EXECUTE.
fn hidden(kind: &str) -> &'static str {
    match kind {
        "advisory lock" => "'SELECT pg_advis' || 'ory_lock(1)'",
        "temporary table" => "'CREATE TE' || 'MP TABLE leak (x int)'",
        "LISTEN" => "'LIS' || 'TEN leak'",
        _ => "'SET ' || 'ROLE other'",
    }
}

struct Fixture {
    _pg: TestPg,
    proxy: TestProxy,
    /// FunctionCall OIDs per kind.
    oids: Vec<(String, u32)>,
}

async fn fixture() -> Fixture {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let admin = pg.cluster.admin("tenant_acme").await.expect("admin");
    let mut setup = format!(
        "CREATE ROLE other NOLOGIN; GRANT other TO {};",
        backend_user("acme")
    );
    for (i, (kind, _)) in KINDS.iter().enumerate() {
        setup.push_str(&format!(
            "CREATE FUNCTION public.leak_{i}() RETURNS void LANGUAGE plpgsql AS \
             $f$BEGIN EXECUTE {}; END$f$;",
            hidden(kind)
        ));
    }
    admin.batch_execute(&setup).await.expect("setup");
    let mut oids = Vec::new();
    for (i, (kind, _)) in KINDS.iter().enumerate() {
        let row = admin
            .query_one(
                &format!("SELECT 'public.leak_{i}()'::regprocedure::oid"),
                &[],
            )
            .await
            .expect("oid");
        let oid: u32 = row.get(0);
        oids.push((kind.to_string(), oid));
    }
    // One server connection: every client gets the one the attacker used.
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\nquery_wait_timeout = \"20s\"",
    ))
    .await;
    Fixture {
        _pg: pg,
        proxy,
        oids,
    }
}

/// What a fresh client finds on its server connection; empty when clean.
async fn leftovers(proxy: &TestProxy) -> Vec<String> {
    let c = proxy.connect("acme").await;
    let rows = c
        .simple_query(
            // Qualified: the check must not be fooled by what it checks for.
            "SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_listening_channels())::pg_catalog.text, \
             (SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks \
              WHERE locktype OPERATOR(pg_catalog.=) 'advisory' \
              AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())::pg_catalog.text, \
             (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class \
              WHERE relpersistence OPERATOR(pg_catalog.=) 't' \
              AND relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())::pg_catalog.text, \
             current_user::pg_catalog.text, pg_catalog.current_setting('search_path')",
        )
        .await
        .expect("check");
    let row = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    let mut found = Vec::new();
    for (i, kind) in ["LISTEN", "advisory lock", "temporary table"]
        .iter()
        .enumerate()
    {
        if row.get(i) != Some("0") {
            found.push(kind.to_string());
        }
    }
    if row.get(3) != Some(backend_user("acme").as_str()) {
        found.push(format!("role {:?}", row.get(3)));
    }
    if row.get(4) != Some("\"$user\", public") {
        found.push(format!("search_path {:?}", row.get(4)));
    }
    found
}

/// A FunctionCall of `oid` with no arguments, text result.
fn function_call(oid: u32) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&0i16.to_be_bytes()); // argument format codes
    body.extend_from_slice(&0i16.to_be_bytes()); // arguments
    body.extend_from_slice(&0i16.to_be_bytes()); // result format
    raw::frame(b'F', &body)
}

async fn leave(mut s: tokio::net::TcpStream) {
    raw::send(&mut s, &raw::frame(b'X', b"")).await;
    let _ = raw::read_until_closed(&mut s, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn query_then_terminate_in_one_packet() {
    let f = fixture().await;
    for (kind, sql) in KINDS {
        let mut a = raw::login_trust(f.proxy.port, "acme").await;
        // The client leaves before the reply: no probe can run at its end.
        let mut packet = raw::query(sql);
        packet.extend_from_slice(&raw::frame(b'X', b""));
        raw::send(&mut a, &packet).await;
        let _ = raw::read_until_closed(&mut a, Duration::from_secs(10)).await;
        assert_eq!(leftovers(&f.proxy).await, Vec::<String>::new(), "{kind}");
    }
}

#[tokio::test]
async fn function_call_messages() {
    let f = fixture().await;
    for (kind, oid) in &f.oids {
        let mut a = raw::login_trust(f.proxy.port, "acme").await;
        raw::send(&mut a, &function_call(*oid)).await;
        raw::read_to_ready(&mut a, kind).await;
        leave(a).await;
        assert_eq!(leftovers(&f.proxy).await, Vec::<String>::new(), "{kind}");
    }
}

#[tokio::test]
async fn text_past_the_scanned_prefix() {
    let f = fixture().await;
    let padding = format!("/* {} */ ", "x".repeat(70 * 1024));
    for (kind, sql) in KINDS {
        let mut a = raw::login_trust(f.proxy.port, "acme").await;
        raw::simple_query(&mut a, &format!("{padding}{sql}")).await;
        leave(a).await;
        assert_eq!(leftovers(&f.proxy).await, Vec::<String>::new(), "{kind}");
    }
}

#[tokio::test]
async fn do_blocks_that_build_their_sql() {
    let f = fixture().await;
    for (kind, _) in KINDS {
        let mut a = raw::login_trust(f.proxy.port, "acme").await;
        let sql = format!("DO $$BEGIN EXECUTE {}; END$$", hidden(kind));
        raw::simple_query(&mut a, &sql).await;
        leave(a).await;
        assert_eq!(leftovers(&f.proxy).await, Vec::<String>::new(), "{kind}");
    }
}

/// The attacker stays connected: a connection it changed in a way the
/// proxy cannot see into goes to the next client reset, and a role the
/// client set follows the client, never the connection.
#[tokio::test]
async fn role_follows_the_client_and_never_the_connection() {
    let f = fixture().await;
    let a = f.proxy.connect("acme").await;
    a.batch_execute("SET ROLE other").await.expect("set role");
    assert_eq!(leftovers(&f.proxy).await, Vec::<String>::new(), "direct");
    let who = a
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(who.get::<_, String>(0), "other", "the role follows a");
    a.batch_execute(&format!("DO $$BEGIN EXECUTE {}; END$$", hidden("role")))
        .await
        .expect("do");
    assert_eq!(leftovers(&f.proxy).await, Vec::<String>::new(), "DO");
    a.batch_execute("RESET ROLE").await.expect("reset role");
    let who = a
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(who.get::<_, String>(0), backend_user("acme"));
}

/// Operators on the client's search_path cannot fake the probe's answer:
/// an `=` on text that is never true would hide the advisory lock.
#[tokio::test]
async fn control_queries_ignore_the_clients_operators() {
    let f = fixture().await;
    let admin = f._pg.cluster.admin("tenant_acme").await.expect("admin");
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA evil AUTHORIZATION {};",
            backend_user("acme")
        ))
        .await
        .expect("schema");
    let a = f.proxy.connect("acme").await;
    a.batch_execute(
        "CREATE FUNCTION evil.never(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT false';
         CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.never);",
    )
    .await
    .expect("create evil");
    a.batch_execute("SET search_path = evil, pg_catalog, public; SELECT pg_advisory_lock(1)")
        .await
        .expect("lock");
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(leftovers(&f.proxy).await, Vec::<String>::new());
}

/// A client's tiny statement_timeout cannot make the settings read-back
/// fail: the setting stays the client's across transactions and never
/// reaches another client.
#[tokio::test]
async fn a_tiny_statement_timeout_is_kept_not_lost() {
    let f = fixture().await;
    let a = f.proxy.connect("acme").await;
    let b = f.proxy.connect("acme").await;
    // 1 ms is a real limit: on a loaded machine PostgreSQL may cancel
    // the SHOW or the RESET themselves (57014). That is the setting
    // working, not leaking: such a statement is sent again.
    async fn with_1ms(
        a: &tokio_postgres::Client,
        sql: &str,
    ) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        let mut tries = 0;
        loop {
            match a.simple_query(sql).await {
                Err(e) if sqlstate(&e) == "57014" && tries < 20 => tries += 1,
                other => return other,
            }
        }
    }
    for round in 0..5 {
        a.batch_execute("SET statement_timeout = '1ms'")
            .await
            .expect("set");
        let got = with_1ms(&a, "SHOW statement_timeout").await.expect("show");
        let value = got.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("1ms"), "round {round}");
        b.batch_execute("SELECT pg_sleep(0.01)")
            .await
            .expect("b is not limited by a's timeout");
        with_1ms(&a, "RESET statement_timeout")
            .await
            .expect("reset");
    }
}
