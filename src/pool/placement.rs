//! The pool of server connections for one placement.
//!
//! Why not bb8: a proxy pool needs (a) FIFO hand-off of a returned
//! connection straight to the oldest waiter (bb8 wakes waiters with a
//! `Notify` and lets newcomers barge ahead), (b) connections that stay on
//! the worker thread that uses them, (c) live resize, and later per-tenant
//! fair checkout and pinning. bb8 expresses none of these; the whole pool
//! is ~250 lines around one mutex that is never held across an await.
//!
//! Accounting: `total` counts every connection that exists or is being
//! opened for this pool (idle + leased + connecting), so `pool_size` is a
//! hard cap. Every [`Lease`] either comes back through [`Lease::release`]
//! or is dropped, and a drop closes the connection and frees its slot, so
//! no path leaks a slot.

use super::server_conn::{BackendTarget, ServerConn, ServerError};
use crate::runtime::current_worker;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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

/// What a waiter is handed.
enum Grant {
    /// An idle connection.
    Conn(ServerConn),
    /// A reserved slot: open a new connection.
    Slot,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

struct State {
    /// Idle connections per worker, most recently used last.
    idle: Vec<Vec<ServerConn>>,
    idle_count: usize,
    /// Connections that exist or are being opened.
    total: usize,
    max: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
}

/// Counts for SHOW POOLS and metrics, taken from the pool's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: usize,
    pub active: usize,
    pub waiting: usize,
    pub max: usize,
}

/// A server's ParameterStatus set, as shown to clients at startup.
pub type StartupParams = Arc<[(String, String)]>;

/// Server connections to one placement database.
pub struct PlacementPool {
    name: PlacementName,
    target: BackendTarget,
    connect_timeout: Duration,
    state: Mutex<State>,
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
        connect_timeout: Duration,
    ) -> Arc<PlacementPool> {
        Arc::new(PlacementPool {
            name,
            target,
            connect_timeout,
            state: Mutex::new(State {
                idle: (0..workers.max(1)).map(|_| Vec::new()).collect(),
                idle_count: 0,
                total: 0,
                max: max.max(1),
                waiters: VecDeque::new(),
                next_waiter: 0,
            }),
            startup_params: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &PlacementName {
        &self.name
    }

    pub fn target(&self) -> &BackendTarget {
        &self.target
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
            active: s.total - s.idle_count,
            waiting: s.waiters.len(),
            max: s.max,
        }
    }

    /// Changes the size live: growth serves waiters at once; shrinking
    /// closes idle connections now and others as they come back.
    pub fn resize(&self, max: usize) {
        let mut s = self.lock();
        s.max = max.max(1);
        while s.total > s.max && s.idle_count > 0 {
            if let Some(c) = pop_any(&mut s, current_worker()) {
                drop(c);
                s.total -= 1;
            }
        }
        while s.total < s.max && !s.waiters.is_empty() {
            s.total += 1;
            hand_to_waiter(&mut s, Grant::Slot);
        }
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
    /// order, within `wait`. Cancel-safe: dropping the future gives any
    /// connection or slot handed to it back to the pool.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<Lease, CheckoutError> {
        let worker = current_worker();
        loop {
            let grant = {
                let mut s = self.lock();
                if let Some(conn) = pop_local_first(&mut s, worker) {
                    Some(Grant::Conn(conn))
                } else if s.total < s.max {
                    s.total += 1;
                    Some(Grant::Slot)
                } else {
                    None
                }
            };
            let grant = match grant {
                Some(g) => g,
                None => self.wait_for_grant(wait).await?,
            };
            match grant {
                Grant::Conn(conn) => {
                    if !conn.is_alive() {
                        tracing::debug!(placement = %self.name, "dropping dead idle server connection");
                        drop(conn);
                        self.forget_one();
                        continue;
                    }
                    match conn.into_worker(worker) {
                        Ok(conn) => return Ok(self.lease(conn)),
                        Err(e) => {
                            self.forget_one();
                            return Err(e.into());
                        }
                    }
                }
                Grant::Slot => {
                    let slot = SlotGuard { pool: self };
                    let conn =
                        ServerConn::connect(&self.target, self.connect_timeout, worker).await?;
                    std::mem::forget(slot);
                    self.remember_params(&conn);
                    return Ok(self.lease(conn));
                }
            }
        }
    }

    async fn wait_for_grant(self: &Arc<Self>, wait: Duration) -> Result<Grant, CheckoutError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut s = self.lock();
            // Re-check under the lock: something may have come back.
            if let Some(conn) = pop_local_first(&mut s, current_worker()) {
                return Ok(Grant::Conn(conn));
            }
            if s.total < s.max {
                s.total += 1;
                return Ok(Grant::Slot);
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

    fn lease(self: &Arc<Self>, conn: ServerConn) -> Lease {
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

    /// A clean connection comes back: straight to the oldest waiter, or
    /// idle on its worker.
    fn put_back(&self, mut conn: ServerConn) {
        conn.last_used = Instant::now();
        let mut s = self.lock();
        if s.total > s.max {
            s.total -= 1;
            return; // shrunk while leased
        }
        if let Some(c) = hand_to_waiter(&mut s, Grant::Conn(conn)) {
            let w = c.worker.min(s.idle.len() - 1);
            s.idle[w].push(c);
            s.idle_count += 1;
        }
    }

    /// A connection is gone (closed or broken): free its slot, and let the
    /// oldest waiter open a new one.
    fn forget_one(&self) {
        let mut s = self.lock();
        s.total -= 1;
        if s.total < s.max && !s.waiters.is_empty() {
            s.total += 1;
            hand_to_waiter(&mut s, Grant::Slot);
        }
    }
}

/// Hands `grant` to the oldest live waiter; gives a connection back if
/// nobody takes it (a `Slot` nobody takes is released here).
fn hand_to_waiter(s: &mut State, mut grant: Grant) -> Option<ServerConn> {
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
            None
        }
    }
}

fn pop_local_first(s: &mut State, worker: usize) -> Option<ServerConn> {
    let w = worker.min(s.idle.len() - 1);
    if let Some(c) = s.idle[w].pop() {
        s.idle_count -= 1;
        return Some(c);
    }
    pop_any(s, worker)
}

fn pop_any(s: &mut State, worker: usize) -> Option<ServerConn> {
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

/// Frees a reserved slot if opening the connection fails or is dropped.
struct SlotGuard<'a> {
    pool: &'a PlacementPool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.pool.forget_one();
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
            Ok(Grant::Slot) => self.pool.forget_one(),
            Err(_) => {}
        }
    }
}

/// A leased server connection. [`Lease::release`] returns it clean;
/// dropping it closes the connection (the safe default for any state the
/// session could not vouch for).
pub struct Lease {
    conn: Option<ServerConn>,
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
