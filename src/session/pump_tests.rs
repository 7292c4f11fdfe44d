//! The pump between real sockets, driven by hand: when it is polled is
//! the test's choice, so a wake-up it fails to arrange shows as a stall
//! instead of being covered by some other event.

use super::pump::{Flow, PumpExit, pump};
use super::txn::TxnState;
use crate::runtime::block_on;
use crate::runtime::net::accepted;
use crate::runtime::stream::Transport;
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

pub(super) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
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
pub(super) fn count_frames(bytes: &[u8], tag: u8) -> (usize, usize) {
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
pub(super) async fn drive(
    client: &mut impl Transport,
    server: &mut impl Transport,
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
