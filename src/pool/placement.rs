//! The pool of server connections for one placement.
//!
//! Why not bb8: a proxy pool needs (a) FIFO hand-off of a returned
//! connection straight to the oldest waiter (bb8 wakes waiters with a
//! `Notify` and lets newcomers barge ahead), (b) connections that stay on
//! the worker thread that uses them, (c) live resize, and later per-tenant
//! fair checkout and pinning. bb8 expresses none of these; the whole pool
//! is a few hundred lines around one mutex that is never held across an
//! await.
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
//! one per client, and clients are told 08006 without waiting.
//!
//! Upkeep (`janitor.rs` calls [`PlacementPool::maintain`] every second):
//! idle connections past `server_idle_timeout` or their lifetime are
//! closed, and those idle past `server_check_delay` are marked for a
//! round-trip check at their next checkout. A connection past its
//! lifetime is also closed when it comes back, never while leased. The
//! hot path pays for none of this: checkout reads one flag, release one
//! comparison.

use super::server_conn::{BackendTarget, ServerConn, ServerError};

/// A pooled connection, boxed once when opened: checkout and release move
/// it between the idle lists, waiters and leases several times per
/// transaction, and a pointer moves for free where the struct would be
/// copied.
type Pooled = Box<ServerConn>;
use crate::config::ProxyConfig;
use crate::runtime::current_worker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Connections of one pool being opened at once, at most. Enough to fill
/// a pool quickly (a connect takes a few ms), few enough that a server
/// coming back is not hit by a pool's worth of logins at the same moment.
pub const CONNECT_CONCURRENCY: usize = 4;

/// The first backoff delay after a failed connect.
pub const RETRY_BASE: Duration = Duration::from_millis(100);

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

/// The pool's time limits, from `[proxy]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTimeouts {
    /// Opening and authenticating one connection; also bounds a check.
    pub connect: Duration,
    /// Idle connections unused for longer are closed; zero: never.
    pub idle: Duration,
    /// Connections are retired after this, jittered per connection;
    /// zero: each connection is used once.
    pub lifetime: Duration,
    /// Idle connections unused for longer are checked with a round trip
    /// before reuse; zero: always.
    pub check_delay: Duration,
    /// The longest backoff delay after failed connects.
    pub login_retry: Duration,
}

impl PoolTimeouts {
    pub fn from_config(p: &ProxyConfig) -> PoolTimeouts {
        PoolTimeouts {
            connect: p.server_connect_timeout,
            idle: p.server_idle_timeout,
            lifetime: p.server_lifetime,
            check_delay: p.server_check_delay,
            login_retry: p.server_login_retry,
        }
    }
}

impl Default for PoolTimeouts {
    fn default() -> Self {
        PoolTimeouts::from_config(&ProxyConfig::default())
    }
}

/// The backoff delay after `failures` consecutive failed connects:
/// [`RETRY_BASE`] doubling per failure, at most `cap`.
pub fn retry_delay(failures: u32, cap: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(20);
    RETRY_BASE.saturating_mul(1 << doublings).min(cap)
}

/// One connection's lifetime: uniformly in [0.9, 1.0] × `lifetime` for
/// `unit` in [0, 1], so connections opened together retire apart.
pub fn jittered_lifetime(lifetime: Duration, unit: f64) -> Duration {
    let factor = 0.9 + 0.1 * unit.clamp(0.0, 1.0);
    Duration::try_from_secs_f64(lifetime.as_secs_f64() * factor)
        .map_or(lifetime, |d| d.min(lifetime))
}

