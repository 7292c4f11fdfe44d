//! PROXY protocol (v2, and v1's text line) from a load balancer in
//! `proxy.proxy_protocol_networks` (issue 20, point 6): the client its
//! header names is the one the login limits, SHOW CLIENTS and the logs
//! see; a header from anyone else, a balancer without one, and broken
//! or half-sent headers are refused, and the proxy goes on serving.
//! These clients are raw sockets on 127.0.0.1 that play the balancer:
//! they write a header with a forged source, then speak PostgreSQL
//! (tokio-postgres over the same socket, SCRAM included).

mod common;

use common::http::wait_healthy;
use common::live::LiveProxy;
use common::raw;
use common::{Child, TestPg, sqlstate};
use pgtenant::pgcluster::{HostAuth, free_port};
use pgtenant::protocol::{proxy_header, proxy_v1};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const ADMIN: &str = "admin-pw-proxy-v2";

fn config(pg: &TestPg, networks: &str, extra: &str) -> String {
    pg.config(
        &["acme"],
        2,
        &format!("proxy_protocol_networks = {networks}\n{extra}"),
    ) + &format!("[admin]\nusers = {{ admin = \"{ADMIN}\" }}\n")
}

/// `config` with a `[tls]` section (a certificate for `proxy.test` from a
/// test CA made in `dir`, and `extra` lines), and that CA.
fn with_tls(config: String, dir: &std::path::Path, extra: &str) -> (common::tls::TestCa, String) {
    let ca = common::tls::TestCa::new(dir);
    let cert = ca.issue("proxy", &["proxy.test"]);
    let config = config
        + &format!(
            "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
            cert.cert.display(),
            cert.key.display()
        );
    (ca, config)
}

/// Logs in over a socket that first sends `header`.
async fn login_after(
    port: u16,
    header: &[u8],
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(header).await.expect("send the header");
    let cfg: tokio_postgres::Config = format!("user={user} password={password} dbname={db}")
        .parse()
        .expect("config");
    let (client, conn) = cfg.connect_raw(s, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A header relaying `forged` to the proxy on `port`.
fn relaying(forged: &str, port: u16) -> Vec<u8> {
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    proxy_header::encode(forged.parse().expect("forged"), dst, &[])
}

async fn acme_from(
    port: u16,
    forged: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    login_after(port, &relaying(forged, port), "app.acme", password, "acme").await
}

/// SHOW CLIENTS rows as (tenant, addr, port).
async fn clients(console: &Client) -> Vec<(String, String, String)> {
    let rows = console
        .simple_query("SHOW CLIENTS")
        .await
        .expect("SHOW CLIENTS");
    rows.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get("tenant")?.to_string(),
                r.get("addr")?.to_string(),
                r.get("port")?.to_string(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_trusted_balancers_client_is_the_one_shown() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = LiveProxy::start(&config(&pg, "[\"127.0.0.1/32\"]", "")).await;
    let port = proxy.port;

    let acme = acme_from(port, "203.0.113.7:40001", "acme-secret")
        .await
        .expect("a relayed client logs in with SCRAM");
    acme.simple_query("SELECT 1").await.expect("query");
    let console = login_after(
        port,
        &relaying("[2001:db8::5]:5555", port),
        "admin",
        ADMIN,
        "pgtenant",
    )
    .await
    .expect("the console through the balancer");
    let seen = clients(&console).await;
    assert!(
        seen.contains(&("acme".into(), "203.0.113.7".into(), "40001".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("pgtenant".into(), "2001:db8::5".into(), "5555".into())),
        "{seen:?}"
    );

    // A v1 line names its client the same way.
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let v1 = login_after(
        port,
        &proxy_v1::encode("198.51.100.4:40404".parse().expect("addr"), dst),
        "app.acme",
        "acme-secret",
        "acme",
    )
    .await
    .expect("a client relayed by a v1 line logs in");
    let seen = clients(&console).await;
    assert!(
        seen.contains(&("acme".into(), "198.51.100.4".into(), "40404".into())),
        "{seen:?}"
    );
    drop(v1);

    // A health check (LOCAL) keeps the socket's own address.
    let local = login_after(
        port,
        &proxy_header::encode_local(),
        "app.acme",
        "acme-secret",
        "acme",
    )
    .await
    .expect("LOCAL logs in");
    let seen = clients(&console).await;
    assert!(
        seen.iter().any(|(t, a, _)| t == "acme" && a == "127.0.0.1"),
        "{seen:?}"
    );
    drop(local);

    // The balancer's own address must send a header.
    let e = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app.acme password=acme-secret dbname=acme"),
        NoTls,
    )
    .await
    .map(|_| ())
    .expect_err("no header from a listed balancer");
    assert_eq!(sqlstate(&e), "08P01", "{e}");
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("expected a PROXY protocol")),
        "{message:?}"
    );
    // Nothing counted against the balancer's address is left behind.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.state.unauthenticated.total(), 0);
    acme.simple_query("SELECT 1").await.expect("still served");
}

#[tokio::test]
async fn failed_logins_are_limited_per_relayed_address() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = LiveProxy::start(&config(
        &pg,
        "[\"127.0.0.0/8\"]",
        "auth_failure_limit = 2\nauth_failure_window = \"1m\"\nauth_ban_time = \"1m\"",
    ))
    .await;
    let port = proxy.port;
    for _ in 0..2 {
        let e = acme_from(port, "198.51.100.66:1000", "guess")
            .await
            .expect_err("a guess");
        assert_eq!(sqlstate(&e), "28P01");
    }
    let e = acme_from(port, "198.51.100.66:1001", "acme-secret")
        .await
        .expect_err("this address is banned");
    assert_eq!(sqlstate(&e), "28000", "{e}");
    // Another client behind the same balancer is not.
    let other = acme_from(port, "198.51.100.77:1000", "acme-secret")
        .await
        .expect("another relayed address logs in");
    other.simple_query("SELECT 1").await.expect("query");
    let (bans, refused) = proxy.state.failed_logins.totals();
    assert_eq!((bans, refused), (1, 1));
}

