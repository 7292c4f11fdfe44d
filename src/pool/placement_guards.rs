//! Guards that undo a checkout step when its future is dropped midway:
//! a reserved slot freed, a waiter removed (and anything already handed
//! to it given back).

use super::{Grant, PlacementPool, TenantSeat};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Frees a reserved slot if opening the connection is dropped midway.
pub(super) struct SlotGuard<'a> {
    pub(super) pool: &'a PlacementPool,
    pub(super) seat: TenantSeat,
    pub(super) armed: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.slot_abandoned(self.seat);
        }
    }
}

/// Removes a waiter that gave up, and returns anything already handed to
/// it.
pub(super) struct WaitGuard<'a> {
    pub(super) pool: &'a Arc<PlacementPool>,
    pub(super) seat: TenantSeat,
    pub(super) id: u64,
    pub(super) rx: Option<oneshot::Receiver<Grant>>,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        if self.pool.lock().tenants.remove(self.seat, self.id) {
            return;
        }
        // Already handed something: give it back.
        rx.close();
        match rx.try_recv() {
            Ok(Grant::Conn(c)) => self
                .pool
                .put_back(c, self.seat, crate::runtime::time::now()),
            Ok(Grant::Slot) => self.pool.slot_abandoned(self.seat),
            Ok(Grant::Down(_)) | Err(_) => {}
        }
    }
}
