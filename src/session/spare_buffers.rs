//! The worker's spare read buffers: a flow takes one only when its
//! socket has bytes and gives it back at rest, so an idle client holds
//! none.

use super::pump::READ_CHUNK;
use bytes::BytesMut;
use std::cell::RefCell;

/// Read buffers kept for reuse per thread, at most this many (1 MB).
const SPARE_MAX: usize = 64;

thread_local! {
    /// Read buffers of flows at rest or ended on this thread, for the
    /// next flow that has bytes to read. A flow holds a buffer only while
    /// it has bytes in flight, so an idle client holds none; taking one
    /// here and giving it back costs a pop and a push, where a malloc and
    /// free of 16 kB cost glibc a tenth of a short-lived connection's
    /// instructions (unsorted bins, coalescing).
    static SPARE_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer from this thread's spares, or a new one.
pub(super) fn take() -> BytesMut {
    SPARE_BUFFERS
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

/// Keeps `buf` (emptied) for the next flow if it is a plain read buffer
/// of the usual size that nothing else shares; otherwise frees it.
pub(super) fn give_back(mut buf: BytesMut) {
    buf.clear();
    // Also rewinds to the front of the allocation.
    if buf.try_reclaim(READ_CHUNK) && buf.capacity() == READ_CHUNK {
        let _ = SPARE_BUFFERS.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_MAX {
                spare.push(buf);
            }
        });
    }
}

/// Spare buffers this thread holds now.
#[cfg(test)]
pub(super) fn count() -> usize {
    SPARE_BUFFERS.with_borrow(Vec::len)
}
