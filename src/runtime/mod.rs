//! The data-plane threads. Each worker is a thread with its own
//! single-threaded tokio runtime, accepting from the shared listener. A
//! client and the server connections it leases stay on one thread (the
//! pool prefers connections registered with the caller's worker), so a
//! transaction costs no cross-thread wake-ups: on these machines that is
//! the difference between beating PgBouncer and losing to it
//! (`shared/research/perf-floor.md`: 17.4 vs 25.9 µs/txn for the same
//! relay on a current-thread vs multi-thread runtime).
//!
//! A worker's sessions are not tokio tasks of their own: one task polls
//! them all (`session_set`), which takes tokio's scheduler out of each
//! session wake-up.

use crate::client;
use crate::state::ProxyState;
use anyhow::Context as _;
use session_set::SessionSet;
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

mod session_set;

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
/// every session it accepts, until shutdown; then lets the sessions end
/// their transactions for up to `grace`.
pub fn worker_main(
    id: usize,
    state: Arc<ProxyState>,
    listener: std::net::TcpListener,
    grace: Duration,
) -> anyhow::Result<()> {
    set_current_worker(id);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the worker runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        // Created here, on this thread, so `spawn_local` reaches it before
        // its task first runs. Unconstrained: tokio's cooperative budget
        // is per task, and this task is every session of the worker; the
        // sessions keep their own fairness (`Flow::poll_fill` yields after
        // a run of reads).
        let mut set = SessionSet::new();
        let sessions = tokio::spawn(tokio::task::unconstrained(std::future::poll_fn(
            move |cx| set.poll(cx),
        )));
        let shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let session = client::serve(Arc::clone(&state), stream, peer);
                        // Boxed: a client's future is several kB (the whole
                        // session state machine); a box moves as one pointer.
                        if session_set::spawn_local(Box::pin(session)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        session_set::close_local();
        if tokio::time::timeout(grace, sessions).await.is_err() {
            tracing::warn!(
                worker = id,
                "shutdown_timeout reached; closing remaining sessions"
            );
        }
        Ok(())
    })
}
