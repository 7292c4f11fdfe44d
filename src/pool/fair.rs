//! Fair sharing of one pool among the tenants on its placement: what each
//! tenant holds against its cap (`max_server_connections`), its FIFO of
//! waiters, and the round robin across tenants that have waiters and room
//! under their cap. Plain data, changed only under the pool's mutex
//! (`queue.rs`); it allocates only when a queue grows past its largest
//! size so far.
//!
//! Why per-tenant queues instead of one FIFO: with one FIFO, a tenant with
//! 100 waiting clients puts another tenant's single client behind all of
//! them. Here each hand-off goes to the tenant whose turn it is, and that
//! tenant goes to the back of the line; so a waiting client waits for at
//! most one hand-off per other tenant that is waiting too, however many
//! clients those tenants have queued.
//!
//! Held: a tenant holds a connection from the moment it is granted one (an
//! idle connection, or a slot to open one) until the lease comes back or
//! is closed. A tenant at its cap gets nothing, even from idle
//! connections: its waiters sit out of the round robin until one of its
//! own connections comes back.

use std::collections::VecDeque;
use std::time::Instant;

/// A tenant's place at one pool (an index into its table), looked up once
/// per login by name ([`super::PlacementPool::seat`]) so that checkout
/// costs an index, not a hash of the tenant's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantSeat(pub(super) u32);

/// One tenant's share of the pool, for stats and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantCounts {
    /// Connections leased to (or being opened for) its clients.
    pub held: usize,
    pub waiting: usize,
    pub cap: usize,
    /// When its oldest waiter started waiting (SHOW POOLS' `maxwait`).
    pub waiting_since: Option<Instant>,
}

struct Tenant<W> {
    held: usize,
    cap: usize,
    /// Oldest first, each with when it started waiting; the ids let a
    /// waiter that gives up find itself.
    waiters: VecDeque<(u64, Instant, W)>,
    /// Listed in `Tenants::turns` (at most once).
    in_turn: bool,
}

impl<W> Tenant<W> {
    fn has_room(&self) -> bool {
        self.held < self.cap
    }
}

/// Every tenant of one pool, by seat.
pub(super) struct Tenants<W> {
    list: Vec<Tenant<W>>,
    /// Tenants whose turn is coming: each had waiters and room when it was
    /// listed. Served from the front; one served goes to the back. An
    /// entry whose waiters have all given up since is dropped when reached.
    turns: VecDeque<u32>,
    waiting: usize,
}

impl<W> Tenants<W> {
    /// One seat per cap, in order (a cap of 0 is taken as 1).
    pub(super) fn new(caps: impl IntoIterator<Item = usize>) -> Tenants<W> {
        let list: Vec<Tenant<W>> = caps
            .into_iter()
            .map(|cap| Tenant {
                held: 0,
                cap: cap.max(1),
                waiters: VecDeque::new(),
                in_turn: false,
            })
            .collect();
        Tenants {
            turns: VecDeque::with_capacity(list.len().min(1024)),
            list,
            waiting: 0,
        }
    }

    /// A new tenant's seat (a live reload added it), with cap `cap`.
    pub(super) fn add(&mut self, cap: usize) -> TenantSeat {
        self.list.push(Tenant {
            held: 0,
            cap: cap.max(1),
            waiters: VecDeque::new(),
            in_turn: false,
        });
        TenantSeat((self.list.len() - 1) as u32)
    }

    /// A live reload changed `seat`'s cap. What it holds stays held; a
    /// lowered cap only refuses more until it is under it again, and a
    /// raised one puts its waiters back in turn (the caller then serves
    /// waiters).
    pub(super) fn set_cap(&mut self, seat: TenantSeat, cap: usize) {
        if let Some(t) = self.list.get_mut(seat.0 as usize) {
            t.cap = cap.max(1);
            if t.has_room() && !t.waiters.is_empty() && !t.in_turn {
                t.in_turn = true;
                self.turns.push_back(seat.0);
            }
        }
    }

