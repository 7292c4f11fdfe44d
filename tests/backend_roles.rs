//! A dedicated placement is a boundary: tenant acme, through its own
//! connection, cannot drop, reconfigure, signal or watch tenant initech's
//! database and backends in the demo's setup (one login role per
//! placement). The same attacks run against the old setup (one role owning
//! every tenant database) as the negative control, and succeed there.
//! A placement whose role could reach beyond its database is refused with
//! 08006 and a log line that says why and how to fix it, unless it opts
//! out; `pgtenant check` refuses configs that share a role or a database.

mod common;

use common::{TestProxy, sqlstate};
use pgtenant::pgcluster::{HostAuth, PgCluster};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

async fn cluster() -> PgCluster {
    tokio::task::spawn_blocking(|| PgCluster::start(HostAuth::ScramSha256))
        .await
        .expect("join")
        .expect("start PostgreSQL")
}

/// What acme's attacks on initech achieved.
#[derive(Debug, Default)]
struct Damage {
    /// acme's backend role could log in to initech's database.
    connected: bool,
    /// acme read initech's query text in pg_stat_activity.
    read_query_text: bool,
    /// initech's running query was cancelled by acme.
    cancelled: bool,
    /// initech's backend was terminated by acme.
    terminated: bool,
    /// acme set initech's database to accept no connections.
    connection_limit: bool,
    /// acme's password change locked initech out too.
    locked_out: bool,
    /// acme dropped initech's database.
    dropped: bool,
}

/// initech's backend running `sql` (found by the superuser).
async fn backend_running(admin: &Client, marker: &str) -> i32 {
    let started = Instant::now();
    loop {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE datname = 'tenant_initech' \
                 AND state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
                &[&marker],
            )
            .await
            .expect("activity");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "initech's query never showed up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A query of initech's kept running until `Busy::finish`: it waits for
/// a lock another initech client holds in an open transaction, so no
/// timing decides whether an attack lands while it runs.
struct Busy {
    holder: Client,
    task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    pid: i32,
}

impl Busy {
    async fn start(proxy: &TestProxy, admin: &Client, marker: &str) -> Busy {
        let holder = proxy.connect("initech").await;
        holder
            .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(42)")
            .await
            .expect("take the lock");
        let initech = proxy.connect("initech").await;
        let sql = format!("SELECT '{marker}', pg_advisory_xact_lock(42)");
        let task = tokio::spawn(async move { initech.simple_query(&sql).await.map(|_| ()) });
        let pid = backend_running(admin, marker).await;
        Busy { holder, task, pid }
    }

    /// Lets the query finish; its outcome.
    async fn finish(self) -> Result<(), tokio_postgres::Error> {
        // The holder may be gone too (terminated along with the database).
        let _ = self.holder.batch_execute("COMMIT").await;
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("initech's query ends once the lock is free")
            .expect("join")
    }
}

/// Runs every attack of acme's on initech through `proxy` (started with
/// `config`) and reports what worked. `admin` is a superuser connection to
/// the cluster, used only to look.
async fn attack(pg: &PgCluster, config: &str) -> Damage {
    let admin = pg.admin("postgres").await.expect("admin");
    let proxy = TestProxy::start(config).await;
    let acme = proxy.connect("acme").await;
    let mut damage = Damage::default();

    // Logging in to initech's database with acme's backend credentials
    // (which acme learns by setting its role's password, below).
    let (cfg, _) = pgtenant::config::parse_str(config, "t.toml").expect("config");
    let mut direct: tokio_postgres::Config =
        cfg.placements["acme_db"].url.expose().parse().expect("url");
    direct.dbname("tenant_initech");
    match direct.connect(tokio_postgres::NoTls).await {
        Ok(_) => damage.connected = true,
        Err(e) => assert_eq!(sqlstate(&e), "42501", "{e}"),
    }

    // Watching: initech's SQL text, inlined values included.
    let busy = Busy::start(&proxy, &admin, "initech-card-4242").await;
    let texts = acme
        .query(
            "SELECT coalesce(query, '') FROM pg_stat_activity WHERE datname = 'tenant_initech'",
            &[],
        )
        .await
        .expect("pg_stat_activity is readable");
    damage.read_query_text = texts
        .iter()
        .any(|r| r.get::<_, String>(0).contains("initech-card-4242"));
    busy.finish().await.expect("initech's query");

    // Signalling initech's backends, bypassing the proxy's cancel keys.
    for (verb, hit) in [
        ("pg_cancel_backend", &mut damage.cancelled),
        ("pg_terminate_backend", &mut damage.terminated),
    ] {
        let busy = Busy::start(&proxy, &admin, &format!("initech-{verb}")).await;
        let pid = busy.pid;
        let sent = acme.query_one(&format!("SELECT {verb}($1)"), &[&pid]).await;
        let outcome = busy.finish().await;
        *hit = outcome.is_err();
        if let Err(e) = &sent {
            assert_eq!(sqlstate(e), "42501", "{verb}: {e}");
        }
        // initech keeps working (the pool replaces a killed backend).
        let again = proxy.connect("initech").await;
        again.simple_query("SELECT 1").await.expect("initech works");
    }

    // Reconfiguring initech's database.
    let limit = acme
        .batch_execute("ALTER DATABASE tenant_initech CONNECTION LIMIT 0")
        .await;
    damage.connection_limit = limit.is_ok();
    if let Err(e) = &limit {
        assert_eq!(sqlstate(e), "42501", "{e}");
    }
    admin
        .batch_execute("ALTER DATABASE tenant_initech CONNECTION LIMIT -1")
        .await
        .expect("undo");

    // A new password for acme's own role: PostgreSQL allows it. Fresh
    // pools (a second proxy) show whom it locks out.
    acme.batch_execute("ALTER ROLE CURRENT_USER PASSWORD 'stolen'")
        .await
        .expect("a role may change its own password");
    let fresh = TestProxy::start(config).await;
    let acme_fresh = fresh
        .try_connect(&fresh.conn_str("app.acme", "acme-secret", "acme"))
        .await;
    let e = acme_fresh.expect_err("acme's own placement is locked out");
    assert_eq!(sqlstate(&e), "08006", "{e}");
    match fresh
        .try_connect(&fresh.conn_str("app.initech", "initech-secret", "initech"))
        .await
    {
        Ok(c) => {
            c.simple_query("SELECT 1").await.expect("initech works");
        }
        Err(e) => {
            assert_eq!(sqlstate(&e), "08006", "{e}");
            damage.locked_out = true;
        }
    }
    drop(fresh);

    // Dropping initech's database, killing its sessions.
    let drop_db = acme
        .batch_execute("DROP DATABASE tenant_initech WITH (FORCE)")
        .await;
    if let Err(e) = &drop_db {
        assert_eq!(sqlstate(e), "42501", "{e}");
    }
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = 'tenant_initech')",
            &[],
        )
        .await
        .expect("pg_database")
        .get(0);
    damage.dropped = !exists;
    assert_eq!(damage.dropped, drop_db.is_ok());
    if !damage.dropped {
        let initech = proxy.connect("initech").await;
        let rows = initech
            .query("SELECT body FROM notes", &[])
            .await
            .expect("initech's data is intact");
        assert_eq!(rows.len(), 2);
    }
    drop(proxy);
    damage
}

