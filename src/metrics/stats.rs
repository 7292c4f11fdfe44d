//! Per-tenant figures for the admin console's SHOW STATS, in PgBouncer's
//! terms where they match: totals since start, averages over them, and
//! p99 estimated from the histograms' buckets.

use super::Metrics;

/// One tenant's row. Times in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStatsRow {
    pub tenant: String,
    /// PgBouncer's `total_xact_count`.
    pub transactions: u64,
    /// PgBouncer's `total_query_count`.
    pub queries: u64,
    /// `total_received` (from clients) and `total_sent` (to clients).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `total_xact_time`: server connections held, summed.
    pub total_query_time_us: u64,
    /// `total_wait_time`: waits for a server connection, summed.
    pub total_wait_time_us: u64,
    /// `total_query_time_us / transactions` (PgBouncer's avg_xact_time).
    pub avg_query_time_us: u64,
    pub p99_query_time_us: u64,
    /// `total_wait_time_us / transactions` (per lease).
    pub avg_wait_time_us: u64,
    pub p99_wait_time_us: u64,
}

impl Metrics {
    /// Every tenant that has had a client since start, by name.
    pub fn tenant_stats(&self) -> Vec<TenantStatsRow> {
        let mut rows = Vec::new();
        self.each_tenant(|id, stats| {
            let c = stats.read();
            let per = |sum: u64, n: u64| sum.checked_div(n).unwrap_or(0);
            rows.push(TenantStatsRow {
                tenant: id.as_str().to_owned(),
                transactions: c.transactions,
                queries: c.queries,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                total_query_time_us: c.query_time.sum_us,
                total_wait_time_us: c.wait_time.sum_us,
                avg_query_time_us: per(c.query_time.sum_us, c.query_time.count()),
                p99_query_time_us: c.query_time.quantile_us(0.99).unwrap_or(0),
                avg_wait_time_us: per(c.wait_time.sum_us, c.wait_time.count()),
                p99_wait_time_us: c.wait_time.quantile_us(0.99).unwrap_or(0),
            });
        });
        rows.sort_unstable_by(|a, b| a.tenant.cmp(&b.tenant));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::TenantId;
    use std::time::Duration;

    #[test]
    fn rows_total_and_average() {
        let m = Metrics::default();
        let a = m.tenant(&TenantId::new("a")).session();
        a.transaction_done(2, 10, 20, Duration::from_millis(2));
        a.transaction_done(1, 5, 5, Duration::from_millis(4));
        a.wait_time.observe(Duration::ZERO);
        a.wait_time.observe(Duration::from_millis(10));
        let rows = m.tenant_stats();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.transactions, r.queries, r.bytes_in, r.bytes_out),
            (2, 3, 15, 25)
        );
        assert_eq!(r.avg_query_time_us, 3_000);
        assert_eq!(r.avg_wait_time_us, 5_000);
        assert!(r.p99_wait_time_us > 5_000 && r.p99_wait_time_us <= 10_000);
    }
}