#[tokio::test]
async fn a_header_from_an_untrusted_peer_is_refused() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = LiveProxy::start(&config(&pg, "[\"10.0.0.0/8\"]", "")).await;
    let port = proxy.port;
    let mut s = raw::connect(port).await;
    let mut sent = relaying("203.0.113.7:40001", port);
    sent.extend(raw::startup(
        3,
        0,
        &[("user", "app.acme"), ("database", "acme")],
    ));
    raw::send(&mut s, &sent).await;
    let e = raw::expect_error_then_close(&mut s, "08P01", "untrusted header").await;
    assert!(e.message().contains("not allowed"), "{:?}", e.fields());
    // A peer that is not a balancer needs no header.
    proxy
        .connect("acme")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("plain client");
}

#[tokio::test]
async fn broken_headers_are_refused_and_others_served() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = LiveProxy::start(&config(
        &pg,
        "[\"127.0.0.1\"]",
        "client_startup_timeout = \"1s\"",
    ))
    .await;
    let port = proxy.port;
    let good = relaying("203.0.113.7:40001", port);

    let mut bad_family = good.clone();
    bad_family[13] = 0x51;
    let mut oversized = good[..16].to_vec();
    oversized[14..16].copy_from_slice(&4000u16.to_be_bytes());
    let mut bad_tlv = good.clone();
    bad_tlv[15] += 2;
    bad_tlv.extend_from_slice(&[0xEA, 0x00]);
    for (sent, why) in [
        (bad_family, "family"),
        (oversized, "at most 512"),
        (bad_tlv, "TLV"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(), "v1"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec(), "v1"),
        (
            [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat(),
            "107 bytes",
        ),
        (b"\r\n\r\n\0\r\nQUIX\n".to_vec(), "expected a PROXY"),
    ] {
        let mut s = raw::connect(port).await;
        raw::send(&mut s, &sent).await;
        let e = raw::expect_error_then_close(&mut s, "08P01", why).await;
        assert!(e.message().contains(why), "{why}: {:?}", e.fields());
    }

    // Half a header, then silence: the startup timeout ends it.
    let mut stalled = raw::connect(port).await;
    raw::send(&mut stalled, &good[..20]).await;
    // Half a header, then gone.
    let mut gone = raw::connect(port).await;
    raw::send(&mut gone, &good[..10]).await;
    drop(gone);
    let started = Instant::now();
    // Served meanwhile.
    acme_from(port, "203.0.113.8:1", "acme-secret")
        .await
        .expect("a good client while others stall")
        .simple_query("SELECT 1")
        .await
        .expect("query");
    let e = raw::expect_error_then_close(&mut stalled, "08P01", "stalled header").await;
    assert!(
        e.message().contains("client_startup_timeout"),
        "{:?}",
        e.fields()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        proxy.state.unauthenticated.total(),
        0,
        "nothing left counted"
    );
}

