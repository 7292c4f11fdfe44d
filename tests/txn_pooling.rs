//! Pooling through the real proxy and a real PostgreSQL: many clients over
//! few server connections in transaction and session mode, a transaction
//! never shared, failed transactions cleaned up, session state reset.
//!
//! Only simple-query and unnamed extended-protocol statements are used
//! (`simple_query`, `batch_execute`, `query_typed`): tokio-postgres's
//! `query`/`prepare` create named statements, which transaction pooling
//! does not carry across server connections.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

const TENANT: &str = "x";
const DB: &str = "tenant_x";

/// First column of the first row of a simple query, as text ("" for NULL).
async fn scalar(client: &Client, sql: &str) -> String {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn backend_pid(client: &Client) -> i32 {
    scalar(client, "SELECT pg_backend_pid()")
        .await
        .parse()
        .expect("pid")
}

/// Creates the `items` table the load tests write to.
async fn create_items(pg: &TestPg) {
    let admin = pg.cluster.admin(DB).await.expect("admin");
    admin
        .batch_execute(
            "SET ROLE pgt_x;
             CREATE TABLE items (client_id int NOT NULL, n int NOT NULL, body text NOT NULL)",
        )
        .await
        .expect("create items");
}

/// Watches pg_stat_activity for the proxy's backend connections and keeps
/// the largest count seen until stopped.
struct BackendWatch {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl BackendWatch {
    async fn start(pg: &TestPg) -> BackendWatch {
        let admin = pg.cluster.admin(DB).await.expect("admin");
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicI64::new(0));
        let (s, m) = (Arc::clone(&stop), Arc::clone(&max));
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let n = proxy_backends(&admin).await;
                m.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        BackendWatch { stop, max, task }
    }

    async fn finish(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("watch task");
        self.max.load(Ordering::Relaxed)
    }
}

async fn proxy_backends(admin: &Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'tenant_x' AND usename = 'pgt_x'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// One transaction-mode client's work; returns the backend pids it saw.
async fn txn_client(client: Client, id: i32, rounds: i32) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    for round in 0..rounds {
        // A transaction over several round trips stays on one server.
        client.batch_execute("BEGIN").await.expect("begin");
        let pid = backend_pid(&client).await;
        client
            .batch_execute(&format!(
                "INSERT INTO items VALUES ({id}, {round}, 'client {id} round {round}')"
            ))
            .await
            .expect("insert");
        let seen = scalar(
            &client,
            &format!("SELECT count(*) FROM items WHERE client_id = {id}"),
        )
        .await;
        assert_eq!(seen, (round + 1).to_string(), "client {id} inside its txn");
        assert_eq!(
            backend_pid(&client).await,
            pid,
            "client {id}: the transaction moved to another server connection"
        );
        client.batch_execute("COMMIT").await.expect("commit");
        pids.insert(pid);

        // A rolled-back transaction leaves nothing behind.
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO items VALUES ({id}, -1, 'rolled back')"
            ))
            .await
            .expect("begin+insert");
        client.batch_execute("ROLLBACK").await.expect("rollback");

        // Autocommit, extended protocol with an unnamed statement.
        let row = client
            .query_typed_one(
                "SELECT count(*)::int, coalesce(sum(n), 0)::int, pg_backend_pid() \
                 FROM items WHERE client_id = $1",
                &[(&id, Type::INT4)],
            )
            .await
            .expect("count");
        assert_eq!(
            row.get::<_, i32>(0),
            round + 1,
            "client {id} committed rows"
        );
        assert_eq!(
            row.get::<_, i32>(1),
            (0..=round).sum::<i32>(),
            "client {id} committed values"
        );
        pids.insert(row.get(2));
        // Plain autocommit simple query.
        assert_eq!(
            scalar(&client, &format!("SELECT {id} * 2")).await,
            (id * 2).to_string()
        );
    }
    pids
}

