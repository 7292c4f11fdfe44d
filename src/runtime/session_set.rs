//! The sessions of one worker thread, polled by its event loop
//! (`reactor::run`; any executor can poll a set, as the tests here do).
//!
//! Why not a tokio task per session: a wake-up of a task takes it through
//! tokio's scheduler (schedule, run-queue pop, task state transitions,
//! harness), about 275 instructions a wake-up and two wake-ups per
//! forwarded transaction. `FuturesUnordered` in one task costs about 180:
//! it is general, with an atomic intrusive queue and every polled future
//! unlinked and relinked. Here a wake-up on the worker's own thread (the
//! common case: the reactor and timers run there) is a flag swap and a
//! push onto a plain thread-local list, and the set pops it and polls the
//! session with its stored waker: about 130 (callgrind, `pgbench -S`:
//! 4 232, 4 047 and 3 916 instructions per transaction for the three).
//!
//! Wakers may still be sent anywhere (pool waiters, shutdown, cancel): a
//! wake-up from another thread goes through a mutex-protected list and
//! wakes whoever polls the set (the loop: through its eventfd). The set
//! owns every session
//! future, so dropping it drops them all, whatever their wakers do.

use futures_util::task::AtomicWaker;
use slab::Slab;
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub use super::SessionFuture;

/// Which session a wake-up is for: its slot and its generation (a number
/// no other session of the set had), so a stale waker of an ended session
/// never polls the session that reused its slot.
type Ticket = (usize, u32);

/// Sets get distinct ids so a waker can tell whether its set lives on the
/// current thread.
static NEXT_SET_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The ready list of the set that runs on this thread.
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local {
            set: 0,
            ready: Vec::new(),
            incoming: Vec::new(),
            closed: false,
            driver: None,
            awake: false,
        })
    };
}

struct Local {
    /// The id of the set that runs on this thread (0: none).
    set: usize,
    /// Sessions woken since the set last took the list.
    ready: Vec<Ticket>,
    /// New sessions (`spawn_local`), not yet in the set.
    incoming: Vec<SessionFuture>,
    /// No more sessions will come (`close_local`).
    closed: bool,
    /// The waker of whoever polls the set (the worker's loop).
    driver: Option<Waker>,
    /// That task is polling the set, or is scheduled to: no need to wake
    /// it again.
    awake: bool,
}

impl Local {
    /// Makes sure the set will be polled: wakes its poller unless
    /// it is polling or already woken.
    fn wake_driver(&mut self) {
        if !self.awake {
            self.awake = true;
            if let Some(driver) = &self.driver {
                driver.wake_by_ref();
            }
        }
    }

    /// Belongs to set `set` (0: none), with nothing pending.
    fn reset(&mut self, set: usize) {
        self.set = set;
        self.ready.clear();
        self.incoming.clear();
        self.closed = false;
        self.driver = None;
        self.awake = false;
    }
}

/// What wakers from other threads reach.
struct Shared {
    id: usize,
    remote: Mutex<Vec<Ticket>>,
    remote_pending: AtomicBool,
    driver: AtomicWaker,
}

struct SessionWaker {
    shared: Arc<Shared>,
    ticket: Ticket,
    /// On a ready list already (cleared just before each poll).
    queued: AtomicBool,
}

impl Wake for SessionWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let local = LOCAL.try_with(|local| {
            let Ok(mut local) = local.try_borrow_mut() else {
                return false;
            };
            if local.set != self.shared.id {
                return false;
            }
            local.ready.push(self.ticket);
            local.wake_driver();
            true
        });
        if local != Ok(true) {
            self.shared
                .remote
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.ticket);
            self.shared.remote_pending.store(true, Ordering::Release);
            self.shared.driver.wake();
        }
    }
}

struct Session {
    future: SessionFuture,
    waker: Waker,
    state: Arc<SessionWaker>,
}

/// Owns a worker's sessions; `poll` runs the woken ones.
pub struct SessionSet {
    shared: Arc<Shared>,
    sessions: Slab<Session>,
    /// The next session's generation.
    generation: u32,
    /// The ready list being worked through (swapped with the thread's).
    batch: Vec<Ticket>,
    /// New sessions being added (swapped with the thread's).
    arrivals: Vec<SessionFuture>,
}

