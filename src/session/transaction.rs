//! One request's lease, from checkout to release: bring the connection
//! in line with the client, pump until the transaction (or, in session
//! mode, the client) ends, then count it, learn what the server now
//! knows, and give the connection back clean or close it.
//!
//! Its future is boxed per transaction by `Session::run`, so a client
//! between transactions holds none of this state.

use super::pump::{Flow, PumpExit};
use super::txn::TxnState;
use super::{Session, recover};
use crate::config::PoolMode;
use crate::pool::Lease;
use crate::protocol::HEADER_LEN;
use crate::runtime::time::LazyTimer;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use bytes::Buf;

/// How a lease ended, for the session.
pub(super) enum Ended {
    /// The transaction is over; the client may send its next request.
    Idle,
    /// The session is over, with nothing more to tell the client.
    Closed,
}

impl Session<'_> {
    /// Serves the request waiting in the client's buffer: leases a server
    /// connection and pumps until the lease ends. An `Err` ends the
    /// session (for the caller to send to the client, if it still can).
    pub(super) async fn transaction(
        &mut self,
        client: &mut ClientConn,
        server_flow: &mut Flow,
        txn: &mut TxnState,
        timer: &mut LazyTimer,
    ) -> Result<Ended, ClientError> {
        let Some((mut lease, synced)) = self.lease(timer, &mut client.stream).await? else {
            // Boxed: rare.
            Box::pin(self.answer_canceled(client)).await?;
            return Ok(Ended::Idle);
        };
        // The runtime's clock, as the pool's: the release reuses the
        // reading that ends the lease (`count_lease`).
        let leased_at = crate::runtime::time::now();
        server_flow.reset();
        if synced {
            self.report_changes(lease.conn(), &mut server_flow.inject);
        }
        server_flow.extend_from_slice(&lease.conn().buf);
        lease.conn_mut().buf.clear();

        txn.begin();
        txn.backend_pid = lease.conn().cancel_key().pid;
        txn.client_pid = self.client_pid;
        // NOTIFY ignores row-level security: on a shared placement, no
        // notification is passed on (LISTEN is refused at the probe).
        // Per lease: a reload may move the tenant between a shared and a
        // dedicated placement between two transactions (`follow.rs`).
        let context = self.pool.context();
        txn.drop_notifications = context.is_some();
        if let Some(ctx) = context {
            self.enter_tenant(ctx, &mut lease, synced, client, txn)?;
        }
        self.cancel.arm(lease.conn().cancel_key());
        let exit = loop {
            let exit = self.pump(client, &mut lease, server_flow, txn).await;
            let result = match exit {
                // Boxed, each of these: rarer than a lease, and their
                // states in this future would make every transaction's
                // box larger (`Session::run`).
                PumpExit::Rewrite => {
                    Box::pin(self.rewrite(client, &mut lease, server_flow, txn)).await
                }
                PumpExit::Probe => {
                    Box::pin(self.check_session_state(&mut lease, server_flow, txn)).await
                }
                PumpExit::Restore => {
                    Box::pin(self.restore_settings(&mut lease, server_flow, txn)).await
                }
                PumpExit::Rest => Box::pin(self.rest(client, &mut lease, txn)).await,
                PumpExit::Backlog | PumpExit::NotReading => {
                    if !self.config.client_read_timeout.is_zero() {
                        txn.stall_deadline =
                            Some(crate::runtime::time::now() + self.config.client_read_timeout);
                    }
                    Ok(())
                }
                // Half a message holds the server connection: bound
                // it, from when this message stalled (the client is
                // being read, so no backlog deadline is running).
                PumpExit::MidMessage => {
                    if !self.config.client_message_timeout.is_zero() {
                        txn.stall_deadline =
                            Some(crate::runtime::time::now() + self.config.client_message_timeout);
                    }
                    Ok(())
                }
                other => break other,
            };
            match result {
                Ok(()) => continue,
                Err(e) => {
                    let now = self.count_lease(client, server_flow, txn, leased_at);
                    self.cancel.disarm();
                    let settled = match self.settle_wait() {
                        None => true,
                        Some(wait) => wait.await,
                    };
                    if matches!(exit, PumpExit::Probe | PumpExit::Restore) {
                        // The held-back ReadyForQuery ('I') is the next
                        // frame: the server owes nothing more.
                        server_flow.buf.advance(HEADER_LEN + 1);
                        txn.consume_held_ready();
                    }
                    if matches!(
                        e,
                        ClientError::SessionState { .. }
                            | ClientError::TooManyPins { .. }
                            | ClientError::ListenOnShared(_)
                    ) {
                        txn.pinned = true; // clean it with the reset query
                    }
                    // Recovery rolls back (or resets) and returns the
                    // connection if it can be made clean.
                    self.finish(lease, txn, server_flow, (settled, now));
                    return self.tell_client_if_possible(server_flow, e);
                }
            }
        };
        let now = self.count_lease(client, server_flow, txn, leased_at);
        if txn.settings_changed
            || txn.unknown
            || txn.defaults_reset
            || txn.statements_dropped
            || txn.saw_error
        {
            // SET/RESET/DISCARD, code the scan cannot see into, or an
            // error (a failed pgtenant.enter() of the client's own
            // clears it too): the tenant context may be gone; the next
            // lease enters it again.
            lease.conn_mut().context_of = None;
        }
        if txn.unknown || txn.defaults_reset || txn.statements_dropped {
            // DISCARD ALL / SEQUENCES (or code that may run them) takes
            // the session secret too: the next call opens a new one.
            lease.conn_mut().context_secret = None;
        }
        self.cancel.disarm();
        let settled = match self.settle_wait() {
            None => true,
            Some(wait) => wait.await,
        };
        // Statements a server accepted this lease: known placement-wide.
        let replies = &mut txn.replies;
        if txn.schema_changed {
            super::known_statements(&self.pool).forget_described();
        }
        // Describe answers are shared with every client of the
        // placement: keep none from a lease that could have changed
        // what names resolve to (DDL, settings such as search_path or
        // role, SET LOCAL included, temporary tables of a pin, code
        // the scan cannot see into).
        let name_resolution_changed = txn.schema_changed
            || txn.settings_changed
            || txn.unknown
            || txn.pinned
            || txn.mentions.state;
        if !replies.described.is_empty() && (name_resolution_changed || !self.default_search_path())
        {
            replies.described.clear();
        }
        // Most leases (simple queries, unnamed statements) have nothing
        // to teach: the two slot lookups are skipped.
        if !replies.sent_parse.is_empty() || !replies.described.is_empty() {
            let prepared = &super::conn_state(lease.conn_mut()).prepared;
            let known = super::known_statements(&self.pool);
            known.learn(&mut replies.sent_parse, &mut replies.described, |n| {
                prepared.contains(n)
            });
        }

        match exit {
            PumpExit::Idle => {
                // Settings read back are known again; anything else
                // (session-mode or pinned reset, leftover bytes) is
                // recovery's, which releases a clean connection as is.
                if std::mem::take(&mut txn.settings_changed)
                    && let Err(e) = Box::pin(self.learn_settings(&mut lease)).await
                {
                    drop(lease);
                    return Err(e);
                }
                self.finish(lease, txn, server_flow, (settled, now));
                // Between leases the server side holds no buffer.
                server_flow.reset();
                self.pin_guard = None;
                if self.is_stopping() {
                    return Err(self.stop_error());
                }
                if let Some(e) = self.ending.take() {
                    tracing::info!(tenant = %self.tenant.id, "{e}");
                    return Err(*e);
                }
            }
            PumpExit::ClientTerminate | PumpExit::ClientEof | PumpExit::ClientIo(_) => {
                self.finish(lease, txn, server_flow, (settled, now));
                return Ok(Ended::Closed);
            }
            PumpExit::ClientStalled => {
                tracing::info!(tenant = %self.tenant.id, "client did not read its results; disconnected");
                self.finish(lease, txn, server_flow, (settled, now));
                return Err(ClientError::ClientStalled(self.tenant.id.clone()));
            }
            PumpExit::MessageStalled => {
                tracing::info!(tenant = %self.tenant.id, "client did not finish a message; disconnected");
                self.finish(lease, txn, server_flow, (settled, now));
                return self.tell_client_if_possible(
                    server_flow,
                    ClientError::MessageTimeout(self.tenant.id.clone()),
                );
            }
            PumpExit::ServerEof
            | PumpExit::ServerIo(_)
            | PumpExit::ServerProtocol(_)
            | PumpExit::Rewrite
            | PumpExit::Probe
            | PumpExit::Restore
            | PumpExit::Rest
            | PumpExit::Backlog
            | PumpExit::NotReading
            | PumpExit::MidMessage => {
                tracing::warn!(tenant = %self.tenant.id, "server connection lost: {exit:?}");
                drop(lease);
                return self.tell_client_if_possible(
                    server_flow,
                    ClientError::ServerLost(self.tenant.id.clone()),
                );
            }
            PumpExit::ContextFailed => {
                tracing::warn!(
                    tenant = %self.tenant.id,
                    placement = %self.pool.name(),
                    "setting the tenant context failed: {}; the server connection is closed",
                    txn.context_failure.as_deref().unwrap_or("")
                );
                drop(lease);
                return Err(ClientError::ContextFailed(self.tenant.id.clone()));
            }
            PumpExit::Killed => {
                // Mid-transaction too: the server connection is closed,
                // never returned with the transaction's state.
                drop(lease);
                tracing::info!(tenant = %self.tenant.id, "client killed by an administrator");
                return self.tell_client_if_possible(
                    server_flow,
                    ClientError::Killed(self.tenant.id.clone()),
                );
            }
            PumpExit::ClientProtocol(e) => {
                drop(lease);
                return self
                    .tell_client_if_possible(server_flow, ClientError::Protocol(e.to_string()));
            }
        }
        Ok(Ended::Idle)
    }

    /// One lease ended: its transaction, queries and bytes go to the
    /// tenant's counters (relaxed atomics, nothing allocated). Returns
    /// the time it ended, for the release.
    fn count_lease(
        &self,
        client: &mut ClientConn,
        server_flow: &mut Flow,
        txn: &mut TxnState,
        leased_at: std::time::Instant,
    ) -> std::time::Instant {
        let now = crate::runtime::time::now();
        self.stats.transaction_done(
            u64::from(std::mem::take(&mut txn.queries)),
            client.flow.take_bytes_read(),
            server_flow.take_bytes_read(),
            now.saturating_duration_since(leased_at),
        );
        now
    }

    /// What to wait for before the server connection may go to another
    /// client as far as this client's cancels go (`CancelSlot::settle`):
    /// nothing (`None`, the common case), or a boxed wait, so that the
    /// transaction's future holds no room for it.
    #[allow(clippy::type_complexity)]
    fn settle_wait(&self) -> Option<std::pin::Pin<Box<impl Future<Output = bool> + '_>>> {
        self.cancel.settle().map(Box::pin)
    }

    /// After the client left (or, in session mode, at shutdown): give the
    /// connection back once it is clean, else close it. Anything that
    /// takes a round trip runs in the background, holding the lease, so
    /// the client's departure never waits on the server and the slot stays
    /// counted until the connection is clean or closed.
    /// `settled`: no cancel of this client's may still reach the
    /// connection (`CancelSlot::settle`); otherwise it is closed, since
    /// PostgreSQL could apply that cancel to its next lessee.
    /// `now`: when the lease ended (`count_lease`).
    fn finish(
        &self,
        lease: Lease,
        txn: &TxnState,
        server_flow: &Flow,
        (settled, now): (bool, std::time::Instant),
    ) {
        // A context call still unanswered is owed a reply recovery does
        // not count: close rather than guess (rare: the client left at once).
        if !settled || txn.context_pending > 0 {
            drop(lease);
            return;
        }
        let reset_due = self.mode == PoolMode::Session || txn.pinned;
        let mut lease = lease;
        match recover::Recovery::plan(txn, server_flow, reset_due, &self.config.server_reset_query)
        {
            None => lease.release_at(now),
            Some(recovery) => {
                // Recovery may reset the session, context and all.
                lease.conn_mut().context_of = None;
                lease.conn_mut().context_secret = None;
                recovery.spawn(lease)
            }
        }
    }

    /// An error can be written only between server messages; in the
    /// middle of one the client just sees the connection close.
    fn tell_client_if_possible(
        &self,
        server_flow: &Flow,
        err: ClientError,
    ) -> Result<Ended, ClientError> {
        if server_flow.scanner.at_boundary() {
            Err(err)
        } else {
            tracing::info!(tenant = %self.tenant.id, "closing client mid-message: {err}");
            Ok(Ended::Closed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Each transaction's future gets a box of its own (`Session::run`):
    /// rare steps (a rewrite, a probe, a sync, a wait for a connection or
    /// a cancel) are boxed apart so that it stays small, a few cache
    /// lines to touch per transaction (496 bytes measured in a release
    /// build; 2 kB before).
    #[test]
    fn a_transaction_future_is_small() {
        type S = Session<'static>;
        let f: fn(
            &'static mut S,
            &'static mut ClientConn,
            &'static mut Flow,
            &'static mut TxnState,
            &'static mut LazyTimer,
        ) -> _ = S::transaction;
        let size = output_size(f);
        println!("a transaction's future: {size} bytes");
        assert!(size <= 640, "{size} bytes");
    }
}
