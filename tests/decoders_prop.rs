//! Property tests for everything that reads hostile bytes: startup
//! packets, the frame scanner, tenant routing and the SCRAM server. None
//! may panic on any input; the scanner must also reproduce a frame stream
//! exactly, however it is split across reads. `fuzz/` has libFuzzer
//! targets mirroring the first two and the last.

use pgtenant::config::TenantSource;
use pgtenant::credentials::scram::{self, ScramError, Verifier};
use pgtenant::protocol::codec::{self, FrameScanner, FrameSink, HEADER_LEN, Step, WHOLE_BODY};
use pgtenant::protocol::startup::{self, MAX_STARTUP_PACKET_LEN, StartupPacket};
use pgtenant::routing::{self, RoutingInput, RoutingRules};
use proptest::prelude::*;
use std::sync::LazyLock;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // Integration tests have no src/lib.rs beside them to anchor a
        // regressions file; failures print their minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- startup

/// A packet whose length word is right, with a chosen code and body, so
/// the parser gets past the length checks.
fn framed_packet() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        Just(0x0003_0000u32),
        Just(0x0003_0002),
        Just(80_877_102), // cancel
        Just(80_877_103), // SSL
        Just(80_877_104), // GSSENC
        any::<u32>(),
    ];
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        // name\0value\0 pairs with odd bytes mixed in
        prop::collection::vec(
            prop_oneof![
                Just(b"user\0".to_vec()),
                Just(b"app.acme\0".to_vec()),
                Just(b"_pq_.x\0".to_vec()),
                Just(vec![0u8]),
                Just(vec![0xff]),
                prop::collection::vec(any::<u8>(), 0..6),
            ],
            0..10
        )
        .prop_map(|parts| parts.concat()),
    ];
    (code, body).prop_map(|(code, body)| {
        let mut p = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(&body);
        p
    })
}

fn check_startup(bytes: &[u8]) {
    if let Ok(packet) = startup::parse(bytes) {
        assert!(bytes.len() >= 8 && bytes.len() <= MAX_STARTUP_PACKET_LEN);
        if let StartupPacket::Startup(s) = packet {
            assert_eq!(s.major, 3);
            for (i, (k, _)) in s.params.iter().enumerate() {
                assert!(!k.is_empty());
                assert!(s.params[..i].iter().all(|(p, _)| p != k), "dup {k}");
            }
        }
    }
    if let Some(b) = bytes.get(..4)
        && let Ok(len) = startup::packet_len([b[0], b[1], b[2], b[3]])
    {
        assert!((8..=MAX_STARTUP_PACKET_LEN).contains(&len));
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn startup_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_startup(&bytes);
    }

    #[test]
    fn startup_parse_never_panics_on_framed_packets(p in framed_packet()) {
        check_startup(&p);
    }
}

// ---------------------------------------------------------------- scanner

/// How much of a frame's body a sink asks for.
#[derive(Debug, Clone, Copy)]
enum Need {
    Header,
    Whole,
    Prefix(usize),
}

impl Need {
    fn bytes(self) -> usize {
        match self {
            Need::Header => 0,
            Need::Whole => WHOLE_BODY,
            Need::Prefix(n) => n,
        }
    }
}

/// Records what the scanner shows it. Asks for the body bytes `needs`
/// gives per tag (header only otherwise); skips whole frames of tags in
/// `skip` (as the sinks do with frames the proxy answers itself); stops
/// after tags in `stop_after`; stops before tags in `stop_before` once
/// per frame (as the client sink does for Terminate, after which the
/// caller acts and scans again).
#[derive(Default)]
struct Recorder {
    needs: Vec<(u8, Need)>,
    skip: Vec<u8>,
    stop_after: Vec<u8>,
    stop_before: Vec<u8>,
    stopped_before_current: bool,
    /// Tags of the frames seen, in order (a frame presented again after
    /// `StopBefore` counts once).
    tags: Vec<u8>,
    /// What each seen frame showed: its index, the bytes given, and
    /// whether it was skipped.
    seen: Vec<(usize, Vec<u8>, bool)>,
}

impl Recorder {
    fn new(
        needs: Vec<(u8, Need)>,
        skip: Vec<u8>,
        stop_after: Vec<u8>,
        stop_before: Vec<u8>,
    ) -> Recorder {
        Recorder {
            needs,
            skip,
            stop_after,
            stop_before,
            ..Recorder::default()
        }
    }

