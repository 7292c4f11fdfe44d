//! Many clients at once on small pools, each behaving in its own seeded
//! way: drivers checking that what they get is theirs, pipelined batches
//! written in random pieces, slow readers, clients that leave mid-result,
//! mid-message or mid-transaction, cancels, and clients that stop reading.
//! Through all of it every well-behaved client gets exactly its own
//! answers and settings, a client that stops reading is disconnected
//! within its limit, and afterwards a newcomer is served at once and no
//! placement holds more server connections than its pool size.
//!
//! It exists because the bugs it aims at live between features: a lost
//! wake-up found by CI (`client_memory`'s slow reader) came from a send
//! left over at the end of a result meeting the wait for the next
//! request.

mod common;

use common::{TestPg, TestProxy, raw};
use pgtenant::pgcluster::HostAuth;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TENANTS: [&str; 2] = ["acme", "globex"];
const POOL: u32 = 4;

/// A small deterministic generator (xorshift64*) per client.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % (hi - lo + 1)
    }

    async fn pause(&mut self, max_ms: u64) {
        tokio::time::sleep(Duration::from_millis(self.range(0, max_ms))).await;
    }
}

#[tokio::test]
async fn many_misbehaving_clients_at_once() {
    let pg = TestPg::start(HostAuth::Trust, &TENANTS).await;
    let proxy = TestProxy::start(&pg.config(
        &TENANTS,
        POOL,
        "auth_type = \"trust\"\nclient_read_timeout = \"2s\"\nclient_message_timeout = \"2s\"\nquery_wait_timeout = \"60s\"",
    ))
    .await;
    let port = proxy.port;
    let mut tasks = tokio::task::JoinSet::new();
    let mut seed = 0u64;
    for tenant in TENANTS {
        for _ in 0..3 {
            seed += 1;
            tasks.spawn(checker(port, tenant, seed));
        }
        for _ in 0..2 {
            seed += 1;
            tasks.spawn(pipeliner(port, tenant, seed));
        }
        for _ in 0..3 {
            seed += 1;
            tasks.spawn(slow_reader(port, tenant, seed));
        }
        seed += 1;
        tasks.spawn(leaver(port, tenant, seed));
        seed += 1;
        let watcher = pg.cluster.admin("postgres").await.expect("admin");
        tasks.spawn(canceler(port, tenant, seed, watcher));
        seed += 1;
        tasks.spawn(staller(port, tenant, seed));
    }
    let all = async {
        while let Some(done) = tasks.join_next().await {
            done.expect("a client failed");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("every client finished");

    // Afterwards: a newcomer is served at once, and no placement holds
    // more than its pool.
    for tenant in TENANTS {
        let started = Instant::now();
        let c = proxy.connect(tenant).await;
        let row = c.query_one("SELECT 1", &[]).await.expect("newcomer");
        assert_eq!(row.get::<_, i32>(0), 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{tenant}: the newcomer waited {:?}",
            started.elapsed()
        );
    }
    // (A backend whose connection the proxy closed may take a moment to
    // notice and exit.)
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    for tenant in TENANTS {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&format!("tenant_{tenant}")],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if n <= i64::from(POOL) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tenant}: {n} server connections"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A driver that checks, transaction after transaction, that what it gets
/// is its own: its database, its setting, its value; sometimes inside an
/// explicit transaction of several statements.
async fn checker(port: u16, tenant: &'static str, seed: u64) {
    let mut rng = Rng::new(seed);
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app.{tenant} dbname={tenant}"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("checker connects");
    tokio::spawn(conn);
    let name = format!("chaos-{seed}");
    c.batch_execute(&format!("SET application_name = '{name}'"))
        .await
        .expect("set");
    let check = c
        .prepare("SELECT current_setting('application_name'), current_database(), $1::int4")
        .await
        .expect("prepare");
    for _ in 0..30 {
        let n = rng.range(0, 1 << 30) as i32;
        let in_txn = rng.range(0, 3) == 0;
        if in_txn {
            c.batch_execute("BEGIN").await.expect("begin");
        }
        let row = c.query_one(&check, &[&n]).await.expect("check");
        assert_eq!(row.get::<_, String>(0), name, "{tenant}: another's setting");
        assert_eq!(row.get::<_, String>(1), format!("tenant_{tenant}"));
        assert_eq!(row.get::<_, i32>(2), n, "{tenant}: another's answer");
        if in_txn {
            let row = c.query_one(&check, &[&(n ^ 1)]).await.expect("check");
            assert_eq!(row.get::<_, i32>(2), n ^ 1);
            // Blocks, and so times the test out, if a leaver's open
            // transaction (it locks this table) outlived its client.
            let rows = c
                .query_one("SELECT count(*) FROM notes", &[])
                .await
                .expect("notes");
            assert_eq!(rows.get::<_, i64>(0), 2);
            c.batch_execute("COMMIT").await.expect("commit");
        }
        rng.pause(30).await;
    }
}

/// Writes `bytes` in pieces of random sizes, pausing between some.
async fn write_in_pieces(s: &mut TcpStream, bytes: &[u8], rng: &mut Rng) {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + rng.range(1, 4096) as usize).min(bytes.len());
        s.write_all(&bytes[at..end]).await.expect("write");
        at = end;
        if rng.range(0, 7) == 0 {
            rng.pause(20).await;
        }
    }
}

