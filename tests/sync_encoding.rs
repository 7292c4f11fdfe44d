//! The settings sync is SQL the proxy builds from a client's values. On a
//! server connection left in an encoding whose multibyte characters may
//! end in a backslash (SJIS), an escaped value must not be able to end its
//! literal early and run SQL of the client's choosing, unseen by the
//! proxy's checks.

mod common;

use common::{TestPg, TestProxy, backend_user, raw};
use pgtenant::pgcluster::HostAuth;
use tokio_postgres::SimpleQueryMessage;

/// Logs in with these extra startup settings; runs one query; leaves.
async fn session(port: u16, extra: &[(&str, &str)]) {
    let mut s = raw::connect(port).await;
    let mut params = vec![("user", "app.acme"), ("database", "acme")];
    params.extend_from_slice(extra);
    raw::send(&mut s, &raw::startup(3, 0, &params)).await;
    raw::read_to_ready(&mut s, "login").await;
    raw::send(&mut s, &raw::query("SELECT 1")).await;
    // The sync may fail (then the server says so): either way, no SQL of
    // the client's may have run.
    let _ = raw::read_msg(&mut s, std::time::Duration::from_secs(10)).await;
    raw::send(&mut s, &raw::frame(b'X', b"")).await;
    let _ = raw::read_until_closed(&mut s, std::time::Duration::from_secs(10)).await;
}

#[tokio::test]
async fn an_escaped_value_cannot_break_out_of_the_sync_in_sjis() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme"], 1, "auth_type = \"trust\"")).await;
    // First a client that leaves its connection in SJIS, with backslash
    // quotes allowed (PostgreSQL refuses `\'` in client-only encodings
    // unless backslash_quote = on, which any client may set).
    session(
        proxy.port,
        &[("client_encoding", "SJIS"), ("backslash_quote", "on")],
    )
    .await;
    // Then one whose value is U+0441 (bytes D1 81) and a backslash: in
    // SJIS, 0x81 0x5C is one character, so the doubled backslash would
    // leave a single one to escape the closing quote.
    let payload = "\u{441}\\', false); SELECT pg_catalog.pg_advisory_lock(7); --";
    session(
        proxy.port,
        &[
            ("client_encoding", "SJIS"),
            ("backslash_quote", "on"),
            ("app.x", payload),
        ],
    )
    .await;
    // The connection the injection would have run on: no lock on it.
    let c = proxy.connect("acme").await;
    let rows = c
        .simple_query(
            "SELECT pg_catalog.count(*)::pg_catalog.text FROM pg_catalog.pg_locks \
             WHERE locktype OPERATOR(pg_catalog.=) 'advisory'",
        )
        .await
        .expect("check");
    let locks = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(
        locks.as_deref(),
        Some("0"),
        "SQL smuggled into the settings sync ran as {}",
        backend_user("acme")
    );
}
