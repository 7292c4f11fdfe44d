//! The admin console (issue 21 point 1): `psql -U admin pgtenant` with
//! the `[admin] users`, the SHOW listings, PAUSE/RESUME, SUSPEND, KILL,
//! and hostile input on the console. Against a real PostgreSQL, with real
//! clients (tokio-postgres, psql, raw sockets for forged messages).

mod common;

use common::raw;
use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::collections::HashMap;
use std::time::Duration;
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN_PASSWORD: &str = "admin-secret";

/// Rows of a simple query as column -> value maps.
async fn rows(c: &Client, sql: &str) -> Vec<HashMap<String, Option<String>>> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}: {:?}", e.as_db_error()));
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).map(str::to_string)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The server's message of an error ("" if none).
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

fn get<'a>(row: &'a HashMap<String, Option<String>>, col: &str) -> Option<&'a str> {
    row.get(col)
        .unwrap_or_else(|| panic!("no column {col} in {row:?}"))
        .as_deref()
}

/// SHOW POOLS' `maxwait` + `maxwait_us` on `placement`'s row for `tenant`
/// (None: the placement's own row).
fn maxwait(
    pools: &[HashMap<String, Option<String>>],
    placement: &str,
    tenant: Option<&str>,
) -> Duration {
    let row = pools
        .iter()
        .find(|r| get(r, "placement") == Some(placement) && get(r, "tenant") == tenant)
        .unwrap_or_else(|| panic!("no {placement} row for {tenant:?}: {pools:?}"));
    let n = |col| -> u64 {
        get(row, col)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{col} of {row:?}"))
    };
    assert!(n("maxwait_us") < 1_000_000, "{row:?}");
    Duration::from_secs(n("maxwait")) + Duration::from_micros(n("maxwait_us"))
}

async fn admin(proxy: &TestProxy) -> Client {
    proxy
        .try_connect(&proxy.conn_str("admin", ADMIN_PASSWORD, "pgtenant"))
        .await
        .unwrap_or_else(|e| panic!("admin login: {e}: {:?}", e.as_db_error()))
}

/// Two tenants on dedicated placements and `shared_a`/`shared_b` on one
/// shared placement; `[admin] users` = admin; `proxy_extra` into `[proxy]`,
/// `acme_extra` into `[tenants.acme]`.
async fn setup(pool_size: u32, proxy_extra: &str, acme_extra: &str) -> (TestPg, TestProxy) {
    let pg = TestPg::start(HostAuth::Trust, &["acme", "globex", "pool"]).await;
    let mut config = pg.config(&["acme", "globex"], pool_size, proxy_extra);
    config = config.replace(
        "[tenants.acme]\n",
        &format!("[tenants.acme]\n{acme_extra}\n"),
    );
    config.push_str(&format!(
        "[placements.shared]\nurl = \"{}\"\nisolation = \"database\"\nallow_shared_database = true\n\
         pool_size = 4\n\n\
         [tenants.shared_a]\nplacement = \"shared\"\nusers = {{ app = \"shared_a-secret\" }}\n\n\
         [tenants.shared_b]\nplacement = \"shared\"\nusers = {{ app = \"shared_b-secret\" }}\n\n\
         [admin]\nusers = {{ admin = \"{ADMIN_PASSWORD}\" }}\n",
        pg.url("tenant_pool")
    ));
    let proxy = TestProxy::start(&config).await;
    (pg, proxy)
}

