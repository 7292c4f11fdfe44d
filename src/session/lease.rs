//! Leasing a server connection for a client: checkout, then the client's
//! settings on it (synced when they differ, read back after a transaction
//! that changed them), and the ParameterStatus changes that brings.

use super::pump::Flow;
use super::txn::TxnState;
use super::{Session, conn_state, params};
use crate::catalog::TenantEntry;
use crate::pool::{CheckoutError, Lease, ServerError};
use crate::runtime::stream::{Stream, sending_meanwhile};
use crate::runtime::time::LazyTimer;
use crate::session::error::ClientError;
use bytes::BytesMut;
use std::sync::Arc;

impl Session<'_> {
    /// After a transaction that ran SET, RESET or DISCARD ALL: read what
    /// the connection now has at session level, which is what this client
    /// expects from now on. A read that fails ends the session with an
    /// error (the connection is closed): the client's settings are never
    /// dropped without a word.
    pub(super) async fn learn_settings(&mut self, lease: &mut Lease) -> Result<(), ClientError> {
        let conn = lease.conn_mut();
        let mut notices = BytesMut::new();
        let context_setting = self.pool.context().and_then(|c| c.own_setting());
        match super::control::read_settings(
            conn,
            &self.custom_settings,
            context_setting,
            &mut notices,
            self.client_pid,
        )
        .await
        {
            Ok(session) => {
                self.wanted = Arc::new(params::overlay(&self.startup_settings, &session));
                conn_state(conn).applied = Arc::new(session);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant.id, "reading session settings failed: {e}");
                Err(ClientError::SettingsUnknown(self.tenant.id.clone()))
            }
        }
    }

    /// Tells the client about reported parameters whose value changed
    /// while the proxy synced a connection to its settings (ParameterStatus
    /// may arrive at any time, per the protocol).
    pub(super) fn report_changes(
        &mut self,
        conn: &crate::pool::ServerConn,
        to_client: &mut BytesMut,
    ) {
        for (name, value) in &conn.params {
            let changed = self.reported.get(name).is_some_and(|v| v != value);
            if changed {
                crate::protocol::messages::parameter_status(to_client, name, value);
                self.reported.set(name, value);
            }
        }
    }

    /// Leases a server connection and applies the client's settings;
    /// true if that took a sync (so reported values may have changed).
    /// None: the client canceled its request while it waited for one.
    /// `timer`: the session's, for the wait (`PlacementPool::checkout_with`);
    /// `client`: its unsent bytes (the end of its last result) go out
    /// while it waits.
    pub(super) async fn lease(
        &self,
        timer: &mut LazyTimer,
        client: &mut Stream,
    ) -> Result<Option<(Lease, bool)>, ClientError> {
        let context = self.pool.context().map(|_| &*self.tenant);
        let mut lease = match self.pool.try_checkout(self.seat, context) {
            Some(lease) => {
                self.stats.wait_time.observe_us(0);
                lease
            }
            // Boxed: the wait is the uncommon case, and its state would
            // otherwise be part of every transaction's future.
            None => match super::boxed_in_place(|| {
                sending_meanwhile(client, self.wait_for_checkout(timer))
            })
            .await?
            {
                Some(lease) => lease,
                None => return Ok(None),
            },
        };
        if Arc::ptr_eq(&self.wanted, &conn_state(lease.conn_mut()).applied) {
            return Ok(Some((lease, false))); // in sync: the common case
        }
        // Boxed likewise: a sync takes round trips to the server (the
        // client's unsent bytes go out meanwhile, as during the wait).
        let sync = self.sync_settings(&mut lease);
        match Box::pin(sending_meanwhile(client, sync)).await {
            Ok(synced) => Ok(Some((lease, synced))),
            Err(SyncFailure { error, clean }) => {
                if clean {
                    lease.release();
                }
                Err(error)
            }
        }
    }

    /// Waits for a server connection of the pool; a KILL ends the wait,
    /// and so does the client's cancel (None: its request is answered as
    /// canceled). Checkout is cancel-safe.
    async fn wait_for_checkout(&self, timer: &mut LazyTimer) -> Result<Option<Lease>, ClientError> {
        let asked = crate::runtime::time::now();
        self.cancel.begin_wait();
        let got = tokio::select! {
            biased;
            _ = self.stop.killed() => Err(ClientError::Killed(self.tenant.id.clone())),
            () = self.cancel.wait_canceled() => Ok(None),
            r = self.pool.checkout_with(self.seat, asked, self.config.query_wait_timeout, timer) => {
                r.map(Some).map_err(|e| checkout_error(&self.tenant, e))
            }
        };
        // A cancel that came as the lease was granted is too late, as one
        // that reaches PostgreSQL before its statement starts.
        self.cancel.end_wait();
        self.stats
            .wait_time
            .observe(crate::runtime::time::now().saturating_duration_since(asked));
        got
    }

    /// After a RESET or DISCARD ALL on a connection the client keeps
    /// (session mode, a pin), before its ReadyForQuery goes out: what was
    /// reset went to the server connection's defaults, so the client's
    /// startup values (its tenant's `search_path` among them) are put
    /// back, as PostgreSQL's RESET would have.
    pub(super) async fn restore_settings(
        &mut self,
        lease: &mut Lease,
        server_flow: &mut Flow,
        txn: &mut TxnState,
    ) -> Result<(), ClientError> {
        txn.defaults_reset = false;
        // The server's ReadyForQuery waits in `server_flow.buf`; the
        // replies to the proxy's queries come after it on the socket.
        server_flow.read_armed = false;
        if let Some(ctx) = self.pool.context() {
            // RESET ALL, DISCARD ALL or DISCARD SEQUENCES took the tenant
            // context (`pool::context`) with them: enter it again.
            self.reenter_tenant(ctx, lease).await?;
        }
        if self.startup_settings.is_empty() {
            return Ok(()); // the server's defaults are the client's
        }
        self.learn_settings(lease).await?;
        txn.settings_changed = false;
        match self.sync_settings(lease).await {
            Ok(true) => {
                self.report_changes(lease.conn(), &mut server_flow.inject);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(SyncFailure { error, .. }) => {
                // Not known any more: reset before anyone else has it.
                txn.settings_changed = true;
                Err(error)
            }
        }
    }

    /// Brings a leased connection's settings in line with the client's;
    /// true if that took a sync.
    async fn sync_settings(&self, lease: &mut Lease) -> Result<bool, SyncFailure> {
        let state = conn_state(lease.conn_mut());
        if Arc::ptr_eq(&self.wanted, &state.applied) {
            return Ok(false); // in sync: the common case
        }
        let Some(mut sql) = params::sync_sql(&self.wanted, &state.applied) else {
            // Equal but apart: share, so the next check is a pointer compare.
            state.applied = Arc::clone(&self.wanted);
            return Ok(false);
        };
        let lost = |tenant: &TenantEntry| SyncFailure {
            error: ClientError::ServerLost(tenant.id.clone()),
            clean: false,
        };
        let conn = lease.conn_mut();
        if params::needs_utf8_first(&conn.params, &sql) {
            // The server reads the sync in the connection's current
            // client_encoding; in one whose multibyte characters may end
            // in a backslash or quote byte (SJIS, BIG5, GBK, ...), an
            // escaped value could end its literal. Switch to UTF8 first,
            // in a statement of its own (a query string is lexed whole).
            if !matches!(
                conn.simple_query("SET client_encoding = 'UTF8'").await,
                Ok(b'I')
            ) {
                return Err(lost(&self.tenant));
            }
            let state = conn_state(conn);
            let mut applied = (*state.applied).clone();
            params::upsert(&mut applied, "client_encoding", "UTF8");
            state.applied = Arc::new(applied);
            match params::sync_sql(&self.wanted, &state.applied) {
                Some(s) => sql = s,
                None => {
                    state.applied = Arc::clone(&self.wanted);
                    return Ok(true);
                }
            }
        }
        match conn.simple_query(&sql).await {
            Ok(b'I') => {
                conn_state(conn).applied = Arc::clone(&self.wanted);
                Ok(true)
            }
            Ok(_) => Err(SyncFailure {
                error: ClientError::Protocol(
                    "server left a transaction open while applying settings".into(),
                ),
                clean: false,
            }),
            Err(ServerError::Rejected { code, message }) => {
                // The connection is fine; the client's settings are not.
                // The sync stopped part way, so the previous client's
                // settings may remain, `role` among them, which RESET ALL
                // keeps: reset everything.
                *conn_state(conn) = Default::default();
                conn.context_of = None;
                conn.context_secret = None;
                let reset = conn.simple_query(super::recover::FULL_RESET).await;
                Err(SyncFailure {
                    error: ClientError::Server { code, message },
                    clean: matches!(reset, Ok(b'I')),
                })
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant.id, "server failed while applying settings: {e}");
                Err(lost(&self.tenant))
            }
        }
    }
}

/// A sync that failed: what the client is told, and whether the
/// connection was left clean (reset) and may go back to the pool.
struct SyncFailure {
    error: ClientError,
    clean: bool,
}

/// Maps a failed checkout to what the client is told.
pub fn checkout_error(tenant: &TenantEntry, e: CheckoutError) -> ClientError {
    match e {
        CheckoutError::WaitTimeout => ClientError::WaitTimeout(tenant.id.clone()),
        // The pool logged why at the failed attempt; a client refused
        // while it backs off, or told the role check failed, adds nothing.
        CheckoutError::Connect(
            e @ (ServerError::Backoff(_)
            | ServerError::UnsafeRole(_)
            | ServerError::ContextUnavailable(_)),
        ) => {
            tracing::debug!(tenant = %tenant.id, "placement unreachable: {e}");
            ClientError::PlacementUnreachable(tenant.id.clone())
        }
        CheckoutError::Connect(e) => {
            tracing::warn!(tenant = %tenant.id, "placement unreachable: {e}");
            ClientError::PlacementUnreachable(tenant.id.clone())
        }
    }
}
