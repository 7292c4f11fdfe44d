//! What a client sends and receives through the proxy, in transaction
//! mode, is what it would send and receive talking to PostgreSQL directly:
//! simple and extended queries, pipelining, errors inside transactions,
//! COPY in both directions, NoticeResponse and ParameterStatus, a large
//! result streamed to a slow reader in flat memory, and cancel keys that
//! are the proxy's own.
//!
//! Besides tokio-postgres and psql, a small raw wire client (`Raw`) sends
//! exact message sequences: tokio-postgres's COPY API needs the
//! futures Sink/Stream traits, which this crate does not depend on, so the
//! raw client replays the exact messages tokio-postgres's `copy_in` and
//! `copy_out` send.

mod common;

use bytes::{Buf, Bytes, BytesMut};
use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use postgres_protocol::IsNull;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

const TENANT: &str = "x";
const PASSWORD: &str = "x-secret";
const DB: &str = "tenant_x";

// ---------------------------------------------------------------------
// A raw protocol client
// ---------------------------------------------------------------------

/// One backend message.
struct Msg {
    tag: u8,
    body: Bytes,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.tag as char)?;
        match self.tag {
            b'E' | b'N' => write!(f, "({} {})", self.code(), self.message()),
            b'C' => write!(f, "({})", self.cstr()),
            b'S' => write!(f, "{:?}", self.param()),
            b'D' => write!(f, "{:?}", self.row()),
            b'Z' => write!(f, "({})", self.body[0] as char),
            _ => Ok(()),
        }
    }
}

fn cstrs(mut b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(i) = b.iter().position(|&c| c == 0) {
        out.push(String::from_utf8_lossy(&b[..i]).into_owned());
        b = &b[i + 1..];
    }
    out
}

impl Msg {
    /// ErrorResponse/NoticeResponse field by its type byte.
    fn field(&self, t: u8) -> String {
        let mut b = &self.body[..];
        while let Some((&ft, rest)) = b.split_first() {
            if ft == 0 {
                break;
            }
            let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
            if ft == t {
                return String::from_utf8_lossy(&rest[..end]).into_owned();
            }
            b = &rest[(end + 1).min(rest.len())..];
        }
        String::new()
    }

    fn code(&self) -> String {
        self.field(b'C')
    }

    fn message(&self) -> String {
        self.field(b'M')
    }

    /// CommandComplete's tag.
    fn cstr(&self) -> String {
        cstrs(&self.body).into_iter().next().unwrap_or_default()
    }

    fn param(&self) -> (String, String) {
        let v = cstrs(&self.body);
        (v[0].clone(), v[1].clone())
    }

    /// DataRow fields as text.
    fn row(&self) -> Vec<Option<String>> {
        let mut b = &self.body[..];
        let n = b.get_i16();
        (0..n)
            .map(|_| {
                let len = b.get_i32();
                if len < 0 {
                    None
                } else {
                    let v = String::from_utf8_lossy(&b[..len as usize]).into_owned();
                    b.advance(len as usize);
                    Some(v)
                }
            })
            .collect()
    }
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// First field of every DataRow.
fn first_values(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| m.row()[0].clone().unwrap_or_default())
        .collect()
}

fn text_param(
    v: &str,
    buf: &mut BytesMut,
) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
    buf.extend_from_slice(v.as_bytes());
    Ok(IsNull::No)
}

/// A protocol-level client: exact messages out, every message back.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    /// BackendKeyData (pid, secret).
    key: (i32, i32),
    /// ParameterStatus messages received at startup.
    params: Vec<(String, String)>,
}

