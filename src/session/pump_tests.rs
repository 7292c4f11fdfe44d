//! The pump between real sockets, driven by hand: when it is polled is
//! the test's choice, so a wake-up it fails to arrange shows as a stall
//! instead of being covered by some other event.

use super::pump::{Flow, PumpExit, pump};
use super::txn::TxnState;
use crate::runtime::block_on;
use crate::runtime::net::accepted;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// A waker that records that it was woken.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// One pipelined request: Parse, Bind, Execute, Sync (four replies
/// queued for it).
fn request() -> Vec<u8> {
    let mut r = frame(b'P', b"\0SELECT 1\0\0\0");
    r.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
    r.extend(frame(b'E', b"\0\0\0\0\0"));
    r.extend(frame(b'S', b""));
    r
}

/// The server's answer to one request.
fn answer() -> Vec<u8> {
    let mut a = frame(b'1', b"");
    a.extend(frame(b'2', b""));
    a.extend(frame(b'C', b"SELECT 1\0"));
    a.extend(frame(b'Z', b"I"));
    a
}

/// Whole frames tagged `tag` in `bytes`, and where the last whole frame
/// ends.
fn count_frames(bytes: &[u8], tag: u8) -> (usize, usize) {
    let (mut at, mut n) = (0, 0);
    while bytes.len() >= at + 5 {
        let len = u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]);
        let end = at + 1 + len as usize;
        if end > bytes.len() {
            break;
        }
        n += usize::from(bytes[at] == tag);
        at = end;
    }
    (n, at)
}

/// Runs the pump between `client` and `server` (a session-mode lease:
/// no halts), polling it only when its waker fired or when `nudge` says
/// to (after arranging something the pump must find at once), until
/// `done`. Fails if the pump waits 5 s for a wake-up. Whether the client
/// was ever paused for its backlog.
async fn drive(
    client: &mut crate::runtime::net::Socket,
    server: &mut crate::runtime::net::Socket,
    mut done: impl FnMut() -> bool,
    mut nudge: impl FnMut() -> bool,
) -> bool {
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&flag));
    let mut cx = Context::from_waker(&waker);
    let mut client_flow = Flow::new(1 << 20);
    let mut server_flow = Flow::new(1 << 20);
    let mut state = TxnState::new(false, false);
    let mut paused = false;
    let mut quiet_since = Instant::now();
    loop {
        let mut pumping = std::pin::pin!(pump(
            client,
            &mut client_flow,
            server,
            &mut server_flow,
            &mut state,
        ));
        let exit = loop {
            flag.0.store(false, Ordering::SeqCst);
            if let Poll::Ready(exit) = pumping.as_mut().poll(&mut cx) {
                break exit;
            }
            loop {
                if done() {
                    return paused;
                }
                if nudge() || flag.0.load(Ordering::SeqCst) {
                    quiet_since = Instant::now();
                    break;
                }
                assert!(
                    quiet_since.elapsed() < Duration::from_secs(5),
                    "the pump waits for a wake-up nothing will send (paused before: {paused})"
                );
                crate::runtime::time::sleep(Duration::from_millis(1)).await;
            }
        };
        match exit {
            PumpExit::Backlog => paused = true,
            // The session arms its stall timers on these and pumps on.
            PumpExit::NotReading | PumpExit::MidMessage => {}
            other => panic!("the pump stopped: {other:?}"),
        }
    }
}

/// What the test's server thread tells the driver.
enum FromServer {
    /// It heard nothing for a while and will answer everything it got
    /// once told to go.
    WillAnswer,
    Answered,
}

