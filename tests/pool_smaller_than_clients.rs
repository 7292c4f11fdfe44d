//! Blocking prepares over a pool smaller than the client count (issue 17
//! point 7): pgbench `-M prepared` prepares synchronously (Parse + Sync
//! outside a transaction) while its other clients on the same thread hold
//! server connections in open transactions. A Parse of a statement a
//! server already accepted is answered without a server connection, so
//! the run finishes instead of hanging.

mod common;

use common::{TestPg, TestProxy};
use pgtenant::pgcluster::HostAuth;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PGBENCH: &str = "/usr/lib/postgresql/15/bin/pgbench";

/// Runs `cmd` to completion within `limit`; kills it and fails otherwise.
fn run_within(mut cmd: Command, limit: Duration, what: &str) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot run {PGBENCH}: {e}"));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(status.success(), "{what} failed: {text}");
            return text;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} still running after {limit:?} (hung): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn pgbench_prepared_with_more_clients_than_server_connections_finishes() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        4,
        "auth_type = \"trust\"\nquery_wait_timeout = \"30s\"",
    ))
    .await;
    let direct = pg.client_url("tenant_acme");
    let port = proxy.port;
    tokio::task::spawn_blocking(move || {
        let mut init = Command::new(PGBENCH);
        init.args(["-i", "-s", "1", "-q", &direct]);
        run_within(init, Duration::from_secs(120), "pgbench -i");

        let mut bench = Command::new(PGBENCH);
        bench.args([
            "-M",
            "prepared",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            "5",
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app.acme",
            "acme",
        ]);
        let out = run_within(bench, Duration::from_secs(60), "pgbench -M prepared");
        assert!(out.contains("number of failed transactions: 0"), "{out}");
    })
    .await
    .expect("pgbench");
}

/// Answers kept from earlier Describes are dropped when a client changes
/// the schema: a fresh server connection's answer is the new shape.
#[tokio::test]
async fn kept_describe_answers_are_dropped_after_ddl() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme"], 2, "auth_type = \"trust\"")).await;
    let a = proxy.connect("acme").await;
    a.batch_execute("CREATE TABLE shapes (x int)")
        .await
        .expect("create");
    let s = a.prepare("SELECT * FROM shapes").await.expect("prepare");
    assert_eq!(s.columns().len(), 1);
    let b = proxy.connect("acme").await;
    assert_eq!(
        b.prepare("SELECT * FROM shapes")
            .await
            .expect("b")
            .columns()
            .len(),
        1
    );
    a.batch_execute("ALTER TABLE shapes ADD COLUMN y text")
        .await
        .expect("alter");
    // New server connections, which do not hold the old statement (on the
    // old ones PostgreSQL itself refuses: "cached plan must not change
    // result type").
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}'",
            common::backend_user("acme")
        ))
        .await
        .expect("terminate");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let c = proxy.connect("acme").await;
    let after = c.prepare("SELECT * FROM shapes").await.expect("after DDL");
    assert_eq!(after.columns().len(), 2, "a stale description");
}
