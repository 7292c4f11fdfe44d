//! Timers of a thread's reactor: a heap of deadlines, read by the loop
//! only while a timer is pending.

use super::{Reactor, token, untoken, with_reactor};
use std::cmp::Reverse;
use std::task::Waker;
use std::time::Instant;

/// A timer set and not yet dropped.
pub(super) struct Timer {
    /// Its heap entries carry this token; an entry whose token is not
    /// the one in its slot belongs to a timer that is gone.
    token: u64,
    fired: bool,
    waker: Option<Waker>,
}

/// A timer's place in the reactor of the thread that set it.
#[derive(Debug)]
pub struct TimerKey {
    reactor: usize,
    token: u64,
}

/// Sets a timer for `deadline` that wakes `waker`; None off the loop.
pub fn timer_add(deadline: Instant, waker: &Waker) -> Option<TimerKey> {
    with_reactor(|r| {
        let generation = r.next_generation;
        r.next_generation = r.next_generation.wrapping_add(1);
        let entry = r.timers.vacant_entry();
        let tok = token(entry.key(), generation);
        entry.insert(Timer {
            token: tok,
            fired: false,
            waker: Some(waker.clone()),
        });
        r.heap.push(Reverse((deadline, tok)));
        TimerKey {
            reactor: r.shared.id,
            token: tok,
        }
    })
}

/// Whether the timer fired; if not, `waker` is the one it wakes. A timer
/// of another thread's reactor (or of one that is gone) counts as fired.
pub fn timer_poll(key: &TimerKey, waker: &Waker) -> bool {
    with_reactor(|r| {
        let Some(t) = r.timer_mut(key) else {
            return true;
        };
        if !t.fired && !t.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            t.waker = Some(waker.clone());
        }
        t.fired
    })
    .unwrap_or(true)
}

/// Cancels a timer (a no-op off its thread: it fires into nothing).
pub fn timer_cancel(key: &TimerKey) {
    with_reactor(|r| {
        let Some(t) = r.timer_mut(key) else {
            return;
        };
        let fired = t.fired;
        r.timers.remove(untoken(key.token).0);
        if !fired {
            r.stale += 1;
        }
        // Timers cancelled long before their deadline (an idle limit per
        // transaction) would pile up in the heap: rebuild it once most of
        // it is dead.
        if r.stale > 64 && r.stale > r.timers.len() {
            let timers = &r.timers;
            r.heap.retain(|Reverse((_, tok))| {
                timers
                    .get(untoken(*tok).0)
                    .is_some_and(|t| t.token == *tok && !t.fired)
            });
            r.stale = 0;
        }
    });
}

impl Reactor {
    /// The timer `key` names, if it is this reactor's and still set.
    fn timer_mut(&mut self, key: &TimerKey) -> Option<&mut Timer> {
        if self.shared.id != key.reactor {
            return None;
        }
        self.timers
            .get_mut(untoken(key.token).0)
            .filter(|t| t.token == key.token)
    }

    /// Milliseconds `epoll_wait` may sleep: until the next timer, or
    /// forever (-1). Reads the clock only while a timer is pending.
    pub(super) fn timeout_ms(&self) -> i32 {
        let Some(Reverse((deadline, _))) = self.heap.peek() else {
            return -1;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up: waking a little late fires the timer; waking early
        // would only loop.
        let ms = left.as_nanos().div_ceil(1_000_000);
        i32::try_from(ms).unwrap_or(i32::MAX)
    }

    /// Fires the timers that are due.
    pub(super) fn fire_timers(&mut self) {
        if self.heap.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(Reverse((deadline, tok))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            match self.timers.get_mut(untoken(tok).0) {
                Some(t) if t.token == tok => {
                    t.fired = true;
                    if let Some(w) = t.waker.take() {
                        w.wake();
                    }
                }
                _ => self.stale = self.stale.saturating_sub(1),
            }
        }
    }
}

/// Entries in this thread's timer heap (tests).
#[cfg(test)]
pub fn timer_heap_len() -> usize {
    with_reactor(|r| r.heap.len()).unwrap_or(0)
}
