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
