//! Issue 21, points 2, 3 and 5: `/metrics` and `/healthz` over real HTTP
//! after real client traffic, the bearer token, hostile HTTP clients, and
//! `/healthz` turning not-ready on SIGTERM while a transaction drains.
//! `/metrics` is parsed with a real Prometheus text parser
//! (`prometheus-parse`).

mod common;

use common::http::{http, wait_healthy};
use common::{Child, TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::{HostAuth, free_port};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "metrics-token-0123456789";

/// Scrapes `/metrics` and parses it: `name{sorted labels}` -> value.
async fn scrape(port: u16) -> HashMap<String, f64> {
    let (status, body) = http(
        port,
        "GET",
        "/metrics",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = format!("{}{{{}}}", s.metric, labels.join(","));
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => {
                for b in h {
                    out.insert(format!("{key}[le={}]", b.less_than), b.count);
                }
                continue;
            }
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, value);
    }
    out
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in /metrics: {:?}", m.keys().collect::<Vec<_>>()))
}

fn admin_section(port: u16) -> String {
    format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n")
}

#[tokio::test]
async fn metrics_count_real_traffic_and_errors() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let admin = free_port().expect("port");
    let proxy = TestProxy::start(
        &(pg.config(&["acme"], 2, "max_prepared_statements = 2") + &admin_section(admin)),
    )
    .await;
    wait_healthy(admin).await;

    let client = proxy.connect("acme").await;
    for _ in 0..10 {
        client.simple_query("SELECT 1").await.expect("select");
    }
    // One transaction of three queries (BEGIN, SELECT, COMMIT).
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .query("SELECT $1::int", &[&7i32])
        .await
        .expect("select");
    client.batch_execute("COMMIT").await.expect("commit");
    // An auth failure of a known tenant, and a tenant nobody configured.
    let bad = proxy
        .try_connect(&proxy.conn_str("app.acme", "wrong-password", "acme"))
        .await
        .expect_err("wrong password refused");
    assert_eq!(sqlstate(&bad), "28P01");
    let unknown = proxy
        .try_connect(&proxy.conn_str("app.nobody", "x", "nobody"))
        .await
        .expect_err("unknown tenant refused");
    assert_eq!(sqlstate(&unknown), "3D000");

    let m = scrape(admin).await;
    // tokio-postgres prepares before it runs `query`: one lease each for
    // the 10 selects, then one for the transaction, at least.
    let xacts = get(&m, "pgtenant_transactions_total{tenant=acme}");
    assert!((11.0..=13.0).contains(&xacts), "transactions {xacts}");
    let queries = get(&m, "pgtenant_queries_total{tenant=acme}");
    assert!(queries >= 13.0, "queries {queries}");
    assert!(get(&m, "pgtenant_client_bytes_total{direction=in,tenant=acme}") > 0.0);
    assert!(get(&m, "pgtenant_client_bytes_total{direction=out,tenant=acme}") > 0.0);
    assert_eq!(get(&m, "pgtenant_errors_total{kind=auth,tenant=acme}"), 1.0);
    assert_eq!(
        get(&m, "pgtenant_errors_total{kind=routing,tenant=_unknown}"),
        1.0
    );
    // Every lease waited (or not) once: the histogram counts them all.
    let waits = get(
        &m,
        "pgtenant_server_wait_duration_seconds_count{tenant=acme}",
    );
    assert!(waits >= xacts, "waits {waits} < leases {xacts}");
    assert_eq!(
        get(
            &m,
            "pgtenant_server_wait_duration_seconds{tenant=acme}[le=inf]"
        ),
        waits
    );
    assert!(get(&m, "pgtenant_query_duration_seconds_count{tenant=acme}") >= xacts);
    assert_eq!(
        get(&m, "pgtenant_client_connections{state=idle,tenant=acme}"),
        1.0
    );
    assert!(
        get(
            &m,
            "pgtenant_server_connections{placement=acme_db,state=idle}"
        ) >= 1.0
    );
    assert_eq!(get(&m, "pgtenant_tenants{}"), 1.0);
    assert_eq!(
        get(&m, "pgtenant_pool_max_wait_seconds{placement=acme_db}"),
        0.0,
        "nobody waits for a server connection"
    );

    // The counters move with more traffic.
    client.simple_query("SELECT 2").await.expect("select");
    let again = scrape(admin).await;
    assert!(get(&again, "pgtenant_transactions_total{tenant=acme}") > xacts);

    // Named statements: three on a cache of two per server connection.
    let before = scrape(admin).await;
    let statements = [
        client.prepare("SELECT $1::int + 1").await.expect("prepare"),
        client.prepare("SELECT $1::int + 2").await.expect("prepare"),
        client.prepare("SELECT $1::int + 3").await.expect("prepare"),
    ];
    for _ in 0..2 {
        for s in &statements {
            client.query(s, &[&1i32]).await.expect("execute");
        }
    }
    let after = scrape(admin).await;
    let grew = |name: &str| get(&after, name) - get(&before, name);
    assert!(grew("pgtenant_prepared_cache_misses_total{}") >= 3.0);
    assert!(grew("pgtenant_prepared_cache_evictions_total{}") >= 1.0);
    assert!(
        grew("pgtenant_prepared_cache_hits_total{}")
            + grew("pgtenant_prepared_cache_misses_total{}")
            >= 9.0,
        "every Parse and Bind of a named statement is a hit or a miss"
    );

    // A session advisory lock pins the client to its server connection.
    client
        .simple_query("SELECT pg_advisory_lock(42)")
        .await
        .expect("lock");
    let pinned = scrape(admin).await;
    assert!(get(&pinned, "pgtenant_pins_total{}") >= 1.0);
    assert_eq!(get(&pinned, "pgtenant_pinned_server_connections{}"), 1.0);
    client
        .simple_query("SELECT pg_advisory_unlock(42)")
        .await
        .expect("unlock");

    drop(client);
    proxy.stop().await.expect("stops");
}