/// The header comes before any TLS: an SSLRequest and a direct TLS hello
/// follow it on the same socket, and the relayed client is the one shown.
#[tokio::test]
async fn tls_follows_the_header() {
    use tokio_postgres::config::{SslMode, SslNegotiation};
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, config) = with_tls(config(&pg, "[\"127.0.0.1\"]", ""), dir.path(), "");
    let proxy = LiveProxy::start(&config).await;
    let port = proxy.port;
    let mut held = Vec::new();
    for (forged, negotiation) in [
        ("203.0.113.30:3000", SslNegotiation::Postgres),
        ("203.0.113.31:3001", SslNegotiation::Direct),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(&relaying(forged, port)).await.expect("header");
        let mut cfg: tokio_postgres::Config = "user=app.acme password=acme-secret dbname=acme"
            .parse()
            .expect("config");
        cfg.ssl_mode(SslMode::Require).ssl_negotiation(negotiation);
        let (client, conn) = cfg
            .connect_raw(s, ca.connector("proxy.test"))
            .await
            .unwrap_or_else(|e| panic!("{negotiation:?} TLS after the header: {e}"));
        tokio::spawn(conn);
        client
            .simple_query("SELECT 1")
            .await
            .expect("query over TLS");
        held.push(client);
    }
    let console = login_after(
        port,
        &relaying("203.0.113.32:1", port),
        "admin",
        ADMIN,
        "pgtenant",
    )
    .await
    .expect("console");
    let seen = clients(&console).await;
    for (addr, port) in [("203.0.113.30", "3000"), ("203.0.113.31", "3001")] {
        assert!(
            seen.contains(&("acme".into(), addr.into(), port.into())),
            "{seen:?}"
        );
    }
}

/// The per-address cap on logins in flight counts each relayed client,
/// not the balancer: three clients behind it stall, and only the one
/// address over the cap is refused.
#[tokio::test]
async fn the_per_address_login_cap_counts_relayed_clients() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = LiveProxy::start(&config(
        &pg,
        "[\"127.0.0.1\"]",
        "max_unauthenticated_per_address = 2",
    ))
    .await;
    let port = proxy.port;
    let counts = std::sync::Arc::clone(&proxy.state.unauthenticated);
    let from = move |ip: &str| counts.from_address(ip.parse().expect("ip"));
    let mut stalled = Vec::new();
    for (forged, ip, n) in [
        ("203.0.113.1:1", "203.0.113.1", 1),
        ("203.0.113.1:2", "203.0.113.1", 2),
        ("203.0.113.2:1", "203.0.113.2", 1),
    ] {
        let mut s = raw::connect(port).await;
        raw::send(&mut s, &relaying(forged, port)).await;
        stalled.push(s);
        // Two workers: wait until this header is read before the next.
        let started = Instant::now();
        while from(ip) < n {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{forged} never counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut third = raw::connect(port).await;
    raw::send(&mut third, &relaying("203.0.113.1:3", port)).await;
    let e = raw::expect_error_then_close(&mut third, "53300", "third from one address").await;
    assert!(
        e.message().contains("from this address"),
        "{:?}",
        e.fields()
    );
    assert_eq!(from("203.0.113.1"), 2);
    acme_from(port, "203.0.113.2:2", "acme-secret")
        .await
        .expect("the other address still logs in");
    drop(stalled);
}

/// The real binary's JSON logs name the relayed client as the
/// connection's `peer` and the balancer as `via`.
#[tokio::test]
async fn logs_name_the_relayed_client() {
    use std::io::Read;
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let (port, admin) = (free_port().expect("port"), free_port().expect("port"));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(&pg, "[\"127.0.0.1\"]", "")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            "[admin]\n",
            &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
        );
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .args(["--log-format", "json", "-c"])
            .arg(&path)
            .env("PGTENANT_LOG", "debug")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start pgtenant"),
    );
    let mut stderr = child.0.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    tokio::time::timeout(Duration::from_secs(30), wait_healthy(admin))
        .await
        .expect("the proxy starts");
    let c = acme_from(port, "203.0.113.9:40009", "acme-secret")
        .await
        .expect("relayed login");
    c.simple_query("SELECT 1").await.expect("query");
    drop(c);
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    while child.0.try_wait().expect("wait").is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "no exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = reader.join().expect("stderr reader");
    let relayed = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| {
            v["span"]["name"] == "client"
                && v["span"]["peer"] == "203.0.113.9:40009"
                && v["span"]["tenant"] == "acme"
                && v["span"]["via"]
                    .as_str()
                    .is_some_and(|via| via.starts_with("127.0.0.1:"))
        });
    assert!(relayed, "no client line with the relayed peer: {logs}");
    // The balancer is never named as the peer of a relayed connection.
    for line in logs.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["span"]["via"].is_string() {
            assert_ne!(
                v["span"]["peer"].as_str().map(|p| p.starts_with("127.")),
                Some(true),
                "{line}"
            );
        }
    }
}

