//! The real binary's logs as operators read them: `--log-format json`
//! gives one JSON object per line, every line of a client connection
//! carries its span (connection id, address, user, tenant), and no line,
//! at the most verbose level, holds a secret: client, admin and backend
//! passwords, the admin token, the authentication secret file.

mod common;

use common::http::{http, wait_healthy};
use common::{Child, TestPg, backend_password, sqlstate};
use pgtenant::pgcluster::{HostAuth, free_port};
use std::io::Read;
use std::time::{Duration, Instant};

const ADMIN_PASSWORD: &str = "admin-pw-7f3a91";
const TOKEN: &str = "token-5c20e8d4-a9e1b37f";
const WRONG_BACKEND_PASSWORD: &str = "wrong-backend-pw-b81d";
const WRONG_CLIENT_PASSWORD: &str = "wrong-client-pw-66e0";

async fn connect(conn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn json_logs_carry_the_connection_span_and_no_secret() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme", "broken"]).await;
    let admin = free_port().expect("port");
    let port = free_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    // Tenant `broken`'s placement logs in with a wrong password: the
    // backend's refusal is logged, the password it tried must not be.
    let config = pg
        .config(&["acme", "broken"], 1, "")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(&backend_password("broken"), WRONG_BACKEND_PASSWORD)
        + &format!(
            "\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\
             users = {{ admin = \"{ADMIN_PASSWORD}\" }}\n"
        );
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .args(["--log-format", "json", "-c"])
            .arg(&path)
            .env("PGTENANT_LOG", "trace")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start pgtenant"),
    );
    let mut stderr = child.0.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    if tokio::time::timeout(Duration::from_secs(30), wait_healthy(admin))
        .await
        .is_err()
    {
        let _ = child.0.kill();
        let _ = child.0.wait();
        panic!(
            "no /healthz; the proxy said: {}",
            reader.join().unwrap_or_default()
        );
    }

    let base = format!("host=127.0.0.1 port={port} connect_timeout=10");
    let c = connect(&format!(
        "{base} user=app.acme password=acme-secret dbname=acme"
    ))
    .await
    .expect("acme logs in");
    c.simple_query("SELECT 1").await.expect("query");
    let e = connect(&format!(
        "{base} user=app.acme password={WRONG_CLIENT_PASSWORD} dbname=acme"
    ))
    .await
    .expect_err("a wrong password is refused");
    assert_eq!(sqlstate(&e), "28P01");
    let e = connect(&format!(
        "{base} user=app.broken password=broken-secret dbname=broken"
    ))
    .await
    .expect_err("the backend refuses the placement's password");
    assert_eq!(sqlstate(&e), "08006");
    let console = connect(&format!(
        "{base} user=admin password={ADMIN_PASSWORD} dbname=pgtenant"
    ))
    .await
    .expect("admin logs in");
    console
        .simple_query("SHOW CONFIG")
        .await
        .expect("show config");
    console.simple_query("RELOAD").await.expect("reload");
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(http(admin, "GET", "/metrics", &auth).await.0, 200);
    assert_eq!(
        http(admin, "GET", "/metrics", "Authorization: Bearer nope\r\n")
            .await
            .0,
        401
    );
    assert_eq!(http(admin, "POST", "/reload", &auth).await.0, 200);
    drop((c, console));

    let pid = child.0.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    while child.0.try_wait().expect("wait").is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "no exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = reader.join().expect("stderr reader");

    let secret_file = std::fs::read_to_string(dir.path().join("pgtenant.secret"))
        .expect("the secret file was created next to the config");
    let secrets = [
        "acme-secret",
        WRONG_CLIENT_PASSWORD,
        &backend_password("acme"),
        WRONG_BACKEND_PASSWORD,
        ADMIN_PASSWORD,
        TOKEN,
        secret_file.trim(),
    ];
    let mut spans = Vec::new();
    for line in logs.lines().filter(|l| !l.is_empty()) {
        for s in secrets {
            assert!(!line.contains(s), "a log line holds a secret: {line}");
        }
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["span"]["name"] == "client" {
            spans.push(v);
        }
    }
    // Every client line names its connection and address; the user and
    // tenant are there from the startup packet on.
    assert!(!spans.is_empty(), "no line of a client connection: {logs}");
    for v in &spans {
        assert!(v["span"]["conn"].is_u64(), "{v}");
        assert!(v["span"]["peer"].is_string(), "{v}");
    }
    let has = |user: &str, tenant: &str| {
        spans
            .iter()
            .any(|v| v["span"]["user"] == user && v["span"]["tenant"] == tenant)
    };
    assert!(has("app.acme", "acme"), "{logs}");
    assert!(has("app.broken", "broken"), "{logs}");
    assert!(has("admin", "pgtenant"), "{logs}");
    // Two connections never share an id.
    let mut ids: Vec<(u64, &str)> = spans
        .iter()
        .filter_map(|v| Some((v["span"]["conn"].as_u64()?, v["span"]["peer"].as_str()?)))
        .collect();
    ids.sort();
    ids.dedup();
    for w in ids.windows(2) {
        assert!(w[0].0 != w[1].0, "one id, two peers: {w:?}");
    }
}
