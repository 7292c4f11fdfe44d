//! One direction of the pump: its read buffer, how much of it is scanned
//! and ready to go, the bytes the proxy injects after that, and the read
//! that fills it (`Flow::poll_fill`). A flow holds a read buffer only
//! while bytes are in flight (`spare_buffers`).

use crate::protocol::{FrameScanner, HEADER_LEN};
use crate::runtime::stream::Transport;
use bytes::BytesMut;
use std::io;
use std::task::{Context, Poll};
/// Read-buffer growth step; also the most a single read takes in.
pub const READ_CHUNK: usize = 16 * 1024;

/// One direction's buffer and how much of it is scanned and ready to go.
#[derive(Debug)]
pub struct Flow {
    pub buf: BytesMut,
    /// Leading bytes of `buf` scanned and not yet written to the peer.
    pub ready: usize,
    /// Bytes of `buf` after `ready` to drop once `ready` is written.
    pub(super) skip: usize,
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
            // Unsent bytes need `poll_read_ready`, which sends them: the
            // peer may be waiting for them before it says anything.
            if !src.read_ready() && !src.has_unsent() {
                return Poll::Pending;
            }
            // Readiness is set (the event that set it has woken the task
            // and taken its waker), or unsent bytes wait for the socket:
            // either way the poll below must store the waker again.
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
/// Reads a flow may do without waiting before it yields to the other
/// sessions of its worker (see `Flow::poll_fill`).
const READS_IN_A_ROW: u32 = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::block_on;
    use crate::runtime::net::accepted;
    use bytes::Buf;
    use std::future::poll_fn;
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

    /// A flow armed on its socket (the client's direction, waiting for
    /// the next request) still sends what an earlier batched send left
    /// unsent: the end of a result, held back while the client read
    /// slowly, cannot wait for a request the client sends only once it
    /// has that end. (Seen hanging before the shortcut in `poll_fill`
    /// looked at `has_unsent`: CI, `client_memory`'s slow reader.)
    #[test]
    fn an_armed_flow_still_sends_the_backlog() {
        let (peer_tx, peer_rx) = std::sync::mpsc::channel::<std::net::TcpStream>();
        let (total_tx, total_rx) = std::sync::mpsc::channel::<usize>();
        let reader = std::thread::spawn(move || {
            let mut peer = peer_rx.recv().expect("peer");
            let total = total_rx.recv().expect("total");
            peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            // The writer is waiting on its flow by now.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let mut got = vec![0u8; total];
            let read = std::io::Read::read_exact(&mut peer, &mut got);
            if read.is_ok() {
                // The next request, sent only once the answer is whole.
                peer.write_all(b"R").expect("request");
            }
            read.map(|()| got)
        });
        let (sent, batched, next) = block_on(async move {
            let (mut ours, peer) = accepted().await;
            socket2::SockRef::from(&ours)
                .set_send_buffer_size(4096)
                .expect("sndbuf");
            tokio::task::yield_now().await;
            if crate::runtime::queued_sends().is_none() {
                return (Vec::new(), false, None);
            }
            peer_tx.send(peer).expect("hand over");
            let mut flow = Flow::new(1 << 20);
            // Armed: nothing to read, the waker is with the socket.
            let first = poll_fn(|cx| Poll::Ready(flow.poll_fill(cx, &mut ours))).await;
            assert!(first.is_pending() && flow.read_armed);
            // A peer that does not read yet: batched sends fill the
            // kernel's buffers until one leaves a backlog.
            let sent = crate::runtime::stream_tests::fill_until_a_write_waits(&mut ours).await;
            total_tx.send(sent.len()).expect("total");
            // Only the flow waits now, as a session between requests.
            let limit = std::time::Duration::from_secs(10);
            let next =
                crate::runtime::time::timeout(limit, poll_fn(|cx| flow.poll_fill(cx, &mut ours)))
                    .await
                    .ok()
                    .map(|r| r.expect("read"));
            (sent, true, next)
        });
        if !batched {
            return crate::runtime::stream_tests::io_uring_missing();
        }
        assert_eq!(next, Some(1), "the request after the answer never came");
        let got = reader.join().expect("reader").expect("the whole answer");
        assert!(got == sent, "the answer arrived in order");
    }
}
