//! A session following a live reload (`crate::reload`).
//!
//! Between transactions (at each lease start, and when a reload wakes a
//! client waiting for its next request) a session whose reload
//! generation is behind looks itself up in the new snapshot: a tenant
//! whose pool was kept stays (with its new limits); one whose placement
//! changed, or whose placement's connection settings changed, moves to
//! the new pool, so its next transaction runs on connections made from
//! the new settings; a removed tenant, or one whose schema changed, is
//! ended with an error saying why (it may reconnect). A session holding
//! a server connection across transactions (session mode, a pin) cannot
//! move: if its pool was replaced or its tenant removed, it finishes its
//! transaction on the old connection and is then ended the same way.
//! The hot path pays one atomic load per lease start.

use super::Session;
use crate::catalog::TenantEntry;
use crate::pool::{PlacementPool, TenantSeat};
use crate::session::error::ClientError;
use std::sync::Arc;

/// Whom a session is for, as a reload must look it up again.
#[derive(Debug, Clone)]
pub enum Follows {
    /// A tenant's user: its tenant's placement pool.
    Tenant,
    /// A platform operator on an operators' pool. Boxed: rare, and every
    /// client's future holds this.
    Operator(Box<OperatorOn>),
}

/// An operator's session: whose, on which placement's operators' pool.
#[derive(Debug, Clone)]
pub struct OperatorOn {
    pub placement: String,
    pub operator: String,
}

/// What the new snapshot says about a session.
enum Move {
    /// Same pool: the (possibly changed) tenant entry and seat.
    Stay(Arc<TenantEntry>, TenantSeat),
    /// A new pool to lease from at the next transaction, and its
    /// placement's isolation (for the log context).
    Switch(
        Arc<TenantEntry>,
        Arc<PlacementPool>,
        TenantSeat,
        &'static str,
    ),
    /// The session cannot go on.
    End(ClientError),
}

impl Session<'_> {
    /// Between transactions (no lease held): follows a reload if one
    /// happened since the last look. `Err`: the session must end.
    pub(super) fn follow_reload(&mut self) -> Result<(), ClientError> {
        if !self.stop.reload_pending() {
            return Ok(());
        }
        self.stop.follow_reload();
        match self.where_now() {
            Move::Stay(tenant, seat) => {
                self.tenant = tenant;
                self.seat = seat;
            }
            Move::Switch(tenant, pool, seat, isolation) => {
                crate::log_context::set_placement(tenant.placement.as_str(), isolation);
                tracing::info!(
                    tenant = %tenant.id,
                    placement = %pool.name(),
                    "reload: the next transaction uses the new pool"
                );
                self.cancel.set_pool(&pool);
                self.pool = pool;
                self.tenant = tenant;
                self.seat = seat;
            }
            Move::End(e) => return Err(e),
        }
        if let Some(max) = self.tenant.max_pinned_connections {
            self.max_pins = max;
        }
        Ok(())
    }

    /// Holding a server connection across transactions (session mode or
    /// a pin): whether a reload means the session must end once its
    /// transaction does. Sets `ending` if so.
    pub(super) fn reload_ends_session(&mut self) -> bool {
        if self.ending.is_some() {
            return true;
        }
        if !self.stop.reload_pending() {
            return false;
        }
        self.stop.follow_reload();
        match self.where_now() {
            Move::Stay(tenant, _) => {
                // Same pool, same name: the seat is the same.
                self.tenant = tenant;
                false
            }
            Move::Switch(tenant, ..) => {
                self.ending = Some(Box::new(ClientError::Reconfigured(tenant.id.clone())));
                true
            }
            Move::End(e) => {
                self.ending = Some(Box::new(e));
                true
            }
        }
    }

    fn where_now(&self) -> Move {
        let snap = self.state.snapshot();
        let id = &self.tenant.id;
        if let super::Follows::Operator(on) = &self.follows {
            let OperatorOn {
                placement,
                operator,
            } = &**on;
            let pool = snap
                .placements
                .get(placement)
                .and_then(|p| p.operators.as_ref());
            return match pool {
                Some(pool) if Arc::ptr_eq(pool, &self.pool) => match pool.seat(operator) {
                    Some(seat) => Move::Stay(Arc::clone(&self.tenant), seat),
                    None => Move::End(ClientError::Reconfigured(id.clone())),
                },
                _ => Move::End(ClientError::Reconfigured(id.clone())),
            };
        }
        let Some(tenant) = snap.catalog.get(id.as_str()).cloned() else {
            return Move::End(ClientError::TenantRemoved(id.clone()));
        };
        let Some(placement) = snap.placements.get(&tenant.placement) else {
            return Move::End(ClientError::TenantRemoved(id.clone()));
        };
        let Some(seat) = placement.pool.seat(id.as_str()) else {
            return Move::End(ClientError::PlacementUnreachable(id.clone()));
        };
        // The schema is the tenant's boundary on a schema placement, and
        // the client's settings and statements were made for it.
        if tenant.search_path != self.tenant.search_path {
            return Move::End(ClientError::Reconfigured(id.clone()));
        }
        if Arc::ptr_eq(&placement.pool, &self.pool) {
            return Move::Stay(tenant, seat);
        }
        // Between a shared (rls) and a dedicated placement too: whether a
        // lease enters a tenant context and drops notifications is read
        // from the pool at each lease (`transaction.rs`), and the settings
        // and statements the client made follow it as to any new pool.
        Move::Switch(
            tenant,
            Arc::clone(&placement.pool),
            seat,
            placement.isolation.as_str(),
        )
    }
}
