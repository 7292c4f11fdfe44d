//! Failed logins, limited per client address and user (issue 20, point
//! 6): after `auth_failure_limit` failures within `auth_failure_window`,
//! that user's logins from that address are refused for `auth_ban_time`
//! without an exchange. Never per tenant: a tenant's name is public, and
//! a tenant-wide ban would let anyone lock every user of it out.
//!
//! An address is an IPv4 address or an IPv6 /64 (one host usually owns a
//! whole /64, so counting single IPv6 addresses would count nothing).
//! Memory is bounded: at most [`MAX_ADDRESSES`] addresses, each with at
//! most [`USERS_PER_ADDRESS`] users of its own; further users from that
//! address share one counter, so trying many user names from one address
//! is limited too. When the table is full, expired entries are swept; if
//! it is still full, failures from new addresses are not tracked (logged:
//! filling it takes a hundred thousand failed logins within one window).
//!
//! A shard is locked for one update, never across an await.

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Addresses tracked at once.
pub const MAX_ADDRESSES: usize = 100_000;
/// Users counted on their own per address; more share one counter.
pub const USERS_PER_ADDRESS: usize = 16;

/// The limits, read from the login's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures before the ban; 0 turns the limit off.
    pub failures: u32,
    pub window: Duration,
    pub ban: Duration,
}

impl Limits {
    pub fn of(proxy: &crate::config::ProxyConfig) -> Limits {
        Limits {
            failures: proxy.auth_failure_limit,
            window: proxy.auth_failure_window,
            ban: proxy.auth_ban_time,
        }
    }
}

/// Whom a login is for: a tenant's user, an operator, an admin user.
/// Tenant and user as resolved, so every spelling of one login
/// (`app.acme`, `app` + database `acme`, `options`) counts together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Who(pub String);

impl Who {
    pub fn tenant_user(tenant: &str, user: &str) -> Who {
        Who(format!("{tenant}/{user}"))
    }
    pub fn operator(name: &str) -> Who {
        Who(format!("operator:{name}"))
    }
    pub fn admin(user: &str) -> Who {
        Who(format!("admin:{user}"))
    }
}

#[derive(Debug)]
struct Counter {
    failures: u32,
    since: Instant,
    banned_until: Option<Instant>,
}

impl Counter {
    fn new(now: Instant) -> Counter {
        Counter {
            failures: 0,
            since: now,
            banned_until: None,
        }
    }

    fn banned(&self, now: Instant) -> Option<Duration> {
        self.banned_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Nothing left to remember at `now`.
    fn expired(&self, now: Instant, limits: Limits) -> bool {
        self.banned(now).is_none() && now.duration_since(self.since) >= limits.window
    }

    /// Counts a failure; true if it starts a ban.
    fn fail(&mut self, now: Instant, limits: Limits) -> bool {
        if self.banned(now).is_some() {
            return false;
        }
        if now.duration_since(self.since) >= limits.window {
            *self = Counter::new(now);
        }
        self.failures += 1;
        if self.failures >= limits.failures {
            self.banned_until = Some(now + limits.ban);
            self.failures = 0;
            self.since = now;
            return true;
        }
        false
    }
}

#[derive(Debug, Default)]
struct Address {
    users: Vec<(Who, Counter)>,
    /// Users past the first [`USERS_PER_ADDRESS`], counted together.
    others: Option<Counter>,
}

impl Address {
    fn counter(&mut self, who: &Who, now: Instant) -> &mut Counter {
        if let Some(i) = self.users.iter().position(|(w, _)| w == who) {
            return &mut self.users[i].1;
        }
        if self.users.len() < USERS_PER_ADDRESS {
            self.users.push((who.clone(), Counter::new(now)));
            let last = self.users.len() - 1;
            return &mut self.users[last].1;
        }
        self.others.get_or_insert_with(|| Counter::new(now))
    }

    fn find(&self, who: &Who) -> Option<&Counter> {
        match self.users.iter().find(|(w, _)| w == who) {
            Some((_, c)) => Some(c),
            None if self.users.len() >= USERS_PER_ADDRESS => self.others.as_ref(),
            None => None,
        }
    }

    fn sweep(&mut self, now: Instant, limits: Limits) -> bool {
        self.users.retain(|(_, c)| !c.expired(now, limits));
        if self.others.as_ref().is_some_and(|c| c.expired(now, limits)) {
            self.others = None;
        }
        self.users.is_empty() && self.others.is_none()
    }
}

/// What became of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Counted,
    /// This failure reached the limit: the ban starts now.
    Banned,
    /// The table is full of live entries; not tracked.
    Untracked,
}

#[derive(Debug, Default)]
pub struct FailedLogins {
    addresses: DashMap<IpAddr, Address>,
    /// Bans started, and logins refused by one (for `/metrics`).
    bans: AtomicU64,
    refused: AtomicU64,
    /// Failures counted, so every [`SWEEP_EVERY`]th sweeps the table.
    failures: AtomicU64,
}

/// Failures between two sweeps of expired entries.
const SWEEP_EVERY: u64 = 4096;