impl Raw {
    async fn connect(port: u16, extra: &[(&str, &str)]) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
        stream.set_nodelay(true).expect("nodelay");
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            key: (0, 0),
            params: Vec::new(),
        };
        let user = format!("app.{TENANT}");
        let mut startup = vec![("user", user.as_str()), ("database", TENANT)];
        startup.extend_from_slice(extra);
        raw.send(|b| frontend::startup_message(startup.iter().copied(), b).expect("startup"))
            .await;
        let mut scram = None;
        loop {
            let m = raw.recv().await;
            match m.tag {
                b'R' => {
                    let mut body = &m.body[..];
                    match body.get_i32() {
                        0 => {}
                        10 => {
                            assert!(cstrs(body).iter().any(|s| s == sasl::SCRAM_SHA_256));
                            let s = ScramSha256::new(
                                PASSWORD.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let first = s.message().to_vec();
                            raw.send(|b| {
                                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, &first, b)
                                    .expect("sasl")
                            })
                            .await;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("scram started");
                            s.update(body).expect("server-first");
                            let msg = s.message().to_vec();
                            raw.send(|b| frontend::sasl_response(&msg, b).expect("sasl"))
                                .await;
                        }
                        12 => scram
                            .take()
                            .expect("scram")
                            .finish(body)
                            .expect("server-final"),
                        other => panic!("unexpected auth request {other}"),
                    }
                }
                b'K' => {
                    let mut body = &m.body[..];
                    raw.key = (body.get_i32(), body.get_i32());
                }
                b'S' => raw.params.push(m.param()),
                b'Z' => return raw,
                b'E' => panic!("startup refused: {m:?}"),
                _ => {}
            }
        }
    }

    async fn send(&mut self, f: impl FnOnce(&mut BytesMut)) {
        let mut out = BytesMut::new();
        f(&mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    /// Reads more bytes into the buffer; false at end of stream.
    async fn fill(&mut self) -> bool {
        self.buf.reserve(64 * 1024);
        let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read_buf(&mut self.buf))
            .await
            .expect("no answer within 20 s")
            .expect("read");
        n > 0
    }

    fn parse_one(&mut self) -> Option<Msg> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if self.buf.len() < 1 + len {
            return None;
        }
        let mut frame = self.buf.split_to(1 + len);
        let tag = frame[0];
        frame.advance(5);
        Some(Msg {
            tag,
            body: frame.freeze(),
        })
    }

    async fn recv(&mut self) -> Msg {
        loop {
            if let Some(m) = self.parse_one() {
                return m;
            }
            assert!(self.fill().await, "connection closed");
        }
    }

    async fn recv_n(&mut self, n: usize) -> Vec<Msg> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(self.recv().await);
        }
        v
    }

    /// Messages up to and including the `n`th ReadyForQuery.
    async fn until_ready_n(&mut self, n: usize) -> Vec<Msg> {
        let mut v = Vec::new();
        let mut seen = 0;
        while seen < n {
            let m = self.recv().await;
            seen += usize::from(m.tag == b'Z');
            v.push(m);
        }
        v
    }

    async fn until_ready(&mut self) -> Vec<Msg> {
        self.until_ready_n(1).await
    }

    async fn query(&mut self, sql: &str) -> Vec<Msg> {
        self.send(|b| frontend::query(sql, b).expect("query")).await;
        self.until_ready().await
    }

    async fn value(&mut self, sql: &str) -> String {
        let msgs = self.query(sql).await;
        first_values(&msgs)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{sql}: no row in {msgs:?}"))
    }
}

fn copy_data(data: &[u8], b: &mut BytesMut) {
    frontend::CopyData::new(data).expect("copy data").write(b);
}

// ---------------------------------------------------------------------
// Helpers on tokio-postgres
// ---------------------------------------------------------------------

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn completions(msgs: &[SimpleQueryMessage]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

async fn scalar(client: &Client, sql: &str) -> String {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows(&msgs)
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// A proxy with one dedicated tenant `x`.
async fn setup(pool_size: u32, extra: &str) -> (TestPg, TestProxy) {
    let pg = TestPg::start(HostAuth::ScramSha256, &[TENANT]).await;
    let proxy = TestProxy::start(&pg.config(
        &[TENANT],
        pool_size,
        &format!("pool_mode = \"transaction\"\n{extra}"),
    ))
    .await;
    (pg, proxy)
}

// ---------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------

#[tokio::test]
async fn simple_query_protocol() {
    let (_pg, proxy) = setup(1, "query_wait_timeout = \"5s\"").await;
    let c = proxy.connect(TENANT).await;

    let msgs = c.simple_query("SELECT 1").await.expect("select 1");
    assert_eq!(rows(&msgs), [["1"]]);
    assert_eq!(completions(&msgs), [1]);

    // Several statements in one Query message.
    let msgs = c
        .simple_query(
            "SELECT 1 AS a; SELECT 2 AS b, 'two' AS c; SELECT g FROM generate_series(1, 3) g",
        )
        .await
        .expect("multi");
    assert_eq!(
        rows(&msgs),
        vec![vec!["1"], vec!["2", "two"], vec!["1"], vec!["2"], vec!["3"]]
    );
    assert_eq!(completions(&msgs), [1, 1, 3]);

    // An error stops the rest; the connection stays usable.
    let err = c
        .simple_query("SELECT 1; SELECT 1/0; SELECT 3")
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err), "22012");
    assert_eq!(scalar(&c, "SELECT 'still fine'").await, "still fine");

    // A multi-statement query is one implicit transaction.
    c.batch_execute(
        "CREATE TABLE simple_t (v int); INSERT INTO simple_t VALUES (1); INSERT INTO simple_t VALUES (2)",
    )
    .await
    .expect("create");
    let err = c
        .batch_execute("INSERT INTO simple_t VALUES (3); SELECT 1/0")
        .await
        .expect_err("fails");
    assert_eq!(sqlstate(&err), "22012");
    assert_eq!(scalar(&c, "SELECT sum(v) FROM simple_t").await, "3");

    // At the wire level: an empty query, and two queries in one write.
    let mut r = Raw::connect(proxy.port, &[]).await;
    let msgs = r.query("").await;
    assert_eq!(tags(&msgs), "IZ", "{msgs:?}");
    r.send(|b| {
        frontend::query("SELECT 'one'", b).expect("q");
        frontend::query("SELECT 'two'", b).expect("q");
    })
    .await;
    let msgs = r.until_ready_n(2).await;
    assert_eq!(tags(&msgs), "TDCZTDCZ", "{msgs:?}");
    assert_eq!(first_values(&msgs), ["one", "two"]);
    assert_eq!(msgs[2].cstr(), "SELECT 1");
}

