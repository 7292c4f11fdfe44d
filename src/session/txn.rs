//! Transaction state the pump keeps while frames go by, and the two sinks
//! that keep it: ReadyForQuery messages still owed, extended-protocol
//! messages not yet synced, the last transaction status, what the session
//! must apply afterwards. In transaction mode the sinks also keep the reply
//! queue (`Replies`), which pairs every server reply with the client
//! message it answers, so that the proxy can answer some messages itself
//! (a Parse of a statement the connection already has) and hide replies to
//! messages it sent itself (a Parse it injected before a Bind).

use super::boundary::{Event, Position};
use super::pinning::{self, Mentions};
use super::replies::Replies;
use crate::protocol::{FrameSink, HEADER_LEN, Step};
use bytes::BytesMut;

/// Body prefix the client sink reads of Parse/Bind/Describe/Close to see
/// statement names (two names of up to NAMEDATALEN plus terminators).
const NAMES_PREFIX: usize = 2 * 64 + 2 + 1;

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
    /// The tenant context call that opened the lease failed (`isolation
    /// = "rls"`); its ErrorResponse waits in the buffer.
    ContextFailed,
    /// The server is about to go idle after a RESET or DISCARD ALL on a
    /// connection the client keeps (session mode, a pin): its ReadyForQuery
    /// waits in the buffer while the client's startup settings are put back.
    Restore,
}

/// Transaction state, kept by the sinks while frames go by.
#[derive(Debug)]
pub struct TxnState {
    /// What the server owes and its last transaction status (changed
    /// only through `Position::step`).
    pub position: Position,
    /// Stop the pump at the next point where the server is idle.
    pub stop_when_idle: bool,
    /// Transaction mode: named statements are handed to the session.
    pub rewrite: bool,
    /// Transaction mode: look for session-state keywords in SQL text.
    pub scan_text: bool,
    /// The client holds session state on this server connection, so it
    /// keeps it across transactions (see `pinning/mod.rs`).
    pub pinned: bool,
    /// Session-state keywords or command tags seen since the last check.
    pub mentions: Mentions,
    /// Something ran that the scan cannot see into (a FunctionCall, DO,
    /// CALL, a text longer than the scanned prefix): the connection may
    /// hold any session state, so it is reset before anyone else gets it.
    /// Kept for the whole lease (a probe does not clear it).
    pub unknown: bool,
    /// Stop at quiet points inside a transaction (idle_transaction_timeout).
    pub rest_in_transaction: bool,
    /// Stop at idle points without releasing (client_idle_timeout, session
    /// mode).
    pub rest_when_idle: bool,
    pub replies: Replies,
    /// Updated by the pump before each server scan: the client direction
    /// has nothing in flight.
    pub(super) client_at_rest: bool,
    /// Updated by the pump before each client read: the backlog towards
    /// the client is over its limit, so the client is not read (`budget`).
    pub(super) client_paused: bool,
    /// Set by the session when the client was paused: by then the client
    /// must have read its backlog (`client_read_timeout`).
    pub(super) stall_deadline: Option<std::time::Instant>,
    /// This pause was reported (`PumpExit::Backlog`).
    pub(super) backlog_reported: bool,
    /// This stall of the client's results was reported
    /// (`PumpExit::NotReading`), and the server direction's
    /// `Flow::send_progress` then.
    pub(super) not_reading_reported: bool,
    pub(super) not_reading_mark: (u64, usize, usize),
    /// The client's current partial message was reported
    /// (`PumpExit::MidMessage`).
    pub(super) mid_message_reported: bool,
    /// `Flow::progress` of the client when it was reported.
    pub(super) mid_message_mark: (usize, usize),
    /// What the last stopping scan of each direction wants reported. Kept
    /// apart: a direction reports only its own stop, once its own bytes
    /// before the stop are written.
    pub(super) client_halt: Option<Halt>,
    pub(super) server_halt: Option<Halt>,
    /// ParameterStatus messages seen since the last drain.
    pub param_changes: Vec<(String, String)>,
    /// CommandComplete of `DEALLOCATE ALL` / `DISCARD ALL` seen: the
    /// server dropped its prepared statements.
    pub statements_dropped: bool,
    /// The proxy's server-side statements on this connection may have
    /// been dropped or replaced by SQL (`DEALLOCATE name`, `PREPARE`, a
    /// "does not exist"/"already exists" error on them): recovery drops
    /// them all before anyone else uses the connection.
    pub statements_suspect: bool,
    /// A DDL command tag (CREATE, ALTER, DROP) seen: kept Describe
    /// answers of the placement may be stale (`known.rs`).
    pub schema_changed: bool,
    /// CommandComplete of `SET`, `RESET` or `DISCARD ALL` seen (or
    /// `set_config(` in the SQL): session settings may have changed.
    pub settings_changed: bool,
    /// CommandComplete of `RESET` (`RESET ALL` included) or `DISCARD ALL`
    /// seen: settings went back to the server connection's defaults, not
    /// to the client's startup values, which PostgreSQL would restore.
    pub defaults_reset: bool,
    /// Custom (dotted) setting names the client's SQL set; `pg_settings`
    /// does not list them, so the session reads them by name.
    pub custom_names: Vec<Vec<u8>>,
    /// Offsets (from the scanned bytes' start) of the pid fields of
    /// NotificationResponses just scanned, for the pump to rewrite.
    pub(super) notify_pids: Vec<usize>,
    /// The leased connection's real backend pid, and the pid its client
    /// was given: a client sees its own pid in its notifications and no
    /// real backend pid at all (others show as 0).
    pub backend_pid: i32,
    pub client_pid: i32,
    /// NotificationResponses are dropped, not passed on (a shared
    /// placement: notifications cross tenants). Set at each lease, from
    /// the pool it is on.
    pub drop_notifications: bool,
    /// Replies (each ending in ReadyForQuery) still owed to the tenant
    /// context calls that opened the lease (`isolation = "rls"`), which
    /// the server sink drops.
    pub context_pending: u8,
    /// Why that call failed, for the log.
    pub context_failure: Option<String>,
    /// A Sync of the client's went out behind those calls: PostgreSQL
    /// skips the client's messages after a failed call only up to it, so
    /// the rest waits for the calls' replies (`context_held`).
    pub context_sync_passed: bool,
    /// The server sent an ErrorResponse this lease (a failed
    /// `pgtenant.enter()` of the client's own clears the tenant context).
    pub saw_error: bool,
    /// ReadyForQuery messages passed to the client since the session
    /// last took them (queries, for the metrics).
    pub queries: u32,
    /// The last Query and Parse texts scanned (kept across leases).
    last_query: pinning::LastText,
    last_parse: pinning::LastText,
}

