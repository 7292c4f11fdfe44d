//! Attacks on client authentication, over raw sockets with SCRAM done by
//! hand (no driver): a forged proof for a user that does not exist (audit
//! C1), telling real users from unknown ones by the exchange (audit L1),
//! and salts that must not change across restarts.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::raw::{self, Msg};
use common::{TestPg, TestProxy};
use hmac::{Hmac, KeyInit, Mac};
use pgtenant::pgcluster::HostAuth;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::net::TcpStream;

const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// SCRAM's Hi() (PBKDF2-HMAC-SHA-256, one block), for ASCII passwords.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()[..]].concat());
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out = xor(&out, &u);
    }
    out
}

/// The AuthenticationXXX code of an `R` message.
fn auth_code(m: &Msg) -> Option<i32> {
    (m.tag == b'R').then(|| i32::from_be_bytes(m.body[..4].try_into().expect("4 bytes")))
}

/// The server-first message, parsed.
struct ServerFirst {
    text: String,
    nonce: String,
    salt: Vec<u8>,
    iterations: u32,
}

/// A SCRAM exchange up to the server-first message; what the proxy sent so
/// far is in `seen`.
struct Exchange {
    stream: TcpStream,
    seen: Vec<Msg>,
    first: ServerFirst,
}

impl Exchange {
    async fn start(port: u16, user: &str, database: &str) -> Exchange {
        let mut s = raw::connect(port).await;
        raw::send(
            &mut s,
            &raw::startup(3, 0, &[("user", user), ("database", database)]),
        )
        .await;
        let sasl = raw::expect_msg(&mut s, "AuthenticationSASL").await;
        assert_eq!(auth_code(&sasl), Some(10), "AuthenticationSASL: {sasl:?}");
        assert_eq!(&sasl.body[4..], b"SCRAM-SHA-256\0\0");

        let client_first = format!("n,,n=,r={CLIENT_NONCE}");
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
        body.extend_from_slice(client_first.as_bytes());
        raw::send(&mut s, &raw::frame(b'p', &body)).await;

        let cont = raw::expect_msg(&mut s, "AuthenticationSASLContinue").await;
        assert_eq!(auth_code(&cont), Some(11), "SASLContinue: {cont:?}");
        let text = String::from_utf8(cont.body[4..].to_vec()).expect("UTF-8");
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in text.split(',') {
            match attr.split_at(2) {
                ("r=", v) => nonce = Some(v.to_string()),
                ("s=", v) => salt = Some(B64.decode(v).expect("base64 salt")),
                ("i=", v) => iterations = Some(v.parse().expect("iteration count")),
                _ => panic!("unexpected attribute in {text:?}"),
            }
        }
        let first = ServerFirst {
            nonce: nonce.expect("r="),
            salt: salt.expect("s="),
            iterations: iterations.expect("i="),
            text,
        };
        assert!(first.nonce.starts_with(CLIENT_NONCE));
        Exchange {
            stream: s,
            seen: vec![sasl, cont],
            first,
        }
    }

    /// `client-final-message-without-proof` and the AuthMessage.
    fn auth_message(&self) -> (String, String) {
        let without_proof = format!("c=biws,r={}", self.first.nonce);
        let am = format!("n=,r={CLIENT_NONCE},{},{without_proof}", self.first.text);
        (without_proof, am)
    }

    /// The proof a client holding `password` sends.
    fn proof_for_password(&self, password: &str) -> [u8; 32] {
        let salted = hi(password.as_bytes(), &self.first.salt, self.first.iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        xor(
            &client_key,
            &hmac(&stored_key, self.auth_message().1.as_bytes()),
        )
    }

    /// Sends the client-final message and reads everything up to the first
    /// ReadyForQuery, or to the close.
    async fn finish(mut self, proof: [u8; 32]) -> Vec<Msg> {
        let (without_proof, _) = self.auth_message();
        let fin = format!("{without_proof},p={}", B64.encode(proof));
        raw::send(&mut self.stream, &raw::frame(b'p', fin.as_bytes())).await;
        let mut got = self.seen;
        loop {
            match raw::read_msg(&mut self.stream, Duration::from_secs(20)).await {
                raw::Read::Msg(m) => {
                    let end = m.tag == b'Z';
                    got.push(m);
                    if end {
                        return got;
                    }
                }
                raw::Read::Closed => return got,
                raw::Read::Timeout => panic!("no answer to the client-final message: {got:?}"),
            }
        }
    }
}

/// `(tag, auth code)` of each message, for comparing exchange shapes.
fn shape(msgs: &[Msg]) -> Vec<(char, Option<i32>)> {
    msgs.iter().map(|m| (m.tag as char, auth_code(m))).collect()
}

fn logged_in(msgs: &[Msg]) -> bool {
    msgs.iter().any(|m| auth_code(m) == Some(0)) || msgs.iter().any(|m| m.tag == b'Z')
}

/// A config whose placements are never reached (authentication fails
/// first), with `extra` in `[proxy]`.
fn offline_config(extra: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n{extra}\n\n\
         [placements.acme_db]\nurl = \"postgres://u:p@127.0.0.1:1/db\"\nisolation = \"database\"\n\n\
         [tenants.acme]\nplacement = \"acme_db\"\nusers = {{ app = \"acme-secret\" }}\n"
    )
}

