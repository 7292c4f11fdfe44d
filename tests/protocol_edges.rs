//! Extended-protocol edge cases through the proxy in transaction mode:
//! binary formats both ways, and a client that vanishes in the middle of a
//! pipeline of several Syncs (the next client must get a clean server).

mod common;

use bytes::{BufMut, BytesMut};
use common::{TestPg, TestProxy, raw};
use pgtenant::pgcluster::HostAuth;
use postgres_protocol::message::frontend;
use std::time::{Duration, Instant};

fn ext(sql: &str, params: &[i32], out: &mut BytesMut) {
    frontend::parse("", sql, std::iter::repeat_n(23, params.len()), out).expect("parse");
    frontend::bind(
        "",
        "",
        std::iter::repeat_n(1i16, params.len()), // binary parameters
        params.iter().copied(),
        |v, buf| {
            buf.put_i32(v);
            Ok(postgres_protocol::IsNull::No)
        },
        [1], // binary results
        out,
    )
    .map_err(|_| ())
    .expect("bind");
    frontend::execute("", 0, out).expect("execute");
    frontend::sync(out);
}

#[tokio::test]
async fn binary_parameters_and_results_pass_through() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme"], 1, "auth_type = \"trust\"")).await;
    let mut s = raw::login_trust(proxy.port, "acme").await;
    let mut out = BytesMut::new();
    ext("SELECT $1::int4 * 2", &[21], &mut out);
    raw::send(&mut s, &out).await;
    let (msgs, status) = raw::read_to_ready(&mut s, "binary round trip").await;
    assert_eq!(status, b'I');
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a DataRow");
    // One column, 4 bytes, big-endian 42: binary, as asked.
    assert_eq!(&row.body[..], &[0, 1, 0, 0, 0, 4, 0, 0, 0, 42]);
}

#[tokio::test]
async fn a_client_vanishing_mid_pipeline_leaves_a_clean_server() {
    let pg = TestPg::start(HostAuth::Trust, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(
        &["acme"],
        1,
        "auth_type = \"trust\"\nquery_wait_timeout = \"15s\"",
    ))
    .await;
    let mut s = raw::login_trust(proxy.port, "acme").await;
    let mut out = BytesMut::new();
    ext("SELECT $1::int4", &[1], &mut out);
    ext(
        "SELECT $1::int4 + length(pg_sleep(30)::text)",
        &[2],
        &mut out,
    );
    ext("SELECT $1::int4", &[3], &mut out);
    raw::send(&mut s, &out).await;
    // The first Sync's answer arrives, then the client is gone with two
    // Syncs (one of them running) still owed.
    let (_, status) = raw::read_to_ready(&mut s, "first of the pipeline").await;
    assert_eq!(status, b'I');
    drop(s);

    let started = Instant::now();
    let next = proxy.connect("acme").await;
    let rows = next
        .simple_query("SELECT 'clean'")
        .await
        .expect("the only server connection is handed over clean");
    let text = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row");
    assert_eq!(text, "clean");
    // The abandoned pg_sleep was cancelled rather than waited out.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