#[tokio::test]
async fn extended_protocol_with_unnamed_statements() {
    let (_pg, proxy) = setup(1, "query_wait_timeout = \"5s\"").await;
    let c = proxy.connect(TENANT).await;

    let row = c
        .query_typed_one(
            "SELECT $1::int + 1, $2::text || '!', $3::bool, $4::text IS NULL",
            &[
                (&41i32, Type::INT4),
                (&"hi", Type::TEXT),
                (&true, Type::BOOL),
                (&None::<String>, Type::TEXT),
            ],
        )
        .await
        .expect("typed");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert!(row.get::<_, bool>(2));
    assert!(row.get::<_, bool>(3));

    let rows = c
        .query_typed(
            "SELECT g FROM generate_series(1, $1) g",
            &[(&1000i32, Type::INT4)],
        )
        .await
        .expect("series");
    assert_eq!(rows.len(), 1000);
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).sum::<i32>(),
        500_500
    );

    let inserted = c
        .query_typed(
            "INSERT INTO notes (tenant_id, body) VALUES ($1, $2)",
            &[(&"x", Type::TEXT), (&"typed insert", Type::TEXT)],
        )
        .await
        .expect("insert");
    assert!(inserted.is_empty());
    assert_eq!(
        scalar(&c, "SELECT count(*) FROM notes WHERE body = 'typed insert'").await,
        "1"
    );

    let err = c
        .query_typed("SELECT $1::int / 0", &[(&1i32, Type::INT4)])
        .await
        .expect_err("division");
    assert_eq!(sqlstate(&err), "22012");
    let n: i32 = c
        .query_typed_one("SELECT 7", &[])
        .await
        .expect("after error")
        .get(0);
    assert_eq!(n, 7);

    // Named statements (tokio-postgres `prepare`/`query`) inside an
    // explicit transaction, where the server stays with the client.
    c.batch_execute("BEGIN").await.expect("begin");
    let st = c.prepare("SELECT $1::int * 2").await.expect("prepare");
    let v: i32 = c.query_one(&st, &[&21i32]).await.expect("execute").get(0);
    assert_eq!(v, 42);
    let v: String = c
        .query_one("SELECT $1::text", &[&"named"])
        .await
        .expect("query")
        .get(0);
    assert_eq!(v, "named");
    drop(st);
    c.batch_execute("COMMIT").await.expect("commit");

    // Flush without Sync: results come back, and the server stays with
    // this client until its Sync (pool_size 1: B waits for it).
    let mut a = Raw::connect(proxy.port, &[]).await;
    a.send(|b| {
        frontend::parse("", "SELECT $1::int * 3", [Type::INT4.oid()], b).expect("parse");
        frontend::bind("", "", [0], ["14"], text_param, [0], b)
            .map_err(|_| ())
            .expect("bind");
        frontend::describe(b'P', "", b).expect("describe");
        frontend::execute("", 0, b).expect("execute");
        frontend::flush(b);
    })
    .await;
    let msgs = a.recv_n(5).await;
    assert_eq!(tags(&msgs), "12TDC", "{msgs:?}");
    assert_eq!(first_values(&msgs), ["42"]);
    let b = proxy.connect(TENANT).await;
    let waiter = tokio::spawn(async move { scalar(&b, "SELECT 'b ran'").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "B ran on the server while A's extended-protocol batch was unsynced"
    );
    a.send(frontend::sync).await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "Z", "{msgs:?}");
    assert_eq!(waiter.await.expect("B"), "b ran");

    // Portal suspension: Execute with a row limit, several times, one Sync.
    a.send(|b| {
        frontend::parse("", "SELECT g FROM generate_series(1, 5) g", [], b).expect("parse");
        frontend::bind("", "", [], Vec::<&str>::new(), text_param, [0], b)
            .map_err(|_| ())
            .expect("bind");
        for _ in 0..3 {
            frontend::execute("", 2, b).expect("execute");
        }
        frontend::sync(b);
    })
    .await;
    let msgs = a.until_ready().await;
    assert_eq!(tags(&msgs), "12DDsDDsDCZ", "{msgs:?}");
    assert_eq!(first_values(&msgs), ["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn pipelined_queries() {
    let (_pg, proxy) = setup(2, "query_wait_timeout = \"5s\"").await;
    let c = proxy.connect(TENANT).await;

    // Joined futures on one client are sent back to back; each has its own
    // Sync, so the failing one does not affect its neighbours.
    let (r1, r2, r3) = tokio::join!(
        c.query_typed("SELECT 1::int", &[]),
        c.query_typed("SELECT $1::int / 0", &[(&1i32, Type::INT4)]),
        c.query_typed("SELECT 3::int", &[]),
    );
    assert_eq!(r1.expect("first")[0].get::<_, i32>(0), 1);
    assert_eq!(sqlstate(&r2.expect_err("second fails")), "22012");
    assert_eq!(r3.expect("third")[0].get::<_, i32>(0), 3);

    // Inside a transaction, pipelined statements share its server.
    c.batch_execute("CREATE TABLE pipe_t (v int)")
        .await
        .expect("create");
    c.batch_execute("BEGIN").await.expect("begin");
    let (i1, i2, p1, p2, p3) = tokio::join!(
        c.query_typed("INSERT INTO pipe_t VALUES (1)", &[]),
        c.query_typed("INSERT INTO pipe_t VALUES ($1)", &[(&2i32, Type::INT4)]),
        c.query_typed("SELECT pg_backend_pid()", &[]),
        c.simple_query("SELECT pg_backend_pid()"),
        c.query_typed("SELECT pg_backend_pid()", &[]),
    );
    i1.expect("insert 1");
    i2.expect("insert 2");
    let pid: i32 = p1.expect("pid")[0].get(0);
    assert_eq!(rows(&p2.expect("pid")), [[pid.to_string()]]);
    assert_eq!(p3.expect("pid")[0].get::<_, i32>(0), pid);
    c.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(scalar(&c, "SELECT sum(v) FROM pipe_t").await, "3");

    // Many concurrent requests on one connection come back in order.
    let c = Arc::new(c);
    let tasks: Vec<_> = (0..50i32)
        .map(|i| {
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                let v: i32 = c
                    .query_typed_one("SELECT $1::int * 10", &[(&i, Type::INT4)])
                    .await
                    .expect("pipelined")
                    .get(0);
                (i, v)
            })
        })
        .collect();
    for t in tasks {
        let (i, v) = t.await.expect("task");
        assert_eq!(v, i * 10);
    }

    // At the wire level: a whole transaction in one write.
    let mut r = Raw::connect(proxy.port, &[]).await;
    r.send(|b| {
        frontend::query("BEGIN", b).expect("q");
        frontend::query("INSERT INTO pipe_t VALUES (10)", b).expect("q");
        frontend::parse("", "SELECT pg_backend_pid()", [], b).expect("parse");
        frontend::bind("", "", [], Vec::<&str>::new(), text_param, [0], b)
            .map_err(|_| ())
            .expect("bind");
        frontend::execute("", 0, b).expect("execute");
        frontend::sync(b);
        frontend::query("SELECT pg_backend_pid(); COMMIT", b).expect("q");
        frontend::query("SELECT sum(v) FROM pipe_t", b).expect("q");
    })
    .await;
    let msgs = r.until_ready_n(5).await;
    assert_eq!(tags(&msgs), "CZCZ12DCZTDCCZTDCZ", "{msgs:?}");
    let values = first_values(&msgs);
    assert_eq!(values[0], values[1], "one server for the transaction");
    assert_eq!(values[2], "13");
    let statuses: String = msgs
        .iter()
        .filter(|m| m.tag == b'Z')
        .map(|m| m.body[0] as char)
        .collect();
    assert_eq!(statuses, "TTTII");
}

