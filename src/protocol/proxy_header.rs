//! The PROXY protocol header a load balancer puts before a client's first
//! byte to say whom it relays (HAProxy's `proxy-protocol.txt`): either
//! version recognised ([`detect`]) and parsed ([`parse`]); version 2
//! (binary, section 2.2) here, version 1 (text) in `proxy_v1`.
//!
//! Pure: no sockets, no trust decisions (the client side decides which
//! peers may send one). The bytes are hostile: every length is checked
//! before it is used, and a header longer than [`MAX_HEADER_LEN`] is
//! refused before it is read whole.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with. No PostgreSQL client can
/// start so: read as a startup packet length, `0x0D0A0D0A` is far past
/// any limit, and a TLS ClientHello starts with 0x16.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 (text) header starts so.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Signature, version/command, family/transport, length.
pub const FIXED_LEN: usize = 16;
/// The most the address block and TLVs may take. The spec allows 65,535;
/// addresses take at most 216 (AF_UNIX) and the TLVs load balancers send
/// (AWS's VPC endpoint id, GCP's PSC id, HAProxy's SSL facts) fit in the
/// rest. Anything longer is refused before it is buffered.
pub const MAX_BODY: usize = 512;
pub const MAX_HEADER_LEN: usize = FIXED_LEN + MAX_BODY;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Too few bytes to tell yet (all of them match a header's start).
    Incomplete,
    /// A PROXY protocol v2 header.
    V2,
    /// A PROXY protocol v1 (text) header.
    V1,
    /// Not a PROXY header (a startup packet, a TLS ClientHello...).
    Other,
}

/// Tells what `buf` starts with; decides as soon as one byte differs
/// from both signatures (for a startup packet, at its first byte).
pub fn detect(buf: &[u8]) -> Start {
    let matches = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    match (matches(&SIGNATURE), matches(V1_PREFIX)) {
        (true, _) if buf.len() >= SIGNATURE.len() => Start::V2,
        (_, true) if buf.len() >= V1_PREFIX.len() => Start::V1,
        (false, false) => Start::Other,
        _ => Start::Incomplete,
    }
}

/// The low nibble of the version/command byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The balancer's own connection (a health check): the socket's
    /// peer is the client.
    Local,
    /// A relayed connection.
    Proxy,
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub command: Command,
    /// The relayed client and the address it connected to: present for a
    /// PROXY command over TCP/IPv4 or TCP/IPv6; None for LOCAL, UNSPEC
    /// and AF_UNIX, where the socket's own peer stands.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// The server name the client asked the balancer for (the
    /// `PP2_TYPE_AUTHORITY` TLV: its TLS SNI where the balancer ended
    /// TLS), lower-cased; v2 PROXY headers only.
    pub authority: Option<String>,
    /// The balancer says the client reached it over TLS (`PP2_TYPE_SSL`
    /// with `PP2_CLIENT_SSL`); v2 PROXY headers only.
    pub client_tls: bool,
}

impl Header {
    /// The client this header names, if it names one.
    pub fn source(&self) -> Option<SocketAddr> {
        self.addresses.map(|(source, _)| source)
    }
}

/// Why a header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a PROXY protocol v2 header")]
    Signature,
    #[error("malformed PROXY protocol v1 header: {0}")]
    V1(&'static str),
    #[error("PROXY protocol header of version {0}; only version 2 is supported")]
    Version(u8),
    #[error("PROXY protocol header with unknown command {0:#x}")]
    Command(u8),
    #[error("PROXY protocol header with unknown address family/transport {0:#04x}")]
    Family(u8),
    #[error("PROXY protocol header relays a datagram connection ({0:#04x}); only TCP is served")]
    Datagram(u8),
    #[error("PROXY protocol header of {0} bytes after the fixed part; at most {MAX_BODY} accepted")]
    TooLong(usize),
    #[error("PROXY protocol header too short for its address family ({have} < {need} bytes)")]
    ShortAddresses { have: usize, need: usize },
    #[error("PROXY protocol header with a malformed TLV")]
    Tlv,
    #[error(
        "PROXY protocol header with a malformed authority TLV (a server name of \
         1-253 letters, digits, '-', '_' and '.', given once)"
    )]
    Authority,
}

