//! A worker's event loop: epoll readiness, timers and the session set on
//! one thread, with no tokio runtime under it.
//!
//! Why not tokio's current-thread runtime: with the sessions already
//! polled by a set of our own, tokio's share of a forwarded select-only
//! transaction was its reactor and its park (callgrind, `pgbench -S -c
//! 16`: about 1 200 of 4 000 user-space instructions; per readiness
//! event a lock and a wake list to wake the task, the same lock again to
//! arm the next wake-up; per park two clock reads for a busy-time metric
//! and a walk of the timer wheel, timers or not). Here an event sets a
//! bit in the socket's slot and wakes the waker stored there; a socket
//! that waits again compares wakers and stores nothing; the clock is read
//! only while a timer is pending.
//!
//! Everything here is single-threaded: the slots live in a thread-local
//! reactor and only the owning thread touches them. Other threads reach a
//! reactor through [`Shared`]: the epoll instance (a socket moving to
//! another worker takes itself off it), slots to free for sockets dropped
//! elsewhere, and an eventfd that wakes the loop for a remote wake-up.

use super::session_set::SessionSet;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

mod registration;
mod sends;
#[cfg(test)]
mod tests;
mod timers;

pub use registration::Registration;
pub(crate) use registration::SharedStream;
use registration::Slot;
use timers::Timer;
#[cfg(test)]
pub use timers::timer_heap_len;
pub use timers::{TimerKey, timer_add, timer_cancel, timer_poll};

/// Readiness bits of a slot.
pub const READ: u8 = 1;
pub const WRITE: u8 = 2;
/// The peer closed its side (or the socket failed): final states, never
/// cleared. A read that empties the socket clears READ, but the FIN that
/// arrived with the data it read is reported in the same event, and no
/// other event will come for it; this bit keeps the next read coming,
/// which then sees EOF. (tokio keeps its closed bits for the same reason.)
const READ_CLOSED: u8 = 4;
const WRITE_CLOSED: u8 = 8;

/// The bits that make `dir` ready: its own and its closed state.
fn ready_mask(dir: u8) -> u8 {
    dir | (dir << 2)
}

/// The epoll token of the eventfd that wakes the loop.
const WAKE_TOKEN: u64 = u64::MAX;
/// Events taken from the kernel per `epoll_wait`.
const EVENTS: usize = 256;

/// Reactors get distinct ids so a timer or waker can tell whether its
/// reactor runs on the current thread.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static REACTOR: RefCell<Option<Reactor>> = const { RefCell::new(None) };
    /// The id of the reactor whose loop runs on this thread (0: none).
    static LOOP_ID: Cell<usize> = const { Cell::new(0) };
}

/// The part of a reactor that other threads may use.
pub struct Shared {
    id: usize,
    epfd: OwnedFd,
    wake_fd: OwnedFd,
    /// Slots of sockets dropped on another thread, freed by the loop.
    freed: Mutex<Vec<u64>>,
    freed_pending: AtomicBool,
}