#[tokio::test]
async fn errors_inside_transactions() {
    let (_pg, proxy) = setup(1, "query_wait_timeout = \"5s\"").await;
    let c = proxy.connect(TENANT).await;
    let count = |body: &str| format!("SELECT count(*) FROM notes WHERE body = '{body}'");

    // A savepoint recovers from an error; the transaction then commits.
    c.batch_execute(
        "BEGIN;
         INSERT INTO notes (tenant_id, body) VALUES ('x', 'kept');
         SAVEPOINT s;
         INSERT INTO notes (tenant_id, body) VALUES ('x', 'lost');",
    )
    .await
    .expect("begin");
    let err = c.simple_query("SELECT 1/0").await.expect_err("fails");
    assert_eq!(sqlstate(&err), "22012");
    let err = c.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(sqlstate(&err), "25P02");
    c.batch_execute(
        "ROLLBACK TO SAVEPOINT s; INSERT INTO notes (tenant_id, body) VALUES ('x', 'kept')",
    )
    .await
    .expect("recover");
    c.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(scalar(&c, &count("kept")).await, "2");
    assert_eq!(scalar(&c, &count("lost")).await, "0");

    // An extended-protocol error inside a transaction, then a simple one.
    c.batch_execute("BEGIN; INSERT INTO notes (tenant_id, body) VALUES ('x', 'lost')")
        .await
        .expect("begin");
    let err = c
        .query_typed("SELECT $1::int / 0", &[(&1i32, Type::INT4)])
        .await
        .expect_err("division");
    assert_eq!(sqlstate(&err), "22012");
    let err = c.query_typed("SELECT 1", &[]).await.expect_err("aborted");
    assert_eq!(sqlstate(&err), "25P02");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(scalar(&c, &count("lost")).await, "0");

    // At the wire level: statuses T, E, and COMMIT of a failed transaction
    // answering ROLLBACK.
    let mut r = Raw::connect(proxy.port, &[]).await;
    let msgs = r.query("BEGIN").await;
    assert_eq!(msgs.last().map(|m| m.body[0]), Some(b'T'));
    let msgs = r.query("SELECT * FROM no_such_table").await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].code(), "42P01");
    assert_eq!(msgs[1].body[0], b'E');
    let msgs = r.query("COMMIT").await;
    assert_eq!(tags(&msgs), "CZ", "{msgs:?}");
    assert_eq!(msgs[0].cstr(), "ROLLBACK");
    assert_eq!(msgs[1].body[0], b'I');
    // An error in the middle of an extended batch skips to the Sync.
    r.send(|b| {
        frontend::parse("", "SELECT 1/0", [], b).expect("parse");
        frontend::bind("", "", [], Vec::<&str>::new(), text_param, [0], b)
            .map_err(|_| ())
            .expect("bind");
        frontend::execute("", 0, b).expect("execute");
        frontend::parse("", "SELECT 'skipped'", [], b).expect("parse");
        frontend::sync(b);
    })
    .await;
    let msgs = r.until_ready().await;
    // (The constant 1/0 fails while planning, at Bind.)
    assert_eq!(tags(&msgs), "1EZ", "{msgs:?}");
    assert_eq!(msgs[1].code(), "22012");
    assert_eq!(r.value("SELECT 'after'").await, "after");
    // The other client still gets the server.
    assert_eq!(scalar(&c, "SELECT 'c again'").await, "c again");
}

