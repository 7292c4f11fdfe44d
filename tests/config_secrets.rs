//! Secrets kept out of the config file (issue 20): the real binary reads
//! a placement URL from an environment variable and a client password and
//! the admin token from files; `check` names the key of a variable that
//! is not set, never a value; a rotated file is read again on SIGHUP.

mod common;

use common::http::{http, wait_healthy};
use common::{Child, TestPg, backend_password, sqlstate};
use pgtenant::pgcluster::{HostAuth, free_port};
use std::io::Read;
use std::time::{Duration, Instant};

const URL_VAR: &str = "PGTENANT_IT_ACME_URL";
const TOKEN: &str = "token-from-a-file-3e9c1d77";

async fn login(port: u16, password: &str) -> Result<(), tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={port} user=app.acme password={password} dbname=acme connect_timeout=10"
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.map(|_| ())
}

#[tokio::test]
async fn the_binary_reads_secrets_from_the_environment_and_files() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let url = pg.url("tenant_acme");
    let (port, admin) = (free_port().expect("port"), free_port().expect("port"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    std::fs::write(dir.path().join("secrets/acme-app"), "file-pw-8d0e\n").expect("write");
    std::fs::write(dir.path().join("secrets/token"), format!("{TOKEN}\n")).expect("write");
    let config = pg
        .config(&["acme"], 1, "")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(&format!("\"{url}\""), &format!("{{ env = \"{URL_VAR}\" }}"))
        .replace(
            "users = { app = \"acme-secret\" }",
            "users = { app = { file = \"secrets/acme-app\" } }",
        )
        + &format!(
            "\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = {{ file = \"secrets/token\" }}\n"
        );
    assert!(!config.contains(&backend_password("acme")), "{config}");
    let path = dir.path().join("pgtenant.toml");
    std::fs::write(&path, config).expect("write config");

    // Without the variable: refused, naming the key and the variable.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["check", "-c"])
        .arg(&path)
        .env_remove(URL_VAR)
        .output()
        .expect("run check");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("placements.acme_db.url"), "{said}");
    assert!(said.contains(&format!("{URL_VAR} is not set")), "{said}");

    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .args(["-c"])
            .arg(&path)
            .env(URL_VAR, &url)
            .env("PGTENANT_LOG", "debug")
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
    tokio::time::timeout(Duration::from_secs(30), wait_healthy(admin))
        .await
        .expect("the proxy starts");
    login(port, "file-pw-8d0e")
        .await
        .expect("the password from the file; the placement from the variable");
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(http(admin, "GET", "/metrics", &auth).await.0, 200);

    // Rotate the password file; SIGHUP reads it again.
    std::fs::write(dir.path().join("secrets/acme-app"), "rotated-pw-51c2\n").expect("write");
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: signals to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let started = Instant::now();
    loop {
        match login(port, "rotated-pw-51c2").await {
            Ok(()) => break,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                assert_eq!(sqlstate(&e), "28P01", "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the rotated password never worked: {e}"),
        }
    }
    let e = login(port, "file-pw-8d0e").await.expect_err("the old one");
    assert_eq!(sqlstate(&e), "28P01");

    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    while child.0.try_wait().expect("wait").is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "no exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = reader.join().expect("stderr reader");
    for secret in [
        "file-pw-8d0e",
        "rotated-pw-51c2",
        TOKEN,
        backend_password("acme").as_str(),
    ] {
        assert!(!logs.contains(secret), "the logs hold a secret: {logs}");
    }
    // Nothing in the file is plaintext now: no exposure warning.
    assert!(!logs.contains("holds secrets in clear"), "{logs}");
}
