//! `pgtenant hash-password` and the warning about secrets in a readable
//! config (issue 20, point 6): the verifier it prints is one PostgreSQL
//! itself accepts and one the proxy logs clients in with, and `check`
//! names every key that holds a secret in clear while others may read
//! the file.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_pgtenant");

fn hash_password(password: &str, extra: &[&str]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgtenant hash-password");
    // A refused argument ends the command before it reads: a broken pipe
    // here is that, and its exit status tells.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes());
    child.wait_with_output().expect("wait")
}

fn verifier_of(password: &str) -> String {
    let out = hash_password(password, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let v = text.trim().to_string();
    assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
    assert!(!v.contains(password), "the verifier holds the password");
    v
}

#[test]
fn the_verifier_is_salted_and_bad_input_is_refused() {
    let a = verifier_of("correct horse");
    let b = verifier_of("correct horse");
    assert_ne!(a, b, "two verifiers of one password share a salt");
    let empty = hash_password("", &[]);
    assert!(!empty.status.success(), "an empty password was hashed");
    let few = hash_password("x", &["--iterations", "1000"]);
    assert!(!few.status.success(), "1000 rounds were accepted");
    let more = hash_password("x", &["--iterations", "8192"]);
    assert!(String::from_utf8_lossy(&more.stdout).starts_with("SCRAM-SHA-256$8192:"));
}

#[tokio::test]
async fn postgresql_and_the_proxy_accept_the_verifier() {
    let password = "pässwörd-ünïcode";
    let verifier = verifier_of(password);

    // PostgreSQL takes it as a stored password and logs the role in.
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    admin
        .batch_execute(&format!("CREATE ROLE hp_user LOGIN PASSWORD '{verifier}'"))
        .await
        .expect("create a role with the verifier");
    let url = pg.cluster.client_url("hp_user", password, "postgres");
    let (direct, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL logs the role in with the password");
    tokio::spawn(conn);
    direct.simple_query("SELECT 1").await.expect("query");

    // The proxy logs a client in against it, and refuses another password.
    let config = pg
        .config(&["acme"], 2, "")
        .replace("app = \"acme-secret\"", &format!("app = \"{verifier}\""));
    assert!(config.contains(&verifier), "the config took the verifier");
    let proxy = TestProxy::start(&config).await;
    let client = proxy
        .try_connect(&proxy.conn_str("app", password, "acme"))
        .await
        .expect("the proxy logs the client in");
    client.simple_query("SELECT 1").await.expect("query");
    let wrong = proxy
        .try_connect(&proxy.conn_str("app", "acme-secret", "acme"))
        .await
        .expect_err("another password logged in");
    assert_eq!(sqlstate(&wrong), "28P01");
}

fn check(path: &std::path::Path) -> String {
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run pgtenant check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_warns_about_secrets_in_clear_in_a_readable_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgtenant.toml");
    let verifier = verifier_of("tenant password");
    let config = |app: &str, url_password: &str| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nsecret_file = \"s\"\n\n\
             [placements.p]\nurl = \"postgres://pgt_acme{url_password}@127.0.0.1:5432/tenant_acme\"\n\
             isolation = \"database\"\n\n\
             [tenants.acme]\nplacement = \"p\"\nusers = {{ app = \"{app}\" }}\n\n\
             [admin]\ntoken = \"metrics-token-0123456789\"\n"
        )
    };
    let write = |text: &str, mode: u32| {
        std::fs::write(&path, text).expect("write config");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };

    write(&config("plain", ":backend"), 0o644);
    let warned = check(&path);
    assert!(warned.contains("readable by every local user"), "{warned}");
    for key in ["tenants.acme.users.app", "placements.p.url", "admin.token"] {
        assert!(warned.contains(key), "{key} not named: {warned}");
    }
    assert!(
        !warned.contains("backend"),
        "the warning shows a secret: {warned}"
    );
    assert!(
        !warned.contains("metrics-token"),
        "the warning shows a secret: {warned}"
    );

    // Verifiers are not secrets in clear; the URL password still is.
    write(&config(&verifier, ":backend"), 0o644);
    let warned = check(&path);
    assert!(!warned.contains("tenants.acme.users.app"), "{warned}");
    assert!(warned.contains("placements.p.url"), "{warned}");

    // Private to its owner (or to a group): no warning.
    write(&config("plain", ":backend"), 0o600);
    assert!(!check(&path).contains("readable by every"));
    write(&config("plain", ":backend"), 0o640);
    assert!(!check(&path).contains("readable by every"));
}
