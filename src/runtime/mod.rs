//! The data-plane threads and the seam they run behind. Each worker is a
//! thread with its own event loop, accepting from the shared listener. A
//! client and the server connections it leases stay on one thread (the
//! pool prefers connections registered with the caller's worker), so a
//! transaction costs no cross-thread wake-ups: on these machines that is
//! the difference between beating PgBouncer and losing to it
//! (`shared/research/perf-floor.md`: 17.4 vs 25.9 µs/txn for the same
//! relay on a current-thread vs multi-thread runtime).
//!
//! Each worker runs one current-thread tokio runtime (`worker_rt`), each
//! session a task of it, and batches a turn's small sends into one
//! `io_uring_enter` (`batch`, `sends`) where the kernel allows it.
//! What the rest of the crate may name: `net::{Socket, Listener}`,
//! `stream::{Stream, Transport}` (a connection plain or TLS),
//! `time`, [`spawn_local`], [`block_on`], [`worker_main`],
//! [`current_worker`], [`Direction`], [`LoopOptions`]; nothing else here
//! (no epoll, io_uring or fd) leaks out.

use anyhow::Context as _;
use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod batch;
pub mod net;
mod sends;
#[cfg(test)]
mod sends_tests;
pub mod stream;
#[cfg(test)]
pub(crate) mod stream_tests;
pub mod time;
mod tls_socket;
mod worker_rt;

pub use batch::BATCH_MAX;
#[cfg(test)]
pub(crate) use sends::queued_sends;
#[cfg(test)]
pub(crate) use worker_rt::block_on_paused;
pub use worker_rt::{block_on, block_on_with, spawn_local};
use worker_rt::{close_local, run};

/// A client's whole life, boxed (it is several kB; a box moves as one
/// pointer).
pub type SessionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a worker does with an accepted socket: the session to run for it,
/// or None (refused and closed already). Wired in `lib.rs`, so the
/// runtime knows no protocol.
pub type AcceptHandler =
    Arc<dyn Fn(net::Socket, SocketAddr) -> Option<SessionFuture> + Send + Sync>;

/// A direction of a socket's readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// How a worker's runtime runs.
#[derive(Debug, Clone, Copy)]
pub struct LoopOptions {
    /// Submit each turn's small sends together through io_uring
    /// (`batch`), where the kernel allows it.
    pub batch_sends: bool,
}

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker this thread runs (0 outside data-plane threads).
pub fn current_worker() -> usize {
    WORKER.with(Cell::get)
}

/// Marks this thread as worker `id`.
pub fn set_current_worker(id: usize) {
    WORKER.with(|w| w.set(id));
}

/// Worker count for a config value; 0 means half the CPUs, at least one.
///
/// Why half: the proxy's work is almost all syscalls, and it usually shares
/// the host with clients or the database. Measured on a 2-core VM with
/// pgbench and PostgreSQL on the same host (select-only, 16 clients), one
/// worker cost 18.3 µs of proxy CPU per transaction and two cost 24.9:
/// a second thread adds wake-ups and context switches, not throughput.
/// Hosts dedicated to the proxy should set `workers` to their core count.
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism()
            .map(|n| (n.get() / 2).max(1))
            .unwrap_or(1)
    }
}

/// One data-plane thread: accepts from its clone of the listener and runs
/// every session it accepts on its own event loop, until shutdown; then
/// lets the sessions end their transactions for up to `grace`.
pub fn worker_main(
    id: usize,
    listener: std::net::TcpListener,
    on_accept: AcceptHandler,
    shutdown: CancellationToken,
    (grace, options): (Duration, LoopOptions),
) -> anyhow::Result<()> {
    set_current_worker(id);
    let acceptor = accept_loop(listener, on_accept, shutdown.clone());
    // The loop ends when every session has ended after shutdown, or when
    // the grace period is over (the sessions left are dropped after).
    let grace_over = async {
        shutdown.cancelled().await;
        time::sleep(grace).await;
    };
    let ended =
        run(Box::pin(acceptor), grace_over, options).context("running the worker's event loop")?;
    if ended.is_some() {
        tracing::warn!(
            worker = id,
            "shutdown_timeout reached; closing remaining sessions"
        );
    }
    Ok(())
}

/// Connections accepted without letting the worker's other sessions run.
const ACCEPTS_IN_A_ROW: u32 = 64;

/// Accepts clients until shutdown, each a session of this worker's set;
/// then closes the set to newcomers.
async fn accept_loop(
    listener: std::net::TcpListener,
    on_accept: AcceptHandler,
    shutdown: CancellationToken,
) {
    let listener = match net::Listener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on this worker: {e}");
            close_local();
            return;
        }
    };
    let mut in_a_row = 0u32;
    loop {
        // A burst of connections is taken in gulps: the sessions already
        // running get their turn between them (the loop has no
        // cooperative budget to force it).
        in_a_row += 1;
        if in_a_row > ACCEPTS_IN_A_ROW {
            in_a_row = 0;
            // tokio's yield_now needs no runtime: it wakes at once.
            tokio::task::yield_now().await;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(session) = on_accept(stream, peer) else {
                        continue;
                    };
                    if spawn_local(session).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    close_local();
}
