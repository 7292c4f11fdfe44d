//! The reply queue of a leased server connection (transaction mode): one
//! entry per client message the server will answer, in order, so each
//! server reply can be matched to the message it answers.
//!
//! That lets the proxy
//! - answer a message itself (`Synth`: ParseComplete for a statement the
//!   connection already has, CloseComplete for a client's Close) at exactly
//!   the point in the stream where PostgreSQL would have, and
//! - hide the reply to a message it sent itself (`Swallow`: a Parse it
//!   injected before a Bind, a Close that evicts a cached statement).
//!
//! Effects on the statement maps are applied when a message is sent
//! (later messages in the same pipeline depend on them) and undone if the
//! server skips or fails the message: after an error in the extended
//! protocol, PostgreSQL skips everything up to the next Sync, and so does
//! this queue.

use super::prepared::{ServerName, Statement};
use bytes::{BufMut, BytesMut};
use std::collections::VecDeque;

/// Describe answers kept during one lease, at most (bytes); and Parse
/// names noted (`sent_parse`), at most.
const MAX_LEASE_DESCRIBED: usize = 1 << 20;
pub const MAX_LEASE_SENT_PARSE: usize = 4096;
use std::sync::Arc;

/// Entries a reply queue keeps room for between leases; a longer pipeline
/// gives the rest back when it ends.
const SHRINK_ABOVE: usize = 256;

/// What reply ends an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    Sync,
    /// A simple Query or FunctionCall: everything up to ReadyForQuery.
    UntilReady,
    /// Not a reply: marks where the client ended a COPY (CopyDone or
    /// CopyFail), bounding the Syncs the server ignores during copy-in.
    CopyEnd,
    /// A message the proxy refused (a statement name the client never
    /// prepared): in its place the server got a Describe that fails, so it
    /// aborts the transaction and skips to Sync as PostgreSQL would; the
    /// client sees the proxy's ErrorResponse (`Replies::canned`) instead
    /// of the server's.
    Refused,
    /// The proxy's whole answer to a simple Query it handled itself
    /// (CommandComplete and ReadyForQuery); bytes in `Replies::canned`.
    Answered,
}

impl Reply {
    /// Part of an extended-protocol batch, skipped after an error.
    fn is_extended(self) -> bool {
        !matches!(
            self,
            Reply::Sync | Reply::UntilReady | Reply::CopyEnd | Reply::Answered
        )
    }

    /// Written from `Replies::canned`.
    fn is_canned(self) -> bool {
        matches!(self, Reply::Refused | Reply::Answered)
    }
}

/// Who produces the reply and whether the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The server answers; the client sees it.
    Forward,
    /// The server answers a message the proxy injected; the client does
    /// not see it.
    Swallow,
    /// The proxy answers (the server was sent nothing).
    Synth,
}

/// How to take back an effect when its message is skipped or fails.
#[derive(Debug, Clone)]
pub enum Undo {
    /// The connection does not have this statement after all.
    ServerForget(ServerName),
    /// The connection still has this statement (an evicting Close failed).
    ServerKeep(ServerName),
    /// Put back the client's previous mapping for a name.
    ClientRestore(Vec<u8>, Option<Arc<Statement>>),
}

#[derive(Debug)]
struct Entry {
    reply: Reply,
    mode: Mode,
    /// ParameterDescription seen (DescribeStatement).
    got_params: bool,
    /// A Describe of a proxy-named statement whose answer is kept
    /// (`Replies::described`); its name is in `capture_names`.
    capture: bool,
    /// Boxed: only rewritten messages carry effects, and a small entry
    /// keeps the common push/pop a few words of copying with no drop glue
    /// to run.
    undo: Option<Box<[Option<Undo>; 2]>>,
}

impl Entry {
    fn into_undo(self) -> impl Iterator<Item = Undo> {
        self.undo.into_iter().flat_map(|b| *b).flatten()
    }
}

/// What the pump does with one server message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Drop it: it answers a message the proxy injected.
    pub swallow: bool,
    /// Queries and Syncs that will get no ReadyForQuery after all
    /// (skipped after an error, or Syncs sent during copy-in).
    pub dropped_queries: u32,
}