    fn need(&self, tag: u8) -> Need {
        self.needs
            .iter()
            .find(|(t, _)| *t == tag)
            .map_or(Need::Header, |(_, n)| *n)
    }
}

impl FrameSink for Recorder {
    fn body_needed(&self, tag: u8) -> usize {
        self.need(tag).bytes()
    }

    fn on_frame(&mut self, tag: u8, frame: &[u8], frame_len: usize) -> Step {
        assert_eq!(frame[0], tag);
        assert!(frame.len() >= HEADER_LEN && frame.len() <= frame_len);
        let len = i32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
        assert_eq!(frame_len, len as usize + 1);
        let body = frame_len - HEADER_LEN;
        assert_eq!(
            frame.len() - HEADER_LEN,
            self.need(tag).bytes().min(body),
            "the body bytes asked for, no more, no fewer"
        );
        if self.stop_before.contains(&tag) && !self.stopped_before_current {
            self.stopped_before_current = true;
            return Step::StopBefore;
        }
        self.stopped_before_current = false;
        let whole = frame.len() == frame_len;
        let skip = whole && self.skip.contains(&tag);
        self.seen.push((self.tags.len(), frame.to_vec(), skip));
        self.tags.push(tag);
        if skip {
            Step::Skip
        } else if self.stop_after.contains(&tag) {
            Step::StopAfter
        } else {
            Step::Continue
        }
    }
}

/// Feeds `chunks` to a scanner the way the pump does: unforwarded bytes
/// are kept and presented again with the next read; after a stop, the
/// skipped bytes (if any) are dropped and what is left is scanned again
/// before reading. Returns the forwarded bytes, the skipped bytes, the
/// bytes never forwarded, and the first error.
fn feed(
    scanner: &mut FrameScanner,
    sink: &mut Recorder,
    chunks: &[Vec<u8>],
) -> (Vec<u8>, Vec<u8>, Vec<u8>, Option<codec::FrameError>) {
    let mut forwarded = Vec::new();
    let mut skipped = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        for _ in 0..100_000 {
            let scan = match scanner.scan(&pending, sink) {
                Ok(s) => s,
                Err(e) => return (forwarded, skipped, pending, Some(e)),
            };
            assert!(scan.forward + scan.skip <= pending.len());
            assert!(scan.skip == 0 || scan.stopped, "skip only with a stop");
            forwarded.extend(pending.drain(..scan.forward));
            skipped.extend(pending.drain(..scan.skip));
            if scan.forward == 0 && scan.skip == 0 && !scan.stopped {
                break;
            }
        }
    }
    (forwarded, skipped, pending, None)
}

/// Splits `bytes` at the given cut points (taken modulo its length).
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    if bytes.is_empty() {
        return vec![];
    }
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

fn frame_strategy() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let tag = prop_oneof![
        prop::sample::select(b"QPBDESHXCdcfZTKNAR".to_vec()),
        any::<u8>()
    ];
    let body = prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(any::<u8>(), 0..5000),
    ];
    (tag, body)
}

fn tag() -> impl Strategy<Value = u8> {
    prop_oneof![prop::sample::select(b"QZSXDCP".to_vec()), any::<u8>()]
}

fn tag_set() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(tag(), 0..4)
}