/// Audit C1: the proof the audit's script forges from the public inputs of
/// the old mock verifier. On 9e4ad32 this logs in as `nobody.acme`.
#[tokio::test]
async fn forged_proof_for_an_unknown_user_is_refused() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme"], 2, "")).await;

    // Control: the hand-made client logs in with the right password, so a
    // refusal below is the proxy's doing, not a broken client.
    let ex = Exchange::start(proxy.port, "app.acme", "acme").await;
    let proof = ex.proof_for_password("acme-secret");
    let got = ex.finish(proof).await;
    assert!(logged_in(&got), "the right password logs in: {got:?}");

    let ex = Exchange::start(proxy.port, "nobody.acme", "acme").await;
    let digest: [u8; 32] = Sha256::new()
        .chain_update(b"pgtenant mock verifier")
        .chain_update(b"acme/nobody")
        .finalize()
        .into();
    let stored_key: [u8; 32] = Sha256::digest(digest).into();
    let forged = xor(&digest, &hmac(&stored_key, ex.auth_message().1.as_bytes()));
    let got = ex.finish(forged).await;
    assert!(!logged_in(&got), "forged proof logged in: {got:?}");
    let err = got.last().expect("an answer");
    assert_eq!(err.tag, b'E', "{got:?}");
    assert_eq!(err.code(), "28P01", "{:?}", err.fields());

    // Nor does a configured user's password open a name that is not one.
    let ex = Exchange::start(proxy.port, "nobody.acme", "acme").await;
    let proof = ex.proof_for_password("acme-secret");
    let got = ex.finish(proof).await;
    assert!(!logged_in(&got), "{got:?}");
    assert_eq!(got.last().map(Msg::code).as_deref(), Some("28P01"));
}

/// Audit L1: a known user with a wrong password and an unknown user see
/// the same exchange and the same failure, apart from the name.
#[tokio::test]
async fn unknown_user_and_wrong_password_fail_identically() {
    // No secret file: a config parsed from text gets a per-process secret.
    let proxy = TestProxy::start(&offline_config("")).await;

    let mut runs = Vec::new();
    for user in ["app", "nobody"] {
        let ex = Exchange::start(proxy.port, &format!("{user}.acme"), "acme").await;
        let salt_len = ex.first.salt.len();
        let iterations = ex.first.iterations;
        let proof = ex.proof_for_password("wrong-password");
        let got = ex.finish(proof).await;
        runs.push((user, salt_len, iterations, got));
    }
    let (_, real_salt, real_iter, real) = &runs[0];
    let (_, mock_salt, mock_iter, mock) = &runs[1];
    assert_eq!(shape(real), shape(mock), "{real:?} vs {mock:?}");
    assert_eq!(
        shape(real),
        vec![('R', Some(10)), ('R', Some(11)), ('E', None)]
    );
    assert_eq!((real_salt, real_iter), (mock_salt, mock_iter));
    assert_eq!(*real_iter, 4096);
    let (e_real, e_mock) = (real.last().expect("error"), mock.last().expect("error"));
    assert_eq!(e_real.code(), "28P01");
    assert_eq!(e_mock.code(), "28P01");
    assert_eq!(
        e_real.message().replace("\"app\"", "\"USER\""),
        e_mock.message().replace("\"nobody\"", "\"USER\""),
    );
    let strip = |m: &Msg| {
        let mut f = m.fields();
        f.remove(&b'M');
        f
    };
    assert_eq!(strip(e_real), strip(e_mock), "other error fields");
}

/// Audit L1: the salt of a plaintext-configured user and of an unknown
/// user stay the same across a restart with the same secret file, so a
/// changing salt marks nobody; a different secret gives different salts.
#[tokio::test]
async fn salts_survive_a_restart_and_follow_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let salts_with = |secret: std::path::PathBuf| async move {
        let proxy = TestProxy::start(&offline_config(&format!(
            "secret_file = \"{}\"",
            secret.display()
        )))
        .await;
        let mut salts = Vec::new();
        for user in ["app.acme", "nobody.acme"] {
            salts.push(Exchange::start(proxy.port, user, "acme").await.first.salt);
        }
        proxy.stop().await.expect("proxy stops");
        salts
    };
    let a = dir.path().join("a.secret");
    let first = salts_with(a.clone()).await;
    assert!(a.exists(), "the secret file is created");
    let again = salts_with(a.clone()).await;
    assert_eq!(first, again, "same secret file: same salts after a restart");
    assert_ne!(first[0], first[1], "each user has its own salt");
    let other = salts_with(dir.path().join("b.secret")).await;
    assert_ne!(first[0], other[0], "another secret: another salt (app)");
    assert_ne!(first[1], other[1], "another secret: another salt (nobody)");
}

/// The proxy refuses to start on a secret file others can read.
#[tokio::test]
async fn a_readable_secret_file_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("pgtenant.secret");
    std::fs::write(&secret, format!("{}\n", "ab".repeat(32))).expect("write");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (cfg, src) = pgtenant::config::parse_str(
        &offline_config(&format!("secret_file = \"{}\"", secret.display())),
        "test.toml",
    )
    .expect("valid config");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let err = pgtenant::run(
        cfg,
        src,
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("refuses to start");
    let text = format!("{err:#}");
    assert!(
        text.contains("proxy.secret_file") && text.contains("chmod 600"),
        "{text}"
    );
}
