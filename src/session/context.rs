//! The tenant context a lease of an `isolation = "rls"` placement starts
//! with (`pool::context` says what the calls do): sent ahead of the
//! client's request, or, on a connection the client keeps that lost it,
//! entered again and waited for.

use super::Session;
use super::txn::{Halt, TxnState};
use crate::pool::{Lease, TenantContext};
use crate::protocol::Step;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use bytes::BytesMut;
use std::sync::Arc;

impl Session<'_> {
    /// Opens an `isolation = "rls"` lease: the call that makes this
    /// client's tenant the server session's context goes to the server
    /// first, in the same send as the client's request (`pool::context`).
    /// Fails closed if the connection has no context function or the
    /// client's bytes could overtake the call.
    ///
    /// Skipped when the connection's session already holds this tenant's
    /// context: nothing since the call that set it can have changed it to
    /// another tenant (only a call showing the session's secret can), and the
    /// proxy forgets it after anything that may have cleared it (a settings
    /// sync, SET/RESET/DISCARD, an error, code it cannot see into, a reset).
    pub(super) fn enter_tenant(
        &self,
        ctx: &TenantContext,
        lease: &mut Lease,
        synced: bool,
        client: &mut ClientConn,
        txn: &mut TxnState,
    ) -> Result<(), ClientError> {
        let conn = lease.conn_mut();
        if !synced
            && conn
                .context_of
                .as_ref()
                .is_some_and(|t| Arc::ptr_eq(t, &self.tenant))
        {
            return Ok(());
        }
        conn.context_of = None;
        let (Some(functions), true) = (
            conn.context_functions,
            client.flow.ready == 0 && client.flow.inject.is_empty(),
        ) else {
            tracing::error!(tenant = %self.tenant.id, "cannot open the lease with the tenant context");
            return Err(ClientError::ContextFailed(self.tenant.id.clone()));
        };
        let out = &mut client.flow.inject;
        let secret = match conn.context_secret {
            Some(secret) => secret,
            None => {
                // The session may have lost its secret (DISCARD, a reset):
                // a new one first, in the same send.
                let secret = crate::pool::new_secret();
                ctx.write_open(functions.open, conn.cancel_key().pid, secret, out);
                txn.context_pending += 1;
                conn.context_secret = Some(secret);
                secret
            }
        };
        // The client's messages follow in the same send: the guard makes
        // PostgreSQL skip them unless the call set the context.
        let proof = rand::random::<i64>();
        ctx.write_enter(
            functions.enter,
            secret,
            self.tenant.id.as_str(),
            Some(proof),
            out,
        );
        crate::pool::write_guard(proof, out);
        // The call's ReadyForQuery, then the guard's.
        txn.context_pending += 1 + crate::pool::GUARD_ENDS;
        conn.context_of = Some(Arc::clone(&self.tenant));
        Ok(())
    }

    /// The tenant context call, waited for (a connection the client keeps
    /// lost its context mid-session); fails closed.
    pub(super) async fn reenter_tenant(
        &self,
        ctx: &TenantContext,
        lease: &mut Lease,
    ) -> Result<(), ClientError> {
        let conn = lease.conn_mut();
        let Some(functions) = conn.context_functions else {
            return Err(ClientError::ContextFailed(self.tenant.id.clone()));
        };
        conn.context_of = None;
        // RESET/DISCARD may have taken the session's secret: a new one.
        conn.context_secret = None;
        let secret = crate::pool::new_secret();
        let pid = conn.cancel_key().pid;
        let mut open = BytesMut::new();
        ctx.write_open(functions.open, pid, secret, &mut open);
        let mut enter = BytesMut::new();
        ctx.write_enter(
            functions.enter,
            secret,
            self.tenant.id.as_str(),
            None,
            &mut enter,
        );
        for call in [open, enter] {
            if let Err(e) = conn.exchange(&call).await {
                tracing::warn!(tenant = %self.tenant.id, "setting the tenant context failed: {e}");
                return Err(ClientError::ContextFailed(self.tenant.id.clone()));
            }
        }
        conn.context_secret = Some(secret);
        conn.context_of = Some(Arc::clone(&self.tenant));
        Ok(())
    }
}