impl SessionSet {
    /// A set that runs on this thread (one per thread at a time): the
    /// one `spawn_local` and `close_local` reach.
    pub fn new() -> SessionSet {
        let id = NEXT_SET_ID.fetch_add(1, Ordering::Relaxed);
        LOCAL.with(|local| local.borrow_mut().reset(id));
        SessionSet {
            shared: Arc::new(Shared {
                id,
                remote: Mutex::new(Vec::new()),
                remote_pending: AtomicBool::new(false),
                driver: AtomicWaker::new(),
            }),
            sessions: Slab::new(),
            generation: 0,
            batch: Vec::new(),
            arrivals: Vec::new(),
        }
    }

    /// Adds a session; it is first polled at the set's next `poll`.
    #[cfg(test)]
    pub fn push(&mut self, future: SessionFuture) {
        let ticket = self.insert(future);
        LOCAL.with(|local| local.borrow_mut().ready.push(ticket));
    }

    /// Puts `future` in a free slot, marked queued (the caller queues it).
    fn insert(&mut self, future: SessionFuture) -> Ticket {
        let entry = self.sessions.vacant_entry();
        let state = Arc::new(SessionWaker {
            shared: Arc::clone(&self.shared),
            ticket: (entry.key(), self.generation),
            queued: AtomicBool::new(true),
        });
        self.generation = self.generation.wrapping_add(1);
        let ticket = state.ticket;
        entry.insert(Session {
            future,
            waker: Waker::from(Arc::clone(&state)),
            state,
        });
        ticket
    }

    /// Adds the sessions handed over by `spawn_local` and polls every
    /// session woken since the last call (sessions woken while this runs
    /// wait for the next call, which the set asks its poller for), so the
    /// worker's other tasks get their turn. Ready once `close_local` has
    /// been called and every session has ended.
    ///
    /// Must be called from the thread that created the set.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if !local
                .driver
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                local.driver = Some(cx.waker().clone());
            }
            local.awake = true;
            std::mem::swap(&mut local.ready, &mut self.batch);
            if !local.incoming.is_empty() {
                std::mem::swap(&mut local.incoming, &mut self.arrivals);
            }
        });
        let mut arrivals = std::mem::take(&mut self.arrivals);
        for session in arrivals.drain(..) {
            let ticket = self.insert(session);
            self.batch.push(ticket);
        }
        self.arrivals = arrivals;
        self.shared.driver.register(cx.waker());
        if self.shared.remote_pending.swap(false, Ordering::AcqRel) {
            let mut remote = self.shared.remote.lock().unwrap_or_else(|p| p.into_inner());
            self.batch.append(&mut remote);
        }
        for i in 0..self.batch.len() {
            self.poll_one(self.batch[i]);
        }
        self.batch.clear();
        let (more, closed) = LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let more = !local.ready.is_empty() || !local.incoming.is_empty();
            local.awake = more;
            (more, local.closed)
        });
        if more {
            cx.waker().wake_by_ref();
        }
        if closed && self.sessions.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn poll_one(&mut self, ticket: Ticket) {
        let Some(session) = self.sessions.get_mut(ticket.0) else {
            return;
        };
        if session.state.ticket != ticket {
            return;
        }
        // Before the poll: a wake-up during it must queue the session again.
        session.state.queued.store(false, Ordering::Release);
        let mut cx = Context::from_waker(&session.waker);
        let future = &mut session.future;
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        let ended = match polled {
            Ok(Poll::Pending) => false,
            Ok(Poll::Ready(())) => true,
            Err(_) => {
                tracing::error!("a session panicked; its client is disconnected");
                true
            }
        };
        if ended {
            // Dropping the session may wake others (a released server
            // connection): nothing of the set is borrowed elsewhere. A
            // panic in a destructor, too, must not take the set down.
            let session = self.sessions.remove(ticket.0);
            if std::panic::catch_unwind(AssertUnwindSafe(|| drop(session))).is_err() {
                tracing::error!("a session panicked while closing");
            }
        }
    }
}

/// Hands `session` to the set running on this thread; gives it back if
/// there is none.
pub fn spawn_local(session: SessionFuture) -> Result<(), SessionFuture> {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        if local.set == 0 || local.closed {
            return Err(session);
        }
        local.incoming.push(session);
        local.wake_driver();
        Ok(())
    })
}

/// Tells the set running on this thread that no more sessions will come:
/// its `poll` is Ready once the sessions it has end.
pub fn close_local() {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        local.closed = true;
        local.wake_driver();
    });
}

