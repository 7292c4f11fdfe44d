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
//! Likewise `DEALLOCATE name` of a client's own statement.

use super::budget::StatementLimits;
use super::deallocate::{self, Target};
use super::prepared::{self, ServerName, Statement};
use super::statements::{ClientStatements, MAX_CLIENT_STATEMENTS};
use crate::protocol::{HEADER_LEN, codec};
use bytes::{BufMut, BytesMut};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// At most this many names per placement (36 bytes each and the set's
/// overhead); past it no more are learned, and Parses of new statements
/// take a server connection as before.
const MAX_KNOWN: usize = 50_000;

/// The set of server-side names a placement's servers accepted.
#[derive(Debug, Default)]
pub struct KnownStatements {
    names: Mutex<HashSet<ServerName>>,
}

impl KnownStatements {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<ServerName>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn contains(&self, name: &ServerName) -> bool {
        self.lock().contains(name)
    }

    /// Learns the names of `sent` that a server accepted (`accepted`),
    /// emptying `sent`.
    pub fn learn(&self, sent: &mut Vec<ServerName>, accepted: impl Fn(&ServerName) -> bool) {
        if sent.is_empty() {
            return;
        }
        let mut names = self.lock();
        for name in sent.drain(..) {
            if names.len() < MAX_KNOWN && accepted(&name) {
                names.insert(name);
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
    /// A named Parse whose next message has not arrived (a server would
    /// not answer before it either).
    NeedMore,
    /// A request for a server connection.
    Server,
}

/// If the requests at the front of `buf` (between transactions) can be
/// answered without a server, answers them into `out` and applies them
/// to the client's `statements`.
pub fn answer_without_server(
    buf: &[u8],
    max: usize,
    statements: &mut ClientStatements,
    known: &KnownStatements,
    limits: &StatementLimits,
    out: &mut BytesMut,
) -> Local {
    match answer(buf, max, statements, known, limits, out) {
        Some(n) => Local::Answered(n),
        None => match frame_at(buf, max) {
            Some((b'P', f))
                if f.get(HEADER_LEN) != Some(&0) && frame_at(&buf[f.len()..], max).is_none() =>
            {
                Local::NeedMore
            }
            _ => Local::Server,
        },
    }
}

fn answer(
    buf: &[u8],
    max: usize,
    statements: &mut ClientStatements,
    known: &KnownStatements,
    limits: &StatementLimits,
    out: &mut BytesMut,
) -> Option<usize> {
    let (tag, first) = frame_at(buf, max)?;
    match tag {
        b'Q' => {
            // `DEALLOCATE` of the client's own protocol-level statement.
            let Some(Target::Name(name)) = deallocate::parse(&first[HEADER_LEN..]) else {
                return None;
            };
            statements.remove(&name)?;
            out.extend_from_slice(&deallocate::answer(b'I'));
            Some(first.len())
        }
        b'P' => {
            // Parse then Sync, of a statement a server accepted.
            let (name, definition) = prepared::parse_parse(&first[HEADER_LEN..])?;
            let (sync, sync_frame) = frame_at(&buf[first.len()..], max)?;
            if sync != b'S' || name.is_empty() {
                return None;
            }
            // Over a limit: the usual path refuses it.
            if !statements.contains_key(name) && statements.len() >= MAX_CLIENT_STATEMENTS {
                return None;
            }
            if limits
                .refusal(statements, Some(name), definition.len())
                .is_some()
            {
                return None;
            }
            let server_name = prepared::server_name(definition);
            if !known.contains(&server_name) {
                return None;
            }
            statements.insert(
                name.to_vec(),
                Arc::new(Statement {
                    server_name,
                    definition: definition.to_vec(),
                }),
            );
            out.put_u8(b'1');
            out.put_i32(4);
            crate::protocol::messages::ready_for_query(out, b'I');
            Some(first.len() + sync_frame.len())
        }
        _ => None,
    }
}
