//! Property tests of the SCRAM exchange against tampering: an honest
//! client logs in with the right password only, and no change to its
//! messages on the way (a byte anywhere, a cut, another GS2 header)
//! logs in. That arbitrary bytes never panic and never log in is
//! `tests/decoders_prop.rs`'s (and `fuzz/fuzz_targets/scram.rs`'s).

use super::scram::{Binding, ScramError, Verifier, server_first};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use proptest::prelude::*;

/// A verifier with few iterations: the properties are about the messages,
/// and 4,096 rounds on each side would make every case slow.
fn verifier(password: &str, salt: &[u8], iterations: u32) -> Verifier {
    Verifier::with_iterations(password, salt, iterations)
}

/// An honest exchange up to the client-final message, as a real client
/// (postgres-protocol's) runs it: (client-first, client-final, what the
/// server made of client-first).
fn honest(
    password: &str,
    v: &Verifier,
    server_nonce: &str,
) -> (Vec<u8>, Vec<u8>, super::scram::ScramExchange) {
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let first = client.message().to_vec();
    let (exchange, reply) =
        server_first(v, &first, server_nonce, Binding::Unavailable).expect("honest client-first");
    client
        .update(reply.as_bytes())
        .expect("the client takes the server-first message");
    (first, client.message().to_vec(), exchange)
}

/// A password as SCRAM hashes it: SASLprep'd where that applies, so two
/// that differ here are different passwords.
fn prepared(password: &str) -> String {
    stringprep::saslprep(password).map_or_else(|_| password.to_string(), |p| p.into_owned())
}

/// Server nonces as the proxy makes them: printable, no comma.
fn server_nonce() -> impl Strategy<Value = String> {
    "[!-+--~]{1,32}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A real client logs in with the password, whatever it is, and the
    /// salt, iteration count and server nonce; with another password it
    /// is refused.
    #[test]
    fn the_password_logs_in_and_no_other(
        password in ".{0,24}",
        other in ".{0,24}",
        salt in proptest::collection::vec(any::<u8>(), 1..32),
        iterations in 1u32..8,
        nonce in server_nonce(),
    ) {
        let v = verifier(&password, &salt, iterations);
        let (_, last, exchange) = honest(&password, &v, &nonce);
        prop_assert!(exchange.finish(&last).is_ok());
        if prepared(&other) != prepared(&password) {
            let (_, last, exchange) = honest(&other, &v, &nonce);
            prop_assert_eq!(exchange.finish(&last), Err(ScramError::BadProof));
        }
    }

    /// An honest client-final message with one byte changed, anywhere,
    /// or cut short, is refused: the proof covers the nonce and the
    /// channel binding, and the proof is checked whole.
    #[test]
    fn a_changed_final_message_is_refused(
        password in ".{0,16}",
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        cut in any::<prop::sample::Index>(),
        nonce in server_nonce(),
    ) {
        let v = verifier(&password, b"salt", 2);
        let (first, last, exchange) = honest(&password, &v, &nonce);
        let mut changed = last.clone();
        let i = at.index(changed.len());
        changed[i] ^= xor;
        prop_assert!(exchange.finish(&changed).is_err(), "byte {} of {:?}", i, last);
        let (exchange, _) = server_first(&v, &first, &nonce, Binding::Unavailable)
            .expect("the same client-first again");
        let short = &last[..cut.index(last.len())];
        prop_assert!(exchange.finish(short).is_err());
    }

    /// A client-first message changed on the way (a byte anywhere) may
    /// still parse, but the honest client's final message then fails:
    /// its proof is over what it sent, and the server's check is over
    /// what it received.
    #[test]
    fn a_changed_first_message_breaks_the_exchange(
        password in ".{0,16}",
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        nonce in server_nonce(),
    ) {
        let v = verifier(&password, b"salt", 2);
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut first = client.message().to_vec();
        let i = at.index(first.len());
        first[i] ^= xor;
        if let Ok((exchange, reply)) = server_first(&v, &first, &nonce, Binding::Unavailable)
            && client.update(reply.as_bytes()).is_ok()
        {
            prop_assert!(exchange.finish(client.message()).is_err(), "byte {} changed", i);
        }
    }

    /// The GS2 header is outside the proof (the proof covers the bare
    /// message); only the channel-binding check ties it to the final
    /// message. So a client-first whose header was swapped for another
    /// valid one (a binding downgrade, an authorization identity) fails
    /// against the honest client's final message.
    #[test]
    fn a_swapped_header_is_caught_by_the_binding_check(
        password in ".{0,16}",
        header in prop_oneof![
            Just("y,,".to_string()),
            "[ny],a=[a-z]{1,8},",
        ],
        nonce in server_nonce(),
    ) {
        let v = verifier(&password, b"salt", 2);
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let honest_first = client.message().to_vec();
        let bare = honest_first.strip_prefix(b"n,,").expect("an unbound client's header");
        let first = [header.as_bytes(), bare].concat();
        let (exchange, reply) = server_first(&v, &first, &nonce, Binding::Unavailable)
            .expect("a valid header");
        client.update(reply.as_bytes()).expect("the nonce is the client's");
        prop_assert!(matches!(
            exchange.finish(client.message()),
            Err(ScramError::ChannelBinding(_))
        ));
    }
}
