//! Live reload (issue 21 point 4), the configuration side: SIGHUP on the
//! real binary, the library entry point and its summary, new tenants at
//! once, removed tenants refused while their clients finish, unchanged
//! tenants keeping every connection, and invalid files rejected whole.
//! Placement and pool changes: `reload_pools.rs`.

mod common;

use common::live::{ConfigText, LiveProxy, backend_pid};
use common::{TestPg, sqlstate};
use pgtenant::pgcluster::HostAuth;
use pgtenant::reload::ReloadError;
use std::time::{Duration, Instant};

/// Tenants a and b on one shared placement `p` (database `tenant_a`), c
/// on its own (`tenant_c`).
fn base(pg: &TestPg) -> ConfigText {
    ConfigText::new("")
        .placement(pg, "p", "a", 2)
        .placement(pg, "cp", "c", 2)
        .tenant("a", "p", "")
        .tenant("b", "p", "")
        .tenant("c", "cp", "")
}

#[tokio::test]
async fn a_reload_adds_tenants_connectable_at_once_and_says_what_changed() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a", "c"]).await;
    let proxy = LiveProxy::start(&base(&pg).0).await;
    let refused = proxy
        .try_connect("d")
        .await
        .expect_err("d is not configured yet");
    assert_eq!(sqlstate(&refused), "3D000");
    let summary = proxy
        .reload(&base(&pg).tenant("d", "p", "").tenant("e", "cp", "").0)
        .await
        .expect("reload");
    assert_eq!(summary.tenants_added, ["d", "e"]);
    assert!(summary.tenants_removed.is_empty() && summary.placements_changed.is_empty());
    let shown = summary.to_string();
    assert!(shown.contains("tenants added 2: d, e"), "{shown}");
    // At once: the first connection after the reload returned.
    for t in ["d", "e"] {
        let c = proxy.connect(t).await;
        c.simple_query("SELECT 1").await.expect("query");
    }
}

#[tokio::test]
async fn an_unchanged_tenant_keeps_its_client_and_server_connection() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a", "c"]).await;
    // One connection on a's placement: any new pool would show a new pid.
    let one = ConfigText::new("")
        .placement(&pg, "p", "a", 1)
        .placement(&pg, "cp", "c", 2)
        .tenant("a", "p", "")
        .tenant("c", "cp", "");
    let proxy = LiveProxy::start(&one.0).await;
    let a = proxy.connect("a").await;
    let between = backend_pid(&a).await;
    let mid = proxy.connect("a").await;
    mid.batch_execute("BEGIN").await.expect("begin");
    let pid = backend_pid(&mid).await;
    assert_eq!(pid, between, "one connection");
    // Adds tenant b, changes tenant c (limits and password) and c's
    // placement's size.
    let changed = ConfigText::new("")
        .placement(&pg, "p", "a", 1)
        .placement(&pg, "cp", "c", 3)
        .tenant("a", "p", "")
        .tenant("b", "p", "")
        .tenant("c", "cp", "max_client_connections = 7");
    let summary = proxy.reload(&changed.0).await.expect("reload");
    assert_eq!(summary.tenants_added, ["b"]);
    assert_eq!(summary.tenants_changed, ["c"]);
    // Mid-transaction, the same server connection; then still the same.
    assert_eq!(backend_pid(&mid).await, pid);
    mid.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(backend_pid(&mid).await, pid);
    assert_eq!(backend_pid(&a).await, pid, "the idle client too");
    // b shares the kept pool (a seat added live) and its one connection.
    let b = proxy.connect("b").await;
    assert_eq!(backend_pid(&b).await, pid);
}

