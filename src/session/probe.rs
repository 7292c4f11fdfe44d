//! The session-state probe at an idle point: pin, unpin, or refuse the
//! client (`pin_policy`, `max_pinned_connections`).

use super::{Session, control, pinning, pump::Flow, txn::TxnState};
use crate::config::PinPolicy;
use crate::pool::{Lease, ServerError};
use crate::session::error::ClientError;

impl Session<'_> {
    /// At an idle point after SQL that may have created (or released)
    /// session state: one probe says what the connection holds. State
    /// pins the client to this connection (or ends the session under
    /// `pin_policy = "error"`); no state unpins it.
    pub(super) async fn check_session_state(
        &mut self,
        lease: &mut Lease,
        server_flow: &mut Flow,
        txn: &mut TxnState,
    ) -> Result<(), ClientError> {
        txn.mentions = pinning::Mentions::default();
        // The server's ReadyForQuery waits in `server_flow.buf`; the probe's
        // replies come after it on the socket, read here, not by the pump.
        server_flow.read_armed = false;
        let conn = lease.conn_mut();
        // On a shared (rls) placement no notification reaches a client.
        let shared = self.pool.context().is_some();
        let mut dropped = bytes::BytesMut::new();
        let notifications = if shared {
            &mut dropped
        } else {
            &mut server_flow.inject
        };
        let probe = control::probe(conn, notifications, self.client_pid).await;
        let kinds = match probe {
            Ok(kinds) => kinds,
            // The connection answers but the probe failed each time:
            // assume state, which is the safe side.
            Err(ServerError::Rejected { .. }) => vec!["unknown".to_string()],
            Err(e) => {
                tracing::warn!(tenant = %self.tenant.id, "session-state probe failed: {e}");
                // Not proven clean: never back to the pool as it is.
                txn.unknown = true;
                return Err(ClientError::ServerLost(self.tenant.id.clone()));
            }
        };
        if kinds.is_empty() {
            if txn.pinned {
                tracing::debug!(tenant = %self.tenant.id, "session state gone; unpinned");
            }
            txn.pinned = false;
            self.pin_guard = None;
            txn.stop_when_idle = true;
            return Ok(());
        }
        if shared && kinds.iter().any(|k| k == "LISTEN") {
            return Err(ClientError::ListenOnShared(self.tenant.id.clone()));
        }
        match self.config.pin_policy {
            PinPolicy::Error => Err(ClientError::SessionState {
                tenant: self.tenant.id.clone(),
                kinds: kinds.join(", "),
            }),
            PinPolicy::Pin => {
                if self.pin_guard.is_none() {
                    // One tenant's pins must not take its placement's pool.
                    match crate::state::CountGuard::acquire(&self.pin_slots, self.max_pins) {
                        Some(g) => self.pin_guard = Some(g),
                        None => {
                            return Err(ClientError::TooManyPins {
                                tenant: self.tenant.id.clone(),
                                max: self.max_pins,
                                kinds: kinds.join(", "),
                            });
                        }
                    }
                }
                if !txn.pinned {
                    self.pins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(tenant = %self.tenant.id, state = %kinds.join(", "), "client pinned to its server connection");
                }
                txn.pinned = true;
                txn.stop_when_idle = self.is_stopping() || self.ending.is_some();
                Ok(())
            }
        }
    }
}
