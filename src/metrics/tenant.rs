//! One tenant's counters. Each session has counters of its own
//! (`SessionStats`), registered with its tenant at login: only that
//! session writes them, so a transaction adds to a cache line no other
//! core writes (a relaxed load and store, not even a locked add), however
//! many workers serve the tenant. A scrape sums the tenant's live
//! sessions and what its ended sessions left (`TenantStats::read`, under
//! the tenant's lock, which only logins, logouts and scrapes take).

use slab::Slab;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Adds to a counter only one thread ever writes (the session's): a
/// plain load and store, cheaper than a locked add; readers on other
/// threads see each value whole (relaxed atomics).
fn add_one_writer(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Upper bounds (microseconds) of the duration histograms' buckets; the
/// last bucket (+Inf) has no bound. Zero first (a lease that did not wait
/// at all, the common case, so its p99 reads 0, not an interpolation),
/// then from half a millisecond (a pooled select) to half a minute.
pub const BUCKET_BOUNDS_US: [u64; 13] = [
    0, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000,
    30_000_000,
];
/// Buckets of a histogram, +Inf included.
pub const BUCKETS: usize = BUCKET_BOUNDS_US.len() + 1;

/// What a client connection can end with, as the errors metric labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Auth,
    Routing,
    Limit,
    Timeout,
    Backend,
    Protocol,
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Auth,
        ErrorKind::Routing,
        ErrorKind::Limit,
        ErrorKind::Timeout,
        ErrorKind::Backend,
        ErrorKind::Protocol,
        ErrorKind::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::Routing => "routing",
            ErrorKind::Limit => "limit",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Backend => "backend",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Counts per bucket (not cumulative) and the sum, in microseconds.
/// One writer (see `add_one_writer`).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        // In u64 arithmetic (`as_micros` divides a u128).
        let us = d
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(d.subsec_micros()));
        self.observe_us(us);
    }

    pub fn observe_us(&self, us: u64) {
        let i = BUCKET_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS - 1);
        add_one_writer(&self.buckets[i], 1);
        if us > 0 {
            add_one_writer(&self.sum_us, us);
        }
    }

    fn read(&self, out: &mut HistogramValues) {
        for (o, b) in out.buckets.iter_mut().zip(&self.buckets) {
            *o = b.load(Ordering::Relaxed);
        }
        out.sum_us = self.sum_us.load(Ordering::Relaxed);
    }
}

/// A histogram's values at one moment (plain numbers).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistogramValues {
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
}

impl HistogramValues {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The `q` quantile (0..1), estimated from the buckets as Prometheus'
    /// `histogram_quantile` does (linear within the bucket); the +Inf
    /// bucket answers with the largest finite bound. `None` when empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BUCKET_BOUNDS_US.get(i) else {
                    return BUCKET_BOUNDS_US.last().copied();
                };
                let lower = if i == 0 { 0 } else { BUCKET_BOUNDS_US[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + ((upper - lower) as f64 * within) as u64);
            }
            below += n;
        }
        BUCKET_BOUNDS_US.last().copied()
    }

    fn add_delta(&mut self, now: &HistogramValues, before: &HistogramValues) {
        for ((o, n), b) in self
            .buckets
            .iter_mut()
            .zip(&now.buckets)
            .zip(&before.buckets)
        {
            *o += n.saturating_sub(*b);
        }
        self.sum_us += now.sum_us.saturating_sub(before.sum_us);
    }
}

/// One session's counters; written by that session only.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// ReadyForQuery messages the server sent the client.
    queries: AtomicU64,
    /// From the client to the proxy.
    bytes_in: AtomicU64,
    /// From the server, towards the client.
    bytes_out: AtomicU64,
    /// From the server connection being leased to the lease's end; its
    /// count is the transactions (leases).
    pub query_time: Histogram,
    /// From asking the pool for a server connection to getting one.
    pub wait_time: Histogram,
    /// Named statements of the client (transaction mode).
    pub prepared: CacheEvents,
}

