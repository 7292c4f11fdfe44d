//! Which tenants get series of their own, and counters that stay
//! monotonic while tenants come and go from that set.
//!
//! Tenants with their own series: the *always* ones (dedicated tenants,
//! alone on an `isolation = "database"` placement, and `watch = true`
//! ones) and up to `k` of the busiest others. Busy is a score kept at
//! every refresh (each scrape): `score = score / 2 + transactions since
//! the last refresh`, so a burst fades over a few scrapes. Hysteresis:
//! a free place goes to the busiest outsider with a nonzero score; once
//! full, an outsider takes the place of the weakest member only when its
//! score is more than twice that member's. So a tenant does not flap in
//! and out when it ranks near the edge.
//!
//! Monotonic counters: each refresh reads every tenant's counters and
//! adds what grew since the last refresh either to the tenant's own
//! series (while it has one) or to the aggregate `_other`. Neither ever
//! goes down: a tenant leaving the set stops adding to its own series
//! (which disappears) and starts adding to `_other`; one entering starts
//! adding to its own (kept from its last time in the set, so it goes on
//! from where it stopped). The sum over all series is the proxy's total.

use super::tenant::Counters;
use crate::routing::TenantId;
use std::collections::HashMap;

/// What the exporter keeps per tenant between refreshes.
#[derive(Debug, Default)]
struct Tracked {
    /// The tenant's counters at the last refresh.
    last: Counters,
    /// What its own series show; kept when it leaves the set.
    own: Option<Box<Counters>>,
    score: u64,
    /// Has series of its own now.
    member: bool,
    always: bool,
    /// Seen in the latest refresh (others are dropped).
    seen: bool,
}

/// The exporter's memory (behind the metrics' mutex).
#[derive(Debug, Default)]
pub struct TopK {
    tracked: HashMap<TenantId, Tracked, crate::catalog::FastHash>,
    /// Every tenant's growth while outside the set.
    pub other: Counters,
    /// Every tenant's growth (for proxy-wide totals).
    pub total: Counters,
    /// Counters that always go to `_other` (operators'), at the last
    /// refresh.
    unranked_last: Counters,
}

impl TopK {
    /// Starts a refresh: marks every tenant unseen.
    pub fn begin(&mut self) {
        for t in self.tracked.values_mut() {
            t.seen = false;
        }
    }

    /// Takes one tenant's counters now; `always`: it has series of its
    /// own whatever its traffic.
    pub fn observe(&mut self, id: &TenantId, now: Counters, always: bool) {
        let t = match self.tracked.get_mut(id) {
            Some(t) => t,
            None => self.tracked.entry(id.clone()).or_default(),
        };
        t.seen = true;
        t.always = always;
        if always && !t.member {
            // Its own series from its first refresh on, nothing in
            // `_other` first.
            t.member = true;
        }
        let delta_transactions = now.transactions.saturating_sub(t.last.transactions);
        t.score = t.score / 2 + delta_transactions;
        if t.member {
            let own = t.own.get_or_insert_with(Default::default);
            own.add_delta(&now, &t.last);
        } else {
            self.other.add_delta(&now, &t.last);
        }
        self.total.add_delta(&now, &t.last);
        t.last = now;
    }

    /// Takes counters that never get series of their own (operators').
    pub fn observe_unranked(&mut self, now: Counters) {
        self.other.add_delta(&now, &self.unranked_last);
        self.total.add_delta(&now, &self.unranked_last);
        self.unranked_last = now;
    }