/// A client pipelines more requests than the reply queue may hold, so
/// the pump stops reading it (back-pressure). The server then answers
/// everything at once, and the pump, in one poll, forwards all of it:
/// the queue is empty, nothing more will come from the server, and the
/// client still has requests unread. The pump must wake itself to read
/// them: no socket will.
#[test]
fn a_pause_lifted_by_the_server_direction_resumes_the_client() {
    const REQUESTS: usize = 20_000;
    let (client_done_tx, client_done) = mpsc::channel::<()>();
    let (to_driver, from_server) = mpsc::channel::<FromServer>();
    let (go_tx, go) = mpsc::channel::<()>();
    block_on(async move {
        let (mut client, client_peer) = accepted().await;
        let (mut server, mut server_peer) = accepted().await;
        // Room for a whole round of answers towards the client, so that
        // forwarding them never waits on it.
        socket2::SockRef::from(&client)
            .set_send_buffer_size(1 << 20)
            .expect("sndbuf");
        // And for a whole round of answers from the server, so that they
        // are all there when the pump next looks.
        socket2::SockRef::from(&server)
            .set_recv_buffer_size(1 << 20)
            .expect("rcvbuf");
        let mut client_writer = client_peer.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let all: Vec<u8> = (0..REQUESTS).flat_map(|_| request()).collect();
            client_writer.write_all(&all).expect("pipeline");
        });
        let mut client_reader = client_peer;
        let reader = std::thread::spawn(move || {
            client_reader
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            let (mut got, mut buf, mut chunk) = (0, Vec::new(), vec![0u8; 1 << 16]);
            while got < REQUESTS {
                let n = client_reader.read(&mut chunk).expect("answers");
                assert!(n > 0, "the proxy closed the client");
                buf.extend_from_slice(&chunk[..n]);
                let (z, end) = count_frames(&buf, b'Z');
                got += z;
                buf.drain(..end);
            }
            let _ = client_done_tx.send(());
        });
        let server_thread = std::thread::spawn(move || {
            server_peer
                .set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            let (mut answered, mut buf, mut chunk) = (0, Vec::new(), vec![0u8; 1 << 16]);
            let mut heard = 0;
            while answered < REQUESTS {
                match server_peer.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        let (syncs, end) = count_frames(&buf, b'S');
                        heard += syncs;
                        buf.drain(..end);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if heard == answered {
                            continue;
                        }
                        if to_driver.send(FromServer::WillAnswer).is_err() || go.recv().is_err() {
                            return;
                        }
                        let all: Vec<u8> = (answered..heard).flat_map(|_| answer()).collect();
                        server_peer.write_all(&all).expect("answers");
                        answered = heard;
                        if to_driver.send(FromServer::Answered).is_err() {
                            return;
                        }
                    }
                    Err(e) => panic!("server read: {e}"),
                }
            }
            // Open until the driver is done (it drops its sender).
            let _ = go.recv();
        });

        let paused = drive(
            &mut client,
            &mut server,
            || client_done.try_recv().is_ok(),
            || {
                let Ok(FromServer::WillAnswer) = from_server.try_recv() else {
                    return false;
                };
                go_tx.send(()).expect("go");
                match from_server.recv_timeout(Duration::from_secs(10)) {
                    Ok(FromServer::Answered) => {}
                    _ => panic!("the server did not answer"),
                }
                // Every answer is in the proxy's socket before the pump
                // looks.
                std::thread::sleep(Duration::from_millis(100));
                true
            },
        )
        .await;
        assert!(paused, "the client was paused at least once");
        writer.join().expect("writer");
        reader.join().expect("reader");
        drop(go_tx);
        server_thread.join().expect("server");
    });
}

/// A small deterministic generator (xorshift64*), so a failing case can
/// be named by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// One random exchange: what the client sends (in writes of its own
/// sizes) and what the server answers to each request.
struct Exchange {
    requests: Vec<Vec<u8>>,
    answers: Vec<Vec<u8>>,
}

fn exchange(rng: &mut Rng) -> Exchange {
    let n = rng.range(1, 600);
    let mut requests = Vec::with_capacity(n);
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut parse = b"\0SELECT '".to_vec();
        parse.extend(std::iter::repeat_n(b'q', rng.range(0, 3000)));
        parse.extend_from_slice(b"'\0\0\0");
        let mut r = frame(b'P', &parse);
        r.extend(frame(b'B', b"\0\0\0\0\0\0\0\0"));
        r.extend(frame(b'E', b"\0\0\0\0\0"));
        r.extend(frame(b'S', b""));
        requests.push(r);
        let mut a = frame(b'1', b"");
        a.extend(frame(b'2', b""));
        let rows = rng.range(0, 3);
        for _ in 0..rows {
            let len = if rng.range(0, 9) == 0 {
                rng.range(8_000, 100_000)
            } else {
                rng.range(1, 300)
            };
            let mut row = vec![0, 1];
            row.extend_from_slice(&(len as u32).to_be_bytes());
            row.extend(std::iter::repeat_n(b'r', len));
            a.extend(frame(b'D', &row));
        }
        a.extend(frame(b'C', format!("SELECT {rows}\0").as_bytes()));
        a.extend(frame(b'Z', b"I"));
        answers.push(a);
    }
    Exchange { requests, answers }
}

/// Writes `bytes` in pieces of random sizes with random short pauses.
fn write_in_pieces(s: &mut std::net::TcpStream, bytes: &[u8], rng: &mut Rng) {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + rng.range(1, 64 << 10)).min(bytes.len());
        s.write_all(&bytes[at..end]).expect("write");
        at = end;
        if rng.range(0, 3) == 0 {
            std::thread::sleep(Duration::from_micros(rng.range(0, 3000) as u64));
        }
    }
}

