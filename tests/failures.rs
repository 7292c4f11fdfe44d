//! Failures around the proxy: clients that vanish mid-transaction, a
//! backend that restarts, placements that cannot be reached, connection
//! limits, and graceful shutdown.

mod common;

use common::raw;
use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

const TENANTS: [&str; 2] = ["acme", "globex"];

/// Connects like `TestProxy::connect`, but hands back the connection
/// task so a test can abort it or look at how it ended.
async fn connect_keep_conn(
    proxy: &TestProxy,
    tenant: &str,
) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
    let (client, conn) = tokio_postgres::connect(
        &proxy.conn_str(
            &format!("app.{tenant}"),
            &format!("{tenant}-secret"),
            tenant,
        ),
        NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect as {tenant}: {e}"));
    (client, tokio::spawn(conn))
}

/// The server-side message of an error ("" if there is none).
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

async fn count(c: &Client, body_like: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM notes WHERE body LIKE $1",
        &[&body_like],
    )
    .await
    .expect("count")
    .get(0)
}

/// Stops or starts the cluster off the async runtime.
async fn stop_pg(pg: TestPg) -> TestPg {
    tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.cluster.stop().expect("stop PostgreSQL");
        pg
    })
    .await
    .expect("join")
}

async fn start_pg(pg: TestPg) -> TestPg {
    tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.cluster.start_again().expect("start PostgreSQL");
        pg
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn a_client_vanishing_mid_transaction_leaves_nothing_behind() {
    let pg = TestPg::start(HostAuth::Trust, &TENANTS).await;
    // One server connection: whatever A leaves behind, B gets.
    let proxy = TestProxy::start(&pg.config(
        &TENANTS,
        1,
        "auth_type = \"trust\"\nquery_wait_timeout = \"5s\"",
    ))
    .await;
    let b = proxy.connect("acme").await;
    const DIRTY: &str = "BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('acme', 'vanished'); \
         SET LOCAL statement_timeout = '1ms'";

    for how in [
        "EOF (FIN) without Terminate",
        "connection reset (RST)",
        "Terminate inside the transaction",
        "EOF while a query runs",
        "tokio-postgres client dropped and its connection task aborted",
    ] {
        let started = Instant::now();
        if how.starts_with("tokio-postgres") {
            let (a, conn) = connect_keep_conn(&proxy, "acme").await;
            a.batch_execute(
                "BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('acme', 'vanished')",
            )
            .await
            .expect("A's transaction");
            drop(a);
            conn.abort();
            let _ = conn.await;
        } else {
            let mut a = raw::login_trust(proxy.port, "acme").await;
            assert_eq!(raw::simple_query(&mut a, DIRTY).await, b'T', "{how}");
            match how {
                "EOF (FIN) without Terminate" => drop(a),
                "connection reset (RST)" => {
                    socket2::SockRef::from(&a)
                        .set_linger(Some(Duration::ZERO))
                        .expect("linger");
                    drop(a);
                }
                "Terminate inside the transaction" => {
                    raw::send(&mut a, &raw::frame(b'X', b"")).await;
                    a.shutdown().await.expect("shutdown");
                    let got = raw::read_until_closed(&mut a, Duration::from_secs(5)).await;
                    assert!(got.is_empty(), "{how}: {got:?}");
                }
                "EOF while a query runs" => {
                    raw::send(
                        &mut a,
                        &raw::query("SET LOCAL statement_timeout = 0; SELECT pg_sleep(2)"),
                    )
                    .await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    drop(a);
                }
                _ => unreachable!(),
            }
        }

        // B gets the one server connection (rolled back, or replaced by a
        // fresh one), does not see A's row, and its own work commits.
        assert_eq!(count(&b, "vanished").await, 0, "{how}: A's row is visible");
        let timeout: String = b
            .query_one("SHOW statement_timeout", &[])
            .await
            .expect("show")
            .get(0);
        assert_eq!(timeout, "0", "{how}: A's SET LOCAL leaked");
        b.batch_execute(
            "BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('acme', 'from b'); COMMIT",
        )
        .await
        .unwrap_or_else(|e| panic!("{how}: B's transaction: {e}"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{how}: B waited {:?}",
            started.elapsed()
        );
    }
    assert_eq!(count(&b, "from b").await, 5);
    assert_eq!(count(&b, "vanished").await, 0);
    // The other tenant was never affected.
    let g = proxy.connect("globex").await;
    assert_eq!(count(&g, "%").await, 2);
}

#[tokio::test]
async fn backend_restart_is_survived_without_restarting_the_proxy() {
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let mut config = pg.config(
        &TENANTS,
        2,
        "query_wait_timeout = \"5s\"\nserver_connect_timeout = \"2s\"",
    );
    let proxy = TestProxy::start(&config).await;
    config = config.replace("[proxy]\n", "[proxy]\npool_mode = \"session\"\n");
    let session_proxy = TestProxy::start(&config).await;

    let idle_acme = proxy.connect("acme").await;
    let globex = proxy.connect("globex").await;
    let session_acme = session_proxy.connect("acme").await;
    for c in [&idle_acme, &globex, &session_acme] {
        c.batch_execute("SELECT 1; BEGIN; SELECT 2; COMMIT")
            .await
            .expect("before the restart");
    }
    // Both pool slots of acme's placement hold a live server connection.
    let extra = proxy.connect("acme").await;
    let t1 = tokio::spawn(async move {
        extra.simple_query("SELECT pg_sleep(0.2)").await.expect("q");
        extra
    });
    idle_acme
        .simple_query("SELECT pg_sleep(0.2)")
        .await
        .expect("q");
    let extra = t1.await.expect("join");

    let pg = stop_pg(pg).await;

    // While the server is down: a query fails with 08006 naming the
    // tenant (the client is told, not left hanging).
    let err = globex
        .simple_query("SELECT 1")
        .await
        .expect_err("server is down");
    assert_eq!(sqlstate(&err), "08006", "{err}");
    assert!(message(&err).contains("\"globex\""), "{err:?}");
    // And a new client either cannot log in or fails its first query,
    // with 08006 either way.
    match proxy
        .try_connect(&proxy.conn_str("app.acme", "acme-secret", "acme"))
        .await
    {
        Err(e) => assert_eq!(sqlstate(&e), "08006", "{e}"),
        Ok(c) => {
            let e = c
                .simple_query("SELECT 1")
                .await
                .expect_err("server is down");
            assert_eq!(sqlstate(&e), "08006", "{e}");
        }
    }

    let pg = start_pg(pg).await;

    // Transaction mode: a client that held no server connection across
    // the restart does not notice it; the dead idle connections are
    // detected and replaced.
    for (name, c) in [("idle acme", &idle_acme), ("extra acme", &extra)] {
        c.batch_execute(
            "BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('acme', 'after restart'); COMMIT",
        )
        .await
        .unwrap_or_else(|e| panic!("{name} after the restart: {e}"));
    }
    // New connections and transactions work, for both tenants.
    for t in TENANTS {
        let c = proxy.connect(t).await;
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('{t}', 'after restart'); COMMIT"
        ))
        .await
        .unwrap_or_else(|e| panic!("new {t} client after the restart: {e}"));
    }
    assert_eq!(count(&idle_acme, "after restart").await, 3);
    // The globex client that was refused while the server was down was
    // closed; a reconnect works.
    assert!(globex.is_closed() || globex.simple_query("SELECT 1").await.is_err());
    let globex = proxy.connect("globex").await;
    assert_eq!(count(&globex, "after restart").await, 1);

    // Session mode: the client's own server connection died with the
    // server. Its next query fails (the server's 57P01 and/or the proxy's
    // 08006, then the connection is closed); a reconnect works.
    let err = session_acme
        .simple_query("SELECT 1")
        .await
        .expect_err("the session's server connection is gone");
    let code = sqlstate(&err);
    assert!(
        code == "57P01" || code == "08006" || err.is_closed(),
        "session client after restart: {err}"
    );
    let session_acme = session_proxy.connect("acme").await;
    assert_eq!(count(&session_acme, "after restart").await, 3);
    drop(pg);
}

