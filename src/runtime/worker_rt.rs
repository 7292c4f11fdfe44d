//! A worker's runtime: one current-thread tokio runtime per worker
//! thread, each session a task of it. No work stealing: a task stays on
//! the thread that spawned it, and a socket on the reactor of the runtime
//! it was registered with (`net`). Small writes go through the worker's
//! batch of sends (`sends`), flushed at the end of each turn.
//!
//! What it must not do: let a session's task or socket be driven by
//! another worker's runtime (sockets check `is_local`), or let a send
//! queued by a turn wait past that turn.

use super::sends;
use super::{LoopOptions, SessionFuture};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio_util::task::TaskTracker;

/// Runtimes get distinct ids so a socket can tell whether it is
/// registered with the runtime of the current thread.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The id of the runtime that runs on this thread (0: none).
    static RUNTIME: Cell<usize> = const { Cell::new(0) };
    /// Its sessions (`spawn_local`); closed by `close_local`.
    static SESSIONS: RefCell<Option<TaskTracker>> = const { RefCell::new(None) };
}

/// The id of the runtime that runs on this thread (0: none).
pub(super) fn runtime_id() -> usize {
    RUNTIME.try_with(Cell::get).unwrap_or(0)
}

pub(super) fn off_loop() -> io::Error {
    io::Error::other("socket used off its worker's runtime")
}

/// This thread's runtime state (id, batch, sessions) while a runtime
/// runs here; torn down when dropped, after the runtime is.
struct Installed;

impl Installed {
    fn new(options: LoopOptions) -> io::Result<Installed> {
        if runtime_id() != 0 {
            return Err(io::Error::other(
                "a data-plane runtime already runs on this thread",
            ));
        }
        RUNTIME.with(|r| r.set(NEXT_ID.fetch_add(1, Ordering::Relaxed)));
        SESSIONS.with(|s| *s.borrow_mut() = Some(TaskTracker::new()));
        sends::install(options.batch_sends);
        Ok(Installed)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        sends::uninstall();
        let _ = SESSIONS.try_with(|s| s.borrow_mut().take());
        let _ = RUNTIME.try_with(|r| r.set(0));
    }
}

/// Runs `acceptor` (if any) as the first session and `main` beside the
/// sessions until `main` ends (Some(its output)) or the sessions are
/// closed (`close_local`) and have all ended (None).
pub(super) fn run<F: Future>(
    acceptor: SessionFuture,
    main: F,
    options: LoopOptions,
) -> io::Result<Option<F::Output>> {
    run_with(Some(acceptor), main, options)
}

fn run_with<F: Future>(
    acceptor: Option<SessionFuture>,
    main: F,
    options: LoopOptions,
) -> io::Result<Option<F::Output>> {
    run_on(
        tokio::runtime::Builder::new_current_thread(),
        acceptor,
        main,
        options,
    )
}

/// How far ahead the worker's timer anchor (`timer_anchor`) is due: less
/// than the shortest default client or server timeout (5 s).
const ANCHOR_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps a timer in the worker's wheel at all times, due within
/// `ANCHOR_PERIOD`. tokio wakes its own driver (an eventfd write, then an
/// epoll_wait that returns at once) whenever a timer is registered earlier
/// than the earliest one the wheel held when the thread last parked, and
/// always when the wheel was empty. Each login arms its startup and login
/// limits, often on an empty wheel: under connection churn that was 0.63
/// eventfd writes per connection (strace, `pgbench -C`). A timer due
/// sooner than any such limit takes them all off that path, for one
/// wake-up per period per worker.
async fn timer_anchor() {
    loop {
        super::time::sleep(ANCHOR_PERIOD).await;
    }
}