impl SessionStats {
    /// One lease ended: `queries` ReadyForQuery messages went to the
    /// client, `bytes_in`/`bytes_out` crossed since the last call.
    pub fn transaction_done(&self, queries: u64, bytes_in: u64, bytes_out: u64, held: Duration) {
        if queries > 0 {
            add_one_writer(&self.queries, queries);
        }
        if bytes_in > 0 {
            add_one_writer(&self.bytes_in, bytes_in);
        }
        if bytes_out > 0 {
            add_one_writer(&self.bytes_out, bytes_out);
        }
        self.query_time.observe(held);
    }

    fn add_to(&self, c: &mut Counters) {
        let mut query_time = HistogramValues::default();
        let mut wait_time = HistogramValues::default();
        self.query_time.read(&mut query_time);
        self.wait_time.read(&mut wait_time);
        let now = Counters {
            transactions: query_time.count(),
            queries: self.queries.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            errors: [0; 7],
            query_time,
            wait_time,
            prepared: [
                self.prepared.hits.load(Ordering::Relaxed),
                self.prepared.misses.load(Ordering::Relaxed),
                self.prepared.evictions.load(Ordering::Relaxed),
            ],
        };
        c.add_delta(&now, &Counters::default());
    }
}

/// A tenant's counters: its sessions', and its errors.
#[derive(Debug, Default)]
pub struct TenantStats {
    sessions: Mutex<Sessions>,
    /// By `ErrorKind`, in `ErrorKind::ALL` order (rare: a relaxed add).
    errors: [AtomicU64; 7],
}

#[derive(Debug, Default)]
struct Sessions {
    live: Slab<Arc<SessionStats>>,
    /// What ended sessions counted.
    ended: Counters,
}