/// What a waiter is handed. Moved once per hand-off and never stored in
/// bulk, so the connection is not boxed (that would allocate per
/// hand-off).
enum Grant {
    /// An idle connection.
    Conn(Pooled),
    /// A reserved slot: open a new connection.
    Slot,
    /// No new connection for now: the placement is backing off.
    Down(Duration),
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

struct State {
    /// Idle connections per worker, most recently used last.
    idle: Vec<Vec<Pooled>>,
    idle_count: usize,
    /// Connections that exist or are being opened.
    total: usize,
    /// Of `total`, those being opened.
    connecting: usize,
    max: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// Consecutive failed connects.
    failures: u32,
    /// Set while backing off: no attempt before this.
    retry_at: Option<Instant>,
}

impl State {
    /// How much longer the placement backs off, if it does. Reads the
    /// clock only after a failure.
    fn backing_off(&self) -> Option<Duration> {
        let at = self.retry_at?;
        at.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// One probe at a time after failures, else the normal concurrency.
    fn connect_limit(&self) -> usize {
        if self.failures > 0 {
            1
        } else {
            CONNECT_CONCURRENCY
        }
    }
}

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

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A server's ParameterStatus set, as shown to clients at startup.
pub type StartupParams = Arc<[(String, String)]>;

/// Server connections to one placement database.
pub struct PlacementPool {
    name: PlacementName,
    target: BackendTarget,
    timeouts: PoolTimeouts,
    state: Mutex<State>,
    stats: PoolStats,
    /// ParameterStatus set of the first server connection, shown to
    /// clients at startup (before any server is leased to them).
    startup_params: Mutex<Option<StartupParams>>,
}

impl PlacementPool {
    pub fn new(
        name: PlacementName,
        target: BackendTarget,
        max: usize,
        workers: usize,
        timeouts: PoolTimeouts,
    ) -> Arc<PlacementPool> {
        Arc::new(PlacementPool {
            name,
            target,
            timeouts,
            state: Mutex::new(State {
                idle: (0..workers.max(1)).map(|_| Vec::new()).collect(),
                idle_count: 0,
                total: 0,
                connecting: 0,
                max: max.max(1),
                waiters: VecDeque::new(),
                next_waiter: 0,
                failures: 0,
                retry_at: None,
            }),
            stats: PoolStats::default(),
            startup_params: Mutex::new(None),
        })
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
            waiting: s.waiters.len(),
            max: s.max,
        }
    }

    /// Changes the size live: growth serves waiters at once; shrinking
    /// closes idle connections now and others as they come back.
    pub fn resize(&self, max: usize) {
        let mut doomed = Vec::new();
        {
            let mut s = self.lock();
            s.max = max.max(1);
            while s.total > s.max && s.idle_count > 0 {
                if let Some(c) = pop_any(&mut s, current_worker()) {
                    doomed.push(c);
                    s.total -= 1;
                }
            }
            serve_waiters(&mut s);
        }
        doomed.into_iter().for_each(|c| c.close());
    }

    /// The server parameters clients see at startup; opens (and returns)
    /// a connection the first time.
    pub async fn startup_params(
        self: &Arc<Self>,
        wait: Duration,
    ) -> Result<StartupParams, CheckoutError> {
        if let Some(p) = self.cached_params() {
            return Ok(p);
        }
        let lease = self.checkout(wait).await?;
        let params = self.cached_params();
        lease.release();
        params.ok_or(CheckoutError::Connect(ServerError::Protocol(
            "no parameters".into(),
        )))
    }