/// Extended-protocol batches of up to 300 statements, each its own
/// transaction (Parse, Bind, Execute, Sync), written in random pieces;
/// every answer must come back, in order.
async fn pipeliner(port: u16, tenant: &'static str, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut s = raw::login_trust(port, tenant).await;
    for _ in 0..5 {
        let k = rng.range(1, 300);
        let mut batch = Vec::new();
        let mut want = Vec::new();
        for _ in 0..k {
            let v = rng.range(0, 1 << 30);
            want.push(v.to_string());
            let mut parse = format!("\0SELECT {v}::int4\0").into_bytes();
            parse.extend_from_slice(&[0, 0]);
            batch.extend(raw::frame(b'P', &parse));
            batch.extend(raw::frame(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
            batch.extend(raw::frame(b'E', &[0, 0, 0, 0, 0]));
            batch.extend(raw::frame(b'S', &[]));
        }
        write_in_pieces(&mut s, &batch, &mut rng).await;
        let mut got = Vec::new();
        for _ in 0..k {
            let (msgs, _) = raw::read_to_ready(&mut s, "pipelined batch").await;
            for m in msgs.iter().filter(|m| m.tag == b'D') {
                // One column: count (2), length (4), the text.
                got.push(String::from_utf8_lossy(&m.body[6..]).into_owned());
            }
        }
        assert_eq!(got, want, "{tenant}: pipelined answers");
        rng.pause(50).await;
    }
}

/// Reads results of 1-5 MB in gulps of 64 kB with pauses shorter than
/// the read limit (the proxy waits on it most of the time, its socket
/// full), and must get every row and the end of each result.
async fn slow_reader(port: u16, tenant: &'static str, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut s = raw::login_trust(port, tenant).await;
    let mut chunk = vec![0u8; 64 << 10];
    for _ in 0..5 {
        let rows = rng.range(1_000, 5_000);
        raw::send(
            &mut s,
            &raw::query(&format!(
                "SELECT repeat('x', 1000) FROM generate_series(1, {rows})"
            )),
        )
        .await;
        let (mut held, mut data_rows, mut since_pause) = (Vec::new(), 0, 0usize);
        'result: loop {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("{tenant}: the end of a slow read never came"))
                .expect("read");
            assert!(n > 0, "{tenant}: closed during a slow read");
            held.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while held.len() >= at + 5 {
                let len =
                    u32::from_be_bytes([held[at + 1], held[at + 2], held[at + 3], held[at + 4]]);
                let end = at + 1 + len as usize;
                if end > held.len() {
                    break;
                }
                match held[at] {
                    b'D' => data_rows += 1,
                    b'E' => panic!("{tenant}: slow reader got an error"),
                    b'Z' => break 'result,
                    _ => {}
                }
                at = end;
            }
            held.drain(..at);
            since_pause += n;
            if since_pause > 256 << 10 {
                since_pause = 0;
                rng.pause(80).await;
            }
        }
        assert_eq!(data_rows, rows, "{tenant}: every row of a slow read");
    }
}

/// Leaves in the middle of things, one way per round: mid-result, half a
/// message sent, a query and Terminate in one packet, inside an open
/// transaction holding a lock.
async fn leaver(port: u16, tenant: &'static str, seed: u64) {
    let mut rng = Rng::new(seed);
    for _ in 0..12 {
        let mut s = raw::login_trust(port, tenant).await;
        match rng.range(0, 3) {
            0 => {
                raw::send(
                    &mut s,
                    &raw::query("SELECT repeat('y', 1000) FROM generate_series(1, 20000)"),
                )
                .await;
                let mut buf = vec![0u8; rng.range(1, 200_000) as usize];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await;
            }
            1 => {
                let q = raw::query("SELECT 'never finished'");
                let cut = rng.range(1, q.len() as u64 - 1) as usize;
                raw::send(&mut s, &q[..cut]).await;
                rng.pause(100).await;
            }
            2 => {
                let mut both = raw::query("SELECT pg_sleep(0.05)");
                both.extend(raw::frame(b'X', &[]));
                raw::send(&mut s, &both).await;
            }
            _ => {
                raw::simple_query(&mut s, "BEGIN").await;
                raw::simple_query(&mut s, "LOCK TABLE notes IN ACCESS EXCLUSIVE MODE").await;
                rng.pause(50).await;
            }
        }
        drop(s);
        rng.pause(100).await;
    }
}

/// Cancels a sleeping statement, and goes on with its connection. The
/// cancel goes once the statement runs (`watcher`, a superuser straight
/// to PostgreSQL, sees it): one that lands just as the request gets its
/// server connection is too late for the wait and early for the
/// statement, and would leave the 10 s sleep to run (`session::cancel`).
async fn canceler(port: u16, tenant: &'static str, seed: u64, watcher: tokio_postgres::Client) {
    let mut rng = Rng::new(seed);
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app.{tenant} dbname={tenant}"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("canceler connects");
    tokio::spawn(conn);
    for _ in 0..3 {
        let token = c.cancel_token();
        let delay = Duration::from_millis(rng.range(0, 300));
        let sleeping = c.batch_execute("SELECT pg_sleep(10)");
        let canceling = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let running: bool = watcher
                    .query_one(
                        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = $1 \
                         AND state = 'active' AND query = 'SELECT pg_sleep(10)')",
                        &[&format!("tenant_{tenant}")],
                    )
                    .await
                    .expect("pg_stat_activity")
                    .get(0);
                if running {
                    break;
                }
                assert!(Instant::now() < deadline, "{tenant}: the sleep never ran");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(delay).await;
            token
                .cancel_query(tokio_postgres::NoTls)
                .await
                .expect("cancel");
        };
        let (slept, ()) = tokio::join!(sleeping, canceling);
        let err = slept.expect_err("canceled");
        assert_eq!(common::sqlstate(&err), "57014", "{tenant}: {err}");
        let row = c.query_one("SELECT 7", &[]).await.expect("after cancel");
        assert_eq!(row.get::<_, i32>(0), 7);
        rng.pause(100).await;
    }
}

/// Asks for a result far larger than the buffers between and reads none
/// of it: the proxy must end it within its read limit (2 s here) and
/// free the server connection, without sending the whole result.
async fn staller(port: u16, tenant: &'static str, seed: u64) {
    let mut rng = Rng::new(seed);
    rng.pause(1000).await;
    let mut s = raw::login_trust(port, tenant).await;
    raw::send(
        &mut s,
        &raw::query("SELECT repeat('z', 1000) FROM generate_series(1, 1000000)"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{tenant}: the staller is still connected");
    assert!(total < 500 << 20, "{tenant}: the whole result was sent");
}
