//! No real backend pid reaches a client through the protocol: a client's
//! own notifications carry the pid it was given in BackendKeyData (drivers
//! such as psycopg compare them), and notifications from other sessions
//! carry 0.

mod common;

use common::{TestPg, TestProxy, raw};
use pgtenant::pgcluster::HostAuth;
use std::time::Duration;

/// Logs in over a raw socket; returns it and the pid from BackendKeyData.
async fn login(port: u16) -> (tokio::net::TcpStream, i32) {
    let mut s = raw::connect(port).await;
    raw::send(
        &mut s,
        &raw::startup(3, 0, &[("user", "app.acme"), ("database", "acme")]),
    )
    .await;
    let (msgs, _) = raw::read_to_ready(&mut s, "login").await;
    let key = msgs.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    let pid = i32::from_be_bytes(key.body[..4].try_into().expect("pid"));
    (s, pid)
}

fn notify_pid(m: &raw::Msg) -> i32 {
    i32::from_be_bytes(m.body[..4].try_into().expect("pid"))
}

#[tokio::test]
async fn notifications_show_the_clients_own_pid_or_zero() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme"], 2, "auth_type = \"trust\"")).await;
    let (mut a, a_pid) = login(proxy.port).await;
    send_query(&mut a, "LISTEN chan").await;
    raw::send(&mut a, &raw::query("NOTIFY chan, 'own'")).await;
    let (msgs, _) = raw::read_to_ready(&mut a, "own notify").await;
    let own = msgs
        .iter()
        .find(|m| m.tag == b'A')
        .expect("own notification");
    assert_eq!(notify_pid(own), a_pid, "a sees the pid it was given");

    // Another client, on the other server connection, notifies a.
    let (mut b, _) = login(proxy.port).await;
    send_query(&mut b, "NOTIFY chan, 'other'").await;
    let other = loop {
        match raw::read_msg(&mut a, Duration::from_secs(10)).await {
            raw::Read::Msg(m) if m.tag == b'A' => break m,
            raw::Read::Msg(_) => continue,
            other => panic!("no notification: {other:?}"),
        }
    };
    assert_eq!(
        notify_pid(&other),
        0,
        "another session's real pid is hidden"
    );
}

async fn send_query(s: &mut tokio::net::TcpStream, sql: &str) {
    raw::send(s, &raw::query(sql)).await;
    raw::read_to_ready(s, sql).await;
}
