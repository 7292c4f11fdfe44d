//! The stop signal sessions watch between transactions, and the registry
//! of running client sessions that SUSPEND and KILL (`control.rs`) reach
//! through it.
//!
//! Why not just the CancellationToken: every idle client waits on it once
//! per transaction, and the token's check takes a mutex (measured: about
//! 4% of the proxy's user time at 16 clients). Here a session subscribes
//! once when it starts (a [`Waiter`]: reason bits and an `AtomicWaker`)
//! and registers its task's waker on its first wait; every later wait is
//! one atomic load of its own reason bits, and `stop` (or a SUSPEND or
//! KILL of its tenant) sets them and wakes the session.
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
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Why a session is asked to stop (bits of [`Waiter::reasons`]).
pub mod reason {
    /// The proxy is shutting down: finish the transaction, then leave.
    pub const SHUTDOWN: u8 = 1;
    /// Its tenant was suspended: finish the transaction, then leave.
    pub const SUSPEND: u8 = 2;
    /// Its tenant was killed: leave now, mid-transaction too.
    pub const KILL: u8 = 4;
}

/// Set once, when shutdown begins; also the registry of running sessions
/// (what SHOW CLIENTS lists and what SUSPEND and KILL reach).
#[derive(Default)]
pub struct StopSignal {
    stopping: AtomicBool,
    /// Bumped by every reload that swapped in a new snapshot.
    generation: AtomicU64,
    /// The subscribed sessions, by slot: a subscription reuses a free
    /// slot instead of hashing an id (a login counted about 300
    /// instructions of SipHash for that).
    waiters: Mutex<Slab<Arc<Waiter>>>,
}

/// One subscribed session: why it must stop (if it must), its task's
/// waker, and what SHOW CLIENTS says about it.
pub struct Waiter {
    reasons: AtomicU8,
    waker: AtomicWaker,
    pub client: Option<crate::control::ClientInfo>,
}

impl Waiter {
    pub fn reasons(&self) -> u8 {
        self.reasons.load(Ordering::Acquire)
    }

    fn signal(&self, reason: u8) {
        self.reasons.fetch_or(reason, Ordering::AcqRel);
        self.wake_keeping_registration();
    }

    /// Wakes the session's task and puts its waker back, so that its one
    /// registration serves later signals and reloads too.
    fn wake_keeping_registration(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake_by_ref();
            self.waker.register(&waker);
        }
    }
}

impl StopSignal {
    /// Begins the stop: every registered session wakes up and sees it.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let waiters = self.lock();
        for (_, w) in waiters.iter() {
            w.signal(reason::SHUTDOWN);
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A new snapshot is in place: bumps the generation, then wakes every
    /// registered session (keeping its registration).
    pub fn reloaded(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for (_, w) in self.lock().iter() {
            w.wake_keeping_registration();
        }
    }

    /// How many reloads swapped a snapshot in so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Arc<Waiter>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session (once, for its whole life).
    pub fn subscribe(self: &Arc<Self>) -> StopWait {
        self.subscribe_client(None, self.generation())
    }

    /// Registers a client's session, listed by SHOW CLIENTS as `client`,
    /// whose snapshot was read at reload `generation` (read before the
    /// snapshot), so that a reload since is followed at its first lease.
    pub fn subscribe_client(
        self: &Arc<Self>,
        client: Option<crate::control::ClientInfo>,
        generation: u64,
    ) -> StopWait {
        let waiter = Arc::new(Waiter {
            reasons: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            client,
        });
        let slot = self.lock().insert(Arc::clone(&waiter));
        // A stop that began before the insert did not see this one.
        if self.is_stopping() {
            waiter.reasons.fetch_or(reason::SHUTDOWN, Ordering::AcqRel);
        }
        StopWait {
            seen: AtomicU64::new(generation),
            signal: Arc::clone(self),
            slot,
            waiter,
            registered: AtomicBool::new(false),
        }
    }

    /// Asks every session whose client `matches` to stop for `why`
    /// (a [`reason`] bit); how many were asked.
    pub fn signal_where(
        &self,
        why: u8,
        matches: impl Fn(&crate::control::ClientInfo) -> bool,
    ) -> usize {
        let waiters = self.lock();
        let mut n = 0;
        for (_, w) in waiters.iter() {
            if w.client.as_ref().is_some_and(&matches) {
                w.signal(why);
                n += 1;
            }
        }
        n
    }

    /// The registered sessions right now (for SHOW CLIENTS; the lock is
    /// held only while the list is copied).
    pub fn sessions(&self) -> Vec<Arc<Waiter>> {
        self.lock().iter().map(|(_, w)| Arc::clone(w)).collect()
    }
}

/// One session's subscription; unregisters on drop. Waited on by one
/// task only (the session's), whose waker never changes.
pub struct StopWait {
    signal: Arc<StopSignal>,
    slot: usize,
    waiter: Arc<Waiter>,
    /// The task's waker is registered: later waits skip the two atomic
    /// swaps a registration costs (a signal takes the waker out, but
    /// after one every wait for it returns at once anyway).
    registered: AtomicBool,
    /// The reload generation this session last followed.
    seen: AtomicU64,
}

impl StopWait {
    /// Asked to stop, for any reason (one atomic load).
    pub fn is_stopping(&self) -> bool {
        self.waiter.reasons() != 0
    }

