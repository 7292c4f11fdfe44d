use super::*;
use proptest::prelude::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn header(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(fam);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn ipv4_round_trip_leaves_the_client_bytes() {
    let (src, dst) = (addr("203.0.113.7:51234"), addr("10.0.0.5:6432"));
    let mut buf = encode(src, dst, &[]);
    let len = buf.len();
    buf.extend_from_slice(b"\0\0\0\x08\x04\xd2\x16\x2f");
    let (h, taken) = parse(&buf).expect("valid").expect("complete");
    assert_eq!(taken, len);
    assert_eq!(taken, 28);
    assert_eq!(h.command, Command::Proxy);
    assert_eq!(h.addresses, Some((src, dst)));
    assert_eq!(h.source(), Some(src));
}

#[test]
fn ipv6_round_trip() {
    let (src, dst) = (addr("[2001:db8::1]:40000"), addr("[2001:db8::2]:6432"));
    let buf = encode(src, dst, &[]);
    assert_eq!(buf.len(), 52);
    let (h, taken) = parse(&buf).expect("valid").expect("complete");
    assert_eq!((h.source(), taken), (Some(src), 52));
}

#[test]
fn tlvs_are_skipped_but_must_tile() {
    let (src, dst) = (addr("198.51.100.1:1"), addr("10.0.0.1:2"));
    // PP2_TYPE_AWS (0xEA) with a VPC endpoint id, then a NOOP of 0 bytes.
    let mut tlvs = vec![0xEA, 0, 23, 0x01];
    tlvs.extend_from_slice(b"vpce-08d2bf15fac5001c9");
    tlvs.extend_from_slice(&[0x04, 0, 0]);
    let buf = encode(src, dst, &tlvs);
    let (h, taken) = parse(&buf).expect("valid").expect("complete");
    assert_eq!((h.source(), taken), (Some(src), buf.len()));
    // A TLV claiming more than is there.
    let bad = encode(src, dst, &[0xEA, 0, 9, 1, 2]);
    assert_eq!(parse(&bad), Err(HeaderError::Tlv));
    // Trailing bytes too short for a TLV header.
    let bad = encode(src, dst, &[0x04, 0]);
    assert_eq!(parse(&bad), Err(HeaderError::Tlv));
}

/// The authority TLV (a balancer that ended TLS passes the client's SNI)
/// is read, lower-cased, among others; one that is no server name, is
/// empty or too long, or comes twice, refuses the header.
#[test]
fn the_authority_tlv_is_the_server_name_and_nothing_else() {
    let (src, dst) = (addr("198.51.100.1:1"), addr("10.0.0.1:2"));
    let tlv = |kind: u8, value: &[u8]| {
        let mut t = vec![kind];
        t.extend_from_slice(&(value.len() as u16).to_be_bytes());
        t.extend_from_slice(value);
        t
    };
    let mut tlvs = tlv(0xEA, b"\x01vpce-1");
    tlvs.extend(tlv(0x02, b"Acme.DB.example.com"));
    tlvs.extend(tlv(0x04, b""));
    let (h, _) = parse(&encode(src, dst, &tlvs))
        .expect("valid")
        .expect("complete");
    assert_eq!(h.authority.as_deref(), Some("acme.db.example.com"));
    assert_eq!(h.source(), Some(src));
    let (h, _) = parse(&encode(src, dst, &[]))
        .expect("valid")
        .expect("complete");
    assert_eq!(h.authority, None);
    let long = vec![b'a'; 254];
    for bad in [
        &b""[..],
        b"acme.db.example.com\0",
        b"acme db",
        b"acme/../x",
        b"\xc3\xa9.example.com",
        &long,
    ] {
        assert_eq!(
            parse(&encode(src, dst, &tlv(0x02, bad))),
            Err(HeaderError::Authority),
            "{bad:?}"
        );
    }
    let mut twice = tlv(0x02, b"a.example.com");
    twice.extend(tlv(0x02, b"b.example.com"));
    assert_eq!(
        parse(&encode(src, dst, &twice)),
        Err(HeaderError::Authority)
    );
    // LOCAL ignores the block, TLVs and all.
    let local = encode_local();
    assert_eq!(
        parse(&local).expect("valid").expect("complete").0.authority,
        None
    );
}

/// The SSL TLV says whether the client reached the balancer over TLS (its
/// `client` field's first bit), whatever sub-TLVs follow; one too short
/// for its fixed part, or given twice, refuses the header.
#[test]
fn the_ssl_tlv_says_whether_the_client_used_tls() {
    let (src, dst) = (addr("198.51.100.1:1"), addr("10.0.0.1:2"));
    let ssl = |client: u8, sub: &[u8]| {
        let mut value = vec![client, 0, 0, 0, 0];
        value.extend_from_slice(sub);
        let mut t = vec![0x20];
        t.extend_from_slice(&(value.len() as u16).to_be_bytes());
        t.extend_from_slice(&value);
        t
    };
    // PP2_SUBTYPE_SSL_VERSION "TLSv1.3" inside.
    let (h, _) = parse(&encode(src, dst, &ssl(0x01, b"\x21\x00\x07TLSv1.3")))
        .expect("valid")
        .expect("complete");
    assert!(h.client_tls);
    let (h, _) = parse(&encode(src, dst, &ssl(0x06, b"")))
        .expect("valid")
        .expect("complete");
    assert!(!h.client_tls, "certificate bits without the SSL bit");
    let (h, _) = parse(&encode(src, dst, &[]))
        .expect("valid")
        .expect("complete");
    assert!(!h.client_tls);
    assert_eq!(
        parse(&encode(src, dst, &[0x20, 0, 4, 1, 0, 0, 0])),
        Err(HeaderError::Tlv)
    );
    let mut twice = ssl(0x01, b"");
    twice.extend(ssl(0x01, b""));
    assert_eq!(parse(&encode(src, dst, &twice)), Err(HeaderError::Tlv));
}

#[test]
fn local_keeps_the_socket_address_and_ignores_the_block() {
    let (h, taken) = parse(&encode_local()).expect("valid").expect("complete");
    assert_eq!((h.command, h.addresses, taken), (Command::Local, None, 16));
    // LOCAL with a family and addresses (HAProxy health checks may send
    // some): still no address taken from it.
    let buf = header(0x20, 0x11, &[1; 12]);
    let (h, taken) = parse(&buf).expect("valid").expect("complete");
    assert_eq!((h.addresses, taken), (None, 28));
    // Even a family a PROXY command could not use.
    let buf = header(0x20, 0xFF, &[]);
    assert_eq!(
        parse(&buf).expect("valid").expect("complete").0.addresses,
        None
    );
}

#[test]
fn unspec_and_unix_keep_the_socket_address() {
    let (h, _) = parse(&header(0x21, 0x00, &[])).expect("ok").expect("whole");
    assert_eq!((h.command, h.addresses), (Command::Proxy, None));
    let (h, taken) = parse(&header(0x21, 0x31, &[0; 216]))
        .expect("ok")
        .expect("whole");
    assert_eq!((h.addresses, taken), (None, 232));
}

#[test]
fn refusals() {
    assert_eq!(
        parse(&header(0x11, 0x11, &[0; 12])),
        Err(HeaderError::Version(1))
    );
    assert_eq!(
        parse(&header(0x22, 0x11, &[0; 12])),
        Err(HeaderError::Command(2))
    );
    assert_eq!(
        parse(&header(0x21, 0x41, &[0; 12])),
        Err(HeaderError::Family(0x41))
    );
    assert_eq!(
        parse(&header(0x21, 0x10, &[0; 12])),
        Err(HeaderError::Family(0x10))
    );
    assert_eq!(
        parse(&header(0x21, 0x12, &[0; 12])),
        Err(HeaderError::Datagram(0x12))
    );
    assert_eq!(
        parse(&header(0x21, 0x21, &[0; 12])),
        Err(HeaderError::ShortAddresses { have: 12, need: 36 })
    );
    assert_eq!(
        parse(&header(0x21, 0x11, &[0; 11])),
        Err(HeaderError::ShortAddresses { have: 11, need: 12 })
    );
    assert!(matches!(
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
        Err(HeaderError::V1(_))
    ));
    // A well-formed v1 line is parsed (`proxy_v1`).
    assert!(matches!(
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
        Ok(Some((_, 32)))
    ));
    assert_eq!(
        parse(b"\0\0\0\x08\x04\xd2\x16\x2f"),
        Err(HeaderError::Signature)
    );
    // A wrong byte inside the signature.
    let mut bad = encode_local();
    bad[7] = b'X';
    assert_eq!(parse(&bad), Err(HeaderError::Signature));
}

#[test]
fn oversized_is_refused_from_the_length_alone() {
    let mut fixed = SIGNATURE.to_vec();
    fixed.extend_from_slice(&[0x21, 0x11]);
    fixed.extend_from_slice(&((MAX_BODY + 1) as u16).to_be_bytes());
    // Only the 16 fixed bytes are there: refused without waiting for more.
    assert_eq!(parse(&fixed), Err(HeaderError::TooLong(MAX_BODY + 1)));
    fixed[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(parse(&fixed), Err(HeaderError::TooLong(65535)));
    // Exactly MAX_BODY is accepted.
    let mut tlv = vec![0x04];
    tlv.extend_from_slice(&((MAX_BODY - 12 - 3) as u16).to_be_bytes());
    tlv.resize(MAX_BODY - 12, 0);
    let buf = encode(addr("1.2.3.4:5"), addr("6.7.8.9:10"), &tlv);
    assert_eq!(buf.len(), MAX_HEADER_LEN);
    assert!(parse(&buf).expect("valid").is_some());
}

#[test]
fn every_prefix_of_a_header_is_incomplete() {
    let buf = encode(
        addr("[2001:db8::1]:1"),
        addr("[2001:db8::2]:2"),
        &[0x04, 0, 2, 9, 9],
    );
    for n in 0..buf.len() {
        assert_eq!(parse(&buf[..n]), Ok(None), "{n} bytes");
    }
    assert!(parse(&buf).expect("valid").is_some());
}

#[test]
fn detection() {
    assert_eq!(detect(b""), Start::Incomplete);
    assert_eq!(detect(b"\r\n\r"), Start::Incomplete);
    assert_eq!(detect(b"PROX"), Start::Incomplete);
    assert_eq!(detect(&SIGNATURE), Start::V2);
    assert_eq!(detect(b"PROXY "), Start::V1);
    // A startup packet and a TLS ClientHello are told at their first byte.
    assert_eq!(detect(b"\0"), Start::Other);
    assert_eq!(detect(&[0x16]), Start::Other);
    assert_eq!(detect(b"\r\n\r\n\0\r\nQUIx"), Start::Other);
}

proptest! {
    /// Arbitrary bytes never panic, and an accepted header never claims
    /// more than the buffer or the cap.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Some((_, taken))) = parse(&bytes) {
            prop_assert!(taken <= bytes.len() && taken <= MAX_HEADER_LEN);
        }
    }

    /// After the signature, arbitrary fields: no panic, and any prefix of
    /// an accepted header is incomplete, never an error or another header.
    #[test]
    fn arbitrary_after_signature(
        ver_cmd in prop_oneof![Just(0x20u8), Just(0x21u8), any::<u8>()],
        fam in prop_oneof![Just(0x11u8), Just(0x21u8), Just(0x00u8), any::<u8>()],
        body in proptest::collection::vec(any::<u8>(), 0..300),
        declared in prop_oneof![Just(None), (0u16..700).prop_map(Some)],
    ) {
        let mut buf = SIGNATURE.to_vec();
        buf.push(ver_cmd);
        buf.push(fam);
        let len = declared.unwrap_or(body.len() as u16);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&body);
        if let Ok(Some((h, taken))) = parse(&buf) {
            prop_assert_eq!(taken, FIXED_LEN + len as usize);
            for n in 0..taken {
                prop_assert_eq!(parse(&buf[..n]), Ok(None));
            }
            if h.command == Command::Local {
                prop_assert_eq!(h.addresses, None);
            }
        }
    }

    /// Any encoded TCP header parses back to its addresses.
    #[test]
    fn encode_parse_round_trip(
        s in any::<SocketAddr>(),
        d in any::<SocketAddr>(),
        tlv in proptest::collection::vec(any::<u8>(), 0..100),
        tail in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let mut tlvs = vec![0xE0];
        tlvs.extend_from_slice(&(tlv.len() as u16).to_be_bytes());
        tlvs.extend_from_slice(&tlv);
        let mut buf = encode(s, d, &tlvs);
        let len = buf.len();
        buf.extend_from_slice(&tail);
        let (h, taken) = parse(&buf).expect("valid").expect("complete");
        prop_assert_eq!(taken, len);
        let (ps, pd) = h.addresses.expect("addresses");
        let same = |a: SocketAddr, b: SocketAddr| {
            a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
        };
        prop_assert!(same(ps, s) && same(pd, d));
    }

    /// Any authority value: accepted exactly when it is a server name of
    /// 1-253 bytes, and then read back lower-cased; never anything else.
    #[test]
    fn an_authority_is_a_server_name_or_refused(
        value in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "[A-Za-z0-9._-]{1,260}".prop_map(String::into_bytes),
        ],
    ) {
        let (src, dst) = (addr("198.51.100.1:1"), addr("10.0.0.1:2"));
        let mut tlv = vec![0x02];
        tlv.extend_from_slice(&(value.len() as u16).to_be_bytes());
        tlv.extend_from_slice(&value);
        let valid = !value.is_empty()
            && value.len() <= 253
            && value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        match parse(&encode(src, dst, &tlv)) {
            Ok(Some((h, _))) => {
                prop_assert!(valid, "{value:?}");
                let want = String::from_utf8_lossy(&value).to_ascii_lowercase();
                prop_assert_eq!(h.authority, Some(want));
            }
            other => {
                prop_assert!(!valid, "{value:?}: {other:?}");
                prop_assert_eq!(other, Err(HeaderError::Authority));
            }
        }
    }
}
