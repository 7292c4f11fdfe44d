//! The byte pump between a client and its leased server connection.
//!
//! Both directions run inside one future, each independently: a direction
//! reads into its buffer, scans the frames in place (no per-message
//! allocation, no copy), writes the complete prefix to the peer in one
//! write, and reads again only once that write is done. So each side's
//! buffer stays bounded, a slow reader slows only its own direction
//! (back-pressure reaches the sender through TCP), and neither direction
//! can deadlock the other.
//!
//! While scanning, the sinks of `txn.rs` keep the transaction state the
//! pooler needs (`TxnState`).
//!
//! Messages the pump cannot pass through as they are (named statements in
//! transaction mode) stop it; the session rewrites them into
//! `Flow::inject` and resumes. Bytes a direction must send that did not
//! come from its source (rewritten messages, the proxy's own replies) go
//! out through its `inject` buffer, in stream order after `ready`.
//!
//! Cancel safety: all state lives in the structs passed in, so dropping
//! the future (e.g. when a shutdown branch of a `select!` wins) loses
//! nothing; polling again resumes where it stopped.

use super::txn::{ClientSink, Halt, ServerSink, TxnState};
use crate::protocol::{FrameError, FrameScanner, HEADER_LEN};
use crate::runtime::stream::Transport;
use bytes::{Buf, BytesMut};
use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll, ready};

/// Read-buffer growth step; also the most a single read takes in.
pub const READ_CHUNK: usize = 16 * 1024;

/// One direction's buffer and how much of it is scanned and ready to go.
#[derive(Debug)]
pub struct Flow {
    pub buf: BytesMut,
    /// Leading bytes of `buf` scanned and not yet written to the peer.
    pub ready: usize,
    /// Bytes of `buf` after `ready` to drop once `ready` is written.
    skip: usize,
    /// Bytes to write after `ready` that did not come from the source.
    pub inject: BytesMut,
    pub scanner: FrameScanner,
    /// This task's waker is registered with the source socket (see
    /// `poll_fill`). Anything that reads the socket other than through
    /// `poll_fill` must clear it.
    pub read_armed: bool,
    /// Reads since this flow last let the worker's other sessions run.
    reads_in_a_row: u32,
    /// The last poll of this direction stopped because the destination
    /// took no more (not because the source had nothing to read).
    pub write_blocked: bool,
    /// Bytes read from the source since the session last took them
    /// (`take_bytes_read`, once per lease, for the metrics).
    bytes_read: u64,
}

/// An empty injection buffer with more capacity than this is freed when
/// its flow parks.
const INJECT_KEEP: usize = 4096;

impl Drop for Flow {
    fn drop(&mut self) {
        super::spare_buffers::give_back(std::mem::take(&mut self.buf));
    }
}

impl Flow {
    /// A flow with no read buffer yet: one is taken when bytes arrive
    /// (`poll_fill`).
    pub fn new(max_frame: usize) -> Flow {
        Flow {
            buf: BytesMut::new(),
            ready: 0,
            skip: 0,
            inject: BytesMut::new(),
            scanner: FrameScanner::new(max_frame),
            read_armed: false,
            reads_in_a_row: 0,
            write_blocked: false,
            bytes_read: 0,
        }
    }

    /// Gives the read buffer back to the worker's spares if it holds no
    /// bytes (a flow at rest), so a flow waiting for its peer holds no
    /// memory for it. No-op on a flow holding bytes or no buffer.
    pub fn park(&mut self) {
        if self.buf.is_empty() {
            super::spare_buffers::give_back(std::mem::take(&mut self.buf));
        }
        // An injection buffer grown past a page (a burst of rewritten
        // messages or proxy replies) is not kept while the flow waits;
        // a small one is, so the usual rewrite allocates nothing.
        if self.inject.is_empty() && self.inject.capacity() > INJECT_KEEP {
            self.inject = BytesMut::new();
        }
    }

    /// Makes sure `buf` has an allocation to read into (a spare if the
    /// flow is parked), for readers other than `poll_fill`.
    pub fn unpark(&mut self) {
        if self.buf.is_empty() {
            self.rewind();
            if self.buf.capacity() == 0 {
                self.buf = super::spare_buffers::take();
            }
        }
    }