impl TxnState {
    /// The client's messages wait: the tenant context calls that opened
    /// the lease are unanswered and a Sync of the client's went out
    /// behind them. Were the calls to fail, PostgreSQL would skip the
    /// client's messages only up to that Sync (`pool::write_guard`); what
    /// follows it must not reach the server before the calls are known
    /// to have set the context.
    pub fn context_held(&self) -> bool {
        self.context_pending > 0 && self.context_sync_passed
    }

    /// `transaction_mode` turns on release at idle points and the scan for
    /// session state; `rewrite` the named-statement mapping. One per
    /// session, reset for each lease (`begin`), so buffers are reused.
    pub fn new(transaction_mode: bool, rewrite: bool) -> TxnState {
        TxnState {
            position: Position::default(),
            stop_when_idle: transaction_mode,
            rewrite,
            scan_text: transaction_mode,
            pinned: false,
            mentions: Mentions::default(),
            unknown: false,
            rest_in_transaction: false,
            rest_when_idle: false,
            replies: Replies::default(),
            client_at_rest: true,
            client_paused: false,
            stall_deadline: None,
            backlog_reported: false,
            not_reading_reported: false,
            not_reading_mark: (0, 0, 0),
            mid_message_reported: false,
            mid_message_mark: (0, 0),
            client_halt: None,
            server_halt: None,
            param_changes: Vec::new(),
            statements_dropped: false,
            statements_suspect: false,
            schema_changed: false,
            settings_changed: false,
            defaults_reset: false,
            custom_names: Vec::new(),
            notify_pids: Vec::new(),
            backend_pid: 0,
            client_pid: 0,
            drop_notifications: false,
            context_pending: 0,
            context_failure: None,
            context_sync_passed: false,
            saw_error: false,
            queries: 0,
            last_query: pinning::LastText::default(),
            last_parse: pinning::LastText::default(),
        }
    }

