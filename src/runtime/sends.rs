//! The worker's batch of sends under tokio (`runtime::batch` says why
//! and how), and when it is flushed: at the end of a turn.
//!
//! tokio has no single "end of turn". Three points stand in for it:
//! - `on_thread_park`: the run queue is empty and the thread is about to
//!   wait in epoll (`flush_local`);
//! - a flusher task, woken when the first send of a turn is queued: it
//!   runs after the tasks already runnable, so a busy worker (which never
//!   parks: tokio calls `on_thread_park` only when nothing is runnable)
//!   still sends within one pass over its run queue;
//! - at once when the batch passes [`FLUSH_SENDS`] sends or
//!   [`FLUSH_BYTES`] bytes.
//!
//! A backlog is sent by the socket's own task, when it next polls the
//! socket (`net::Socket::poll_settle`, also from any wait for readiness):
//! the flush that leaves one wakes that task, which then waits for the
//! socket's write readiness.

use crate::runtime::batch::{Batch, SendSlot, SendState, SharedStream};
use std::cell::RefCell;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// Sends queued in one turn before the batch is flushed anyway.
pub const FLUSH_SENDS: usize = 64;
/// Bytes queued in one turn before the batch is flushed anyway.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// A socket's share of the batch, and the task to tell what became of
/// its sends.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) sends: SendState,
    waker: RefCell<Option<Waker>>,
}

// SAFETY: a slot is read and written only on the thread of the runtime
// its socket is registered with (`Socket::is_local` is checked before
// every use; the batch lives and is flushed on that thread), and dropped
// with the last reference, when no other thread can reach it.
unsafe impl Sync for Slot {}

impl Slot {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }
}

impl SendSlot for Slot {
    fn sends(&self) -> &SendState {
        &self.sends
    }

    fn failed(&self) {
        self.wake();
    }

    fn left_backlog(&self) {
        // Its task comes back and waits for write readiness.
        self.wake();
    }
}

struct Local {
    /// None: no io_uring (refused or turned off), or no runtime here.
    batch: Option<Batch<Slot>>,
    /// The flusher task.
    flusher: Option<Waker>,
    /// The flusher has been woken since it last ran.
    flusher_woken: bool,
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local {
            batch: None,
            flusher: None,
            flusher_woken: false,
        })
    };
}

impl Local {
    fn flush(&mut self) {
        if let Some(b) = self.batch.as_mut()
            && !b.flush()
        {
            self.batch = None;
        }
    }
}

/// Sets up this thread's batch (if `batch_sends` and the kernel allows).
pub(super) fn install(batch_sends: bool) {
    let batch = if batch_sends { Batch::new() } else { None };
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.batch = batch;
        l.flusher = None;
        l.flusher_woken = false;
    });
}

/// Sends what is queued and removes this thread's batch.
pub(super) fn uninstall() {
    let _ = LOCAL.try_with(|l| {
        let taken = l.try_borrow_mut().ok().map(|mut l| {
            l.flush();
            l.flusher = None;
            l.batch.take()
        });
        // Dropped outside the borrow.
        drop(taken);
    });
}

/// Sends everything queued on this thread (the end of a turn).
pub(super) fn flush_local() {
    let _ = LOCAL.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.flush();
        }
    });
}

/// Queues `bytes` for `slot`'s socket; false if the batch does not take
/// them (no batch, the socket's bytes this turn would pass `BATCH_MAX`,
/// or a no-op `waker`): then the caller sends them itself, after
/// [`flush_local`]. `waker` is woken if the send fails or leaves a
/// backlog; a no-op one could tell no one, and the backlog would wait
/// for a task that does not know of it. On the socket's runtime thread
/// only.
pub(super) fn queue(slot: &Arc<Slot>, stream: &SharedStream, bytes: &[u8], waker: &Waker) -> bool {
    if waker.will_wake(Waker::noop()) {
        return false;
    }
    LOCAL
        .try_with(|l| {
            let Ok(mut l) = l.try_borrow_mut() else {
                return false;
            };
            let Some(b) = l.batch.as_mut() else {
                return false;
            };
            if !b.queue(slot, stream, bytes) {
                return false;
            }
            {
                let mut stored = slot.waker.borrow_mut();
                if !stored.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *stored = Some(waker.clone());
                }
            }
            if b.queued() >= FLUSH_SENDS || b.queued_bytes() >= FLUSH_BYTES {
                l.flush();
            } else if !l.flusher_woken {
                l.flusher_woken = true;
                if let Some(f) = &l.flusher {
                    f.wake_by_ref();
                }
            }
            true
        })
        .unwrap_or(false)
}

/// The flusher task of this thread's runtime: each time it is woken, it
/// sends what the turn queued. Never ends (dropped with the runtime).
pub(super) async fn flusher() {
    poll_fn(|cx| {
        let _ = LOCAL.try_with(|l| {
            if let Ok(mut l) = l.try_borrow_mut() {
                if !l.flusher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    l.flusher = Some(cx.waker().clone());
                }
                l.flusher_woken = false;
                l.flush();
            }
        });
        Poll::<()>::Pending
    })
    .await
}

/// Sends queued this turn on this thread; None if it does not batch
/// (tests).
#[cfg(test)]
pub(crate) fn queued_sends() -> Option<usize> {
    LOCAL
        .try_with(|l| l.borrow().batch.as_ref().map(Batch::queued))
        .ok()
        .flatten()
}
