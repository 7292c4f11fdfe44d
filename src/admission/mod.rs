//! Counting client connections from accept until they authenticate:
//! a proxy-wide cap and a per-source-address cap, checked in the accept
//! loop before a connection costs more than its socket.
//!
//! Authenticated clients are counted elsewhere (`state`, against
//! `max_client_connections` and the tenant's limit), so a flood of
//! connections that never log in can hold at most its own budget and
//! never an authenticated client's slot.
//!
//! The last tenth of the total is kept for addresses with fewer than
//! [`LIGHT`] logins in flight: a flood from a few addresses fills the rest
//! and is then refused, while other clients still get in. (The
//! per-address cap cannot be that low: it also bounds one host's burst of
//! logins.) To lock others out, a flood must come from many addresses.
//!
//! Must not block: the accept loop calls [`Unauthenticated::admit`] on
//! every connection; a map shard is locked for one update and never
//! across an await.

pub mod failed_logins;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Logins in flight from one address below which the reserve is open to
/// it.
pub const LIGHT: u32 = 4;

/// Unauthenticated connections open right now.
#[derive(Debug, Default)]
pub struct UnauthenticatedCounts {
    total: AtomicU32,
    /// Keyed by client-chosen addresses: std's SipHash with a random key
    /// (dashmap's default), so nobody can aim many addresses at one shard
    /// (see `catalog::FastHash` for where a fast hash is fine instead).
    /// An entry is removed when its count reaches zero: the map holds only
    /// addresses with a connection open, never more than `total` entries.
    per_address: DashMap<IpAddr, u32>,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_unauthenticated_connections` reached.
    Total,
    /// `max_unauthenticated_per_address` reached for the peer's address.
    Address,
}

impl Refusal {
    /// What the client is told (SQLSTATE 53300).
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Total => "too many connections to pgtenant are logging in; try again later",
            Refusal::Address => {
                "too many connections from this address are logging in; try again later"
            }
        }
    }
}

/// The caps, as configured.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub total: u32,
    pub per_address: u32,
}

impl Caps {
    pub fn of(proxy: &crate::config::ProxyConfig) -> Caps {
        Caps {
            total: proxy.max_unauthenticated_connections,
            per_address: proxy.max_unauthenticated_per_address,
        }
    }
}

/// One unauthenticated connection, counted until dropped.
#[derive(Debug)]
pub struct Unauthenticated {
    counts: Arc<UnauthenticatedCounts>,
    /// None while a load balancer's connection waits for its PROXY
    /// header to name the client (see [`Unauthenticated::admit_relayed`]).
    address: Option<IpAddr>,
}

impl Unauthenticated {
    /// Counts a connection from `peer`, or says which cap it is over.
    pub fn admit(
        counts: &Arc<UnauthenticatedCounts>,
        peer: IpAddr,
        caps: Caps,
    ) -> Result<Unauthenticated, Refusal> {
        let mut admitted = Unauthenticated::admit_relayed(counts, caps)?;
        admitted.set_address(peer, caps)?;
        Ok(admitted)
    }

    /// Counts a connection from a trusted load balancer against the total
    /// only: its address is every relayed client's, so the per-address
    /// cap waits for the client its PROXY header names
    /// ([`Unauthenticated::set_address`]).
    pub fn admit_relayed(
        counts: &Arc<UnauthenticatedCounts>,
        caps: Caps,
    ) -> Result<Unauthenticated, Refusal> {
        counts
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < caps.total).then_some(n + 1)
            })
            .map_err(|_| Refusal::Total)?;
        Ok(Unauthenticated {
            counts: Arc::clone(counts),
            address: None,
        })
    }

    /// Counts this connection against `peer`'s per-address cap (once; a
    /// second call changes nothing). On a refusal the connection is still
    /// counted in the total until dropped, which the caller does at once.
    pub fn set_address(&mut self, peer: IpAddr, caps: Caps) -> Result<(), Refusal> {
        if self.address.is_some() {
            return Ok(());
        }
        // An IPv4 client of a dual-stack listener arrives as
        // ::ffff:a.b.c.d; it is the same address as a.b.c.d.
        let address = peer.to_canonical();
        // This connection is already in the total: the others are `- 1`.
        let before = self.counts.total.load(Ordering::Acquire).saturating_sub(1);
        let in_reserve = before >= caps.total - caps.total / 10;
        let refusal = match self.counts.per_address.entry(address) {
            Entry::Occupied(e) if *e.get() >= caps.per_address => Some(Refusal::Address),
            Entry::Occupied(e) if in_reserve && *e.get() >= LIGHT => Some(Refusal::Total),
            Entry::Occupied(mut e) => {
                *e.get_mut() += 1;
                None
            }
            Entry::Vacant(e) => {
                e.insert(1);
                None
            }
        };
        match refusal {
            Some(refusal) => Err(refusal),
            None => {
                self.address = Some(address);
                Ok(())
            }
        }
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        if let Some(address) = self.address
            && let Entry::Occupied(mut e) = self.counts.per_address.entry(address)
        {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl UnauthenticatedCounts {
    /// Unauthenticated connections open now.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Acquire)
    }

    /// Unauthenticated connections open now from `address`.
    pub fn from_address(&self, address: IpAddr) -> u32 {
        self.per_address
            .get(&address.to_canonical())
            .map_or(0, |n| *n)
    }

    /// Addresses with an unauthenticated connection open.
    pub fn addresses(&self) -> usize {
        self.per_address.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    const CAPS: Caps = Caps {
        total: 5,
        per_address: 2,
    };

    #[test]
    fn per_address_cap_is_per_address() {
        let counts = Arc::new(UnauthenticatedCounts::default());
        let a1 = Unauthenticated::admit(&counts, v4(1), CAPS).expect("first");
        let a2 = Unauthenticated::admit(&counts, v4(1), CAPS).expect("second");
        assert_eq!(
            Unauthenticated::admit(&counts, v4(1), CAPS).err(),
            Some(Refusal::Address)
        );
        // A refusal leaves no trace in the counts.
        assert_eq!(counts.total(), 2);
        assert_eq!(counts.from_address(v4(1)), 2);
        // Another address is not limited by the first one's count.
        let b1 = Unauthenticated::admit(&counts, v4(2), CAPS).expect("other address");
        assert_eq!(counts.from_address(v4(2)), 1);
        drop(a1);
        assert_eq!(counts.from_address(v4(1)), 1);
        let a3 = Unauthenticated::admit(&counts, v4(1), CAPS).expect("after a release");
        drop((a2, a3, b1));
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn total_cap_holds_across_addresses() {
        let counts = Arc::new(UnauthenticatedCounts::default());
        let held: Vec<_> = (0..5)
            .map(|i| Unauthenticated::admit(&counts, v4(i), CAPS).expect("under the cap"))
            .collect();
        assert_eq!(
            Unauthenticated::admit(&counts, v4(100), CAPS).err(),
            Some(Refusal::Total)
        );
        assert_eq!(counts.from_address(v4(100)), 0);
        assert_eq!(counts.addresses(), 5);
        drop(held);
        assert_eq!(counts.total(), 0);
        Unauthenticated::admit(&counts, v4(100), CAPS).expect("room again");
    }

    #[test]
    fn the_reserve_is_for_light_addresses() {
        let counts = Arc::new(UnauthenticatedCounts::default());
        let caps = Caps {
            total: 100,
            per_address: 60,
        };
        let heavy = |i: u8| IpAddr::V4(Ipv4Addr::new(10, 1, 0, i));
        // Two addresses take the first 90 (the rest is the reserve).
        let mut held: Vec<_> = (0..90)
            .map(|i| Unauthenticated::admit(&counts, heavy(i % 2), caps).expect("general"))
            .collect();
        assert_eq!(
            Unauthenticated::admit(&counts, heavy(0), caps).err(),
            Some(Refusal::Total),
            "a heavy address is kept out of the reserve"
        );
        // Addresses with fewer than LIGHT logins in flight get in...
        for i in 0..(LIGHT as usize * 2) {
            held.push(
                Unauthenticated::admit(&counts, v4((i / LIGHT as usize) as u8), caps)
                    .expect("a light address in the reserve"),
            );
        }
        // ...up to LIGHT each.
        assert_eq!(
            Unauthenticated::admit(&counts, v4(0), caps).err(),
            Some(Refusal::Total)
        );
        assert_eq!(counts.total(), 98);
        held.push(Unauthenticated::admit(&counts, v4(7), caps).expect("99"));
        held.push(Unauthenticated::admit(&counts, v4(8), caps).expect("100"));
        assert_eq!(
            Unauthenticated::admit(&counts, v4(9), caps).err(),
            Some(Refusal::Total)
        );
        // Below the reserve, only the per-address cap applies again.
        held.truncate(80);
        Unauthenticated::admit(&counts, heavy(0), caps).expect("general again");
    }

    #[test]
    fn entries_are_removed_at_zero() {
        let counts = Arc::new(UnauthenticatedCounts::default());
        for round in 0..3u8 {
            let held: Vec<_> = (0..4)
                .map(|i| {
                    Unauthenticated::admit(&counts, v4(round * 4 + i), CAPS).expect("admitted")
                })
                .collect();
            assert_eq!(counts.addresses(), 4);
            drop(held);
            assert_eq!(counts.addresses(), 0, "round {round}");
        }
        // Refused connections never create an entry either.
        let _held: Vec<_> = (0..5)
            .map(|i| Unauthenticated::admit(&counts, v4(i), CAPS).expect("admitted"))
            .collect();
        for i in 50..60 {
            assert!(Unauthenticated::admit(&counts, v4(i), CAPS).is_err());
        }
        assert_eq!(counts.addresses(), 5);
    }

    #[test]
    fn relayed_connections_count_per_client_once_named() {
        let counts = Arc::new(UnauthenticatedCounts::default());
        // Many at once from one balancer: only the total limits them.
        let mut held: Vec<_> = (0..4)
            .map(|_| Unauthenticated::admit_relayed(&counts, CAPS).expect("relayed"))
            .collect();
        assert_eq!((counts.total(), counts.addresses()), (4, 0));
        held[0].set_address(v4(1), CAPS).expect("first from .1");
        held[1].set_address(v4(1), CAPS).expect("second from .1");
        held[1]
            .set_address(v4(2), CAPS)
            .expect("a second call changes nothing");
        assert_eq!(held[2].set_address(v4(1), CAPS), Err(Refusal::Address));
        held[3].set_address(v4(2), CAPS).expect("another client");
        assert_eq!(
            (counts.from_address(v4(1)), counts.from_address(v4(2))),
            (2, 1)
        );
        assert_eq!(
            Unauthenticated::admit_relayed(&counts, CAPS).err(),
            None,
            "the fifth fits the total"
        );
        drop(held);
        assert_eq!((counts.total(), counts.addresses()), (0, 0));
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let counts = Arc::new(UnauthenticatedCounts::default());
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let _a = Unauthenticated::admit(&counts, v4(1), CAPS).expect("v4");
        let _b = Unauthenticated::admit(&counts, mapped, CAPS).expect("mapped");
        assert_eq!(
            Unauthenticated::admit(&counts, mapped, CAPS).err(),
            Some(Refusal::Address)
        );
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let _c = Unauthenticated::admit(&counts, v6, CAPS).expect("a v6 address of its own");
        assert_eq!(counts.from_address(v4(1)), 2);
    }

    #[test]
    fn concurrent_admits_never_exceed_the_caps() {
        let counts = Arc::new(UnauthenticatedCounts::default());
        let caps = Caps {
            total: 40,
            per_address: 7,
        };
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let counts = Arc::clone(&counts);
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..2_000u32 {
                        let addr = v4((i % 9) as u8);
                        if i % 3 == 0 {
                            held.pop();
                        }
                        if let Ok(u) = Unauthenticated::admit(&counts, addr, caps) {
                            held.push(u);
                        }
                        assert!(counts.total() <= caps.total, "thread {t}");
                        assert!(counts.from_address(addr) <= caps.per_address);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert_eq!(counts.total(), 0);
        assert_eq!(counts.addresses(), 0);
    }
}