/// A frame of the replies to the tenant context calls that opened the
/// lease and to their guard (`pool::write_guard`): dropped, up to the
/// guard's CloseComplete; an error (or anything else) ends the lease
/// before any reply of the client's goes out. The client's messages
/// behind a failed call never ran: the guard's Describe failed with it,
/// and PostgreSQL skips what follows up to the client's Sync.
pub(super) fn context_reply(st: &mut TxnState, tag: u8, body: &[u8]) -> Step {
    match tag {
        // FunctionCallResponse; the guard's ParameterDescription.
        b'V' | b'N' | b'S' | b'A' | b't' => Step::Skip,
        // A call's ReadyForQuery; the guard's RowDescription (or NoData)
        // and CloseComplete.
        b'Z' | b'T' | b'n' | b'3' => {
            st.context_pending -= 1;
            Step::Skip
        }
        _ => {
            st.context_failure = Some(if tag == b'E' {
                error_text(body)
            } else {
                format!("unexpected reply {:?}", tag as char)
            });
            st.server_halt = Some(Halt::ContextFailed);
            Step::StopBefore
        }
    }
}

/// "SQLSTATE: message" of an ErrorResponse body.
fn error_text(body: &[u8]) -> String {
    let field = |t: u8| {
        body.split(|&b| b == 0)
            .find(|f| f.first() == Some(&t))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
            .unwrap_or_default()
    };
    format!("{}: {}", field(b'C'), field(b'M'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameScanner;
    use crate::session::boundary_prop::query;
    use crate::session::txn::ClientSink;

    fn sync() -> Vec<u8> {
        let mut out = Vec::new();
        crate::session::boundary_prop::frame(&mut out, b'S', b"");
        out
    }

    /// While the context calls are unanswered, a client's bytes go out up
    /// to and including its first Sync and no further; once answered, the
    /// rest goes.
    #[test]
    fn client_messages_after_the_first_sync_wait_for_the_context_replies() {
        let mut st = TxnState::new(true, false);
        st.context_pending = 3;
        let first = [query("SELECT 1"), sync()].concat();
        let rest = [query("UPDATE t SET x = 1"), sync()].concat();
        let bytes = [&first[..], &rest[..]].concat();
        let mut scanner = FrameScanner::new(1 << 20);
        let scan = scanner.scan(&bytes, &mut ClientSink(&mut st)).unwrap();
        assert_eq!((scan.forward, scan.stopped), (first.len(), true));
        assert!(st.context_held());
        // Presented again while held: still nothing.
        let scan = scanner.scan(&rest, &mut ClientSink(&mut st)).unwrap();
        assert_eq!(scan.forward, 0);
        // The replies: a call's ReadyForQuery, the guard's
        // ParameterDescription, RowDescription and CloseComplete.
        for tag in [b'V', b'Z', b't', b'T', b'3'] {
            assert!(matches!(context_reply(&mut st, tag, b""), Step::Skip));
        }
        assert_eq!(st.context_pending, 0);
        assert!(!st.context_held());
        let scan = scanner.scan(&rest, &mut ClientSink(&mut st)).unwrap();
        assert_eq!(scan.forward, rest.len());
    }

    /// Without a Sync nothing is held: PostgreSQL skips everything after
    /// a failed call up to a Sync, so a simple Query pipeline may go.
    #[test]
    fn queries_without_a_sync_go_at_once() {
        let mut st = TxnState::new(true, false);
        st.context_pending = 1;
        let bytes = [query("SELECT 1"), query("SELECT 2")].concat();
        let mut scanner = FrameScanner::new(1 << 20);
        let scan = scanner.scan(&bytes, &mut ClientSink(&mut st)).unwrap();
        assert_eq!(scan.forward, bytes.len());
        assert!(!st.context_held());
    }

    /// One client message of the property below (any mix of simple and
    /// extended protocol, Flush and Close included).
    fn message(kind: u8) -> Vec<u8> {
        use crate::session::boundary_prop::frame;
        let mut out = Vec::new();
        match kind % 8 {
            0 => return query("SELECT 1"),
            1 => frame(&mut out, b'P', b"\0SELECT 1\0\0\0"),
            2 => frame(&mut out, b'B', b"\0\0\0\0\0\0\0\0"),
            3 => frame(&mut out, b'D', b"P\0"),
            4 => frame(&mut out, b'E', b"\0\0\0\0\0"),
            5 => return sync(),
            6 => frame(&mut out, b'H', b""),
            _ => frame(&mut out, b'C', b"P\0"),
        }
        out
    }

    /// Where the first Sync of `stream` ends, if it has one.
    fn first_sync_end(stream: &[u8]) -> Option<usize> {
        let mut at = 0;
        while let Ok(Some(h)) = crate::protocol::codec::parse_header(&stream[at..], 1 << 20) {
            at += h.len + 1;
            if h.tag == b'S' {
                return Some(at);
            }
        }
        None
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// However the client's messages are cut into reads and however
        /// the context replies interleave with them: while a call is
        /// unanswered nothing past the client's first Sync goes out
        /// (PostgreSQL's skipping after a failed call ends there); a
        /// failure ends the lease; after the last reply everything goes.
        #[test]
        fn nothing_past_the_first_sync_goes_out_before_the_context_replies(
            kinds in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..24),
            cuts in proptest::collection::vec(1usize..40, 1..64),
            replies_first in proptest::collection::vec(proptest::prelude::any::<bool>(), 1..96),
            pending in 1u8..=4,
            fail_at in proptest::option::of(0u8..4),
            scan_text in proptest::prelude::any::<bool>(),
        ) {
            let stream: Vec<u8> = kinds.iter().flat_map(|&k| message(k)).collect();
            let limit = first_sync_end(&stream).unwrap_or(stream.len());
            let mut st = TxnState::new(true, false);
            st.scan_text = scan_text;
            st.context_pending = pending;
            let mut scanner = FrameScanner::new(1 << 20);
            let (mut arrived, mut forwarded, mut answered) = (0, 0, 0u8);
            for step in 0.. {
                let reply_now = replies_first.get(step).copied().unwrap_or(true);
                if st.context_pending > 0 && (reply_now || arrived == stream.len()) {
                    if fail_at == Some(answered) {
                        let step = context_reply(&mut st, b'E', b"SERROR\0C57014\0Mcanceled\0\0");
                        proptest::prop_assert!(matches!(step, Step::StopBefore));
                        proptest::prop_assert!(st.context_failure.is_some());
                        break; // the lease ends: nothing more goes out
                    }
                    // A notice may come between a call's replies.
                    proptest::prop_assert!(matches!(context_reply(&mut st, b'N', b""), Step::Skip));
                    proptest::prop_assert!(matches!(context_reply(&mut st, b'Z', b"I"), Step::Skip));
                    answered += 1;
                } else if arrived < stream.len() {
                    arrived = (arrived + cuts[step % cuts.len()]).min(stream.len());
                } else if forwarded == stream.len() {
                    break;
                }
                let scan = scanner
                    .scan(&stream[forwarded..arrived], &mut ClientSink(&mut st))
                    .expect("valid frames");
                proptest::prop_assert_eq!(scan.skip, 0);
                forwarded += scan.forward;
                if st.context_pending > 0 {
                    proptest::prop_assert!(forwarded <= limit, "{} > {}", forwarded, limit);
                }
                proptest::prop_assert!(step < 10_000, "stuck");
            }
            if fail_at.is_none_or(|f| f >= pending) {
                proptest::prop_assert_eq!(st.context_pending, 0);
                proptest::prop_assert_eq!(forwarded, stream.len());
            }
        }
    }

    /// An error, or any reply the calls and the guard do not send, ends
    /// the lease before anything of the client's goes out.
    #[test]
    fn anything_else_fails_the_context() {
        for tag in [b'E', b'D', b'C', b'1', b'2'] {
            let mut st = TxnState::new(true, false);
            st.context_pending = 3;
            let body = b"SERROR\0C42501\0Mno\0\0";
            assert!(matches!(
                context_reply(&mut st, tag, body),
                Step::StopBefore
            ));
            assert!(st.context_failure.is_some());
            assert!(matches!(st.server_halt, Some(Halt::ContextFailed)));
        }
    }
}
