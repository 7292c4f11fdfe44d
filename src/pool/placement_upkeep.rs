//! A pool's upkeep: the janitor's pass over idle connections
//! (`maintain`, every second) and the round-trip check of a connection
//! idle past `server_check_delay` before it is handed out.

use super::super::lease::Lease;
use super::super::queue::serve_waiters;
use super::super::stats::bump;
use super::PlacementPool;
use std::time::Instant;

impl PlacementPool {
    /// Janitor work: closes idle connections past `server_idle_timeout`
    /// or their lifetime, marks those idle past `server_check_delay` for
    /// a check. Holds the lock only for the pass over the idle lists; the
    /// sockets are closed after.
    pub fn maintain(&self, now: Instant) {
        let t = self.timeouts;
        let (mut by_idle, mut by_lifetime) = (0u64, 0u64);
        let mut doomed = Vec::new();
        {
            let mut s = self.lock();
            if s.idle_count == 0 {
                return;
            }
            for list in s.idle.iter_mut() {
                doomed.extend(list.extract_if(.., |c| {
                    let idle_for = now.saturating_duration_since(c.last_used);
                    if !t.idle.is_zero() && idle_for >= t.idle {
                        by_idle += 1;
                        true
                    } else if c.retire_at.is_some_and(|at| now >= at) {
                        by_lifetime += 1;
                        true
                    } else {
                        if idle_for >= t.check_delay {
                            c.needs_check = true;
                        }
                        false
                    }
                }));
            }
            s.idle_count -= doomed.len();
            s.total -= doomed.len();
            serve_waiters(&mut s);
        }
        if doomed.is_empty() {
            return;
        }
        bump(&self.stats.closed_idle, by_idle);
        bump(&self.stats.closed_lifetime, by_lifetime);
        tracing::debug!(placement = %self.name, by_idle, by_lifetime, "closed idle server connections");
        doomed.into_iter().for_each(|c| c.close());
    }

    /// The round trip for a connection idle past `server_check_delay`.
    pub(super) async fn check(&self, lease: &mut Lease) -> bool {
        let conn = lease.conn_mut();
        let outcome = crate::runtime::time::timeout(self.timeouts.connect, conn.check()).await;
        match outcome {
            Ok(Ok(())) => {
                conn.needs_check = false;
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(placement = %self.name, "idle server connection failed its check: {e}");
                bump(&self.stats.closed_dead, 1);
                false
            }
            Err(_) => {
                tracing::debug!(placement = %self.name, "idle server connection did not answer its check");
                bump(&self.stats.closed_dead, 1);
                false
            }
        }
    }
}