    /// Starts a new lease: nothing outstanding, nothing seen yet.
    pub fn begin(&mut self) {
        self.position = Position::default();
        self.stop_when_idle = self.scan_text;
        self.pinned = false;
        self.mentions = Mentions::default();
        self.unknown = false;
        self.replies.clear();
        self.client_at_rest = true;
        self.client_paused = false;
        self.stall_deadline = None;
        self.backlog_reported = false;
        self.not_reading_reported = false;
        self.mid_message_reported = false;
        self.client_halt = None;
        self.server_halt = None;
        self.param_changes.clear();
        self.statements_dropped = false;
        self.statements_suspect = false;
        self.schema_changed = false;
        self.settings_changed = false;
        self.defaults_reset = false;
        self.custom_names.clear();
        self.notify_pids.clear();
        self.context_pending = 0;
        self.context_failure = None;
        self.context_sync_passed = false;
        self.saw_error = false;
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

    /// At a transaction boundary with nothing owed or queued: the pump
    /// may stop here (whether the connection is clean enough for another
    /// client is `recover::Recovery::plan`'s to say).
    pub fn is_idle(&self) -> bool {
        self.position.is_idle() && self.replies.is_empty()
    }

    /// The session consumed the ReadyForQuery ('I') the server sink held
    /// back for a probe (the probe failed; the session ends).
    pub fn consume_held_ready(&mut self) {
        self.position = self.position.step(Event::Ready(b'I'));
    }

    /// A ReadyForQuery with `status` now would leave the connection idle
    /// after SQL that mentioned session state: check before letting it go.
    fn probe_due(&self, status: Option<u8>) -> bool {
        self.scan_text
            && (self.mentions.state
                || self.mentions.unknown
                || (self.pinned && self.mentions.release))
            && status == Some(b'I')
            && self.position.awaits_last_ready()
            && self.client_at_rest
    }

    /// A ReadyForQuery with `status` now would hand the client a
    /// connection it keeps (so no next lease syncs it) with settings a
    /// RESET took to the server's defaults: put the client's back first.
    fn restore_due(&self, status: Option<u8>) -> bool {
        self.defaults_reset
            && !self.stop_when_idle
            && status == Some(b'I')
            && self.position.awaits_last_ready()
            && self.client_at_rest
    }

    /// Something ran that the scan cannot see into: probe at the next
    /// idle point (`mentions`), reset before release (`unknown`).
    #[inline]
    fn note_unknown(&mut self, yes: bool) {
        if yes {
            self.mentions.unknown = true;
            self.unknown = true;
        }
    }

    /// Nothing is outstanding on the server, though a transaction may be
    /// open (status `T` or `E`): a ROLLBACK would make it idle.
    pub fn is_quiet(&self) -> bool {
        self.position.is_quiet() && self.replies.is_empty()
    }
}

/// Client → server: counts what the server will answer, queues replies,
/// and stops at messages naming prepared statements (transaction mode).
pub(super) struct ClientSink<'a>(pub(super) &'a mut TxnState);