fn run_on<F: Future>(
    mut builder: tokio::runtime::Builder,
    acceptor: Option<SessionFuture>,
    main: F,
    options: LoopOptions,
) -> io::Result<Option<F::Output>> {
    let installed = Installed::new(options)?;
    let rt = builder
        .enable_all()
        // The end of a turn: nothing left to run, the thread is about to
        // wait in epoll. (Not called while tasks are runnable: `sends`
        // has other end-of-turn points for a busy worker.)
        .on_thread_park(sends::flush_local)
        .build()?;
    let tracker = SESSIONS
        .with(|s| s.borrow().clone())
        .ok_or_else(|| io::Error::other("the worker's sessions are gone"))?;
    let out = rt.block_on(async {
        tokio::spawn(sends::flusher());
        // A worker that accepts clients (tests and tools that drive
        // sockets of their own need none, and a paused clock would keep
        // jumping to it).
        if acceptor.is_some() {
            tokio::spawn(timer_anchor());
        }
        if let Some(acceptor) = acceptor
            && spawn_local(acceptor).is_err()
        {
            return Err(io::Error::other("the worker refused its acceptor"));
        }
        // Outside the coop budget, as the sessions (see `guarded`).
        let main = std::pin::pin!(tokio::task::unconstrained(main));
        Ok(tokio::select! {
            biased;
            out = main => Some(out),
            () = tracker.wait() => None,
        })
    });
    // Sessions still running are dropped with the runtime, on this
    // thread, while the batch is there: what they queued still goes out.
    drop(rt);
    drop(installed);
    out
}

/// Runs `f` to completion on a runtime of its own on this thread (where
/// `spawn_local` works): for tests and tools that drive sockets outside a
/// worker.
pub fn block_on<F: Future>(f: F) -> F::Output {
    block_on_with(f, LoopOptions { batch_sends: true })
}

/// `block_on` with the given options.
pub fn block_on_with<F: Future>(f: F, options: LoopOptions) -> F::Output {
    match run_with(None, f, options) {
        Ok(Some(out)) => out,
        Ok(None) => unreachable!("sessions nobody closed never end"),
        Err(e) => panic!("runtime failed: {e}"),
    }
}

/// `block_on` on a runtime whose clock starts paused: it moves only when
/// every task waits, straight to the next timer. For unit tests of timed
/// code whose only peers are sockets of this same runtime; a peer that
/// answers in real time (a PostgreSQL server, a thread) would see every
/// pending timer fire while it thinks (see README, Tests).
#[cfg(test)]
pub fn block_on_paused<F: Future>(f: F) -> F::Output {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.start_paused(true);
    match run_on(builder, None, f, LoopOptions { batch_sends: true }) {
        Ok(Some(out)) => out,
        Ok(None) => unreachable!("sessions nobody closed never end"),
        Err(e) => panic!("runtime failed: {e}"),
    }
}

/// Hands `session` to the runtime running on this thread, as a task of
/// its own; gives it back if there is none, or if it takes no more.
pub fn spawn_local(session: SessionFuture) -> Result<(), SessionFuture> {
    let tracker = SESSIONS.try_with(|s| s.borrow().clone()).ok().flatten();
    match tracker {
        Some(t) if !t.is_closed() && tokio::runtime::Handle::try_current().is_ok() => {
            t.spawn(guarded(session));
            Ok(())
        }
        _ => Err(session),
    }
}

/// A session as a task: outside tokio's coop budget, and one whose panic
/// ends it alone.
///
/// Why no coop budget: a budget spent makes `poll_read_ready` return
/// Pending without storing the waker, while the pump (`Flow::poll_fill`)
/// takes Pending as "the waker is with the socket" and from then on asks
/// only `read_ready`: the session would never be woken for that socket
/// again. Fairness comes from the pump's own yield after a run of reads
/// and the accept loop's after a run of accepts.
async fn guarded(session: SessionFuture) {
    use futures_util::FutureExt as _;
    let session = std::panic::AssertUnwindSafe(session).catch_unwind();
    if tokio::task::unconstrained(session).await.is_err() {
        tracing::error!("a session panicked; its client is disconnected");
    }
}

/// Tells the runtime running on this thread that no more sessions will
/// come: it ends once the sessions it has end.
pub(super) fn close_local() {
    let _ = SESSIONS.try_with(|s| {
        if let Some(tracker) = s.borrow().as_ref() {
            tracker.close();
        }
    });
}