impl Shared {
    /// Takes `fd` off this reactor's epoll instance (any thread).
    fn forget_fd(&self, fd: RawFd) {
        // SAFETY: plain syscall on fds we own; a null event is allowed
        // for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// Wakes the loop if it waits in `epoll_wait` (any thread).
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. A full
        // counter (EAGAIN) means a wake-up is pending anyway.
        unsafe {
            libc::write(
                self.wake_fd.as_raw_fd(),
                (&raw const one).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

struct Reactor {
    shared: Arc<Shared>,
    regs: Slab<Arc<Slot>>,
    next_generation: u32,
    timers: Slab<Timer>,
    /// (deadline, token) of every timer; entries of cancelled timers stay
    /// until popped or compacted away.
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Heap entries whose timer is gone.
    stale: usize,
    /// This turn's sends (None: each send is a syscall of its own).
    sends: Option<sends::Batch>,
}

fn token(key: usize, generation: u32) -> u64 {
    (key as u64 & 0xffff_ffff) | (u64::from(generation) << 32)
}

fn untoken(token: u64) -> (usize, u32) {
    ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
}

fn off_loop() -> io::Error {
    io::Error::other("socket used off its worker's event loop")
}

/// Runs `f` on this thread's reactor, if there is one and it is free.
fn with_reactor<R>(f: impl FnOnce(&mut Reactor) -> R) -> Option<R> {
    REACTOR
        .try_with(|r| {
            let mut r = r.try_borrow_mut().ok()?;
            r.as_mut().map(f)
        })
        .ok()
        .flatten()
}

impl Reactor {
    fn new(batch_sends: bool) -> io::Result<Reactor> {
        // SAFETY: plain syscalls; each returned fd is checked, then owned.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
        let wake_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake_fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let wake_fd = unsafe { OwnedFd::from_raw_fd(wake_fd) };
        epoll_add(
            epfd.as_raw_fd(),
            wake_fd.as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKE_TOKEN,
        )?;
        Ok(Reactor {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                epfd,
                wake_fd,
                freed: Mutex::new(Vec::new()),
                freed_pending: AtomicBool::new(false),
            }),
            regs: Slab::new(),
            next_generation: 0,
            timers: Slab::new(),
            heap: BinaryHeap::new(),
            stale: 0,
            sends: if batch_sends {
                sends::Batch::new()
            } else {
                None
            },
        })
    }

    /// Marks the slots of `events` ready and wakes their wakers.
    fn dispatch(&mut self, events: &[libc::epoll_event]) {
        for ev in events {
            let (bits, tok) = (ev.events, ev.u64);
            if tok == WAKE_TOKEN {
                let mut n: u64 = 0;
                // SAFETY: reads 8 bytes into a valid u64 (resets the count).
                unsafe {
                    libc::read(
                        self.shared.wake_fd.as_raw_fd(),
                        (&raw mut n).cast(),
                        std::mem::size_of::<u64>(),
                    );
                }
                continue;
            }
            let (key, _) = untoken(tok);
            let Some(slot) = self.regs.get(key) else {
                continue;
            };
            if slot.token != tok {
                continue;
            }
            let mut ready = 0;
            if bits & libc::EPOLLIN as u32 != 0 {
                ready |= READ;
            }
            if bits & libc::EPOLLRDHUP as u32 != 0 {
                ready |= READ | READ_CLOSED;
            }
            if bits & libc::EPOLLOUT as u32 != 0 {
                ready |= WRITE;
            }
            if bits & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                ready |= READ | READ_CLOSED | WRITE | WRITE_CLOSED;
            }
            slot.mark(ready);
            if ready & READ != 0 {
                // SAFETY: dispatch runs on the loop's thread.
                unsafe { slot.wake(READ) };
            }
            if ready & WRITE != 0 {
                if slot.unsettled() {
                    sends::drain_backlog(slot);
                }
                // SAFETY: as above.
                unsafe { slot.wake(WRITE) };
            }
        }
    }

    /// Frees the slots of sockets dropped on other threads.
    fn free_remote(&mut self) {
        if !self.shared.freed_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let freed =
            std::mem::take(&mut *self.shared.freed.lock().unwrap_or_else(|p| p.into_inner()));
        for tok in freed {
            self.free(tok);
        }
    }

    fn free(&mut self, tok: u64) {
        let (key, _) = untoken(tok);
        if self.regs.get(key).is_some_and(|r| r.token == tok) {
            self.regs.remove(key);
        }
    }
}

fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, tok: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: tok };
    // SAFETY: `ev` is a valid event for the duration of the call.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wakes the loop for the main future or for the set. On the loop's own
/// thread a flag is enough (the loop looks at it before it sleeps);
/// from elsewhere the eventfd interrupts `epoll_wait`.
struct LoopWaker {
    notified: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for LoopWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.notified.swap(true, Ordering::AcqRel)
            && LOOP_ID.try_with(Cell::get).unwrap_or(0) != self.shared.id
        {
            self.shared.wake();
        }
    }
}

