//! Making a server connection clean after its client left (or, in session
//! mode, ended): cancel what still runs, read what is still owed up to
//! ReadyForQuery, roll back, reset. The lease is held all along, so the
//! connection keeps counting against `pool_size` until it is either back
//! in the pool, clean, or closed.

use super::boundary::{Event, Position, TxStatus};
use super::cancel::send_cancel;
use super::pump::Flow;
use super::txn::TxnState;
use crate::pool::{Lease, ServerError};
use bytes::{Buf, BytesMut};
use postgres_protocol::message::{backend, frontend};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long recovery may take before the connection is closed instead.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long recovery waits for the departed client's replies before it
/// cancels again (`Recovery::run`).
const CANCEL_AGAIN: Duration = Duration::from_secs(1);

/// What the server still owes and what must be undone.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Server bytes read but not handled (unscanned).
    pub leftover: BytesMut,
    /// Body bytes of a half-forwarded message still to come.
    pub skip: usize,
    /// What the server still owes, and its last transaction status.
    pub position: Position,
    /// The server waits for COPY data the client will never send.
    pub copy_in: bool,
    /// The connection may carry session state (session mode, a pin, code
    /// the scan could not see into, a probe that did not run): reset it
    /// completely, then run this configured query too, if any.
    pub reset: Option<Option<String>>,
    /// The departed client changed session settings (SET, RESET) and they
    /// were not read back: the connection's settings are unknown until
    /// reset.
    pub settings_unknown: bool,
    /// DEALLOCATE ALL / DISCARD ALL ran: the statement cache is stale.
    pub statements_dropped: bool,
    /// The proxy's statements may have been dropped or replaced by the
    /// departed client: drop them all (`TxnState::statements_suspect`).
    pub statements_suspect: bool,
}

impl Recovery {
    /// What a leased connection needs before anyone else may use it, from
    /// the state its session left. `reset_due`: the session (session mode,
    /// or a pinned client) may have left state; `extra`: the configured
    /// `server_reset_query`, run after the full reset. `None`: nothing, it
    /// can go straight back. Runs at the end of every transaction, so the
    /// clean case is checked in place and builds nothing.
    pub fn plan(
        txn: &TxnState,
        server_flow: &Flow,
        reset_due: bool,
        extra: &str,
    ) -> Option<Recovery> {
        let leftover = &server_flow.buf[server_flow.ready..];
        let skip = server_flow.scanner.remaining();
        // State the proxy could not rule out: code it cannot see into, or
        // state-making SQL whose probe never ran (the client left first).
        let reset_due = reset_due || txn.unknown || txn.mentions.state;
        // The one "clean" predicate: nothing owed, nothing unread, no
        // transaction open, no session state the proxy has not ruled out.
        let clean = leftover.is_empty()
            && skip == 0
            && txn.position.is_idle()
            && !txn.replies.in_copy_in()
            && !reset_due
            && !txn.settings_changed
            && !txn.statements_dropped
            && !txn.statements_suspect;
        (!clean).then(|| Recovery {
            leftover: BytesMut::from(leftover),
            skip,
            position: txn.position,
            copy_in: txn.replies.in_copy_in(),
            reset: reset_due.then(|| {
                let extra = extra.trim();
                (!extra.is_empty() && !extra.eq_ignore_ascii_case(FULL_RESET))
                    .then(|| extra.to_owned())
            }),
            settings_unknown: txn.settings_changed,
            statements_dropped: txn.statements_dropped,
            statements_suspect: txn.statements_suspect,
        })
    }

    /// Runs in the background, as a session of this worker of its own;
    /// returns the connection to the pool if it ends clean, closes it
    /// otherwise (at once, if the worker takes no more sessions).
    pub fn spawn(self, lease: Lease) {
        let recovery = async move {
            let mut lease = lease;
            match crate::runtime::time::timeout(RECOVERY_TIMEOUT, self.run(&mut lease)).await {
                Ok(Ok(())) => lease.release(),
                Ok(Err(e)) => tracing::debug!("closing server connection: {e}"),
                Err(_) => tracing::debug!("closing server connection: recovery timed out"),
            }
        };
        if crate::runtime::spawn_local(Box::pin(recovery)).is_err() {
            tracing::debug!("closing server connection: the worker is shutting down");
        }
    }

