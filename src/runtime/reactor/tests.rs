//! Tests of the event loop: wake-ups from other threads, freed slots.

use super::*;
use crate::runtime::net::Socket;
use std::time::Duration;

/// A wake-up from another thread reaches a loop asleep in
/// `epoll_wait` with nothing else to wake it (no socket, no timer):
/// the eventfd path.
#[test]
fn a_wake_up_from_another_thread_interrupts_the_wait() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        tx.send(7).expect("receiver alive");
    });
    assert_eq!(block_on(promptly(rx)).expect("sent"), 7);
    sender.join().expect("sender");
}

/// `fut`'s output, which must come within 2 s. The 5 s timer bounds
/// the test if a wake-up is lost; a lost wake-up then shows as the
/// time the loop slept.
async fn promptly<F: Future>(fut: F) -> F::Output {
    let start = Instant::now();
    let out = crate::runtime::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("in time");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    out
}

/// The same for a session of the set, woken by another thread: the
/// set's remote list and the loop's eventfd.
#[test]
fn a_session_woken_from_another_thread_runs() {
    let done = block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let session = async move {
            let v: u32 = rx.await.expect("sent");
            let _ = done_tx.send(v + 1);
        };
        assert!(crate::runtime::spawn_local(Box::pin(session)).is_ok());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let _ = tx.send(1);
        });
        promptly(done_rx).await.expect("session ran")
    });
    assert_eq!(done, 2);
}

/// A socket dropped on another thread gives its slot back at the
/// loop's next turn; one dropped on the loop's thread at once.
#[test]
fn slots_of_dropped_sockets_are_freed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    block_on(async move {
        let a = Socket::connect("127.0.0.1", port).await.expect("connect");
        let b = Socket::connect("127.0.0.1", port).await.expect("connect");
        assert_eq!(registered(), 2);
        drop(a);
        assert_eq!(registered(), 1);
        std::thread::spawn(move || drop(b)).join().expect("drop");
        assert_eq!(registered(), 1, "freed by the loop, not the dropper");
        // One turn of the loop (a timer) frees it.
        crate::runtime::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(registered(), 0);
        drop(listener);
    });
}
