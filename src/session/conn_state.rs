//! What the session knows of a server connection's own state, and what
//! it keeps per placement, reached through the pool's opaque slots
//! (`pool::Carried`): the pool sits below the session and names none of
//! these types.
//!
//! A new connection carries nothing, and the first access makes the
//! defaults (no settings applied, no statements prepared), exactly what a
//! fresh backend has. Clearing after a reset stays with whoever ran it
//! (`recover`, `lease`, the pump's exit).

use super::known::KnownStatements;
use super::params::Settings;
use super::prepared::PreparedSet;
use crate::pool::{PlacementPool, ServerConn};

/// The session's view of one server connection; travels with it across
/// leases (and so across clients and tenants of its placement).
#[derive(Debug, Default)]
pub struct ConnState {
    /// Session settings the proxy applied on top of the server defaults,
    /// for whichever client last used it.
    pub applied: Settings,
    /// Named statements prepared on this connection by the proxy
    /// (transaction mode), shared by every client that uses it.
    pub prepared: PreparedSet,
}

/// `conn`'s state; the defaults on its first use.
pub fn conn_state(conn: &mut ServerConn) -> &mut ConnState {
    conn.carried.get_or_default()
}

/// The statements a server of `pool`'s placement accepted (`known.rs`).
pub fn known_statements(pool: &PlacementPool) -> &KnownStatements {
    pool.carried().get_or_default()
}
