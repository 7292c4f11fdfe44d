//! Read buffers are shared between clients (issue 19, point 6): a flow
//! takes one from its worker's spares when bytes arrive and gives it back
//! at rest, so the next client of that worker reads into memory that held
//! another tenant's query and rows. Attacked here over raw sockets on a
//! one-worker proxy: tenant A fills the buffers with a secret in both
//! directions (its query text and the row PostgreSQL sends back), then
//! tenant B, on the same worker, sends half frames, a frame split at every
//! byte, short frames and a frame that never completes. Nothing B or B's
//! server receives may hold a byte of A's, and B's rows must be exactly
//! what B asked for.

mod common;

use common::raw::{self, Msg};
use common::{TestPg, TestProxy};
use pgtenant::pgcluster::HostAuth;
use std::time::Duration;
use tokio::net::TcpStream;

const SECRET: &str = "ACME-PRIVATE-";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Everything `msgs` carried, asserting none of it is A's.
fn assert_clean(msgs: &[Msg], what: &str) {
    for m in msgs {
        assert!(
            !contains(&m.body, SECRET.as_bytes()),
            "{what}: tenant B received tenant A's bytes in a {:?} message",
            m.tag as char
        );
    }
}

/// The text of the first column of each DataRow in `msgs`.
fn first_columns(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| {
            let len = i32::from_be_bytes([m.body[2], m.body[3], m.body[4], m.body[5]]);
            String::from_utf8_lossy(&m.body[6..6 + len as usize]).into_owned()
        })
        .collect()
}

/// Sends `bytes` in pieces of `piece` bytes with a pause between them, so
/// the proxy reads each on its own into a (reused) buffer.
async fn send_in_pieces(s: &mut TcpStream, bytes: &[u8], piece: usize) {
    for chunk in bytes.chunks(piece) {
        raw::send(s, chunk).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_reused_read_buffer_never_shows_another_tenants_bytes() {
    let pg = TestPg::start(HostAuth::Trust, &["acme", "globex"]).await;
    let config = pg
        .config(&["acme", "globex"], 2, "auth_type = \"trust\"")
        .replace("workers = 2", "workers = 1");
    let proxy = TestProxy::start(&config).await;

    // A: a query text and a row that each nearly fill a 16 kB buffer,
    // and a pipelined pair, so both directions' buffers held A's bytes.
    let mut a = raw::login_trust(proxy.port, "acme").await;
    let long = SECRET.repeat(15_000 / SECRET.len());
    raw::send(&mut a, &raw::query(&format!("SELECT '{long}'"))).await;
    raw::read_to_ready(&mut a, "A's long query").await;
    raw::send(
        &mut a,
        &raw::query(&format!("SELECT repeat('{SECRET}', 1200)")),
    )
    .await;
    raw::read_to_ready(&mut a, "A's long row").await;
    let mut pipelined = raw::query(&format!("SELECT '{SECRET}1'"));
    pipelined.extend(raw::query(&format!("SELECT '{SECRET}2'")));
    raw::send(&mut a, &pipelined).await;
    raw::read_to_ready(&mut a, "pipelined 1").await;
    raw::read_to_ready(&mut a, "pipelined 2").await;
    // A stays connected and idle: its buffers are back with the worker.

    let mut b = raw::login_trust(proxy.port, "globex").await;

    // A short query in pieces of 3 bytes: each read lands at the front
    // of a buffer that held A's text.
    let mut got = Vec::new();
    send_in_pieces(&mut b, &raw::query("SELECT 'b-one'"), 3).await;
    got.extend(raw::read_to_ready(&mut b, "pieces").await.0);
    assert_eq!(first_columns(&got), ["b-one"]);

    // Split at every byte.
    send_in_pieces(&mut b, &raw::query("SELECT 'b-two', 2"), 1).await;
    let (msgs, _) = raw::read_to_ready(&mut b, "bytes").await;
    assert_eq!(first_columns(&msgs), ["b-two"]);
    got.extend(msgs);

    // A long row back, shorter than A's: nothing of A's past its end.
    raw::send(&mut b, &raw::query("SELECT repeat('b', 9000)")).await;
    let (msgs, _) = raw::read_to_ready(&mut b, "long row").await;
    assert_eq!(first_columns(&msgs), ["b".repeat(9000)]);
    got.extend(msgs);

    // Half a frame, then quiet: the proxy must wait for the rest, not
    // read past what arrived into stale memory.
    let frame = raw::query("SELECT 'b-three'");
    let (head, tail) = frame.split_at(frame.len() / 2);
    raw::send(&mut b, head).await;
    match raw::read_msg(&mut b, Duration::from_millis(300)).await {
        raw::Read::Timeout => {}
        other => panic!("half a frame got an answer: {other:?}"),
    }
    raw::send(&mut b, tail).await;
    let (msgs, _) = raw::read_to_ready(&mut b, "completed frame").await;
    assert_eq!(first_columns(&msgs), ["b-three"]);
    got.extend(msgs);

    // Still in step with its own server: had stale bytes reached it, an
    // extra reply (with A's row) would be read here instead.
    raw::send(&mut b, &raw::query("SELECT current_database()")).await;
    let (msgs, _) = raw::read_to_ready(&mut b, "where am I").await;
    assert_eq!(first_columns(&msgs), ["tenant_globex"]);
    got.extend(msgs);
    assert_clean(&got, "B's replies");

    // A is unharmed and still sees its own bytes.
    raw::send(&mut a, &raw::query(&format!("SELECT '{SECRET}again'"))).await;
    let (msgs, _) = raw::read_to_ready(&mut a, "A again").await;
    assert_eq!(first_columns(&msgs), [format!("{SECRET}again")]);
}