/// A balancer that ended TLS passes the client's server name in its
/// header's authority TLV: the `sni` source routes by it (with
/// `sni_suffix`), so a plaintext connection from the balancer finds its
/// tenant with no tenant in the user name or database. Without the TLV
/// the same login falls to the database name, which is no tenant
/// (3D000); a malformed TLV is refused before the startup packet (08P01).
#[tokio::test]
async fn the_balancers_authority_is_the_server_name_that_routes() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = LiveProxy::start(&config(
        &pg,
        "[\"127.0.0.1/32\"]",
        "sni_suffix = \"db.example.com\"",
    ))
    .await;
    let port = proxy.port;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let src: SocketAddr = "203.0.113.7:40001".parse().expect("addr");
    let with_authority = |name: &[u8]| {
        let mut tlv = vec![0x02];
        tlv.extend_from_slice(&(name.len() as u16).to_be_bytes());
        tlv.extend_from_slice(name);
        proxy_header::encode(src, dst, &tlv)
    };
    let expected: String = acme_from(port, "203.0.113.7:40000", "acme-secret")
        .await
        .expect("acme by its user name")
        .query_one("SELECT current_database()", &[])
        .await
        .expect("query")
        .get(0);

    let acme = login_after(
        port,
        &with_authority(b"ACME.db.example.com"),
        "app",
        "acme-secret",
        "app",
    )
    .await
    .expect("routed by the relayed server name");
    let got = acme
        .query_one("SELECT current_database()", &[])
        .await
        .expect("query")
        .get::<_, String>(0);
    assert_eq!(got, expected);

    let e = login_after(
        port,
        &relaying("203.0.113.7:40002", port),
        "app",
        "acme-secret",
        "app",
    )
    .await
    .expect_err("no tenant without the authority");
    assert_eq!(sqlstate(&e), "3D000", "{e:?}");
    let e = login_after(
        port,
        &with_authority(b"acme db"),
        "app",
        "acme-secret",
        "app",
    )
    .await
    .expect_err("a malformed authority");
    assert_eq!(sqlstate(&e), "08P01", "{e:?}");
}

/// With `[tls] require`, a plaintext connection from a listed balancer
/// is taken when its header's SSL TLV says the client reached the
/// balancer over TLS (the balancer ended it); without that TLV, or with
/// its TLS bit clear, it is refused before any password (28000).
#[tokio::test]
async fn a_balancer_that_ended_tls_satisfies_require() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ca, config) = with_tls(
        config(&pg, "[\"127.0.0.1\"]", ""),
        dir.path(),
        "require = true",
    );
    let proxy = LiveProxy::start(&config).await;
    let port = proxy.port;
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let src: SocketAddr = "203.0.113.40:4000".parse().expect("addr");
    let ssl_tlv = |client: u8| vec![0x20, 0, 5, client, 0, 0, 0, 0];
    let acme = login_after(
        port,
        &proxy_header::encode(src, dst, &ssl_tlv(0x01)),
        "app.acme",
        "acme-secret",
        "acme",
    )
    .await
    .expect("the balancer ended the client's TLS");
    acme.simple_query("SELECT 1").await.expect("query");
    // SHOW CLIENTS says who ended its TLS.
    let console = login_after(
        port,
        &proxy_header::encode(src, dst, &ssl_tlv(0x01)),
        "admin",
        ADMIN,
        "pgtenant",
    )
    .await
    .expect("the console through the balancer");
    let listed = console
        .simple_query("SHOW CLIENTS")
        .await
        .expect("SHOW CLIENTS");
    let acme_tls = listed.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get("tenant") == Some("acme") => {
            Some(r.get("tls").map(str::to_string))
        }
        _ => None,
    });
    assert_eq!(
        acme_tls,
        Some(Some("ended by the load balancer".to_string()))
    );
    for header in [
        proxy_header::encode(src, dst, &[]),
        proxy_header::encode(src, dst, &ssl_tlv(0x02)),
    ] {
        let e = login_after(port, &header, "app.acme", "acme-secret", "acme")
            .await
            .expect_err("plaintext all the way");
        assert_eq!(sqlstate(&e), "28000", "{e:?}");
    }
}