    /// Ends a refresh: forgets tenants not seen (removed: their series
    /// disappear), then picks the members for the next refresh.
    pub fn finish(&mut self, k: usize) {
        self.tracked.retain(|_, t| t.seen);
        let mut members: Vec<(u64, &TenantId)> = Vec::new();
        let mut outsiders: Vec<(u64, &TenantId)> = Vec::new();
        for (id, t) in &self.tracked {
            if t.always {
                continue;
            }
            if t.member {
                members.push((t.score, id));
            } else if t.score > 0 {
                outsiders.push((t.score, id));
            }
        }
        // Weakest member first; busiest outsider first (ties by name, so
        // refreshes agree).
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)));
        let take = outsiders.len().min(k.saturating_add(members.len()));
        if take > 0 && take < outsiders.len() {
            outsiders.select_nth_unstable_by(take - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            outsiders.truncate(take);
        }
        outsiders.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let mut leave: Vec<TenantId> = Vec::new();
        let mut enter: Vec<TenantId> = Vec::new();
        // `k` shrank (a reload): the weakest go.
        let excess = members.len().saturating_sub(k);
        leave.extend(members[..excess].iter().map(|(_, id)| (*id).clone()));
        let remaining = members.split_off(excess);
        let mut free = k.saturating_sub(remaining.len());
        let mut weakest = remaining.into_iter().peekable();
        for (score, id) in outsiders {
            if free > 0 {
                free -= 1;
                enter.push(id.clone());
                continue;
            }
            match weakest.peek() {
                Some(&(w, wid)) if score > w.saturating_mul(2) => {
                    leave.push(wid.clone());
                    enter.push(id.clone());
                    weakest.next();
                }
                _ => break,
            }
        }
        for id in leave {
            if let Some(t) = self.tracked.get_mut(&id) {
                t.member = false;
            }
        }
        for id in enter {
            if let Some(t) = self.tracked.get_mut(&id) {
                t.member = true;
                t.own.get_or_insert_with(Default::default);
            }
        }
        for t in self.tracked.values_mut() {
            if t.always && !t.member {
                t.member = true;
                t.own.get_or_insert_with(Default::default);
            }
        }
    }

    /// Tenants with series of their own, and what those show.
    pub fn members(&self) -> impl Iterator<Item = (&TenantId, &Counters)> {
        self.tracked
            .iter()
            .filter(|(_, t)| t.member)
            .filter_map(|(id, t)| Some((id, t.own.as_deref()?)))
    }

    pub fn is_member(&self, id: &TenantId) -> bool {
        self.tracked.get(id).is_some_and(|t| t.member)
    }

    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(transactions: u64) -> Counters {
        Counters {
            transactions,
            queries: transactions * 2,
            bytes_in: transactions * 100,
            ..Counters::default()
        }
    }

    /// Every exported value: the members' own and `_other`, by name.
    fn exported(topk: &TopK) -> HashMap<String, Counters> {
        let mut m: HashMap<String, Counters> = topk
            .members()
            .map(|(id, c)| (id.as_str().to_owned(), *c))
            .collect();
        m.insert("_other".into(), topk.other);
        m
    }

    fn assert_not_below(before: &HashMap<String, Counters>, after: &HashMap<String, Counters>) {
        for (name, b) in before {
            // A series that disappeared may come back later; while shown
            // it must never go down.
            if let Some(a) = after.get(name) {
                assert!(a.transactions >= b.transactions, "{name} went down");
                assert!(a.queries >= b.queries, "{name} went down");
                assert!(a.bytes_in >= b.bytes_in, "{name} went down");
            }
        }
    }

    #[test]
    fn a_hundred_thousand_tenants_stay_bounded_and_monotonic() {
        const TENANTS: u64 = 100_000;
        const K: usize = 100;
        let ids: Vec<TenantId> = (0..TENANTS)
            .map(|i| TenantId::new(format!("t{i}")))
            .collect();
        let mut raw = vec![0u64; TENANTS as usize];
        let mut topk = TopK::default();
        let mut before = HashMap::new();
        let mut sets = Vec::new();
        for round in 0..12u64 {
            // Every tenant does a little; a moving window of 300 tenants
            // is busy, so the top K churns from round to round.
            for (i, r) in raw.iter_mut().enumerate() {
                let i = i as u64;
                *r += 1;
                let start = (round * 250) % TENANTS;
                if i >= start && i < start + 300 {
                    *r += 1_000 + i % 7;
                }
            }
            topk.begin();
            for (i, id) in ids.iter().enumerate() {
                // Two watched tenants.
                topk.observe(id, counters(raw[i]), i < 2);
            }
            topk.finish(K);
            let now = exported(&topk);
            // Own series: at most K busy ones and the 2 watched; plus
            // `_other`.
            assert!(now.len() <= K + 2 + 1, "{} series sets", now.len());
            assert_not_below(&before, &now);
            // Nothing lost or counted twice: every growth went to one
            // tenant's own series or to `_other`.
            assert_eq!(topk.total.transactions, raw.iter().sum::<u64>());
            let own: u64 = topk
                .tracked
                .values()
                .filter_map(|t| t.own.as_deref())
                .map(|c| c.transactions)
                .sum();
            assert_eq!(own + topk.other.transactions, topk.total.transactions);
            sets.push(
                topk.members()
                    .map(|(id, _)| id.clone())
                    .collect::<std::collections::HashSet<_>>(),
            );
            before = now;
        }
        assert!(
            topk.is_member(&ids[0]) && topk.is_member(&ids[1]),
            "watched"
        );
        // The set did churn (otherwise the test proves nothing).
        assert!(sets.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(topk.tracked(), TENANTS as usize);
    }

    #[test]
    fn hysteresis_keeps_a_member_until_clearly_beaten() {
        let a = TenantId::new("a");
        let b = TenantId::new("b");
        let mut topk = TopK::default();
        let (mut ra, mut rb) = (0, 0);
        let mut round = |topk: &mut TopK, da: u64, db: u64| {
            ra += da;
            rb += db;
            topk.begin();
            topk.observe(&a, counters(ra), false);
            topk.observe(&b, counters(rb), false);
            topk.finish(1);
        };
        round(&mut topk, 100, 10);
        assert!(topk.is_member(&a));
        // b busier than a, not twice as busy: a stays.
        round(&mut topk, 100, 200);
        assert!(topk.is_member(&a) && !topk.is_member(&b));
        // b far busier for a while: b takes the place.
        for _ in 0..4 {
            round(&mut topk, 10, 1_000);
        }
        assert!(topk.is_member(&b) && !topk.is_member(&a));
    }

    #[test]
    fn a_removed_tenant_disappears_and_a_returning_one_goes_on() {
        let a = TenantId::new("a");
        let mut topk = TopK::default();
        topk.begin();
        topk.observe(&a, counters(5), false);
        topk.finish(1);
        topk.begin();
        topk.observe(&a, counters(9), false);
        topk.finish(1);
        assert_eq!(topk.members().count(), 1);
        let shown = topk.members().map(|(_, c)| c.transactions).sum::<u64>();
        assert_eq!(shown, 4, "grew by 4 while it had series of its own");
        assert_eq!(topk.other.transactions, 5, "before that it was in _other");
        topk.begin();
        topk.finish(1);
        assert_eq!(topk.members().count(), 0, "removed: its series are gone");
        assert_eq!(topk.other.transactions, 5, "_other does not go down");
    }

    #[test]
    fn an_always_tenant_has_all_its_counts_from_the_start() {
        let a = TenantId::new("a");
        let mut topk = TopK::default();
        topk.begin();
        topk.observe(&a, counters(5), true);
        topk.finish(0);
        assert_eq!(topk.members().map(|(_, c)| c.transactions).sum::<u64>(), 5);
        assert_eq!(topk.other.transactions, 0);
    }
}
