//! Tests of batched sends (`batch`) on the workers' runtime: order against direct sends, bytes queued by a socket that closes (on
//! its thread or off it), backlog and back-pressure, errors. Where
//! io_uring is refused they skip, except under CI.

use super::stream_tests::io_uring_missing;
use super::*;
use crate::runtime::net::{Socket, accepted};
use std::io::Read;
use std::task::{Context, Poll};
use std::time::Duration;

/// `poll_send_soon` once; it must take everything.
fn send_soon(s: &Socket, bytes: &[u8]) {
    let waker = futures_util::task::noop_waker();
    let got = s.poll_send_soon(&mut Context::from_waker(&waker), bytes);
    assert!(
        matches!(got, Poll::Ready(Ok(n)) if n == bytes.len()),
        "{got:?}"
    );
}

fn read_all(mut peer: std::net::TcpStream) -> Vec<u8> {
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    peer.read_to_end(&mut got).expect("read to EOF");
    got
}

/// Small writes are queued for the turn's batch, a large one goes
/// straight out after them, and the peer sees the bytes in write order;
/// without batching, the same bytes go out one send each.
#[test]
fn queued_and_direct_sends_keep_their_order() {
    for batch_sends in [true, false] {
        let (peer, batched) = block_on_with(
            async {
                let (ours, peer) = accepted().await;
                // The first event (writable) comes with the first turn.
                tokio::task::yield_now().await;
                send_soon(&ours, b"a");
                let batched = queued_sends() == Some(1);
                let big = vec![b'b'; BATCH_MAX + 1];
                send_soon(&ours, &big);
                send_soon(&ours, b"c");
                send_soon(&ours, b"d");
                if batched {
                    assert_eq!(queued_sends(), Some(1), "c and d share one send");
                }
                tokio::task::yield_now().await;
                assert!(queued_sends().unwrap_or(0) == 0, "sent before the wait");
                (peer, batched)
            },
            LoopOptions { batch_sends },
        );
        if batch_sends && !batched {
            io_uring_missing();
        }
        assert!(batch_sends || !batched);
        let mut want = b"a".to_vec();
        want.extend(std::iter::repeat_n(b'b', BATCH_MAX + 1));
        want.extend(b"cd");
        assert_eq!(read_all(peer), want, "batch_sends = {batch_sends}");
    }
}

/// Bytes queued by a socket that closes in the same turn go out before
/// the close (the fd could otherwise be reused by the time the batch is
/// sent).
#[test]
fn a_socket_closed_after_a_queued_send_delivers_it() {
    let peer = block_on(async {
        let (ours, peer) = accepted().await;
        tokio::task::yield_now().await;
        send_soon(&ours, b"last words");
        drop(ours);
        assert_eq!(queued_sends().unwrap_or(0), 0);
        peer
    });
    assert_eq!(read_all(peer), b"last words");
}

/// A peer that does not read fills the socket: the loop keeps what the
/// kernel did not take (backlog), further writes wait for it, and
/// everything arrives in order once the peer reads.
#[test]
fn a_backlog_holds_writes_back_and_arrives_in_order() {
    const TOTAL: usize = 8 << 20;
    let (peer_tx, peer_rx) = std::sync::mpsc::channel::<std::net::TcpStream>();
    let reader = std::thread::spawn(move || {
        let peer = peer_rx.recv().expect("peer");
        // Long enough for the writer to fill every buffer and wait.
        std::thread::sleep(Duration::from_millis(300));
        read_all(peer)
    });
    let waited = block_on(async move {
        let (ours, peer) = accepted().await;
        socket2::SockRef::from(&ours)
            .set_send_buffer_size(4096)
            .expect("sndbuf");
        peer_tx.send(peer).expect("hand over");
        let mut waited = false;
        let mut at = 0usize;
        let chunk = 3000;
        while at < TOTAL {
            let bytes: Vec<u8> = (at..(at + chunk).min(TOTAL)).map(|i| i as u8).collect();
            let sent = std::future::poll_fn(|cx| {
                let r = ours.poll_send_soon(cx, &bytes);
                if r.is_pending() {
                    waited = true;
                }
                r
            })
            .await
            .expect("send");
            at += sent;
            // Now and then, a turn: the batch goes out.
            if at % (chunk * 3) < chunk {
                tokio::task::yield_now().await;
            }
        }
        std::future::poll_fn(|cx| ours.poll_settle(cx))
            .await
            .expect("settled");
        waited
    });
    assert!(waited, "the writer never had to wait");
    let got = reader.join().expect("reader");
    assert_eq!(got.len(), TOTAL);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == i as u8),
        "in order"
    );
}

