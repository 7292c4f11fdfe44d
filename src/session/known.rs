//! Statements a placement's server has accepted, and the requests the
//! proxy answers from them without leasing a server connection.
//!
//! Drivers prepare synchronously (pgbench `-M prepared`, libpq
//! `PQprepare`: Parse then Sync, outside a transaction). Over a pool
//! smaller than the client count, a thread blocked on such a prepare can
//! wait for a server connection held by its own other clients, forever.
//! A Parse of a statement some server of the placement already accepted
//! (same text and parameter types, so the same keyed server-side name)
//! needs no server: its ParseComplete and the Sync's ReadyForQuery ('I':
//! the client is between transactions) come from the proxy; the server
//! connection that runs it later prepares it first, as for any statement.
//! Likewise a Describe of such a statement (libpq `PQdescribePrepared`,
//! which psycopg calls while holding the GIL its other connections' threads
//! need), once a server's answer to a Describe of it was kept; a Close;
//! and `DEALLOCATE name` of a client's own statement.

use super::budget::StatementLimits;
use super::deallocate::{self, Target};
use super::prepared::{self, ServerName, Statement};
use super::statements::{ClientStatements, MAX_CLIENT_STATEMENTS};
use crate::protocol::{HEADER_LEN, codec};
use bytes::{BufMut, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// At most this many names per placement (36 bytes each and the map's
/// overhead); past it no more are learned, and Parses of new statements
/// take a server connection as before.
const MAX_KNOWN: usize = 50_000;

/// At most this many bytes of kept Describe answers per placement.
const MAX_DESCRIBED_BYTES: usize = 16 << 20;

/// Requests answered in place wait for their Sync up to this many bytes;
/// past it they take a server connection (which streams them).
const MAX_PENDING: usize = 64 * 1024;

/// Messages of a batch answered without a server, at most.
const MAX_BATCH: usize = 64;

/// Bytes of the message at the front of `b` once whole (its header's
/// length, or the header's own five bytes while it is incomplete).
fn whole_len(b: &[u8]) -> usize {
    match b.get(1..HEADER_LEN) {
        Some(len) => {
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            usize::try_from(len).map_or(HEADER_LEN, |l| l.saturating_add(1))
        }
        None => HEADER_LEN,
    }
}

#[derive(Debug, Default)]
struct Known {
    /// Name → the server's answer to a Describe of it, if one was kept.
    names: HashMap<ServerName, Option<Arc<[u8]>>>,
    described_bytes: usize,
}

/// The statements a placement's servers accepted, and the answers to
/// Describes of them. An answer depends on the tables the text resolves
/// to: answers are kept and used only for clients on the default
/// `search_path`, and all are dropped when any client runs DDL.
#[derive(Debug, Default)]
pub struct KnownStatements {
    inner: Mutex<Known>,
}

impl KnownStatements {
    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `None`: not known; `Some(None)`: known, no Describe answer kept.
    fn get(&self, name: &ServerName) -> Option<Option<Arc<[u8]>>> {
        self.lock().names.get(name).cloned()
    }

    /// Drops the kept Describe answers (after DDL).
    pub fn forget_described(&self) {
        let mut k = self.lock();
        if k.described_bytes == 0 {
            return;
        }
        k.names.values_mut().for_each(|a| *a = None);
        k.described_bytes = 0;
    }

    /// Learns the names of `sent` that a server accepted (`accepted`),
    /// and the Describe answers in `described` (the latest answer wins:
    /// after DDL a server answers differently), emptying both.
    pub fn learn(
        &self,
        sent: &mut Vec<ServerName>,
        described: &mut Vec<(ServerName, Vec<u8>)>,
        accepted: impl Fn(&ServerName) -> bool,
    ) {
        if sent.is_empty() && described.is_empty() {
            return;
        }
        let mut k = self.lock();
        for name in sent.drain(..) {
            if k.names.len() < MAX_KNOWN && accepted(&name) {
                k.names.entry(name).or_insert(None);
            }
        }
        for (name, answer) in described.drain(..) {
            let known = k.names.len() < MAX_KNOWN || k.names.contains_key(&name);
            if !known || k.described_bytes + answer.len() > MAX_DESCRIBED_BYTES {
                continue;
            }
            k.described_bytes += answer.len();
            let old = k.names.insert(name, Some(answer.into()));
            if let Some(Some(old)) = old {
                k.described_bytes -= old.len();
            }
        }
    }
}

/// One whole frame at the front of `buf`: (tag, frame).
fn frame_at(buf: &[u8], max: usize) -> Option<(u8, &[u8])> {
    let h = codec::parse_header(buf, max).ok()??;
    let f = buf.get(..h.len + 1)?;
    Some((h.tag, f))
}

/// What the front of an idle client's buffer is.
#[derive(Debug, PartialEq, Eq)]
pub enum Local {
    /// Answered into `out`: drop this many bytes.
    Answered(usize),
    /// Requests that may be answered in place, whose Sync has not arrived
    /// (a server would not answer before it either). Nothing changes
    /// until the buffer holds this many bytes (the message the walk
    /// stopped at is whole): the caller need not walk again before.
    NeedMore(usize),
    /// A request for a server connection.
    Server,
}

/// What answering without a server consults and changes.
pub struct Answering<'a> {
    /// Largest client message.
    pub max: usize,
    /// The client's named statements.
    pub statements: &'a mut ClientStatements,
    pub known: &'a KnownStatements,
    pub limits: &'a StatementLimits,
    /// Kept Describe answers apply to this client (`Session::default_search_path`).
    pub use_described: bool,
}