#[tokio::test]
async fn transaction_mode_100_clients_share_4_servers() {
    const CLIENTS: i32 = 100;
    const ROUNDS: i32 = 3;
    const POOL: i64 = 4;
    let pg = TestPg::start(HostAuth::ScramSha256, &[TENANT]).await;
    create_items(&pg).await;
    let proxy = TestProxy::start(&pg.config(
        &[TENANT],
        POOL as u32,
        "pool_mode = \"transaction\"\nquery_wait_timeout = \"30s\"\nauth_type = \"trust\"",
    ))
    .await;
    let watch = BackendWatch::start(&pg).await;
    let started = Instant::now();

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(proxy.connect(TENANT).await);
    }
    eprintln!(
        "transaction mode: {CLIENTS} clients connected in {:?}",
        started.elapsed()
    );
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(0..)
        .map(|(c, id)| tokio::spawn(txn_client(c, id, ROUNDS)))
        .collect();
    let mut pids = BTreeSet::new();
    let mut failures = Vec::new();
    for (id, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(p) => pids.extend(p),
            Err(e) => failures.push(format!("client {id}: {e}")),
        }
    }
    let max_backends = watch.finish().await;
    eprintln!(
        "transaction mode: {CLIENTS} clients x {ROUNDS} rounds in {:?}; {} server pids; max {max_backends} backends",
        started.elapsed(),
        pids.len()
    );
    assert!(failures.is_empty(), "failed clients: {failures:#?}");

    let admin = pg.cluster.admin(DB).await.expect("admin");
    let row = admin
        .query_one(
            "SELECT count(*), count(DISTINCT client_id), count(*) FILTER (WHERE n < 0) FROM items",
            &[],
        )
        .await
        .expect("totals");
    assert_eq!(row.get::<_, i64>(0), i64::from(CLIENTS * ROUNDS));
    assert_eq!(row.get::<_, i64>(1), i64::from(CLIENTS));
    assert_eq!(row.get::<_, i64>(2), 0, "rolled-back rows are gone");

    assert!(
        pids.len() as i64 <= POOL,
        "clients ran on {} distinct server connections: {pids:?}",
        pids.len()
    );
    assert!(
        (1..=POOL).contains(&max_backends),
        "the proxy had {max_backends} backend connections at once (pool_size {POOL})"
    );
    assert!(proxy_backends(&admin).await <= POOL);
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn session_mode_100_clients_take_turns_on_4_servers() {
    const CLIENTS: i32 = 100;
    const ROUNDS: i32 = 3;
    const POOL: i64 = 4;
    let pg = TestPg::start(HostAuth::ScramSha256, &[TENANT]).await;
    create_items(&pg).await;
    let proxy = Arc::new(
        TestProxy::start(&pg.config(
            &[TENANT],
            POOL as u32,
            "pool_mode = \"session\"\nquery_wait_timeout = \"45s\"\nauth_type = \"trust\"",
        ))
        .await,
    );
    let watch = BackendWatch::start(&pg).await;
    let started = Instant::now();

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move {
                let client = proxy.connect(TENANT).await;
                // A fresh session: nothing from the previous client.
                assert_eq!(scalar(&client, "SHOW application_name").await, "");
                assert_eq!(scalar(&client, "SHOW work_mem").await, "4MB");
                let pid = backend_pid(&client).await;
                client
                    .batch_execute(&format!(
                        "SET application_name = 'client_{id}'; SET work_mem = '{}kB'",
                        100 + id
                    ))
                    .await
                    .expect("set");
                for round in 0..ROUNDS {
                    client.batch_execute("BEGIN").await.expect("begin");
                    client
                        .batch_execute(&format!(
                            "INSERT INTO items VALUES ({id}, {round}, 'session {id}')"
                        ))
                        .await
                        .expect("insert");
                    client.batch_execute("COMMIT").await.expect("commit");
                    let n: i32 = client
                        .query_typed_one(
                            "SELECT count(*)::int FROM items WHERE client_id = $1",
                            &[(&id, Type::INT4)],
                        )
                        .await
                        .expect("count")
                        .get(0);
                    assert_eq!(n, round + 1, "session client {id}");
                }
                // The session kept its server and its settings throughout.
                assert_eq!(backend_pid(&client).await, pid);
                assert_eq!(
                    scalar(&client, "SHOW application_name").await,
                    format!("client_{id}")
                );
                assert_eq!(
                    scalar(&client, "SHOW work_mem").await,
                    format!("{}kB", 100 + id)
                );
                drop(client); // disconnect: the server goes to the next client
                pid
            })
        })
        .collect();
    let mut pids = BTreeSet::new();
    let mut failures = Vec::new();
    for (id, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(p) => {
                pids.insert(p);
            }
            Err(e) => failures.push(format!("client {id}: {e}")),
        }
    }
    let max_backends = watch.finish().await;
    eprintln!(
        "session mode: {CLIENTS} clients in {:?}; {} server pids; max {max_backends} backends",
        started.elapsed(),
        pids.len()
    );
    assert!(failures.is_empty(), "failed clients: {failures:#?}");

    let admin = pg.cluster.admin(DB).await.expect("admin");
    let row = admin
        .query_one("SELECT count(*), count(DISTINCT client_id) FROM items", &[])
        .await
        .expect("totals");
    assert_eq!(row.get::<_, i64>(0), i64::from(CLIENTS * ROUNDS));
    assert_eq!(row.get::<_, i64>(1), i64::from(CLIENTS));
    assert!(
        pids.len() as i64 <= POOL,
        "sessions ran on {} distinct server connections: {pids:?}",
        pids.len()
    );
    assert!(
        (1..=POOL).contains(&max_backends),
        "the proxy had {max_backends} backend connections at once (pool_size {POOL})"
    );
    Arc::try_unwrap(proxy)
        .ok()
        .expect("all clients done")
        .stop()
        .await
        .expect("clean stop");
}