impl TenantStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session's counters (at login); they fold into the
    /// tenant's when the returned handle drops.
    pub fn session(self: &Arc<Self>) -> SessionCounters {
        let stats = Arc::new(SessionStats::default());
        let slot = self.lock().live.insert(Arc::clone(&stats));
        SessionCounters {
            tenant: Arc::clone(self),
            slot,
            stats,
        }
    }

    /// Bytes outside any session (the last request of one that ended).
    pub fn add_bytes(&self, bytes_in: u64, bytes_out: u64) {
        if bytes_in > 0 || bytes_out > 0 {
            let mut s = self.lock();
            s.ended.bytes_in += bytes_in;
            s.ended.bytes_out += bytes_out;
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now: ended sessions' and live ones' (a scrape may see
    /// one transaction's counts half added, never a counter going back).
    pub fn read(&self) -> Counters {
        let mut c = {
            let s = self.lock();
            let mut c = s.ended;
            for (_, live) in s.live.iter() {
                live.add_to(&mut c);
            }
            c
        };
        for (o, e) in c.errors.iter_mut().zip(&self.errors) {
            *o = e.load(Ordering::Relaxed);
        }
        c
    }
}

/// A session's counters, registered with its tenant until dropped.
#[derive(Debug)]
pub struct SessionCounters {
    tenant: Arc<TenantStats>,
    slot: usize,
    stats: Arc<SessionStats>,
}

impl SessionCounters {
    pub fn tenant(&self) -> &Arc<TenantStats> {
        &self.tenant
    }
}

impl std::ops::Deref for SessionCounters {
    type Target = SessionStats;
    fn deref(&self) -> &SessionStats {
        &self.stats
    }
}

impl Drop for SessionCounters {
    fn drop(&mut self) {
        // Folded and unregistered under one lock: a scrape sees the
        // session's counts once, live or ended.
        let mut s = self.tenant.lock();
        let Sessions { live, ended } = &mut *s;
        if let Some(stats) = live.try_remove(self.slot) {
            stats.add_to(ended);
        }
    }
}

/// The named-statement cache of server connections (`session/statements`):
/// a statement the connection had (hit), had to prepare (miss), or closed
/// to make room (eviction). One writer: the session.
#[derive(Debug, Default)]
pub struct CacheEvents {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl CacheEvents {
    pub fn hit(&self) {
        add_one_writer(&self.hits, 1);
    }
    pub fn miss(&self) {
        add_one_writer(&self.misses, 1);
    }
    pub fn eviction(&self) {
        add_one_writer(&self.evictions, 1);
    }
}

/// A tenant's (or an aggregate's) counter values: what one series set
/// shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub transactions: u64,
    pub queries: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: [u64; 7],
    pub query_time: HistogramValues,
    pub wait_time: HistogramValues,
    /// Named-statement cache hits, misses, evictions.
    pub prepared: [u64; 3],
}

impl Counters {
    /// Adds what grew from `before` to `now` (counters only grow; a
    /// saturating difference keeps a racing read from going negative).
    pub fn add_delta(&mut self, now: &Counters, before: &Counters) {
        self.transactions += now.transactions.saturating_sub(before.transactions);
        self.queries += now.queries.saturating_sub(before.queries);
        self.bytes_in += now.bytes_in.saturating_sub(before.bytes_in);
        self.bytes_out += now.bytes_out.saturating_sub(before.bytes_out);
        for ((o, n), b) in self.errors.iter_mut().zip(&now.errors).zip(&before.errors) {
            *o += n.saturating_sub(*b);
        }
        self.query_time
            .add_delta(&now.query_time, &before.query_time);
        self.wait_time.add_delta(&now.wait_time, &before.wait_time);
        for ((o, n), b) in self
            .prepared
            .iter_mut()
            .zip(&now.prepared)
            .zip(&before.prepared)
        {
            *o += n.saturating_sub(*b);
        }
    }

    pub fn error(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = Histogram::default();
        h.observe_us(0);
        h.observe_us(1);
        h.observe_us(500);
        h.observe_us(501);
        h.observe_us(u64::MAX);
        let mut v = HistogramValues::default();
        h.read(&mut v);
        assert_eq!(v.buckets[0], 1);
        assert_eq!(v.buckets[1], 2);
        assert_eq!(v.buckets[2], 1);
        assert_eq!(v.buckets[BUCKETS - 1], 1);
        assert_eq!(v.count(), 5);
    }

    #[test]
    fn ended_sessions_keep_their_counts() {
        let tenant = Arc::new(TenantStats::default());
        let a = tenant.session();
        let b = tenant.session();
        a.transaction_done(2, 10, 20, Duration::from_millis(1));
        b.transaction_done(1, 1, 2, Duration::from_millis(1));
        b.prepared.miss();
        tenant.error(ErrorKind::Auth);
        let live = tenant.read();
        assert_eq!(
            (
                live.transactions,
                live.queries,
                live.bytes_in,
                live.bytes_out
            ),
            (2, 3, 11, 22)
        );
        drop(b);
        assert_eq!(
            tenant.read(),
            live,
            "the same counts, now from an ended session"
        );
        a.transaction_done(1, 0, 0, Duration::ZERO);
        drop(a);
        let after = tenant.read();
        assert_eq!(
            (after.transactions, after.queries, after.prepared[1]),
            (3, 4, 1)
        );
        assert_eq!(after.error(ErrorKind::Auth), 1);
        assert!(tenant.lock().live.is_empty());
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.observe_us(100);
        }
        h.observe_us(40_000);
        let mut v = HistogramValues::default();
        h.read(&mut v);
        assert!(v.quantile_us(0.5).is_some_and(|q| q <= 500));
        assert!(v.quantile_us(0.99).is_some_and(|q| q <= 500));
        assert!(
            v.quantile_us(1.0)
                .is_some_and(|q| q > 25_000 && q <= 50_000)
        );
        assert_eq!(HistogramValues::default().quantile_us(0.99), None);
        let zeros = Histogram::default();
        zeros.observe_us(0);
        let mut v = HistogramValues::default();
        zeros.read(&mut v);
        assert_eq!(v.quantile_us(0.99), Some(0), "no wait reads as none");
    }
}