#[tokio::test]
async fn in_the_demo_setup_no_tenant_reaches_another() {
    let pg = cluster().await;
    let admin = pg.admin("postgres").await.expect("admin");
    let config = pgtenant::demo::setup(&pg, &admin, 0)
        .await
        .expect("demo setup");
    let damage = attack(&pg, &config).await;
    assert!(!damage.connected, "{damage:?}");
    assert!(!damage.read_query_text, "{damage:?}");
    assert!(!damage.cancelled, "{damage:?}");
    assert!(!damage.terminated, "{damage:?}");
    assert!(!damage.connection_limit, "{damage:?}");
    assert!(!damage.locked_out, "{damage:?}");
    assert!(!damage.dropped, "{damage:?}");
}

/// The negative control: the setup `pgtenant demo` used before (one role
/// owning every tenant database; it must opt out of the role check and of
/// `pgtenant check`'s shared-role refusal to run at all). Every attack
/// works, so the test above shows the new setup, not a blunt attack.
#[tokio::test]
async fn in_the_old_shared_role_setup_every_attack_works() {
    let pg = cluster().await;
    let admin = pg.admin("postgres").await.expect("admin");
    admin
        .batch_execute("CREATE ROLE pgtenant LOGIN PASSWORD 'pgtenant-demo'")
        .await
        .expect("role");
    let mut config = "[proxy]\nlisten = \"127.0.0.1:0\"\n\n".to_string();
    for t in ["acme", "initech"] {
        admin
            .batch_execute(&format!("CREATE DATABASE tenant_{t} OWNER pgtenant"))
            .await
            .expect("database");
        let db = pg.admin(&format!("tenant_{t}")).await.expect("admin");
        db.batch_execute(
            "SET ROLE pgtenant; CREATE TABLE notes (body text); \
             INSERT INTO notes VALUES ('a'), ('b')",
        )
        .await
        .expect("seed");
        config.push_str(&format!(
            "[placements.{t}_db]\nurl = \"{}\"\nisolation = \"database\"\n\
             trust_backend_role = true\n\n\
             [tenants.{t}]\nplacement = \"{t}_db\"\nusers = {{ app = \"{t}-secret\" }}\n\n",
            pg.url("pgtenant", "pgtenant-demo", &format!("tenant_{t}"))
        ));
    }
    let damage = attack(&pg, &config).await;
    assert!(damage.connected, "{damage:?}");
    assert!(damage.read_query_text, "{damage:?}");
    assert!(damage.cancelled, "{damage:?}");
    assert!(damage.terminated, "{damage:?}");
    assert!(damage.connection_limit, "{damage:?}");
    assert!(damage.locked_out, "{damage:?}");
    assert!(damage.dropped, "{damage:?}");
}