#[tokio::test]
async fn a_removed_tenant_is_refused_like_an_unknown_one_while_its_clients_finish() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a", "c"]).await;
    let proxy = LiveProxy::start(&base(&pg).0).await;
    let (busy, busy_end) = proxy.connect_watched("b").await;
    let (idle, idle_end) = proxy.connect_watched("b").await;
    idle.simple_query("SELECT 1").await.expect("query");
    busy.batch_execute(
        "BEGIN; CREATE TEMP TABLE t (x int) ON COMMIT DROP; INSERT INTO t VALUES (1)",
    )
    .await
    .expect("transaction");
    let without_b = ConfigText::new("")
        .placement(&pg, "p", "a", 2)
        .placement(&pg, "cp", "c", 2)
        .tenant("a", "p", "")
        .tenant("c", "cp", "");
    let summary = proxy.reload(&without_b.0).await.expect("reload");
    assert_eq!(summary.tenants_removed, ["b"]);
    // New connections: exactly what a tenant never configured gets.
    let unknown = proxy.try_connect("zz").await.expect_err("unknown");
    let removed = proxy.try_connect("b").await.expect_err("removed");
    assert_eq!(sqlstate(&removed), sqlstate(&unknown));
    assert_eq!(sqlstate(&removed), "3D000");
    let message = removed.as_db_error().map(|d| d.message().to_string());
    assert_eq!(message.as_deref(), Some("tenant \"b\" does not exist"));
    // The running transaction finishes...
    let n: i64 = busy
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("still running")
        .get(0);
    assert_eq!(n, 1);
    busy.batch_execute("COMMIT").await.expect("commit");
    // ...then the client is told why it is closed (57P01), as is the one
    // that was idle.
    for end in [busy_end, idle_end] {
        let (code, message) = end.error().await;
        assert_eq!(code, "57P01", "{message}");
        assert!(message.contains("tenant \"b\" was removed"), "{message}");
    }
    assert!(busy.simple_query("SELECT 1").await.is_err() && idle.is_closed());
    // Others are untouched.
    proxy
        .connect("a")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("a");
}

#[tokio::test]
async fn an_invalid_file_is_rejected_whole_and_the_running_config_stays() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a", "c"]).await;
    let proxy = LiveProxy::start(&base(&pg).0).await;
    let a = proxy.connect("a").await;
    let pid = backend_pid(&a).await;
    // Valid changes (a new tenant, a bigger pool) next to a malformed
    // verifier, found only while building the catalog: nothing of it may
    // take effect.
    let bad = ConfigText::new("")
        .placement(&pg, "p", "a", 5)
        .placement(&pg, "cp", "c", 2)
        .tenant("a", "p", "")
        .tenant("b", "p", "")
        .tenant("c", "cp", "")
        .tenant("d", "p", "");
    let bad = format!(
        "{}[tenants.x]\nplacement = \"p\"\nusers = {{ app = \"SCRAM-SHA-256$4096:bad\" }}\n",
        bad.0
    );
    let err = proxy.reload(&bad).await.expect_err("rejected");
    let ReloadError::Config(e) = &err else {
        panic!("want a config error: {err}");
    };
    assert_eq!(e.key, "tenants.x.users.app", "{err}");
    assert!(e.line.is_some(), "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains("tenants.x.users.app") && shown.contains("pgtenant.toml:"),
        "{shown}"
    );
    assert_eq!(proxy.pool_size("p"), 2, "the pool was not resized");
    assert_eq!(
        sqlstate(&proxy.try_connect("d").await.expect_err("no d")),
        "3D000"
    );
    assert_eq!(backend_pid(&a).await, pid);
    // Found by the file's validation: the same.
    let err = proxy
        .reload(&base(&pg).tenant("x", "nowhere", "").0)
        .await
        .expect_err("rejected");
    assert!(
        matches!(&err, ReloadError::Config(e) if e.key == "tenants.x.placement"),
        "{err}"
    );
    // Text that does not parse: rejected the same way.
    let err = proxy
        .reload("[proxy\nlisten = ")
        .await
        .expect_err("rejected");
    assert!(matches!(err, ReloadError::Config(_)), "{err}");
    proxy
        .connect("b")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("b");
}

#[tokio::test]
async fn restart_only_keys_keep_their_values_and_concurrent_reloads_both_finish() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a", "c"]).await;
    let proxy = LiveProxy::start(&base(&pg).0).await;
    let moved = base(&pg)
        .0
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    std::fs::write(&proxy.path, &moved).expect("write");
    let (one, two) = tokio::join!(
        pgtenant::reload::reload(&proxy.state),
        pgtenant::reload::reload(&proxy.state)
    );
    let (one, two) = (one.expect("reload"), two.expect("reload"));
    for s in [&one, &two] {
        assert_eq!(s.kept_restart_values.len(), 1, "{s}");
        assert!(
            s.kept_restart_values[0].starts_with("proxy.listen changed"),
            "{s}"
        );
    }
    assert_eq!(proxy.state.snapshot().config.proxy.listen, "127.0.0.1:0");
    proxy
        .connect("a")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("still listening");
}

