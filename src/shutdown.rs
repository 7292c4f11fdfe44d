//! The stop signal sessions watch between transactions. A leaf.
//!
//! Why not just the CancellationToken: every idle client waits on it once
//! per transaction, and the token's check takes a mutex (measured: about
//! 4% of the proxy's user time at 16 clients). Here a session subscribes
//! an `AtomicWaker` once when it starts and registers its task's waker on
//! its first wait; every later wait is one atomic load, and `stop` wakes
//! every registered session.

use futures_util::task::AtomicWaker;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Set once, when shutdown begins.
#[derive(Default)]
pub struct StopSignal {
    stopping: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// The subscribed sessions' wakers, by slot: a subscription costs a push
/// or a reused slot, not a hash of an id (a connection's login counted
/// about 300 instructions of SipHash for it).
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Arc<AtomicWaker>>>,
    free: Vec<usize>,
}

impl StopSignal {
    /// Begins the stop: every registered session wakes up and sees it.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for w in waiters.slots.iter().flatten() {
            w.wake();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Registers a session (once, for its whole life).
    pub fn subscribe(self: &Arc<Self>) -> StopWait {
        let waker = Arc::new(AtomicWaker::new());
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match waiters.free.pop() {
            Some(i) => {
                waiters.slots[i] = Some(Arc::clone(&waker));
                i
            }
            None => {
                waiters.slots.push(Some(Arc::clone(&waker)));
                waiters.slots.len() - 1
            }
        };
        drop(waiters);
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
        let mut waiters = self
            .signal
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(w) = waiters.slots.get_mut(self.slot) {
            *w = None;
            waiters.free.push(self.slot);
        }
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
        let waiters = signal.waiters.lock().expect("lock");
        assert!(waiters.slots.iter().all(Option::is_none));
        assert_eq!(waiters.free.len(), waiters.slots.len());
        drop(waiters);
        let again: Vec<StopWait> = (0..4).map(|_| signal.subscribe()).collect();
        let waiters = signal.waiters.lock().expect("lock");
        assert_eq!(waiters.slots.len(), 4, "three reused, one new");
        assert_eq!(waiters.slots.iter().flatten().count(), 4);
        drop(waiters);
        drop(again);
    }
}