    /// Why it was asked to stop ([`reason`] bits; 0: it was not).
    pub fn reasons(&self) -> u8 {
        self.waiter.reasons()
    }

    /// Asks this session to stop for `why` (a [`reason`] bit), as
    /// [`StopSignal::signal_where`] would have had it been subscribed.
    pub fn signal(&self, why: u8) {
        self.waiter.signal(why);
    }

    /// This session's entry (SHOW CLIENTS reads it).
    pub fn client(&self) -> Option<&crate::control::ClientInfo> {
        self.waiter.client.as_ref()
    }

    /// Ready once the stop has begun. Cheap to create and to drop, so a
    /// `select!` may make a new one per wait.
    pub async fn stopped(&self) {
        poll_fn(|cx: &mut Context<'_>| self.poll_stopped(cx)).await
    }

    /// Ready once a KILL reached this session.
    pub async fn killed(&self) {
        poll_fn(|cx: &mut Context<'_>| self.poll_reason(cx, reason::KILL)).await
    }

    /// Ready once the stop has begun; otherwise the task is woken by it.
    pub fn poll_stopped(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_reason(cx, u8::MAX)
    }

    fn register(&self, cx: &mut Context<'_>) {
        // Register first, then check: a signal after the check wakes us.
        if !self.registered.load(Ordering::Relaxed) {
            self.waiter.waker.register(cx.waker());
            self.registered.store(true, Ordering::Relaxed);
        }
    }

    /// Ready once one of the `mask` reasons is set.
    pub fn poll_reason(&self, cx: &mut Context<'_>, mask: u8) -> Poll<()> {
        self.register(cx);
        let reasons = self.waiter.reasons();
        if reasons & mask != 0 {
            Poll::Ready(())
        } else {
            if reasons != 0 {
                // Another reason took the waker out: wait for this one.
                self.waiter.waker.register(cx.waker());
                if self.waiter.reasons() & mask != 0 {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        }
    }
}

impl StopWait {
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

    /// Ready once asked to stop (any reason) or a reload is to be
    /// followed.
    pub async fn changed(&self) {
        poll_fn(|cx: &mut Context<'_>| self.poll_changed(cx)).await
    }

    /// Ready once asked to stop (any reason) or a reload is to be
    /// followed; otherwise the task is woken by either.
    pub fn poll_changed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.register(cx);
        if self.is_stopping() || self.reload_pending() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for StopWait {
    fn drop(&mut self) {
        self.signal.lock().try_remove(self.slot);
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
        assert!(signal.lock().is_empty());
        let again: Vec<StopWait> = (0..4).map(|_| signal.subscribe()).collect();
        let mut slots: Vec<usize> = again.iter().map(|w| w.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 1, 2, 3], "three reused, one new");
        assert_eq!(signal.lock().len(), 4);
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
