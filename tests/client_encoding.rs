//! `client_encoding` as the client is told it: PostgreSQL's canonical name
//! (`UTF8`, `EUC_JP`), never the client's spelling (`utf-8`, `euc-jp`);
//! psycopg compares it. Raw startup packets, no driver.

mod common;

use common::raw::{self, Msg};
use common::{TestPg, TestProxy};
use pgtenant::pgcluster::HostAuth;

/// The values of every `client_encoding` ParameterStatus in `msgs`.
fn reported_encodings(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'S')
        .filter_map(|m| {
            let mut parts = m.body.split(|&b| b == 0);
            let name = parts.next()?;
            let value = parts.next()?;
            (name == b"client_encoding").then(|| String::from_utf8_lossy(value).into_owned())
        })
        .collect()
}

/// The first column of the first DataRow.
fn first_value(msgs: &[Msg]) -> Option<String> {
    let row = msgs.iter().find(|m| m.tag == b'D')?;
    let len = i32::from_be_bytes(row.body.get(2..6)?.try_into().ok()?);
    let bytes = row.body.get(6..6 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

#[tokio::test]
async fn client_encoding_is_reported_with_the_servers_spelling() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme"], 2, "auth_type = \"trust\"")).await;

    for (asked, canonical) in [
        ("utf-8", "UTF8"),
        ("euc-jp", "EUC_JP"),
        ("Latin-1", "LATIN1"),
        ("UNICODE", "UNICODE"), // kept as spelled, as PostgreSQL does
    ] {
        let mut s = raw::connect(proxy.port).await;
        raw::send(
            &mut s,
            &raw::startup(
                3,
                0,
                &[
                    ("user", "app.acme"),
                    ("database", "acme"),
                    ("client_encoding", asked),
                ],
            ),
        )
        .await;
        let (login, _) = raw::read_to_ready(&mut s, asked).await;
        assert_eq!(
            reported_encodings(&login),
            vec![canonical.to_string()],
            "at login, for {asked}"
        );

        // The first query leases a server connection and syncs the
        // setting; whatever the server reports then must agree.
        raw::send(&mut s, &raw::query("SHOW client_encoding")).await;
        let (reply, _) = raw::read_to_ready(&mut s, "SHOW").await;
        for value in reported_encodings(&reply) {
            assert_eq!(value, canonical, "reported later, for {asked}");
        }
        assert_eq!(first_value(&reply).as_deref(), Some(canonical), "{asked}");
    }

    // A name PostgreSQL refuses is refused at startup, as PostgreSQL does.
    let mut s = raw::connect(proxy.port).await;
    raw::send(
        &mut s,
        &raw::startup(
            3,
            0,
            &[
                ("user", "app.acme"),
                ("database", "acme"),
                ("client_encoding", "no-such-encoding"),
            ],
        ),
    )
    .await;
    let e = raw::expect_error_then_close(&mut s, "22023", "unknown encoding").await;
    assert!(e.message().contains("client_encoding"), "{:?}", e.fields());
}
