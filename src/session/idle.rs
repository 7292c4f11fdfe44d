//! The client between requests: waiting for its next request without a
//! server connection (answering what needs none, bounding a half-sent
//! message), and resting inside a lease while both sides are quiet.

use super::{LEASE_AFTER, Next, Session, boundary, known, txn::TxnState};
use crate::config::PoolMode;
use crate::pool::Lease;
use crate::protocol::codec;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use bytes::{Buf, BytesMut};
use futures_util::future::Either;
use std::future::{Future, poll_fn};
use std::task::Poll;

impl Session<'_> {
    /// Waits (between transactions) for the client's next request.
    /// Stray CopyData/CopyDone/CopyFail, which a server would ignore
    /// outside COPY, and Flush, which would get no reply, are dropped here
    /// without leasing anything.
    pub(super) async fn wait_for_request(
        &mut self,
        client: &mut ClientConn,
    ) -> Result<Next, ClientError> {
        let max = client.flow.scanner.max_len();
        let limited = !self.client_idle_timeout.is_zero();
        // One timer for two limits (a waiting client's future holds one
        // sleep, not two): the idle limit, and the message limit, armed
        // once a message has begun and not arrived far enough (a client
        // that sends half a message holds no server connection, and not
        // forever). The timer runs to the earlier; `timer_for` says which.
        let idle_deadline = limited.then(|| crate::runtime::time::now() + self.client_idle_timeout);
        let mut timer = std::pin::pin!(sleep_until_opt(idle_deadline));
        let mut timer_for = Limit::Idle;
        let mut message_started = false;
        let mut discard = 0usize;
        loop {
            let buf = &mut client.flow.buf;
            if message_started && buf.is_empty() {
                // The message was answered or discarded: nothing half-sent.
                message_started = false;
                timer.set(sleep_until_opt(idle_deadline));
                timer_for = Limit::Idle;
            }
            if discard > 0 {
                let n = discard.min(buf.len());
                buf.advance(n);
                discard -= n;
            }
            if discard == 0 {
                match codec::parse_header(buf, max) {
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                    Ok(Some(h)) => match h.tag {
                        b'X' => return Ok(Next::Leave),
                        // A Flush with nothing pending asks the server for
                        // nothing: leasing for it would hold a connection
                        // that no reply ever releases.
                        b'd' | b'c' | b'f' | b'H' => {
                            discard = h.len + 1;
                            continue;
                        }
                        b'P' | b'Q' | b'D' | b'C'
                            if self.max_prepared > 0 && self.mode == PoolMode::Transaction =>
                        {
                            let whole = buf.len() >= (h.len + 1).min(LEASE_AFTER);
                            match self.answer_without_server(client).await? {
                                known::Local::Answered(n) => {
                                    client.flow.buf.advance(n);
                                    continue;
                                }
                                known::Local::NeedMore(_) => {}
                                known::Local::Server if whole => return Ok(Next::Request),
                                known::Local::Server => {}
                            }
                        }
                        _ if buf.len() >= (h.len + 1).min(LEASE_AFTER) => {
                            return Ok(Next::Request);
                        }
                        _ => {}
                    },
                    Ok(None) => {}
                }
            }
            if !message_started && !client.flow.buf.is_empty() && !self.message_timeout.is_zero() {
                message_started = true;
                let message_deadline = crate::runtime::time::now() + self.message_timeout;
                if idle_deadline.is_none_or(|idle| message_deadline < idle) {
                    timer.set(sleep_until_opt(Some(message_deadline)));
                    timer_for = Limit::Message;
                }
            }
            // A client sending stray copy data without pause is read in
            // bounded gulps, since every Request returns and every wait
            // yields (see `Flow::poll_fill`).
            let read = poll_fn(|cx| {
                if self.stop.poll_changed(cx).is_ready() {
                    if self.stop.is_stopping() {
                        return Poll::Ready(Err(self.stop_error()));
                    }
                    // A reload: follow it now, holding nothing.
                    return Poll::Ready(Ok(None));
                }
                if timer.as_mut().poll(cx).is_ready() {
                    let id = self.tenant.id.clone();
                    return Poll::Ready(Err(match timer_for {
                        Limit::Idle => ClientError::ClientIdle(id),
                        Limit::Message => ClientError::MessageTimeout(id),
                    }));
                }
                let read = client.flow.poll_fill(cx, &mut client.stream);
                if read.is_pending() {
                    // Waiting with nothing buffered: an idle client holds
                    // no read buffer (one is taken when bytes arrive).
                    client.flow.park();
                }
                read.map(|r| Ok(Some(r)))
            })
            .await?;
            match read {
                None => self.follow_reload()?,
                Some(Ok(0) | Err(_)) => return Ok(Next::Leave),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Requests answered without a server connection (`known.rs`); the
    /// answer is written before anything else is read.
    async fn answer_without_server(
        &mut self,
        client: &mut ClientConn,
    ) -> Result<known::Local, ClientError> {
        if client.flow.buf.len() < self.walk_again_at {
            // The message the last walk stopped at is still not whole.
            return Ok(known::Local::NeedMore(self.walk_again_at));
        }
        let mut out = BytesMut::new();
        let use_described = self.default_search_path();
        let local = known::answer_without_server(
            &client.flow.buf,
            known::Answering {
                max: client.flow.scanner.max_len(),
                statements: &mut self.statements,
                known: &self.pool.known_statements,
                limits: &self.statement_limits,
                use_described,
            },
            &mut out,
        );
        self.walk_again_at = match local {
            known::Local::NeedMore(at) => at,
            _ => 0,
        };
        if !out.is_empty() {
            use tokio::io::AsyncWriteExt;
            // A client that does not read gets client_read_timeout, as in
            // a lease (its answers are bounded by MAX_PENDING).
            let write = client.stream.write_all(&out);
            let written = if self.client_read_timeout.is_zero() {
                write.await
            } else {
                crate::runtime::time::timeout(self.client_read_timeout, write)
                    .await
                    .map_err(|_| ClientError::ClientStalled(self.tenant.id.clone()))?
            };
            written.map_err(|e| ClientError::Protocol(format!("connection lost: {e}")))?;
        }
        Ok(local)
    }

    /// The client resolves names as every other client of its tenant
    /// does by default (it set no `search_path` of its own), so kept
    /// Describe answers apply to it. A schema tenant's default is its
    /// tenant's path; its statements, and so their kept answers, are its
    /// tenant's alone (`ClientStatements::in_namespace`).
    pub(super) fn default_search_path(&self) -> bool {
        self.wanted.iter().all(|(name, value)| {
            if name.eq_ignore_ascii_case("search_path") {
                self.tenant.search_path.as_deref() == Some(value.as_str())
            } else {
                // A role changes what "$user" in the default path means.
                !name.eq_ignore_ascii_case("role")
                    && !name.eq_ignore_ascii_case("session_authorization")
            }
        })
    }

    /// Both sides are quiet: wait for either to speak, within the idle
    /// timeout that applies (in a transaction, or idle in session mode).
    pub(super) async fn rest(
        &self,
        client: &ClientConn,
        lease: &Lease,
        txn: &TxnState,
    ) -> Result<(), ClientError> {
        let (limit, err) = if txn.position.last_status() == boundary::TxStatus::Idle {
            (
                self.client_idle_timeout,
                ClientError::ClientIdle(self.tenant.id.clone()),
            )
        } else {
            (
                self.idle_transaction_timeout,
                ClientError::IdleInTransaction(self.tenant.id.clone()),
            )
        };
        tokio::select! {
            // Whatever comes (data, EOF, a notice), the pump handles it.
            _ = client.stream.readable() => Ok(()),
            _ = lease.conn().stream.readable() => Ok(()),
            _ = self.stop.changed(), if !txn.stop_when_idle => Ok(()),
            _ = self.stop.killed() => Ok(()),
            _ = crate::runtime::time::sleep(limit) => {
                tracing::info!(tenant = %self.tenant.id, "{err}");
                Err(err)
            }
        }
    }
}

/// Which limit the waiting client's timer runs to.
#[derive(Clone, Copy)]
enum Limit {
    Idle,
    Message,
}

/// Sleeps until `deadline`, or forever without one. Not an `async fn`:
/// a waiting client's future holds it.
fn sleep_until_opt(
    deadline: Option<std::time::Instant>,
) -> Either<crate::runtime::time::Sleep, std::future::Pending<()>> {
    match deadline {
        Some(d) => Either::Left(crate::runtime::time::sleep_until(d)),
        None => Either::Right(std::future::pending()),
    }
}