/// A write polled with a no-op waker is not batched: if the batch's send
/// left a backlog, the no-op waker would tell no one, and the bytes would
/// wait for a task that does not know of them. It goes straight out.
#[test]
fn a_write_with_a_no_op_waker_is_not_batched() {
    let peer = block_on(async {
        let (ours, peer) = accepted().await;
        tokio::task::yield_now().await;
        if !batching_here() {
            return peer;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let got = ours.poll_send_soon(&mut cx, b"answer");
        assert!(matches!(got, Poll::Ready(Ok(6))), "{got:?}");
        assert_eq!(queued_sends(), Some(0), "sent, not queued");
        // A real waker's write is batched as usual.
        send_soon(&ours, b", more");
        assert_eq!(queued_sends(), Some(1));
        peer
    });
    assert_eq!(read_all(peer), b"answer, more");
}

/// A queued send that fails (the peer reset the connection) is reported
/// when the socket is next asked, not lost with the batch.
#[test]
fn a_failed_send_is_reported_at_the_next_ask() {
    block_on(async {
        let (ours, peer) = accepted().await;
        tokio::task::yield_now().await;
        // Closing with unread data or a zero linger sends a reset.
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(peer);
        std::thread::sleep(Duration::from_millis(20));
        send_soon(&ours, b"into the void");
        if queued_sends() != Some(1) {
            io_uring_missing();
            return;
        }
        tokio::task::yield_now().await;
        let settled = std::future::poll_fn(|cx| ours.poll_settle(cx)).await;
        let e = settled.expect_err("the reset is reported");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e:?}"
        );
    });
}

/// Whether this loop batches sends (see `io_uring_missing`).
fn batching_here() -> bool {
    let batching = queued_sends().is_some();
    if !batching {
        io_uring_missing();
    }
    batching
}

/// Bytes queued by a socket that is then dropped off its loop (so its
/// registration cannot flush them first) reach that socket's peer, and
/// never a socket accepted meanwhile that could get the same fd number.
#[test]
fn queued_bytes_of_a_socket_dropped_off_its_loop_reach_only_its_peer() {
    use std::os::fd::AsRawFd;
    let run = block_on(async {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = std_listener.local_addr().expect("addr");
        let listener = crate::runtime::net::Listener::from_std(std_listener).expect("register");
        let peer_a = std::net::TcpStream::connect(addr).expect("connect a");
        let (a, _) = listener.accept().await.expect("accept a");
        // B's peer connects now, so that accepting B after A's drop
        // allocates one fd only: the lowest free, A's if it was closed.
        let peer_b = std::net::TcpStream::connect(addr).expect("connect b");
        tokio::task::yield_now().await;
        if !batching_here() {
            return None;
        }
        send_soon(&a, b"secret of A");
        assert_eq!(queued_sends(), Some(1));
        let a_fd = a.as_raw_fd();
        std::thread::spawn(move || drop(a)).join().expect("drop a");
        assert_eq!(
            queued_sends(),
            Some(1),
            "the drop off the loop flushed nothing"
        );
        let (b, _) = listener.accept().await.expect("accept b");
        let b_fd = b.as_raw_fd();
        // The turn ends: the batch (A's bytes) goes out. Then B's own
        // bytes, to mark where B's stream is up to.
        tokio::task::yield_now().await;
        send_soon(&b, b"B's own");
        tokio::task::yield_now().await;
        std::future::poll_fn(|cx| b.poll_settle(cx))
            .await
            .expect("b settles");
        Some((peer_a, peer_b, a_fd, b_fd))
    });
    let Some((peer_a, mut peer_b, a_fd, b_fd)) = run else {
        return;
    };
    eprintln!("A had fd {a_fd}, B got fd {b_fd}");
    let mut got = vec![0u8; b"B's own".len()];
    peer_b
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Read::read_exact(&mut peer_b, &mut got).expect("B's bytes");
    assert_eq!(got, b"B's own", "B's peer got another socket's bytes");
    assert_eq!(read_all(peer_a), b"secret of A", "A's bytes reach A's peer");
}