/// Runs the real binary on `config` (in `dir`) until `body` is done, then
/// stops it and returns what it logged.
fn with_proxy(dir: &std::path::Path, config: &str, body: impl FnOnce(u16)) -> String {
    let port = pgtenant::pgcluster::free_port().expect("port");
    let path = dir.join("pgtenant.toml");
    std::fs::write(
        &path,
        config.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ),
    )
    .expect("write config");
    let log = dir.join("pgtenant.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["-c", path.to_str().expect("path")])
        .env("PGTENANT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start pgtenant");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pgtenant never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    body(port);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("wait");
    let mut text = String::new();
    std::fs::File::open(&log)
        .expect("log")
        .read_to_string(&mut text)
        .expect("read log");
    text
}

/// Logs in as app.<tenant> (trust auth) and runs a query; the SQLSTATE
/// and message when refused.
fn try_tenant(rt: &tokio::runtime::Runtime, port: u16, tenant: &str) -> Result<(), String> {
    let conn =
        format!("host=127.0.0.1 port={port} user=app.{tenant} dbname={tenant} connect_timeout=20");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client.simple_query("SELECT 1").await.map(|_| ())
    })
    .map_err(|e| match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => format!("no SQLSTATE: {e}"),
    })
}

#[test]
fn placements_whose_role_reaches_beyond_its_database_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (pg, config) = rt.block_on(refusal_setup());
    let dir = tempfile::tempdir().expect("tempdir");
    let log = with_proxy(dir.path(), &config, |port| {
        for t in ["ok", "trusted"] {
            try_tenant(&rt, port, t).unwrap_or_else(|e| panic!("{t} must be accepted: {e}"));
        }
        for t in ["super", "createdb", "member", "owner", "signal"] {
            // Several clients of a refused placement: each is told 08006,
            // the log says why once per attempt.
            for _ in 0..10 {
                let e = try_tenant(&rt, port, t).err().unwrap_or_else(|| {
                    panic!("{t}: a placement with an unsafe role must be refused")
                });
                assert!(e.starts_with("08006"), "{t}: {e}");
                assert!(e.contains(&format!("\"{t}\"")), "{t}: {e}");
            }
        }
    });
    drop(pg);
    check_refusal_log(&log);
}

