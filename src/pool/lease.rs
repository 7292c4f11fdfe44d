//! A server connection leased to a session: released clean, or closed
//! (and its slot freed) when dropped.

use super::fair::TenantSeat;
use super::placement::{PlacementPool, Pooled};
use super::server_conn::ServerConn;
use std::sync::Arc;

/// A leased server connection. [`Lease::release`] returns it clean;
/// dropping it closes the connection (the safe default for any state the
/// session could not vouch for).
pub struct Lease {
    pub(super) conn: Option<Pooled>,
    pub(super) pool: Arc<PlacementPool>,
    /// The tenant it counts against until it comes back or is closed.
    pub(super) seat: TenantSeat,
}

impl Lease {
    pub fn conn(&self) -> &ServerConn {
        // Invariant: `conn` is `Some` until `release`/`drop` consume self.
        self.conn.as_ref().expect("lease holds a connection")
    }

    pub fn conn_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("lease holds a connection")
    }

    pub fn pool(&self) -> &Arc<PlacementPool> {
        &self.pool
    }

    /// Returns a connection that is idle (ReadyForQuery 'I', nothing
    /// unread) to the pool.
    pub fn release(self) {
        self.release_at(crate::runtime::time::now());
    }

    /// `release`, with the time now (`runtime::time::now()`) that the
    /// caller read already: one clock read per transaction saved.
    pub fn release_at(mut self, now: std::time::Instant) {
        if let Some(mut c) = self.conn.take() {
            // Anything the loop still holds for the server goes out first;
            // a connection with bytes that would not go is not clean.
            if c.buf.is_empty() && c.stream.settle_for_handoff() {
                self.pool.put_back(c, self.seat, now);
            } else {
                // Unsolicited bytes after the last ReadyForQuery (say, a
                // NOTIFY): nobody else may receive them.
                drop(c);
                self.pool.forget_one(self.seat);
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.forget_one(self.seat);
        }
    }
}