    async fn run(mut self, lease: &mut Lease) -> Result<(), ServerError> {
        let target = lease.pool().target().clone();
        let conn = lease.conn_mut();
        let busy = !self.position.is_quiet() || self.copy_in;
        let key = conn.cancel_key();
        // Stop whatever runs for the departed client. A cancel whose
        // delivery was not confirmed could reach the backend after it is
        // back in the pool: close the connection instead.
        if busy && !send_cancel(&target, key).await {
            return Err(ServerError::Protocol("a cancel was not confirmed".into()));
        }
        // Put back unhandled bytes, then drop the rest of a message that was
        // half-forwarded to the client.
        self.leftover.extend_from_slice(&conn.buf);
        conn.buf = self.leftover;
        while self.skip > 0 {
            if conn.buf.is_empty() && conn.stream.read_buf(&mut conn.buf).await? == 0 {
                return Err(ServerError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let n = self.skip.min(conn.buf.len());
            conn.buf.advance(n);
            self.skip -= n;
        }
        let mut out = BytesMut::new();
        if self.copy_in {
            frontend::copy_fail("client disconnected", &mut out)?;
        }
        if self.position.unsynced() {
            frontend::sync(&mut out);
            self.position = self.position.step(Event::Sync { answered: true });
        }
        if !out.is_empty() {
            conn.stream.write_all(&out).await?;
        }
        while self.position.owed() > 0 {
            // PostgreSQL ignores a cancel that reaches the backend between
            // two statements of a pipeline (it cancels only what runs), and
            // the next one then runs on: cancel again while the replies do
            // not come. Sent one at a time, each delivered before reading
            // on, so none can reach the cleanup queries below.
            let msg = match crate::runtime::time::timeout(CANCEL_AGAIN, conn.read_message()).await {
                Ok(msg) => msg?,
                Err(_) => {
                    if !send_cancel(&target, key).await {
                        return Err(ServerError::Protocol("a cancel was not confirmed".into()));
                    }
                    continue;
                }
            };
            match msg {
                backend::Message::ReadyForQuery(z) => {
                    self.position = self.position.step(Event::Ready(z.status()));
                }
                backend::Message::CopyInResponse(_) => {
                    out.clear();
                    frontend::copy_fail("client disconnected", &mut out)?;
                    conn.stream.write_all(&out).await?;
                }
                backend::Message::ParameterStatus(p) => {
                    let (Ok(name), Ok(value)) = (p.name(), p.value()) else {
                        continue;
                    };
                    conn.set_param(name, value);
                }
                // What finishes after the client left still changes the
                // connection: note it so it is undone below.
                backend::Message::CommandComplete(c) => {
                    let tag = c.tag().unwrap_or_default();
                    self.settings_unknown |= matches!(tag, "SET" | "RESET" | "DISCARD ALL");
                    self.statements_dropped |= matches!(tag, "DEALLOCATE ALL" | "DISCARD ALL");
                    self.statements_suspect |= matches!(tag, "DEALLOCATE" | "PREPARE");
                }
                _ => {}
            }
        }
        if self.position.last_status() != TxStatus::Idle
            && conn.simple_query("ROLLBACK").await? != b'I'
        {
            return Err(ServerError::Protocol(
                "ROLLBACK left a transaction open".into(),
            ));
        }
        if self.statements_suspect {
            // A server-side name may now run another client's SQL.
            if conn.simple_query("DEALLOCATE ALL").await? != b'I' {
                return Err(ServerError::Protocol(
                    "DEALLOCATE ALL left a transaction open".into(),
                ));
            }
            self.statements_dropped = true;
        }
        if self.statements_dropped {
            super::conn_state(conn).prepared.clear();
        }
        if self.settings_unknown || self.reset.is_some() {
            // The client's own timeouts must not make the reset fail (a
            // failure closes the connection: safe, but a waste).
            expect_idle(conn.simple_query(NO_TIMEOUTS).await?)?;
            expect_idle(conn.simple_query(FULL_RESET).await?)?;
            // DISCARD ALL dropped the settings (role and session
            // authorization included) and the statements.
            *super::conn_state(conn) = Default::default();
        }
        if let Some(Some(q)) = self.reset {
            expect_idle(conn.simple_query(&q).await?)?;
        }
        Ok(())
    }
}

/// Drops every kind of session state PostgreSQL has: settings (RESET ALL
/// keeps `role` and `session_authorization`; this does not), prepared
/// statements, cursors, temporary objects, LISTEN, session advisory
/// locks, cached plans and sequence state. It cannot run inside a
/// transaction block, so it is a Query of its own.
pub const FULL_RESET: &str = "DISCARD ALL";

/// Sent before the full reset; DISCARD ALL resets these again.
const NO_TIMEOUTS: &str = "SET statement_timeout = 0; SET lock_timeout = 0";

fn expect_idle(status: u8) -> Result<(), ServerError> {
    if status == b'I' {
        Ok(())
    } else {
        Err(ServerError::Protocol(
            "a reset left a transaction open".into(),
        ))
    }
}
