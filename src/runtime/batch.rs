//! A turn's small sends, submitted together in one `io_uring_enter`
//! (when a turn ends is `sends`' business).
//!
//! Why: on a host shared with its clients and the database, a send that
//! wakes its receiver (a PostgreSQL backend, a client) lets that receiver
//! take the CPU on the way back from the syscall: the proxy is preempted
//! with the rest of its turn still to do, and pays a context switch to
//! come back to it. Measured with `perf record -e sched:sched_switch -e
//! raw_syscalls:sys_enter` under `pgbench -S -c 16`, a quarter of the
//! proxy's `sendto` calls ended that way, about 0.45 preemptions per
//! transaction (PgBouncer is switched out as often). Submitted as one
//! batch, the turn's sends all happen inside one syscall, and the
//! preemption, if any, comes once at its end.
//!
//! The forwarding path hands small writes (at most [`BATCH_MAX`] bytes per
//! socket and turn) to the runtime, which copies them into a buffer of its
//! own, so the session's buffer is free at once and nothing borrowed
//! outlives the call. At the end of the turn, it submits them through the
//! OS's ring (`sys::SendRing`, io_uring), where every completion is
//! there when the submit returns. Bytes the kernel did not
//! take become the socket's backlog, which is sent when the socket is
//! next writable and which holds further writes back (back-pressure as
//! before); an error is kept for the socket's next write. Larger writes
//! go straight out, after whatever the socket had queued.
//!
//! A queued send and a backlog hold their socket's stream
//! (`SharedStream`), not its fd number: the descriptor stays open until
//! they are done, so their bytes can only reach that socket, even if it
//! is dropped off its thread or without a flush (a bare number could by
//! then name another client's socket).
//!
//! Where io_uring is unavailable (not Linux, old kernels, seccomp
//! profiles that forbid it, `io_uring_disabled`) or turned off, there is
//! no batch and every write is a `send` of its own.
//!
//! Everything here runs on the one thread that owns the batch; the
//! per-socket state ([`SendState`]) is touched only there.

use crate::sys::{self, RingSend, SendRing, Submitted};
use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

/// The most bytes one socket may have queued in one turn; larger writes
/// go straight to the kernel (a copy would cost more than the syscall it
/// saves).
pub const BATCH_MAX: usize = 8 * 1024;
/// Submission queue entries: sends per `io_uring_enter` (more are
/// submitted in several).
pub(crate) const RING_ENTRIES: u32 = 256;
/// Queued-send buffers kept for reuse, at most.
const SPARE_MAX: usize = 64;

/// A stream socket whose descriptor the pending sends share: a queued
/// send or a backlog holds a clone, so the descriptor stays open (and its
/// number cannot go to another socket) until they are done, and no send
/// path takes a bare fd number.
pub(crate) type SharedStream = Arc<std::net::TcpStream>;

/// Bytes a submitted send left, and the socket they are for (held only
/// while there are some).
#[derive(Default)]
pub(crate) struct Backlog {
    pub(crate) to: Option<SharedStream>,
    pub(crate) bytes: Vec<u8>,
}

/// A socket's share of the batch, on the batch's thread only: this
/// turn's queued bytes (batch index + 1; 0: none), bytes a submitted send
/// left (the kernel's buffer was full), and the error one met (sticky).
#[derive(Default)]
pub(crate) struct SendState {
    pub(crate) queued: Cell<usize>,
    pub(crate) backlog: RefCell<Backlog>,
    pub(crate) send_error: Cell<Option<i32>>,
}

impl SendState {
    /// Backlog or an error left by a submitted send.
    pub(crate) fn unsettled(&self) -> bool {
        self.send_error.get().is_some() || !self.backlog.borrow().bytes.is_empty()
    }
}

/// What a runtime keeps per socket for the batch, and how it learns what
/// became of a submitted send.
pub(crate) trait SendSlot {
    fn sends(&self) -> &SendState;
    /// A submitted send failed (the error is kept): wake the socket's
    /// task, which meets it at its next write.
    fn failed(&self);
    /// A submitted send left a backlog: the socket's writability is used
    /// up (and its task must come back for the rest).
    fn left_backlog(&self);
}

pub(crate) struct Batch<S: SendSlot> {
    ring: SendRing,
    entries: Vec<Entry<S>>,
    spare: Vec<Vec<u8>>,
    /// Bytes queued this turn.
    bytes: usize,
}

struct Entry<S> {
    /// The socket's descriptor, held until the send is done: it cannot be
    /// closed, nor its number reused, while the entry waits.
    stream: SharedStream,
    slot: Arc<S>,
    buf: Vec<u8>,
    /// The send's result: bytes taken or -errno.
    result: i32,
}