/// COPY in the simple protocol (as psql and most drivers send it).
#[tokio::test]
async fn copy_in_and_out_simple_protocol() {
    let (pg, proxy) = setup(1, "query_wait_timeout = \"3s\"").await;
    create_copy_table(&pg).await;
    let mut r = Raw::connect(proxy.port, &[]).await;

    // COPY FROM STDIN: 5000 rows in several CopyData messages.
    let msgs = r.query_start("COPY items FROM STDIN").await;
    assert_eq!(tags(&msgs), "G");
    let data: String = (1..=5000).map(|i| format!("{i}\trow {i}\n")).collect();
    r.send(|b| {
        for chunk in data.as_bytes().chunks(7000) {
            copy_data(chunk, b);
        }
        frontend::copy_done(b);
    })
    .await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "CZ", "{msgs:?}");
    assert_eq!(msgs[0].cstr(), "COPY 5000");

    // CopyFail aborts it.
    let msgs = r.query_start("COPY items FROM STDIN").await;
    assert_eq!(tags(&msgs), "G");
    r.send(|b| {
        copy_data(b"9999\tnever\n", b);
        frontend::copy_fail("client gave up", b).expect("copy fail");
    })
    .await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].code(), "57014");
    assert!(msgs[0].message().contains("client gave up"), "{msgs:?}");

    // Bad data is the server's error, and the connection goes on.
    let msgs = r.query_start("COPY items FROM STDIN").await;
    assert_eq!(tags(&msgs), "G");
    r.send(|b| {
        copy_data(b"not a number\tx\n", b);
        frontend::copy_done(b);
    })
    .await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].code(), "22P02");

    // COPY TO STDOUT.
    let msgs = r
        .query("COPY (SELECT a, b FROM items ORDER BY a) TO STDOUT")
        .await;
    let copied: Vec<&[u8]> = msgs
        .iter()
        .filter(|m| m.tag == b'd')
        .map(|m| &m.body[..])
        .collect();
    assert_eq!(copied.concat(), data.as_bytes());
    assert_eq!(msgs[0].tag, b'H');
    let n = msgs.len();
    assert_eq!(tags(&msgs[n - 3..]), "cCZ");
    assert_eq!(msgs[n - 2].cstr(), "COPY 5000");

    // The server went back to the pool: another client gets it.
    let other = proxy.connect(TENANT).await;
    assert_eq!(scalar(&other, "SELECT count(*) FROM items").await, "5000");
}