#[tokio::test]
async fn unreachable_placements_give_08006_naming_the_tenant() {
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let closed_port = pgtenant::pgcluster::free_port().expect("port");
    // A port that accepts TCP and then never says a word.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let blackhole_port = blackhole.local_addr().expect("addr").port();
    let mut config = pg.config(&TENANTS, 2, "server_connect_timeout = \"1s\"");
    for (name, port) in [("ghost", closed_port), ("void", blackhole_port)] {
        config.push_str(&format!(
            "[placements.{name}_db]\nurl = \"postgres://pgtenant:x@127.0.0.1:{port}/db\"\n\
             isolation = \"database\"\npool_size = 2\n\n\
             [tenants.{name}]\nplacement = \"{name}_db\"\nusers = {{ app = \"{name}-secret\" }}\n\n"
        ));
    }
    let proxy = TestProxy::start(&config).await;
    let acme = proxy.connect("acme").await;

    for tenant in ["ghost", "void", "ghost"] {
        let started = Instant::now();
        let err = proxy
            .try_connect(&proxy.conn_str(
                &format!("app.{tenant}"),
                &format!("{tenant}-secret"),
                tenant,
            ))
            .await
            .err()
            .unwrap_or_else(|| panic!("{tenant}: connecting must fail"));
        assert_eq!(sqlstate(&err), "08006", "{tenant}: {err}");
        let msg = err.as_db_error().expect("db error").message().to_string();
        assert!(msg.contains(&format!("\"{tenant}\"")), "{tenant}: {msg}");
        assert!(
            !msg.contains(&closed_port.to_string()) && !msg.contains("127.0.0.1"),
            "{tenant}: the message leaks the backend address: {msg}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{tenant}: took {:?}",
            started.elapsed()
        );
        // Other tenants are unaffected.
        let one: i32 = acme.query_one("SELECT 1", &[]).await.expect("q").get(0);
        assert_eq!(one, 1);
        proxy.connect("globex").await;
    }
    drop(blackhole);
}

