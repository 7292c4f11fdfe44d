//! The stop signal sessions watch between transactions. A leaf.
//!
//! Why not just the CancellationToken: every idle client waits on it once
//! per transaction, and the token's check takes a mutex (measured: about
//! 4% of the proxy's user time at 16 clients). Here a session subscribes
//! an `AtomicWaker` once when it starts and registers its task's waker on
//! its first wait; every later wait is one atomic load, and `stop` wakes
//! every registered session.

use futures_util::task::AtomicWaker;
use slab::Slab;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Set once, when shutdown begins.
#[derive(Default)]
pub struct StopSignal {
    stopping: AtomicBool,
    /// The subscribed sessions' wakers, by slot: a subscription reuses a
    /// free slot instead of hashing an id (a login counted about 300
    /// instructions of SipHash for that).
    waiters: Mutex<Slab<Arc<AtomicWaker>>>,
}

impl StopSignal {
    /// Begins the stop: every registered session wakes up and sees it.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for (_, w) in waiters.iter() {
            w.wake();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Registers a session (once, for its whole life).
    pub fn subscribe(self: &Arc<Self>) -> StopWait {
        let waker = Arc::new(AtomicWaker::new());
        let slot = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Arc::clone(&waker));
        StopWait {
            signal: Arc::clone(self),
            slot,
            waker,
            registered: AtomicBool::new(false),
        }
    }
}

/// One session's subscription; unregisters on drop. Waited on by one
/// task only (the session's), whose waker never changes.
pub struct StopWait {
    signal: Arc<StopSignal>,
    slot: usize,
    waker: Arc<AtomicWaker>,
    /// The task's waker is registered: later waits skip the two atomic
    /// swaps a registration costs (a stop takes the waker out, but after
    /// a stop every wait returns at once anyway).
    registered: AtomicBool,
}

impl StopWait {
    pub fn is_stopping(&self) -> bool {
        self.signal.is_stopping()
    }

    /// Ready once the stop has begun. Cheap to create and to drop, so a
    /// `select!` may make a new one per wait.
    pub async fn stopped(&self) {
        poll_fn(|cx: &mut Context<'_>| self.poll_stopped(cx)).await
    }

    /// Ready once the stop has begun; otherwise the task is woken by it.
    pub fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Register first, then check: a stop after the check wakes us.
        if !self.registered.load(Ordering::Relaxed) {
            self.waker.register(cx.waker());
            self.registered.store(true, Ordering::Relaxed);
        }
        if self.signal.is_stopping() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for StopWait {
    fn drop(&mut self) {
        self.signal
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_remove(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_wakes_every_waiter() {
        let signal = Arc::new(StopSignal::default());
        let waits: Vec<StopWait> = (0..3).map(|_| signal.subscribe()).collect();
        let tasks: Vec<_> = waits
            .into_iter()
            .map(|w| tokio::spawn(async move { w.stopped().await }))
            .collect();
        tokio::task::yield_now().await;
        assert!(!signal.is_stopping());
        signal.stop();
        for t in tasks {
            tokio::time::timeout(std::time::Duration::from_secs(5), t)
                .await
                .expect("woken")
                .expect("task");
        }
        // Waiters that ended unregistered themselves, and their slots
        // are reused.
        assert!(signal.waiters.lock().expect("lock").is_empty());
        let again: Vec<StopWait> = (0..4).map(|_| signal.subscribe()).collect();
        let mut slots: Vec<usize> = again.iter().map(|w| w.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 1, 2, 3], "three reused, one new");
        assert_eq!(signal.waiters.lock().expect("lock").len(), 4);
    }
}