/// COPY with the exact messages tokio-postgres's `copy_in`/`copy_out` send
/// (extended protocol, inside a transaction since they use a named
/// statement): Parse/Describe/Sync, then Bind/Execute/Sync, then for
/// COPY FROM the data, CopyDone and another Sync. PostgreSQL ignores a
/// Sync that arrives in copy-in mode, so two Syncs get one ReadyForQuery.
#[tokio::test]
async fn copy_in_and_out_extended_protocol() {
    let (pg, proxy) = setup(1, "query_wait_timeout = \"3s\"").await;
    create_copy_table(&pg).await;
    let mut r = Raw::connect(proxy.port, &[]).await;

    let msgs = r.query("BEGIN").await;
    assert_eq!(tags(&msgs), "CZ");
    r.send(|b| {
        frontend::parse("s0", "COPY items FROM STDIN", [], b).expect("parse");
        frontend::describe(b'S', "s0", b).expect("describe");
        frontend::sync(b);
    })
    .await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "1tnZ", "{msgs:?}");
    r.send(|b| {
        frontend::bind("", "s0", [], Vec::<&str>::new(), text_param, [], b)
            .map_err(|_| ())
            .expect("bind");
        frontend::execute("", 0, b).expect("execute");
        frontend::sync(b);
    })
    .await;
    let msgs = r.recv_n(2).await;
    assert_eq!(tags(&msgs), "2G", "{msgs:?}");
    let data: String = (1..=100).map(|i| format!("{i}\textended {i}\n")).collect();
    r.send(|b| {
        copy_data(data.as_bytes(), b);
        frontend::copy_done(b);
        frontend::sync(b);
    })
    .await;
    let msgs = r.until_ready().await;
    assert_eq!(tags(&msgs), "CZ", "{msgs:?}");
    assert_eq!(msgs[0].cstr(), "COPY 100");
    r.send(|b| {
        frontend::close(b'S', "s0", b).expect("close");
        frontend::sync(b);
    })
    .await;
    assert_eq!(tags(&r.until_ready().await), "3Z");

    // copy_out's sequence.
    r.send(|b| {
        frontend::parse(
            "s1",
            "COPY (SELECT a FROM items ORDER BY a) TO STDOUT",
            [],
            b,
        )
        .expect("parse");
        frontend::describe(b'S', "s1", b).expect("describe");
        frontend::sync(b);
    })
    .await;
    assert_eq!(tags(&r.until_ready().await), "1tnZ");
    r.send(|b| {
        frontend::bind("", "s1", [], Vec::<&str>::new(), text_param, [], b)
            .map_err(|_| ())
            .expect("bind");
        frontend::execute("", 0, b).expect("execute");
        frontend::sync(b);
    })
    .await;
    let msgs = r.until_ready().await;
    let lines = msgs.iter().filter(|m| m.tag == b'd').count();
    assert_eq!(lines, 100, "{:?}", &msgs[..3]);
    assert_eq!(msgs.first().map(|m| m.tag), Some(b'2'));
    let n = msgs.len();
    assert_eq!(tags(&msgs[n - 3..]), "cCZ");
    let msgs = r.query("COMMIT").await;
    assert_eq!(tags(&msgs), "CZ");
    assert_eq!(msgs[1].body[0], b'I');

    // The transaction is over: the (only) server must go back to the pool.
    let other = proxy.connect(TENANT).await;
    let res = other.simple_query("SELECT count(*) FROM items").await;
    match res {
        Ok(msgs) => assert_eq!(rows(&msgs), [["100"]]),
        Err(e) => panic!(
            "the server was not released after COPY: {} {}",
            sqlstate(&e),
            e.as_db_error().map(|d| d.message()).unwrap_or_default()
        ),
    }
    assert_eq!(r.value("SELECT 'r again'").await, "r again");
}