/// Parses the header at the start of `buf`: `Ok(None)` while more bytes
/// are needed, else the header and the bytes it took (the rest of `buf`
/// is the client's). Refuses a v2 header whose declared length passes
/// [`MAX_BODY`] as soon as the length is read, and a v1 line without its
/// end within `proxy_v1::MAX_LEN` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    match detect(buf) {
        Start::Incomplete => return Ok(None),
        Start::V1 => return super::proxy_v1::parse(buf),
        Start::Other => return Err(HeaderError::Signature),
        Start::V2 => {}
    }
    let Some(fixed) = buf.get(..FIXED_LEN) else {
        return Ok(None);
    };
    let (ver_cmd, fam, len) = (
        fixed[12],
        fixed[13],
        u16::from_be_bytes([fixed[14], fixed[15]]) as usize,
    );
    if ver_cmd >> 4 != 2 {
        return Err(HeaderError::Version(ver_cmd >> 4));
    }
    let command = match ver_cmd & 0x0F {
        0 => Command::Local,
        1 => Command::Proxy,
        c => return Err(HeaderError::Command(c)),
    };
    if len > MAX_BODY {
        return Err(HeaderError::TooLong(len));
    }
    let Some(body) = buf.get(FIXED_LEN..FIXED_LEN + len) else {
        return Ok(None);
    };
    let taken = FIXED_LEN + len;
    // LOCAL: "the receiver must accept this connection as valid and must
    // use the real connection endpoints and discard the protocol block
    // including the family" (section 2.2).
    if command == Command::Local {
        return Ok(Some((
            Header {
                command,
                addresses: None,
                authority: None,
                client_tls: false,
            },
            taken,
        )));
    }
    let need = match fam {
        0x00 => 0,   // UNSPEC: the socket's endpoints stand
        0x11 => 12,  // TCP over IPv4
        0x21 => 36,  // TCP over IPv6
        0x31 => 216, // stream over AF_UNIX: no address of use here
        0x12 | 0x22 | 0x32 => return Err(HeaderError::Datagram(fam)),
        _ => return Err(HeaderError::Family(fam)),
    };
    if len < need {
        return Err(HeaderError::ShortAddresses { have: len, need });
    }
    let Tlvs {
        authority,
        client_tls,
    } = read_tlvs(&body[need..])?;
    let addresses = match fam {
        0x11 => Some(inet(body, 4)),
        0x21 => Some(inet(body, 16)),
        _ => None,
    };
    Ok(Some((
        Header {
            command,
            addresses,
            authority,
            client_tls,
        },
        taken,
    )))
}

/// Source and destination of an address block with `n`-byte addresses;
/// `body` holds at least `2 * n + 4` bytes (checked by the caller).
fn inet(body: &[u8], n: usize) -> (SocketAddr, SocketAddr) {
    let ip = |at: usize| -> IpAddr {
        let mut b = [0u8; 16];
        b[..n].copy_from_slice(&body[at..at + n]);
        if n == 4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(b))
        }
    };
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    (
        SocketAddr::new(ip(0), port(2 * n)),
        SocketAddr::new(ip(n), port(2 * n + 2)),
    )
}

/// `PP2_TYPE_AUTHORITY`: the host name the client asked for (section
/// 2.2.2), "typically the SNI" of a TLS connection the balancer ended.
const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// Longest DNS name (RFC 1035, in text form without the final dot).
const MAX_AUTHORITY: usize = 253;

/// `PP2_TYPE_SSL`: how the client reached the balancer (section 2.2.5):
/// a `client` bit field, a 4-byte `verify`, then sub-TLVs.
const PP2_TYPE_SSL: u8 = 0x20;

/// In `PP2_TYPE_SSL`'s `client` field: the client connected over TLS.
const PP2_CLIENT_SSL: u8 = 0x01;

/// What the used TLVs say.
#[derive(Default)]
struct Tlvs {
    authority: Option<String>,
    client_tls: bool,
}

/// TLVs (type, 2-byte length, value) must tile what follows the
/// addresses exactly: a header whose framing lies is refused whatever
/// its TLVs hold. Of their contents only the authority (a server name,
/// given at most once) and whether the client used TLS are read.
fn read_tlvs(mut rest: &[u8]) -> Result<Tlvs, HeaderError> {
    let mut tlvs = Tlvs::default();
    let mut ssl_seen = false;
    while !rest.is_empty() {
        let [kind, hi, lo, ..] = *rest else {
            return Err(HeaderError::Tlv);
        };
        let end = 3 + u16::from_be_bytes([hi, lo]) as usize;
        let value = rest.get(3..end).ok_or(HeaderError::Tlv)?;
        match kind {
            PP2_TYPE_AUTHORITY => {
                let name_chars =
                    |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
                if tlvs.authority.is_some()
                    || value.is_empty()
                    || value.len() > MAX_AUTHORITY
                    || !value.iter().all(name_chars)
                {
                    return Err(HeaderError::Authority);
                }
                tlvs.authority = Some(String::from_utf8_lossy(value).to_ascii_lowercase());
            }
            PP2_TYPE_SSL => {
                // The client byte and the verify word at least, once.
                if ssl_seen || value.len() < 5 {
                    return Err(HeaderError::Tlv);
                }
                ssl_seen = true;
                tlvs.client_tls = value[0] & PP2_CLIENT_SSL != 0;
            }
            _ => {}
        }
        rest = &rest[end..];
    }
    Ok(tlvs)
}

/// A v2 header relaying `source` → `destination` (same family), with
/// `tlvs` appended as given; for tests and tools.
pub fn encode(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    let mut body = Vec::new();
    let fam = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x11
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            0x21
        }
    };
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    body.extend_from_slice(tlvs);
    out.push(0x21);
    out.push(fam);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A v2 LOCAL header (a balancer's health check), with no addresses.
pub fn encode_local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

#[cfg(test)]
#[path = "proxy_header_tests.rs"]
mod tests;