    fn cached_params(&self) -> Option<StartupParams> {
        self.startup_params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Leases a connection: an idle one (preferring this worker's), a new
    /// one if under `pool_size`, or the next one returned, in arrival
    /// order, within `wait`. While the placement backs off after failed
    /// connects, a checkout that would need a new connection fails at
    /// once. Cancel-safe: dropping the future gives any connection or
    /// slot handed to it back to the pool.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<Lease, CheckoutError> {
        let worker = current_worker();
        loop {
            let taken = take(&mut self.lock(), worker);
            let grant = match taken {
                Some(g) => g,
                None => self.wait_for_grant(wait).await?,
            };
            match grant {
                Grant::Conn(conn) => {
                    if !conn.is_alive() {
                        tracing::debug!(placement = %self.name, "dropping dead idle server connection");
                        bump(&self.stats.closed_dead, 1);
                        drop(conn);
                        self.forget_one();
                        continue;
                    }
                    let conn = match conn.into_worker(worker) {
                        Ok(conn) => conn,
                        Err(e) => {
                            self.forget_one();
                            return Err(e.into());
                        }
                    };
                    let needs_check = conn.needs_check;
                    let mut lease = self.lease(conn);
                    if needs_check && !self.check(&mut lease).await {
                        // Dropping the lease closes it and frees its slot.
                        continue;
                    }
                    return Ok(lease);
                }
                Grant::Slot => {
                    let mut slot = SlotGuard {
                        pool: self,
                        armed: true,
                    };
                    let opened =
                        ServerConn::connect(&self.target, self.timeouts.connect, worker).await;
                    slot.armed = false;
                    return match opened {
                        Ok(mut conn) => {
                            self.connect_succeeded();
                            let life = jittered_lifetime(self.timeouts.lifetime, rand::random());
                            conn.retire_at = conn.last_used.checked_add(life);
                            self.remember_params(&conn);
                            Ok(self.lease(Box::new(conn)))
                        }
                        Err(e) => {
                            self.connect_failed(&e);
                            Err(e.into())
                        }
                    };
                }
                Grant::Down(retry_in) => {
                    bump(&self.stats.backoff_refusals, 1);
                    return Err(ServerError::Backoff(retry_in).into());
                }
            }
        }
    }

    /// The round trip for a connection idle past `server_check_delay`.
    async fn check(&self, lease: &mut Lease) -> bool {
        let conn = lease.conn_mut();
        let outcome = tokio::time::timeout(self.timeouts.connect, conn.check()).await;
        match outcome {
            Ok(Ok(())) => {
                conn.needs_check = false;
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(placement = %self.name, "idle server connection failed its check: {e}");
                bump(&self.stats.closed_dead, 1);
                false
            }
            Err(_) => {
                tracing::debug!(placement = %self.name, "idle server connection did not answer its check");
                bump(&self.stats.closed_dead, 1);
                false
            }
        }
    }

    async fn wait_for_grant(self: &Arc<Self>, wait: Duration) -> Result<Grant, CheckoutError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut s = self.lock();
            // Re-check under the lock: something may have come back.
            if let Some(grant) = take(&mut s, current_worker()) {
                return Ok(grant);
            }
            let id = s.next_waiter;
            s.next_waiter += 1;
            s.waiters.push_back(Waiter { id, tx });
            id
        };
        let mut guard = WaitGuard {
            pool: self,
            id,
            rx: Some(rx),
        };
        let rx = guard.rx.as_mut().ok_or(CheckoutError::WaitTimeout)?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(grant)) => {
                guard.rx = None;
                Ok(grant)
            }
            // The sender is only dropped by `WaitGuard`, which is ours;
            // treat it like a timeout.
            Ok(Err(_)) | Err(_) => Err(CheckoutError::WaitTimeout),
        }
    }

    fn lease(self: &Arc<Self>, conn: Pooled) -> Lease {
        Lease {
            conn: Some(conn),
            pool: Arc::clone(self),
        }
    }

    fn remember_params(&self, conn: &ServerConn) {
        let mut p = self
            .startup_params
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if p.is_none() {
            *p = Some(conn.params.clone().into());
        }
    }

    /// A clean connection comes back: closed if its lifetime is over,
    /// else straight to the oldest waiter, or idle on its worker.
    fn put_back(&self, mut conn: Pooled) {
        let now = Instant::now();
        conn.last_used = now;
        conn.needs_check = self.timeouts.check_delay.is_zero();
        if conn.retire_at.is_some_and(|at| now >= at) {
            bump(&self.stats.closed_lifetime, 1);
            conn.close();
            self.forget_one();
            return;
        }
        let mut s = self.lock();
        if s.total > s.max {
            s.total -= 1;
            drop(s);
            conn.close(); // shrunk while leased
            return;
        }
        if let Some(c) = hand_to_waiter(&mut s, Grant::Conn(conn)) {
            let w = c.worker.min(s.idle.len() - 1);
            s.idle[w].push(c);
            s.idle_count += 1;
        }
    }

    /// A connection is gone (closed or broken): free its slot, and let
    /// waiters have it.
    fn forget_one(&self) {
        let mut s = self.lock();
        s.total -= 1;
        serve_waiters(&mut s);
    }

    /// A slot's connect was given up (its checkout was dropped).
    fn slot_abandoned(&self) {
        let mut s = self.lock();
        s.connecting -= 1;
        s.total -= 1;
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

    fn connect_failed(&self, e: &ServerError) {
        bump(&self.stats.connect_failures, 1);
        let next = {
            let mut s = self.lock();
            s.connecting -= 1;
            s.total -= 1;
            // Attempts that were already under way when an earlier one
            // failed add nothing: the delay grows per probe, not per
            // attempt.
            let next = if s.backing_off().is_none() {
                s.failures = s.failures.saturating_add(1);
                let delay = retry_delay(s.failures, self.timeouts.login_retry);
                s.retry_at = Instant::now().checked_add(delay);
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

    /// Janitor work: closes idle connections past `server_idle_timeout`
    /// or their lifetime, marks those idle past `server_check_delay` for
    /// a check. Holds the lock only for the pass over the idle lists; the
    /// sockets are closed after.
    pub fn maintain(&self, now: Instant) {
        let t = self.timeouts;
        let (mut by_idle, mut by_lifetime) = (0u64, 0u64);
        let mut doomed = Vec::new();
        {
            let mut s = self.lock();
            if s.idle_count == 0 {
                return;
            }
            for list in s.idle.iter_mut() {
                doomed.extend(list.extract_if(.., |c| {
                    let idle_for = now.saturating_duration_since(c.last_used);
                    if !t.idle.is_zero() && idle_for >= t.idle {
                        by_idle += 1;
                        true
                    } else if c.retire_at.is_some_and(|at| now >= at) {
                        by_lifetime += 1;
                        true
                    } else {
                        if idle_for >= t.check_delay {
                            c.needs_check = true;
                        }
                        false
                    }
                }));
            }
            s.idle_count -= doomed.len();
            s.total -= doomed.len();
            serve_waiters(&mut s);
        }
        if doomed.is_empty() {
            return;
        }
        bump(&self.stats.closed_idle, by_idle);
        bump(&self.stats.closed_lifetime, by_lifetime);
        tracing::debug!(placement = %self.name, by_idle, by_lifetime, "closed idle server connections");
        doomed.into_iter().for_each(|c| c.close());
    }
}

/// Takes what is there without waiting: an idle connection, a slot to
/// open one, or word that the placement is backing off. `None`: wait.
fn take(s: &mut State, worker: usize) -> Option<Grant> {
    if let Some(conn) = pop_local_first(s, worker) {
        return Some(Grant::Conn(conn));
    }
    if s.total >= s.max {
        return None;
    }
    if let Some(retry_in) = s.backing_off() {
        return Some(Grant::Down(retry_in));
    }
    if s.connecting < s.connect_limit() {
        s.total += 1;
        s.connecting += 1;
        return Some(Grant::Slot);
    }
    None
}

/// After anything that frees a slot or a connect: hands slots to waiters
/// while the pool has room and may open more; while it backs off,
/// everyone waiting for a new connection is told at once. (Waiters while
/// the pool is full wait for a connection to come back, as usual.)
fn serve_waiters(s: &mut State) {
    if s.waiters.is_empty() || s.total >= s.max {
        return;
    }
    if let Some(retry_in) = s.backing_off() {
        while let Some(w) = s.waiters.pop_front() {
            let _ = w.tx.send(Grant::Down(retry_in));
        }
        return;
    }
    while s.total < s.max && s.connecting < s.connect_limit() && !s.waiters.is_empty() {
        s.total += 1;
        s.connecting += 1;
        hand_to_waiter(s, Grant::Slot);
    }
}

/// Hands `grant` to the oldest live waiter; gives a connection back if
/// nobody takes it (a `Slot` nobody takes is released here).
fn hand_to_waiter(s: &mut State, mut grant: Grant) -> Option<Pooled> {
    while let Some(w) = s.waiters.pop_front() {
        match w.tx.send(grant) {
            Ok(()) => return None,
            Err(back) => grant = back, // waiter gave up; try the next
        }
    }
    match grant {
        Grant::Conn(c) => Some(c),
        Grant::Slot => {
            s.total -= 1;
            s.connecting -= 1;
            None
        }
        Grant::Down(_) => None,
    }
}

fn pop_local_first(s: &mut State, worker: usize) -> Option<Pooled> {
    let w = worker.min(s.idle.len() - 1);
    if let Some(c) = s.idle[w].pop() {
        s.idle_count -= 1;
        return Some(c);
    }
    pop_any(s, worker)
}

fn pop_any(s: &mut State, worker: usize) -> Option<Pooled> {
    let n = s.idle.len();
    for i in 1..=n {
        let w = (worker + i) % n;
        if let Some(c) = s.idle[w].pop() {
            s.idle_count -= 1;
            return Some(c);
        }
    }
    None
}

/// Frees a reserved slot if opening the connection is dropped midway.
struct SlotGuard<'a> {
    pool: &'a PlacementPool,
    armed: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.slot_abandoned();
        }
    }
}

