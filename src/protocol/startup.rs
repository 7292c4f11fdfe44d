//! The untagged packets a client may send before it is authenticated:
//! SSLRequest, GSSENCRequest, CancelRequest and StartupMessage
//! (protocol docs, "Message Formats").

/// libpq and PostgreSQL both refuse startup packets longer than this
/// (`MAX_STARTUP_PACKET_LENGTH` in `src/include/libpq/pqcomm.h`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A startup-phase packet, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(Startup),
}

/// The `(process id, secret)` pair of a BackendKeyData / CancelRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
}

/// A StartupMessage: protocol version and parameters in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
    #[error("invalid startup packet: parameters are not valid UTF-8")]
    NotUtf8,
}

/// The length word of a startup packet, checked before its body is read.
/// `buf` holds at least 4 bytes.
pub fn packet_len(buf: [u8; 4]) -> Result<usize, StartupError> {
    let len = i32::from_be_bytes(buf);
    if !(8..=MAX_STARTUP_PACKET_LEN as i32).contains(&len) {
        return Err(StartupError::BadLength(len.into()));
    }
    Ok(len as usize)
}

/// The checked length word at the front of `buf`; None while `buf` holds
/// fewer than its 4 bytes.
pub fn declared_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    match buf {
        [a, b, c, d, ..] => packet_len([*a, *b, *c, *d]).map(Some),
        _ => Ok(None),
    }
}

/// Parses one whole packet (length word included).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    let len = declared_len(packet)?.ok_or(StartupError::Malformed("short packet"))?;
    if packet.len() != len {
        return Err(StartupError::Malformed("length does not match"));
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !body.is_empty() => {
            Err(StartupError::Malformed("encryption request with a body"))
        }
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            // Protocol 3.2 allows longer secrets; pgtenant issues 4-byte
            // keys, so any other length cannot be one of ours.
            if body.len() != 8 {
                return Err(StartupError::Malformed(
                    "cancel request of the wrong length",
                ));
            }
            Ok(StartupPacket::Cancel(CancelKey {
                pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            }))
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup(Startup {
                major,
                minor,
                params: parse_params(body)?,
            }))
        }
    }
}

/// `name\0value\0 ... \0`.
fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut body)?;
        if name.is_empty() {
            if !body.is_empty() {
                return Err(StartupError::Malformed("bytes after the terminator"));
            }
            return Ok(params);
        }
        let value = take_cstr(&mut body)?;
        if params.iter().any(|(k, _)| k == name) {
            return Err(StartupError::Malformed("parameter given twice"));
        }
        params.push((name.to_string(), value.to_string()));
    }
}

fn take_cstr<'a>(body: &mut &'a [u8]) -> Result<&'a str, StartupError> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Malformed("missing terminator"))?;
    let s = std::str::from_utf8(&body[..nul]).map_err(|_| StartupError::NotUtf8)?;
    *body = &body[nul + 1..];
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(params.iter().copied(), &mut buf)
            .expect("encode");
        buf.to_vec()
    }

    #[test]
    fn parses_startup_message() {
        let p = parse(&startup(&[("user", "app.acme"), ("database", "db")])).expect("valid");
        let StartupPacket::Startup(s) = p else {
            panic!("not a startup")
        };
        assert_eq!((s.major, s.minor), (3, 0));
        assert_eq!(s.param("user"), Some("app.acme"));
        assert_eq!(s.param("database"), Some("db"));
    }

    #[test]
    fn parses_ssl_gss_cancel() {
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::ssl_request(&mut buf);
        assert_eq!(parse(&buf), Ok(StartupPacket::SslRequest));
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(parse(&gss), Ok(StartupPacket::GssEncRequest));
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(42, -7, &mut buf);
        assert_eq!(
            parse(&buf),
            Ok(StartupPacket::Cancel(CancelKey {
                pid: 42,
                secret: -7
            }))
        );
    }

    #[test]
    fn rejects_bad_packets() {
        assert!(packet_len([0, 0, 0, 4]).is_err());
        assert!(packet_len([0, 0, 0x27, 0x11]).is_err()); // 10001
        assert!(packet_len([0xff, 0, 0, 0]).is_err());
        let mut p = startup(&[("user", "u")]);
        p.pop(); // drop the terminator
        let n = p.len() as i32;
        p[..4].copy_from_slice(&n.to_be_bytes());
        assert!(matches!(parse(&p), Err(StartupError::Malformed(_))));
        let v2 = [0, 0, 0, 9, 0, 2, 0, 0, 0];
        assert!(matches!(
            parse(&v2),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        let dup = startup(&[("user", "u"), ("user", "v")]);
        assert!(parse(&dup).is_err());
    }
}
