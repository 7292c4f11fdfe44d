//! What a pool reports about itself (SHOW POOLS, metrics later): counts
//! taken from its state, and event counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts for SHOW POOLS and metrics, taken from the pool's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: usize,
    /// Leased to clients (or being cleaned for reuse after one).
    pub active: usize,
    /// Being opened.
    pub connecting: usize,
    pub waiting: usize,
    pub max: usize,
}

/// Event counters since the pool was created (for SHOW POOLS/metrics).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections opened.
    pub connects: AtomicU64,
    /// Connection attempts that failed (refused, timed out, rejected).
    pub connect_failures: AtomicU64,
    /// Checkouts refused without an attempt while backing off.
    pub backoff_refusals: AtomicU64,
    /// Closed after `server_idle_timeout` unused.
    pub closed_idle: AtomicU64,
    /// Closed at the end of their lifetime.
    pub closed_lifetime: AtomicU64,
    /// Idle connections found dead at checkout (probe or round trip).
    pub closed_dead: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
