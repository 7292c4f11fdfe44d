//! The byte pump between a client and its leased server connection.
//!
//! Both directions run inside one future, each independently: a direction
//! reads into its buffer, scans the frames in place (no per-message
//! allocation, no copy), writes the complete prefix to the peer in one
//! write, and reads again only once that write is done. So each side's
//! buffer stays bounded, a slow reader slows only its own direction
//! (back-pressure reaches the sender through TCP), and neither direction
//! can deadlock the other.
//!
//! While scanning, the sinks of `txn.rs` keep the transaction state the
//! pooler needs (`TxnState`).
//!
//! Messages the pump cannot pass through as they are (named statements in
//! transaction mode) stop it; the session rewrites them into
//! `Flow::inject` and resumes. Bytes a direction must send that did not
//! come from its source (rewritten messages, the proxy's own replies) go
//! out through its `inject` buffer, in stream order after `ready`.
//!
//! Cancel safety: all state lives in the structs passed in, so dropping
//! the future (e.g. when a shutdown branch of a `select!` wins) loses
//! nothing; polling again resumes where it stopped.

pub use super::flow::{Flow, READ_CHUNK};
use super::txn::{ClientSink, Halt, ServerSink, TxnState};
use crate::protocol::FrameError;
use crate::runtime::stream::Transport;
use bytes::Buf;
use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll, ready};

/// Why the pump stopped.
#[derive(Debug)]
pub enum PumpExit {
    /// The server is idle at a transaction boundary (`stop_when_idle`).
    Idle,
    /// The client sent Terminate (left at the front of its buffer).
    ClientTerminate,
    /// The client sent a message for the session to rewrite (at the front
    /// of its buffer, possibly not yet whole).
    Rewrite,
    /// Check for session state before the final ReadyForQuery goes out.
    Probe,
    /// Put the client's startup settings back before the final
    /// ReadyForQuery goes out (after a RESET, on a connection it keeps).
    Restore,
    /// Quiet on both sides (only when an idle timeout applies).
    Rest,
    /// The tenant context call that opened the lease failed
    /// (`TxnState::context_failure` says why).
    ContextFailed,
    /// The client stopped being read: its backlog is over the limit
    /// (`budget`). Reported once per pause, after both directions ran.
    Backlog,
    /// The client takes none of the results it is sent (a result larger
    /// than the buffers between, which the server streams): the server
    /// connection is held by back-pressure. Reported once per stall, so
    /// the session can bound it (`client_read_timeout`).
    NotReading,
    /// The client did not read its backlog within `client_read_timeout`
    /// (reported by the session, never by `pump`).
    ClientStalled,
    /// Both directions wait and the client is in the middle of a message.
    /// Reported once per message, so the session can bound it.
    MidMessage,
    /// The client did not finish that message within
    /// `client_message_timeout` (reported by the session).
    MessageStalled,
    /// A KILL of the client's tenant (reported by the session).
    Killed,
    ClientEof,
    ServerEof,
    ClientIo(io::Error),
    ServerIo(io::Error),
    /// The client broke framing (oversized or negative length).
    ClientProtocol(FrameError),
    ServerProtocol(FrameError),
}

enum Side {
    Client,
    Server,
}

type IoExit = fn(io::Error) -> PumpExit;

impl Side {
    /// (read error, write error, end of stream, framing error) for a
    /// direction whose source is this side.
    fn exits(&self) -> (IoExit, IoExit, PumpExit, fn(FrameError) -> PumpExit) {
        match self {
            Side::Client => (
                PumpExit::ClientIo,
                PumpExit::ServerIo,
                PumpExit::ClientEof,
                PumpExit::ClientProtocol,
            ),
            Side::Server => (
                PumpExit::ServerIo,
                PumpExit::ClientIo,
                PumpExit::ServerEof,
                PumpExit::ServerProtocol,
            ),
        }
    }
}

/// Runs both directions until one of them has something to report.
/// `Flow::poll_fill` yields for fairness.
pub async fn pump(
    client: &mut impl Transport,
    client_flow: &mut Flow,
    server: &mut impl Transport,
    server_flow: &mut Flow,
    state: &mut TxnState,
) -> PumpExit {
    poll_fn(|cx| {
        state.client_paused =
            super::budget::over_backlog(server_flow.inject.len(), state.replies.len());
        if !state.client_paused {
            state.backlog_reported = false;
        }
        // A message that is no longer half-sent is reported afresh when
        // the next one stalls (the session re-arms its deadline while one
        // makes progress: the bound is for a client that stops).
        if state.mid_message_reported && !client_flow.mid_message() {
            state.mid_message_reported = false;
        }
        if let Poll::Ready(exit) =
            poll_direction(cx, client, server, client_flow, state, Side::Client)
        {
            return Poll::Ready(exit);
        }
        state.client_at_rest = client_flow.at_rest();
        let held = state.context_held();
        let server_direction = poll_direction(cx, server, client, server_flow, state, Side::Server);
        if held && !state.context_held() {
            // The context calls are answered: the client's messages held
            // behind its Sync may go. Poll again for them.
            cx.waker().wake_by_ref();
        }
        if state.client_paused
            && !super::budget::over_backlog(server_flow.inject.len(), state.replies.len())
        {
            // The server direction drained the backlog that paused the
            // client: it may be read again, and no socket will say so
            // (its readiness may be long set, the server may have nothing
            // more to send). Poll again.
            cx.waker().wake_by_ref();
        }
        if !server_flow.write_blocked {
            state.not_reading_reported = false;
        }
        match server_direction {
            Poll::Pending if state.client_paused && !state.backlog_reported => {
                state.backlog_reported = true;
                Poll::Ready(PumpExit::Backlog)
            }
            Poll::Pending if server_flow.write_blocked && !state.not_reading_reported => {
                state.not_reading_reported = true;
                state.not_reading_mark = server_flow.send_progress();
                Poll::Ready(PumpExit::NotReading)
            }
            Poll::Pending
                if !state.client_paused
                    && !state.mid_message_reported
                    && client_flow.mid_message() =>
            {
                state.mid_message_reported = true;
                state.mid_message_mark = client_flow.progress();
                Poll::Ready(PumpExit::MidMessage)
            }
            polled => polled,
        }
    })
    .await
}

