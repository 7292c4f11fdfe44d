//! The loop's batch of sends (`runtime::batch`, which says why): the
//! loop flushes it before it waits, and drains a socket's backlog on the
//! socket's next write event.

use super::registration::{SharedStream, Slot};
use super::{READ, Reactor, WRITE};
use crate::runtime::batch::{self, SendSlot, SendState};
use std::sync::Arc;

pub(super) type Batch = batch::Batch<Slot>;

impl SendSlot for Slot {
    fn sends(&self) -> &SendState {
        &self.sends
    }

    fn failed(&self) {
        // SAFETY: the batch is flushed on the loop's thread only.
        unsafe {
            self.wake(READ);
            self.wake(WRITE);
        }
    }

    fn left_backlog(&self) {
        // The loop drains the backlog at the next write event.
        self.unmark(WRITE);
    }
}

impl Reactor {
    /// Queues `bytes` for `slot`'s socket (see `Registration::queue_send`).
    pub(super) fn queue_send(
        &mut self,
        slot: &Arc<Slot>,
        stream: &SharedStream,
        bytes: &[u8],
    ) -> bool {
        match self.sends.as_mut() {
            Some(b) => b.queue(slot, stream, bytes),
            None => false,
        }
    }

    /// Sends everything queued this turn. Runs before the loop waits, and
    /// whenever bytes must follow a socket's queued ones (a larger write,
    /// a write by another path, the socket's drop).
    pub(super) fn flush_sends(&mut self) {
        if let Some(b) = self.sends.as_mut()
            && !b.flush()
        {
            self.sends = None;
        }
    }
}

/// Sends what it can of `slot`'s backlog (the socket is writable); an
/// error is kept for the socket's next write.
pub(super) fn drain_backlog(slot: &Slot) {
    if batch::drain_backlog(&slot.sends) {
        slot.unmark(WRITE);
    }
}
