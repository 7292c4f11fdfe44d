//! Leasing a connection of the pool: at once from this worker's idle
//! ones (`try_checkout`), or by waiting for one to come back, opening a
//! new one, or taking one from another worker (`checkout`).

use super::super::lease::Lease;
use super::super::queue::{Grant, take};
use super::super::server_conn::{ServerConn, ServerError};
use super::super::startup_params::StartupParams;
use super::super::stats::bump;
use super::super::timing::jittered_lifetime;
use super::guards::{SlotGuard, WaitGuard};
use super::{CheckoutError, PlacementPool, Pooled};
use crate::catalog::TenantEntry;
use crate::pool::fair::TenantSeat;
use crate::runtime::current_worker;
use crate::runtime::time::LazyTimer;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

impl PlacementPool {
    /// Checkout without waiting, for the common case: an idle connection
    /// of this worker's that is due no check, for a tenant under its cap.
    /// `None` sends the caller to `checkout`, which handles everything
    /// else (waiting, opening, checking, moving between workers).
    ///
    /// `context`: the tenant of an `isolation = "rls"` client. Among this
    /// worker's most recently idle connections, one whose session already
    /// holds that tenant's context is taken first, so that a pool with
    /// room to spare does not switch tenants (a context call) at every
    /// lease.
    pub fn try_checkout(
        self: &Arc<Self>,
        seat: TenantSeat,
        context: Option<&TenantEntry>,
    ) -> Option<Lease> {
        let worker = current_worker();
        let conn = {
            let mut s = self.lock();
            let w = worker.min(s.idle.len() - 1);
            let idle = &s.idle[w];
            let at = context
                .and_then(|t| holding_context(idle, t, worker))
                .or_else(|| idle.len().checked_sub(1))?;
            if !ready_here(&idle[at], worker) || !s.tenants.has_room(seat) {
                return None;
            }
            let conn = s.idle[w].remove(at);
            s.idle_count -= 1;
            s.tenants.acquire(seat);
            conn
        };
        if !conn.is_alive() {
            self.discard_dead(conn, seat);
            return None;
        }
        // On this worker's loop already but for a connection left by a
        // loop that ended; then it moves here.
        match conn.into_worker(worker) {
            Ok(conn) => Some(self.lease(conn, seat)),
            Err(_) => {
                self.forget_one(seat);
                None
            }
        }
    }

    /// An idle connection found dead at checkout: close it, free its slot.
    fn discard_dead(&self, conn: Pooled, seat: TenantSeat) {
        tracing::debug!(placement = %self.name, "dropping dead idle server connection");
        bump(&self.stats.closed_dead, 1);
        drop(conn);
        self.forget_one(seat);
    }

    /// Leases a connection for a client of `seat`'s tenant: an idle one
    /// (preferring this worker's), a new one if under `pool_size`, or one
    /// handed over when the tenant's turn comes, within `wait`. A tenant
    /// holding its cap waits for one of its own to come back. While the
    /// placement backs off after failed connects, a checkout that would
    /// need a new connection fails at once. Cancel-safe: dropping the
    /// future gives any connection or slot handed to it back to the pool.
    pub async fn checkout(
        self: &Arc<Self>,
        seat: TenantSeat,
        wait: Duration,
    ) -> Result<Lease, CheckoutError> {
        let asked = crate::runtime::time::now();
        self.checkout_with(seat, asked, wait, &mut LazyTimer::default())
            .await
    }

    /// [`Self::checkout`] asked at `asked` (the caller's reading of
    /// `runtime::time::now()`, which it made anyway), waiting on `timer`: a
    /// session passes its own, reused from one wait to the next, so that a
    /// wait pushes a registered deadline later (an atomic update) instead
    /// of adding a timer to the runtime's wheel and taking it out again
    /// each time.
    pub async fn checkout_with(
        self: &Arc<Self>,
        seat: TenantSeat,
        asked: Instant,
        wait: Duration,
        timer: &mut LazyTimer,
    ) -> Result<Lease, CheckoutError> {
        let worker = current_worker();
        loop {
            let taken = take(&mut self.lock(), seat, worker);
            let grant = match taken {
                Some(g) => g,
                None => self.wait_for_grant(seat, asked, wait, timer).await?,
            };
            match grant {
                Grant::Conn(conn) => {
                    if !conn.is_alive() {
                        self.discard_dead(conn, seat);
                        continue;
                    }
                    let conn = match conn.into_worker(worker) {
                        Ok(conn) => conn,
                        Err(e) => {
                            self.forget_one(seat);
                            return Err(e.into());
                        }
                    };
                    let needs_check = conn.needs_check;
                    let mut lease = self.lease(conn, seat);
                    // Boxed as the open below: rare, and a query's state.
                    if needs_check && !Box::pin(self.check(&mut lease)).await {
                        // Dropping the lease closes it and frees its slot.
                        continue;
                    }
                    return Ok(lease);
                }
                // Boxed: opening a connection is rare, and its state
                // (connect, role vetting, context) would otherwise make
                // every waiting checkout's future, boxed by the session,
                // several times larger.
                Grant::Slot => return Box::pin(self.open_for(seat, worker)).await,
                Grant::Down(retry_in) => {
                    bump(&self.stats.backoff_refusals, 1);
                    return Err(ServerError::Backoff(retry_in).into());
                }
            }
        }
    }

