//! The stop signal sessions watch between transactions, and the reload
//! generation they check at each lease start. A leaf.
//!
//! Why not just the CancellationToken: every idle client waits on it once
//! per transaction, and the token's check takes a mutex (measured: about
//! 4% of the proxy's user time at 16 clients). Here a session subscribes
//! an `AtomicWaker` once when it starts and registers its task's waker on
//! its first wait; every later wait is one atomic load, and `stop` wakes
//! every registered session.
//!
//! Reloads: [`StopSignal::reloaded`] bumps a generation counter and wakes
//! every session without taking its waker (so its one registration stays
//! good). A session compares the counter with the one it last followed at
//! each lease start (one atomic load); one that holds a server connection
//! across transactions (session mode, a pin) also wakes on it
//! ([`StopWait::changed`]) to see whether it must end (`session/follow.rs`).

use futures_util::task::AtomicWaker;
use slab::Slab;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Set once, when shutdown begins.
#[derive(Default)]
pub struct StopSignal {
    stopping: AtomicBool,
    /// Bumped by every reload that swapped in a new snapshot.
    generation: AtomicU64,
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

    /// A new snapshot is in place: bumps the generation, then wakes every
    /// registered session. The waker is put back after the wake, so a
    /// session's single registration keeps serving later stops and
    /// reloads.
    pub fn reloaded(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for (_, w) in waiters.iter() {
            if let Some(waker) = w.take() {
                waker.wake_by_ref();
                w.register(&waker);
            }
        }
    }

    /// How many reloads swapped a snapshot in so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Registers a session (once, for its whole life).
    pub fn subscribe(self: &Arc<Self>) -> StopWait {
        self.subscribe_at(self.generation())
    }

    /// Registers a session whose snapshot was read at reload
    /// `generation` (read before the snapshot), so that a reload since
    /// is followed at its first lease.
    pub fn subscribe_at(self: &Arc<Self>, generation: u64) -> StopWait {
        let waker = Arc::new(AtomicWaker::new());
        let slot = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Arc::clone(&waker));
        StopWait {
            seen: AtomicU64::new(generation),
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
    /// The reload generation this session last followed.
    seen: AtomicU64,
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
        self.register(cx);
        if self.signal.is_stopping() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn register(&self, cx: &mut Context<'_>) {
        // Register first, then check: a stop after the check wakes us.
        if !self.registered.load(Ordering::Relaxed) {
            self.waker.register(cx.waker());
            self.registered.store(true, Ordering::Relaxed);
        }
    }

    /// A reload happened since this session last followed one.
    pub fn reload_pending(&self) -> bool {
        self.signal.generation() != self.seen.load(Ordering::Relaxed)
    }

    /// The current generation, now followed; call before reading the
    /// snapshot, so that a reload after the read is seen next time.
    pub fn follow_reload(&self) {
        self.seen.store(self.signal.generation(), Ordering::Relaxed);
        // A reload that raced with this session's first registration may
        // have taken its waker for good (`AtomicWaker` hands a waker
        // registered during a wake to that wake): register again at the
        // next wait, once per reload.
        self.registered.store(false, Ordering::Relaxed);
    }

    /// Ready once the stop has begun or a reload is to be followed.
    pub async fn changed(&self) {
        poll_fn(|cx: &mut Context<'_>| self.poll_changed(cx)).await
    }

    /// Ready once the stop has begun or a reload is to be followed;
    /// otherwise the task is woken by either.
    pub fn poll_changed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.register(cx);
        if self.signal.is_stopping() || self.reload_pending() {
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

    #[tokio::test]
    async fn a_reload_wakes_waiters_and_leaves_them_registered_for_the_stop() {
        let signal = Arc::new(StopSignal::default());
        let wait = Arc::new(signal.subscribe());
        assert!(!wait.reload_pending());
        let w = Arc::clone(&wait);
        let task = tokio::spawn(async move {
            w.changed().await;
            w.follow_reload();
            // Waits again with the registration made before the reload.
            w.stopped().await;
        });
        tokio::task::yield_now().await;
        signal.reloaded();
        tokio::task::yield_now().await;
        assert!(!wait.reload_pending(), "the task followed the reload");
        signal.stop();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("woken by the stop after a reload")
            .expect("task");
    }
}