#[tokio::test]
async fn an_open_transaction_is_never_handed_to_another_client() {
    let pg = TestPg::start(HostAuth::ScramSha256, &[TENANT]).await;
    let proxy = TestProxy::start(&pg.config(
        &[TENANT],
        1,
        "pool_mode = \"transaction\"\nquery_wait_timeout = \"1s\"",
    ))
    .await;

    // A opens a transaction with state that exists only inside it.
    let a = proxy.connect(TENANT).await;
    a.batch_execute(
        "BEGIN;
         SET LOCAL work_mem = '7MB';
         SELECT set_config('app.marker', 'owned by A', true);
         CREATE TEMP TABLE a_scratch (v int) ON COMMIT DROP;
         INSERT INTO a_scratch VALUES (42);
         INSERT INTO notes (tenant_id, body) VALUES ('x', 'from A');",
    )
    .await
    .expect("A begins");
    let a_pid = backend_pid(&a).await;

    // B has to wait for the only server, and gives up after 1 s.
    let b = proxy.connect(TENANT).await;
    let t = Instant::now();
    let err = b
        .simple_query("SELECT current_setting('app.marker', true)")
        .await
        .expect_err("B must not get A's server while A's transaction is open");
    let waited = t.elapsed();
    assert_eq!(sqlstate(&err), "57014", "{err}");
    let msg = err.as_db_error().expect("db error").message().to_string();
    assert!(msg.contains("\"x\""), "names the tenant: {msg}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "waited {waited:?} for a 1s query_wait_timeout"
    );

    // A's transaction is intact and still on the same server.
    assert_eq!(backend_pid(&a).await, a_pid);
    assert_eq!(scalar(&a, "SHOW work_mem").await, "7MB");
    assert_eq!(
        scalar(&a, "SELECT current_setting('app.marker', true)").await,
        "owned by A"
    );
    assert_eq!(scalar(&a, "SELECT sum(v) FROM a_scratch").await, "42");
    a.batch_execute("COMMIT").await.expect("A commits");

    // Now a new client gets the same server, with none of A's
    // transaction-local state, and many queries in a row work.
    let b2 = proxy.connect(TENANT).await;
    for i in 0..50 {
        assert_eq!(scalar(&b2, &format!("SELECT {i}")).await, i.to_string());
    }
    assert_eq!(
        backend_pid(&b2).await,
        a_pid,
        "pool_size 1: the same server"
    );
    assert_eq!(scalar(&b2, "SHOW work_mem").await, "4MB");
    assert_eq!(
        scalar(
            &b2,
            "SELECT coalesce(current_setting('app.marker', true), '')"
        )
        .await,
        ""
    );
    assert_eq!(
        scalar(
            &b2,
            "SELECT count(*) FROM pg_class WHERE relname = 'a_scratch'"
        )
        .await,
        "0"
    );
    assert_eq!(
        scalar(&b2, "SELECT count(*) FROM notes WHERE body = 'from A'").await,
        "1"
    );

    // A waiting client gets the server as soon as the transaction ends,
    // and runs after it.
    a.batch_execute("BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('x', 'second from A')")
        .await
        .expect("A begins again");
    let b3 = proxy.connect(TENANT).await;
    let t = Instant::now();
    let waiter = tokio::spawn(async move {
        let n = scalar(
            &b3,
            "SELECT count(*) FROM notes WHERE body = 'second from A'",
        )
        .await;
        (n, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.batch_execute("COMMIT").await.expect("A commits again");
    let (n, waited) = waiter.await.expect("B3");
    assert_eq!(
        n, "1",
        "B3 ran after A's commit, not inside A's transaction"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "B3 waited only {waited:?}"
    );
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn failed_and_abandoned_transactions_leave_the_server_usable() {
    let pg = TestPg::start(HostAuth::ScramSha256, &[TENANT]).await;
    let proxy = TestProxy::start(&pg.config(
        &[TENANT],
        1,
        "pool_mode = \"transaction\"\nquery_wait_timeout = \"5s\"",
    ))
    .await;
    // A: an error inside a transaction, then ROLLBACK.
    let a = proxy.connect(TENANT).await;
    a.batch_execute("BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('x', 'doomed A')")
        .await
        .expect("begin");
    let pid = backend_pid(&a).await;
    let err = a.simple_query("SELECT 1/0").await.expect_err("division");
    assert_eq!(sqlstate(&err), "22012");
    let err = a.simple_query("SELECT 1").await.expect_err("aborted txn");
    assert_eq!(sqlstate(&err), "25P02");
    // The same, in the extended protocol.
    let err = a
        .query_typed("SELECT $1::int / 0", &[(&1i32, Type::INT4)])
        .await
        .expect_err("still aborted");
    assert_eq!(sqlstate(&err), "25P02");
    assert_eq!(backend_pid_after_rollback(&a).await, pid);
    assert_eq!(scalar(&a, "SELECT 'a is fine'").await, "a is fine");

    // B: the same server, clean.
    let b = proxy.connect(TENANT).await;
    assert_eq!(backend_pid(&b).await, pid);
    assert_eq!(
        scalar(&b, "SELECT count(*) FROM notes WHERE body = 'doomed A'").await,
        "0"
    );
    // An extended-protocol error inside a transaction, then ROLLBACK.
    b.batch_execute("BEGIN").await.expect("begin");
    let err = b
        .query_typed("SELECT $1::int / 0", &[(&1i32, Type::INT4)])
        .await
        .expect_err("division");
    assert_eq!(sqlstate(&err), "22012");
    b.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(scalar(&b, "SELECT 'b is fine'").await, "b is fine");

    // C leaves in the middle of a failed transaction, D in the middle of
    // an open one: the proxy rolls back, and the next client gets a clean
    // server (the same one, reused rather than reopened).
    let c = proxy.connect(TENANT).await;
    c.batch_execute("BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('x', 'doomed C')")
        .await
        .expect("begin");
    let _ = c.simple_query("SELECT * FROM no_such_table").await;
    drop(c);
    let d = proxy.connect(TENANT).await;
    assert_eq!(
        scalar(&d, "SELECT count(*) FROM notes WHERE body = 'doomed C'").await,
        "0"
    );
    assert_eq!(
        scalar(&d, "SELECT current_setting('transaction_isolation')").await,
        "read committed"
    );
    assert_eq!(backend_pid(&d).await, pid, "server reused after ROLLBACK");
    d.batch_execute("BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('x', 'doomed D')")
        .await
        .expect("begin");
    drop(d);
    let e = proxy.connect(TENANT).await;
    assert_eq!(
        scalar(&e, "SELECT count(*) FROM notes WHERE body = 'doomed D'").await,
        "0"
    );
    // Not inside a leftover transaction: this commits and is visible.
    e.batch_execute("INSERT INTO notes (tenant_id, body) VALUES ('x', 'kept E')")
        .await
        .expect("insert");
    assert_eq!(backend_pid(&e).await, pid, "server reused after ROLLBACK");
    let admin = pg.cluster.admin(DB).await.expect("admin");
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM notes WHERE body LIKE 'doomed%' OR body = 'kept E'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "only E's row was committed");
    proxy.stop().await.expect("clean stop");
}

async fn backend_pid_after_rollback(c: &Client) -> i32 {
    c.batch_execute("ROLLBACK").await.expect("rollback");
    backend_pid(c).await
}

#[tokio::test]
async fn session_mode_resets_settings_between_clients() {
    let pg = TestPg::start(HostAuth::ScramSha256, &[TENANT]).await;
    let proxy = TestProxy::start(&pg.config(
        &[TENANT],
        1,
        "pool_mode = \"session\"\nquery_wait_timeout = \"10s\"",
    ))
    .await;

    let a = proxy.connect(TENANT).await;
    a.batch_execute(
        "SET application_name = 'leaky_a';
         SET work_mem = '13MB';
         SELECT set_config('app.marker', 'from A', false);
         PREPARE a_stmt AS SELECT 1;
         CREATE TEMP TABLE a_temp (v int);",
    )
    .await
    .expect("A sets up session state");
    assert_eq!(scalar(&a, "SHOW application_name").await, "leaky_a");
    assert_eq!(scalar(&a, "SHOW work_mem").await, "13MB");
    let pid = backend_pid(&a).await;
    drop(a);

    // B, on the same server connection (pool_size 1), sees none of it.
    let b = proxy.connect(TENANT).await;
    assert_eq!(backend_pid(&b).await, pid, "pool_size 1: the same server");
    assert_eq!(scalar(&b, "SHOW application_name").await, "");
    assert_eq!(scalar(&b, "SHOW work_mem").await, "4MB");
    assert_eq!(
        scalar(
            &b,
            "SELECT coalesce(current_setting('app.marker', true), '')"
        )
        .await,
        ""
    );
    let err = b.simple_query("EXECUTE a_stmt").await.expect_err("gone");
    assert_eq!(sqlstate(&err), "26000", "{err}");
    assert_eq!(
        scalar(&b, "SELECT count(*) FROM pg_class WHERE relname = 'a_temp'").await,
        "0"
    );
    drop(b);

    // C asked for its own application_name at startup: it gets that one.
    let c = proxy
        .try_connect(&format!(
            "{} application_name=cee",
            proxy.conn_str("app.x", "x-secret", "x")
        ))
        .await
        .expect("connect C");
    assert_eq!(backend_pid(&c).await, pid);
    assert_eq!(scalar(&c, "SHOW application_name").await, "cee");
    assert_eq!(scalar(&c, "SHOW work_mem").await, "4MB");
    drop(c);
    proxy.stop().await.expect("clean stop");
}

/// A client that disconnects while its query runs: the backend keeps
/// running that query until it next talks to its socket, so if the proxy
/// just closes the socket and hands the slot to the next client, the
/// placement has more backends than `pool_size`.
#[tokio::test]
async fn a_client_leaving_mid_query_keeps_backends_within_pool_size() {
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pg = TestPg::start(HostAuth::ScramSha256, &[TENANT]).await;
    let proxy = TestProxy::start(&pg.config(
        &[TENANT],
        1,
        "pool_mode = \"transaction\"\nquery_wait_timeout = \"10s\"\nauth_type = \"trust\"",
    ))
    .await;
    let b = proxy.connect(TENANT).await;
    let first_pid = backend_pid(&b).await;
    let watch = BackendWatch::start(&pg).await;

    // A (raw, so that it can vanish mid-query): log in, start a 3 s query,
    // see it running, and close the socket.
    let mut a = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .expect("tcp");
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "app.x"), ("database", "x")], &mut out).expect("startup");
    a.write_all(&out).await.expect("startup");
    let mut buf = BytesMut::new();
    while !buf.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        assert!(a.read_buf(&mut buf).await.expect("read") > 0, "closed");
    }
    out.clear();
    frontend::query("SELECT pg_sleep(3)", &mut out).expect("query");
    a.write_all(&out).await.expect("query");
    let admin = pg.cluster.admin(DB).await.expect("admin");
    let running = async {
        loop {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)' AND state = 'active'",
                    &[],
                )
                .await
                .expect("activity")
                .get(0);
            if n == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("A's query runs");
    drop(a);

    // B goes on working; the placement never has two backends.
    let t = Instant::now();
    for i in 0..5 {
        assert_eq!(scalar(&b, &format!("SELECT {i}")).await, i.to_string());
    }
    eprintln!(
        "B ran after {:?} (on pid {}, first {first_pid})",
        t.elapsed(),
        backend_pid(&b).await
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let max_backends = watch.finish().await;
    assert!(
        max_backends <= 1,
        "pool_size 1, but {max_backends} backends were connected at once"
    );
    proxy.stop().await.expect("clean stop");
}
