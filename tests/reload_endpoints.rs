//! Issue 21: the three ways an operator asks for a reload besides
//! SIGHUP (`reload.rs`): the admin console's `RELOAD`, `POST /reload`
//! (behind the bearer token), each saying what changed or why the file
//! was rejected, and counted in `pgtenant_reloads_total`; and
//! `suspended = true` arriving by reload, which closes the tenant's open
//! sessions after their transaction like the console's `SUSPEND`.

mod common;

use common::http::{http, wait_healthy};
use common::live::{ConfigText, LiveProxy};
use common::{TestPg, sqlstate};
use pgtenant::pgcluster::{HostAuth, free_port};
use tokio_postgres::SimpleQueryMessage;

const TOKEN: &str = "reload-token-0123456789";
const ADMIN_PASSWORD: &str = "admin-secret-pw";

/// Tenants a and b on placement `p` (database `tenant_a`), the admin
/// console user and the HTTP endpoint on `http_port`; `b_extra` goes into
/// b's table.
fn config(pg: &TestPg, http_port: u16, with_b: bool, b_extra: &str) -> String {
    let mut c = ConfigText::new("")
        .placement(pg, "p", "a", 2)
        .tenant("a", "p", "");
    if with_b {
        c = c.tenant("b", "p", b_extra);
    }
    format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{http_port}\"\ntoken = \"{TOKEN}\"\nusers = {{ admin = \"{ADMIN_PASSWORD}\" }}\n",
        c.0
    )
}

/// `pgtenant_reloads_total{result=...}` from `/metrics` (0 if absent).
async fn reloads(http_port: u16, result: &str) -> f64 {
    let (status, body) = http(
        http_port,
        "GET",
        "/metrics",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let want = format!("pgtenant_reloads_total{{result=\"{result}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test]
async fn the_console_reloads_and_reports_what_changed_or_why_not() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a"]).await;
    let http_port = free_port().expect("port");
    let proxy = LiveProxy::start(&config(&pg, http_port, false, "")).await;
    wait_healthy(http_port).await;
    let admin = proxy.console(ADMIN_PASSWORD).await;
    assert_eq!(
        sqlstate(&proxy.try_connect("b").await.expect_err("no b yet")),
        "3D000"
    );

    std::fs::write(&proxy.path, config(&pg, http_port, true, "")).expect("write");
    let answer = admin.simple_query("RELOAD").await.expect("RELOAD");
    assert!(
        matches!(answer.last(), Some(SimpleQueryMessage::CommandComplete(_))),
        "{answer:?}"
    );
    let b = proxy.connect("b").await;
    b.simple_query("SELECT 1").await.expect("b works at once");
    assert_eq!(reloads(http_port, "ok").await, 1.0);

    // An invalid file: an error naming the key, the running config stays.
    std::fs::write(
        &proxy.path,
        config(&pg, http_port, true, "").replace("pool_size = 2", "pool_size = \"two\""),
    )
    .expect("write");
    let e = admin.simple_query("reload;").await.expect_err("rejected");
    assert_eq!(sqlstate(&e), "F0000");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("pool_size"), "{message}");
    proxy
        .connect("b")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("b still works");
    assert_eq!(reloads(http_port, "error").await, 1.0);
    // The console goes on.
    admin
        .simple_query("SHOW VERSION")
        .await
        .expect("still answers");
}

#[tokio::test]
async fn post_reload_needs_the_token_and_says_what_changed() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a"]).await;
    let http_port = free_port().expect("port");
    let proxy = LiveProxy::start(&config(&pg, http_port, false, "")).await;
    wait_healthy(http_port).await;
    std::fs::write(&proxy.path, config(&pg, http_port, true, "")).expect("write");

    // Without the token (or with another): refused, nothing reloaded.
    for headers in ["", "Authorization: Bearer not-the-token-at-all\r\n"] {
        let (status, _) = http(http_port, "POST", "/reload", headers).await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        sqlstate(&proxy.try_connect("b").await.expect_err("no b yet")),
        "3D000"
    );
    let (status, _) = http(http_port, "GET", "/reload", "").await;
    assert_eq!(status, 405, "a reload changes state: POST only");

    let auth = format!("Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n");
    let (status, body) = http(http_port, "POST", "/reload", &auth).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tenants added 1: b"), "{body}");
    proxy
        .connect("b")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("b works at once");

    std::fs::write(&proxy.path, "[proxy\nbroken").expect("write");
    let (status, body) = http(http_port, "POST", "/reload", &auth).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("rejected"), "{body}");
    proxy
        .connect("b")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("b still works");
    assert_eq!(reloads(http_port, "ok").await, 1.0);
    assert_eq!(reloads(http_port, "error").await, 1.0);

    // A reload rotates the token: the old one stops working at once.
    let rotated = config(&pg, http_port, true, "").replace(TOKEN, "rotated-token-9876543210");
    std::fs::write(&proxy.path, rotated).expect("write");
    let (status, body) = http(http_port, "POST", "/reload", &auth).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(http_port, "GET", "/metrics", &auth).await;
    assert_eq!(status, 401, "the old token still works");
    let new_auth = "Authorization: Bearer rotated-token-9876543210\r\n";
    let (status, _) = http(http_port, "GET", "/metrics", new_auth).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn suspended_by_reload_closes_open_sessions_after_their_transaction() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a"]).await;
    let http_port = free_port().expect("port");
    let proxy = LiveProxy::start(&config(&pg, http_port, true, "")).await;
    let (b, ending) = proxy.connect_watched("b").await;
    b.batch_execute("BEGIN").await.expect("begin");
    let a = proxy.connect("a").await;

    proxy
        .reload(&config(&pg, http_port, true, "suspended = true"))
        .await
        .expect("reload");
    // Mid-transaction: b finishes it.
    b.simple_query("SELECT 1")
        .await
        .expect("inside its transaction");
    b.batch_execute("COMMIT").await.expect("commit");
    let (code, message) = ending.error().await;
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("suspended"), "{message}");
    // New connections are refused; a is untouched.
    let e = proxy.try_connect("b").await.expect_err("suspended");
    assert_eq!(sqlstate(&e), "08004");
    a.simple_query("SELECT 1").await.expect("a goes on");
}
