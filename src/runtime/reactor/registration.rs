//! A socket's place in its thread's reactor: the slot the kernel's
//! events mark ready, which the socket holds directly.

use super::{
    LOOP_ID, READ, Shared, WRITE, epoll_add, off_loop, ready_mask, sends, token, with_reactor,
};
use crate::runtime::batch::SendState;
use std::cell::{Cell, UnsafeCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

/// A registered fd's state: readiness seen and not yet used up, and who
/// to wake. The socket holds it directly, so a readiness check is one
/// load. The wakers stay after a wake-up (a socket that waits again with
/// the same task stores nothing); a spurious wake-up of a former owner is
/// harmless.
pub(super) struct Slot {
    /// READ | WRITE bits. Atomic only so that a socket used (wrongly) off
    /// its thread stays memory-safe: the loop's thread is the only writer.
    ready: AtomicU8,
    /// The id of the reactor it is registered with.
    reactor: usize,
    pub(super) token: u64,
    reader: UnsafeCell<Option<Waker>>,
    writer: UnsafeCell<Option<Waker>>,
    /// Sends the loop took over (`runtime::batch`), loop thread only like
    /// the wakers.
    pub(super) sends: SendState,
}

pub(crate) use crate::runtime::batch::SharedStream;

// SAFETY: `reader`, `writer` and the send state are read and written only
// on the thread whose loop has id `reactor` (`Registration::is_local` is
// checked before every use; `dispatch` and the batch's flush run there),
// and dropped with the last reference, when no other thread can reach
// them.
unsafe impl Sync for Slot {}

impl Slot {
    /// Backlog or an error left by a submitted send.
    pub(super) fn unsettled(&self) -> bool {
        self.sends.unsettled()
    }

    pub(super) fn mark(&self, bits: u8) {
        let r = self.ready.load(Ordering::Relaxed);
        self.ready.store(r | bits, Ordering::Relaxed);
    }

    /// Clears `bits` (not the closed states): the last call used it up.
    pub(super) fn unmark(&self, bits: u8) {
        let r = self.ready.load(Ordering::Relaxed);
        self.ready.store(r & !bits, Ordering::Relaxed);
    }

    /// Wakes the waker stored for `dir`.
    ///
    /// # Safety
    /// On the slot's loop thread only.
    pub(super) unsafe fn wake(&self, dir: u8) {
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

/// Stores `waker` in `cell` unless it holds one that wakes the same task.
///
/// # Safety
/// On the cell's loop thread, outside any borrow of the cell.
unsafe fn store_waker(cell: &UnsafeCell<Option<Waker>>, waker: &Waker) {
    // SAFETY: per the caller.
    let stored = unsafe { &mut *cell.get() };
    if !stored.as_ref().is_some_and(|w| w.will_wake(waker)) {
        *stored = Some(waker.clone());
    }
}

/// A file descriptor's place in the reactor of the thread that
/// registered it. Dropping it frees the place (at once on that thread,
/// at the loop's next turn from elsewhere); the fd itself belongs to the
/// caller (shared with pending sends, for a stream), who closes it after.
pub struct Registration {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    /// The stream sends are queued for; None (nothing queued): a listener.
    stream: Option<SharedStream>,
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
    /// reports the current state right after registration). Sends are
    /// never queued for it (see `for_stream`).
    pub fn new(fd: RawFd) -> io::Result<Registration> {
        Registration::register(fd, None)
    }

    /// Registers a stream whose small sends may be queued for the turn's
    /// batch; each queued send holds the stream (`SharedStream`).
    pub fn for_stream(stream: &SharedStream) -> io::Result<Registration> {
        Registration::register(stream.as_raw_fd(), Some(Arc::clone(stream)))
    }

    fn register(fd: RawFd, stream: Option<SharedStream>) -> io::Result<Registration> {
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
                sends: SendState::default(),
            });
            entry.insert(Arc::clone(&slot));
            Ok(Registration {
                shared: Arc::clone(&r.shared),
                slot,
                stream,
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
        unsafe { store_waker(cell, cx.waker()) };
        Poll::Pending
    }

    /// Hands `bytes` to the loop, which sends them with the turn's other
    /// sends (`sends`); false if it does not take them (no batching on
    /// this loop, or this socket's bytes this turn would pass
    /// `sends::BATCH_MAX`): then the caller sends them itself, after
    /// `flush_queued`. `waker` is woken if the send fails.
    pub fn queue_send(&self, bytes: &[u8], waker: &Waker) -> bool {
        let Some(stream) = &self.stream else {
            return false;
        };
        if !self.is_local() {
            return false;
        }
        let queued = with_reactor(|r| r.queue_send(&self.slot, stream, bytes)).unwrap_or(false);
        if queued {
            // SAFETY: on the loop's thread (checked above).
            unsafe { store_waker(&self.slot.writer, waker) };
        }
        queued
    }

    /// Sends this socket's queued bytes now (and with them the rest of
    /// the turn's batch), before bytes that must follow them go out
    /// another way.
    pub fn flush_queued(&self) {
        if self.is_local() && self.slot.sends.queued.get() != 0 {
            with_reactor(|r| r.flush_sends());
        }
    }

    /// Whether a submitted send left a backlog or an error.
    pub fn unsettled(&self) -> bool {
        self.is_local() && self.slot.unsettled()
    }

    /// Ready once no submitted send is left unfinished (at once, on the
    /// hot path, when there is none); the error one met, if any. A
    /// backlog is sent here when the socket is writable, else by the loop
    /// at its next write event, which wakes the task. Off the socket's
    /// loop, Ready: nothing this thread queued is pending.
    pub fn poll_settle(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.unsettled() {
            return Poll::Ready(Ok(()));
        }
        if self.is_ready(WRITE) {
            sends::drain_backlog(&self.slot);
        }
        if let Some(code) = self.slot.sends.send_error.get() {
            return Poll::Ready(Err(io::Error::from_raw_os_error(code)));
        }
        if self.slot.sends.backlog.borrow().bytes.is_empty() {
            return Poll::Ready(Ok(()));
        }
        // SAFETY: on the loop's thread (`unsettled` checked it).
        unsafe { store_waker(&self.slot.writer, cx.waker()) };
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
        self.slot.unmark(dir);
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
        // Bytes handed to the loop go out now, in order, before the
        // socket closes. Where that cannot run (off the loop, reactor
        // busy), queued sends and the backlog hold the stream, so they
        // still go to this socket, never to one that reuses its number.
        // A backlog gets one last try.
        if self.is_local() {
            self.flush_queued();
            sends::drain_backlog(&self.slot);
        }
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
