//! Address ranges in CIDR notation (`"10.0.0.0/8"`, `"fd00::/8"`, or one
//! address, `"127.0.0.1"`), for `proxy.proxy_protocol_networks`: the load
//! balancers whose PROXY protocol header is believed.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::IpAddr;

/// One address range.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address (all its bits).
    /// Host bits must be zero: `10.0.0.1/8` is more likely a mistake than
    /// a way to write `10.0.0.0/8`, and a trust list must say what it means.
    pub fn parse(s: &str) -> Result<Network, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a network such as \"10.0.0.0/8\""))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let net = Network { addr, prefix };
        if net.masked(addr) != addr {
            return Err(format!(
                "{s:?} has host bits set; the network is {}/{prefix}",
                net.masked(addr)
            ));
        }
        Ok(net)
    }

    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address (a
    /// dual-stack listener's view of an IPv4 peer) counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }
}

/// Whether `ip` is in any of `networks`.
pub fn any_contains(networks: &[Network], ip: IpAddr) -> bool {
    networks.iter().any(|n| n.contains(ip))
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Network::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ranges() {
        let n = Network::parse("10.0.0.0/8").expect("valid");
        assert!(n.contains(ip("10.255.1.2")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.1.2.3")), "mapped IPv4");
        assert!(!n.contains(ip("::a00:1")), "an IPv6 address is not IPv4");
        let one = Network::parse("127.0.0.1").expect("bare address");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all = Network::parse("0.0.0.0/0").expect("everything");
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("::1")));
        let v6 = Network::parse("fd00::/8").expect("v6");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(
            Network::parse("::/0")
                .expect("all v6")
                .contains(ip("2001:db8::1"))
        );
        assert_eq!(format!("{n}"), "10.0.0.0/8");
    }

    #[test]
    fn refusals() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "fd00::1/8",
            "::/129",
            "example.com",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(Network::parse(bad).is_err(), "{bad:?}");
        }
        let e = Network::parse("10.0.0.1/8").expect_err("host bits");
        assert!(e.contains("10.0.0.0/8"), "{e}");
    }
}
