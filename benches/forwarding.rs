//! The forwarding hot path without sockets: scanning server → client
//! batches (a select-only result, a large result) and client → server
//! requests, as the pump does for every read.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pgtenant::protocol::{FrameScanner, FrameSink, Step};
use std::hint::black_box;

fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

/// The server-side sink's work: read Z status, note ParameterStatus.
struct Watch {
    status: u8,
}

impl FrameSink for Watch {
    fn body_needed(&self, tag: u8) -> usize {
        if tag == b'Z' || tag == b'S' {
            pgtenant::protocol::WHOLE_BODY
        } else {
            0
        }
    }
    fn on_frame(&mut self, tag: u8, frame: &[u8], _frame_len: usize) -> Step {
        if tag == b'Z' {
            self.status = frame[5];
        }
        Step::Continue
    }
}

fn select_one_response() -> Vec<u8> {
    let mut v = Vec::new();
    msg(&mut v, b'1', b"");
    msg(&mut v, b'2', b"");
    msg(&mut v, b'D', b"\0\x01\0\0\0\x04\0\0\x12\x34");
    msg(&mut v, b'C', b"SELECT 1\0");
    msg(&mut v, b'Z', b"I");
    v
}

fn large_result(rows: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let row = [7u8; 100];
    for _ in 0..rows {
        msg(&mut v, b'D', &row);
    }
    msg(&mut v, b'C', b"SELECT 1000\0");
    msg(&mut v, b'Z', b"I");
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    let small = select_one_response();
    g.throughput(Throughput::Elements(1));
    g.bench_function("select_one_txn", |b| {
        let mut s = FrameScanner::new(1 << 30);
        let mut w = Watch { status: 0 };
        b.iter(|| {
            let r = s.scan(black_box(&small), &mut w);
            black_box(r.ok())
        })
    });
    let large = large_result(1000);
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("1000_rows", |b| {
        let mut s = FrameScanner::new(1 << 30);
        let mut w = Watch { status: 0 };
        b.iter(|| {
            let r = s.scan(black_box(&large), &mut w);
            black_box(r.ok())
        })
    });
    g.finish();

    // Per Query/Parse in transaction mode: the session-state keyword scan.
    let mut g = c.benchmark_group("pinning");
    let q = b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
    g.throughput(Throughput::Bytes(q.len() as u64));
    g.bench_function("scan_pgbench_select", |b| {
        b.iter(|| black_box(pgtenant::session::pinning::scan(black_box(q), |_| {})))
    });
    // An ORM-style statement: long identifiers, quoting, parameters.
    let orm = b"SELECT \"orders\".\"id\", \"orders\".\"customer_id\", \"orders\".\"created_at\", \
        \"orders\".\"total_amount_cents\", \"customers\".\"display_name\" FROM \"orders\" \
        INNER JOIN \"customers\" ON \"customers\".\"id\" = \"orders\".\"customer_id\" \
        WHERE \"orders\".\"status\" = $1 AND \"orders\".\"created_at\" >= $2 \
        ORDER BY \"orders\".\"created_at\" DESC LIMIT 50";
    g.throughput(Throughput::Bytes(orm.len() as u64));
    g.bench_function("scan_orm_select", |b| {
        b.iter(|| black_box(pgtenant::session::pinning::scan(black_box(orm), |_| {})))
    });
    // The same statement again with another number: the last text's
    // result, reused after a shape compare.
    let (q1, q2) = (
        &b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\0"[..],
        &b"SELECT abalance FROM pgbench_accounts WHERE aid = 678;\0"[..],
    );
    let mut last = pgtenant::session::pinning::LastText::default();
    let mut names = Vec::new();
    last.scan(q1, &mut names);
    g.throughput(Throughput::Bytes(q2.len() as u64));
    g.bench_function("last_text_pgbench_select", |b| {
        b.iter(|| black_box(last.scan(black_box(q2), &mut names)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