/// The address a client is counted under.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl FailedLogins {
    /// How long `who`'s logins from `ip` stay refused, if they are.
    pub fn banned(&self, ip: IpAddr, who: &Who, limits: Limits) -> Option<Duration> {
        if limits.failures == 0 {
            return None;
        }
        let now = Instant::now();
        let left = self
            .addresses
            .get(&bucket(ip))
            .and_then(|a| a.find(who).and_then(|c| c.banned(now)));
        if left.is_some() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        left
    }

    /// Counts a failed login of `who` from `ip`.
    pub fn failed(&self, ip: IpAddr, who: &Who, limits: Limits) -> Failure {
        if limits.failures == 0 {
            return Failure::Counted;
        }
        let now = Instant::now();
        let key = bucket(ip);
        if self.failures.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(now, limits);
        }
        if !self.addresses.contains_key(&key) && self.addresses.len() >= MAX_ADDRESSES {
            self.sweep(now, limits);
            if self.addresses.len() >= MAX_ADDRESSES {
                return Failure::Untracked;
            }
        }
        let mut address = self.addresses.entry(key).or_default();
        if address.counter(who, now).fail(now, limits) {
            self.bans.fetch_add(1, Ordering::Relaxed);
            Failure::Banned
        } else {
            Failure::Counted
        }
    }

    /// A successful login of `who` from `ip` clears its count (not a ban:
    /// a banned login never gets to succeed).
    pub fn succeeded(&self, ip: IpAddr, who: &Who) {
        if let Some(mut a) = self.addresses.get_mut(&bucket(ip)) {
            a.users
                .retain(|(w, c)| w != who || c.banned_until.is_some());
        }
    }

    /// Drops what has expired (also run by the janitor).
    pub fn sweep(&self, now: Instant, limits: Limits) {
        self.addresses.retain(|_, a| !a.sweep(now, limits));
    }

    /// Bans started and logins refused by a ban, since start.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.bans.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        failures: 3,
        window: Duration::from_secs(60),
        ban: Duration::from_secs(300),
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_user_is_banned_from_one_address_only() {
        let f = FailedLogins::default();
        let app = Who::tenant_user("acme", "app");
        let a = ip("10.0.0.1");
        assert_eq!(f.failed(a, &app, LIMITS), Failure::Counted);
        assert_eq!(f.failed(a, &app, LIMITS), Failure::Counted);
        assert_eq!(f.banned(a, &app, LIMITS), None);
        assert_eq!(f.failed(a, &app, LIMITS), Failure::Banned);
        assert!(f.banned(a, &app, LIMITS).is_some());
        // Another address, another user of the tenant: not banned.
        assert_eq!(f.banned(ip("10.0.0.2"), &app, LIMITS), None);
        assert_eq!(
            f.banned(a, &Who::tenant_user("acme", "other"), LIMITS),
            None
        );
        // A success elsewhere does not lift it.
        f.succeeded(a, &app);
        assert!(f.banned(a, &app, LIMITS).is_some());
    }

    #[test]
    fn a_success_clears_the_count() {
        let f = FailedLogins::default();
        let app = Who::tenant_user("acme", "app");
        let a = ip("10.0.0.1");
        f.failed(a, &app, LIMITS);
        f.failed(a, &app, LIMITS);
        f.succeeded(a, &app);
        assert_eq!(f.failed(a, &app, LIMITS), Failure::Counted);
        assert_eq!(f.banned(a, &app, LIMITS), None);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let f = FailedLogins::default();
        let app = Who::admin("root");
        for i in 1..=3 {
            f.failed(ip(&format!("2001:db8:1:2::{i}")), &app, LIMITS);
        }
        assert!(f.banned(ip("2001:db8:1:2:ffff::9"), &app, LIMITS).is_some());
        assert_eq!(f.banned(ip("2001:db8:1:3::1"), &app, LIMITS), None);
        for _ in 0..3 {
            f.failed(ip("::ffff:192.0.2.7"), &app, LIMITS);
        }
        assert!(f.banned(ip("192.0.2.7"), &app, LIMITS).is_some());
    }

    #[test]
    fn many_user_names_from_one_address_share_a_counter() {
        let f = FailedLogins::default();
        let a = ip("10.0.0.1");
        for i in 0..USERS_PER_ADDRESS {
            f.failed(a, &Who::tenant_user("acme", &format!("u{i}")), LIMITS);
        }
        let mut banned = false;
        for i in 0..LIMITS.failures {
            banned |=
                f.failed(a, &Who::tenant_user("acme", &format!("x{i}")), LIMITS) == Failure::Banned;
        }
        assert!(banned, "fresh user names escaped the limit");
        assert!(
            f.banned(a, &Who::tenant_user("acme", "y"), LIMITS)
                .is_some()
        );
        // The first users keep their own counters.
        assert_eq!(f.banned(a, &Who::tenant_user("acme", "u0"), LIMITS), None);
    }

    #[test]
    fn the_table_is_bounded_and_off_means_off() {
        let f = FailedLogins::default();
        let who = Who::admin("a");
        let off = Limits {
            failures: 0,
            ..LIMITS
        };
        for _ in 0..10 {
            f.failed(ip("10.0.0.1"), &who, off);
        }
        assert!(f.is_empty());
        assert_eq!(f.banned(ip("10.0.0.1"), &who, off), None);
        let later = Instant::now() + Duration::from_secs(3600);
        f.failed(ip("10.0.0.1"), &who, LIMITS);
        f.sweep(later, LIMITS);
        assert!(f.is_empty(), "an expired count was kept");
    }
}
