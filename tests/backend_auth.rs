//! What a placement's server may ask for (issue 20, point 5,
//! `require_auth`): by default SCRAM-SHA-256 only. A server, or anyone on
//! the path who answers in its place, that asks for the password in clear
//! or as md5, or lets the proxy in without asking, is refused before the
//! password leaves the proxy. Fake servers on raw sockets record what the
//! proxy sends them; real clusters show the allowances work.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "placement-password-never-in-clear";

/// What the fake server asks for after the startup packet.
#[derive(Clone, Copy, Debug)]
enum Ask {
    Cleartext,
    Md5,
    /// AuthenticationOk at once, then ReadyForQuery: "trust".
    Nothing,
    /// SASL offered, then AuthenticationOk without the exchange.
    SaslThenOk,
}

/// A server that answers every connection with `ask` and records all
/// the proxy sends it afterwards.
async fn fake_server(ask: Ask) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                // An SSLRequest (sslmode=prefer) is declined; then the
                // StartupMessage.
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut packet =
                        vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                    if s.read_exact(&mut packet).await.is_err() {
                        return;
                    }
                    if packet != [4, 210, 22, 47] {
                        break;
                    }
                    let _ = s.write_all(b"N").await;
                }
                let reply: Vec<u8> = match ask {
                    Ask::Cleartext => b"R\0\0\0\x08\0\0\0\x03".to_vec(),
                    Ask::Md5 => b"R\0\0\0\x0c\0\0\0\x05salt".to_vec(),
                    Ask::Nothing => b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I".to_vec(),
                    Ask::SaslThenOk => {
                        let mut r = b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0".to_vec();
                        r.extend_from_slice(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I");
                        r
                    }
                };
                let _ = s.write_all(&reply).await;
                let mut got = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got)).await;
                let _ = tx.send(got);
            });
        }
    });
    (port, rx)
}

fn config(pg: &TestPg, fake_port: u16, require_auth: &str) -> String {
    let mut config = pg.config(&["acme"], 2, "server_connect_timeout = \"2s\"");
    config.push_str(&format!(
        "[placements.fake_db]\nurl = \"postgres://pgt_fake:{PASSWORD}@127.0.0.1:{fake_port}/db{require_auth}\"\n\
         isolation = \"database\"\npool_size = 2\ntrust_backend_role = true\n\n\
         [tenants.fake]\nplacement = \"fake_db\"\nusers = {{ app = \"fake-secret\" }}\n\n"
    ));
    config
}

/// By default nothing but SCRAM gets an answer: the password (plain or
/// md5-hashed) never reaches a server that asks for it the weak way, and
/// a server that asks for nothing, or skips the SCRAM exchange it
/// offered, is not taken. The client hears 08006; the real tenant is
/// served throughout.
#[tokio::test]
async fn weaker_authentication_is_refused_before_the_password_leaves() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    for ask in [Ask::Cleartext, Ask::Md5, Ask::Nothing, Ask::SaslThenOk] {
        let (port, mut sent) = fake_server(ask).await;
        let proxy = TestProxy::start(&config(&pg, port, "")).await;
        let err = proxy
            .try_connect(&proxy.conn_str("app.fake", "fake-secret", "fake"))
            .await
            .err()
            .unwrap_or_else(|| panic!("{ask:?}: the placement must be refused"));
        assert_eq!(sqlstate(&err), "08006", "{ask:?}: {err}");
        let acme = proxy.connect("acme").await;
        acme.simple_query("SELECT 1").await.expect("acme is served");
        // Everything the proxy sent after the server's request.
        let mut everything = Vec::new();
        while let Ok(Some(bytes)) = tokio::time::timeout(Duration::from_secs(5), sent.recv()).await
        {
            everything.extend(bytes);
            if sent.is_empty() {
                break;
            }
        }
        let text = String::from_utf8_lossy(&everything);
        assert!(
            !text.contains(PASSWORD),
            "{ask:?}: the password was sent: {text:?}"
        );
        // (SCRAM's first message carries no secret: only the weak
        // requests must go unanswered.)
        if !matches!(ask, Ask::SaslThenOk) {
            assert!(
                !everything.starts_with(b"p"),
                "{ask:?}: the proxy answered the request: {text:?}"
            );
        }
        proxy.stop().await.expect("stop");
    }
}

/// The check is what stops the leak: allowed, the same cleartext request
/// gets the password (what the default refuses to send).
#[tokio::test]
async fn an_allowed_cleartext_request_gets_the_password() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let (port, mut sent) = fake_server(Ask::Cleartext).await;
    let proxy = TestProxy::start(&config(&pg, port, "?require_auth=password")).await;
    let _ = proxy
        .try_connect(&proxy.conn_str("app.fake", "fake-secret", "fake"))
        .await;
    let got = tokio::time::timeout(Duration::from_secs(10), sent.recv())
        .await
        .expect("the fake server heard back")
        .expect("bytes");
    assert!(
        String::from_utf8_lossy(&got).contains(PASSWORD),
        "allowed, the password goes: {got:?}"
    );
}

/// Real servers: a trust cluster is refused by default and served with
/// `require_auth=none`; an md5 cluster likewise with `require_auth=md5`;
/// SCRAM needs nothing.
#[tokio::test]
async fn real_servers_are_served_as_allowed() {
    for (auth, allowance) in [(HostAuth::Trust, "none"), (HostAuth::Md5, "md5")] {
        let pg = TestPg::start(auth, &["acme"]).await;
        let strict = pg
            .config(&["acme"], 2, "")
            .replace(&format!("?require_auth={allowance}"), "");
        assert!(!strict.contains("require_auth"), "{strict}");
        let proxy = TestProxy::start(&strict).await;
        let err = proxy
            .try_connect(&proxy.conn_str("app.acme", "acme-secret", "acme"))
            .await
            .err()
            .unwrap_or_else(|| panic!("{auth:?}: refused without the allowance"));
        assert_eq!(sqlstate(&err), "08006", "{auth:?}: {err}");
        proxy.stop().await.expect("stop");

        let allowed = pg.config(&["acme"], 2, "");
        assert!(allowed.contains(&format!("require_auth={allowance}")));
        let proxy = TestProxy::start(&allowed).await;
        let acme = proxy.connect("acme").await;
        acme.simple_query("SELECT 1").await.expect("served");
        proxy.stop().await.expect("stop");
    }
}
