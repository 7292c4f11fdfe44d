//! One tenant's counters, shared by its sessions: resolved once at login
//! (an `Arc`), then bumped with relaxed atomic adds, no lock and no
//! allocation per transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.observe_us(us);
    }

    pub fn observe_us(&self, us: u64) {
        let i = BUCKET_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        if us > 0 {
            self.sum_us.fetch_add(us, Ordering::Relaxed);
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

/// A tenant's counters, bumped by its sessions.
#[derive(Debug, Default)]
pub struct TenantStats {
    /// Leases that ended (a transaction in transaction mode).
    pub transactions: AtomicU64,
    /// ReadyForQuery messages the server sent the tenant's clients.
    pub queries: AtomicU64,
    /// From the tenant's clients to the proxy.
    pub bytes_in: AtomicU64,
    /// From the tenant's servers, towards its clients.
    pub bytes_out: AtomicU64,
    /// By `ErrorKind`, in `ErrorKind::ALL` order.
    errors: [AtomicU64; 7],
    /// From the server connection being leased to the lease's end.
    pub query_time: Histogram,
    /// From asking the pool for a server connection to getting one.
    pub wait_time: Histogram,
    /// Named statements of its clients (transaction mode).
    pub prepared: CacheEvents,
}

/// The named-statement cache of server connections (`session/statements`):
/// a statement the connection had (hit), had to prepare (miss), or closed
/// to make room (eviction).
#[derive(Debug, Default)]
pub struct CacheEvents {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

impl CacheEvents {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }
    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }
    pub fn eviction(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

impl TenantStats {
    /// One lease ended: `queries` ReadyForQuery messages went to the
    /// client, `bytes_in`/`bytes_out` crossed since the last call.
    pub fn transaction_done(&self, queries: u64, bytes_in: u64, bytes_out: u64, held: Duration) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        if queries > 0 {
            self.queries.fetch_add(queries, Ordering::Relaxed);
        }
        self.add_bytes(bytes_in, bytes_out);
        self.query_time.observe(held);
    }

    pub fn add_bytes(&self, bytes_in: u64, bytes_out: u64) {
        if bytes_in > 0 {
            self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        }
        if bytes_out > 0 {
            self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now (each read on its own: a scrape may see one
    /// transaction's counts half added, never a counter going back).
    pub fn read(&self) -> Counters {
        let mut c = Counters {
            transactions: self.transactions.load(Ordering::Relaxed),
            queries: self.queries.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            ..Counters::default()
        };
        for (o, e) in c.errors.iter_mut().zip(&self.errors) {
            *o = e.load(Ordering::Relaxed);
        }
        self.query_time.read(&mut c.query_time);
        self.wait_time.read(&mut c.wait_time);
        c.prepared = [
            self.prepared.hits.load(Ordering::Relaxed),
            self.prepared.misses.load(Ordering::Relaxed),
            self.prepared.evictions.load(Ordering::Relaxed),
        ];
        c
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