/// If the requests at the front of `buf` (between transactions) can be
/// answered without a server, answers them into `out` and applies them
/// to the client's statements.
pub fn answer_without_server(buf: &[u8], a: Answering<'_>, out: &mut BytesMut) -> Local {
    let Some((b'Q', query)) = frame_at(buf, a.max) else {
        return answer_batch(buf, a, out);
    };
    let statements = a.statements;
    // `DEALLOCATE` of the client's own protocol-level statement.
    match deallocate::parse(&query[HEADER_LEN..]) {
        Some(Target::Name(name)) if statements.remove(&name).is_some() => {
            out.extend_from_slice(&deallocate::answer(b'I'));
            Local::Answered(query.len())
        }
        _ => Local::Server,
    }
}

/// A change to the client's map, applied once the whole batch is known to
/// be answerable.
enum Change {
    Insert(Vec<u8>, Arc<Statement>),
    Remove(Vec<u8>),
}

/// Parse, Describe('S') and Close('S') messages up to a Sync, each
/// answerable in place.
fn answer_batch(buf: &[u8], a: Answering<'_>, out: &mut BytesMut) -> Local {
    let Answering {
        max,
        statements,
        known,
        limits,
        use_described,
    } = a;
    let mut changes: Vec<Change> = Vec::new();
    let mut reply = BytesMut::new();
    let mut at = 0;
    // The statement a name means once the earlier changes apply.
    let lookup = |changes: &[Change], name: &[u8]| -> Option<Arc<Statement>> {
        for c in changes.iter().rev() {
            match c {
                Change::Insert(n, s) if n == name => return Some(Arc::clone(s)),
                Change::Remove(n) if n == name => return None,
                _ => {}
            }
        }
        statements.get(name).cloned()
    };
    let mut frames = 0;
    loop {
        let Some((tag, frame)) = frame_at(&buf[at..], max) else {
            return if at > 0 && buf.len() < MAX_PENDING {
                // Never past what a batch may hold: a huge length word
                // must not let the buffer grow unwalked.
                Local::NeedMore((at + whole_len(&buf[at..])).min(MAX_PENDING))
            } else {
                Local::Server
            };
        };
        // Each walk costs per message before it: a long batch goes to a
        // server, which answers it as cheaply.
        frames += 1;
        if frames > MAX_BATCH {
            return Local::Server;
        }
        let body = &frame[HEADER_LEN..];
        match tag {
            b'P' => {
                // Unnamed (the body starts with the empty name's NUL): the
                // usual extended-protocol request, for a server. Decided
                // before the query text is walked or anything hashed: this
                // runs for every such transaction.
                if body.first() == Some(&0) {
                    return Local::Server;
                }
                let Some((name, definition)) = prepared::parse_parse(body) else {
                    return Local::Server;
                };
                let new = lookup(&changes, name).is_none();
                let over = (new && statements.len() + changes.len() >= MAX_CLIENT_STATEMENTS)
                    || limits
                        .refusal(statements, Some(name), definition.len())
                        .is_some();
                let server_name = statements.server_name(definition);
                if over || known.get(&server_name).is_none() {
                    return Local::Server; // the usual path answers or refuses
                }
                let stmt = Arc::new(Statement {
                    server_name,
                    definition: definition.to_vec(),
                });
                changes.push(Change::Insert(name.to_vec(), stmt));
                reply.put_u8(b'1');
                reply.put_i32(4);
            }
            b'D' => {
                let Some((b'S', name)) = prepared::parse_target(body) else {
                    return Local::Server;
                };
                let answer = lookup(&changes, name)
                    .filter(|_| use_described)
                    .and_then(|s| known.get(&s.server_name))
                    .flatten();
                let Some(answer) = answer else {
                    return Local::Server;
                };
                reply.extend_from_slice(&answer);
            }
            b'C' => {
                let Some((b'S', name)) = prepared::parse_target(body) else {
                    return Local::Server;
                };
                if name.is_empty() {
                    return Local::Server;
                }
                changes.push(Change::Remove(name.to_vec()));
                reply.put_u8(b'3');
                reply.put_i32(4);
            }
            b'S' if at > 0 => {
                at += frame.len();
                break;
            }
            _ => return Local::Server,
        }
        at += frame.len();
    }
    for c in changes {
        match c {
            Change::Insert(name, stmt) => {
                statements.insert(name, stmt);
            }
            Change::Remove(name) => {
                statements.remove(&name);
            }
        }
    }
    out.extend_from_slice(&reply);
    crate::protocol::messages::ready_for_query(out, b'I');
    Local::Answered(at)
}