#[tokio::test]
async fn admin_logins_and_refusals() {
    let (_pg, proxy) = setup(2, "", "").await;
    let c = admin(&proxy).await;
    let v = rows(&c, "SHOW VERSION").await;
    assert!(
        get(&v[0], "version").is_some_and(|s| s.starts_with("pgtenant ")),
        "{v:?}"
    );

    // Wrong password, unknown admin: the same 28P01 and message shape.
    let bad = proxy
        .try_connect(&proxy.conn_str("admin", "wrong", "pgtenant"))
        .await
        .expect_err("wrong password refused");
    assert_eq!(sqlstate(&bad), "28P01");
    let unknown = proxy
        .try_connect(&proxy.conn_str("nobody", ADMIN_PASSWORD, "pgtenant"))
        .await
        .expect_err("unknown admin refused");
    assert_eq!(sqlstate(&unknown), "28P01");

    // A tenant's user, with its right password, is no admin.
    let tenant_user = proxy
        .try_connect(&proxy.conn_str("app.acme", "acme-secret", "pgtenant"))
        .await
        .expect_err("tenant user refused on the console");
    assert_eq!(sqlstate(&tenant_user), "28P01");
    let tenant_user = proxy
        .try_connect(&proxy.conn_str("app", "acme-secret", "pgtenant"))
        .await
        .expect_err("tenant user refused on the console");
    assert_eq!(sqlstate(&tenant_user), "28P01");

    // The admin cannot reach a placement: on a tenant's database it is an
    // unknown user there.
    let on_tenant = proxy
        .try_connect(&proxy.conn_str("admin", ADMIN_PASSWORD, "acme"))
        .await
        .expect_err("admin refused on a tenant database");
    assert_eq!(sqlstate(&on_tenant), "28P01");

    // psql, as an operator would run it.
    let port = proxy.port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "admin",
                "-c",
                "show tenants;",
                "pgtenant",
            ])
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
    })
    .await
    .expect("join")
    .expect("run psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("acme|acme_db|database|active"), "{stdout}");
    drop(c);
    proxy.stop().await.expect("clean stop");
}

#[test]
fn a_tenant_named_like_the_console_is_refused() {
    let text = "[proxy]\ndefault_placement = \"p\"\n\
                [placements.p]\nurl = \"postgres://u@127.0.0.1/db\"\nisolation = \"database\"\n\
                [tenants.pgtenant]\nusers = { app = \"x\" }\n";
    let err = pgtenant::config::parse_str(text, "t.toml").expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("tenants.pgtenant") && msg.contains("reserved"),
        "{msg}"
    );
}