/// Removes a waiter that gave up, and returns anything already handed to
/// it.
struct WaitGuard<'a> {
    pool: &'a Arc<PlacementPool>,
    id: u64,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        {
            let mut s = self.pool.lock();
            if let Some(i) = s.waiters.iter().position(|w| w.id == self.id) {
                s.waiters.remove(i);
                return;
            }
        }
        // Already handed something: give it back.
        rx.close();
        match rx.try_recv() {
            Ok(Grant::Conn(c)) => self.pool.put_back(c),
            Ok(Grant::Slot) => self.pool.slot_abandoned(),
            Ok(Grant::Down(_)) | Err(_) => {}
        }
    }
}

/// A leased server connection. [`Lease::release`] returns it clean;
/// dropping it closes the connection (the safe default for any state the
/// session could not vouch for).
pub struct Lease {
    conn: Option<Pooled>,
    pool: Arc<PlacementPool>,
}

impl Lease {
    pub fn conn(&self) -> &ServerConn {
        // Invariant: `conn` is `Some` until `release`/`drop` consume self.
        self.conn.as_ref().expect("lease holds a connection")
    }

    pub fn conn_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("lease holds a connection")
    }

    pub fn pool(&self) -> &Arc<PlacementPool> {
        &self.pool
    }

    /// Returns a connection that is idle (ReadyForQuery 'I', nothing
    /// unread) to the pool.
    pub fn release(mut self) {
        if let Some(c) = self.conn.take() {
            if c.buf.is_empty() {
                self.pool.put_back(c);
            } else {
                // Unsolicited bytes after the last ReadyForQuery (say, a
                // NOTIFY): nobody else may receive them.
                drop(c);
                self.pool.forget_one();
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.forget_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_up_to_the_cap() {
        let cap = Duration::from_secs(5);
        let got: Vec<u128> = (0..10).map(|n| retry_delay(n, cap).as_millis()).collect();
        assert_eq!(got, [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(retry_delay(u32::MAX, cap), cap);
        assert_eq!(retry_delay(3, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            retry_delay(1, Duration::from_millis(50)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn lifetimes_are_jittered_within_ninety_to_a_hundred_percent() {
        let life = Duration::from_secs(3600);
        assert_eq!(jittered_lifetime(life, 0.0), Duration::from_secs(3240));
        assert_eq!(jittered_lifetime(life, 1.0), life);
        assert_eq!(jittered_lifetime(life, 7.0), life);
        assert_eq!(jittered_lifetime(life, -1.0), Duration::from_secs(3240));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let d = jittered_lifetime(life, rand::random());
            assert!(d >= Duration::from_secs(3240) && d <= life, "{d:?}");
            seen.insert(d.as_secs());
        }
        assert!(seen.len() > 100, "not spread: {} values", seen.len());
        assert_eq!(jittered_lifetime(Duration::ZERO, 0.5), Duration::ZERO);
        assert_eq!(jittered_lifetime(Duration::MAX, 1.0), Duration::MAX);
        assert!(jittered_lifetime(Duration::MAX, 0.0) < Duration::MAX);
    }

    #[test]
    fn timeouts_come_from_the_config_with_pgbouncer_defaults() {
        let t = PoolTimeouts::default();
        assert_eq!(t.idle, Duration::from_secs(600));
        assert_eq!(t.lifetime, Duration::from_secs(3600));
        assert_eq!(t.check_delay, Duration::from_secs(30));
        assert_eq!(t.login_retry, Duration::from_secs(5));
        assert_eq!(t.connect, Duration::from_secs(15));
        let text = "[proxy]\nserver_idle_timeout = \"0\"\nserver_lifetime = \"1h 30m\"\n\
                    server_check_delay = \"500ms\"\nserver_login_retry = \"15s\"\n";
        let (cfg, _) = crate::config::parse_str(text, "t.toml").expect("valid");
        let t = PoolTimeouts::from_config(&cfg.proxy);
        assert_eq!(t.idle, Duration::ZERO);
        assert_eq!(t.lifetime, Duration::from_secs(5400));
        assert_eq!(t.check_delay, Duration::from_millis(500));
        assert_eq!(t.login_retry, Duration::from_secs(15));
        let bad = "[proxy]\nserver_lifetime = \"forever\"\n";
        let err = crate::config::parse_str(bad, "t.toml").expect_err("invalid");
        assert_eq!(err.key, "proxy.server_lifetime", "{err}");
    }

    fn pool_at(port: u16, max: usize, timeouts: PoolTimeouts) -> Arc<PlacementPool> {
        let target =
            BackendTarget::from_url(&format!("postgres://u:p@127.0.0.1:{port}/db")).expect("url");
        PlacementPool::new(PlacementName("p".into()), target, max, 1, timeouts)
    }

    /// A port where nothing listens.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn a_failed_connect_makes_the_next_checkouts_fail_fast() {
        let timeouts = PoolTimeouts {
            login_retry: Duration::from_secs(60),
            ..PoolTimeouts::default()
        };
        let pool = pool_at(closed_port(), 4, timeouts);
        let wait = Duration::from_secs(5);
        let first = pool.checkout(wait).await.err().expect("nothing listens");
        assert!(
            matches!(first, CheckoutError::Connect(ServerError::Io(_))),
            "{first:?}"
        );
        for _ in 0..20 {
            let e = pool.checkout(wait).await.err().expect("backing off");
            match e {
                CheckoutError::Connect(ServerError::Backoff(d)) => {
                    assert!(d <= Duration::from_millis(100), "{d:?}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pool.stats().connect_failures.load(Ordering::Relaxed), 1);
        assert_eq!(pool.stats().backoff_refusals.load(Ordering::Relaxed), 20);
        // After the delay: one more attempt, and a doubled delay.
        tokio::time::sleep(Duration::from_millis(120)).await;
        let e = pool.checkout(wait).await.err().expect("still nothing");
        assert!(
            matches!(e, CheckoutError::Connect(ServerError::Io(_))),
            "{e:?}"
        );
        match pool.checkout(wait).await.err().expect("backing off") {
            CheckoutError::Connect(ServerError::Backoff(d)) => {
                assert!(d > Duration::from_millis(100), "{d:?}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.stats().connect_failures.load(Ordering::Relaxed), 2);
        let c = pool.counts();
        assert_eq!((c.idle, c.active, c.connecting, c.waiting), (0, 0, 0, 0));
    }

    #[tokio::test]
    async fn concurrent_connects_are_bounded_and_waiters_learn_of_a_failure() {
        // Accepts and never answers: every attempt times out.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&accepted);
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                held.push(s);
            }
        });
        let timeouts = PoolTimeouts {
            connect: Duration::from_millis(300),
            ..PoolTimeouts::default()
        };
        let pool = pool_at(port, 20, timeouts);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let pool = Arc::clone(&pool);
            tasks.push(tokio::spawn(async move {
                pool.checkout(Duration::from_secs(30)).await.err()
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = pool.counts();
        assert_eq!(c.connecting, CONNECT_CONCURRENCY, "{c:?}");
        assert_eq!(c.waiting, 12 - CONNECT_CONCURRENCY, "{c:?}");
        for t in tasks {
            let e = t.await.expect("join").expect("fails");
            assert!(
                matches!(
                    e,
                    CheckoutError::Connect(ServerError::Timeout | ServerError::Backoff(_))
                ),
                "{e:?}"
            );
        }
        // Everyone heard within about one connect timeout, not the wait.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(accepted.load(Ordering::Relaxed), CONNECT_CONCURRENCY as u64);
        let c = pool.counts();
        assert_eq!((c.active, c.connecting, c.waiting), (0, 0, 0), "{c:?}");
        server.abort();
    }
}