    /// Appends bytes that did not come through `poll_fill` (read ahead by
    /// someone else, e.g. a server connection's own reader).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.unpark();
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Back to the front of the allocation of an empty buffer (no copy,
    /// no allocation). Otherwise each read lands past the last one and
    /// the buffer walks its whole 16 kB: every transaction would touch
    /// cold cache lines, in the kernel's copy and in the scan.
    #[inline]
    fn rewind(&mut self) {
        let _ = self.buf.try_reclaim(self.buf.capacity() + 1);
    }

    /// Room for a read: a spare buffer if the flow is parked, more if
    /// what is left cannot take a header.
    #[inline]
    fn make_room(&mut self) {
        if self.buf.is_empty() {
            self.rewind();
            if self.buf.capacity() == 0 {
                self.buf = super::spare_buffers::take();
                return;
            }
        }
        if self.buf.capacity() - self.buf.len() < HEADER_LEN + 1 {
            self.buf.reserve(READ_CHUNK);
        }
    }

    /// Bytes read since the last call.
    pub fn take_bytes_read(&mut self) -> u64 {
        std::mem::take(&mut self.bytes_read)
    }

    /// Changes whenever the destination takes bytes of this direction:
    /// tells a stalled reader from a slow one. Bytes read only grow, and
    /// between two reads the unwritten bytes only shrink.
    pub fn send_progress(&self) -> (u64, usize, usize) {
        (self.bytes_read, self.ready, self.inject.len())
    }

    /// The source has sent part of a message: inside a frame, or a
    /// header or held prefix not yet scanned.
    pub fn mid_message(&self) -> bool {
        !self.scanner.at_boundary() || self.buf.len() > self.ready
    }

    /// Changes whenever bytes arrive for the message in progress (body
    /// still to come, bytes held): tells a stalled message from a slow one.
    pub fn progress(&self) -> (usize, usize) {
        (self.scanner.remaining(), self.buf.len() - self.ready)
    }

    /// Nothing scanned-but-unwritten and not inside a frame.
    pub fn at_rest(&self) -> bool {
        self.ready == 0 && self.inject.is_empty() && self.scanner.at_boundary()
    }

    /// Discards state for a new server connection (server direction only).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.inject.clear();
        self.park();
        self.ready = 0;
        self.skip = 0;
        let max = self.scanner.max_len();
        self.scanner = FrameScanner::new(max);
        self.read_armed = false;
        self.reads_in_a_row = 0;
    }

