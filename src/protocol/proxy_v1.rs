//! The PROXY protocol v1 header: one line of text a load balancer puts
//! before a client's first byte (HAProxy's `proxy-protocol.txt`, section
//! 2.1), still all some balancers send (AWS Classic Load Balancer, older
//! nginx and HAProxy setups):
//!
//! ```text
//! PROXY TCP4 203.0.113.7 10.0.0.5 40001 6432\r\n
//! PROXY TCP6 2001:db8::5 2001:db8::1 40001 6432\r\n
//! PROXY UNKNOWN ...\r\n
//! ```
//!
//! Strict as the spec asks: single spaces, the family's own address
//! syntax, decimal ports without sign or leading zeros, CRLF within 107
//! bytes; anything else is refused, never guessed at.

use super::proxy_header::{Command, Header, HeaderError};
use std::net::{IpAddr, SocketAddr};

/// The longest v1 header, CRLF included (section 2.1).
pub const MAX_LEN: usize = 107;

/// Parses the v1 header at the start of `buf` (which starts `PROXY `):
/// `Ok(None)` while its line is not yet whole, else the header and the
/// bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    let window = &buf[..buf.len().min(MAX_LEN)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_LEN || window.contains(&b'\n') {
            Err(HeaderError::V1("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = &window[..end];
    // The CRLF ends the line and nothing else may: a bare CR or LF
    // before it would make a prefix of the line read as a broken one.
    if line.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(HeaderError::V1("a CR or LF inside the line"));
    }
    let line = std::str::from_utf8(line).map_err(|_| HeaderError::V1("not ASCII"))?;
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(HeaderError::V1("does not start with PROXY"));
    }
    let taken = end + 2;
    let family = fields.next().ok_or(HeaderError::V1("no protocol"))?;
    let v6 = match family {
        // "the receiver must ignore anything presented before the CRLF"
        "UNKNOWN" => {
            return Ok(Some((
                Header {
                    command: Command::Proxy,
                    addresses: None,
                    authority: None,
                    client_tls: false,
                },
                taken,
            )));
        }
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(HeaderError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let mut next = || fields.next().ok_or(HeaderError::V1("too few fields"));
    let (src, dst) = (address(next()?, v6)?, address(next()?, v6)?);
    let (sport, dport) = (port(next()?)?, port(next()?)?);
    if fields.next().is_some() {
        return Err(HeaderError::V1("too many fields"));
    }
    let addresses = Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport)));
    Ok(Some((
        Header {
            command: Command::Proxy,
            addresses,
            authority: None,
            client_tls: false,
        },
        taken,
    )))
}

/// An address of the family the line names (IPv4 dotted quad for TCP4,
/// IPv6 text for TCP6).
fn address(text: &str, v6: bool) -> Result<IpAddr, HeaderError> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| HeaderError::V1("malformed address"))?;
    if ip.is_ipv6() != v6 {
        return Err(HeaderError::V1(
            "address of another family than the protocol",
        ));
    }
    Ok(ip)
}

/// A port: 0 to 65535 in decimal, digits only, no leading zero.
fn port(text: &str) -> Result<u16, HeaderError> {
    let bad = HeaderError::V1("malformed port");
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(bad);
    }
    text.parse().map_err(|_| bad)
}

/// A v1 header relaying `source` → `destination` (same family); for tests
/// and tools.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv6() { "TCP6" } else { "TCP4" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn tcp4_tcp6_and_unknown() {
        let mut buf = b"PROXY TCP4 203.0.113.7 10.0.0.5 40001 6432\r\nrest".to_vec();
        let (h, taken) = parse(&buf).expect("valid").expect("whole");
        assert_eq!(&buf[taken..], b"rest");
        assert_eq!(
            h.addresses,
            Some((addr("203.0.113.7:40001"), addr("10.0.0.5:6432")))
        );
        buf = b"PROXY TCP6 2001:db8::5 ::1 65535 0\r\n".to_vec();
        let (h, _) = parse(&buf).expect("valid").expect("whole");
        assert_eq!(
            h.addresses,
            Some((addr("[2001:db8::5]:65535"), addr("[::1]:0")))
        );
        let (h, taken) = parse(b"PROXY UNKNOWN whatever 1 2\r\nX")
            .expect("valid")
            .expect("whole");
        assert_eq!((h.addresses, taken), (None, 28));
        let (h, _) = parse(b"PROXY UNKNOWN\r\n").expect("valid").expect("whole");
        assert_eq!(h.addresses, None);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let full = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        for n in 6..full.len() {
            assert_eq!(parse(&full[..n]), Ok(None), "{n} bytes");
        }
    }

    #[test]
    fn refusals() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(MAX_LEN, b'x');
        assert_eq!(
            parse(&long),
            Err(HeaderError::V1("no CRLF within 107 bytes"))
        );
        long.truncate(MAX_LEN - 2);
        long.extend_from_slice(b"\r\n");
        assert!(parse(&long).expect("valid").is_some(), "107 bytes exactly");
    }

    proptest! {
        /// Arbitrary bytes after the prefix never panic, and an accepted
        /// header never takes more than the buffer or the limit.
        /// Every prefix of an accepted header asks for more.
        #[test]
        fn arbitrary_lines(
            tail in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b' ')],
                0..200,
            ),
        ) {
            let mut buf = b"PROXY ".to_vec();
            buf.extend_from_slice(&tail);
            if let Ok(Some((_, taken))) = parse(&buf) {
                prop_assert!(taken <= buf.len() && taken <= MAX_LEN);
                for n in 6..taken {
                    prop_assert_eq!(parse(&buf[..n]), Ok(None));
                }
            }
        }

        /// An UNKNOWN line with anything but CR and LF before its end is
        /// accepted, and all its prefixes ask for more.
        #[test]
        fn unknown_lines(
            rest in proptest::collection::vec(
                any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
                0..80,
            ),
        ) {
            let mut buf = b"PROXY UNKNOWN ".to_vec();
            buf.extend_from_slice(&rest);
            buf.extend_from_slice(b"\r\n");
            if std::str::from_utf8(&rest).is_ok() {
                let (h, taken) = parse(&buf).expect("valid").expect("whole");
                prop_assert_eq!((h.addresses, taken), (None, buf.len()));
                for n in 6..taken {
                    prop_assert_eq!(parse(&buf[..n]), Ok(None));
                }
            }
        }

        /// What `encode` writes parses back, whole and exactly.
        #[test]
        fn round_trip(s in any::<SocketAddr>(), d in any::<SocketAddr>(), tail in proptest::collection::vec(any::<u8>(), 0..20)) {
            let d = match (s, d) {
                (SocketAddr::V4(_), SocketAddr::V6(v6)) => SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::from(v6.ip().to_bits() as u32)), d.port()),
                (SocketAddr::V6(_), SocketAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), d.port()),
                _ => d,
            };
            // The line carries no scope id or flow info.
            let plain = |a: SocketAddr| SocketAddr::new(a.ip(), a.port());
            let mut buf = encode(s, d);
            let len = buf.len();
            buf.extend_from_slice(&tail);
            let (h, taken) = parse(&buf).expect("valid").expect("whole");
            prop_assert_eq!(taken, len);
            prop_assert_eq!(h.addresses, Some((plain(s), plain(d))));
        }
    }
}
