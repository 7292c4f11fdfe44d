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
//! While scanning, the sinks keep the transaction state the pooler needs
//! (`TxnState`): ReadyForQuery messages still owed, extended-protocol
//! messages not yet synced, the last transaction status. In transaction
//! mode they also keep the reply queue (`Replies`), which pairs every
//! server reply with the client message it answers, so that the proxy can
//! answer some messages itself (a Parse of a statement the connection
//! already has) and hide replies to messages it sent itself (a Parse it
//! injected before a Bind).
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

use super::pinning::{self, Mentions};
use super::replies::Replies;
use crate::protocol::{FrameError, FrameScanner, FrameSink, HEADER_LEN, Step};
use bytes::{Buf, BytesMut};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Read-buffer growth step; also the most a single read takes in.
pub const READ_CHUNK: usize = 16 * 1024;

/// Body prefix the client sink reads of Parse/Bind/Describe/Close to see
/// statement names (two names of up to NAMEDATALEN plus terminators).
const NAMES_PREFIX: usize = 2 * 64 + 2 + 1;

/// One direction's buffer and how much of it is scanned and ready to go.
#[derive(Debug)]
pub struct Flow {
    pub buf: BytesMut,
    /// Leading bytes of `buf` scanned and not yet written to the peer.
    pub ready: usize,
    /// Bytes of `buf` after `ready` to drop once `ready` is written.
    skip: usize,
    /// Bytes to write after `ready` that did not come from the source.
    pub inject: BytesMut,
    pub scanner: FrameScanner,
    /// This task's waker is registered with the source socket (see
    /// `poll_fill`). Anything that reads the socket other than through
    /// `poll_fill` must clear it.
    pub read_armed: bool,
}

impl Flow {
    pub fn new(max_frame: usize) -> Flow {
        Flow {
            buf: BytesMut::with_capacity(READ_CHUNK),
            ready: 0,
            skip: 0,
            inject: BytesMut::new(),
            scanner: FrameScanner::new(max_frame),
            read_armed: false,
        }
    }

    /// Nothing scanned-but-unwritten and not inside a frame.
    pub fn at_rest(&self) -> bool {
        self.ready == 0 && self.inject.is_empty() && self.scanner.at_boundary()
    }

    /// Discards state for a new server connection (server direction only).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.ready = 0;
        self.skip = 0;
        self.inject.clear();
        let max = self.scanner.max_len();
        self.scanner = FrameScanner::new(max);
        self.read_armed = false;
    }

    /// Reads what `src` has into `buf` (reserving room first).
    ///
    /// Each wake-up of a session polls every socket it waits on, though
    /// usually only one woke it, and a poll of a socket that is not ready
    /// costs tokio a lock and a waker compare. Once a poll has left this
    /// task's waker with the socket (`read_armed`), one atomic readiness
    /// load says whether polling again can find anything: an event sets
    /// readiness before it wakes the task, so nothing is missed.
    ///
    /// Must run outside tokio's cooperative budget
    /// (`tokio::task::unconstrained`): a budget refusal returns Pending
    /// without registering the waker, which would make `read_armed` a lie.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
    ) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < HEADER_LEN + 1 {
            self.buf.reserve(READ_CHUNK);
        }
        if self.read_armed
            && src
                .try_io(tokio::io::Interest::READABLE, || Ok(()))
                .is_err()
        {
            return Poll::Pending;
        }
        let read = tokio_util::io::poll_read_buf(Pin::new(src), cx, &mut self.buf);
        self.read_armed = read.is_pending();
        read
    }
}

/// Why a scan stopped, when the pump must report rather than go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// The server is idle at a transaction boundary.
    Idle,
    /// The client sent Terminate (left at the front of its buffer).
    Terminate,
    /// The client sent a message the session must rewrite (left at the
    /// front of its buffer).
    Rewrite,
    /// The server is about to go idle after SQL that may have created or
    /// released session state; its ReadyForQuery waits in the buffer.
    Probe,
    /// The server is quiet and the client has nothing in flight (an idle
    /// timeout may apply).
    Rest,
}

