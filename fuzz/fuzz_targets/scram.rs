//! The SCRAM exchange, fed what an unauthenticated client may send: any
//! client-first and client-final bytes (the input split at its first
//! 0xFF, a byte no UTF-8 message holds) must be answered or refused,
//! never panic, and never log in without the password. Mirrors the
//! proptests in src/credentials/scram_prop.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtenant::credentials::scram::{Binding, Verifier, server_first};

fuzz_target!(|data: &[u8]| {
    let (first, last) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let v = Verifier::with_iterations("fuzz-password", b"0123456789abcdef", 1);
    if let Ok((exchange, reply)) = server_first(&v, first, "SERVERNONCE", Binding::Unavailable) {
        assert!(reply.starts_with("r="));
        assert!(exchange.finish(last).is_err());
    }
});
