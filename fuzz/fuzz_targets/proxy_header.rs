//! PROXY protocol headers (v2, and v1 lines): any bytes must parse, ask for more, or
//! fail, never panic; an accepted header takes no more than the buffer
//! and the cap, and every prefix of it asks for more; a relayed server
//! name is a lower-cased DNS-style name. Mirrors the proptests in
//! src/protocol/proxy_header_tests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtenant::protocol::proxy_header::{self, Command, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, taken))) = proxy_header::parse(data) {
        assert!(taken <= data.len() && taken <= MAX_HEADER_LEN);
        assert_eq!(proxy_header::parse(&data[..taken - 1]), Ok(None));
        if header.command == Command::Local {
            assert_eq!(header.addresses, None);
        }
        // A relayed server name is a lower-cased DNS-style name, or none.
        if let Some(name) = &header.authority {
            assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'_' | b'.')),
                "{name:?}"
            );
        }
        // A v1 line carries no TLVs.
        if data.starts_with(b"PROXY ") {
            assert!(header.authority.is_none() && !header.client_tls);
        }
    }
});