    /// Whether `seat` may be granted one more connection. An unknown seat
    /// (a bug) never may: its clients time out rather than go uncounted.
    pub(super) fn has_room(&self, seat: TenantSeat) -> bool {
        self.list.get(seat.0 as usize).is_some_and(Tenant::has_room)
    }

    /// `seat` was granted a connection or a slot.
    pub(super) fn acquire(&mut self, seat: TenantSeat) {
        if let Some(t) = self.list.get_mut(seat.0 as usize) {
            t.held += 1;
        }
    }

    /// A connection `seat` held came back or is gone. A tenant that was at
    /// its cap with clients waiting takes its turn again.
    pub(super) fn release(&mut self, seat: TenantSeat) {
        if let Some(t) = self.list.get_mut(seat.0 as usize) {
            t.held = t.held.saturating_sub(1);
            if t.has_room() && !t.waiters.is_empty() && !t.in_turn {
                t.in_turn = true;
                self.turns.push_back(seat.0);
            }
        }
    }

    /// Queues a waiter of `seat` behind its tenant's others; `since`: when
    /// it started waiting. False for an unknown seat.
    pub(super) fn push(&mut self, seat: TenantSeat, id: u64, since: Instant, waiter: W) -> bool {
        let Some(t) = self.list.get_mut(seat.0 as usize) else {
            return false;
        };
        t.waiters.push_back((id, since, waiter));
        self.waiting += 1;
        if t.has_room() && !t.in_turn {
            t.in_turn = true;
            self.turns.push_back(seat.0);
        }
        true
    }

    /// Removes a waiter that gave up; false if it is no longer queued
    /// (something was handed to it).
    pub(super) fn remove(&mut self, seat: TenantSeat, id: u64) -> bool {
        let Some(t) = self.list.get_mut(seat.0 as usize) else {
            return false;
        };
        match t.waiters.iter().position(|(i, _, _)| *i == id) {
            Some(i) => {
                t.waiters.remove(i);
                self.waiting -= 1;
                true
            }
            None => false,
        }
    }