/// The queue, plus effects to undo that the session has not applied yet.
#[derive(Debug, Default)]
pub struct Replies {
    q: VecDeque<Entry>,
    /// The server hit an error and is skipping until the client's Sync,
    /// which has not been sent yet.
    skipping: bool,
    /// The server is in copy-in and the client has not ended the COPY
    /// yet: its Syncs until then are ignored by the server.
    copy_in: bool,
    /// `Synth` entries queued (lets `emit_ready` return at once when none).
    synth: usize,
    /// `CopyEnd` markers queued.
    markers: usize,
    /// The proxy refused a message of the current batch: like the server
    /// after an error, it drops the client's messages up to its Sync
    /// (which still goes to the server, to end the batch there).
    refusing: bool,
    /// Bytes of the queued `Refused` and `Answered` entries, in order.
    canned: VecDeque<Vec<u8>>,
    pub undo: Vec<Undo>,
    /// Server-side names this lease sent a Parse for; the session learns
    /// from them which statements the server accepted (kept across
    /// `clear`, drained by the session).
    pub sent_parse: Vec<ServerName>,
    /// Names of the queued `capture` entries, in order.
    capture_names: VecDeque<ServerName>,
    /// The answer being kept for the front `capture` entry.
    capturing: Vec<u8>,
    /// Server answers (ParameterDescription, then RowDescription or
    /// NoData) to Describes of proxy-named statements this lease (kept
    /// across `clear`, drained by the session).
    pub described: Vec<(ServerName, Vec<u8>)>,
    /// Bytes in `described`.
    pub described_bytes: usize,
}

impl Replies {
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Entries queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// The server waits for COPY data the client has not finished sending.
    pub fn in_copy_in(&self) -> bool {
        self.copy_in
    }

    /// Messages sent now will be skipped by the server, or dropped by the
    /// proxy after it refused one.
    pub fn skipping(&self) -> bool {
        self.skipping || self.refusing
    }

    /// The proxy drops the client's messages up to its next Sync.
    #[inline]
    pub fn refusing(&self) -> bool {
        self.refusing
    }

    /// Queues the proxy's ErrorResponse `error` for a refused extended
    /// message, in the place of its reply (the caller sends the failing
    /// Describe), and drops what follows up to the client's Sync. False
    /// (nothing to send) if the server skips already.
    pub fn refuse(&mut self, error: Vec<u8>) -> bool {
        if self.skipping() {
            return false;
        }
        self.refusing = true;
        self.canned.push_back(error);
        self.push(Reply::Refused, Mode::Forward, [None, None])
    }

    /// The next server message answers a refused message.
    #[inline]
    pub fn front_is_refused(&self) -> bool {
        self.q.front().is_some_and(|e| e.reply == Reply::Refused)
    }

    /// A server message for the refused message at the front: its error
    /// is replaced by the proxy's (written to `out`). Should the Describe
    /// have succeeded after all, its answer is dropped and the proxy's
    /// error stands. The caller drops the server's message.
    pub fn answer_refused(&mut self, tag: u8, out: &mut BytesMut) -> Verdict {
        match tag {
            b'E' | b'T' | b'n' => {
                if let Some(error) = self.canned.front() {
                    out.extend_from_slice(error);
                }
                if tag == b'E' {
                    return self.match_reply(tag); // skips to Sync, as the server does
                }
                self.pop();
                Verdict::default()
            }
            _ => Verdict::default(),
        }
    }

    /// Queues the reply to a Describe of the proxy-named statement `name`,
    /// keeping the server's answer (see `described`); `Swallow` for one
    /// the proxy sent itself.
    pub fn push_captured_describe(&mut self, name: ServerName, mode: Mode) -> bool {
        if !self.push(Reply::DescribeStatement, mode, [None, None]) {
            return false;
        }
        if let Some(e) = self.q.back_mut() {
            e.capture = true;
            self.capture_names.push_back(name);
        }
        true
    }

    /// The front entry keeps its answer: ParameterDescription,
    /// RowDescription and NoData frames are to be shown whole to
    /// `capture`.
    #[inline]
    pub fn capturing_front(&self) -> bool {
        !self.capture_names.is_empty() && self.q.front().is_some_and(|e| e.capture)
    }

    /// Keeps one whole frame of the front entry's answer.
    pub fn capture(&mut self, tag: u8, frame: &[u8]) {
        match tag {
            b't' => {
                self.capturing.clear();
                self.capturing.extend_from_slice(frame);
            }
            b'T' | b'n' if !self.capturing.is_empty() => {
                self.capturing.extend_from_slice(frame);
                if let Some(name) = self.capture_names.front() {
                    let answer = std::mem::take(&mut self.capturing);
                    // Bounded per lease: a lease that never ends must not
                    // keep answers without limit (they are hints only).
                    if self.described_bytes + answer.len() <= MAX_LEASE_DESCRIBED {
                        self.described_bytes += answer.len();
                        self.described.push((name.clone(), answer));
                    }
                }
            }
            _ => {}
        }
    }

