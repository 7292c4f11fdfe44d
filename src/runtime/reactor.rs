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
use std::cell::{Cell, RefCell, UnsafeCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

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
}

/// A registered fd's state: readiness seen and not yet used up, and who
/// to wake. The socket holds it directly, so a readiness check is one
/// load. The wakers stay after a wake-up (a socket that waits again with
/// the same task stores nothing); a spurious wake-up of a former owner is
/// harmless.
struct Slot {
    /// READ | WRITE bits. Atomic only so that a socket used (wrongly) off
    /// its thread stays memory-safe: the loop's thread is the only writer.
    ready: AtomicU8,
    /// The id of the reactor it is registered with.
    reactor: usize,
    token: u64,
    reader: UnsafeCell<Option<Waker>>,
    writer: UnsafeCell<Option<Waker>>,
}

// SAFETY: `reader` and `writer` are read and written only on the thread
// whose loop has id `reactor` (`Registration::is_local` is checked before
// every write; `dispatch` runs there), and dropped with the last
// reference, when no other thread can reach them.
unsafe impl Sync for Slot {}

impl Slot {
    fn mark(&self, bits: u8) {
        let r = self.ready.load(Ordering::Relaxed);
        self.ready.store(r | bits, Ordering::Relaxed);
    }

    /// Wakes the waker stored for `dir`.
    ///
    /// # Safety
    /// On the slot's loop thread only.
    unsafe fn wake(&self, dir: u8) {
        let cell = if dir == READ {
            &self.reader
        } else {
            &self.writer
        };
        // SAFETY: the caller is on the loop's thread, the only one that
        // touches the cell; wakers do not poll inline, so nothing writes
        // it while this reference lives.
        if let Some(w) = unsafe { &*cell.get() } {
            w.wake_by_ref();
        }
    }
}

