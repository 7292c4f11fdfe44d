//! Per-tenant and proxy-wide metrics: the counters sessions bump
//! (`tenant`), which tenants get series of their own (`topk`), the
//! Prometheus text (`render`, `encode`) and the per-tenant figures of the
//! admin console's SHOW STATS (`stats`).
//!
//! Hot path: a session registers counters of its own with its tenant's
//! `TenantStats` once at login; per transaction it adds to them with
//! relaxed loads and stores only it makes (no lock, no locked add, no
//! allocation, no cache line shared with another writer). Gauges (connections by state) are read at scrape time
//! from the state the proxy already keeps (client counters, pools).

pub mod encode;
pub mod render;
pub mod stats;
pub mod tenant;
pub mod topk;

pub use tenant::{CacheEvents, ErrorKind, SessionCounters, SessionStats, TenantStats};

use crate::catalog::FastHash;
use crate::routing::TenantId;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Label value of the tenants without series of their own.
pub const OTHER: &str = "_other";
/// Label value of errors before a tenant was known (routing, startup).
pub const UNKNOWN: &str = "_unknown";

/// Everything the metrics keep; one per proxy (`ProxyState::metrics`).
#[derive(Default)]
pub struct Metrics {
    /// Tenants that have had a client since start (or since they were
    /// last pruned as removed).
    tenants: DashMap<TenantId, Arc<TenantStats>, FastHash>,
    /// Errors of connections whose tenant was not known yet.
    pub unknown: TenantStats,
    /// Operators' connections (not tenants): counted in `_other`.
    operators: Arc<TenantStats>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Between scrapes: who has series of their own (`topk`).
    pub(crate) export: Mutex<topk::TopK>,
}

impl Metrics {
    /// The counters of `tenant`, made on its first client (at login,
    /// never per transaction).
    pub fn tenant(&self, tenant: &TenantId) -> Arc<TenantStats> {
        if let Some(s) = self.tenants.get(tenant) {
            return Arc::clone(s.value());
        }
        Arc::clone(self.tenants.entry(tenant.clone()).or_default().value())
    }

    /// The counters operators' connections add to (`_other`).
    pub fn operators(&self) -> Arc<TenantStats> {
        Arc::clone(&self.operators)
    }

    /// Counts a reload (the reload code calls this once per attempt).
    pub fn reload_done(&self, ok: bool) {
        let c = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Drops the counters of tenants no longer in the catalog (removed by
    /// a reload); their series disappear. Sessions still open keep their
    /// `Arc` and count into it unseen.
    pub fn prune(&self, exists: impl Fn(&str) -> bool) {
        self.tenants.retain(|id, _| exists(id.as_str()));
    }

    /// Every tenant's counters, for a scrape or SHOW STATS.
    pub fn each_tenant(&self, mut f: impl FnMut(&TenantId, &TenantStats)) {
        for e in self.tenants.iter() {
            f(e.key(), e.value());
        }
    }
}