/// A worker that always has a session to run (one that wakes itself
/// each poll) still sends what a turn queued: on tokio the runtime then
/// never parks, so the flush cannot wait for `on_thread_park`.
#[test]
fn a_busy_worker_still_sends_what_it_queued() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let got = block_on(async {
        let (ours, mut peer) = accepted().await;
        tokio::task::yield_now().await;
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = Arc::clone(&stop);
        let spinner = std::future::poll_fn(move |cx| {
            if spinning.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(spawn_local(Box::pin(spinner)).is_ok());
        tokio::task::yield_now().await;
        send_soon(&ours, b"ping");
        if !batching_here() {
            stop.store(true, Ordering::Relaxed);
            return None;
        }
        let reader = std::thread::spawn(move || {
            peer.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).map(|()| got)
        });
        while !reader.is_finished() {
            tokio::task::yield_now().await;
        }
        stop.store(true, Ordering::Relaxed);
        Some(reader.join().expect("reader"))
    });
    if let Some(got) = got {
        assert_eq!(&got.expect("the queued bytes arrive"), b"ping");
    }
}

/// tokio: a batch that reaches `FLUSH_SENDS` sends goes out at once,
/// without waiting for the end of the turn, and every peer gets its bytes.
#[test]
fn a_full_batch_is_sent_at_once() {
    use super::sends::FLUSH_SENDS;
    let peers = block_on(async {
        let mut pairs = Vec::new();
        for _ in 0..FLUSH_SENDS {
            pairs.push(accepted().await);
        }
        tokio::task::yield_now().await;
        if !batching_here() {
            return Vec::new();
        }
        let (last, rest) = pairs.split_last().expect("sockets");
        for (ours, _) in rest {
            send_soon(ours, b"x");
        }
        assert_eq!(queued_sends(), Some(FLUSH_SENDS - 1));
        send_soon(&last.0, b"x");
        assert_eq!(queued_sends(), Some(0), "sent at the bound");
        pairs
    });
    for (ours, peer) in peers {
        drop(ours);
        assert_eq!(read_all(peer), b"x");
    }
}

/// Before a socket goes to another session or worker, its queued bytes
/// go out (`settle_for_handoff` is true and nothing stays queued); a
/// socket with a backlog is refused for reuse.
#[test]
fn a_handed_off_socket_has_nothing_queued() {
    let (peer, refused) = block_on(async {
        let (ours, peer) = accepted().await;
        tokio::task::yield_now().await;
        if !batching_here() {
            return (peer, true);
        }
        send_soon(&ours, b"before the handoff");
        assert_eq!(queued_sends(), Some(1));
        assert!(ours.settle_for_handoff(), "settled");
        assert_eq!(queued_sends(), Some(0), "nothing queued at the handoff");
        drop(ours);

        // A peer that reads nothing: the kernel's buffers fill and a
        // submitted send leaves a backlog.
        let (full, _full_peer) = accepted().await;
        socket2::SockRef::from(&full)
            .set_send_buffer_size(4096)
            .expect("sndbuf");
        tokio::task::yield_now().await;
        let chunk = vec![7u8; 4000];
        let mut refused = false;
        for _ in 0..2000 {
            let waker = futures_util::task::noop_waker();
            match full.poll_send_soon(&mut Context::from_waker(&waker), &chunk) {
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => {
                    refused = !full.settle_for_handoff();
                    break;
                }
                Poll::Ready(Err(e)) => panic!("send: {e}"),
            }
            tokio::task::yield_now().await;
        }
        (peer, refused)
    });
    assert!(refused, "a socket with a backlog is not handed off");
    assert_eq!(read_all(peer), b"before the handoff");
}
