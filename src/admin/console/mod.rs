//! The admin console: database `pgtenant` on the proxy's own listener,
//! for the users of `[admin] users` (`client::admin` logs them in).
//!
//! It speaks the simple Query protocol (psql's default) and answers each
//! command with RowDescription/DataRow/CommandComplete, then
//! ReadyForQuery. Anything else a client sends is answered with an
//! ErrorResponse and the session goes on: extended-protocol messages are
//! refused up to their Sync (as PostgreSQL skips after an error), a
//! message past [`MAX_MESSAGE`] is skipped unread. Only a broken frame
//! (a length below 4) ends the session.
//!
//! Modules: `command` (parsing), `show` (the listings), `rows` (encoding).

pub mod command;
pub mod rows;
pub mod show;

use crate::client::admin::ConsoleLogin;
use crate::control::ClientInfo;
use crate::protocol::error::{Severity, write_error};
use crate::protocol::{SqlState, messages};
use crate::routing::TenantId;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use crate::state::ProxyState;
use bytes::{Buf, BytesMut};
use command::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Largest console message read; a command is a few dozen bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// How often PAUSE looks whether the running transactions finished.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// Runs an authenticated admin's console until the client leaves or the
/// proxy shuts down.
pub async fn serve(
    state: &Arc<ProxyState>,
    client: &mut ClientConn,
    login: ConsoleLogin,
    (conn, tls): (u64, Option<String>),
) -> Result<(), ClientError> {
    // Console sessions follow no reload (they lease nothing).
    let stop = state.stop.subscribe_client(
        Some(
            ClientInfo::new(
                conn,
                TenantId::new(crate::config::ADMIN_DATABASE),
                login.user.clone(),
                login.peer,
                None,
                true,
            )
            .with_tls(tls),
        ),
        state.stop.generation(),
    );
    // A key of its own, as a tenant client's: psql's Ctrl-C sends a
    // CancelRequest with it, which ends a waiting PAUSE.
    let registration = state.cancels.register();
    messages::backend_key_data(
        &mut client.out,
        registration.key.pid,
        registration.key.secret,
    );
    let console = Console {
        state,
        login: &login,
        cancel: &registration.slot,
    };
    messages::ready_for_query(&mut client.out, b'I');
    let mut skipping_to_sync = false;
    loop {
        flush(client).await?;
        let frame = tokio::select! {
            biased;
            _ = stop.stopped() => return Err(ClientError::ShuttingDown),
            f = read_frame(client) => f?,
        };
        let Some(frame) = frame else {
            return Ok(()); // the client left
        };
        match frame {
            Frame::Message(b'X', _) => return Ok(()),
            Frame::Message(b'Q', body) => {
                skipping_to_sync = false;
                console.query(&body, &mut client.out).await;
                messages::ready_for_query(&mut client.out, b'I');
            }
            Frame::Message(b'S', _) => {
                skipping_to_sync = false;
                messages::ready_for_query(&mut client.out, b'I');
            }
            // Flush, and copy data a server ignores outside COPY.
            Frame::Message(b'H' | b'd' | b'c' | b'f', _) => {}
            Frame::Message(b'P' | b'B' | b'D' | b'E' | b'C', _) => {
                if !skipping_to_sync {
                    skipping_to_sync = true;
                    error(
                        &mut client.out,
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "the admin console speaks the simple Query protocol only",
                    );
                }
            }
            Frame::Message(tag, _) => {
                error(
                    &mut client.out,
                    SqlState::PROTOCOL_VIOLATION,
                    &format!("unexpected message type 0x{tag:02x} on the admin console"),
                );
                messages::ready_for_query(&mut client.out, b'I');
            }
            Frame::TooLarge => {
                error(
                    &mut client.out,
                    SqlState::PROGRAM_LIMIT_EXCEEDED,
                    &format!("admin console messages are at most {MAX_MESSAGE} bytes"),
                );
                if !skipping_to_sync {
                    messages::ready_for_query(&mut client.out, b'I');
                }
            }
        }
    }
}

async fn flush(client: &mut ClientConn) -> Result<(), ClientError> {
    client
        .flush_out()
        .await
        .map_err(|e| ClientError::Protocol(format!("connection lost: {e}")))
}