struct Timer {
    generation: u32,
    fired: bool,
    waker: Option<Waker>,
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
    fn new() -> io::Result<Reactor> {
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

    /// Milliseconds `epoll_wait` may sleep: until the next timer, or
    /// forever (-1). Reads the clock only while a timer is pending.
    fn timeout_ms(&self) -> i32 {
        let Some(Reverse((deadline, _))) = self.heap.peek() else {
            return -1;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up: waking a little late fires the timer; waking early
        // would only loop.
        let ms = left.as_nanos().div_ceil(1_000_000);
        i32::try_from(ms).unwrap_or(i32::MAX)
    }

    /// Fires the timers that are due.
    fn fire_timers(&mut self) {
        if self.heap.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(Reverse((deadline, tok))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            let (key, generation) = untoken(tok);
            match self.timers.get_mut(key) {
                Some(t) if t.generation == generation => {
                    t.fired = true;
                    if let Some(w) = t.waker.take() {
                        w.wake();
                    }
                }
                _ => self.stale = self.stale.saturating_sub(1),
            }
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

/// A file descriptor's place in the reactor of the thread that
/// registered it. Dropping it frees the place (at once on that thread,
/// at the loop's next turn from elsewhere); the fd itself belongs to the
/// caller, who closes it after.
pub struct Registration {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("reactor", &self.slot.reactor)
            .field("token", &self.slot.token)
            .finish()
    }
}

impl Registration {
    /// Registers `fd` (edge-triggered, both directions) with this
    /// thread's reactor. Nothing is ready until the kernel says so (it
    /// reports the current state right after registration).
    pub fn new(fd: RawFd) -> io::Result<Registration> {
        with_reactor(|r| {
            let generation = r.next_generation;
            r.next_generation = r.next_generation.wrapping_add(1);
            let entry = r.regs.vacant_entry();
            let tok = token(entry.key(), generation);
            let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
            epoll_add(r.shared.epfd.as_raw_fd(), fd, events, tok)?;
            let slot = Arc::new(Slot {
                ready: AtomicU8::new(0),
                reactor: r.shared.id,
                token: tok,
                reader: UnsafeCell::new(None),
                writer: UnsafeCell::new(None),
            });
            entry.insert(Arc::clone(&slot));
            Ok(Registration {
                shared: Arc::clone(&r.shared),
                slot,
            })
        })
        .unwrap_or_else(|| Err(off_loop()))
    }

    /// Whether this registration belongs to the current thread's loop.
    pub fn is_local(&self) -> bool {
        LOOP_ID.try_with(Cell::get).unwrap_or(0) == self.slot.reactor
    }

    /// Ready if the kernel reported `dir` (READ or WRITE) since it was
    /// last cleared; otherwise stores the task's waker for it. An error
    /// off the loop the socket is registered with.
    pub fn poll_ready(&self, cx: &mut Context<'_>, dir: u8) -> Poll<io::Result<()>> {
        if self.is_ready(dir) {
            return Poll::Ready(Ok(()));
        }
        if !self.is_local() {
            return Poll::Ready(Err(off_loop()));
        }
        let cell = if dir == READ {
            &self.slot.reader
        } else {
            &self.slot.writer
        };
        // SAFETY: on the slot's loop thread (checked above), the only one
        // that touches the cell, and not inside `dispatch`'s borrow of it
        // (wakers do not poll inline).
        let stored = unsafe { &mut *cell.get() };
        if !stored.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *stored = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Whether `dir` is ready (or closed): one load, no syscall, no waker
    /// stored.
    pub fn is_ready(&self, dir: u8) -> bool {
        self.slot.ready.load(Ordering::Relaxed) & ready_mask(dir) != 0
    }

    /// The socket gave all it had (or took all it could) in `dir`: wait
    /// for the kernel's next report. A closed state stays.
    pub fn clear(&self, dir: u8) {
        let r = self.slot.ready.load(Ordering::Relaxed);
        self.slot.ready.store(r & !dir, Ordering::Relaxed);
    }

    /// Takes `fd` off the reactor's epoll instance now (from any thread),
    /// for an fd that stays open: duplicated listeners, sockets moving to
    /// another worker.
    pub fn forget_fd(&self, fd: RawFd) {
        self.shared.forget_fd(fd);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let tok = self.slot.token;
        let freed = self.is_local()
            && with_reactor(|r| {
                r.free(tok);
            })
            .is_some();
        if !freed {
            self.shared
                .freed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(tok);
            self.shared.freed_pending.store(true, Ordering::Release);
        }
    }
}

/// A timer's place in the reactor of the thread that set it.
#[derive(Debug)]
pub struct TimerKey {
    reactor: usize,
    token: u64,
}

/// Sets a timer for `deadline` that wakes `waker`; None off the loop.
pub fn timer_add(deadline: Instant, waker: &Waker) -> Option<TimerKey> {
    with_reactor(|r| {
        let generation = r.next_generation;
        r.next_generation = r.next_generation.wrapping_add(1);
        let key = r.timers.insert(Timer {
            generation,
            fired: false,
            waker: Some(waker.clone()),
        });
        let tok = token(key, generation);
        r.heap.push(Reverse((deadline, tok)));
        TimerKey {
            reactor: r.shared.id,
            token: tok,
        }
    })
}

/// Whether the timer fired; if not, `waker` is the one it wakes. A timer
/// of another thread's reactor (or of one that is gone) counts as fired.
pub fn timer_poll(key: &TimerKey, waker: &Waker) -> bool {
    with_reactor(|r| {
        if r.shared.id != key.reactor {
            return true;
        }
        let (k, generation) = untoken(key.token);
        match r.timers.get_mut(k) {
            Some(t) if t.generation == generation => {
                if !t.fired && !t.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    t.waker = Some(waker.clone());
                }
                t.fired
            }
            _ => true,
        }
    })
    .unwrap_or(true)
}

/// Cancels a timer (a no-op off its thread: it fires into nothing).
pub fn timer_cancel(key: &TimerKey) {
    with_reactor(|r| {
        if r.shared.id != key.reactor {
            return;
        }
        let (k, generation) = untoken(key.token);
        if r.timers.get(k).is_some_and(|t| t.generation == generation) {
            let t = r.timers.remove(k);
            if !t.fired {
                r.stale += 1;
            }
        }
        // Timers cancelled long before their deadline (an idle limit per
        // transaction) would pile up in the heap: rebuild it once most of
        // it is dead.
        if r.stale > 64 && r.stale > r.timers.len() {
            let timers = &r.timers;
            r.heap.retain(|Reverse((_, tok))| {
                let (k, generation) = untoken(*tok);
                timers
                    .get(k)
                    .is_some_and(|t| t.generation == generation && !t.fired)
            });
            r.stale = 0;
        }
    });
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

/// Runs `main` and the sessions of `set` on this thread until `main` ends
/// (Some(its output)) or the set is closed and empty (None). The thread's
/// reactor exists while this runs; sockets and timers are used from
/// inside it.
pub fn run<F: Future>(set: &mut SessionSet, main: F) -> io::Result<Option<F::Output>> {
    let reactor = Reactor::new()?;
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
    drop(installed);
    Ok(result)
}

/// Runs `f` to completion on an event loop of its own on this thread
/// (with an empty session set that `spawn_local` reaches): for tests and
/// tools that drive sockets outside a worker.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut set = SessionSet::new();
    match run(&mut set, f) {
        Ok(Some(out)) => out,
        Ok(None) => unreachable!("a set nobody closed never ends"),
        Err(e) => panic!("event loop failed: {e}"),
    }
}

/// Entries in this thread's timer heap (tests).
#[cfg(test)]
pub fn timer_heap_len() -> usize {
    with_reactor(|r| r.heap.len()).unwrap_or(0)
}

/// Sockets registered with this thread's reactor (tests).
#[cfg(test)]
pub fn registered() -> usize {
    with_reactor(|r| r.regs.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::net::Socket;
    use std::time::Duration;

    /// A wake-up from another thread reaches a loop asleep in
    /// `epoll_wait` with nothing else to wake it (no socket, no timer):
    /// the eventfd path.
    #[test]
    fn a_wake_up_from_another_thread_interrupts_the_wait() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).expect("receiver alive");
        });
        assert_eq!(block_on(promptly(rx)).expect("sent"), 7);
        sender.join().expect("sender");
    }

    /// `fut`'s output, which must come within 2 s. The 5 s timer bounds
    /// the test if a wake-up is lost; a lost wake-up then shows as the
    /// time the loop slept.
    async fn promptly<F: Future>(fut: F) -> F::Output {
        let start = Instant::now();
        let out = crate::runtime::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("in time");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        out
    }

    /// The same for a session of the set, woken by another thread: the
    /// set's remote list and the loop's eventfd.
    #[test]
    fn a_session_woken_from_another_thread_runs() {
        let done = block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let session = async move {
                let v: u32 = rx.await.expect("sent");
                let _ = done_tx.send(v + 1);
            };
            assert!(crate::runtime::spawn_local(Box::pin(session)).is_ok());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let _ = tx.send(1);
            });
            promptly(done_rx).await.expect("session ran")
        });
        assert_eq!(done, 2);
    }

    /// A socket dropped on another thread gives its slot back at the
    /// loop's next turn; one dropped on the loop's thread at once.
    #[test]
    fn slots_of_dropped_sockets_are_freed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        block_on(async move {
            let a = Socket::connect("127.0.0.1", port).await.expect("connect");
            let b = Socket::connect("127.0.0.1", port).await.expect("connect");
            assert_eq!(registered(), 2);
            drop(a);
            assert_eq!(registered(), 1);
            std::thread::spawn(move || drop(b)).join().expect("drop");
            assert_eq!(registered(), 1, "freed by the loop, not the dropper");
            // One turn of the loop (a timer) frees it.
            crate::runtime::time::sleep(Duration::from_millis(1)).await;
            assert_eq!(registered(), 0);
            drop(listener);
        });
    }
}