impl FrameSink for ClientSink<'_> {
    fn body_needed(&self, tag: u8) -> usize {
        if self.0.replies.refusing() && !matches!(tag, b'S' | b'H' | b'X') {
            return crate::protocol::WHOLE_BODY; // to drop it whole
        }
        match tag {
            b'Q' | b'P' if self.0.scan_text => pinning::TEXT_PREFIX,
            b'P' | b'B' | b'D' | b'C' if self.0.rewrite => NAMES_PREFIX,
            // Describe's first byte says statement or portal, whose
            // replies differ (found by `boundary_prop`: without it a
            // portal's Describe waited for a ParameterDescription).
            b'D' => 1,
            _ => 0,
        }
    }

    fn on_frame(&mut self, tag: u8, frame: &[u8], frame_len: usize) -> Step {
        let st = &mut *self.0;
        if st.context_pending > 0 {
            if st.context_sync_passed {
                return Step::StopBefore; // held (`context_held`)
            }
            st.context_sync_passed = tag == b'S';
        }
        if st.replies.refusing() && !matches!(tag, b'S' | b'H' | b'X') {
            // The proxy refused a message of this batch: the rest up to
            // Sync is dropped, as PostgreSQL skips it after an error.
            return Step::Skip;
        }
        if st.scan_text {
            let body = &frame[HEADER_LEN..];
            let names = &mut st.custom_names;
            let m = match tag {
                b'Q' => Some(st.last_query.scan(body, names)),
                // Parse: the query text follows the statement name.
                b'P' => body
                    .iter()
                    .position(|&b| b == 0)
                    .map(|n| st.last_parse.scan(&body[n + 1..], names)),
                _ => None,
            };
            if let Some(m) = m {
                st.mentions.state |= m.state;
                st.mentions.release |= m.release;
                st.settings_changed |= m.settings || !st.custom_names.is_empty();
                // A text longer than the prefix was not searched whole.
                st.note_unknown(m.unknown || frame.len() < frame_len);
            }
            // A FunctionCall can call anything (set_config, advisory
            // locks) by OID; no text to scan.
            st.note_unknown(tag == b'F');
        }
        if st.rewrite && names_statement(tag, &frame[HEADER_LEN..], frame.len() == frame_len) {
            st.client_halt = Some(Halt::Rewrite);
            return Step::StopBefore;
        }
        match tag {
            // Query and FunctionCall each end with one ReadyForQuery, and so
            // does Sync, unless the server will skip or ignore it.
            b'Q' | b'F' if st.replies.push_client_message(tag, frame) => {
                st.position = st.position.step(Event::Request);
            }
            b'S' => {
                let answered = st.replies.push_client_message(tag, frame);
                st.position = st.position.step(Event::Sync { answered });
            }
            // Parse, Bind, Describe, Execute, Close: state lives on the
            // server until the next Sync. (Flush alone leaves none: psycopg
            // sends one after its last Sync.)
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                st.replies.push_client_message(tag, frame);
                st.position = st.position.step(Event::Extended);
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
        // `DEALLOCATE name` of a statement the proxy renamed.
        b'Q' => super::deallocate::may_be(body),
        _ => false,
    }
}

/// Server → client: watches ReadyForQuery, ParameterStatus and command
/// tags, and pairs replies with the client messages they answer.
pub(super) struct ServerSink<'a> {
    pub(super) st: &'a mut TxnState,
    /// Address of the first scanned byte (to locate frames in the buffer).
    pub(super) base: usize,
    /// The client direction's bytes to the client (proxy replies).
    pub(super) to_client: &'a mut BytesMut,
}