/// Moves bytes from `src` to `dst` until a read or write would block
/// (Pending) or something must be reported (Ready).
fn poll_direction(
    cx: &mut Context<'_>,
    src: &mut impl Transport,
    dst: &mut impl Transport,
    flow: &mut Flow,
    state: &mut TxnState,
    side: Side,
) -> Poll<PumpExit> {
    let (read_err, write_err, eof, frame_err) = side.exits();
    // Pending from a write below: the destination holds this direction
    // back.
    macro_rules! written {
        ($poll:expr) => {
            match $poll {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    flow.write_blocked = true;
                    return Poll::Pending;
                }
            }
        };
    }
    flow.write_blocked = false;
    // A send the loop took over and could not finish holds this
    // direction back (back-pressure), and its error ends the pump.
    if let Err(e) = written!(dst.poll_settle(cx)) {
        return Poll::Ready(write_err(e));
    }
    loop {
        while flow.ready > 0 {
            match written!(dst.poll_send_soon(cx, &flow.buf[..flow.ready])) {
                Ok(0) => return Poll::Ready(write_err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    flow.buf.advance(n);
                    flow.ready -= n;
                }
                Err(e) => return Poll::Ready(write_err(e)),
            }
        }
        if flow.skip > 0 {
            flow.buf.advance(flow.skip);
            flow.skip = 0;
        }
        while !flow.inject.is_empty() {
            match written!(dst.poll_send_soon(cx, &flow.inject)) {
                Ok(0) => return Poll::Ready(write_err(io::ErrorKind::WriteZero.into())),
                Ok(n) => flow.inject.advance(n),
                Err(e) => return Poll::Ready(write_err(e)),
            }
        }
        let halt = match side {
            Side::Client => state.client_halt.take(),
            Side::Server => state.server_halt.take(),
        };
        if let Some(h) = halt {
            return Poll::Ready(match h {
                Halt::Idle => PumpExit::Idle,
                Halt::Terminate => PumpExit::ClientTerminate,
                Halt::Rewrite => PumpExit::Rewrite,
                Halt::Probe => PumpExit::Probe,
                Halt::Rest => PumpExit::Rest,
                Halt::ContextFailed => PumpExit::ContextFailed,
                Halt::Restore => PumpExit::Restore,
            });
        }
        if matches!(side, Side::Client) && state.context_held() {
            // Until the context calls are answered (`TxnState::
            // context_held`); the server direction's progress wakes this
            // task.
            return Poll::Pending;
        }
        // Bytes left from an earlier read (a partial header, or a frame
        // held back by a stop) are scanned before reading more.
        if !flow.buf.is_empty() {
            match scan(flow, state, &side) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Poll::Ready(frame_err(e)),
            }
        }
        if state.client_paused && matches!(side, Side::Client) {
            // Back-pressure: the server direction's progress wakes this
            // task and lifts the pause (see `budget`).
            return Poll::Pending;
        }
        match ready!(flow.poll_fill(cx, src)) {
            Ok(0) => return Poll::Ready(eof),
            Ok(_) => {}
            Err(e) => return Poll::Ready(read_err(e)),
        }
        if let Err(e) = scan(flow, state, &side) {
            return Poll::Ready(frame_err(e));
        }
    }
}

/// Scans the unscanned bytes of `flow`; true if it made something ready
/// or stopped.
fn scan(flow: &mut Flow, st: &mut TxnState, side: &Side) -> Result<bool, FrameError> {
    let Flow {
        buf,
        ready,
        skip,
        inject,
        scanner,
        ..
    } = flow;
    let unscanned = &buf[*ready..];
    let s = match side {
        Side::Client => scanner.scan(unscanned, &mut ClientSink(st))?,
        Side::Server => {
            let s = scanner.scan(
                unscanned,
                &mut ServerSink {
                    base: unscanned.as_ptr() as usize,
                    st,
                    to_client: inject,
                },
            )?;
            if !st.notify_pids.is_empty() {
                rewrite_notify_pids(&mut buf[*ready..], st);
            }
            s
        }
    };
    *ready += s.forward;
    *skip = s.skip;
    Ok(s.forward > 0 || s.stopped)
}

/// Shows the client its own pid (from BackendKeyData) in place of its
/// server connection's real one, and 0 for any other sender: no real
/// backend pid reaches a client.
fn rewrite_notify_pids(scanned: &mut [u8], st: &mut TxnState) {
    for at in st.notify_pids.drain(..) {
        if let Some(field) = scanned.get_mut(at..at + 4) {
            let pid = i32::from_be_bytes([field[0], field[1], field[2], field[3]]);
            let shown = if pid == st.backend_pid {
                st.client_pid
            } else {
                0
            };
            field.copy_from_slice(&shown.to_be_bytes());
        }
    }
}
