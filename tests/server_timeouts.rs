//! Server connections over time, through the real proxy and a real
//! PostgreSQL: idle connections closed after `server_idle_timeout`,
//! connections retired after `server_lifetime` while clients keep working,
//! a stale idle connection checked with a round trip
//! (`server_check_delay`), and a backend outage: 08006 quickly while it is
//! down, a bounded number of connection attempts, and recovery without
//! restarting the proxy.
//!
//! Each limit to the millisecond, on a paused clock: `pool::janitor::tests`
//! and `pool::placement::tests`. Here, with real time and a real server,
//! the bounds are loose enough for a loaded machine.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, SimpleQueryMessage};

const TENANT: &str = "acme";

/// First column of the first row of a simple query.
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

/// Server connections the proxy holds open (backends of its role).
async fn backends(admin: &Client) -> i64 {
    scalar(
        admin,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgt_acme'",
    )
    .await
    .parse()
    .expect("count")
}

/// Waits until the proxy holds `n` server connections; returns when.
async fn until_backends(admin: &Client, n: i64, deadline: Duration) -> Instant {
    let started = Instant::now();
    loop {
        let now = backends(admin).await;
        if now == n {
            return Instant::now();
        }
        assert!(
            started.elapsed() < deadline,
            "still {now} server connections after {deadline:?}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A proxy config for one tenant with client auth `trust`.
fn config(pg: &TestPg, pool_size: u32, extra: &str) -> String {
    pg.config(
        &[TENANT],
        pool_size,
        &format!("auth_type = \"trust\"\n{extra}"),
    )
}

#[tokio::test]
async fn idle_server_connections_close_after_server_idle_timeout() {
    let pg = TestPg::start(HostAuth::Trust, &[TENANT]).await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    let proxy = TestProxy::start(&config(&pg, 4, "server_idle_timeout = \"1s\"")).await;

    // Three transactions at once need three server connections.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Arc::new(proxy.connect(TENANT).await));
    }
    let mut tasks = Vec::new();
    for c in &clients {
        let c = Arc::clone(c);
        tasks.push(tokio::spawn(async move {
            c.simple_query("SELECT pg_sleep(0.3)").await.expect("q");
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let idle_since = Instant::now();
    assert_eq!(backends(&admin).await, 3);

    // Closed by the janitor after 1 s unused (it looks every second; 2 s
    // at most on an idle machine, more on a loaded one).
    let closed = until_backends(&admin, 0, Duration::from_secs(10)).await;
    let after = closed - idle_since;
    assert!(
        after >= Duration::from_millis(800),
        "closed too early: {after:?}"
    );

    // The clients never noticed: their next transactions open new ones.
    for c in &clients {
        c.batch_execute("BEGIN; SELECT 1; COMMIT")
            .await
            .expect("after the idle timeout");
    }
    // (Usually one, reused; a release racing the next client's request
    // on another worker may open a second.)
    let reopened = backends(&admin).await;
    assert!((1..=3).contains(&reopened), "{reopened} server connections");
    eprintln!("idle connections closed {after:?} after their last use");
}

#[tokio::test]
async fn connections_retire_after_server_lifetime_without_clients_noticing() {
    let pg = TestPg::start(HostAuth::Trust, &[TENANT]).await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    let lifetime = Duration::from_secs(1);
    let proxy = TestProxy::start(&config(&pg, 2, "server_lifetime = \"1s\"")).await;

    // pid -> (first seen, last seen), from four clients querying
    // continuously for three seconds; any error fails the test.
    let seen: Arc<Mutex<HashMap<i32, (Instant, Instant)>>> = Arc::default();
    let queries = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = proxy.connect(TENANT).await;
        let seen = Arc::clone(&seen);
        let queries = Arc::clone(&queries);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let pid: i32 = scalar(&client, "SELECT pg_backend_pid()")
                    .await
                    .parse()
                    .expect("pid");
                let now = Instant::now();
                seen.lock()
                    .expect("lock")
                    .entry(pid)
                    .and_modify(|(_, last)| *last = now)
                    .or_insert((now, now));
                queries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a client saw an error");
    }
    let seen = seen.lock().expect("lock").clone();
    let longest = seen
        .values()
        .map(|(first, last)| *last - *first)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} queries over {} server connections; longest use {longest:?}",
        queries.load(Ordering::Relaxed),
        seen.len()
    );
    // Two slots for three seconds with connections living 0.9-1 s: at
    // least two generations of two connections.
    assert!(seen.len() >= 4, "connections did not retire: {seen:?}");
    // (Plus the last query's own time on a busy test machine.)
    assert!(
        longest < lifetime + Duration::from_millis(1500),
        "a connection was used for {longest:?}"
    );

    // Once the clients stop, idle connections retire too (janitor).
    let idle_since = Instant::now();
    let closed = until_backends(&admin, 0, Duration::from_secs(5)).await;
    eprintln!(
        "idle connections retired {:?} after the last query",
        closed - idle_since
    );
}

/// Resumes a stopped process on drop, so that a failing test does not
/// leave a backend stopped (PostgreSQL's shutdown would wait for it).
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Stopped {
        // SAFETY: kill has no memory preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[tokio::test]
async fn stale_idle_connections_are_checked_with_a_round_trip() {
    let pg = TestPg::start(HostAuth::Trust, &[TENANT]).await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    admin
        .batch_execute("ALTER ROLE pgt_acme SET log_statement = 'all'")
        .await
        .expect("log statements");
    let proxy = TestProxy::start(&config(
        &pg,
        1,
        "server_check_delay = \"1s\"\nserver_connect_timeout = \"2s\"",
    ))
    .await;
    let checks = |pg: &TestPg| pg.cluster.log().matches("statement: ;").count();

    // Used within the delay: no check.
    let c = proxy.connect(TENANT).await;
    let pid = scalar(&c, "SELECT pg_backend_pid()").await;
    for _ in 0..10 {
        assert_eq!(scalar(&c, "SELECT pg_backend_pid()").await, pid);
    }
    assert_eq!(checks(&pg), 0, "a recently used connection was checked");

    // Idle past the delay: one empty query first, then the client's.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(scalar(&c, "SELECT pg_backend_pid()").await, pid);
    assert_eq!(checks(&pg), 1, "{}", pg.cluster.log());
    assert_eq!(scalar(&c, "SELECT pg_backend_pid()").await, pid);
    assert_eq!(checks(&pg), 1, "checked again right after a use");

    // A stale connection whose server no longer answers (the socket
    // looks fine, nothing arrives) is replaced, and the client only sees
    // the delay of the check's timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stopped = Stopped::stop(pid.parse().expect("pid"));
    let started = Instant::now();
    let fresh = scalar(&c, "SELECT pg_backend_pid()").await;
    let took = started.elapsed();
    drop(stopped);
    assert_ne!(fresh, pid, "the unresponsive connection was handed out");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    eprintln!("unresponsive idle connection replaced in {took:?}");
}

#[tokio::test]
async fn a_backend_outage_fails_fast_with_bounded_reconnects_and_recovers() {
    let pg = TestPg::start(HostAuth::Trust, &[TENANT]).await;
    let login_retry = Duration::from_secs(2);
    let proxy = TestProxy::start(&config(
        &pg,
        4,
        "query_wait_timeout = \"5s\"\nserver_connect_timeout = \"1s\"\nserver_login_retry = \"2s\"",
    ))
    .await;
    let c = proxy.connect(TENANT).await;
    c.batch_execute("SELECT 1")
        .await
        .expect("before the outage");
    drop(c);

    let port = pg.cluster.port;
    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.cluster.stop().expect("stop PostgreSQL");
        pg
    })
    .await
    .expect("join");

    // Stand in for the stopped server: accept and hang up at once,
    // counting the proxy's connection attempts.
    let stand_in = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the server's port");
    let attempts = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&attempts);
    let stand_in = tokio::spawn(async move {
        while let Ok((s, _)) = stand_in.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    });

    // Four clients keep trying for three seconds; each try is told 08006
    // quickly.
    let window = Duration::from_secs(3);
    let until = Instant::now() + window;
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let conn_str = proxy.conn_str(&format!("app.{TENANT}"), "x", TENANT);
        let port = proxy.port;
        let failures = Arc::clone(&failures);
        tasks.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while Instant::now() < until {
                let started = Instant::now();
                let err = match tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await {
                    Err(e) => e,
                    Ok((client, conn)) => {
                        tokio::spawn(conn);
                        client
                            .simple_query("SELECT 1")
                            .await
                            .expect_err("the server is down")
                    }
                };
                assert_eq!(sqlstate(&err), "08006", "port {port}: {err}");
                slowest = slowest.max(started.elapsed());
                failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            slowest
        }));
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await.expect("join"));
    }
    let tries = failures.load(Ordering::Relaxed);
    let attempts = attempts.load(Ordering::Relaxed);
    stand_in.abort();
    let _ = stand_in.await;
    eprintln!(
        "outage: {tries} client tries, {attempts} connection attempts in {window:?}, slowest 08006 in {slowest:?}"
    );
    // Quickly: not after query_wait_timeout (5 s), nor a connect timeout.
    assert!(slowest < Duration::from_secs(2), "08006 took {slowest:?}");
    assert!(tries >= 20, "only {tries} tries");
    // At most 4 at once before the first failure is known, then one per
    // delay: 100, 200, 400, 800 ms, 1.6 s: at most 9 in 3 s, against one
    // per try without backoff.
    assert!(
        (1..=10).contains(&attempts),
        "{attempts} connection attempts in {window:?}"
    );

    let back = Instant::now();
    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.cluster.start_again().expect("start PostgreSQL");
        pg
    })
    .await
    .expect("join");
    let started_in = back.elapsed();

    // New transactions work again within one backoff delay, without
    // restarting the proxy.
    let up = Instant::now();
    loop {
        let tried = async {
            let c = proxy
                .try_connect(&proxy.conn_str(&format!("app.{TENANT}"), "x", TENANT))
                .await?;
            c.batch_execute("BEGIN; SELECT 1; COMMIT").await?;
            Ok::<_, tokio_postgres::Error>(c)
        }
        .await;
        match tried {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(sqlstate(&e), "08006", "{e}");
                assert!(
                    up.elapsed() < login_retry + Duration::from_secs(2),
                    "still failing {:?} after the server was back: {e}",
                    up.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    eprintln!(
        "server restarted in {started_in:?}; transactions work again {:?} after",
        up.elapsed()
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(proxy.connect(TENANT).await);
    }
    for c in &clients {
        c.batch_execute("BEGIN; SELECT 1; COMMIT")
            .await
            .expect("after recovery");
    }
    drop(pg);
}