#[tokio::test]
async fn connection_limits_give_53300() {
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let config = pg.config(&TENANTS, 2, "").replace(
        "[tenants.acme]\n",
        "[tenants.acme]\nmax_client_connections = 2\n",
    );
    let proxy = TestProxy::start(&config).await;

    let a1 = proxy.connect("acme").await;
    let a2 = proxy.connect("acme").await;
    for _ in 0..3 {
        let err = refused(&proxy, "acme", "a third acme connection").await;
        assert_eq!(sqlstate(&err), "53300", "{err}");
        assert!(message(&err).contains("\"acme\""), "{err:?}");
    }
    // Another tenant is not limited by acme's limit.
    let g: Vec<Client> = connect_many(&proxy, "globex", 3).await;
    // The two acme clients work; when one leaves, exactly one more fits.
    a1.simple_query("SELECT 1").await.expect("a1");
    a2.simple_query("SELECT 1").await.expect("a2");
    drop(a1);
    let a3 = retry_connect(&proxy, "acme").await;
    a3.simple_query("SELECT 1").await.expect("a3");
    let err = refused(&proxy, "acme", "still at the limit").await;
    assert_eq!(sqlstate(&err), "53300", "{err}");
    drop(g);

    // Proxy-wide limit.
    let config = pg.config(&TENANTS, 2, "max_client_connections = 3");
    let small = TestProxy::start(&config).await;
    let _c1 = small.connect("acme").await;
    let _c2 = small.connect("globex").await;
    let c3 = small.connect("acme").await;
    for t in TENANTS {
        let err = refused(&small, t, "a fourth connection").await;
        assert_eq!(sqlstate(&err), "53300", "{err}");
    }
    drop(c3);
    let c4 = retry_connect(&small, "globex").await;
    c4.simple_query("SELECT 1").await.expect("c4");
}

