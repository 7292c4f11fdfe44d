//! The pool of server connections for one placement.
//!
//! Why not bb8: a proxy pool needs (a) hand-off of a returned connection
//! straight to a waiter (bb8 wakes waiters with a `Notify` and lets
//! newcomers barge ahead), (b) connections that stay on the worker thread
//! that uses them, (c) live resize, and (d) per-tenant fair checkout: a cap
//! on what each tenant holds and a round robin across waiting tenants
//! (`fair.rs`). bb8 expresses none of these; the whole pool is a few
//! hundred lines around one mutex that is never held across an await.
//!
//! Tenants: every checkout names the tenant it is for (a [`TenantSeat`],
//! looked up by name once per login with [`PlacementPool::seat`]). A
//! tenant holding its `max_server_connections` (leased, pinned or being
//! opened) waits even when connections are idle; waiters are served one
//! tenant at a time in turn, oldest first within a tenant.
//!
//! Accounting: `total` counts every connection that exists or is being
//! opened for this pool (idle + leased + connecting), so `pool_size` is a
//! hard cap. Every [`Lease`] either comes back through [`Lease::release`]
//! or is dropped, and a drop closes the connection and frees its slot, so
//! no path leaks a slot.
//!
//! Opening connections: at most [`CONNECT_CONCURRENCY`] at once. After a
//! failed attempt the placement is *backing off* for [`retry_delay`]
//! (100 ms, doubling per consecutive failure, capped at
//! `server_login_retry`): a checkout that would need a new connection
//! fails at once with [`ServerError::Backoff`] instead of trying, and so
//! do the clients already waiting for one. When the delay is over, the
//! next checkout makes one attempt (a probe; others wait for it); its
//! success ends the backoff and connections open at full concurrency
//! again. So a down server sees about one attempt per delay per pool, not
//! one per client, and clients are told 08006 without waiting. A backend
//! role that fails its check (`role_check.rs`, run on new connections
//! until one passes; on an rls placement also `rls_check.rs`) counts as a
//! failed connect the same way.
//!
//! Upkeep (`janitor.rs` calls [`PlacementPool::maintain`] every second):
//! idle connections past `server_idle_timeout` or their lifetime are
//! closed, and those idle past `server_check_delay` are marked for a
//! round-trip check at their next checkout. A connection past its
//! lifetime is also closed when it comes back, never while leased. The
//! hot path pays for none of this: checkout reads one flag, release one
//! comparison.

use super::context::TenantContext;
use super::fair::{TenantCounts, TenantSeat, Tenants};
use super::queue::{Grant, State, hand_to_waiter, put_idle, serve_waiters};
use super::role_check::RolePolicy;
use super::server_conn::{ServerConn, ServerError};
use super::startup_params::StartupParams;
use super::stats::{PoolCounts, PoolStats, bump};
use super::timing::{PoolTimeouts, retry_delay};
use crate::config::BackendTarget;

/// A pooled connection, boxed once when opened: checkout and release move
/// it between the idle lists, waiters and leases several times per
/// transaction, and a pointer moves for free where the struct would be
/// copied.
pub(super) type Pooled = Box<ServerConn>;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// The placement's name, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlacementName(pub String);

impl std::fmt::Display for PlacementName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why no connection could be leased.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("timed out waiting for a server connection")]
    WaitTimeout,
    #[error(transparent)]
    Connect(#[from] ServerError),
}

/// Server connections to one placement database.
pub struct PlacementPool {
    name: PlacementName,
    target: BackendTarget,
    timeouts: PoolTimeouts,
    state: Mutex<State>,
    stats: PoolStats,
    /// ParameterStatus set of the first server connection, shown to
    /// clients at startup (before any server is leased to them).
    startup_params: Mutex<Option<Arc<StartupParams>>>,
    /// What the backend role must not be able to do (`role_check.rs`).
    roles: RolePolicy,
    /// The role passed its check (or is trusted): later connects skip it.
    /// Until then every new connection is checked before anyone uses it.
    role_vetted: AtomicBool,
    /// `isolation = "rls"`: the tenant context each lease starts with
    /// (`context.rs`).
    context: Option<TenantContext>,
    /// The context passed its self-test on a connection of this pool.
    context_vetted: AtomicBool,
    /// What the session keeps per placement (the statements its servers
    /// accepted), opaque here (`carried.rs`).
    carried: super::SharedCarried,
    /// The placement's tenants by name (the hasher of the catalog's maps,
    /// as clients cannot choose these keys). Read once per login; written
    /// by a reload (`placement_live.rs`). Lock order: this, then `state`.
    seats: RwLock<Seats>,
    /// Its open connections (SHOW SERVERS).
    servers: Arc<super::servers::ServerList>,
}

