//! Encoders for the backend messages the proxy itself sends to clients
//! (authentication, ParameterStatus, BackendKeyData, ReadyForQuery,
//! NegotiateProtocolVersion). Messages the proxy relays are never
//! re-encoded.

use bytes::{BufMut, BytesMut};

/// Writes `tag`, a length placeholder, the body from `f`, and patches the
/// length.
fn framed(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    f(out);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

pub fn auth_ok(out: &mut BytesMut) {
    framed(out, b'R', |o| o.put_i32(0));
}

/// AuthenticationSASL offering SCRAM-SHA-256 only (no channel binding
/// until TLS exists).
/// AuthenticationSASL listing SCRAM-SHA-256, after SCRAM-SHA-256-PLUS
/// when `plus` (channel binding offered), as PostgreSQL orders them.
pub fn auth_sasl(out: &mut BytesMut, plus: bool) {
    framed(out, b'R', |o| {
        o.put_i32(10);
        if plus {
            put_cstr(o, "SCRAM-SHA-256-PLUS");
        }
        put_cstr(o, "SCRAM-SHA-256");
        o.put_u8(0);
    });
}

pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    framed(out, b'R', |o| {
        o.put_i32(11);
        o.put_slice(data);
    });
}

pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    framed(out, b'R', |o| {
        o.put_i32(12);
        o.put_slice(data);
    });
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    framed(out, b'S', |o| {
        put_cstr(o, name);
        put_cstr(o, value);
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    framed(out, b'K', |o| {
        o.put_i32(pid);
        o.put_i32(secret);
    });
}

/// `status`: `I` idle, `T` in a transaction, `E` in a failed transaction.
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    framed(out, b'Z', |o| o.put_u8(status));
}

/// Tells a client asking for protocol 3.`minor` (> 0) or sending unknown
/// `_pq_.` options that this server speaks 3.0 and ignores those options.
pub fn negotiate_protocol_version(out: &mut BytesMut, unrecognized: &[&str]) {
    framed(out, b'v', |o| {
        o.put_i32(0); // newest minor version supported
        o.put_i32(unrecognized.len() as i32);
        for name in unrecognized {
            put_cstr(o, name);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;

    #[test]
    fn encodings_parse_back() {
        let mut out = BytesMut::new();
        auth_ok(&mut out);
        parameter_status(&mut out, "server_version", "15.18");
        backend_key_data(&mut out, 7, -9);
        ready_for_query(&mut out, b'I');
        assert!(matches!(
            Message::parse(&mut out),
            Ok(Some(Message::AuthenticationOk))
        ));
        let Ok(Some(Message::ParameterStatus(ps))) = Message::parse(&mut out) else {
            panic!("ParameterStatus")
        };
        assert_eq!(ps.name().ok(), Some("server_version"));
        assert_eq!(ps.value().ok(), Some("15.18"));
        let Ok(Some(Message::BackendKeyData(k))) = Message::parse(&mut out) else {
            panic!("BackendKeyData")
        };
        assert_eq!((k.process_id(), k.secret_key()), (7, -9));
        let Ok(Some(Message::ReadyForQuery(z))) = Message::parse(&mut out) else {
            panic!("ReadyForQuery")
        };
        assert_eq!(z.status(), b'I');
    }

    #[test]
    fn negotiate_protocol_version_layout() {
        let mut out = BytesMut::new();
        negotiate_protocol_version(&mut out, &["_pq_.x"]);
        assert_eq!(&out[..], b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0");
    }
}