/// COPY and notices with psql, a real libpq client.
#[tokio::test]
async fn copy_and_notices_with_psql() {
    let (pg, proxy) = setup(1, "query_wait_timeout = \"5s\"").await;
    create_copy_table(&pg).await;
    let port = proxy.port;

    let out = psql(
        port,
        &["-c", "COPY items FROM STDIN"],
        "1\tfrom psql\n2\tagain\n",
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "COPY 2", "{out:?}");
    let out = psql(
        port,
        &[
            "-A",
            "-t",
            "-c",
            "COPY (SELECT a, b FROM items ORDER BY a) TO STDOUT",
        ],
        "",
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stdout, "1\tfrom psql\n2\tagain\n", "{out:?}");
    let out = psql(
        port,
        &["-c", "DO $$ BEGIN RAISE NOTICE 'hello from psql'; END $$"],
        "",
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert!(out.stderr.contains("NOTICE:  hello from psql"), "{out:?}");
    let out = psql(port, &["-c", "SELECT 1/0"], "").await;
    assert!(!out.ok);
    assert!(out.stderr.contains("division by zero"), "{out:?}");
}

#[tokio::test]
async fn notices_and_parameter_status_pass_through() {
    let (_pg, proxy) = setup(1, "query_wait_timeout = \"5s\"").await;

    // NoticeResponse, through tokio-postgres's message stream.
    let (c, mut notices) = connect_with_notices(&proxy).await;
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$")
        .await
        .expect("do");
    let n = next_notice(&mut notices).await;
    assert_eq!((n.severity(), n.message()), ("NOTICE", "hello"));
    c.batch_execute("BEGIN; DO $$ BEGIN RAISE WARNING 'careful'; END $$; COMMIT")
        .await
        .expect("do in txn");
    let n = next_notice(&mut notices).await;
    assert_eq!((n.severity(), n.message()), ("WARNING", "careful"));
    c.batch_execute("DROP TABLE IF EXISTS no_such_table")
        .await
        .expect("drop");
    let n = next_notice(&mut notices).await;
    assert_eq!(n.code().code(), "00000");
    assert!(n.message().contains("does not exist, skipping"), "{n:?}");

    // At the wire level: the notice comes before CommandComplete.
    let mut r = Raw::connect(proxy.port, &[("application_name", "fidelity-start")]).await;
    let msgs = r
        .query("DO $$ BEGIN RAISE NOTICE 'wire hello'; END $$")
        .await;
    assert_eq!(tags(&msgs), "NCZ", "{msgs:?}");
    assert_eq!(msgs[0].message(), "wire hello");

    // ParameterStatus at startup: the usual set, with the client's own
    // application_name, which also reached the server.
    let p = |name: &str| {
        r.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {:?}", r.params))
    };
    assert!(p("server_version").starts_with(|c: char| c.is_ascii_digit()));
    assert_eq!(p("server_encoding"), "UTF8");
    assert_eq!(p("client_encoding"), "UTF8");
    assert_eq!(p("integer_datetimes"), "on");
    assert_eq!(p("standard_conforming_strings"), "on");
    assert_eq!(p("application_name"), "fidelity-start");
    let _ = (p("DateStyle"), p("TimeZone"));
    assert_eq!(r.value("SHOW application_name").await, "fidelity-start");

    // SET reports the new value; it follows the client to later
    // transactions.
    let msgs = r.query("SET application_name = 'renamed'").await;
    assert_eq!(tags(&msgs), "CSZ", "{msgs:?}");
    assert_eq!(
        msgs[1].param(),
        ("application_name".to_string(), "renamed".to_string())
    );
    assert_eq!(r.value("SHOW application_name").await, "renamed");
    // SET LOCAL reports the value, and COMMIT reports the revert.
    let reported = |msgs: &[Msg]| -> Vec<String> {
        msgs.iter()
            .filter(|m| m.tag == b'S')
            .map(|m| m.param().1)
            .collect()
    };
    assert_eq!(tags(&r.query("BEGIN").await), "CZ");
    let msgs = r.query("SET LOCAL application_name = 'local'").await;
    assert_eq!(reported(&msgs), ["local"], "{msgs:?}");
    assert_eq!(r.value("SHOW application_name").await, "local");
    let msgs = r.query("COMMIT").await;
    assert_eq!(reported(&msgs), ["renamed"], "{msgs:?}");
    assert_eq!(r.value("SHOW application_name").await, "renamed");
    // The tokio-postgres client on the same (only) server keeps its own.
    assert_eq!(scalar(&c, "SHOW application_name").await, "");
    assert_eq!(r.value("SHOW application_name").await, "renamed");
}

/// Settings a client sent in its startup packet are its session defaults:
/// talking to PostgreSQL directly, RESET, RESET ALL and DISCARD ALL go
/// back to them, not to the server's defaults.
#[tokio::test]
async fn reset_returns_to_the_clients_startup_settings() {
    let (_pg, proxy) = setup(1, "query_wait_timeout = \"5s\"").await;
    let c = proxy
        .try_connect(&format!(
            "{} application_name=start",
            proxy.conn_str(&format!("app.{TENANT}"), PASSWORD, TENANT)
        ))
        .await
        .expect("connect");
    assert_eq!(scalar(&c, "SHOW application_name").await, "start");
    for reset in ["RESET application_name", "RESET ALL", "DISCARD ALL"] {
        c.batch_execute("SET application_name = 'changed'")
            .await
            .expect("set");
        assert_eq!(scalar(&c, "SHOW application_name").await, "changed");
        c.batch_execute(reset).await.expect("reset");
        assert_eq!(
            scalar(&c, "SHOW application_name").await,
            "start",
            "after {reset}"
        );
    }
}

#[tokio::test]
async fn large_result_to_a_slow_reader_keeps_memory_flat() {
    const ROWS: usize = 1_000_000;
    let (pg, proxy) = setup(2, "query_wait_timeout = \"5s\"").await;
    let admin = pg.cluster.admin(DB).await.expect("admin");
    let mut r = Raw::connect(proxy.port, &[]).await;
    let sql = format!("SELECT g, repeat('x', 100) FROM generate_series(1, {ROWS}) g");
    let before = vm_rss_kb();
    r.send(|b| frontend::query(&sql, b).expect("q")).await;

    // Read slowly: 8 KiB every 10 ms for 3 s (about 2.4 MB of ~122 MB).
    let mut counter = FrameCounter::default();
    let mut chunk = vec![0u8; 8 * 1024];
    let mut peak = before;
    let mut server_blocked = false;
    let slow = Instant::now();
    let mut next_check = Duration::from_millis(500);
    while slow.elapsed() < Duration::from_secs(3) {
        let n = r.stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed");
        r.buf.extend_from_slice(&chunk[..n]);
        counter.take(&mut r.buf);
        tokio::time::sleep(Duration::from_millis(10)).await;
        peak = peak.max(vm_rss_kb());
        if !server_blocked && slow.elapsed() >= next_check {
            next_check += Duration::from_millis(500);
            let wait: Option<String> = admin
                .query_opt(
                    "SELECT wait_event FROM pg_stat_activity \
                     WHERE usename = 'pgt_x' AND query LIKE 'SELECT g, repeat%'",
                    &[],
                )
                .await
                .expect("activity")
                .and_then(|row| row.get(0));
            server_blocked = wait.as_deref() == Some("ClientWrite");
        }
    }
    let slow_rows = counter.rows;
    let growth_mb = (peak.saturating_sub(before)) / 1024;
    eprintln!(
        "slow phase: {slow_rows} rows read, RSS {} -> {} MB (peak), server blocked on ClientWrite: {server_blocked}",
        before / 1024,
        peak / 1024
    );
    assert!(slow_rows > 0 && slow_rows < ROWS / 4, "{slow_rows} rows");
    assert!(
        server_blocked,
        "the server should be blocked writing to the proxy while the client reads slowly"
    );
    assert!(
        growth_mb < 64,
        "RSS grew by {growth_mb} MB while a slow client read a ~122 MB result"
    );

    // Then read the rest at full speed: every row arrives.
    let fast = Instant::now();
    while !counter.ready {
        assert!(r.fill().await, "closed");
        counter.take(&mut r.buf);
    }
    eprintln!("fast phase: {:?}", fast.elapsed());
    assert_eq!(counter.rows, ROWS);
    assert_eq!(
        counter.complete.as_deref(),
        Some(format!("SELECT {ROWS}").as_str())
    );
    assert!(counter.errors.is_empty(), "{:?}", counter.errors);
    let after = vm_rss_kb();
    assert!(
        after.saturating_sub(before) / 1024 < 64,
        "RSS {} -> {} MB",
        before / 1024,
        after / 1024
    );
    assert_eq!(r.value("SELECT 'after'").await, "after");
}

#[tokio::test]
async fn backend_key_data_is_the_proxys_own_and_cancel_works() {
    let (pg, proxy) = setup(2, "query_wait_timeout = \"5s\"").await;
    let admin = pg.cluster.admin(DB).await.expect("admin");

    let mut r1 = Raw::connect(proxy.port, &[]).await;
    let mut r2 = Raw::connect(proxy.port, &[]).await;
    let backend: i32 = r1
        .value("SELECT pg_backend_pid()")
        .await
        .parse()
        .expect("pid");
    assert_ne!(
        r1.key.0, backend,
        "BackendKeyData must not reveal the backend pid"
    );
    assert_ne!(r1.key, r2.key, "each client has its own key");
    let _ = r2.value("SELECT 1").await;
    let known: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 OR pid = $2",
            &[&r1.key.0, &r2.key.0],
        )
        .await
        .expect("activity")
        .get(0);
    assert_eq!(known, 0, "client keys name no backend process");

    // Cancel through the proxy with the client's key.
    let c = Arc::new(proxy.connect(TENANT).await);
    let token = c.cancel_token();
    let runner = Arc::clone(&c);
    let t = Instant::now();
    let sleeping = tokio::spawn(async move { runner.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(NoTls).await.expect("send cancel");
    let err = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("cancelled in time")
        .expect("task")
        .expect_err("cancelled");
    assert_eq!(sqlstate(&err), "57014", "{err}");
    let msg = err.as_db_error().expect("db error").message().to_string();
    assert!(msg.contains("user request"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(scalar(&c, "SELECT 'usable'").await, "usable");

    // A forged key, or the right pid with a wrong secret, cancels nothing.
    let runner = Arc::clone(&c);
    let sleeping =
        tokio::spawn(async move { runner.simple_query("SELECT pg_sleep(1), 'slept'").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for key in [
        (r1.key.0, r1.key.1.wrapping_add(1)),
        (12345, 678),
        (backend, 0),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .expect("tcp");
        let mut out = BytesMut::new();
        frontend::cancel_request(key.0, key.1, &mut out);
        s.write_all(&out).await.expect("write");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "nothing is answered to a cancel request");
    }
    let msgs = sleeping.await.expect("task").expect("not cancelled");
    assert_eq!(rows(&msgs)[0][1], "slept");
}

// ---------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------

impl Raw {
    /// Sends a query and returns the first message (for COPY).
    async fn query_start(&mut self, sql: &str) -> Vec<Msg> {
        self.send(|b| frontend::query(sql, b).expect("query")).await;
        vec![self.recv().await]
    }
}

async fn create_copy_table(pg: &TestPg) {
    let admin = pg.cluster.admin(DB).await.expect("admin");
    admin
        .batch_execute("SET ROLE pgt_x; CREATE TABLE items (a int, b text)")
        .await
        .expect("create items");
}

/// Counts frames of a streamed result without keeping them.
#[derive(Default)]
struct FrameCounter {
    rows: usize,
    complete: Option<String>,
    errors: Vec<String>,
    ready: bool,
}

impl FrameCounter {
    fn take(&mut self, buf: &mut BytesMut) {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 1 + len {
                return;
            }
            let tag = buf[0];
            let msg = Msg {
                tag,
                body: Bytes::copy_from_slice(&buf[5..1 + len]),
            };
            match tag {
                b'D' => self.rows += 1,
                b'C' => self.complete = Some(msg.cstr()),
                b'E' => self.errors.push(format!("{msg:?}")),
                b'Z' => self.ready = true,
                _ => {}
            }
            buf.advance(1 + len);
        }
    }
}

fn vm_rss_kb() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn connect_with_notices(
    proxy: &TestProxy,
) -> (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>,
) {
    let (client, mut conn) = tokio_postgres::connect(
        &proxy.conn_str(&format!("app.{TENANT}"), PASSWORD, TENANT),
        NoTls,
    )
    .await
    .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n))) => {
                    let _ = tx.send(n);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    });
    (client, rx)
}

async fn next_notice(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>,
) -> tokio_postgres::error::DbError {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a notice within 5 s")
        .expect("connection open")
}

#[derive(Debug)]
struct PsqlOut {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs psql against the proxy as `app.x`.
async fn psql(port: u16, args: &[&str], stdin: &str) -> PsqlOut {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={port} user=app.{TENANT} dbname={TENANT} sslmode=disable connect_timeout=10"
            ))
            .args(["-X", "-v", "ON_ERROR_STOP=1"])
            .args(&args)
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("psql output");
        PsqlOut {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("join")
}