/// A cluster with one database per placement, each with its own role,
/// all fine but for the one thing each placement is named after; and the
/// config for them.
async fn refusal_setup() -> (PgCluster, String) {
    let pg = cluster().await;
    let admin = pg.admin("postgres").await.expect("admin");
    // Each bad role logs in to a database of its own; only its role is
    // wrong. `ok` is a good placement, whose role `bad_member` can become.
    let roles: &[(&str, &str)] = &[
        ("ok", ""),
        ("super", "SUPERUSER"),
        ("createdb", "CREATEDB"),
        ("member", ""),
        ("owner", ""),
        ("signal", ""),
        ("trusted", "SUPERUSER"),
    ];
    // A long backoff cap: attempts (and log lines) stay few however slow
    // the clients are.
    let mut config = "[proxy]\nlisten = \"127.0.0.1:0\"\nauth_type = \"trust\"\n\
                      server_login_retry = \"60s\"\n\n"
        .to_string();
    for (t, attrs) in roles {
        let role = format!("r_{t}");
        pgtenant::provision::dedicated_database(
            &pg,
            &admin,
            &format!("tenant_{t}"),
            &role,
            "pw",
            "",
        )
        .await
        .expect("database");
        if !attrs.is_empty() {
            admin
                .batch_execute(&format!("ALTER ROLE {role} {attrs}"))
                .await
                .expect("attrs");
        }
        let trust = if *t == "trusted" {
            "trust_backend_role = true\n"
        } else {
            ""
        };
        config.push_str(&format!(
            "[placements.{t}_db]\nurl = \"{}\"\nisolation = \"database\"\n{trust}\n\
             [tenants.{t}]\nplacement = \"{t}_db\"\nusers = {{ app = \"unused\" }}\n\n",
            pg.url(&role, "pw", &format!("tenant_{t}"))
        ));
    }
    for sql in [
        "GRANT r_ok TO r_member",
        "CREATE DATABASE elsewhere OWNER r_owner",
        "GRANT pg_signal_backend TO r_signal",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    (pg, config)
}

fn check_refusal_log(log: &str) {
    for (t, needle) in [
        (
            "super",
            "it is SUPERUSER (ALTER ROLE \"r_super\" NOSUPERUSER)",
        ),
        (
            "createdb",
            "it has CREATEDB (ALTER ROLE \"r_createdb\" NOCREATEDB)",
        ),
        (
            "member",
            "the login role of placement \"ok_db\" (REVOKE \"r_ok\" FROM \"r_member\")",
        ),
        (
            "owner",
            "it owns database \"elsewhere\" (ALTER DATABASE \"elsewhere\" OWNER TO",
        ),
        (
            "signal",
            "predefined role \"pg_signal_backend\", which acts on every database (REVOKE \"pg_signal_backend\" FROM \"r_signal\")",
        ),
    ] {
        let lines = log.lines().filter(|l| l.contains(needle)).count();
        assert!(lines >= 1, "{t}: the log does not say {needle:?}:\n{log}");
        // 10 clients, a few attempts (100 ms backoff, doubling), one
        // line each.
        assert!(
            lines < 10,
            "{t}: logged {lines} times for 10 clients:\n{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains(needle) && l.contains("trust_backend_role = true")),
            "{t}: the log does not name the opt-out:\n{log}"
        );
    }
    assert!(
        !log.contains("\"r_ok\" reaches") && !log.contains("\"r_trusted\" reaches"),
        "{log}"
    );
}

/// `pgtenant check`: exit status and message for a config.
/// `true` for exit status 0; a refusal must exit with 1.
fn check(dir: &std::path::Path, name: &str, config: &str) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, config).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["check", "-c", path.to_str().expect("path")])
        .output()
        .expect("run pgtenant check");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{:?}: {err}",
        out.status
    );
    (out.status.success(), err)
}

#[test]
fn check_refuses_a_shared_role_or_database_unless_opted_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let placement = |name: &str, user: &str, extra: &str| {
        format!(
            "[placements.{name}]\nurl = \"postgres://{user}:pw@127.0.0.1:5432/{name}\"\n\
             isolation = \"database\"\n{extra}\n"
        )
    };
    let tenant = |name: &str, placement: &str| {
        format!("[tenants.{name}]\nplacement = \"{placement}\"\nusers = {{ app = \"s\" }}\n\n")
    };

    // Two placements, one role on one server.
    let shared_role = |extra_a: &str, extra_b: &str| {
        placement("a_db", "app", extra_a)
            + &placement("b_db", "app", extra_b)
            + &tenant("a", "a_db")
            + &tenant("b", "b_db")
    };
    let (ok, err) = check(dir.path(), "role.toml", &shared_role("", ""));
    assert!(!ok, "two placements with one role must be refused");
    assert!(
        err.contains("placements.a_db") && err.contains("placements.b_db"),
        "{err}"
    );
    assert!(err.contains("trust_backend_role = true"), "{err}");
    let one = shared_role("trust_backend_role = true", "");
    assert!(
        !check(dir.path(), "role1.toml", &one).0,
        "one opt-out is not enough"
    );
    let both = shared_role("trust_backend_role = true", "trust_backend_role = true");
    let (ok, err) = check(dir.path(), "role2.toml", &both);
    assert!(ok, "{err}");

    // Two tenants, one database placement.
    let shared_db =
        |extra: &str| placement("a_db", "app", extra) + &tenant("a", "a_db") + &tenant("b", "a_db");
    let (ok, err) = check(dir.path(), "db.toml", &shared_db(""));
    assert!(!ok, "two tenants on one database placement must be refused");
    assert!(
        err.contains("tenants a and b") && err.contains("allow_shared_database = true"),
        "{err}"
    );
    let (ok, err) = check(
        dir.path(),
        "db2.toml",
        &shared_db("allow_shared_database = true"),
    );
    assert!(ok, "{err}");

    // The shipped example passes.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgtenant.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(["check", "-c", example])
        .output()
        .expect("run pgtenant check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
