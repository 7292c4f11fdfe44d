//! The plain socket's direct calls as the forwarding path makes them
//! (`Transport for Socket`): reads, sends, EOF, a socket moved between
//! workers, and the waker a pending readiness keeps.

use super::block_on;
use super::net::Socket;
use super::net::accepted;
use super::stream::Transport;
use bytes::BytesMut;
use std::io;
use std::task::Poll;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes go both ways through the direct calls, a short read leaves
/// the socket waiting for readiness, and EOF reads as 0.
#[test]
fn recv_and_send_round_trip() {
    block_on(async {
        let (mut ours, peer) = accepted().await;
        let mut peer = Socket::from_std(peer).expect("register");

        peer.write_all(b"hello").await.expect("write");
        let mut buf = BytesMut::with_capacity(64);
        let n = recv_when_ready(&mut ours, &mut buf).await;
        assert_eq!((n, &buf[..]), (5, &b"hello"[..]));
        // The short read cleared readiness: nothing more without a syscall.
        assert!(!ours.read_ready());

        let sent = std::future::poll_fn(|cx| ours.poll_send_soon(cx, b"back")).await;
        assert_eq!(sent.expect("send"), 4);
        let mut back = [0u8; 4];
        peer.read_exact(&mut back).await.expect("read back");
        assert_eq!(&back, b"back");

        drop(peer);
        assert_eq!(recv_when_ready(&mut ours, &mut buf).await, 0, "EOF");
    });
}

/// Data and the peer's FIN reported in one event: the read that takes
/// the data (a short read, which clears readiness) is followed by one
/// that sees EOF, though no further event comes.
#[test]
fn eof_right_behind_data_is_seen() {
    block_on(async {
        let (mut ours, mut peer) = accepted().await;
        std::io::Write::write_all(&mut peer, b"bye").expect("write");
        drop(peer);
        // Both arrive before the loop next asks the kernel.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut buf = BytesMut::with_capacity(64);
        let limit = std::time::Duration::from_secs(5);
        let got = crate::runtime::time::timeout(limit, async {
            let n = recv_when_ready(&mut ours, &mut buf).await;
            (n, recv_when_ready(&mut ours, &mut buf).await)
        })
        .await;
        assert_eq!(got, Ok((3, 0)), "the data, then EOF");
    });
}

/// A socket registered on one thread's loop and moved to another's
/// (a pooled server connection checked out by another worker) works
/// there, and is refused on a thread whose loop it was not moved to.
#[test]
fn sockets_move_between_loops() {
    let (tx, rx) = std::sync::mpsc::channel();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = std_listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = std_listener.accept().expect("accept");
        let mut b = [0u8; 4];
        std::io::Read::read_exact(&mut s, &mut b).expect("read");
        std::io::Write::write_all(&mut s, &b).expect("echo");
        b
    });
    std::thread::spawn(move || {
        let s = block_on(Socket::connect("127.0.0.1", port)).expect("connect");
        tx.send(s).expect("hand over");
    })
    .join()
    .expect("first loop");
    let s = rx.recv().expect("socket");
    block_on(async move {
        let refused = {
            let mut wrong = std::pin::pin!(s.readable());
            futures_util::poll!(wrong.as_mut())
        };
        assert!(matches!(refused, Poll::Ready(Err(_))), "{refused:?}");
        let mut s = s.rebind().expect("rebind");
        s.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.expect("read");
        assert_eq!(&b, b"ping");
    });
    assert_eq!(&server.join().expect("server"), b"ping");
}

/// A Pending from `poll_read_ready` leaves the task's waker with the
/// socket, even after the task has had many ready answers in one poll
/// (tokio's coop budget would otherwise turn one into a Pending that
/// stores nothing). The pump relies on it: once armed, it only looks
/// at `read_ready` until woken (`Flow::poll_fill`).
#[test]
fn a_pending_read_readiness_always_holds_the_waker() {
    block_on(async {
        let (ours, mut peer) = accepted().await;
        tokio::task::yield_now().await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let mut armed = false;
        let waiter = Box::pin(std::future::poll_fn(move |cx| {
            if armed && !ours.read_ready() {
                return Poll::Pending;
            }
            if !armed {
                // Far more ready answers than tokio's budget of 128.
                for _ in 0..1000 {
                    let _ = ours.poll_write_ready(cx);
                }
                if ours.poll_read_ready(cx).is_pending() {
                    armed = true;
                    return Poll::Pending;
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
            Poll::Ready(())
        }));
        assert!(crate::runtime::spawn_local(waiter).is_ok());
        tokio::task::yield_now().await;
        std::io::Write::write_all(&mut peer, b"x").expect("write");
        let limit = std::time::Duration::from_secs(5);
        let woken = crate::runtime::time::timeout(limit, rx).await;
        assert!(matches!(woken, Ok(Ok(()))), "the reader was never woken");
    });
}

/// `recv_into` once the loop says `s` is readable, again after a
/// spurious wake-up.
async fn recv_when_ready(s: &mut Socket, buf: &mut BytesMut) -> usize {
    loop {
        s.readable().await.expect("readable");
        match s.recv_into(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv: {e}"),
        }
    }
}