#[tokio::test]
async fn show_listings() {
    let (_pg, proxy) = setup(2, "", "").await;
    let c = admin(&proxy).await;
    let acme = proxy.connect("acme").await;
    acme.simple_query("SELECT 1").await.expect("query");
    let shared = proxy.connect("shared_a").await;
    shared.simple_query("SELECT 1").await.expect("query");

    let tenants = rows(&c, "show tenants").await;
    let names: Vec<_> = tenants.iter().map(|r| get(r, "tenant")).collect();
    assert_eq!(
        names,
        [
            Some("acme"),
            Some("globex"),
            Some("shared_a"),
            Some("shared_b")
        ]
    );
    let a = &tenants[0];
    assert_eq!(get(a, "placement"), Some("acme_db"));
    assert_eq!(get(a, "isolation"), Some("database"));
    assert_eq!(get(a, "state"), Some("active"));
    assert_eq!(get(a, "client_connections"), Some("1"));
    assert_eq!(get(a, "max_server_connections"), Some("2"));
    assert_eq!(
        get(a, "server_connections"),
        Some("0"),
        "idle between transactions"
    );

    let pools = rows(&c, "SHOW POOLS;").await;
    let shared_total = pools
        .iter()
        .find(|r| get(r, "placement") == Some("shared") && get(r, "tenant").is_none())
        .expect("placement row");
    assert_eq!(get(shared_total, "cl_active"), Some("1"));
    assert_eq!(get(shared_total, "sv_idle"), Some("1"), "{pools:?}");
    assert_eq!(get(shared_total, "pool_size"), Some("4"));
    let shared_a = pools
        .iter()
        .find(|r| get(r, "tenant") == Some("shared_a"))
        .expect("tenant row");
    assert_eq!(get(shared_a, "cl_active"), Some("1"));
    assert_eq!(get(shared_a, "cl_waiting"), Some("0"));
    assert_eq!(get(shared_a, "pool_mode"), Some("transaction"));

    let clients = rows(&c, "SHOW CLIENTS").await;
    let tenants_seen: Vec<_> = clients.iter().map(|r| get(r, "tenant")).collect();
    assert!(tenants_seen.contains(&Some("acme")), "{clients:?}");
    assert!(tenants_seen.contains(&Some("shared_a")), "{clients:?}");
    assert!(
        tenants_seen.contains(&Some("pgtenant")),
        "the console itself"
    );
    let acme_row = clients
        .iter()
        .find(|r| get(r, "tenant") == Some("acme"))
        .expect("acme client");
    assert_eq!(get(acme_row, "user"), Some("app"));
    assert_eq!(get(acme_row, "tls"), None, "a plaintext client");
    assert_eq!(get(acme_row, "addr"), Some("127.0.0.1"));
    assert!(get(acme_row, "connect_time").is_some_and(|t| t.ends_with('Z')));

    let servers = rows(&c, "SHOW SERVERS").await;
    let acme_server = servers
        .iter()
        .find(|r| get(r, "placement") == Some("acme_db"))
        .expect("acme's server connection");
    assert_eq!(get(acme_server, "tenant"), Some("acme"));
    assert_eq!(get(acme_server, "state"), Some("idle"));
    assert_eq!(get(acme_server, "database"), Some("tenant_acme"));
    let pid: i32 = acme
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert_eq!(
        get(acme_server, "remote_pid"),
        Some(pid.to_string().as_str())
    );
    let shared_server = servers
        .iter()
        .find(|r| get(r, "placement") == Some("shared"))
        .expect("shared server connection");
    assert_eq!(
        get(shared_server, "tenant"),
        None,
        "a shared pool's connection"
    );

    // acme ran one query (the SELECT 1 above) before its pid; stats
    // count what has finished.
    let stats = rows(&c, "show stats").await;
    let acme_stats = stats
        .iter()
        .find(|r| get(r, "tenant") == Some("acme"))
        .expect("acme's stats");
    let count = |col| -> u64 {
        get(acme_stats, col)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{col}: {acme_stats:?}"))
    };
    assert!(count("total_xact_count") >= 2, "{acme_stats:?}");
    assert!(count("total_query_count") >= 2, "{acme_stats:?}");
    assert!(count("total_received") > 0 && count("total_sent") > 0);
    assert!(count("avg_xact_time") > 0, "{acme_stats:?}");
    assert!(
        !stats.iter().any(|r| get(r, "tenant") == Some("globex")),
        "a tenant without clients has no row: {stats:?}"
    );

    let config = rows(&c, "SHOW CONFIG").await;
    let all = format!("{config:?}");
    for secret in ["acme-secret", ADMIN_PASSWORD, "backend-acme-secret"] {
        assert!(!all.contains(secret), "SHOW CONFIG shows {secret}: {all}");
    }
    let url = config
        .iter()
        .find(|r| get(r, "key") == Some("placements.acme_db.url"))
        .expect("url row");
    assert!(get(url, "value").is_some_and(|v| v.contains("tenant_acme")));
    assert!(
        config
            .iter()
            .any(|r| get(r, "key") == Some("proxy.pause_timeout"))
    );

    // One command per query string, as PgBouncer's console; trailing
    // semicolons are fine.
    let e = c
        .simple_query("SHOW VERSION; show version")
        .await
        .expect_err("one command per query");
    assert_eq!(sqlstate(&e), "42601");
    assert_eq!(rows(&c, "show version;;").await.len(), 1);

    // Unknown commands: an error, and the console goes on.
    let e = c.simple_query("SELECT 1").await.expect_err("refused");
    assert_eq!(sqlstate(&e), "42601");
    let e = c.simple_query("PAUSE nosuch").await.expect_err("refused");
    assert_eq!(sqlstate(&e), "3D000");
    assert_eq!(rows(&c, "SHOW VERSION").await.len(), 1);
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn pause_waits_for_running_transactions_and_holds_new_ones_until_resume() {
    // query_wait_timeout far below the pause: a held client must not run
    // into it.
    let (_pg, proxy) = setup(2, "query_wait_timeout = \"1s\"", "").await;
    let c = admin(&proxy).await;
    let running = proxy.connect("acme").await;
    let held = proxy.connect("acme").await;
    let other = proxy.connect("globex").await;
    running.simple_query("BEGIN").await.expect("begin");
    running
        .simple_query("INSERT INTO notes (tenant_id, body) VALUES ('acme', 'during pause')")
        .await
        .expect("insert");

    // PAUSE returns only once the running transaction has finished.
    let pause = tokio::spawn(async move { c.simple_query("PAUSE acme").await.map(|_| c) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned with a transaction running"
    );
    // The running transaction goes on and finishes.
    running
        .simple_query("INSERT INTO notes (tenant_id, body) VALUES ('acme', 'still running')")
        .await
        .expect("the running transaction goes on");
    running.simple_query("COMMIT").await.expect("commit");
    let c = tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE returns once the transaction ended")
        .expect("join")
        .expect("PAUSE");
    let t = rows(&c, "SHOW TENANTS").await;
    assert_eq!(get(&t[0], "state"), Some("paused"));

    // A new transaction waits (past query_wait_timeout), not failing.
    let waiting = tokio::spawn(async move {
        held.simple_query("SELECT count(*) FROM notes")
            .await
            .map(|_| held)
    });
    // (Held past query_wait_timeout; that it would run after twice that,
    // to the millisecond: `client::timeout_tests`, on a paused clock.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "a paused tenant's transaction ran");
    // Other tenants are not paused.
    tokio::time::timeout(Duration::from_secs(10), other.simple_query("SELECT 1"))
        .await
        .expect("globex is not held")
        .expect("globex query");
    let pools = rows(&c, "SHOW POOLS").await;
    let acme_pool = pools
        .iter()
        .find(|r| get(r, "tenant") == Some("acme"))
        .expect("acme row");
    assert_eq!(get(acme_pool, "cl_waiting"), Some("1"), "{pools:?}");
    // Held by the pause for 1.5 s so far: PgBouncer's maxwait counts it.
    for tenant in [Some("acme"), None] {
        let waited = maxwait(&pools, "acme_db", tenant);
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(30),
            "{tenant:?} waited {waited:?}: {pools:?}"
        );
    }

    c.simple_query("RESUME acme").await.expect("resume");
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("released by RESUME")
        .expect("join")
        .expect("the held transaction runs after RESUME");
    assert_eq!(
        get(&rows(&c, "SHOW TENANTS").await[0], "state"),
        Some("active")
    );
    proxy.stop().await.expect("clean stop");
}

/// SHOW POOLS' `maxwait`/`maxwait_us` (PgBouncer's): how long the oldest
/// client waiting for a server connection has waited, on its tenant's row
/// and its placement's; 0 again once nobody waits.
#[tokio::test]
async fn show_pools_times_the_oldest_wait_for_a_server_connection() {
    let (_pg, proxy) = setup(1, "", "").await;
    let c = admin(&proxy).await;
    let holder = proxy.connect("acme").await;
    let waiter = proxy.connect("acme").await;
    holder.simple_query("BEGIN").await.expect("begin");
    assert_eq!(
        maxwait(&rows(&c, "SHOW POOLS").await, "acme_db", Some("acme")),
        Duration::ZERO,
        "nobody waits yet"
    );

    let waiting =
        tokio::spawn(async move { waiter.simple_query("SELECT 1").await.map(|_| waiter) });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pools = rows(&c, "SHOW POOLS").await;
    for tenant in [Some("acme"), None] {
        let waited = maxwait(&pools, "acme_db", tenant);
        assert!(
            waited >= Duration::from_millis(350) && waited < Duration::from_secs(30),
            "{tenant:?} waited {waited:?}: {pools:?}"
        );
    }
    assert_eq!(maxwait(&pools, "globex_db", Some("globex")), Duration::ZERO);

    holder.simple_query("COMMIT").await.expect("commit");
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once the holder committed")
        .expect("join")
        .expect("the waiting query");
    let pools = rows(&c, "SHOW POOLS").await;
    assert_eq!(maxwait(&pools, "acme_db", Some("acme")), Duration::ZERO);
    assert_eq!(maxwait(&pools, "acme_db", None), Duration::ZERO);
    proxy.stop().await.expect("clean stop");
}

/// A request held by PAUSE can be canceled: it is answered with 57014 at
/// once, never runs, and the session goes on after RESUME.
#[tokio::test]
async fn a_cancel_ends_a_wait_under_pause() {
    let (_pg, proxy) = setup(2, "", "").await;
    let c = admin(&proxy).await;
    let client = std::sync::Arc::new(proxy.connect("acme").await);
    c.simple_query("PAUSE acme").await.expect("pause");
    let token = client.cancel_token();
    let waiter = std::sync::Arc::clone(&client);
    let run = tokio::spawn(async move {
        waiter
            .simple_query(
                "INSERT INTO notes (tenant_id, body) VALUES ('acme', 'canceled under pause')",
            )
            .await
            .map(drop)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished(), "held by the pause");
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request");
    let e = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("answered at once, not at RESUME")
        .expect("join")
        .expect_err("canceled");
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    c.simple_query("RESUME acme").await.expect("resume");
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM notes WHERE body = 'canceled under pause'",
            &[],
        )
        .await
        .expect("the session goes on")
        .get(0);
    assert_eq!(n, 0, "the canceled request ran");
    proxy.stop().await.expect("clean stop");
}

/// How many clients of acme SHOW CLIENTS lists.
async fn acme_clients(c: &Client) -> usize {
    rows(c, "SHOW CLIENTS")
        .await
        .iter()
        .filter(|r| get(r, "tenant") == Some("acme"))
        .count()
}

/// A client that closes its connection while PAUSE holds its request is
/// gone at once, whether it just closes or says goodbye first (Terminate,
/// as libpq does): SHOW CLIENTS stops listing it while the pause lasts,
/// and its request never runs after RESUME (nobody waits for it).
#[tokio::test]
async fn a_client_that_leaves_during_a_pause_is_gone_and_its_request_never_runs() {
    let (_pg, proxy) = setup(2, "auth_type = \"trust\"", "").await;
    let c = admin(&proxy).await;
    let mut quiet = raw::login_trust(proxy.port, "acme").await;
    let mut polite = raw::login_trust(proxy.port, "acme").await;
    // Stays, and sends a second request while the first is held: its
    // unread bytes must still be read after RESUME.
    let mut stays = raw::login_trust(proxy.port, "acme").await;
    c.simple_query("PAUSE acme").await.expect("pause");
    let insert = |body: &str| {
        raw::query(&format!(
            "INSERT INTO notes (tenant_id, body) VALUES ('acme', '{body}')"
        ))
    };
    raw::send(&mut quiet, &insert("left quietly")).await;
    raw::send(&mut polite, &insert("left politely")).await;
    raw::send(&mut stays, &insert("stayed 1")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw::send(&mut stays, &insert("stayed 2")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(acme_clients(&c).await, 3, "all held by the pause");
    drop(quiet);
    raw::send(&mut polite, &raw::frame(b'X', &[])).await;
    drop(polite);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while acme_clients(&c).await > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients that left are still listed while the pause lasts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(acme_clients(&c).await, 1, "the client that stays is kept");
    c.simple_query("RESUME acme").await.expect("resume");
    for what in ["stayed 1", "stayed 2"] {
        let (msgs, status) = raw::read_until_ready_any(&mut stays).await;
        assert!(msgs.iter().all(|m| m.tag != b'E'), "{what}: {msgs:?}");
        assert_eq!(status, b'I', "{what}");
    }
    let count = |pattern: &'static str| {
        let proxy = &proxy;
        async move {
            let n: i64 = proxy
                .connect("acme")
                .await
                .query_one("SELECT count(*) FROM notes WHERE body LIKE $1", &[&pattern])
                .await
                .expect("count")
                .get(0);
            n
        }
    };
    assert_eq!(
        count("left %").await,
        0,
        "a request whose client left ran after RESUME"
    );
    assert_eq!(
        count("stayed %").await,
        2,
        "the client that stayed was served"
    );
    proxy.stop().await.expect("clean stop");
}

/// psql's Ctrl-C on a PAUSE that waits for a running transaction: the
/// console sends BackendKeyData, so the CancelRequest reaches it, and the
/// wait ends with 57014 at once. The pause itself stays in effect, as
/// after `pause_timeout`.
#[tokio::test]
async fn a_cancel_ends_a_waiting_pause_command_and_the_pause_stays() {
    let (_pg, proxy) = setup(2, "", "").await;
    let console = std::sync::Arc::new(admin(&proxy).await);
    let busy = proxy.connect("acme").await;
    busy.batch_execute("BEGIN; SELECT 1")
        .await
        .expect("a running transaction");
    let token = console.cancel_token();
    let pausing = std::sync::Arc::clone(&console);
    let pause = tokio::spawn(async move { pausing.simple_query("PAUSE acme").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pause.is_finished(), "PAUSE waits for the transaction");
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request");
    let e = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("answered at once, not at pause_timeout")
        .expect("join")
        .expect_err("canceled");
    assert_eq!(sqlstate(&e), "57014", "{e:?}");
    let tenants = rows(&console, "SHOW TENANTS").await;
    let acme = tenants
        .iter()
        .find(|r| get(r, "tenant") == Some("acme"))
        .expect("acme row");
    assert_eq!(get(acme, "state"), Some("paused"), "the pause stays");
    // A cancel with no PAUSE waiting does nothing to the console.
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request");
    console.simple_query("RESUME acme").await.expect("resume");
    busy.batch_execute("COMMIT").await.expect("commit");
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_pause_longer_than_pause_timeout_refuses_the_transaction() {
    let (_pg, proxy) = setup(2, "pause_timeout = \"1s\"", "").await;
    let c = admin(&proxy).await;
    let client = proxy.connect("acme").await;
    c.simple_query("PAUSE").await.expect("pause every tenant");
    let e = tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1"))
        .await
        .expect("bounded by pause_timeout")
        .expect_err("refused after pause_timeout");
    assert_eq!(sqlstate(&e), "57014");
    assert!(message(&e).contains("pause_timeout"), "{e:?}");
    c.simple_query("RESUME").await.expect("resume");
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn suspend_refuses_new_connections_and_closes_existing_after_their_transaction() {
    let (_pg, proxy) = setup(2, "", "").await;
    let c = admin(&proxy).await;
    let in_txn = proxy.connect("acme").await;
    let idle = proxy.connect("acme").await;
    in_txn.simple_query("BEGIN").await.expect("begin");
    in_txn
        .simple_query("INSERT INTO notes (tenant_id, body) VALUES ('acme', 'suspended txn')")
        .await
        .expect("insert");

    c.simple_query("SUSPEND acme").await.expect("suspend");
    let refused = proxy
        .try_connect(&proxy.conn_str("app.acme", "acme-secret", "acme"))
        .await
        .expect_err("a new connection is refused");
    assert_eq!(sqlstate(&refused), "08004");
    assert!(message(&refused).contains("suspended"), "{refused:?}");

    // The running transaction finishes, and then the connection closes.
    in_txn
        .simple_query("INSERT INTO notes (tenant_id, body) VALUES ('acme', 'after suspend')")
        .await
        .expect("the transaction goes on");
    in_txn.simple_query("COMMIT").await.expect("commit");
    let closed = tokio::time::timeout(Duration::from_secs(10), in_txn.simple_query("SELECT 1"))
        .await
        .expect("bounded");
    assert!(closed.is_err(), "still serving a suspended tenant");
    // The idle one was closed too.
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.simple_query("SELECT 1"))
        .await
        .expect("bounded");
    assert!(
        closed.is_err(),
        "idle client of a suspended tenant still served"
    );
    // Committed work stayed.
    let globex_unaffected = proxy.connect("globex").await;
    globex_unaffected
        .simple_query("SELECT 1")
        .await
        .expect("other tenants go on");
    assert_eq!(
        get(&rows(&c, "SHOW TENANTS").await[0], "state"),
        Some("suspended")
    );

    c.simple_query("RESUME acme").await.expect("resume");
    let back = proxy.connect("acme").await;
    let n: i64 = back
        .query_one(
            "SELECT count(*) FROM notes WHERE body IN ('suspended txn', 'after suspend')",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2, "the transaction running at SUSPEND committed");
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn suspended_in_the_config() {
    let (_pg, proxy) = setup(2, "", "suspended = true").await;
    let refused = proxy
        .try_connect(&proxy.conn_str("app.acme", "acme-secret", "acme"))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&refused), "08004");
    // A wrong password learns nothing about the suspension.
    let wrong = proxy
        .try_connect(&proxy.conn_str("app.acme", "wrong", "acme"))
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&wrong), "28P01");
    let c = admin(&proxy).await;
    assert_eq!(
        get(&rows(&c, "SHOW TENANTS").await[0], "state"),
        Some("suspended")
    );
    let e = c
        .simple_query("RESUME acme")
        .await
        .expect_err("not from the console");
    assert!(message(&e).contains("config"), "{e:?}");
    proxy.connect("globex").await;
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn kill_closes_mid_transaction_and_never_reuses_its_server_connection() {
    // One server connection for acme: the next client must get a new one.
    let (pg, proxy) = setup(1, "auth_type = \"trust\"", "").await;
    let c = admin(&proxy).await;
    let mut victim = raw::login_trust(proxy.port, "acme").await;
    raw::send(&mut victim, &raw::query("SELECT pg_backend_pid()")).await;
    let (msgs, _) = raw::read_to_ready(&mut victim, "pid").await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    let victim_pid: i32 = std::str::from_utf8(&row.body[6..])
        .expect("text")
        .parse()
        .expect("pid");
    let status = raw::simple_query(
        &mut victim,
        "BEGIN; CREATE TEMP TABLE killed_tmp (x int); INSERT INTO killed_tmp VALUES (1)",
    )
    .await;
    assert_eq!(status, b'T', "in a transaction");

    c.simple_query("KILL acme").await.expect("kill");
    let e = raw::expect_error_then_close(&mut victim, "57P01", "killed client").await;
    assert!(e.message().contains("killed"), "{:?}", e.fields());

    let next = proxy.connect("acme").await;
    let (pid, in_txn_tables): (i32, i64) = {
        let r = next
            .query_one(
                "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_class WHERE relname = 'killed_tmp')",
                &[],
            )
            .await
            .expect("next client");
        (r.get(0), r.get(1))
    };
    assert_ne!(
        pid, victim_pid,
        "the killed client's server connection was reused"
    );
    assert_eq!(
        in_txn_tables, 0,
        "the killed transaction's state is visible"
    );
    // Its backend is gone (the transaction rolled back with it).
    let superuser = pg.cluster.admin("postgres").await.expect("superuser");
    common::wait_until_gone(&superuser, &[victim_pid], "the killed client's backend").await;

    // An idle client is killed at once too.
    let mut idle = raw::login_trust(proxy.port, "acme").await;
    c.simple_query("kill acme;").await.expect("kill");
    raw::expect_error_then_close(&mut idle, "57P01", "idle killed client").await;
    // New connections work after a KILL.
    proxy
        .connect("acme")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("after kill");
    proxy.stop().await.expect("clean stop");
}

/// A connection of the tenant that is still logging in when KILL runs
/// (its SCRAM exchange half done) is closed too once it authenticates,
/// instead of slipping past the KILL into a session; one that starts
/// after the KILL logs in as usual.
#[tokio::test]
async fn kill_reaches_a_login_in_flight() {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    let (_pg, proxy) = setup(2, "", "").await;
    let c = admin(&proxy).await;
    let mut s = raw::connect(proxy.port).await;
    raw::send(
        &mut s,
        &raw::startup(3, 0, &[("user", "app"), ("database", "acme")]),
    )
    .await;
    let sasl = raw::expect_msg(&mut s, "AuthenticationSASL").await;
    assert_eq!(
        (sasl.tag, &sasl.body[..4]),
        (b'R', &10i32.to_be_bytes()[..])
    );
    let mut scram = ScramSha256::new(b"acme-secret", ChannelBinding::unsupported());
    let mut initial = b"SCRAM-SHA-256\0".to_vec();
    initial.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
    initial.extend_from_slice(scram.message());
    raw::send(&mut s, &raw::frame(b'p', &initial)).await;
    let cont = raw::expect_msg(&mut s, "AuthenticationSASLContinue").await;
    assert_eq!(
        (cont.tag, &cont.body[..4]),
        (b'R', &11i32.to_be_bytes()[..])
    );
    scram.update(&cont.body[4..]).expect("server-first");

    c.simple_query("KILL acme").await.expect("kill");
    raw::send(&mut s, &raw::frame(b'p', scram.message())).await;
    let e = raw::expect_error_then_close(&mut s, "57P01", "a login in flight during KILL").await;
    assert!(e.message().contains("killed"), "{:?}", e.fields());

    // After the KILL, logins work.
    proxy
        .connect("acme")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("a login after the kill");
    proxy.stop().await.expect("clean stop");
}

/// Logs in to the console over a raw socket (`auth_type = "trust"`).
async fn raw_console(port: u16) -> tokio::net::TcpStream {
    let mut s = raw::connect(port).await;
    raw::send(
        &mut s,
        &raw::startup(3, 0, &[("user", "admin"), ("database", "pgtenant")]),
    )
    .await;
    raw::read_to_ready(&mut s, "console login").await;
    s
}

/// Reads to ReadyForQuery, expecting one ErrorResponse with `code`.
async fn expect_error_and_ready(s: &mut tokio::net::TcpStream, code: &str, what: &str) {
    let (msgs, status) = raw::read_until_ready_any(s).await;
    let errors: Vec<_> = msgs.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!(errors.len(), 1, "{what}: {msgs:?}");
    assert_eq!(errors[0].code(), code, "{what}: {:?}", errors[0].fields());
    assert_eq!(status, b'I', "{what}");
}

#[tokio::test]
async fn forged_protocol_on_the_console() {
    let (_pg, proxy) = setup(2, "auth_type = \"trust\"", "").await;
    let mut s = raw_console(proxy.port).await;

    // Extended protocol: one error, skipped to Sync, then ready.
    let mut ext = raw::frame(b'P', b"\0SHOW TENANTS\0\0\0");
    ext.extend(raw::frame(b'B', b"\0\0\0\0\0\0\0\0"));
    ext.extend(raw::frame(b'E', b"\0\0\0\0\0"));
    ext.extend(raw::frame(b'S', b""));
    raw::send(&mut s, &ext).await;
    expect_error_and_ready(&mut s, "0A000", "extended protocol").await;

    // A huge query: skipped unread, an error, the session goes on.
    let huge = format!("SHOW {}", "X".repeat(200_000));
    raw::send(&mut s, &raw::query(&huge)).await;
    expect_error_and_ready(&mut s, "54000", "huge query").await;

    // An unknown message type.
    raw::send(&mut s, &raw::frame(b'z', b"garbage")).await;
    expect_error_and_ready(&mut s, "08P01", "unknown message").await;

    // Not UTF-8.
    raw::send(&mut s, &raw::frame(b'Q', b"SHOW \xff\xfe\0")).await;
    expect_error_and_ready(&mut s, "08P01", "invalid UTF-8").await;

    // Still a console.
    raw::send(&mut s, &raw::query("SHOW VERSION")).await;
    let (msgs, _) = raw::read_to_ready(&mut s, "SHOW VERSION").await;
    assert!(msgs.iter().any(|m| m.tag == b'D'), "{msgs:?}");

    // A broken frame ends the session, and only it.
    raw::send(&mut s, &raw::header(b'Q', 2)).await;
    raw::expect_error_then_close(&mut s, "08P01", "broken frame").await;

    // tokio-postgres's extended query: an error, then simple queries work.
    let c = proxy
        .try_connect(&proxy.conn_str("admin", "x", "pgtenant"))
        .await
        .expect("admin");
    let e = c.query("SHOW TENANTS", &[]).await.expect_err("refused");
    assert_eq!(sqlstate(&e), "0A000");
    assert_eq!(rows(&c, "SHOW VERSION").await.len(), 1);

    // The proxy serves everyone else.
    proxy
        .connect("acme")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("tenant");
    proxy.stop().await.expect("clean stop");
}

#[tokio::test]
async fn admin_logins_count_against_the_unauthenticated_caps() {
    let (_pg, proxy) = setup(
        2,
        "max_unauthenticated_connections = 1\nmax_unauthenticated_per_address = 1",
        "",
    )
    .await;
    // A silent connection holds the only unauthenticated slot.
    let stalled = raw::connect(proxy.port).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = proxy
        .try_connect(&proxy.conn_str("admin", ADMIN_PASSWORD, "pgtenant"))
        .await
        .expect_err("refused while the slot is held");
    assert_eq!(sqlstate(&refused), "53300");
    drop(stalled);
    // Once authenticated, a console no longer holds its slot: a second
    // one logs in beside it.
    let mut first = None;
    for _ in 0..50 {
        match proxy
            .try_connect(&proxy.conn_str("admin", ADMIN_PASSWORD, "pgtenant"))
            .await
        {
            Ok(c) => {
                first = Some(c);
                break;
            }
            // The stalled connection's slot is freed when the proxy sees
            // it close.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let first = first.expect("admin login once the slot is free");
    let second = admin(&proxy).await;
    assert_eq!(rows(&second, "SHOW VERSION").await.len(), 1);
    assert_eq!(rows(&first, "SHOW VERSION").await.len(), 1);
    proxy.stop().await.expect("clean stop");
}
