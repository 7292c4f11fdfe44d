//! Many tenants on one placement: the config's size must not make the
//! proxy slow to check or to start, and every tenant's clients go through
//! the placement's one pool, whatever the number of tenants.

mod common;

use common::{TestPg, TestProxy, backend_user};
use pgtenant::pgcluster::HostAuth;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `n` tenants `t0`..`t{n-1}`, each with user `app` and the plaintext
/// password `pw-tN`, all on placement `shared` (a database several
/// tenants may share).
fn shared_config(url: &str, n: usize, pool_size: u32) -> String {
    let mut s = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\ndefault_placement = \"shared\"\n\n\
         [placements.shared]\nurl = \"{url}\"\nisolation = \"database\"\n\
         allow_shared_database = true\npool_size = {pool_size}\n\n"
    );
    for i in 0..n {
        s.push_str(&format!(
            "[tenants.t{i}]\nusers = {{ app = \"pw-t{i}\" }}\n"
        ));
    }
    s
}

/// `pgtenant check` used to derive a SCRAM verifier (4096 HMAC rounds) for
/// every plaintext password, which cannot fail: hours for this config in a
/// debug build, seconds per thousand tenants in a release build. It must
/// only parse and validate.
#[test]
fn check_of_twenty_thousand_plaintext_tenants_derives_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("many.toml");
    let url = "postgres://pgt_shared:pw@127.0.0.1:5432/shared";
    std::fs::write(&path, shared_config(url, 20_000, 20)).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["check", "-c", path.to_str().expect("path")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgtenant check");
    // Generous: parsing takes a few seconds even unoptimised on a loaded
    // machine; deriving took far longer than this.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pgtenant check of 20,000 tenants took over 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("20000 tenants"), "{stdout}");
}

/// Clients of many tenants log in, each with its own tenant's password
/// (the verifiers are derived on several threads at start and must land
/// on the right users), and share the placement's pool: PostgreSQL never
/// sees more of its connections than pool_size, as it would if pools were
/// kept per tenant.
#[tokio::test]
async fn clients_of_many_tenants_share_one_pool() {
    const TENANTS: usize = 64;
    const CLIENTS: usize = 32;
    const POOL: u32 = 2;
    let pg = TestPg::start(HostAuth::Trust, &["shared"]).await;
    let proxy = TestProxy::start(&shared_config(&pg.url("tenant_shared"), TENANTS, POOL)).await;
    // Deriving the verifiers takes a while unoptimised on a loaded
    // machine; the clients' 10 s connect timeout must not count it.
    let ready = proxy.conn_str("app.t0", "pw-t0", "t0");
    let deadline = Instant::now() + Duration::from_secs(120);
    while proxy.try_connect(&ready).await.is_err() {
        assert!(Instant::now() < deadline, "the proxy did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Tenants spread over the whole config, one client each, all at once.
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let tenant = format!("t{}", k * TENANTS / CLIENTS);
            let conn = proxy.conn_str(&format!("app.{tenant}"), &format!("pw-{tenant}"), &tenant);
            let port = proxy.port;
            tokio::spawn(async move {
                let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("{tenant} on port {port}: {e}"));
                tokio::spawn(connection);
                for _ in 0..5 {
                    let rows = client
                        .query("SELECT count(*) FROM notes, pg_sleep(0.01)", &[])
                        .await
                        .unwrap_or_else(|e| panic!("{tenant}: {e}"));
                    assert_eq!(rows[0].get::<_, i64>(0), 2, "{tenant}");
                }
                client
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }

    // A wrong password is still refused: each tenant has its own verifier.
    let wrong = proxy
        .try_connect(&proxy.conn_str("app.t1", "pw-t2", "t1"))
        .await
        .expect_err("t2's password does not open t1");
    assert_eq!(common::sqlstate(&wrong), "28P01");

    let admin = pg.cluster.admin("postgres").await.expect("admin");
    let backends: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&backend_user("shared")],
        )
        .await
        .expect("count backends")
        .get(0);
    assert!(
        (1..=i64::from(POOL)).contains(&backends),
        "{backends} server connections for {CLIENTS} tenants' clients; pool_size is {POOL}"
    );
    drop(clients);
    proxy.stop().await.expect("stops");
}