fn needs() -> impl Strategy<Value = Vec<(u8, Need)>> {
    prop::collection::vec(
        (
            tag(),
            prop_oneof![
                Just(Need::Header),
                Just(Need::Whole),
                (0usize..12).prop_map(Need::Prefix),
                any::<usize>().prop_map(Need::Prefix),
            ],
        ),
        0..4,
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scanner_never_panics_on_arbitrary_reads(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..12),
        max in prop_oneof![Just(4usize), Just(16), Just(1 << 20), Just(usize::MAX)],
        needs in needs(),
        skip in tag_set(),
        stop_after in tag_set(),
        stop_before in tag_set(),
    ) {
        let mut scanner = FrameScanner::new(max);
        let mut sink = Recorder::new(needs, skip, stop_after, stop_before);
        let all = chunks.concat();
        let (forwarded, skipped, pending, err) = feed(&mut scanner, &mut sink, &chunks);
        // Forwarded, skipped and kept bytes are the input, each byte once
        // (all of it unless framing broke).
        prop_assert!(forwarded.len() + skipped.len() + pending.len() <= all.len());
        if err.is_none() {
            prop_assert_eq!(forwarded.len() + skipped.len() + pending.len(), all.len());
        }
        if sink.skip.is_empty() {
            prop_assert!(all.starts_with(&[forwarded, pending].concat()));
        }
    }

    #[test]
    fn parse_header_respects_its_bounds(
        bytes in prop::collection::vec(any::<u8>(), 0..8),
        max in any::<usize>(),
    ) {
        match codec::parse_header(&bytes, max) {
            Ok(Some(h)) => {
                prop_assert!(bytes.len() >= HEADER_LEN);
                prop_assert!(h.len >= 4 && h.len <= max);
                prop_assert_eq!(h.tag, bytes[0]);
            }
            Ok(None) => prop_assert!(bytes.len() < HEADER_LEN),
            Err(_) => prop_assert!(bytes.len() >= HEADER_LEN),
        }
    }

    /// Well-formed frames split at random points come out as exactly
    /// their tags, in order; every byte is forwarded exactly once, except
    /// the frames the sink skipped, which are dropped exactly; each frame
    /// shows the sink the body prefix it asked for.
    #[test]
    fn scanner_round_trips_split_frames(
        frames in prop::collection::vec(frame_strategy(), 0..24),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        needs in needs(),
        skip in tag_set(),
        stop_after in tag_set(),
        stop_before in tag_set(),
    ) {
        let mut stream = Vec::new();
        let mut encoded = Vec::new();
        for (tag, body) in &frames {
            let mut f = vec![*tag];
            f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            f.extend_from_slice(body);
            stream.extend_from_slice(&f);
            encoded.push(f);
        }
        let chunks = split(&stream, &cuts);
        let mut scanner = FrameScanner::new(1 << 20);
        let mut sink = Recorder::new(needs, skip, stop_after, stop_before);
        let (forwarded, skipped, pending, err) = feed(&mut scanner, &mut sink, &chunks);
        prop_assert!(err.is_none(), "{:?}", err);
        prop_assert!(pending.is_empty(), "{} bytes never forwarded", pending.len());
        prop_assert!(scanner.at_boundary());
        prop_assert_eq!(&sink.tags, &frames.iter().map(|(t, _)| *t).collect::<Vec<_>>());
        let mut want_forwarded = Vec::new();
        let mut want_skipped = Vec::new();
        for (i, shown, was_skipped) in &sink.seen {
            prop_assert_eq!(&shown[..], &encoded[*i][..shown.len()]);
            if *was_skipped {
                want_skipped.extend_from_slice(&encoded[*i]);
            } else {
                want_forwarded.extend_from_slice(&encoded[*i]);
            }
        }
        prop_assert_eq!(sink.seen.len(), frames.len());
        prop_assert!(forwarded == want_forwarded, "forwarded bytes differ");
        prop_assert!(skipped == want_skipped, "skipped bytes differ");
    }

    /// A frame over the cap is refused before its body is read, wherever
    /// it sits in the stream.
    #[test]
    fn scanner_refuses_oversized_frames(
        before in prop::collection::vec(frame_strategy(), 0..4),
        len in 1025i32..=i32::MAX,
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        needs in needs(),
    ) {
        let mut stream = Vec::new();
        for (tag, body) in &before {
            if body.len() + 4 > 1024 {
                continue;
            }
            stream.push(*tag);
            stream.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        let ok_len = stream.len();
        stream.push(b'Q');
        stream.extend_from_slice(&len.to_be_bytes());
        let mut scanner = FrameScanner::new(1024);
        let mut sink = Recorder::new(needs, vec![], vec![], vec![]);
        let (forwarded, _, _, err) = feed(&mut scanner, &mut sink, &split(&stream, &cuts));
        prop_assert!(
            matches!(err, Some(codec::FrameError::TooLarge { .. })),
            "{:?}",
            err
        );
        prop_assert!(forwarded.len() <= ok_len);
    }
}

// ---------------------------------------------------------------- routing

fn sources() -> impl Strategy<Value = Vec<TenantSource>> {
    prop::collection::vec(
        prop::sample::select(vec![
            TenantSource::Sni,
            TenantSource::Options,
            TenantSource::User,
            TenantSource::Database,
        ]),
        0..6,
    )
}

/// Options strings built from the pieces the parser cares about.
fn options() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop_oneof![
                Just("tenant=acme".to_string()),
                Just("tenant=".to_string()),
                Just("tenant=globex".to_string()),
                Just("-c".to_string()),
                Just("-cwork_mem=4MB".to_string()),
                Just("--search-path=x".to_string()),
                Just("\\".to_string()),
                Just("\\ ".to_string()),
                Just(" ".to_string()),
                Just("\t".to_string()),
                Just("=".to_string()),
                "\\PC{0,6}",
            ],
            0..8,
        )
        .prop_map(|p| p.concat()),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(app)?[.@]?(acme|globex|x)?(\\.db\\.example\\.com)?",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn routing_never_panics(
        order in sources(),
        separator in prop_oneof![Just(".".to_string()), Just("@".to_string()), Just(String::new()), any::<String>()],
        sni_suffix in prop::option::of(prop_oneof![Just("db.example.com".to_string()), any::<String>()]),
        sni in prop::option::of(name()),
        user in name(),
        database in prop::option::of(name()),
        options in prop::option::of(options()),
    ) {
        let rules = RoutingRules {
            order,
            user_separator: separator,
            sni_suffix,
            domains: [("db.acme.io".to_string(), "acme".to_string())].into(),
        };
        let input = RoutingInput {
            sni: sni.as_deref(),
            user: &user,
            database: database.as_deref(),
            options: options.as_deref(),
        };
        if let Ok(r) = routing::resolve(&rules, &input, |n| n == "acme" || n == "globex") {
            prop_assert!(!r.tenant.as_str().is_empty());
            prop_assert!(rules.order.contains(&r.source));
            prop_assert!(user.starts_with(&r.user), "user {:?} -> {:?}", user, r.user);
            for (k, _) in &r.settings {
                prop_assert!(!k.contains('-'));
            }
        }
    }
}