/// Transaction state, kept by the sinks while frames go by.
#[derive(Debug)]
pub struct TxnState {
    /// ReadyForQuery messages the server still owes the client.
    pub expected_z: u32,
    /// The client sent extended-protocol messages not yet followed by Sync.
    pub unsynced: bool,
    /// Status byte of the last ReadyForQuery (`I`, `T` or `E`).
    pub status: u8,
    /// Stop the pump at the next point where the server is idle.
    pub stop_when_idle: bool,
    /// Transaction mode: named statements are handed to the session.
    pub rewrite: bool,
    /// Transaction mode: look for session-state keywords in SQL text.
    pub scan_text: bool,
    /// The client holds session state on this server connection, so it
    /// keeps it across transactions (see `pinning.rs`).
    pub pinned: bool,
    /// Session-state keywords or command tags seen since the last check.
    pub mentions: Mentions,
    /// Stop at quiet points inside a transaction (idle_transaction_timeout).
    pub rest_in_transaction: bool,
    /// Stop at idle points without releasing (client_idle_timeout, session
    /// mode).
    pub rest_when_idle: bool,
    pub replies: Replies,
    /// Updated by the pump before each server scan: the client direction
    /// has nothing in flight.
    client_at_rest: bool,
    /// What the last stopping scan wants reported.
    /// What the last stopping scan of each direction wants reported. Kept
    /// apart: a direction reports only its own stop, once its own bytes
    /// before the stop are written.
    client_halt: Option<Halt>,
    server_halt: Option<Halt>,
    /// ParameterStatus messages seen since the last drain.
    pub param_changes: Vec<(String, String)>,
    /// CommandComplete of `DEALLOCATE ALL` / `DISCARD ALL` seen: the
    /// server dropped its prepared statements.
    pub statements_dropped: bool,
    /// CommandComplete of `SET`, `RESET` or `DISCARD ALL` seen (or
    /// `set_config(` in the SQL): session settings may have changed.
    pub settings_changed: bool,
    /// Custom (dotted) setting names the client's SQL set; `pg_settings`
    /// does not list them, so the session reads them by name.
    pub custom_names: Vec<Vec<u8>>,
}

impl TxnState {
    /// `transaction_mode` turns on release at idle points and the scan for
    /// session state; `rewrite` the named-statement mapping. One per
    /// session, reset for each lease (`begin`), so buffers are reused.
    pub fn new(transaction_mode: bool, rewrite: bool) -> TxnState {
        TxnState {
            expected_z: 0,
            unsynced: false,
            status: b'I',
            stop_when_idle: transaction_mode,
            rewrite,
            scan_text: transaction_mode,
            pinned: false,
            mentions: Mentions::default(),
            rest_in_transaction: false,
            rest_when_idle: false,
            replies: Replies::default(),
            client_at_rest: true,
            client_halt: None,
            server_halt: None,
            param_changes: Vec::new(),
            statements_dropped: false,
            settings_changed: false,
            custom_names: Vec::new(),
        }
    }

    /// Starts a new lease: nothing outstanding, nothing seen yet.
    pub fn begin(&mut self) {
        self.expected_z = 0;
        self.unsynced = false;
        self.status = b'I';
        self.stop_when_idle = self.scan_text;
        self.pinned = false;
        self.mentions = Mentions::default();
        self.replies.clear();
        self.client_at_rest = true;
        self.client_halt = None;
        self.server_halt = None;
        self.param_changes.clear();
        self.statements_dropped = false;
        self.settings_changed = false;
        self.custom_names.clear();
    }

    /// Something seen while pumping changes the session's own state
    /// (settings, statement maps, setting names): the common transaction
    /// has none, and skips applying them.
    pub fn has_session_effects(&self) -> bool {
        !self.param_changes.is_empty()
            || !self.replies.undo.is_empty()
            || !self.custom_names.is_empty()
            || self.statements_dropped
    }

    /// The server connection could serve another client as it is.
    pub fn is_idle(&self) -> bool {
        self.expected_z == 0 && !self.unsynced && self.status == b'I' && self.replies.is_empty()
    }

    /// A ReadyForQuery with `status` now would leave the connection idle
    /// after SQL that mentioned session state: check before letting it go.
    fn probe_due(&self, status: Option<u8>) -> bool {
        self.scan_text
            && (self.mentions.state || (self.pinned && self.mentions.release))
            && status == Some(b'I')
            && self.expected_z == 1
            && !self.unsynced
            && self.client_at_rest
    }

