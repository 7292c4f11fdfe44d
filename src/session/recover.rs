//! Making a server connection clean after its client left (or, in session
//! mode, ended): cancel what still runs, read what is still owed up to
//! ReadyForQuery, roll back, reset. The lease is held all along, so the
//! connection keeps counting against `pool_size` until it is either back
//! in the pool, clean, or closed.

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
    /// ReadyForQuery messages still owed.
    pub expected_z: u32,
    /// Extended-protocol messages were sent without a Sync.
    pub unsynced: bool,
    /// The server waits for COPY data the client will never send.
    pub copy_in: bool,
    /// Last transaction status seen.
    pub status: u8,
    /// Session mode: the reset query to run.
    pub reset: Option<String>,
    /// The departed client changed session settings (SET, RESET): the
    /// connection's settings are unknown until reset.
    pub settings_unknown: bool,
    /// DEALLOCATE ALL / DISCARD ALL ran: the statement cache is stale.
    pub statements_dropped: bool,
    /// The proxy's statements may have been dropped or replaced by the
    /// departed client: drop them all (`TxnState::statements_suspect`).
    pub statements_suspect: bool,
}

impl Recovery {
    /// What a leased connection needs before anyone else may use it, from
    /// the state its session left (`reset`: the query to run, in session
    /// mode or after a pin). `None`: nothing, it can go straight back.
    /// Runs at the end of every transaction, so the clean case is checked
    /// in place and builds nothing.
    pub fn plan(txn: &TxnState, server_flow: &Flow, reset: Option<&str>) -> Option<Recovery> {
        let leftover = &server_flow.buf[server_flow.ready..];
        let skip = server_flow.scanner.remaining();
        let clean = leftover.is_empty()
            && skip == 0
            && txn.expected_z == 0
            && !txn.unsynced
            && !txn.replies.in_copy_in()
            && txn.status == b'I'
            && reset.is_none()
            && !txn.settings_changed
            && !txn.statements_dropped
            && !txn.statements_suspect;
        (!clean).then(|| Recovery {
            leftover: BytesMut::from(leftover),
            skip,
            expected_z: txn.expected_z,
            unsynced: txn.unsynced,
            copy_in: txn.replies.in_copy_in(),
            status: txn.status,
            reset: reset.map(str::to_owned),
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
        let busy = self.expected_z > 0 || self.unsynced || self.copy_in;
        let key = conn.cancel_key();
        if busy {
            // Stop whatever runs for the departed client.
            send_cancel(&target, key).await;
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
        if self.unsynced {
            frontend::sync(&mut out);
            self.expected_z += 1;
        }
        if !out.is_empty() {
            conn.stream.write_all(&out).await?;
        }
        while self.expected_z > 0 {
            // PostgreSQL ignores a cancel that reaches the backend between
            // two statements of a pipeline (it cancels only what runs), and
            // the next one then runs on: cancel again while the replies do
            // not come. Sent one at a time, each delivered before reading
            // on, so none can reach the cleanup queries below.
            let msg = match crate::runtime::time::timeout(CANCEL_AGAIN, conn.read_message()).await {
                Ok(msg) => msg?,
                Err(_) => {
                    send_cancel(&target, key).await;
                    continue;
                }
            };
            match msg {
                backend::Message::ReadyForQuery(z) => {
                    self.expected_z -= 1;
                    self.status = z.status();
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
        if self.status != b'I' && conn.simple_query("ROLLBACK").await? != b'I' {
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
            conn.prepared.clear();
        }
        if self.settings_unknown && self.reset.is_none() {
            if conn.simple_query("RESET ALL").await? != b'I' {
                return Err(ServerError::Protocol(
                    "RESET ALL left a transaction open".into(),
                ));
            }
            conn.applied = Default::default();
        }
        if let Some(q) = self.reset {
            if conn.simple_query(&q).await? != b'I' {
                return Err(ServerError::Protocol(
                    "reset query left a transaction open".into(),
                ));
            }
            // DISCARD ALL dropped the settings and statements.
            conn.applied = Default::default();
            conn.prepared.clear();
        }
        Ok(())
    }
}
