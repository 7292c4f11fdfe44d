//! A blocking describe over a pool smaller than the client count (issue
//! 17 point 7). psycopg's `pgconn.describe_prepared` (libpq
//! `PQdescribePrepared`: Describe + Sync outside a transaction) holds the
//! GIL while it waits, so the client's other threads, which hold every
//! server connection mid-transaction, cannot go on: on 9e4ad32 the
//! describe waited for query_wait_timeout and the others failed with it.
//! The proxy now answers it from the kept Describe answer.

mod common;

use common::{TestPg, TestProxy};
use pgtenant::pgcluster::HostAuth;
use std::path::Path;
use std::process::Command;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

#[tokio::test]
async fn psycopg_describe_prepared_needs_no_server_connection() {
    let have_psycopg = Command::new("python3")
        .args(["-c", "import psycopg"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_psycopg {
        assert!(
            !in_ci(),
            "psycopg is missing under CI (tests/drivers/install.sh installs it)"
        );
        eprintln!("SKIPPED: psycopg not installed; run tests/drivers/install.sh");
        return;
    }
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    // The wait is short so a stall fails in seconds, not minutes.
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        4,
        "auth_type = \"trust\"\nquery_wait_timeout = \"10s\"",
    ))
    .await;
    let dsn = proxy.conn_str("app.acme", "x", "acme");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/python/blocking_describe.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(dsn)
            .arg("100")
            .output()
    })
    .await
    .expect("join")
    .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{text}");
}
