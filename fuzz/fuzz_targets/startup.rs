//! Startup-phase packets: any bytes must parse or fail, never panic, and
//! whatever parses must be within the limits the parser promises.
//! Mirrors `startup_parse_never_panics` in tests/decoders_prop.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtenant::protocol::startup::{self, MAX_STARTUP_PACKET_LEN, StartupPacket};

fuzz_target!(|data: &[u8]| {
    if let Some(b) = data.get(..4)
        && let Ok(len) = startup::packet_len([b[0], b[1], b[2], b[3]])
    {
        assert!((8..=MAX_STARTUP_PACKET_LEN).contains(&len));
    }
    if let Ok(packet) = startup::parse(data) {
        assert!(data.len() >= 8 && data.len() <= MAX_STARTUP_PACKET_LEN);
        if let StartupPacket::Startup(s) = packet {
            assert_eq!(s.major, 3);
            for (i, (k, _)) in s.params.iter().enumerate() {
                assert!(!k.is_empty());
                assert!(s.params[..i].iter().all(|(p, _)| p != k));
            }
        }
    }
});