fn error(out: &mut BytesMut, code: SqlState, message: &str) {
    write_error(out, Severity::Error, code, message, None);
}

/// One message from the client.
enum Frame {
    Message(u8, BytesMut),
    /// Over [`MAX_MESSAGE`]: skipped.
    TooLarge,
}

/// Reads the next message; `None` when the client closed. A message over
/// [`MAX_MESSAGE`] is read past in bounded chunks, never buffered.
async fn read_frame(client: &mut ClientConn) -> Result<Option<Frame>, ClientError> {
    let lost = |e: std::io::Error| ClientError::Protocol(format!("connection lost: {e}"));
    loop {
        let buf = &mut client.flow.buf;
        if buf.len() >= 5 {
            let tag = buf[0];
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if len < 4 {
                return Err(ClientError::Protocol(format!(
                    "invalid message length {len} on the admin console"
                )));
            }
            let body = len as usize - 4;
            if body > MAX_MESSAGE {
                buf.advance(5);
                let mut left = body;
                let skip = left.min(buf.len());
                buf.advance(skip);
                left -= skip;
                let mut chunk = [0u8; 8192];
                while left > 0 {
                    let want = left.min(chunk.len());
                    let n = client.stream.read(&mut chunk[..want]).await.map_err(lost)?;
                    if n == 0 {
                        return Ok(None);
                    }
                    left -= n;
                }
                return Ok(Some(Frame::TooLarge));
            }
            if buf.len() >= 5 + body {
                buf.advance(5);
                let frame = buf.split_to(body);
                return Ok(Some(Frame::Message(tag, frame)));
            }
            buf.reserve(5 + body - buf.len());
        } else {
            buf.reserve(1024);
        }
        let n = client.stream.read_buf(buf).await.map_err(lost)?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// One admin's console.
struct Console<'a> {
    state: &'a Arc<ProxyState>,
    login: &'a ConsoleLogin,
    /// This console's cancel slot: a cancel ends the PAUSE it waits in.
    cancel: &'a crate::session::cancel::CancelSlot,
}

/// A command that failed: what the admin is told.
struct Failure {
    code: SqlState,
    message: String,
}

impl Failure {
    fn new(code: SqlState, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl Console<'_> {
    /// Answers a Query message (one command).
    async fn query(&self, body: &[u8], out: &mut BytesMut) {
        let text = body.strip_suffix(&[0]).unwrap_or(body);
        let Ok(text) = std::str::from_utf8(text) else {
            error(
                out,
                SqlState::PROTOCOL_VIOLATION,
                "the query is not valid UTF-8",
            );
            return;
        };
        match command::parse(text) {
            Ok(Some(c)) => {
                if let Err(f) = self.execute(&c, out).await {
                    error(out, f.code, &f.message);
                }
            }
            Ok(None) => rows::empty_query(out),
            Err(e) => error(out, SqlState::SYNTAX_ERROR, &e.to_string()),
        }
    }

    /// Runs one command, writing its answer to `out`.
    async fn execute(&self, command: &Command, out: &mut BytesMut) -> Result<(), Failure> {
        if command.changes_state() {
            tracing::info!(
                admin = %self.login.user,
                client = %self.login.peer,
                at = %humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                command = ?command,
                "admin console command"
            );
        }
        let snap = self.state.snapshot();
        match command {
            Command::Show(what) => {
                show::listing(self.state, &snap, *what).write(out, "SHOW");
                Ok(())
            }
            Command::Pause(tenant) => {
                let tenant = self.known(&snap, tenant.as_ref())?;
                self.pause(&snap, tenant).await?;
                rows::command_complete(out, "PAUSE");
                Ok(())
            }
            Command::Resume(tenant) => {
                let tenant = self.known(&snap, tenant.as_ref())?;
                let lifted = self.state.controls.resume(tenant);
                if let Some(t) = tenant
                    && !lifted.paused
                    && !lifted.suspended
                    && snap.catalog.get(t.as_str()).is_some_and(|e| e.suspended)
                {
                    return Err(Failure::new(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        format!(
                            "tenant \"{t}\" is suspended by the config (suspended = true); \
                             change the config and reload to lift it"
                        ),
                    ));
                }
                rows::command_complete(out, "RESUME");
                Ok(())
            }
            Command::Suspend(tenant) => {
                self.known(&snap, Some(tenant))?;
                self.state.controls.suspend(tenant);
                // Its sessions finish their transaction, then close.
                let n = self.state.suspend_sessions(tenant);
                tracing::info!(tenant = %tenant, sessions = n, "tenant suspended");
                rows::command_complete(out, "SUSPEND");
                Ok(())
            }
            Command::Kill(tenant) => {
                self.known(&snap, Some(tenant))?;
                let n = self.state.kill_sessions(tenant);
                tracing::info!(tenant = %tenant, sessions = n, "tenant killed");
                rows::command_complete(out, "KILL");
                Ok(())
            }
            // The build runs on a thread of its own; this session waits.
            Command::Reload => match crate::reload::reload(self.state).await {
                Ok(summary) => {
                    crate::protocol::error::write_notice(out, &summary.to_string());
                    rows::command_complete(out, "RELOAD");
                    Ok(())
                }
                Err(e) => Err(Failure::new(SqlState::CONFIG_FILE_ERROR, e.to_string())),
            },
        }
    }

    /// `tenant` as a catalog tenant (`None`: every tenant).
    fn known<'t>(
        &self,
        snap: &crate::state::Snapshot,
        tenant: Option<&'t TenantId>,
    ) -> Result<Option<&'t TenantId>, Failure> {
        match tenant {
            Some(t) if !snap.catalog.contains(t.as_str()) => Err(Failure::new(
                SqlState::INVALID_CATALOG_NAME,
                format!("tenant \"{t}\" does not exist"),
            )),
            t => Ok(t),
        }
    }

    /// Pauses, then waits (up to `pause_timeout`, or until the admin
    /// cancels) until the tenant's (or every tenant's) server connections
    /// are all back: its running transactions have finished. The pause
    /// stays on either way.
    async fn pause(
        &self,
        snap: &crate::state::Snapshot,
        tenant: Option<&TenantId>,
    ) -> Result<(), Failure> {
        self.state.controls.pause(tenant);
        self.cancel.begin_wait();
        let waited = self.wait_paused(snap, tenant).await;
        self.cancel.end_wait();
        waited
    }

    async fn wait_paused(
        &self,
        snap: &crate::state::Snapshot,
        tenant: Option<&TenantId>,
    ) -> Result<(), Failure> {
        let deadline = crate::runtime::time::now() + snap.config.proxy.pause_timeout;
        loop {
            let running = running_transactions(snap, tenant);
            if running == 0 {
                return Ok(());
            }
            if crate::runtime::time::now() >= deadline || self.state.shutdown.is_cancelled() {
                return Err(Failure::new(
                    SqlState::QUERY_CANCELED,
                    format!(
                        "{running} server connections still in use after pause_timeout \
                         (session-mode or pinned clients keep theirs); the pause stays \
                         in effect until RESUME"
                    ),
                ));
            }
            tokio::select! {
                () = self.cancel.wait_canceled() => {
                    return Err(Failure::new(
                        SqlState::QUERY_CANCELED,
                        format!(
                            "canceled while {running} server connections were still in use; \
                             the pause stays in effect until RESUME"
                        ),
                    ));
                }
                () = crate::runtime::time::sleep(PAUSE_POLL) => {}
            }
        }
    }
}

/// Server connections held by `tenant`'s clients (or by every tenant's):
/// leased, being opened, or being cleaned after a transaction.
fn running_transactions(snap: &crate::state::Snapshot, tenant: Option<&TenantId>) -> usize {
    match tenant {
        Some(t) => snap
            .catalog
            .get(t.as_str())
            .and_then(|e| snap.placements.get(&e.placement))
            .and_then(|p| {
                p.pool
                    .seat(t.as_str())
                    .and_then(|s| p.pool.tenant_counts(s))
            })
            .map_or(0, |c| c.held),
        None => snap
            .placements
            .values()
            .map(|p| {
                let c = p.pool.counts();
                c.active + c.connecting
            })
            .sum(),
    }
}
