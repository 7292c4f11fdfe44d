//! The client between requests: waiting for its next request without a
//! server connection (answering what needs none, bounding a half-sent
//! message), and resting inside a lease while both sides are quiet.

use super::{LEASE_AFTER, Next, Session, SkipRequest, boundary, known, txn::TxnState};
use crate::config::PoolMode;
use crate::pool::Lease;
use crate::protocol::codec;
use crate::runtime::time::LazyTimer;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use bytes::{Buf, BytesMut};
use std::future::poll_fn;
use std::task::Poll;

impl Session<'_> {
    /// Waits (between transactions) for the client's next request.
    /// Stray CopyData/CopyDone/CopyFail, which a server would ignore
    /// outside COPY, and Flush, which would get no reply, are dropped here
    /// without leasing anything.
    ///
    /// `timer` is the session's, reused from one wait to the next: a
    /// client waiting with no limit armed (no `client_idle_timeout`,
    /// nothing half-sent) holds no timer at all.
    pub(super) async fn wait_for_request(
        &mut self,
        client: &mut ClientConn,
        timer: &mut LazyTimer,
    ) -> Result<Next, ClientError> {
        let max = client.flow.scanner.max_len();
        let limited = !self.config.client_idle_timeout.is_zero();
        // One timer for two limits: the idle limit, and the message
        // limit, armed once a message has begun and not arrived far
        // enough (a client that sends half a message holds no server
        // connection, and not forever). The timer runs to the earlier;
        // `timer_for` says which.
        let idle_deadline =
            limited.then(|| crate::runtime::time::now() + self.config.client_idle_timeout);
        timer.set(idle_deadline);
        let mut timer_for = Limit::Idle;
        let mut message_started = false;
        let mut discard = 0usize;
        loop {
            let buf = &mut client.flow.buf;
            if message_started && buf.is_empty() {
                // The message was answered or discarded: nothing half-sent.
                message_started = false;
                timer.set(idle_deadline);
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
                        // The rest of a request canceled while it waited
                        // (`answer_canceled`): dropped, and its Sync
                        // answered.
                        _ if self.skip_request.is_some() => {
                            discard = h.len + 1;
                            let skip = self.skip_request;
                            if skip == Some(SkipRequest::Message) || h.tag == b'S' {
                                self.skip_request = None;
                                if skip == Some(SkipRequest::UntilSync) {
                                    let mut ready = BytesMut::new();
                                    crate::protocol::messages::ready_for_query(&mut ready, b'I');
                                    Box::pin(self.write_unsent(client, &ready)).await?;
                                }
                            }
                            continue;
                        }
                        // A Flush with nothing pending asks the server for
                        // nothing: leasing for it would hold a connection
                        // that no reply ever releases.
                        b'd' | b'c' | b'f' | b'H' => {
                            discard = h.len + 1;
                            continue;
                        }
                        b'P' | b'Q' | b'D' | b'C'
                            if self.config.max_prepared_statements > 0
                                && self.mode == PoolMode::Transaction =>
                        {
                            let whole = buf.len() >= (h.len + 1).min(LEASE_AFTER);
                            let (local, mut out) = self.answer_without_server(client)?;
                            if !out.is_empty() {
                                // What the socket takes at once (nearly
                                // always all), with this task's waker: a
                                // send the batch leaves unfinished wakes it.
                                let sent =
                                    poll_fn(|cx| Poll::Ready(try_write(client, &out, cx.waker())))
                                        .await
                                        .map_err(lost)?;
                                out.advance(sent);
                            }
                            if !out.is_empty() {
                                // Boxed: rare, and a waiting client's
                                // future need hold no room for it.
                                Box::pin(self.write_unsent(client, &out)).await?;
                            }
                            match local {
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
            if !message_started
                && !client.flow.buf.is_empty()
                && !self.config.client_message_timeout.is_zero()
            {
                message_started = true;
                let message_deadline =
                    crate::runtime::time::now() + self.config.client_message_timeout;
                if idle_deadline.is_none_or(|idle| message_deadline < idle) {
                    timer.set(Some(message_deadline));
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
                if timer.poll_fired(cx).is_ready() {
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

    /// The client canceled its request while it waited for a server
    /// connection: answered as PostgreSQL answers a canceled statement,
    /// and never sent to a server. A Query or FunctionCall gets its error
    /// and ReadyForQuery now; an extended-protocol batch gets its error
    /// now and its ReadyForQuery at its Sync. What is left of the request
    /// is dropped as it arrives (`wait_for_request`).
    pub(super) async fn answer_canceled(
        &mut self,
        client: &mut ClientConn,
    ) -> Result<(), ClientError> {
        use crate::protocol::error::write_error;
        use crate::protocol::{Severity, SqlState};
        let simple = matches!(client.flow.buf.first(), Some(b'Q' | b'F'));
        let mut out = BytesMut::new();
        let message = format!(
            "canceling statement of tenant \"{}\" due to user request (it was waiting for a server connection)",
            self.tenant.id
        );
        write_error(
            &mut out,
            Severity::Error,
            SqlState::QUERY_CANCELED,
            &message,
            None,
        );
        if simple {
            crate::protocol::messages::ready_for_query(&mut out, b'I');
        }
        self.skip_request = Some(if simple {
            SkipRequest::Message
        } else {
            SkipRequest::UntilSync
        });
        tracing::info!(tenant = %self.tenant.id, "a request was canceled while it waited for a server connection");
        self.write_unsent(client, &out).await
    }

    /// Requests answered without a server connection (`known.rs`): what
    /// the walk found, and the answer to write before anything else is
    /// read (the caller writes it).
    fn answer_without_server(
        &mut self,
        client: &mut ClientConn,
    ) -> Result<(known::Local, BytesMut), ClientError> {
        if client.flow.buf.len() < self.walk_again_at {
            // The message the last walk stopped at is still not whole.
            return Ok((known::Local::NeedMore(self.walk_again_at), BytesMut::new()));
        }
        let query = client.flow.buf.first() == Some(&b'Q');
        if query && self.statements.is_empty() {
            // A Query is answered here only when it deallocates one of
            // the client's named statements, and it has none.
            self.walk_again_at = 0;
            return Ok((known::Local::Server, BytesMut::new()));
        }
        let mut out = BytesMut::new();
        // Kept Describe answers serve batches only, never a Query.
        let use_described = !query && self.default_search_path();
        let local = known::answer_without_server(
            &client.flow.buf,
            known::Answering {
                max: client.flow.scanner.max_len(),
                statements: &mut self.statements,
                known: super::known_statements(&self.pool),
                limits: &self.statement_limits,
                use_described,
            },
            &mut out,
        );
        self.walk_again_at = match local {
            known::Local::NeedMore(at) => at,
            _ => 0,
        };
        Ok((local, out))
    }

    /// The rest of a local answer, once the client's socket takes it.
    async fn write_unsent(
        &self,
        client: &mut ClientConn,
        unsent: &[u8],
    ) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt;
        // A client that does not read gets client_read_timeout, as in a
        // lease (its answers are bounded by MAX_PENDING).
        let write = client.stream.write_all(unsent);
        let limit = self.config.client_read_timeout;
        let written = if limit.is_zero() {
            write.await
        } else {
            crate::runtime::time::timeout(limit, write)
                .await
                .map_err(|_| ClientError::ClientStalled(self.tenant.id.clone()))?
        };
        written.map_err(lost)
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
        client: &mut ClientConn,
        lease: &mut Lease,
        txn: &TxnState,
    ) -> Result<(), ClientError> {
        let (limit, err) = if txn.position.last_status() == boundary::TxStatus::Idle {
            (
                self.config.client_idle_timeout,
                ClientError::ClientIdle(self.tenant.id.clone()),
            )
        } else {
            (
                self.config.idle_transaction_timeout,
                ClientError::IdleInTransaction(self.tenant.id.clone()),
            )
        };
        tokio::select! {
            // Whatever comes (data, EOF, a notice), the pump handles it.
            _ = client.stream.readable() => Ok(()),
            _ = lease.conn_mut().stream.readable() => Ok(()),
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

/// Writes what the client's socket takes of `out` without waiting: the
/// bytes written. `waker` is the session task's, never a no-op one: a
/// small write goes to the worker's batch, and if the batch's send
/// leaves bytes over (the client reads slowly) that waker is the only
/// thing that brings the session back to send them.
fn try_write(
    client: &mut ClientConn,
    out: &[u8],
    waker: &std::task::Waker,
) -> std::io::Result<usize> {
    use tokio::io::AsyncWrite;
    let mut cx = std::task::Context::from_waker(waker);
    let mut sent = 0;
    while sent < out.len() {
        match std::pin::Pin::new(&mut client.stream).poll_write(&mut cx, &out[sent..]) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => sent += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(sent)
}

fn lost(e: std::io::Error) -> ClientError {
    ClientError::Protocol(format!("connection lost: {e}"))
}