    /// Whether some tenant may be waiting with room under its cap (a hint:
    /// its waiters may have given up since).
    pub(super) fn anyone_ready(&self) -> bool {
        !self.turns.is_empty()
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Hands `grant` to the oldest waiter of the tenant whose turn it is,
    /// counting it against that tenant. `send` fails (giving the grant
    /// back) for a waiter that has gone; the next one is tried. `Err`:
    /// nobody with room is waiting.
    pub(super) fn hand<G>(
        &mut self,
        mut grant: G,
        mut send: impl FnMut(W, G) -> Result<(), G>,
    ) -> Result<(), G> {
        while let Some(seat) = self.turns.pop_front() {
            let Some(t) = self.list.get_mut(seat as usize) else {
                continue;
            };
            while t.has_room()
                && let Some((_, _, w)) = t.waiters.pop_front()
            {
                self.waiting -= 1;
                match send(w, grant) {
                    Ok(()) => {
                        t.held += 1;
                        // Back of the line, if it still waits and may.
                        if t.has_room() && !t.waiters.is_empty() {
                            self.turns.push_back(seat);
                        } else {
                            t.in_turn = false;
                        }
                        return Ok(());
                    }
                    Err(back) => grant = back,
                }
            }
            t.in_turn = false;
        }
        Err(grant)
    }

    /// Tells every waiter of a tenant with room that `grant` (made by
    /// `make`) is all there is: used while the placement backs off. Waiters
    /// of tenants at their cap go on waiting for their own connections.
    pub(super) fn tell_ready<G>(&mut self, mut make: impl FnMut() -> G, send: impl Fn(W, G)) {
        while let Some(seat) = self.turns.pop_front() {
            let Some(t) = self.list.get_mut(seat as usize) else {
                continue;
            };
            t.in_turn = false;
            self.waiting -= t.waiters.len();
            for (_, _, w) in t.waiters.drain(..) {
                send(w, make());
            }
        }
    }

    pub(super) fn counts(&self, seat: TenantSeat) -> Option<TenantCounts> {
        self.list.get(seat.0 as usize).map(|t| TenantCounts {
            held: t.held,
            waiting: t.waiters.len(),
            cap: t.cap,
            waiting_since: t.waiters.front().map(|&(_, since, _)| since),
        })
    }

    /// When the longest-waiting client of the tenants at `seats` (indexes,
    /// clamped to the table) started waiting: the oldest of each one's
    /// first waiter (FIFO within a tenant). One look per tenant: for SHOW
    /// POOLS and a scrape, not for checkout.
    pub(super) fn oldest_since(&self, seats: std::ops::Range<usize>) -> Option<Instant> {
        let end = seats.end.min(self.list.len());
        self.list[seats.start.min(end)..end]
            .iter()
            .filter_map(|t| t.waiters.front().map(|&(_, since, _)| since))
            .min()
    }

    /// How many seats the table has.
    pub(super) fn seat_count(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    const FLOOD: TenantSeat = TenantSeat(0);
    const QUIET: TenantSeat = TenantSeat(1);
    const THIRD: TenantSeat = TenantSeat(2);

    /// Hands `n` grants; returns who got them (waiters are their tenant's
    /// seat number).
    fn serve(t: &mut Tenants<u32>, n: usize) -> Vec<u32> {
        let mut got = Vec::new();
        for _ in 0..n {
            let r = t.hand((), |w, ()| {
                got.push(w);
                Ok(())
            });
            if r.is_err() {
                break;
            }
        }
        got
    }

    #[test]
    fn a_single_waiter_is_served_second_behind_a_hundred() {
        let mut t = Tenants::new([10, 10]);
        for id in 0..100 {
            assert!(t.push(FLOOD, id, now(), 0));
        }
        assert!(t.push(QUIET, 100, now(), 1));
        assert_eq!(t.waiting(), 101);
        // The flood's first waiter came first; the quiet one is next, not
        // the 101st.
        assert_eq!(serve(&mut t, 3), [0, 1, 0]);
        assert_eq!(t.counts(QUIET).map(|c| c.held), Some(1));
        assert_eq!(t.waiting(), 98);
    }

    #[test]
    fn turns_rotate_across_tenants_fifo_within_each() {
        let mut t: Tenants<(u32, u64)> = Tenants::new([100, 100, 100]);
        let mut id = 0;
        for (seat, n) in [(FLOOD, 5), (QUIET, 2), (THIRD, 3)] {
            for _ in 0..n {
                t.push(seat, id, now(), (seat.0, id));
                id += 1;
            }
        }
        let mut got = Vec::new();
        while t
            .hand((), |w, ()| {
                got.push(w);
                Ok(())
            })
            .is_ok()
        {}
        let order: Vec<(u32, u64)> = got;
        assert_eq!(
            order,
            [
                (0, 0),
                (1, 5),
                (2, 7),
                (0, 1),
                (1, 6),
                (2, 8),
                (0, 2),
                (2, 9),
                (0, 3),
                (0, 4)
            ]
        );
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn a_tenant_at_its_cap_sits_out_until_one_of_its_own_comes_back() {
        let mut t = Tenants::new([2, 10]);
        t.acquire(FLOOD);
        t.acquire(FLOOD);
        assert!(!t.has_room(FLOOD));
        for id in 0..3 {
            t.push(FLOOD, id, now(), 0);
        }
        // Nothing for the flood while it is at its cap.
        assert!(serve(&mut t, 1).is_empty());
        t.push(QUIET, 3, now(), 1);
        assert_eq!(serve(&mut t, 5), [1]);
        // One of the flood's comes back: exactly one flood waiter may go.
        t.release(FLOOD);
        assert_eq!(serve(&mut t, 5), [0]);
        assert_eq!(
            t.counts(FLOOD).map(|c| (c.held, c.waiting, c.cap)),
            Some((2, 2, 2))
        );
    }

    #[test]
    fn waiters_that_gave_up_are_skipped_and_removed() {
        let mut t = Tenants::new([10, 10]);
        t.push(FLOOD, 0, now(), 0);
        t.push(FLOOD, 1, now(), 0);
        t.push(QUIET, 2, now(), 1);
        assert!(t.remove(QUIET, 2));
        assert!(!t.remove(QUIET, 2));
        assert_eq!(t.waiting(), 2);
        // A waiter whose receiver is gone gives the grant back to the next.
        let mut tries = 0;
        let r = t.hand(7, |_, g| {
            tries += 1;
            if tries == 1 { Err(g) } else { Ok(()) }
        });
        assert!(r.is_ok());
        assert_eq!(tries, 2);
        assert_eq!(t.counts(FLOOD).map(|c| (c.held, c.waiting)), Some((1, 0)));
        assert_eq!(t.hand(7, |_, _| Ok(())), Err(7));
        assert!(!t.anyone_ready());
    }

    #[test]
    fn a_raised_cap_serves_waiters_and_an_added_tenant_gets_its_own_seat() {
        let mut t = Tenants::new([1]);
        t.acquire(FLOOD);
        t.push(FLOOD, 0, now(), 0);
        assert!(serve(&mut t, 1).is_empty(), "at its cap");
        t.set_cap(FLOOD, 2);
        assert_eq!(serve(&mut t, 1), [0]);
        t.set_cap(FLOOD, 1);
        assert!(!t.has_room(FLOOD), "holds 2, cap now 1");
        t.release(FLOOD);
        assert!(!t.has_room(FLOOD), "holds 1, cap 1");
        let new = t.add(3);
        assert_eq!(new, QUIET);
        assert_eq!(
            t.counts(new),
            Some(TenantCounts {
                held: 0,
                waiting: 0,
                cap: 3,
                waiting_since: None
            })
        );
    }

    #[test]
    fn backing_off_tells_only_tenants_with_room() {
        let mut t = Tenants::new([1, 10]);
        t.acquire(FLOOD);
        t.push(FLOOD, 0, now(), 0);
        t.push(QUIET, 1, now(), 1);
        t.push(QUIET, 2, now(), 1);
        let told = std::cell::RefCell::new(Vec::new());
        t.tell_ready(|| (), |w, ()| told.borrow_mut().push(w));
        assert_eq!(told.into_inner(), [1, 1]);
        assert_eq!(t.waiting(), 1);
        assert!(!t.has_room(TenantSeat(9)));
    }

    #[test]
    fn the_oldest_waiter_is_each_tenants_first_and_the_pools_earliest() {
        let mut t = Tenants::new([1, 1]);
        t.acquire(FLOOD);
        t.acquire(QUIET);
        let start = Instant::now();
        let at = |ms| start + std::time::Duration::from_millis(ms);
        assert_eq!(t.oldest_since(0..usize::MAX), None);
        t.push(FLOOD, 0, at(10), 0);
        t.push(FLOOD, 1, at(30), 0);
        t.push(QUIET, 2, at(20), 1);
        assert_eq!(t.counts(FLOOD).and_then(|c| c.waiting_since), Some(at(10)));
        assert_eq!(t.counts(QUIET).and_then(|c| c.waiting_since), Some(at(20)));
        assert_eq!(t.oldest_since(0..usize::MAX), Some(at(10)));
        // A range of seats looks at those tenants only.
        assert_eq!(t.oldest_since(1..2), Some(at(20)));
        assert_eq!(t.oldest_since(2..9), None);
        // The oldest gives up: the next of its tenant is that tenant's
        // first, and the pool's oldest is now the other tenant's.
        assert!(t.remove(FLOOD, 0));
        assert_eq!(t.counts(FLOOD).and_then(|c| c.waiting_since), Some(at(30)));
        assert_eq!(t.oldest_since(0..usize::MAX), Some(at(20)));
        // Served: QUIET's connection came back and went to its waiter.
        t.release(QUIET);
        assert_eq!(t.hand((), |_, ()| Ok(())), Ok(()));
        assert_eq!(t.counts(QUIET).and_then(|c| c.waiting_since), None);
        assert_eq!(t.oldest_since(0..usize::MAX), Some(at(30)));
    }
}
