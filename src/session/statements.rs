//! Rewrites a client's named-statement messages for the server connection
//! it currently holds (transaction mode): Parse, Bind, Describe and Close
//! of a named statement. See `prepared.rs` for the naming and `replies.rs`
//! for how replies are paired.

use super::deallocate::{self, Target};
use super::prepared::{self, PreparedSet, Statement};
use super::pump::Flow;
use super::replies::{Mode, Replies, Reply, Undo};
use crate::protocol::error::write_error;
use crate::protocol::{HEADER_LEN, Severity, SqlState, codec};
use crate::runtime::stream::Stream;
use crate::session::error::ClientError;
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::Arc;

/// A client's named statements, by the name the client gave them, and
/// the bytes of their names and definitions together (kept as they
/// change, so the per-client limit costs nothing per Parse).
#[derive(Debug, Default)]
pub struct ClientStatements {
    map: HashMap<Vec<u8>, Arc<Statement>>,
    bytes: usize,
    /// What the server-side names are kept apart by (`prepared::server_name`).
    namespace: Option<Arc<str>>,
}

impl ClientStatements {
    /// Statements whose server-side names are kept apart from those of
    /// other namespaces: a schema tenant's `search_path`, so that the same
    /// text is a statement of its own for every schema (PostgreSQL would
    /// re-plan a shared one at each switch, and refuse it where the
    /// tenants' tables differ in shape: "cached plan must not change
    /// result type").
    pub fn in_namespace(namespace: Option<Arc<str>>) -> ClientStatements {
        ClientStatements {
            namespace,
            ..Default::default()
        }
    }

    /// The server-side name of `definition` for this client.
    pub fn server_name(&self, definition: &[u8]) -> prepared::ServerName {
        prepared::server_name_in(self.namespace.as_deref(), definition)
    }

    pub fn insert(&mut self, name: Vec<u8>, stmt: Arc<Statement>) -> Option<Arc<Statement>> {
        let name_len = name.len();
        self.bytes += name_len + stmt.definition.len();
        let old = self.map.insert(name, stmt);
        if let Some(o) = &old {
            self.bytes -= name_len + o.definition.len();
        }
        old
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let old = self.map.remove(name);
        if let Some(o) = &old {
            self.bytes -= name.len() + o.definition.len();
        }
        old
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.map.get(name)
    }

    pub fn contains_key(&self, name: &[u8]) -> bool {
        self.map.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// Bytes of all definitions held.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }
}

/// A client may hold this many named statements; past it the connection
/// is refused rather than letting one client grow the proxy without bound.
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;

/// What the handler may change.
pub struct Rewriter<'a> {
    pub statements: &'a mut ClientStatements,
    pub prepared: &'a mut PreparedSet,
    pub cache_size: usize,
    pub replies: &'a mut Replies,
    /// Bytes for the server, in order after what was already forwarded.
    pub to_server: &'a mut BytesMut,
    /// The proxy's own replies to the client.
    pub to_client: &'a mut BytesMut,
    /// The transaction status to answer a simple Query with, when the
    /// proxy may answer one itself now (nothing in flight, and the lease
    /// goes on after it: in a transaction, or pinned).
    pub answer_status: Option<u8>,
    pub limits: super::budget::StatementLimits,
    /// The tenant's cache counters (metrics).
    pub cache_events: &'a crate::metrics::CacheEvents,
}

/// Reads the rest of the frame at the front of `flow.buf` if needed.
pub async fn read_whole_frame(client: &mut Stream, flow: &mut Flow) -> Result<usize, ClientError> {
    let max = flow.scanner.max_len();
    loop {
        if let Some(h) =
            codec::parse_header(&flow.buf, max).map_err(|e| ClientError::Protocol(e.to_string()))?
            && flow.buf.len() > h.len
        {
            return Ok(h.len + 1);
        }
        let n = std::future::poll_fn(|cx| flow.poll_fill(cx, client))
            .await
            .map_err(|e| ClientError::Protocol(format!("connection lost: {e}")))?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "client closed the connection mid-message".into(),
            ));
        }
    }
}

