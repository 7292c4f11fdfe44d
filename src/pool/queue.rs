//! The pool's locked state: idle connections per worker, the slot count,
//! the FIFO of waiters, and the backoff after failed connects; and the
//! operations on it, each run under the pool's mutex (never across an
//! await).

use super::placement::Pooled;
use super::timing::CONNECT_CONCURRENCY;
use std::collections::VecDeque;
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

pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) tx: oneshot::Sender<Grant>,
}

pub(super) struct State {
    /// Idle connections per worker, most recently used last.
    pub(super) idle: Vec<Vec<Pooled>>,
    pub(super) idle_count: usize,
    /// Connections that exist or are being opened.
    pub(super) total: usize,
    /// Of `total`, those being opened.
    pub(super) connecting: usize,
    pub(super) max: usize,
    pub(super) waiters: VecDeque<Waiter>,
    pub(super) next_waiter: u64,
    /// Consecutive failed connects.
    pub(super) failures: u32,
    /// Set while backing off: no attempt before this.
    pub(super) retry_at: Option<Instant>,
}

impl State {
    /// How much longer the placement backs off, if it does. Reads the
    /// clock only after a failure.
    pub(super) fn backing_off(&self) -> Option<Duration> {
        let at = self.retry_at?;
        at.checked_duration_since(Instant::now())
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

/// Takes what is there without waiting: an idle connection, a slot to
/// open one, or word that the placement is backing off. `None`: wait.
pub(super) fn take(s: &mut State, worker: usize) -> Option<Grant> {
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
pub(super) fn serve_waiters(s: &mut State) {
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
pub(super) fn hand_to_waiter(s: &mut State, mut grant: Grant) -> Option<Pooled> {
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