/// Opens `n` connections for `tenant`.
async fn connect_many(proxy: &TestProxy, tenant: &str, n: usize) -> Vec<Client> {
    let mut v = Vec::new();
    for _ in 0..n {
        let c = proxy.connect(tenant).await;
        c.simple_query("SELECT 1").await.expect("q");
        v.push(c);
    }
    v
}

/// Connects as `tenant` and expects to be refused.
async fn refused(proxy: &TestProxy, tenant: &str, what: &str) -> tokio_postgres::Error {
    match proxy
        .try_connect(&proxy.conn_str(
            &format!("app.{tenant}"),
            &format!("{tenant}-secret"),
            tenant,
        ))
        .await
    {
        Ok(_) => panic!("{what}: connecting as {tenant} must be refused"),
        Err(e) => e,
    }
}

/// A slot frees when the proxy notices a client left; retry briefly.
async fn retry_connect(proxy: &TestProxy, tenant: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match proxy
            .try_connect(&proxy.conn_str(
                &format!("app.{tenant}"),
                &format!("{tenant}-secret"),
                tenant,
            ))
            .await
        {
            Ok(c) => return c,
            Err(e) if sqlstate(&e) == "53300" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{tenant}: {e}"),
        }
    }
}

#[tokio::test]
async fn graceful_shutdown_lets_transactions_finish() {
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let proxy = TestProxy::start(&pg.config(&TENANTS, 2, "shutdown_timeout = \"10s\"")).await;
    let (busy, _busy_conn) = connect_keep_conn(&proxy, "acme").await;
    let (idle, idle_conn) = connect_keep_conn(&proxy, "globex").await;
    idle.simple_query("SELECT 1").await.expect("idle warm-up");
    busy.batch_execute(
        "BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('acme', 'during shutdown')",
    )
    .await
    .expect("begin");

    let started = Instant::now();
    proxy.shutdown.cancel();

    // The idle client is told (FATAL 57P01) and closed.
    let ended = tokio::time::timeout(Duration::from_secs(5), idle_conn)
        .await
        .expect("the idle client is closed promptly")
        .expect("join");
    let e = ended.expect_err("the idle client gets an error, not a silent close");
    assert_eq!(sqlstate(&e), "57P01", "{e}");
    assert!(idle.simple_query("SELECT 1").await.is_err());

    // New connections are refused (connection refused, or 57P03 if one
    // raced the listener's close), not left hanging, while the busy
    // client is still in its transaction.
    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        proxy.try_connect(&proxy.conn_str("app.acme", "acme-secret", "acme")),
    )
    .await
    .expect("a new connection hangs during shutdown instead of being refused");
    match attempt {
        Ok(_) => panic!("a new connection logged in during shutdown"),
        Err(e) if e.as_db_error().is_some() => assert_eq!(sqlstate(&e), "57P03", "{e}"),
        Err(_) => {} // refused by the kernel
    }

    // The transaction finishes.
    busy.batch_execute(
        "INSERT INTO notes (tenant_id, body) VALUES ('acme', 'during shutdown'); COMMIT",
    )
    .await
    .expect("the running transaction may finish");
    let admin = pg.cluster.admin("tenant_acme").await.expect("admin");
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM notes WHERE body = 'during shutdown'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2);

    // And the proxy is done soon after, not at shutdown_timeout.
    proxy.stop().await.expect("the proxy stops cleanly");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopping took {:?}",
        started.elapsed()
    );
    assert!(busy.simple_query("SELECT 1").await.is_err());
}

