//! The data-plane threads. Each worker is a thread with its own
//! single-threaded tokio runtime, accepting from the shared listener. A
//! client and the server connections it leases stay on one thread (the
//! pool prefers connections registered with the caller's worker), so a
//! transaction costs no cross-thread wake-ups: on these machines that is
//! the difference between beating PgBouncer and losing to it
//! (`shared/research/perf-floor.md`: 17.4 vs 25.9 µs/txn for the same
//! relay on a current-thread vs multi-thread runtime).

use std::cell::Cell;

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

/// Worker count for a config value: 0 means one per CPU.
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}