#[tokio::test]
async fn the_token_guards_metrics_but_not_healthz() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let admin = free_port().expect("port");
    let proxy = TestProxy::start(&(pg.config(&["acme"], 1, "") + &admin_section(admin))).await;
    wait_healthy(admin).await;
    let (status, _) = http(admin, "GET", "/metrics", "").await;
    assert_eq!(status, 401, "no token");
    let (status, _) = http(
        admin,
        "GET",
        "/metrics",
        "Authorization: Bearer metrics-token-0123456788\r\n",
    )
    .await;
    assert_eq!(status, 401, "wrong token");
    let (status, _) = http(
        admin,
        "GET",
        "/metrics",
        &format!("Authorization: Basic {TOKEN}\r\n"),
    )
    .await;
    assert_eq!(status, 401, "not a bearer token");
    let (status, body) = http(
        admin,
        "GET",
        "/metrics",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("pgtenant_transactions_total"));
    let (status, _) = http(admin, "GET", "/healthz", "").await;
    assert_eq!(status, 200);
    let (status, _) = http(admin, "POST", "/metrics", "Content-Length: 0\r\n").await;
    assert_eq!(status, 405);
    let (status, _) = http(admin, "GET", "/nothing", "").await;
    assert_eq!(status, 404);
    proxy.stop().await.expect("stops");
}

#[tokio::test]
async fn stalled_and_oversized_requests_do_not_hold_the_server() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let admin = free_port().expect("port");
    let proxy = TestProxy::start(&(pg.config(&["acme"], 1, "") + &admin_section(admin))).await;
    wait_healthy(admin).await;

    // A request head that never ends.
    let mut stalled = TcpStream::connect(("127.0.0.1", admin))
        .await
        .expect("connect");
    stalled
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let stalled_at = Instant::now();
    // More connections than the cap, all silent: the ones past it are
    // closed at once.
    let mut silent = Vec::new();
    for _ in 0..(pgtenant::admin::http::MAX_CONNECTIONS + 8) {
        silent.push(
            TcpStream::connect(("127.0.0.1", admin))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut closed_at_once = 0;
    for s in silent.iter_mut() {
        let mut b = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await
        {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 8,
        "only {closed_at_once} closed past the cap"
    );
    // The stalled head is cut off by the head timeout (5 s; the bound is
    // generous for a loaded machine, and below hyper's own default of
    // 30 s, so the proxy's limit is what is tested).
    let mut rest = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(25).saturating_sub(stalled_at.elapsed()),
        stalled.read_to_end(&mut rest),
    )
    .await
    .expect("a stalled request is closed, not held")
    .ok();
    assert!(
        !String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"),
        "a half-sent request was served"
    );
    drop(silent);
    // Silent connections are gone too; the server answers again.
    tokio::time::sleep(pgtenant::admin::http::HEAD_TIMEOUT + Duration::from_secs(1)).await;
    let (status, _) = http(admin, "GET", "/healthz", "").await;
    assert_eq!(status, 200);
    // A head larger than the limit is refused, not buffered.
    let big = format!(
        "X-Filler: {}\r\n",
        "a".repeat(pgtenant::admin::http::MAX_HEAD * 2)
    );
    let mut s = TcpStream::connect(("127.0.0.1", admin))
        .await
        .expect("connect");
    let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{big}\r\n");
    let _ = s.write_all(req.as_bytes()).await; // the server may close mid-write
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("answered or closed in time");
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "an oversized head was served: {text}"
    );
    proxy.stop().await.expect("stops");
}

/// The real binary: SIGTERM turns `/healthz` to 503 at once, while a
/// client's open transaction goes on; the process exits 0 once it ends.
#[tokio::test]
async fn sigterm_turns_healthz_not_ready_while_transactions_drain() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let admin = free_port().expect("port");
    let port = free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = pg
        .config(&["acme"], 1, "shutdown_timeout = \"60s\"")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        + &admin_section(admin);
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .arg("-c")
            .arg(&path)
            .env("PGTENANT_LOG", "warn")
            .spawn()
            .expect("start pgtenant"),
    );
    wait_healthy(admin).await;
    let conn = format!(
        "host=127.0.0.1 port={port} user=app.acme password=acme-secret dbname=acme connect_timeout=10"
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect through the binary");
    tokio::spawn(connection);
    client.batch_execute("BEGIN").await.expect("begin");
    client.simple_query("SELECT 1").await.expect("select");

    let pid = child.0.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    loop {
        let (status, _) = http(admin, "GET", "/healthz", "").await;
        if status == 503 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/healthz still {status} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still draining: the transaction goes on, and /healthz stays 503.
    client
        .simple_query("SELECT 2")
        .await
        .expect("the transaction runs on");
    assert_eq!(http(admin, "GET", "/healthz", "").await.0, 503);
    assert!(
        child.0.try_wait().expect("wait").is_none(),
        "exited mid-transaction"
    );
    client.batch_execute("COMMIT").await.expect("commit");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "did not exit once drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