// ---------------------------------------------------------------- SCRAM

/// Deriving a verifier runs 4096 PBKDF2 rounds: do it once.
static VERIFIER: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::from_password("pw", b"0123456789abcdef"));

fn client_first() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        any::<String>().prop_map(String::into_bytes),
        (
            prop::sample::select(vec!["n", "y", "p=tls-server-end-point", "x", ""]),
            prop::sample::select(vec!["", "a=x", "b"]),
            "[ -~]{0,12}",
            "[!-~]{0,24}",
            "(,[ -~]{0,8})?",
        )
            .prop_map(|(flag, authz, user, nonce, ext)| {
                format!("{flag},{authz},n={user},r={nonce}{ext}").into_bytes()
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scram_never_panics_and_random_proofs_fail(
        first in client_first(),
        server_nonce in "[!-~]{1,24}",
        finals in prop::collection::vec(any::<u8>(), 0..120),
        proof in prop::collection::vec(any::<u8>(), 0..40),
        use_real_nonce in any::<bool>(),
        cbind in prop::sample::select(vec!["biws", "eSws", "", "!!"]),
        offered in 0..3u8,
    ) {
        // Plaintext, TLS with plain SCRAM chosen, TLS with PLUS chosen.
        let end_point = [9u8; 32];
        let binding = match offered {
            0 => scram::Binding::Unavailable,
            n => scram::Binding::Offered { end_point: &end_point, plus: n == 2 },
        };
        let Ok((exchange, server_first)) =
            scram::server_first(&VERIFIER, &first, &server_nonce, binding)
        else {
            return Ok(());
        };
        prop_assert!(server_first.starts_with("r="));
        // Arbitrary bytes as the client-final message.
        let (exchange2, _) = scram::server_first(&VERIFIER, &first, &server_nonce, binding)
            .expect("deterministic");
        prop_assert!(exchange2.finish(&finals).is_err());
        // A well-formed client-final with a random proof.
        let nonce = server_first
            .strip_prefix("r=")
            .and_then(|s| s.split(',').next())
            .unwrap_or_default()
            .to_string();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let msg = format!(
            "c={cbind},r={},p={}",
            if use_real_nonce { nonce.as_str() } else { "wrong" },
            b64.encode(&proof)
        );
        let r = exchange.finish(msg.as_bytes());
        prop_assert!(r.is_err(), "a random proof authenticated");
        if use_real_nonce && proof.len() == 32 && cbind == "biws" && first.starts_with(b"n,,") {
            prop_assert_eq!(r, Err(ScramError::BadProof));
        }
    }
}
