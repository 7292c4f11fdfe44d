//! The pool's locked state: idle connections per worker, the slot count,
//! the tenants' shares and waiters (`fair.rs`), and the backoff after
//! failed connects; and the operations on it, each run under the pool's
//! mutex (never across an await).
//!
//! Invariant: no idle connection sits in the pool while a tenant with room
//! under its cap has a waiter; every change that frees a tenant's room or
//! makes a connection idle hands it on at once (`serve_waiters`,
//! `hand_to_waiter`). So a newcomer that finds an idle connection barges
//! ahead of nobody who could have had it.

use super::fair::{TenantSeat, Tenants};
use super::placement::Pooled;
use super::timing::CONNECT_CONCURRENCY;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::oneshot;

/// What a waiter is handed.
pub(super) enum Grant {
    /// An idle connection.
    Conn(Pooled),
    /// A reserved slot: open a new connection.
    Slot,
    /// No new connection for now: the placement is backing off.
    Down(Duration),
}

pub(super) type Waiter = oneshot::Sender<Grant>;

pub(super) struct State {
    /// Idle connections per worker, most recently used last.
    pub(super) idle: Vec<Vec<Pooled>>,
    pub(super) idle_count: usize,
    /// Connections that exist or are being opened.
    pub(super) total: usize,
    /// Of `total`, those being opened.
    pub(super) connecting: usize,
    pub(super) max: usize,
    /// What each tenant holds, and who waits, per tenant.
    pub(super) tenants: Tenants<Waiter>,
    pub(super) next_waiter: u64,
    /// Consecutive failed connects.
    pub(super) failures: u32,
    /// Set while backing off: no attempt before this.
    pub(super) retry_at: Option<Instant>,
    /// A reload replaced this pool: connections that come back are closed
    /// unless a waiter takes them (`placement_live.rs`).
    pub(super) retired: bool,
}

impl State {
    /// How much longer the placement backs off, if it does. Reads the
    /// clock only after a failure.
    pub(super) fn backing_off(&self) -> Option<Duration> {
        let at = self.retry_at?;
        at.checked_duration_since(crate::runtime::time::now())
            .filter(|d| !d.is_zero())
    }

    /// One probe at a time after failures, else the normal concurrency.
    pub(super) fn connect_limit(&self) -> usize {
        if self.failures > 0 {
            1
        } else {
            CONNECT_CONCURRENCY
        }
    }
}

fn send(w: Waiter, g: Grant) -> Result<(), Grant> {
    w.send(g)
}

/// Takes what is there for `seat` without waiting: an idle connection, a
/// slot to open one, or word that the placement is backing off. `None`:
/// wait (the pool is busy, or the tenant holds its cap).
pub(super) fn take(s: &mut State, seat: TenantSeat, worker: usize) -> Option<Grant> {
    if !s.tenants.has_room(seat) {
        return None;
    }
    if let Some(conn) = pop_local_first(s, worker) {
        s.tenants.acquire(seat);
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
        s.tenants.acquire(seat);
        return Some(Grant::Slot);
    }
    None
}

/// After anything that frees a slot, a connect or a tenant's room: hands
/// idle connections to waiters that may now have them, then slots while
/// the pool has room and may open more; while it backs off, every waiter
/// of a tenant with room is told at once. (Waiters while the pool is full,
/// or while their tenant holds its cap, wait for a connection to come
/// back, as usual.)
pub(super) fn serve_waiters(s: &mut State) {
    if !s.tenants.anyone_ready() {
        return;
    }
    // Idle connections can only coexist with waiters whose tenant was at
    // its cap; one of them has just got room.
    while s.idle_count > 0 && s.tenants.anyone_ready() {
        let Some(conn) = pop_any(s, 0) else { break };
        if let Some(back) = hand_to_waiter(s, Grant::Conn(conn)) {
            put_idle(s, back);
            break;
        }
    }
    if !s.tenants.anyone_ready() || s.total >= s.max {
        return;
    }
    if let Some(retry_in) = s.backing_off() {
        s.tenants.tell_ready(
            || Grant::Down(retry_in),
            |w, g| {
                let _ = w.send(g);
            },
        );
        return;
    }
    while s.total < s.max && s.connecting < s.connect_limit() && s.tenants.anyone_ready() {
        s.total += 1;
        s.connecting += 1;
        hand_to_waiter(s, Grant::Slot);
    }
}

/// Hands `grant` to the next waiter in turn (round robin across tenants,
/// oldest first within one); gives a connection back if nobody takes it
/// (a `Slot` nobody takes is released here).
pub(super) fn hand_to_waiter(s: &mut State, grant: Grant) -> Option<Pooled> {
    match s.tenants.hand(grant, send) {
        Ok(()) => None,
        Err(Grant::Conn(c)) => Some(c),
        Err(Grant::Slot) => {
            s.total -= 1;
            s.connecting -= 1;
            None
        }
        Err(Grant::Down(_)) => None,
    }
}

/// Files a connection nobody waits for under its worker.
pub(super) fn put_idle(s: &mut State, c: Pooled) {
    let w = c.worker.min(s.idle.len() - 1);
    s.idle[w].push(c);
    s.idle_count += 1;
}

pub(super) fn pop_local_first(s: &mut State, worker: usize) -> Option<Pooled> {
    let w = worker.min(s.idle.len() - 1);
    if let Some(c) = s.idle[w].pop() {
        s.idle_count -= 1;
        return Some(c);
    }
    pop_any(s, worker)
}

pub(super) fn pop_any(s: &mut State, worker: usize) -> Option<Pooled> {
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