    /// A slot was granted: opens a new connection for `seat` on `worker`
    /// (the slot is given back if this fails or is dropped).
    async fn open_for(
        self: &Arc<Self>,
        seat: TenantSeat,
        worker: usize,
    ) -> Result<Lease, CheckoutError> {
        let mut slot = SlotGuard {
            pool: self,
            seat,
            armed: true,
        };
        let opened = match ServerConn::connect(&self.target, self.timeouts.connect, worker).await {
            Ok(conn) => match self.vet_role(conn).await {
                Ok(conn) => self.prepare_context(conn).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        slot.armed = false;
        match opened {
            Ok(mut conn) => {
                self.connect_succeeded();
                let life = jittered_lifetime(self.timeouts.lifetime, rand::random());
                conn.retire_at = conn.last_used.checked_add(life);
                self.remember_params(&conn);
                conn.listed = Some(self.servers.register(conn.key.pid));
                Ok(self.lease(Box::new(conn), seat))
            }
            Err(e) => {
                self.connect_failed(seat, &e);
                Err(e.into())
            }
        }
    }

    /// Queues this checkout (as waiting since `asked`, for SHOW POOLS'
    /// `maxwait`) until something is handed to it or `wait` from `asked`
    /// has passed.
    async fn wait_for_grant(
        self: &Arc<Self>,
        seat: TenantSeat,
        asked: Instant,
        wait: Duration,
        timer: &mut LazyTimer,
    ) -> Result<Grant, CheckoutError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut s = self.lock();
            // Re-check under the lock: something may have come back.
            if let Some(grant) = take(&mut s, seat, current_worker()) {
                return Ok(grant);
            }
            let id = s.next_waiter;
            s.next_waiter += 1;
            if !s.tenants.push(seat, id, asked, tx) {
                // Not a tenant of this pool (a bug): nothing to wait for.
                return Err(CheckoutError::WaitTimeout);
            }
            id
        };
        let mut guard = WaitGuard {
            pool: self,
            seat,
            id,
            rx: Some(rx),
        };
        let rx = guard.rx.as_mut().ok_or(CheckoutError::WaitTimeout)?;
        timer.set(Some(asked + wait));
        let got = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = Pin::new(&mut *rx).poll(cx) {
                return Poll::Ready(r.ok());
            }
            // The sender is only dropped by `WaitGuard`, which is ours:
            // None either way is a timeout.
            timer.poll_fired(cx).map(|()| None)
        })
        .await;
        timer.set(None);
        match got {
            Some(grant) => {
                guard.rx = None;
                Ok(grant)
            }
            None => Err(CheckoutError::WaitTimeout),
        }
    }

    fn lease(self: &Arc<Self>, conn: Pooled, seat: TenantSeat) -> Lease {
        Lease {
            conn: Some(conn),
            pool: Arc::clone(self),
            seat,
        }
    }

    fn remember_params(&self, conn: &ServerConn) {
        let mut p = self
            .startup_params
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if p.is_none() {
            *p = Some(Arc::new(StartupParams::new(conn.params.clone().into())));
        }
    }
}

/// How many of a worker's most recently idle connections checkout looks
/// through for one holding the client's tenant context: a few, so that a
/// checkout stays a handful of comparisons under the pool's lock.
const CONTEXT_SCAN: usize = 8;

/// Where in `idle` (most recent last) the most recent connection of
/// `worker` due no check whose session holds `tenant`'s context is, among
/// the last [`CONTEXT_SCAN`].
fn holding_context(idle: &[Pooled], tenant: &TenantEntry, worker: usize) -> Option<usize> {
    let from = idle.len().saturating_sub(CONTEXT_SCAN);
    (from..idle.len()).rev().find(|&i| {
        let c = &idle[i];
        ready_here(c, worker)
            && c.context_of
                .as_deref()
                .is_some_and(|held| std::ptr::eq(held, tenant))
    })
}

/// An idle connection `try_checkout` may lease on `worker` as it is: on
/// that worker's loop and due no check.
fn ready_here(c: &ServerConn, worker: usize) -> bool {
    c.worker == worker && !c.needs_check
}
