//! Failed logins are limited per client address and user (issue 20,
//! point 6): after `auth_failure_limit` failures that user's logins from
//! that address are refused (28000, even with the right password) until
//! `auth_ban_time` has passed, while the tenant's other users, and the
//! same user from another address, still log in. A tenant's name is
//! public: nothing here may let a stranger lock a whole tenant out.

mod common;

use common::live::LiveProxy;
use common::raw;
use common::{TestPg, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_postgres::NoTls;

async fn login(port: u16, user: &str, password: &str) -> Result<(), tokio_postgres::Error> {
    let conn_str = format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname=acme connect_timeout=10"
    );
    let (client, conn) = tokio_postgres::connect(&conn_str, NoTls).await?;
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.map(|_| ())
}

fn config(pg: &TestPg, auth: &str, limits: &str) -> String {
    pg.config(&["acme"], 2, &format!("auth_type = \"{auth}\"\n{limits}"))
        .replace(
            "users = { app = \"acme-secret\" }",
            "users = { app = \"acme-secret\", other = \"other-secret\" }",
        )
}

#[tokio::test]
async fn a_user_is_banned_from_an_address_and_the_tenant_is_not() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = LiveProxy::start(&config(
        &pg,
        "scram-sha-256",
        "auth_failure_limit = 3\nauth_failure_window = \"1m\"\nauth_ban_time = \"3s\"",
    ))
    .await;
    let port = proxy.port;

    // Two failures, then the right password: the count is cleared.
    for _ in 0..2 {
        let e = login(port, "app.acme", "guess").await.expect_err("a guess");
        assert_eq!(sqlstate(&e), "28P01");
    }
    login(port, "app.acme", "acme-secret")
        .await
        .expect("the right password");

    // Three failures in a row, over every spelling of the same login.
    for user in ["app.acme", "app", "app.acme"] {
        let e = login(port, user, "guess").await.expect_err("a guess");
        assert_eq!(sqlstate(&e), "28P01");
    }
    let banned = login(port, "app.acme", "acme-secret")
        .await
        .expect_err("banned even with the right password");
    assert_eq!(sqlstate(&banned), "28000");
    let message = banned
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("too many failed logins"), "{message}");
    assert!(message.contains("try again in"), "{message}");

    // The tenant's other user is not locked out.
    login(port, "other.acme", "other-secret")
        .await
        .expect("another user of the tenant logs in");
    let (bans, refused) = proxy.state.failed_logins.totals();
    assert_eq!((bans, refused), (1, 1));

    // The ban ends.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    login(port, "app.acme", "acme-secret")
        .await
        .expect("the ban is over");
}

/// A trust-mode login over a raw socket from `source`; the SQLSTATE of
/// the error it gets, or None if it logged in.
async fn raw_login(port: u16, source: &str, user: &str) -> Option<String> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind the source address");
    let mut s: TcpStream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    raw::send(
        &mut s,
        &raw::startup(3, 0, &[("user", user), ("database", "acme")]),
    )
    .await;
    loop {
        match raw::read_msg(&mut s, Duration::from_secs(10)).await {
            raw::Read::Msg(m) if m.tag == b'E' => return Some(m.code()),
            raw::Read::Msg(m) if m.tag == b'Z' => return None,
            raw::Read::Msg(_) => {}
            other => panic!("no answer to the login: {other:?}"),
        }
    }
}

#[tokio::test]
async fn another_address_is_not_banned_with_the_first() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = LiveProxy::start(&config(
        &pg,
        "trust",
        "auth_failure_limit = 3\nauth_ban_time = \"1m\"",
    ))
    .await;
    let port = proxy.port;
    // Under trust, a user not in the tenant's list fails.
    for _ in 0..3 {
        assert_eq!(
            raw_login(port, "127.0.0.2", "ghost.acme").await.as_deref(),
            Some("28P01")
        );
    }
    assert_eq!(
        raw_login(port, "127.0.0.2", "ghost.acme").await.as_deref(),
        Some("28000")
    );
    // Same user, another address: counted apart, not banned.
    assert_eq!(
        raw_login(port, "127.0.0.3", "ghost.acme").await.as_deref(),
        Some("28P01")
    );
    // The banned address's other users still log in.
    assert_eq!(raw_login(port, "127.0.0.2", "app.acme").await, None);

    // A live reload that turns the limit off lifts it at once.
    proxy
        .reload(&config(&pg, "trust", "auth_failure_limit = 0"))
        .await
        .expect("reload");
    assert_eq!(
        raw_login(port, "127.0.0.2", "ghost.acme").await.as_deref(),
        Some("28P01")
    );
}