    /// Queues the proxy's whole answer to a simple Query (`bytes`: up to
    /// and including ReadyForQuery); false if the server skips now.
    pub fn answer(&mut self, bytes: Vec<u8>) -> bool {
        if self.skipping() {
            return false;
        }
        self.canned.push_back(bytes);
        self.push(Reply::Answered, Mode::Synth, [None, None])
    }

    /// A Parse of `name` went to the server (learnt at the lease's end,
    /// up to `MAX_LEASE_SENT_PARSE` per lease).
    pub fn note_sent_parse(&mut self, name: &ServerName) {
        if self.sent_parse.len() < MAX_LEASE_SENT_PARSE {
            self.sent_parse.push(name.clone());
        }
    }

    /// Forgets everything (a new lease).
    pub fn clear(&mut self) {
        self.q.clear();
        self.skipping = false;
        self.copy_in = false;
        self.synth = 0;
        self.markers = 0;
        self.refusing = false;
        self.canned.clear();
        self.capture_names.clear();
        self.capturing.clear();
        self.described.clear();
        self.described_bytes = 0;
        self.sent_parse.clear();
        self.undo.clear();
        // A queue grown by a long pipeline gives its memory back.
        if self.q.capacity() > SHRINK_ABOVE {
            self.q.shrink_to(SHRINK_ABOVE);
        }
    }

    /// Queues the reply to a client message forwarded as it is. Returns
    /// false if the server will skip the message (no reply, no Z).
    pub fn push_client_message(&mut self, tag: u8, frame: &[u8]) -> bool {
        let reply = match tag {
            b'P' => Reply::ParseComplete,
            b'B' => Reply::BindComplete,
            b'C' => Reply::CloseComplete,
            b'D' if frame.get(5) == Some(&b'P') => Reply::DescribePortal,
            b'D' => Reply::DescribeStatement,
            b'E' => Reply::Execute,
            b'S' => Reply::Sync,
            b'Q' | b'F' => Reply::UntilReady,
            b'c' | b'f' => {
                // PostgreSQL ignores Sync during copy-in, up to here.
                if !std::mem::take(&mut self.copy_in) && !self.q.is_empty() {
                    self.markers += 1;
                    self.q.push_back(Entry {
                        reply: Reply::CopyEnd,
                        mode: Mode::Forward,
                        got_params: false,
                        capture: false,
                        undo: None,
                    });
                }
                return true;
            }
            _ => return true, // Flush and CopyData: no reply of their own
        };
        self.push_forward(reply)
    }

    /// `push` of a message forwarded as it is: no mode to count, no
    /// effects to box or undo. Every forwarded message of every extended
    /// batch comes through here.
    fn push_forward(&mut self, reply: Reply) -> bool {
        if reply == Reply::Sync {
            if self.copy_in {
                return false; // ignored by the server during copy-in
            }
            self.skipping = false;
            self.refusing = false;
        } else if self.skipping {
            return false;
        }
        self.q.push_back(Entry {
            reply,
            mode: Mode::Forward,
            got_params: false,
            capture: false,
            undo: None,
        });
        true
    }

    /// Queues an entry; false (and nothing queued) if the server will
    /// skip the message.
    pub fn push(&mut self, reply: Reply, mode: Mode, undo: [Option<Undo>; 2]) -> bool {
        if reply == Reply::Sync && self.copy_in {
            return false; // ignored by the server during copy-in
        }
        if reply == Reply::Sync {
            self.skipping = false;
            self.refusing = false;
        } else if self.skipping() && reply != Reply::Refused {
            self.undo.extend(undo.into_iter().flatten());
            return false;
        }
        self.synth += usize::from(mode == Mode::Synth);
        let undo = (undo[0].is_some() || undo[1].is_some()).then(|| Box::new(undo));
        self.q.push_back(Entry {
            reply,
            mode,
            got_params: false,
            capture: false,
            undo,
        });
        true
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.q.pop_front()?;
        self.synth -= usize::from(e.mode == Mode::Synth);
        self.markers -= usize::from(e.reply == Reply::CopyEnd);
        if e.reply.is_canned() {
            self.canned.pop_front();
        }
        if e.capture {
            self.capture_names.pop_front();
        }
        Some(e)
    }

    /// Writes the proxy's own replies now due (those at the front) to
    /// `out`; true if it wrote any.
    #[inline]
    pub fn emit_ready(&mut self, out: &mut BytesMut) -> bool {
        self.synth != 0 && self.emit_synth(out)
    }

