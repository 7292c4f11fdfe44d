//! What one client may make the proxy hold (issue 17 point 5): the
//! proxy's own replies not yet written to it and the reply queue (a
//! backlog that grows while the client does not read), the texts of its
//! named statements, and buffers grown for large messages.
//!
//! Past the backlog limit the pump stops reading from the client until
//! the backlog drains (back-pressure, as for forwarded bytes). Statement
//! texts past their limits are refused with 54000, as an ERROR the
//! client can recover from. Buffers grown for one large message are given
//! back once it is handled.

use super::statements::ClientStatements;
use bytes::BytesMut;

/// Bytes of the proxy's own replies plus queued reply entries (counted at
/// `ENTRY_COST` each) past which the client is not read.
pub const MAX_BACKLOG: usize = 1 << 20;

/// What one queued reply costs, roughly (entry, its share of the queue).
const ENTRY_COST: usize = 32;

/// A buffer with more capacity than this is shrunk once mostly empty.
const SHRINK_ABOVE: usize = 1 << 20;

/// Read buffers shrink back to this.
const SHRUNK: usize = super::pump::READ_CHUNK;

/// The client direction must wait: its backlog towards the client is
/// over the limit. One add and compare per pump wake-up.
#[inline]
pub fn over_backlog(proxy_replies: usize, queued: usize) -> bool {
    proxy_replies + queued * ENTRY_COST > MAX_BACKLOG
}

/// Per-client limits on named statement texts.
#[derive(Debug, Clone, Copy)]
pub struct StatementLimits {
    /// One statement's definition (query text and parameter types).
    pub max_statement: usize,
    /// All of a client's definitions together.
    pub max_total: usize,
}

/// Longest statement name a client may keep (PostgreSQL itself tells
/// names apart by their first 63 bytes only).
pub const MAX_NAME: usize = 1024;

impl StatementLimits {
    /// Why a definition of `len` bytes may not be kept by a client that
    /// holds `statements` (replacing `replaced`, if any), if it may not.
    /// Names count too: they are kept (and copied per message in flight).
    pub fn refusal(
        &self,
        statements: &ClientStatements,
        replaced: Option<&[u8]>,
        len: usize,
    ) -> Option<String> {
        let name_len = replaced.map_or(0, <[u8]>::len);
        if name_len > MAX_NAME {
            return Some(format!(
                "prepared statement name of {name_len} bytes is over the limit of {MAX_NAME} bytes"
            ));
        }
        if len > self.max_statement {
            return Some(format!(
                "prepared statement of {len} bytes is over the limit of {} bytes (max_statement_size)",
                self.max_statement
            ));
        }
        let len = len + name_len;
        let held = statements.held_bytes();
        let freed = replaced
            .and_then(|n| statements.get(n))
            .map_or(0, |s| name_len + s.definition.len());
        let total = held - freed + len;
        (total > self.max_total).then(|| {
            format!(
                "prepared statements of this connection would hold {total} bytes, over the limit of {} bytes (max_client_memory); deallocate some first",
                self.max_total
            )
        })
    }
}

/// Gives back the memory of a buffer grown for a large message once what
/// it holds is small again.
pub fn shrink(buf: &mut BytesMut) {
    if buf.capacity() > SHRINK_ABOVE && buf.len() <= SHRUNK {
        let mut small = BytesMut::with_capacity(SHRUNK);
        small.extend_from_slice(buf);
        *buf = small;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::prepared::{Statement, server_name};
    use std::sync::Arc;

    #[test]
    fn statement_limits_count_every_name() {
        let limits = StatementLimits {
            max_statement: 100,
            max_total: 252,
        };
        let mut held = ClientStatements::default();
        assert!(limits.refusal(&held, None, 101).is_some());
        for i in 0..2u8 {
            held.insert(
                vec![i],
                Arc::new(Statement {
                    server_name: server_name(&[i]),
                    definition: vec![0; 100],
                }),
            );
        }
        assert!(limits.refusal(&held, None, 50).is_none());
        let over = limits.refusal(&held, None, 51).expect("over");
        assert!(over.contains("max_client_memory"), "{over}");
        // Replacing a statement frees its bytes.
        assert!(limits.refusal(&held, Some(&[0]), 100).is_none());
        // The running total (names included) follows inserts,
        // replacements and removals.
        assert_eq!(held.held_bytes(), 202);
        held.insert(
            vec![0],
            Arc::new(Statement {
                server_name: server_name(&[9]),
                definition: vec![0; 30],
            }),
        );
        assert_eq!(held.held_bytes(), 132);
        held.remove(&[1]);
        assert_eq!(held.held_bytes(), 31);
        // Long names are refused whatever the budget.
        let long = vec![b'n'; MAX_NAME + 1];
        assert!(limits.refusal(&held, Some(&long), 1).is_some());
        held.clear();
        assert_eq!(held.held_bytes(), 0);
    }

    #[test]
    fn big_buffers_shrink_once_emptied() {
        let mut b = BytesMut::with_capacity(8 << 20);
        b.extend_from_slice(&[1; 100]);
        shrink(&mut b);
        assert_eq!((b.capacity(), &b[..]), (SHRUNK, &[1u8; 100][..]));
        let mut full = BytesMut::with_capacity(8 << 20);
        full.extend_from_slice(&vec![0; 2 << 20]);
        shrink(&mut full);
        assert!(full.capacity() >= 2 << 20, "kept while in use");
    }

    #[test]
    fn backlog_counts_replies_and_queue() {
        assert!(!over_backlog(0, 0));
        assert!(over_backlog(MAX_BACKLOG + 1, 0));
        assert!(over_backlog(0, MAX_BACKLOG / ENTRY_COST + 1));
    }
}