    /// Nothing is outstanding on the server, though a transaction may be
    /// open (status `T` or `E`): a ROLLBACK would make it idle.
    pub fn is_quiet(&self) -> bool {
        self.expected_z == 0 && !self.unsynced && self.replies.is_empty()
    }
}

/// Client → server: counts what the server will answer, queues replies,
/// and stops at messages naming prepared statements (transaction mode).
struct ClientSink<'a>(&'a mut TxnState);

impl FrameSink for ClientSink<'_> {
    fn body_needed(&self, tag: u8) -> usize {
        match tag {
            b'Q' | b'P' if self.0.scan_text => pinning::TEXT_PREFIX,
            b'P' | b'B' | b'D' | b'C' if self.0.rewrite => NAMES_PREFIX,
            _ => 0,
        }
    }

    fn on_frame(&mut self, tag: u8, frame: &[u8], frame_len: usize) -> Step {
        let st = &mut *self.0;
        if st.scan_text {
            let body = &frame[HEADER_LEN..];
            let text = match tag {
                b'Q' => Some(body),
                // Parse: the query text follows the statement name.
                b'P' => body.iter().position(|&b| b == 0).map(|n| &body[n + 1..]),
                _ => None,
            };
            if let Some(text) = text {
                let names = &mut st.custom_names;
                let m = pinning::scan(text, |n| names.push(n.to_vec()));
                st.mentions.state |= m.state;
                st.mentions.release |= m.release;
                st.settings_changed |= m.settings || !st.custom_names.is_empty();
            }
        }
        if st.rewrite && names_statement(tag, &frame[HEADER_LEN..], frame.len() == frame_len) {
            st.client_halt = Some(Halt::Rewrite);
            return Step::StopBefore;
        }
        match tag {
            // Query and FunctionCall each end with one ReadyForQuery.
            // Query and FunctionCall each end with one ReadyForQuery, and so
            // does Sync, unless the server will skip or ignore it.
            b'Q' | b'F' | b'S' => {
                if tag == b'S' {
                    st.unsynced = false;
                }
                if st.replies.push_client_message(tag, frame) {
                    st.expected_z += 1;
                }
            }
            // Parse, Bind, Describe, Execute, Close: state lives on the
            // server until the next Sync. (Flush alone leaves none: psycopg
            // sends one after its last Sync.)
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                st.replies.push_client_message(tag, frame);
                st.unsynced = true;
            }
            b'c' | b'f' => {
                st.replies.push_client_message(tag, frame);
            }
            // Terminate is the proxy's to handle, never the server's.
            b'X' => {
                st.client_halt = Some(Halt::Terminate);
                return Step::StopBefore;
            }
            _ => {}
        }
        Step::Continue
    }
}

/// Whether a Parse/Bind/Describe/Close names a prepared statement
/// (`body` is at least the names prefix, or the whole body).
fn names_statement(tag: u8, body: &[u8], whole: bool) -> bool {
    let first_nul = |b: &[u8]| b.iter().position(|&c| c == 0);
    match tag {
        b'P' => body.first().is_some_and(|&c| c != 0),
        b'B' => match first_nul(body) {
            Some(p) => body.get(p + 1).is_some_and(|&c| c != 0),
            // A portal name longer than the prefix: let the session look.
            None => !whole,
        },
        b'D' | b'C' => body.first() == Some(&b'S') && body.get(1).is_some_and(|&c| c != 0),
        _ => false,
    }
}

/// Server → client: watches ReadyForQuery, ParameterStatus and command
/// tags, and pairs replies with the client messages they answer.
struct ServerSink<'a> {
    st: &'a mut TxnState,
    /// The client direction's bytes to the client (proxy replies).
    to_client: &'a mut BytesMut,
}