    /// Reads what `src` has into `buf`, taking room for it (a spare
    /// buffer, if parked) only once the socket is readable.
    ///
    /// Each wake-up of a session polls every socket it waits on, though
    /// usually only one woke it, and a poll of a socket that is not ready
    /// stores the waker again. Once a poll has left this task's waker with
    /// the socket (`read_armed`), one readiness lookup says whether
    /// polling again can find anything: an event sets readiness before it
    /// wakes the task, so nothing is missed.
    ///
    /// The event loop has no cooperative budget; fairness comes from here:
    /// after `READS_IN_A_ROW` reads that found data, the task yields once
    /// to the worker's other sessions.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut impl Transport,
    ) -> Poll<io::Result<usize>> {
        if self.reads_in_a_row >= READS_IN_A_ROW {
            self.reads_in_a_row = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.read_armed {
            if !src.read_ready() {
                return Poll::Pending;
            }
            // Readiness is set, so the event that set it has woken the
            // task and taken its waker: a read that finds nothing must
            // register again.
            self.read_armed = false;
        }
        loop {
            if !src.read_ready() {
                // Stores this task's waker; Ready if readiness came back
                // meanwhile.
                match src.poll_read_ready(cx) {
                    Poll::Pending => {
                        self.read_armed = true;
                        self.reads_in_a_row = 0;
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
            // Readiness first, then the buffer: a flow that waits holds
            // none (see `park`).
            self.make_room();
            match src.recv_into(&mut self.buf) {
                Ok(n) => {
                    self.reads_in_a_row += 1;
                    self.bytes_read += n as u64;
                    return Poll::Ready(Ok(n));
                }
                // Readiness is cleared: the next turn stores the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Why the pump stopped.
#[derive(Debug)]
pub enum PumpExit {
    /// The server is idle at a transaction boundary (`stop_when_idle`).
    Idle,
    /// The client sent Terminate (left at the front of its buffer).
    ClientTerminate,
    /// The client sent a message for the session to rewrite (at the front
    /// of its buffer, possibly not yet whole).
    Rewrite,
    /// Check for session state before the final ReadyForQuery goes out.
    Probe,
    /// Put the client's startup settings back before the final
    /// ReadyForQuery goes out (after a RESET, on a connection it keeps).
    Restore,
    /// Quiet on both sides (only when an idle timeout applies).
    Rest,
    /// The tenant context call that opened the lease failed
    /// (`TxnState::context_failure` says why).
    ContextFailed,
    /// The client stopped being read: its backlog is over the limit
    /// (`budget`). Reported once per pause, after both directions ran.
    Backlog,
    /// The client takes none of the results it is sent (a result larger
    /// than the buffers between, which the server streams): the server
    /// connection is held by back-pressure. Reported once per stall, so
    /// the session can bound it (`client_read_timeout`).
    NotReading,
    /// The client did not read its backlog within `client_read_timeout`
    /// (reported by the session, never by `pump`).
    ClientStalled,
    /// Both directions wait and the client is in the middle of a message.
    /// Reported once per message, so the session can bound it.
    MidMessage,
    /// The client did not finish that message within
    /// `client_message_timeout` (reported by the session).
    MessageStalled,
    /// A KILL of the client's tenant (reported by the session).
    Killed,
    ClientEof,
    ServerEof,
    ClientIo(io::Error),
    ServerIo(io::Error),
    /// The client broke framing (oversized or negative length).
    ClientProtocol(FrameError),
    ServerProtocol(FrameError),
}

enum Side {
    Client,
    Server,
}

type IoExit = fn(io::Error) -> PumpExit;

impl Side {
    /// (read error, write error, end of stream, framing error) for a
    /// direction whose source is this side.
    fn exits(&self) -> (IoExit, IoExit, PumpExit, fn(FrameError) -> PumpExit) {
        match self {
            Side::Client => (
                PumpExit::ClientIo,
                PumpExit::ServerIo,
                PumpExit::ClientEof,
                PumpExit::ClientProtocol,
            ),
            Side::Server => (
                PumpExit::ServerIo,
                PumpExit::ClientIo,
                PumpExit::ServerEof,
                PumpExit::ServerProtocol,
            ),
        }
    }
}

/// Reads a flow may do without waiting before it yields to the other
/// sessions of its worker (see `Flow::poll_fill`).
const READS_IN_A_ROW: u32 = 32;

/// Runs both directions until one of them has something to report.
/// `Flow::poll_fill` yields for fairness.
pub async fn pump(
    client: &mut impl Transport,
    client_flow: &mut Flow,
    server: &mut impl Transport,
    server_flow: &mut Flow,
    state: &mut TxnState,
) -> PumpExit {
    poll_fn(|cx| {
        state.client_paused =
            super::budget::over_backlog(server_flow.inject.len(), state.replies.len());
        if !state.client_paused {
            state.backlog_reported = false;
        }
        // A message that is no longer half-sent is reported afresh when
        // the next one stalls (the session re-arms its deadline while one
        // makes progress: the bound is for a client that stops).
        if state.mid_message_reported && !client_flow.mid_message() {
            state.mid_message_reported = false;
        }
        if let Poll::Ready(exit) =
            poll_direction(cx, client, server, client_flow, state, Side::Client)
        {
            return Poll::Ready(exit);
        }
        state.client_at_rest = client_flow.at_rest();
        let server_direction = poll_direction(cx, server, client, server_flow, state, Side::Server);
        if !server_flow.write_blocked {
            state.not_reading_reported = false;
        }
        match server_direction {
            Poll::Pending if state.client_paused && !state.backlog_reported => {
                state.backlog_reported = true;
                Poll::Ready(PumpExit::Backlog)
            }
            Poll::Pending if server_flow.write_blocked && !state.not_reading_reported => {
                state.not_reading_reported = true;
                state.not_reading_mark = server_flow.send_progress();
                Poll::Ready(PumpExit::NotReading)
            }
            Poll::Pending
                if !state.client_paused
                    && !state.mid_message_reported
                    && client_flow.mid_message() =>
            {
                state.mid_message_reported = true;
                state.mid_message_mark = client_flow.progress();
                Poll::Ready(PumpExit::MidMessage)
            }
            polled => polled,
        }
    })
    .await
}

/// Moves bytes from `src` to `dst` until a read or write would block
/// (Pending) or something must be reported (Ready).
fn poll_direction(
    cx: &mut Context<'_>,
    src: &mut impl Transport,
    dst: &mut impl Transport,
    flow: &mut Flow,
    state: &mut TxnState,
    side: Side,
) -> Poll<PumpExit> {
    let (read_err, write_err, eof, frame_err) = side.exits();
    // Pending from a write below: the destination holds this direction
    // back.
    macro_rules! written {
        ($poll:expr) => {
            match $poll {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    flow.write_blocked = true;
                    return Poll::Pending;
                }
            }
        };
    }
    flow.write_blocked = false;
    // A send the loop took over and could not finish holds this
    // direction back (back-pressure), and its error ends the pump.
    if let Err(e) = written!(dst.poll_settle(cx)) {
        return Poll::Ready(write_err(e));
    }
    loop {
        while flow.ready > 0 {
            match written!(dst.poll_send_soon(cx, &flow.buf[..flow.ready])) {
                Ok(0) => return Poll::Ready(write_err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    flow.buf.advance(n);
                    flow.ready -= n;
                }
                Err(e) => return Poll::Ready(write_err(e)),
            }
        }
        if flow.skip > 0 {
            flow.buf.advance(flow.skip);
            flow.skip = 0;
        }
        while !flow.inject.is_empty() {
            match written!(dst.poll_send_soon(cx, &flow.inject)) {
                Ok(0) => return Poll::Ready(write_err(io::ErrorKind::WriteZero.into())),
                Ok(n) => flow.inject.advance(n),
                Err(e) => return Poll::Ready(write_err(e)),
            }
        }
        let halt = match side {
            Side::Client => state.client_halt.take(),
            Side::Server => state.server_halt.take(),
        };
        if let Some(h) = halt {
            return Poll::Ready(match h {
                Halt::Idle => PumpExit::Idle,
                Halt::Terminate => PumpExit::ClientTerminate,
                Halt::Rewrite => PumpExit::Rewrite,
                Halt::Probe => PumpExit::Probe,
                Halt::Rest => PumpExit::Rest,
                Halt::ContextFailed => PumpExit::ContextFailed,
                Halt::Restore => PumpExit::Restore,
            });
        }
        // Bytes left from an earlier read (a partial header, or a frame
        // held back by a stop) are scanned before reading more.
        if !flow.buf.is_empty() {
            match scan(flow, state, &side) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Poll::Ready(frame_err(e)),
            }
        }
        if state.client_paused && matches!(side, Side::Client) {
            // Back-pressure: the server direction's progress wakes this
            // task and lifts the pause (see `budget`).
            return Poll::Pending;
        }
        match ready!(flow.poll_fill(cx, src)) {
            Ok(0) => return Poll::Ready(eof),
            Ok(_) => {}
            Err(e) => return Poll::Ready(read_err(e)),
        }
        if let Err(e) = scan(flow, state, &side) {
            return Poll::Ready(frame_err(e));
        }
    }
}

/// Scans the unscanned bytes of `flow`; true if it made something ready
/// or stopped.
fn scan(flow: &mut Flow, st: &mut TxnState, side: &Side) -> Result<bool, FrameError> {
    let Flow {
        buf,
        ready,
        skip,
        inject,
        scanner,
        ..
    } = flow;
    let unscanned = &buf[*ready..];
    let s = match side {
        Side::Client => scanner.scan(unscanned, &mut ClientSink(st))?,
        Side::Server => {
            let s = scanner.scan(
                unscanned,
                &mut ServerSink {
                    base: unscanned.as_ptr() as usize,
                    st,
                    to_client: inject,
                },
            )?;
            if !st.notify_pids.is_empty() {
                rewrite_notify_pids(&mut buf[*ready..], st);
            }
            s
        }
    };
    *ready += s.forward;
    *skip = s.skip;
    Ok(s.forward > 0 || s.stopped)
}

/// Shows the client its own pid (from BackendKeyData) in place of its
/// server connection's real one, and 0 for any other sender: no real
/// backend pid reaches a client.
fn rewrite_notify_pids(scanned: &mut [u8], st: &mut TxnState) {
    for at in st.notify_pids.drain(..) {
        if let Some(field) = scanned.get_mut(at..at + 4) {
            let pid = i32::from_be_bytes([field[0], field[1], field[2], field[3]]);
            let shown = if pid == st.backend_pid {
                st.client_pid
            } else {
                0
            };
            field.copy_from_slice(&shown.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::block_on;
    use crate::runtime::net::accepted;
    use std::io::Write;

    fn spares() -> usize {
        super::super::spare_buffers::count()
    }

    #[test]
    fn read_buffers_are_reused_only_when_plain() {
        let mut flow = Flow::new(1 << 20);
        assert_eq!(flow.buf.capacity(), 0, "no buffer before bytes arrive");
        flow.extend_from_slice(b"Q\0\0\0\x05x");
        flow.buf.advance(3);
        let at = flow.buf.as_ptr() as usize - 3;
        drop(flow);
        let mut flow = Flow::new(1 << 20);
        flow.unpark();
        assert_eq!(flow.buf.as_ptr() as usize, at, "the same allocation");
        assert!(flow.buf.is_empty());
        assert_eq!(flow.buf.capacity(), READ_CHUNK);
        // A parked flow gives its buffer back; unparking takes it again.
        let kept = spares();
        flow.park();
        assert_eq!((flow.buf.capacity(), spares()), (0, kept + 1));
        flow.unpark();
        assert_eq!(flow.buf.as_ptr() as usize, at, "from the spares");
        // A grown injection buffer goes too once empty; a small one stays.
        flow.inject.reserve(2 * INJECT_KEEP);
        flow.park();
        assert_eq!(flow.inject.capacity(), 0);
        flow.inject.reserve(64);
        flow.park();
        assert!(flow.inject.capacity() >= 64);
        flow.unpark();
        // A flow holding bytes keeps them.
        flow.buf.extend_from_slice(b"Q");
        flow.park();
        assert_eq!(&flow.buf[..], b"Q");
        flow.buf.clear();
        // A buffer grown past the usual size goes back to the allocator.
        let kept = spares();
        let mut big = flow;
        big.buf.reserve(4 * READ_CHUNK);
        drop(big);
        assert_eq!(spares(), kept);
        let mut plain = Flow::new(1 << 20);
        plain.unpark();
        drop(plain);
        assert_eq!(spares(), kept + 1, "a plain one is kept");
    }

    /// A flow waiting for its socket holds no buffer: one is taken only
    /// once bytes are there, and given back when parked.
    #[test]
    fn waiting_flows_hold_no_buffer() {
        block_on(async {
            let (mut ours, mut peer) = accepted().await;
            let mut flow = Flow::new(1 << 20);
            let waited = poll_fn(|cx| Poll::Ready(flow.poll_fill(cx, &mut ours))).await;
            assert!(waited.is_pending(), "nothing sent yet");
            assert_eq!(flow.buf.capacity(), 0, "no buffer while waiting");
            peer.write_all(b"hello").expect("write");
            let n = poll_fn(|cx| flow.poll_fill(cx, &mut ours))
                .await
                .expect("read");
            assert_eq!((n, &flow.buf[..]), (5, &b"hello"[..]));
            assert_eq!(flow.buf.capacity(), READ_CHUNK);
            flow.buf.advance(5);
            flow.park();
            assert_eq!(flow.buf.capacity(), 0, "given back at rest");
        });
    }
}