impl Rewriter<'_> {
    /// Handles the whole frame `frame` (tag, length, body); the caller
    /// then drops it from the client's buffer. True if the server now
    /// owes one more ReadyForQuery (a simple Query went to it).
    pub fn handle(&mut self, frame: &[u8]) -> Result<bool, ClientError> {
        super::apply_undo(self.replies, self.statements, self.prepared);
        let tag = frame[0];
        let body = &frame[HEADER_LEN..];
        let mut owes_ready = false;
        match tag {
            _ if self.replies.refusing() && tag != b'S' => {} // dropped, as the server would
            b'P' => self.parse(frame, body)?,
            b'B' => self.bind(frame, body),
            b'D' => self.describe(frame, body),
            b'C' => self.close(frame, body),
            b'Q' => owes_ready = self.query(frame, body),
            _ => owes_ready = self.forward(frame) && matches!(tag, b'S' | b'F'),
        }
        self.replies.emit_ready(self.to_client);
        Ok(owes_ready)
    }

    /// Sends a message unchanged; false if the server will skip it.
    fn forward(&mut self, frame: &[u8]) -> bool {
        self.to_server.extend_from_slice(frame);
        self.replies.push_client_message(frame[0], frame)
    }

    /// A simple Query that may be `DEALLOCATE` of one of the client's
    /// statements: the client's name goes; the server-side statement,
    /// shared, goes from this connection only if the server is asked to
    /// (so the answer is the server's, with its transaction status).
    /// True if the server owes a ReadyForQuery for it.
    fn query(&mut self, frame: &[u8], body: &[u8]) -> bool {
        let name = match deallocate::parse(body) {
            Some(Target::Name(name)) if self.statements.contains_key(&name) => name,
            _ => return self.forward(frame),
        };
        if self.replies.skipping() {
            return false; // the server would skip it too
        }
        let Some(stmt) = self.statements.get(&name).cloned() else {
            return self.forward(frame);
        };
        if self.prepared.contains(&stmt.server_name) {
            let sql = format!("DEALLOCATE {}", stmt.server_name.as_str());
            let mut q = BytesMut::new();
            postgres_protocol::message::frontend::query(&sql, &mut q).ok();
            let old = self.statements.remove(&name);
            self.prepared.remove(&stmt.server_name);
            self.to_server.extend_from_slice(&q);
            return self.replies.push(
                Reply::UntilReady,
                Mode::Forward,
                [
                    Some(Undo::ClientRestore(name, old)),
                    Some(Undo::ServerKeep(stmt.server_name.clone())),
                ],
            );
        }
        match self.answer_status {
            Some(status) if self.replies.answer(deallocate::answer(status)) => {
                self.statements.remove(&name);
                false
            }
            // Not prepared here and the proxy cannot answer in place:
            // the server answers, as it would have without the proxy.
            _ => self.forward(frame),
        }
    }

    fn parse(&mut self, frame: &[u8], body: &[u8]) -> Result<(), ClientError> {
        let Some((name, definition)) = prepared::parse_parse(body) else {
            // Malformed: let the server say so, as it would directly.
            self.forward(frame);
            return Ok(());
        };
        if self.replies.skipping() {
            return Ok(()); // the server would skip it: no reply, no effect
        }
        if let Some(why) = self
            .limits
            .refusal(self.statements, Some(name), definition.len())
        {
            self.refuse(SqlState::PROGRAM_LIMIT_EXCEEDED, &why);
            return Ok(());
        }
        if !self.statements.contains_key(name) && self.statements.len() >= MAX_CLIENT_STATEMENTS {
            return Err(ClientError::Protocol(format!(
                "more than {MAX_CLIENT_STATEMENTS} prepared statements on one connection"
            )));
        }
        let stmt = Arc::new(Statement {
            server_name: self.statements.server_name(definition),
            definition: definition.to_vec(),
        });
        let server_name = stmt.server_name.clone();
        let old = self.statements.insert(name.to_vec(), Arc::clone(&stmt));
        let restore = Some(Undo::ClientRestore(name.to_vec(), old));
        if self.prepared.contains(&server_name) {
            self.cache_events.hit();
            self.prepared.touch(&server_name);
            self.replies
                .push(Reply::ParseComplete, Mode::Synth, [restore, None]);
        } else {
            self.cache_events.miss();
            self.evict_for(&stmt);
            prepared::write_parse(self.to_server, &server_name, &stmt.definition);
            self.prepared.insert(server_name.clone());
            self.replies.note_sent_parse(&server_name);
            self.replies.push(
                Reply::ParseComplete,
                Mode::Forward,
                [restore, Some(Undo::ServerForget(server_name.clone()))],
            );
            self.learn_description(&server_name);
        }
        Ok(())
    }

    fn bind(&mut self, frame: &[u8], body: &[u8]) {
        let stmt =
            prepared::parse_bind_names(body).and_then(|(_, s, _)| self.statements.get(s).cloned());
        self.use_statement(frame, stmt, Reply::BindComplete, |out, name| {
            // Cannot fail: the names were just parsed from this body.
            let _ = prepared::write_bind_renamed(out, body, name);
        });
    }

    fn describe(&mut self, frame: &[u8], body: &[u8]) {
        let stmt = match prepared::parse_target(body) {
            Some((b'S', name)) if !name.is_empty() => self.statements.get(name).cloned(),
            _ => None,
        };
        // Reply::DescribeStatement: the server's answer is kept, so a later
        // Describe of the same statement between transactions needs no
        // server connection (`known.rs`).
        self.use_statement(frame, stmt, Reply::DescribeStatement, |out, name| {
            prepared::write_statement_target(out, b'D', name);
        });
    }

    /// A Bind or Describe of a client's statement: prepare it on this
    /// connection if needed, send the message renamed (`write`), queue its
    /// reply. The unnamed statement goes to the server as it is; a name
    /// the client never prepared never reaches the server (it could name
    /// another client's statement there): the proxy answers "does not
    /// exist" as PostgreSQL would.
    fn use_statement(
        &mut self,
        frame: &[u8],
        stmt: Option<Arc<Statement>>,
        reply: Reply,
        write: impl FnOnce(&mut BytesMut, &prepared::ServerName),
    ) {
        let Some(stmt) = stmt else {
            match named_statement(frame) {
                Some(name) => self.refuse_unknown(name),
                None => {
                    self.forward(frame);
                }
            }
            return;
        };
        if self.replies.skipping() {
            return; // the server would skip it: no reply, no effect
        }
        self.ensure_prepared(&stmt);
        write(self.to_server, &stmt.server_name);
        if reply == Reply::DescribeStatement {
            self.replies
                .push_captured_describe(stmt.server_name.clone(), Mode::Forward);
        } else {
            self.replies.push(reply, Mode::Forward, [None, None]);
        }
    }

    fn close(&mut self, frame: &[u8], body: &[u8]) {
        let name = match prepared::parse_target(body) {
            Some((b'S', name)) if !name.is_empty() => name,
            _ => {
                self.forward(frame);
                return;
            }
        };
        if self.replies.skipping() {
            return;
        }
        // The server-side statement is shared; only the client's name goes.
        let old = self.statements.remove(name);
        self.replies.push(
            Reply::CloseComplete,
            Mode::Synth,
            [Some(Undo::ClientRestore(name.to_vec(), old)), None],
        );
    }

    /// Answers 26000 for `name` in the place of the message's reply.
    fn refuse_unknown(&mut self, name: &[u8]) {
        let msg = format!(
            "prepared statement \"{}\" does not exist",
            String::from_utf8_lossy(name)
        );
        self.refuse(SqlState::INVALID_SQL_STATEMENT_NAME, &msg);
    }

    /// An ERROR in the place of the message's reply; the rest of the
    /// batch is dropped, as PostgreSQL does after an error.
    fn refuse(&mut self, code: SqlState, message: &str) {
        let mut err = BytesMut::new();
        write_error(&mut err, Severity::Error, code, message, None);
        if self.replies.refuse(err.to_vec()) {
            prepared::write_statement_target(self.to_server, b'D', prepared::refusal_name());
        }
    }

    /// Prepares `stmt` on this connection first if it lacks it; the
    /// server's ParseComplete is hidden from the client.
    fn ensure_prepared(&mut self, stmt: &Statement) {
        if self.prepared.contains(&stmt.server_name) {
            self.cache_events.hit();
            self.prepared.touch(&stmt.server_name);
            return;
        }
        self.cache_events.miss();
        self.evict_for(stmt);
        prepared::write_parse(self.to_server, &stmt.server_name, &stmt.definition);
        self.prepared.insert(stmt.server_name.clone());
        self.replies.note_sent_parse(&stmt.server_name);
        self.replies.push(
            Reply::ParseComplete,
            Mode::Swallow,
            [Some(Undo::ServerForget(stmt.server_name.clone())), None],
        );
        self.learn_description(&stmt.server_name);
    }

    /// After a Parse sent to the server: a Describe of its own, whose
    /// answer the client does not see and the placement keeps, so that a
    /// later Describe of the statement between transactions needs no
    /// server connection (`known.rs`).
    fn learn_description(&mut self, name: &prepared::ServerName) {
        prepared::write_statement_target(self.to_server, b'D', name);
        self.replies
            .push_captured_describe(name.clone(), Mode::Swallow);
    }

    /// Closes the least recently used statement if the cache is full.
    fn evict_for(&mut self, stmt: &Statement) {
        if let Some(victim) = self
            .prepared
            .evict_for_insert(self.cache_size, &stmt.server_name)
        {
            self.cache_events.eviction();
            prepared::write_statement_target(self.to_server, b'C', &victim);
            self.replies.push(
                Reply::CloseComplete,
                Mode::Swallow,
                [Some(Undo::ServerKeep(victim)), None],
            );
        }
    }
}

/// The statement a Bind or Describe('S') names, if it names one (not the
/// unnamed statement).
fn named_statement(frame: &[u8]) -> Option<&[u8]> {
    let body = frame.get(HEADER_LEN..)?;
    let name = match frame[0] {
        b'B' => prepared::parse_bind_names(body)?.1,
        b'D' => match prepared::parse_target(body)? {
            (b'S', name) => name,
            _ => return None,
        },
        _ => return None,
    };
    (!name.is_empty()).then_some(name)
}