impl FrameSink for ServerSink<'_> {
    fn body_needed(&self, tag: u8) -> usize {
        match tag {
            b'Z' | b'S' | b'C' => crate::protocol::WHOLE_BODY,
            _ => 0,
        }
    }

    fn on_frame(&mut self, tag: u8, frame: &[u8], _frame_len: usize) -> Step {
        let st = &mut *self.st;
        let body = &frame[HEADER_LEN..];
        match tag {
            b'S' => {
                if let Some((name, value)) = parse_parameter_status(body) {
                    st.param_changes.push((name.to_string(), value.to_string()));
                }
                return Step::Continue;
            }
            b'N' | b'A' => return Step::Continue,
            b'C' => {
                if body.starts_with(b"DEALLOCATE ALL\0") || body.starts_with(b"DISCARD ALL\0") {
                    st.statements_dropped = true;
                }
                if body == b"SET\0" || body == b"RESET\0" || body == b"DISCARD ALL\0" {
                    st.settings_changed = true;
                }
                if st.scan_text && pinning::state_tag(body) {
                    st.mentions.state = true;
                }
            }
            _ => {}
        }
        // The proxy's own replies that come before this message.
        if st.replies.emit_ready(self.to_client) {
            return Step::StopBefore;
        }
        if tag == b'Z' && st.probe_due(body.first().copied()) {
            st.server_halt = Some(Halt::Probe);
            return Step::StopBefore;
        }
        let verdict = st.replies.on_server_message(tag);
        st.expected_z = st.expected_z.saturating_sub(verdict.dropped_queries);
        if verdict.swallow {
            return Step::Skip;
        }
        if tag == b'Z' {
            st.status = body.first().copied().unwrap_or(b'E');
            st.expected_z = st.expected_z.saturating_sub(1);
            if st.stop_when_idle && st.is_idle() && st.client_at_rest {
                st.server_halt = Some(Halt::Idle);
                return Step::StopAfter;
            }
            let rest = if st.status == b'I' {
                st.rest_when_idle
            } else {
                st.rest_in_transaction
            };
            if rest && st.is_quiet() && st.client_at_rest {
                st.server_halt = Some(Halt::Rest);
                return Step::StopAfter;
            }
        }
        if st.replies.emit_ready(self.to_client) {
            return Step::StopAfter; // proxy replies right after this one
        }
        Step::Continue
    }
}

fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}

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
    /// Quiet on both sides (only when an idle timeout applies).
    Rest,
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

/// Reads a direction may do in one poll before it yields to the other
/// sessions of its worker (the pump runs outside tokio's cooperative
/// budget, see `pump`).
const READS_PER_POLL: u32 = 32;

/// Runs both directions until one of them has something to report.
///
/// The pump runs unconstrained by tokio's cooperative budget (see
/// `Flow::poll_fill`); fairness comes from `READS_PER_POLL`.
pub async fn pump(
    client: &mut TcpStream,
    client_flow: &mut Flow,
    server: &mut TcpStream,
    server_flow: &mut Flow,
    state: &mut TxnState,
) -> PumpExit {
    tokio::task::unconstrained(poll_fn(|cx| {
        if let Poll::Ready(exit) =
            poll_direction(cx, client, server, client_flow, state, Side::Client)
        {
            return Poll::Ready(exit);
        }
        state.client_at_rest = client_flow.at_rest();
        poll_direction(cx, server, client, server_flow, state, Side::Server)
    }))
    .await
}

/// Moves bytes from `src` to `dst` until a read or write would block
/// (Pending) or something must be reported (Ready).
fn poll_direction(
    cx: &mut Context<'_>,
    src: &mut TcpStream,
    dst: &mut TcpStream,
    flow: &mut Flow,
    state: &mut TxnState,
    side: Side,
) -> Poll<PumpExit> {
    let (read_err, write_err, eof, frame_err) = side.exits();
    let mut reads = READS_PER_POLL;
    loop {
        while flow.ready > 0 {
            match ready!(Pin::new(&mut *dst).poll_write(cx, &flow.buf[..flow.ready])) {
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
            match ready!(Pin::new(&mut *dst).poll_write(cx, &flow.inject)) {
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
            });
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
        if reads == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match ready!(flow.poll_fill(cx, src)) {
            Ok(0) => return Poll::Ready(eof),
            Ok(_) => reads -= 1,
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
        Side::Server => scanner.scan(
            unscanned,
            &mut ServerSink {
                st,
                to_client: inject,
            },
        )?,
    };
    *ready += s.forward;
    *skip = s.skip;
    Ok(s.forward > 0 || s.stopped)
}
