//! `pgtenant demo`, the newcomer's one command, run as a user would: the
//! real binary, the printed connection strings pasted into psql, Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_serves_tenants_and_cleans_up_on_ctrl_c() {
    let port = pgtenant::pgcluster::free_port().expect("port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["demo", "--port", &port.to_string()])
        .env("PGTENANT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut strings = Vec::new();
    let mut config = None;
    let started = Instant::now();
    for line in lines.by_ref() {
        let line = line.expect("read");
        if let Some(rest) = line.split("(config: ").nth(1) {
            config = Some(rest.trim_end_matches(')').to_string());
        }
        if let Some(url) = line.trim().strip_prefix("psql \"") {
            strings.push(url.split('"').next().expect("url").to_string());
        }
        if line.contains("Ctrl-C") || started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    let config = config.expect("the demo names its config");
    let data_dir = std::path::Path::new(&config)
        .parent()
        .expect("dir")
        .to_path_buf();
    assert!(data_dir.exists());

    // At least three tenants work from the printed strings, each seeing its
    // own database only.
    let mut working = 0;
    for url in &strings {
        let out = Command::new("psql")
            .args([
                url.as_str(),
                "-XAtc",
                "select current_database(), string_agg(distinct tenant_id, ',') from notes",
            ])
            .output()
            .expect("psql");
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            // `postgres://app.TENANT:...`, or over TLS `host=TENANT.db.localhost ...`.
            let tenant = url
                .split("app.")
                .nth(1)
                .and_then(|r| r.split(':').next())
                .or_else(|| url.strip_prefix("host=").and_then(|r| r.split('.').next()))
                .expect("tenant");
            // A dedicated tenant has its database; a shared one sees
            // only its own rows of the shared database.
            let expected = if pgtenant::demo::SHARED.contains(&tenant) {
                format!("app_shared|{tenant}")
            } else {
                format!("tenant_{tenant}|{tenant}")
            };
            assert_eq!(text.trim(), expected, "{url}");
            working += 1;
        }
    }
    assert_eq!(
        working,
        strings.len(),
        "only {working} of {} printed tenants work",
        strings.len()
    );
    assert!(
        strings.iter().any(|s| s.contains("sslmode=verify-full")),
        "a TLS connection string: {strings:?}"
    );
    assert!(
        working >= 5,
        "two dedicated and several shared tenants: {strings:?}"
    );

    // Ctrl-C stops everything and removes the throwaway data.
    let pid = child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    assert!(
        !data_dir.exists(),
        "throwaway data left at {}",
        data_dir.display()
    );
}
