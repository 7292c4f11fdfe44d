//! What happens to an accepted socket: counted as unauthenticated (a
//! total and a per-address cap), refused at once past the caps, else a
//! client session for the worker to run. The runtime's accept loop calls
//! [`accept`] through the handler `lib.rs` gives it, and knows nothing
//! of clients.

use crate::admission::Refusal;
use crate::protocol::SqlState;
use crate::protocol::error::{Severity, write_error};
use crate::runtime::SessionFuture;
use crate::runtime::net::Socket;
use crate::state::ProxyState;
use bytes::BytesMut;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The session of an accepted client, or None if it was refused (told
/// why, and closed).
pub fn accept(state: &Arc<ProxyState>, stream: Socket, peer: SocketAddr) -> Option<SessionFuture> {
    match state.admit_unauthenticated(peer.ip()) {
        Ok(unauthenticated) => Some(Box::pin(super::serve(
            Arc::clone(state),
            stream,
            peer,
            unauthenticated,
        ))),
        Err(refusal) => {
            refuse_at_accept(stream, refusal);
            REFUSALS.with(|r| r.borrow_mut().count(peer, refusal));
            None
        }
    }
}

/// Refuses a connection in the accept loop, which must not wait: one
/// non-blocking `send` of a FATAL 53300 ErrorResponse (dropped if the
/// socket cannot take it now), then the close. Whatever the client
/// already sent (its startup packet) is read off first, where it is
/// there, so that the close is a FIN after the error rather than a
/// reset that could discard it.
pub fn refuse_at_accept(stream: Socket, why: Refusal) {
    let mut drain = [std::mem::MaybeUninit::<u8>::uninit(); 512];
    let _ = stream.recv(&mut drain);
    let mut out = BytesMut::with_capacity(128);
    write_error(
        &mut out,
        Severity::Fatal,
        SqlState::TOO_MANY_CONNECTIONS,
        why.message(),
        None,
    );
    let _ = stream.send(&out);
}

thread_local! {
    /// Per worker thread, as the accept loops are.
    static REFUSALS: RefCell<RefusalLog> = RefCell::default();
}

/// Refusals at accept come in floods: they are logged as a count, at most
/// once per interval, so that an attacker cannot flood the log too.
#[derive(Default)]
struct RefusalLog {
    since_last: u64,
    last: Option<Instant>,
}

impl RefusalLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn count(&mut self, peer: SocketAddr, refusal: Refusal) {
        self.since_last += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Self::INTERVAL)
        {
            tracing::warn!(
                worker = crate::runtime::current_worker(),
                "refused {} connection(s) at accept since the last report; the latest from {}: {}",
                self.since_last,
                peer.ip(),
                refusal.message()
            );
            self.since_last = 0;
            self.last = Some(now);
        }
    }
}