impl Drop for SessionSet {
    fn drop(&mut self) {
        // Wakers that outlive the set take the remote path, which nobody
        // reads any more.
        let _ = LOCAL.try_with(|local| {
            if let Ok(mut local) = local.try_borrow_mut()
                && local.set == self.shared.id
            {
                local.reset(0);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    /// Polls `set` until it is closed and empty (or the test times out).
    ///
    /// Not `tokio::time::timeout`: it polls the set once more when time is
    /// up, and that poll would finish the work of a lost wake-up.
    async fn run(set: &mut SessionSet) {
        close_local();
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("every session ends"),
            _ = std::future::poll_fn(|cx| set.poll(cx)) => {}
        }
    }

    /// A session woken from another thread (a pool waiter, a cancel) is
    /// polled again: the remote path wakes the set's task through tokio.
    #[tokio::test]
    async fn wake_ups_from_other_threads_reach_the_set() {
        let mut set = SessionSet::new();
        let done = Arc::new(AtomicU32::new(0));
        for _ in 0..4 {
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let _ = tx.send(1);
            });
            let done = Arc::clone(&done);
            set.push(Box::pin(async move {
                done.fetch_add(rx.await.expect("sent"), Ordering::SeqCst);
            }));
        }
        run(&mut set).await;
        assert_eq!(done.load(Ordering::SeqCst), 4);
    }

    /// The waker of a session that ended does not poll the session that
    /// took its slot, and a session woken many times between polls is
    /// polled once.
    #[tokio::test]
    async fn stale_and_repeated_wake_ups_poll_nothing_extra() {
        let mut set = SessionSet::new();
        let stale: Arc<Mutex<Option<Waker>>> = Arc::default();
        {
            let stale = Arc::clone(&stale);
            set.push(Box::pin(std::future::poll_fn(move |cx| {
                *stale.lock().expect("lock") = Some(cx.waker().clone());
                Poll::Ready(())
            })));
        }
        // One poll: it ends at once, the set stays open.
        let first = futures_util::poll!(std::future::poll_fn(|cx| set.poll(cx)));
        assert!(first.is_pending());

        let polls = Arc::new(AtomicU32::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut rx = Some(rx);
        let own: Arc<Mutex<Option<Waker>>> = Arc::default();
        {
            let (polls, own) = (Arc::clone(&polls), Arc::clone(&own));
            set.push(Box::pin(std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                *own.lock().expect("lock") = Some(cx.waker().clone());
                match rx.as_mut().map(|rx| Pin::new(rx).poll(cx)) {
                    Some(Poll::Ready(_)) | None => Poll::Ready(()),
                    Some(Poll::Pending) => Poll::Pending,
                }
            })));
        }
        // First poll of the new session (it reused the slot).
        let mut driver = std::pin::pin!(std::future::poll_fn(|cx| set.poll(cx)));
        assert!(futures_util::poll!(driver.as_mut()).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);

        stale.lock().expect("lock").take().expect("waker").wake();
        assert!(futures_util::poll!(driver.as_mut()).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "a stale waker polls nothing"
        );

        let waker = own.lock().expect("lock").clone().expect("waker");
        for _ in 0..5 {
            waker.wake_by_ref();
        }
        assert!(futures_util::poll!(driver.as_mut()).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2, "five wake-ups, one poll");

        tx.send(()).expect("session waits");
        close_local();
        // As in `run`: time up must not poll the set once more.
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("the session ends"),
            _ = driver => {}
        }
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    struct PanicOnDrop;

    /// A session whose future panics when dropped after it is done.
    struct EndsWithPanic(SessionFuture, PanicOnDrop);

    impl Future for EndsWithPanic {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.as_mut().poll(cx)
        }
    }

    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("a destructor fails");
        }
    }

    /// A panicking session ends alone: the others run to completion, each
    /// woken by its own events (timers here), and the set finishes once
    /// it is closed and every session has ended; so does a session whose
    /// destructor panics. Sessions come in through
    /// `spawn_local`, as from the accept loop.
    #[tokio::test]
    async fn a_panicking_session_ends_alone() {
        let mut set = SessionSet::new();
        let driver = tokio::spawn(std::future::poll_fn(move |cx| set.poll(cx)));
        let finished = Arc::new(AtomicU32::new(0));
        for i in 0..8u64 {
            let finished = Arc::clone(&finished);
            let session: SessionFuture = Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5 * i)).await;
                if i == 3 {
                    panic!("session {i} fails");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
            // Session 5 panics in a destructor once it has ended.
            let session = if i == 5 {
                Box::pin(EndsWithPanic(session, PanicOnDrop))
            } else {
                session
            };
            assert!(spawn_local(session).is_ok(), "a set runs on this thread");
        }
        close_local();
        assert!(spawn_local(Box::pin(async {})).is_err(), "closed");
        tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .expect("the set finishes once its sessions have")
            .expect("the driver itself does not panic");
        assert_eq!(finished.load(Ordering::SeqCst), 7);
    }
}