/// Removes this thread's reactor when the loop ends, whichever way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = LOOP_ID.try_with(|id| id.set(0));
        // Taken out first, dropped after: dropping wakers may run code
        // that looks for the reactor.
        let reactor = REACTOR.try_with(|r| r.borrow_mut().take()).ok().flatten();
        drop(reactor);
    }
}

pub use crate::runtime::LoopOptions;

/// Runs `main` and the sessions of `set` on this thread until `main` ends
/// (Some(its output)) or the set is closed and empty (None). The thread's
/// reactor exists while this runs; sockets and timers are used from
/// inside it.
pub fn run<F: Future>(
    set: &mut SessionSet,
    main: F,
    options: LoopOptions,
) -> io::Result<Option<F::Output>> {
    let reactor = Reactor::new(options.batch_sends)?;
    let shared = Arc::clone(&reactor.shared);
    let installed = REACTOR.with(|r| {
        let mut r = r.borrow_mut();
        if r.is_some() {
            return Err(io::Error::other(
                "an event loop already runs on this thread",
            ));
        }
        *r = Some(reactor);
        Ok(Installed)
    })?;
    LOOP_ID.with(|id| id.set(shared.id));

    let wakers = |notified| {
        let w = Arc::new(LoopWaker {
            notified: AtomicBool::new(notified),
            shared: Arc::clone(&shared),
        });
        (Arc::clone(&w), Waker::from(w))
    };
    let (main_flag, main_waker) = wakers(true);
    let (set_flag, set_waker) = wakers(true);
    let mut main = pin!(main);
    let mut events: Vec<libc::epoll_event> = Vec::with_capacity(EVENTS);
    let epfd = shared.epfd.as_raw_fd();
    let result = loop {
        if main_flag.notified.swap(false, Ordering::AcqRel)
            && let Poll::Ready(out) = main.as_mut().poll(&mut Context::from_waker(&main_waker))
        {
            break Some(out);
        }
        if set_flag.notified.swap(false, Ordering::AcqRel)
            && set.poll(&mut Context::from_waker(&set_waker)).is_ready()
        {
            break None;
        }
        // The turn's sends go out before the loop waits (a failed one may
        // wake a session, so before `busy` is read).
        with_reactor(Reactor::flush_sends);
        let busy =
            main_flag.notified.load(Ordering::Acquire) || set_flag.notified.load(Ordering::Acquire);
        let timeout = if busy {
            0
        } else {
            with_reactor(|r| r.timeout_ms()).unwrap_or(0)
        };
        // SAFETY: `events` has room for EVENTS entries; the kernel fills
        // at most that many and we set the length to what it reports.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), EVENTS as i32, timeout) };
        let n = if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            0
        } else {
            n as usize
        };
        // SAFETY: the kernel initialised the first `n` events.
        unsafe { events.set_len(n) };
        with_reactor(|r| {
            r.dispatch(&events);
            r.fire_timers();
            r.free_remote();
        });
        events.clear();
    };
    with_reactor(Reactor::flush_sends);
    drop(installed);
    Ok(result)
}

/// Runs `f` to completion on an event loop of its own on this thread
/// (with an empty session set that `spawn_local` reaches): for tests and
/// tools that drive sockets outside a worker.
pub fn block_on<F: Future>(f: F) -> F::Output {
    block_on_with(f, LoopOptions { batch_sends: true })
}

/// `block_on` with the given options.
pub fn block_on_with<F: Future>(f: F, options: LoopOptions) -> F::Output {
    let mut set = SessionSet::new();
    match run(&mut set, f, options) {
        Ok(Some(out)) => out,
        Ok(None) => unreachable!("a set nobody closed never ends"),
        Err(e) => panic!("event loop failed: {e}"),
    }
}

/// Sockets registered with this thread's reactor (tests).
#[cfg(test)]
pub fn registered() -> usize {
    with_reactor(|r| r.regs.len()).unwrap_or(0)
}

/// Sends queued this turn on this thread's loop; None if it does not
/// batch (tests).
#[cfg(test)]
pub fn queued_sends() -> Option<usize> {
    with_reactor(|r| r.sends.as_ref().map(sends::Batch::queued)).flatten()
}