/// A connection the proxy accepted before shutdown began but that had not
/// logged in yet: finishing the login afterwards must be refused (as
/// PostgreSQL does with 57P03 "the database system is shutting down"; 57P01
/// is fine too), not completed up to ReadyForQuery and then cut off. This
/// is also what a connection racing the listener's close runs into.
#[tokio::test]
async fn a_login_finishing_after_shutdown_began_is_refused() {
    let pg = TestPg::start(HostAuth::Trust, &TENANTS).await;
    let proxy = TestProxy::start(&pg.config(&TENANTS, 2, "auth_type = \"trust\"")).await;
    // Accepted (the workers are idle), but no startup packet yet.
    let mut late = raw::connect(proxy.port).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    proxy.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The client does not know yet and sends its startup packet; the
    // proxy may already have refused it (and the write may then fail).
    let _ = late
        .write_all(&raw::startup(
            3,
            0,
            &[("user", "app.acme"), ("database", "acme")],
        ))
        .await;
    let got = raw::read_until_closed(&mut late, Duration::from_secs(10)).await;
    assert!(
        !got.iter().any(|m| m.tag == b'Z'),
        "a login completed after shutdown began: {:?}",
        got.iter().map(|m| m.tag as char).collect::<String>()
    );
    // If the refusal arrived before the startup packet was written, the
    // kernel may have answered that write with a reset that discards the
    // refusal; anything that did arrive is one 57P03/57P01 error.
    assert!(got.len() <= 1, "{got:?}");
    if let Some(e) = got.first() {
        assert!(
            e.tag == b'E' && ["57P01", "57P03"].contains(&e.code().as_str()),
            "{:?}",
            e.fields()
        );
    }
    proxy.stop().await.expect("the proxy stops cleanly");
}

/// A client that connected and never sent a startup packet has no
/// transaction to finish: it must not hold shutdown up until
/// `shutdown_timeout`.
#[tokio::test]
async fn a_silent_unauthenticated_client_does_not_delay_shutdown() {
    let pg = TestPg::start(HostAuth::Trust, &TENANTS).await;
    let proxy = TestProxy::start(&pg.config(
        &TENANTS,
        2,
        "auth_type = \"trust\"\nshutdown_timeout = \"8s\"",
    ))
    .await;
    let acme = proxy.connect("acme").await;
    acme.simple_query("SELECT 1").await.expect("warm-up");
    let mut silent = raw::connect(proxy.port).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    proxy.stop().await.expect("the proxy stops cleanly");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a silent, unauthenticated client held shutdown up for {:?}",
        started.elapsed()
    );
    // It is told why, as an idle logged-in client is.
    let got = raw::read_until_closed(&mut silent, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].tag == b'E' && ["57P01", "57P03"].contains(&got[0].code().as_str()),
        "{:?}",
        got[0].fields()
    );
    drop(acme);
}

/// A tenant's connection limit counts authenticated clients only: stalled
/// handshakes by someone who knows the tenant's name (but not a password)
/// cannot lock the tenant's real clients out.
#[tokio::test]
async fn stalled_handshakes_do_not_take_a_tenants_slots() {
    let pg = TestPg::start(HostAuth::ScramSha256, &TENANTS).await;
    let config = pg.config(&TENANTS, 2, "").replace(
        "[tenants.acme]\n",
        "[tenants.acme]\nmax_client_connections = 2\n",
    );
    let proxy = TestProxy::start(&config).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = raw::connect(proxy.port).await;
        raw::send(
            &mut s,
            &raw::startup(3, 0, &[("user", "app.acme"), ("database", "acme")]),
        )
        .await;
        // The proxy asks for SCRAM; the attacker never answers.
        let m = raw::expect_msg(&mut s, "authentication request").await;
        assert_eq!(m.tag, b'R');
        stalled.push(s);
    }
    let a1 = proxy.connect("acme").await;
    let a2 = proxy.connect("acme").await;
    a1.simple_query("SELECT 1").await.expect("a1");
    a2.simple_query("SELECT 1").await.expect("a2");
    let err = refused(&proxy, "acme", "a third authenticated acme client").await;
    assert_eq!(sqlstate(&err), "53300", "{err}");
    drop(stalled);
}