/// The real binary, its config file and log.
struct Binary {
    child: std::process::Child,
    log: std::path::PathBuf,
    path: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Binary {
    fn start(config: &str) -> Binary {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let path = dir.path().join("pgtenant.toml");
        let config = config.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        std::fs::write(&path, config).expect("write config");
        let log = dir.path().join("pgtenant.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .arg("-c")
            .arg(&path)
            .env("PGTENANT_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start pgtenant");
        Binary {
            child,
            log,
            path,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Rewrites the file, sends SIGHUP, and waits for the `n`th reload's
    /// log line (accepted or rejected).
    async fn hangup(&self, config: &str, n: usize) -> String {
        let config = config.replace("127.0.0.1:0", &format!("127.0.0.1:{}", self.port));
        std::fs::write(&self.path, config).expect("write config");
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        assert_eq!(rc, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let done = log.matches("configuration reloaded").count()
                + log.matches("new configuration was rejected").count();
            if done >= n {
                return log;
            }
            assert!(Instant::now() < deadline, "no reload logged:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn connect(&self, tenant: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=app.{tenant} password={tenant}-secret dbname={tenant} connect_timeout=10",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sighup_rereads_the_file_the_binary_was_started_with() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a", "c"]).await;
    let proxy = Binary::start(&base(&pg).0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let a = loop {
        match proxy.connect("a").await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "proxy did not start: {e}\n{}",
                    proxy.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(proxy.connect("d").await.is_err());
    let log = proxy.hangup(&base(&pg).tenant("d", "p", "").0, 1).await;
    assert!(log.contains("tenants added 1: d"), "{log}");
    proxy
        .connect("d")
        .await
        .expect("d after SIGHUP")
        .simple_query("SELECT 1")
        .await
        .expect("d");
    // An invalid file: logged with key and line, the running config stays.
    let log = proxy
        .hangup(&base(&pg).tenant("x", "nowhere", "").0, 2)
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("new configuration was rejected"))
        .unwrap_or_default();
    assert!(
        line.contains("tenants.x.placement") && line.contains("pgtenant.toml:"),
        "{log}"
    );
    proxy
        .connect("d")
        .await
        .expect("d stays")
        .simple_query("SELECT 1")
        .await
        .expect("d");
    a.simple_query("SELECT 1").await.expect("a untouched");
}

/// The build runs on a thread of its own: the caller's runtime (the
/// SIGHUP task's; a data-plane worker's for the admin console) goes on
/// serving while it runs. Here the caller is this test's one thread.
#[tokio::test]
async fn a_slow_build_runs_off_the_callers_thread() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["a", "c"]).await;
    // Plaintext passwords: one SCRAM derivation each (4096 iterations),
    // seconds for a few hundred in a debug build.
    let many = |n: usize| {
        let mut c = base(&pg);
        for i in 0..n {
            c = c.tenant(&format!("bulk{i}"), "p", "");
        }
        c.0
    };
    let proxy = LiveProxy::start(&many(0)).await;
    let a = proxy.connect("a").await;
    std::fs::write(&proxy.path, many(300)).expect("write");
    let state = std::sync::Arc::clone(&proxy.state);
    let reload = tokio::spawn(async move { pgtenant::reload::reload(&state).await });
    let mut served = 0;
    while !reload.is_finished() {
        a.simple_query("SELECT 1")
            .await
            .expect("served during the reload");
        served += 1;
    }
    let summary = reload.await.expect("task").expect("reload");
    assert_eq!(summary.tenants_added.len(), 300);
    // Not a timing bound: the client was served at all while it ran.
    assert!(served >= 2, "{served} queries while the snapshot was built");
    proxy
        .connect("bulk299")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("new");
}