impl<S: SendSlot> Batch<S> {
    /// A ring for this thread's sends; None if the kernel refuses one.
    pub(crate) fn new() -> Option<Batch<S>> {
        match SendRing::new(RING_ENTRIES) {
            Ok(ring) => Some(Batch {
                ring,
                entries: Vec::new(),
                spare: Vec::new(),
                bytes: 0,
            }),
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable; each send is a syscall of its own");
                None
            }
        }
    }

    /// Sends queued this turn (one per socket).
    pub(crate) fn queued(&self) -> usize {
        self.entries.len()
    }

    /// Bytes queued this turn.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Queues `bytes` for `slot`'s socket; false if it does not take them
    /// (this socket's bytes this turn would pass [`BATCH_MAX`]): then
    /// the caller sends them itself, after a flush.
    pub(crate) fn queue(&mut self, slot: &Arc<S>, stream: &SharedStream, bytes: &[u8]) -> bool {
        let state = slot.sends();
        match state.queued.get() {
            0 => {
                if bytes.len() > BATCH_MAX {
                    return false;
                }
                let mut buf = self.spare.pop().unwrap_or_default();
                buf.extend_from_slice(bytes);
                self.entries.push(Entry {
                    stream: Arc::clone(stream),
                    slot: Arc::clone(slot),
                    buf,
                    result: 0,
                });
                state.queued.set(self.entries.len());
            }
            n => {
                let Some(entry) = self.entries.get_mut(n - 1) else {
                    return false;
                };
                if entry.buf.len() + bytes.len() > BATCH_MAX {
                    return false;
                }
                entry.buf.extend_from_slice(bytes);
            }
        }
        self.bytes += bytes.len();
        true
    }

    /// Sends everything queued this turn and records each outcome on its
    /// socket. False if the ring failed: the caller gives it up (every
    /// send is then a syscall of its own); nothing is lost or sent twice.
    pub(crate) fn flush(&mut self) -> bool {
        if self.entries.is_empty() {
            return true;
        }
        self.bytes = 0;
        let mut failed = false;
        for chunk in self.entries.chunks_mut(RING_ENTRIES as usize) {
            let outcome = if failed {
                Submitted::None
            } else {
                self.ring.send_all(chunk)
            };
            match outcome {
                Submitted::All => {}
                Submitted::Unknown => failed = true,
                Submitted::None => {
                    failed = true;
                    // The ring is given up; these go out one by one.
                    for e in chunk.iter_mut() {
                        e.result = match sys::send(e.stream.as_fd(), &e.buf) {
                            Ok(n) => n as i32,
                            Err(err) => -err.raw_os_error().unwrap_or(libc::EIO),
                        };
                    }
                }
            }
        }
        for mut e in self.entries.drain(..) {
            settle(&*e.slot, &e.stream, &e.buf, e.result);
            if self.spare.len() < SPARE_MAX && e.buf.capacity() <= BATCH_MAX {
                e.buf.clear();
                self.spare.push(e.buf);
            }
        }
        // A ring that failed may hold entries it did not take; closing
        // it discards them, so nothing is sent twice.
        !failed
    }
}

impl<S> RingSend for Entry<S> {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    fn bytes(&self) -> &[u8] {
        &self.buf
    }

    fn result(&self) -> i32 {
        self.result
    }

    fn set_result(&mut self, result: i32) {
        self.result = result;
    }

    fn abandon(&mut self) {
        // The kernel may still read it.
        std::mem::forget(std::mem::take(&mut self.buf));
    }
}

/// Records a submitted send's outcome on its socket.
fn settle<S: SendSlot>(slot: &S, stream: &SharedStream, buf: &[u8], result: i32) {
    let state = slot.sends();
    state.queued.set(0);
    let taken = match result {
        n if n >= 0 => (n as usize).min(buf.len()),
        n if -n == libc::EAGAIN || -n == libc::EINTR => 0,
        n => {
            state.send_error.set(Some(-n));
            slot.failed();
            return;
        }
    };
    if taken < buf.len() {
        {
            let mut backlog = state.backlog.borrow_mut();
            backlog.bytes.extend_from_slice(&buf[taken..]);
            backlog.to.get_or_insert_with(|| Arc::clone(stream));
        }
        slot.left_backlog();
    }
}

/// Sends what it can of `state`'s backlog; an error is kept for the
/// socket's next write. True if the kernel took all it could and the
/// socket is no longer writable (the backlog waits for the next write
/// readiness).
pub(crate) fn drain_backlog(state: &SendState) -> bool {
    let mut backlog = state.backlog.borrow_mut();
    let Backlog { to, bytes } = &mut *backlog;
    let Some(stream) = to else {
        return false; // no backlog
    };
    while !bytes.is_empty() && state.send_error.get().is_none() {
        match sys::send(stream.as_fd(), bytes) {
            Ok(0) => return true,
            Ok(n) => {
                bytes.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) => state
                .send_error
                .set(Some(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    // All sent, or never will be (the error is sticky): let the stream go.
    *to = None;
    false
}