    fn emit_synth(&mut self, out: &mut BytesMut) -> bool {
        let mut wrote = false;
        while let Some(e) = self.q.front().filter(|e| e.mode == Mode::Synth) {
            if e.reply.is_canned() {
                if let Some(bytes) = self.canned.front() {
                    out.extend_from_slice(bytes);
                }
            } else {
                out.put_u8(match e.reply {
                    Reply::CloseComplete => b'3',
                    _ => b'1',
                });
                out.put_i32(4);
            }
            self.pop();
            wrote = true;
        }
        wrote
    }

    /// `on_server_message(tag)` would end no entry and nothing is due to
    /// be emitted around it: DataRow always, RowDescription in reply to a
    /// simple Query (not to a Describe, which it ends). Such messages need
    /// no look at all.
    #[inline]
    pub fn passes(&self, tag: u8) -> bool {
        self.synth == 0
            && self.markers == 0
            && match tag {
                b'D' => true,
                b'T' => self.q.front().is_some_and(|e| e.reply == Reply::UntilReady),
                _ => false,
            }
    }

    /// Matches one server message (not ParameterStatus, Notice or
    /// Notification) against the queue.
    #[inline]
    pub fn on_server_message(&mut self, tag: u8) -> Verdict {
        // Rows (DataRow, CopyData) end no entry: the bulk of a result
        // costs one compare here.
        if matches!(tag, b'D' | b'd') && self.markers == 0 {
            return Verdict::default();
        }
        // A simple Query's messages before its ReadyForQuery (its
        // CommandComplete, say) end nothing either: what `match_reply`
        // would find, without its walk.
        if self.markers == 0
            && !matches!(tag, b'G' | b'E' | b'Z')
            && self.q.front().is_some_and(|e| e.reply == Reply::UntilReady)
        {
            return Verdict::default();
        }
        self.match_reply(tag)
    }

    fn match_reply(&mut self, tag: u8) -> Verdict {
        let mut v = Verdict::default();
        self.pop_markers();
        if tag == b'G' {
            v.dropped_queries = self.copy_in_started();
            return v;
        }
        if matches!(tag, b'E' | b'Z') {
            self.copy_in = false; // copy-in is over either way
        }
        let Some(front) = self.q.front_mut() else {
            return v;
        };
        if tag == b'E' && front.reply.is_extended() {
            // PostgreSQL skips the rest of the batch up to Sync.
            if let Some(failed) = self.pop() {
                self.undo.extend(failed.into_undo());
            }
            while self.q.front().is_some_and(|e| e.reply != Reply::Sync) {
                if let Some(e) = self.pop() {
                    if e.reply == Reply::UntilReady {
                        v.dropped_queries += 1;
                    }
                    self.undo.extend(e.into_undo());
                }
            }
            if self.q.is_empty() {
                self.skipping = true;
            }
            return v;
        }
        let done = match front.reply {
            Reply::ParseComplete => tag == b'1',
            Reply::BindComplete => tag == b'2',
            Reply::CloseComplete => tag == b'3',
            Reply::DescribeStatement => {
                if tag == b't' {
                    front.got_params = true;
                    // The first of its two parts: hidden like the second.
                    v.swallow = front.mode == Mode::Swallow;
                }
                front.got_params && matches!(tag, b'T' | b'n')
            }
            Reply::DescribePortal => matches!(tag, b'T' | b'n'),
            Reply::Execute => matches!(tag, b'C' | b'I' | b's'),
            Reply::Sync | Reply::UntilReady => tag == b'Z',
            Reply::CopyEnd | Reply::Refused | Reply::Answered => false,
        };
        if done {
            v.swallow = front.mode == Mode::Swallow;
            self.pop();
            self.pop_markers();
        }
        v
    }

    fn pop_markers(&mut self) {
        while self.markers > 0 && self.q.front().is_some_and(|e| e.reply == Reply::CopyEnd) {
            self.pop();
        }
    }

    /// CopyInResponse: the Syncs the client sent after the message that
    /// started the COPY and before it ended the COPY are ignored by the
    /// server; drop them. Returns how many.
    fn copy_in_started(&mut self) -> u32 {
        let mut dropped = 0;
        let mut i = 1;
        while i < self.q.len() {
            match self.q[i].reply {
                Reply::CopyEnd => return dropped,
                Reply::Sync => {
                    self.q.remove(i);
                    dropped += 1;
                }
                _ => i += 1,
            }
        }
        // The client has not ended the COPY yet.
        self.copy_in = true;
        dropped
    }
}

#[cfg(test)]
#[path = "replies_tests.rs"]
mod tests;