type Seats = HashMap<Box<str>, TenantSeat, foldhash::fast::RandomState>;

/// A tenant of a placement and how many of its server connections the
/// tenant's clients may hold at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTenant {
    pub name: String,
    pub max_server_connections: usize,
}

impl PlacementPool {
    // Each argument is one independent part of the placement's config.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: PlacementName,
        target: BackendTarget,
        max: usize,
        workers: usize,
        timeouts: PoolTimeouts,
        roles: RolePolicy,
        context: Option<TenantContext>,
        tenants: Vec<PoolTenant>,
    ) -> Arc<PlacementPool> {
        let caps = tenants.iter().map(|t| t.max_server_connections);
        let shares = Tenants::new(caps);
        let seats = tenants
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t.name.into_boxed_str(), TenantSeat(i as u32)))
            .collect();
        Arc::new(PlacementPool {
            role_vetted: AtomicBool::new(roles.trusted && !roles.operator),
            context,
            context_vetted: AtomicBool::new(false),
            roles,
            name,
            target,
            timeouts,
            state: Mutex::new(State {
                idle: (0..workers.max(1)).map(|_| Vec::new()).collect(),
                idle_count: 0,
                total: 0,
                connecting: 0,
                max: max.max(1),
                tenants: shares,
                next_waiter: 0,
                failures: 0,
                retry_at: None,
                retired: false,
            }),
            stats: PoolStats::default(),
            startup_params: Mutex::new(None),
            carried: Default::default(),
            seats: RwLock::new(seats),
            servers: Default::default(),
        })
    }

    /// The seat of a tenant of this placement; `None` for a tenant the
    /// pool was not made with.
    pub fn seat(&self, tenant: &str) -> Option<TenantSeat> {
        self.seats
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
    }

    /// What a tenant holds of this pool, how many of its clients wait, and
    /// its cap.
    pub fn tenant_counts(&self, seat: TenantSeat) -> Option<TenantCounts> {
        self.lock().tenants.counts(seat)
    }

    /// What the layer above keeps with this placement.
    pub fn carried(&self) -> &super::SharedCarried {
        &self.carried
    }

    pub fn name(&self) -> &PlacementName {
        &self.name
    }

    pub fn target(&self) -> &BackendTarget {
        &self.target
    }

    pub fn timeouts(&self) -> &PoolTimeouts {
        &self.timeouts
    }

    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in the few lines
        // below; keep serving rather than poison every later checkout.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn counts(&self) -> PoolCounts {
        let s = self.lock();
        PoolCounts {
            idle: s.idle_count,
            active: s.total - s.idle_count - s.connecting,
            connecting: s.connecting,
            waiting: s.tenants.waiting(),
            max: s.max,
        }
    }

    /// When its longest-waiting checkout started waiting (None: nobody
    /// waits). Looks at every tenant's first waiter, for SHOW POOLS and
    /// scrapes: a chunk of tenants per taking of the lock, so that with
    /// many tenants checkouts never wait behind the whole scan.
    pub fn oldest_wait(&self) -> Option<Instant> {
        const CHUNK: usize = 1024;
        let mut oldest: Option<Instant> = None;
        let mut from = 0;
        loop {
            let (found, count) = {
                let s = self.lock();
                (
                    s.tenants.oldest_since(from..from + CHUNK),
                    s.tenants.seat_count(),
                )
            };
            oldest = oldest.into_iter().chain(found).min();
            from += CHUNK;
            if from >= count {
                return oldest;
            }
        }
    }

    /// Its open connections, each with whether it is idle right now.
    pub fn servers(&self) -> Vec<(super::servers::ServerInfo, bool)> {
        let idle: std::collections::HashSet<usize> = {
            let s = self.lock();
            s.idle
                .iter()
                .flatten()
                .filter_map(|c| c.listed.as_ref().map(|l| l.id))
                .collect()
        };
        self.servers
            .list()
            .into_iter()
            .map(|info| {
                let is_idle = idle.contains(&info.id);
                (info, is_idle)
            })
            .collect()
    }

    /// Its tenants' names and seats (SHOW POOLS), as of now.
    pub fn seats(&self) -> Vec<(String, TenantSeat)> {
        self.seats
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, s)| (n.to_string(), *s))
            .collect()
    }

    /// The server parameters clients see at startup; opens (and returns)
    /// a connection the first time.
    ///
    /// Not an `async fn`: every login awaits this, nearly always with
    /// the parameters known, so the checkout (a 1.6 kB future) is boxed
    /// apart rather than made part of every login's future.
    pub fn startup_params(
        self: &Arc<Self>,
        seat: TenantSeat,
        wait: Duration,
    ) -> impl Future<Output = Result<Arc<StartupParams>, CheckoutError>> + '_ {
        let cached = self.cached_params();
        async move {
            match cached {
                Some(p) => Ok(p),
                None => Box::pin(self.first_startup_params(seat, wait)).await,
            }
        }
    }

    async fn first_startup_params(
        self: &Arc<Self>,
        seat: TenantSeat,
        wait: Duration,
    ) -> Result<Arc<StartupParams>, CheckoutError> {
        let lease = self.checkout(seat, wait).await?;
        let params = self.cached_params();
        lease.release();
        params.ok_or(CheckoutError::Connect(ServerError::Protocol(
            "no parameters".into(),
        )))
    }

    fn cached_params(&self) -> Option<Arc<StartupParams>> {
        self.startup_params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A clean connection `seat` held comes back: closed if its lifetime
    /// is over, else straight to the waiter whose turn it is, or idle on
    /// its worker.
    /// `now`: the caller's reading of `runtime::time::now()`.
    pub(super) fn put_back(&self, mut conn: Pooled, seat: TenantSeat, now: Instant) {
        conn.last_used = now;
        conn.needs_check = self.timeouts.check_delay.is_zero();
        if conn.retire_at.is_some_and(|at| now >= at) {
            bump(&self.stats.closed_lifetime, 1);
            conn.close();
            self.forget_one(seat);
            return;
        }
        let mut s = self.lock();
        s.tenants.release(seat);
        if s.total > s.max {
            s.total -= 1;
            serve_waiters(&mut s);
            drop(s);
            conn.close(); // shrunk while leased
            return;
        }
        if let Some(c) = hand_to_waiter(&mut s, Grant::Conn(conn)) {
            if s.retired {
                // Replaced by a reload: nobody new comes here.
                s.total -= 1;
                drop(s);
                c.close();
                return;
            }
            put_idle(&mut s, c);
        }
        // The release may have given a tenant room that the connection
        // went past (another tenant's turn came first): a free slot may
        // serve it. Nothing to do, at the cost of one check, when nobody
        // with room waits.
        serve_waiters(&mut s);
    }

    /// A connection `seat` held is gone (closed or broken): free its slot
    /// and the tenant's share, and let waiters have them.
    pub(super) fn forget_one(&self, seat: TenantSeat) {
        let mut s = self.lock();
        s.total -= 1;
        s.tenants.release(seat);
        serve_waiters(&mut s);
    }

    /// A slot's connect was given up (its checkout was dropped).
    fn slot_abandoned(&self, seat: TenantSeat) {
        let mut s = self.lock();
        s.connecting -= 1;
        s.total -= 1;
        s.tenants.release(seat);
        serve_waiters(&mut s);
    }

    fn connect_succeeded(&self) {
        bump(&self.stats.connects, 1);
        let recovered = {
            let mut s = self.lock();
            s.connecting -= 1;
            let failures = std::mem::take(&mut s.failures);
            s.retry_at = None;
            serve_waiters(&mut s);
            failures
        };
        if recovered > 0 {
            tracing::info!(placement = %self.name, failures = recovered, "placement reachable again");
        }
    }

    fn connect_failed(&self, seat: TenantSeat, e: &ServerError) {
        bump(&self.stats.connect_failures, 1);
        let next = {
            let mut s = self.lock();
            s.connecting -= 1;
            s.total -= 1;
            s.tenants.release(seat);
            // Attempts that were already under way when an earlier one
            // failed add nothing: the delay grows per probe, not per
            // attempt.
            let next = if s.backing_off().is_none() {
                s.failures = s.failures.saturating_add(1);
                let delay = retry_delay(s.failures, self.timeouts.login_retry);
                s.retry_at = crate::runtime::time::now().checked_add(delay);
                Some((s.failures, delay))
            } else {
                None
            };
            serve_waiters(&mut s);
            next
        };
        match next {
            Some((failures, delay)) => tracing::warn!(
                placement = %self.name,
                failures,
                "connecting to the placement failed: {e}; next attempt in {delay:?} at the earliest"
            ),
            None => {
                tracing::debug!(placement = %self.name, "connecting to the placement failed: {e}")
            }
        }
    }
}

#[path = "placement_checkout.rs"]
mod checkout;
#[path = "placement_guards.rs"]
mod guards;
#[path = "placement_live.rs"]
mod live;
#[path = "placement_upkeep.rs"]
mod upkeep;
#[path = "placement_vetting.rs"]
mod vetting;

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