/// Reads until `want` bytes came, in reads of random sizes with random
/// short pauses (a slow reader at times).
fn read_in_pieces(s: &mut std::net::TcpStream, want: usize, rng: &mut Rng) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut got = Vec::with_capacity(want);
    let mut chunk = vec![0u8; 128 << 10];
    while got.len() < want {
        let size = rng.range(1, chunk.len());
        let n = s.read(&mut chunk[..size]).expect("read");
        assert!(n > 0, "closed after {} of {want} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
        if rng.range(0, 3) == 0 {
            std::thread::sleep(Duration::from_micros(rng.range(0, 2000) as u64));
        }
    }
    got
}

/// Random exchanges through the pump, polled only when its waker fires:
/// pipelined requests of random sizes, answers with rows up to 200 kB,
/// both peers writing and reading in random pieces with pauses, and small
/// socket buffers in some cases (the batch's backlog, writes that wait).
/// Every byte must arrive, in order, and the pump must never wait for a
/// wake-up that does not come.
#[test]
fn random_exchanges_never_stall_the_pump() {
    if let Some(seed) = std::env::var("SEED").ok().and_then(|s| s.parse().ok()) {
        return random_exchange(seed);
    }
    for seed in 1..=12u64 {
        random_exchange(seed);
    }
}

fn random_exchange(seed: u64) {
    // Shown with a failure; `SEED=n` runs that case alone.
    eprintln!("seed {seed}");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let Exchange { requests, answers } = exchange(&mut rng);
    let small_buffers = rng.range(0, 1) == 0;
    let sent: Vec<u8> = requests.concat();
    let answered: Vec<u8> = answers.concat();
    let (seeds, mut rngs) = ([rng.next(), rng.next(), rng.next()], Vec::<Rng>::new());
    rngs.extend(seeds.iter().map(|s| Rng(s | 1)));
    let mut server_rng = rngs.pop().expect("rng");
    let mut reader_rng = rngs.pop().expect("rng");
    let mut writer_rng = rngs.pop().expect("rng");
    block_on(async move {
        let (mut client, client_peer) = accepted().await;
        let (mut server, mut server_peer) = accepted().await;
        if small_buffers {
            // Small send buffers: the batch's sends leave backlogs and
            // direct writes wait. (Not small receive buffers: on loopback,
            // with its 64 kB segments, they make TCP crawl at one segment
            // per retransmission timeout.)
            for s in [&client, &server] {
                socket2::SockRef::from(s)
                    .set_send_buffer_size(4096)
                    .expect("sndbuf");
            }
        }
        let (done_tx, done) = mpsc::channel::<()>();
        let mut client_writer = client_peer.try_clone().expect("clone");
        let to_send = sent.clone();
        let writer = std::thread::spawn(move || {
            write_in_pieces(&mut client_writer, &to_send, &mut writer_rng);
        });
        let mut client_reader = client_peer;
        let want = answered.len();
        let reader = std::thread::spawn(move || {
            let got = read_in_pieces(&mut client_reader, want, &mut reader_rng);
            let _ = done_tx.send(());
            got
        });
        let server_answers = answers.clone();
        let (stop_tx, stop) = mpsc::channel::<()>();
        let server_thread = std::thread::spawn(move || {
            // Answers each request once it has come whole, in pieces.
            let mut heard = Vec::new();
            let mut answered = 0;
            let mut chunk = vec![0u8; 64 << 10];
            server_peer
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut syncs = 0;
            let mut scanned = 0;
            while answered < server_answers.len() {
                let n = server_peer.read(&mut chunk).expect("server read");
                assert!(n > 0, "the proxy closed the server side");
                heard.extend_from_slice(&chunk[..n]);
                let (s, end) = count_frames(&heard[scanned..], b'S');
                syncs += s;
                scanned += end;
                if syncs > answered {
                    let out: Vec<u8> = server_answers[answered..syncs].concat();
                    write_in_pieces(&mut server_peer, &out, &mut server_rng);
                    answered = syncs;
                }
            }
            // Open until the driver is done.
            let _ = stop.recv();
            heard
        });

        drive(
            &mut client,
            &mut server,
            || done.try_recv().is_ok(),
            || false,
        )
        .await;
        writer.join().expect("writer");
        let got = reader.join().expect("reader");
        assert!(
            got == answered,
            "seed {seed}: the client got the answers in order"
        );
        drop(stop_tx);
        let heard = server_thread.join().expect("server");
        assert!(
            heard == sent,
            "seed {seed}: the server got the requests in order"
        );
    });
}