impl FrameSink for ServerSink<'_> {
    fn body_needed(&self, tag: u8) -> usize {
        if self.st.context_pending > 0 {
            // Dropped whole, or read for the log (the reply to a call of
            // a few bytes: small).
            return crate::protocol::WHOLE_BODY;
        }
        match tag {
            b'Z' | b'S' | b'C' => crate::protocol::WHOLE_BODY,
            // Dropped whole on a shared placement.
            b'A' if self.st.drop_notifications => crate::protocol::WHOLE_BODY,
            // NotificationResponse: the sender's pid, rewritten (`pump`).
            b'A' => 4,
            b'E' if self.st.rewrite => crate::protocol::WHOLE_BODY,
            // Dropped whole when they answer a refused message.
            b't' | b'T' | b'n' if self.st.replies.front_is_refused() => crate::protocol::WHOLE_BODY,
            // The answer to a Describe of a proxy-named statement is kept.
            b't' | b'T' | b'n' if self.st.replies.capturing_front() => crate::protocol::WHOLE_BODY,
            _ => 0,
        }
    }

    fn passes(&self, tag: u8) -> bool {
        self.st.context_pending == 0 && self.st.replies.passes(tag)
    }

    fn on_frame(&mut self, tag: u8, frame: &[u8], _frame_len: usize) -> Step {
        let st = &mut *self.st;
        let body = &frame[HEADER_LEN..];
        if st.context_pending > 0 {
            return super::context::context_reply(st, tag, body);
        }
        st.saw_error |= tag == b'E';
        match tag {
            b'S' => {
                if let Some((name, value)) = parse_parameter_status(body) {
                    // One entry per name: a client repeating SETs in one
                    // pipeline does not grow the list.
                    match st.param_changes.iter_mut().find(|(n, _)| n == name) {
                        Some(change) => change.1 = value.to_string(),
                        None => st.param_changes.push((name.to_string(), value.to_string())),
                    }
                }
                return Step::Continue;
            }
            b'N' => return Step::Continue,
            b'A' if st.drop_notifications => return Step::Skip,
            b'A' => {
                // Where its pid is, from the start of the scanned bytes.
                st.notify_pids
                    .push(frame.as_ptr() as usize - self.base + HEADER_LEN);
                return Step::Continue;
            }
            b'E' if st.rewrite
                && !st.replies.front_is_refused()
                && names_missing_or_taken(body) =>
            {
                st.statements_suspect = true;
            }
            b'C' => {
                if body.starts_with(b"DEALLOCATE ALL\0") || body.starts_with(b"DISCARD ALL\0") {
                    st.statements_dropped = true;
                }
                if body == b"SET\0" || body == b"RESET\0" || body == b"DISCARD ALL\0" {
                    st.settings_changed = true;
                    st.defaults_reset |= body != b"SET\0";
                }
                // Also takes the tenant context of an rls placement.
                st.defaults_reset |= body == b"DISCARD SEQUENCES\0";
                if st.rewrite && (body == b"DEALLOCATE\0" || body == b"PREPARE\0") {
                    st.statements_suspect = true;
                }
                if st.rewrite
                    && [&b"CREATE "[..], b"ALTER ", b"DROP "]
                        .iter()
                        .any(|p| body.starts_with(p))
                {
                    st.schema_changed = true;
                }
                if st.scan_text && pinning::state_tag(body) {
                    st.mentions.state = true;
                }
                if st.scan_text {
                    st.note_unknown(pinning::unknown_tag(body));
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
        if tag == b'Z' && st.restore_due(body.first().copied()) {
            st.server_halt = Some(Halt::Restore);
            return Step::StopBefore;
        }
        if matches!(tag, b't' | b'T' | b'n') && st.replies.capturing_front() {
            st.replies.capture(tag, frame);
        }
        if matches!(tag, b'E' | b't' | b'T' | b'n') && st.replies.front_is_refused() {
            // The proxy's own error replaces the server's.
            let verdict = st.replies.answer_refused(tag, self.to_client);
            if verdict.dropped_queries > 0 {
                st.position = st.position.step(Event::Dropped(verdict.dropped_queries));
            }
            return Step::Skip;
        }
        let verdict = st.replies.on_server_message(tag);
        if verdict.dropped_queries > 0 {
            st.position = st.position.step(Event::Dropped(verdict.dropped_queries));
        }
        if verdict.swallow {
            return Step::Skip;
        }
        if tag == b'Z' {
            st.queries = st.queries.wrapping_add(1);
            let status = body.first().copied().unwrap_or(b'E');
            st.position = st.position.step(Event::Ready(status));
            if st.stop_when_idle && st.is_idle() && st.client_at_rest {
                st.server_halt = Some(Halt::Idle);
                return Step::StopAfter;
            }
            let rest = if status == b'I' {
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

/// An ErrorResponse with SQLSTATE 26000 (statement does not exist) or
/// 42P05 (already exists): with the client's own unknown names answered
/// by the proxy, these mean the proxy's statements on the connection are
/// not what it believes.
fn names_missing_or_taken(body: &[u8]) -> bool {
    body.split(|&b| b == 0)
        .any(|f| f == b"C26000" || f == b"C42P05")
}

fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut parts = body.split(|&b| b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name, value))
}
