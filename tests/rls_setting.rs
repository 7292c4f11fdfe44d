//! `context_store = "setting"`: the shared database keeps each session's
//! tenant in `backtrace_functions`, which `sql/pgtenant-setting.sql` lets
//! only `pgtenant.enter()`'s owner set, and `pgtenant.current_tenant()`
//! becomes a setting read PostgreSQL inlines into every policy. Every test
//! attacks what that store changes: clients trying each way to set the
//! setting, resets that bring back its starting value, a pool start where
//! the role could set it or starts with a value, and a failed context call
//! (the setting rolls back with it, so the previous tenant's name stays
//! in it) with the client's statements right behind.

mod common;

use common::shared::{
    SHARED_PASSWORD, SHARED_ROLE, bodies, notes_seed, overwrite_behind_a_stalled_context_call, own,
    shared_database, tenants_config,
};
use common::{TestPg, TestProxy, raw, sqlstate};
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

const SETTING_SQL: &str = include_str!("../sql/pgtenant-setting.sql");

struct Shared {
    pg: TestPg,
    proxy: TestProxy,
    _dir: tempfile::TempDir,
}

/// The shared database with `sql/pgtenant-setting.sql` run by the
/// superuser (after `before`, also as the superuser in `app_shared`), and
/// the proxy in front with `store` as the placement's `context_store`.
async fn shared_with(tenants: &[&str], before: &str, store: &str, extra_proxy: &str) -> Shared {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let db = shared_database("", &notes_seed(tenants, "", "", SHARED_ROLE)).await;
    let su = db.pg.cluster.admin("app_shared").await.expect("superuser");
    su.batch_execute(SETTING_SQL).await.expect("setting store");
    if !before.is_empty() {
        su.batch_execute(before).await.expect("before");
    }
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nsecret_file = \"{}\"\n{extra_proxy}\n\n\
         [placements.shared]\nurl = \"{}\"\nisolation = \"rls\"\npool_size = 1\n\
         context_store = \"{store}\"\n\n{}",
        db.secret_file.display(),
        db.pg
            .cluster
            .url(SHARED_ROLE, SHARED_PASSWORD, "app_shared"),
        tenants_config(tenants)
    );
    let proxy = TestProxy::start(&config).await;
    Shared {
        pg: db.pg,
        proxy,
        _dir: db.dir,
    }
}

async fn shared(tenants: &[&str], extra_proxy: &str) -> Shared {
    shared_with(tenants, "", "setting", extra_proxy).await
}

/// `public.reset_everything()`, which the shared role may call: a RESET
/// ALL inside a function, which the proxy cannot see.
async fn create_reset_everything(su: &tokio_postgres::Client) {
    su.batch_execute(&format!(
        "SET ROLE app_owner;
         CREATE FUNCTION public.reset_everything() RETURNS int LANGUAGE plpgsql
             AS $f$BEGIN EXECUTE 'RESET ALL'; RETURN 1; END$f$;
         GRANT EXECUTE ON FUNCTION public.reset_everything() TO {SHARED_ROLE};
         RESET ROLE"
    ))
    .await
    .expect("function");
}

async fn one_text(client: &tokio_postgres::Client, sql: &str) -> String {
    first_column(client, sql)
        .await
        .expect(sql)
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// The first column of every row `sql` returns (simple protocol), NULL
/// as `<null>`.
async fn first_column(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("<null>").to_owned()),
            _ => None,
        })
        .collect())
}

/// Tenants taking turns on the pool's one connection each see their own
/// rows, through a policy that reads the setting (the inlined
/// `current_tenant()` shows in the plan), in both protocols.
#[tokio::test]
async fn tenants_taking_turns_see_their_rows_through_the_setting() {
    let s = shared(&["acme", "globex", "a_much_longer_tenant_name"], "").await;
    let clients = [
        ("acme", s.proxy.connect("acme").await),
        ("globex", s.proxy.connect("globex").await),
        (
            "a_much_longer_tenant_name",
            s.proxy.connect("a_much_longer_tenant_name").await,
        ),
    ];
    for round in 0..3 {
        for (t, c) in &clients {
            assert_eq!(bodies(c).await, own(t), "{t}, round {round}");
            assert_eq!(
                one_text(c, "SELECT count(*) FROM notes").await,
                "2",
                "{t} simple"
            );
            assert_eq!(one_text(c, "SHOW backtrace_functions").await, *t);
            assert_eq!(one_text(c, "SELECT pgtenant.current_tenant()").await, *t);
        }
    }
    let plan = first_column(&clients[0].1, "EXPLAIN (COSTS OFF) SELECT body FROM notes")
        .await
        .expect("explain");
    assert!(
        plan.iter()
            .any(|l| l.contains("current_setting('backtrace_functions'")),
        "the policy reads the setting inline: {plan:?}"
    );
    // Writes: the row gets the writer's tenant, and no other will do.
    let acme = &clients[0].1;
    acme.execute("INSERT INTO notes (body) VALUES ('third of acme')", &[])
        .await
        .expect("insert");
    let e = acme
        .execute(
            "INSERT INTO notes (tenant_id, body) VALUES ('globex', 'planted')",
            &[],
        )
        .await
        .expect_err("another tenant's row");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert_eq!(bodies(&clients[1].1).await, own("globex"));
}

/// Every way a client could write the setting itself is refused, and the
/// client keeps its own rows: the statement, in a transaction, in a
/// function, as a function's SET clause, as a role default.
#[tokio::test]
async fn no_client_can_write_the_setting() {
    // TEMP, so that a temporary function's SET clause is what is refused.
    let before = format!("GRANT TEMP ON DATABASE app_shared TO {SHARED_ROLE}");
    let s = shared_with(&["acme", "globex"], &before, "setting", "").await;
    let acme = s.proxy.connect("acme").await;
    let globex = s.proxy.connect("globex").await;
    for sql in [
        "SET backtrace_functions = 'globex'",
        "SET SESSION backtrace_functions = 'globex'",
        "BEGIN; SET LOCAL backtrace_functions = 'globex'; SELECT 1; COMMIT",
        "RESET backtrace_functions",
        "SET backtrace_functions TO DEFAULT",
        "SELECT set_config('backtrace_functions', 'globex', false)",
        "SELECT set_config('backtrace_functions', 'globex', true)",
        "DO $$BEGIN PERFORM set_config('backtrace_functions', 'globex', false); END$$",
        "DO $$BEGIN EXECUTE 'SET backtrace_functions = ''globex'''; END$$",
        "CREATE FUNCTION pg_temp.as_globex() RETURNS int LANGUAGE sql \
         SET backtrace_functions = 'globex' RETURN 1",
        "ALTER ROLE CURRENT_USER SET backtrace_functions = 'globex'",
        "ALTER ROLE CURRENT_USER IN DATABASE app_shared SET backtrace_functions = 'globex'",
        "ALTER DATABASE app_shared SET backtrace_functions = 'globex'",
        // enter() itself, without the session's secret.
        "SELECT pgtenant.enter('globex', 'backtrace_functions', 1, 2, NULL)",
    ] {
        assert_eq!(bodies(&acme).await, own("acme"), "before {sql}");
        let e = acme.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
        let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
        let why = if sql.starts_with("ALTER DATABASE") {
            "must be owner"
        } else if sql.contains("pgtenant.enter") {
            "invalid tenant context"
        } else {
            "permission denied to set parameter \"backtrace_functions\""
        };
        assert!(message.contains(why), "{sql}: {message}");
        let _ = acme.batch_execute("ROLLBACK").await;
        assert_eq!(bodies(&acme).await, own("acme"), "after {sql}");
        assert_eq!(one_text(&acme, "SHOW backtrace_functions").await, "acme");
        assert_eq!(bodies(&globex).await, own("globex"), "globex after {sql}");
    }
}

/// A value in the startup packet never reaches the server: the client
/// logs in (or is refused) and in either case sees only its own rows.
#[tokio::test]
async fn a_startup_option_names_no_tenant() {
    let s = shared(&["acme", "globex"], "").await;
    let conn_str = format!(
        "{} options='-c backtrace_functions=globex'",
        s.proxy.conn_str("app.acme", "acme-secret", "acme")
    );
    match s.proxy.try_connect(&conn_str).await {
        Ok(c) => match c.query("SELECT body FROM notes", &[]).await {
            Ok(rows) => {
                let mut got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                got.sort();
                assert_eq!(got, own("acme"));
            }
            Err(e) => assert_eq!(sqlstate(&e), "42501", "{e}"),
        },
        Err(e) => assert_eq!(sqlstate(&e), "42501", "{e}"),
    }
}

/// RESET ALL and DISCARD ALL need no privilege and take the setting back
/// to the database's '' (no tenant). Seen by the proxy, the next lease
/// enters the tenant again. Hidden in a function, the rest of that
/// transaction sees no rows, and so may the tenant's next leases on that
/// connection (the proxy cannot see the reset; the same holds for the
/// sequences store, README "Where the context is kept"), never another
/// tenant's; a lease of another tenant, or a reset the proxy sees, enters
/// it again.
#[tokio::test]
async fn a_reset_setting_is_no_tenant_until_the_next_lease() {
    let s = shared(&["acme", "globex"], "").await;
    let su = s.pg.cluster.admin("app_shared").await.expect("superuser");
    create_reset_everything(&su).await;
    let acme = s.proxy.connect("acme").await;
    for sql in ["RESET ALL", "DISCARD ALL"] {
        assert_eq!(bodies(&acme).await, own("acme"), "before {sql}");
        acme.batch_execute(sql).await.expect(sql);
        assert_eq!(bodies(&acme).await, own("acme"), "the lease after {sql}");
    }
    let seen = first_column(
        &acme,
        "BEGIN; SELECT public.reset_everything(); \
         SELECT coalesce(current_setting('backtrace_functions'), '<null>') || ':' || count(*) FROM notes; \
         COMMIT",
    )
    .await
    .expect("hidden reset");
    assert_eq!(seen, ["1", ":0"], "no tenant and no rows after the reset");
    let next = bodies(&acme).await;
    assert!(
        next.is_empty() || next == own("acme"),
        "the next lease: {next:?}"
    );
    let globex = s.proxy.connect("globex").await;
    assert_eq!(bodies(&globex).await, own("globex"));
    assert_eq!(bodies(&acme).await, own("acme"), "after globex's lease");
}

/// The pool refuses the setting store when a client could forge it: the
/// placement's role may set the setting, or its sessions start with a
/// value (RESET ALL would bring it back); and a sequences placement on a
/// database whose `current_tenant()` reads the setting (no tenant would
/// ever be seen). Each works again once fixed, without a restart.
#[tokio::test]
async fn a_forgeable_or_mismatched_store_refuses_the_placement() {
    for (before, fix, store) in [
        (
            format!("GRANT SET ON PARAMETER backtrace_functions TO {SHARED_ROLE}"),
            format!("REVOKE SET ON PARAMETER backtrace_functions FROM {SHARED_ROLE}"),
            "setting",
        ),
        (
            format!(
                "ALTER ROLE {SHARED_ROLE} IN DATABASE app_shared SET backtrace_functions = 'globex'"
            ),
            format!("ALTER ROLE {SHARED_ROLE} IN DATABASE app_shared RESET backtrace_functions"),
            "setting",
        ),
        (
            String::new(),
            "SET ROLE app_owner; \
             CREATE OR REPLACE FUNCTION pgtenant.current_tenant() RETURNS text \
             LANGUAGE sql STABLE RETURN 'globex'; RESET ROLE"
                .to_owned(),
            "sequences",
        ),
    ] {
        let s = shared_with(&["acme", "globex"], &before, store, "").await;
        let conn_str = s.proxy.conn_str("app.acme", "acme-secret", "acme");
        let Err(e) = s.proxy.try_connect(&conn_str).await else {
            panic!("refused: {before:?} on {store}");
        };
        assert_eq!(sqlstate(&e), "08006", "{before:?}: {e}");
        if store == "sequences" {
            // Not a fix: a current_tenant() that names a tenant of its
            // own is refused too.
            let su = s.pg.cluster.admin("app_shared").await.expect("superuser");
            su.batch_execute(&fix).await.expect("other function");
            tokio::time::sleep(Duration::from_secs(2)).await;
            let e = s
                .proxy
                .try_connect(&conn_str)
                .await
                .expect_err("still refused");
            assert_eq!(sqlstate(&e), "08006", "{e}");
            continue;
        }
        let su = s.pg.cluster.admin("app_shared").await.expect("superuser");
        su.batch_execute(&fix).await.expect("fix");
        let mut ok = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Ok(c) = s.proxy.try_connect(&conn_str).await {
                ok = Some(c);
                break;
            }
        }
        let c = ok.unwrap_or_else(|| panic!("connects once fixed: {fix}"));
        assert_eq!(bodies(&c).await, own("acme"));
    }
}

/// The setting rolls back with a failed context call, so the connection
/// keeps the previous tenant's name: here the call waits for a lock at its
/// first step when the client cancels it or its own statement_timeout
/// ends it, with a write to every row it can reach right behind it. The
/// write must not run (the guard makes PostgreSQL skip it), and the other
/// tenant's rows stay as they were.
#[tokio::test]
async fn a_failed_context_call_leaves_the_previous_name_but_runs_nothing() {
    let s = shared(&["acme", "evil"], "auth_type = \"trust\"").await;
    let admin = s.pg.cluster.admin("app_shared").await.expect("admin");
    let acme = s.proxy.connect("acme").await;
    overwrite_behind_a_stalled_context_call(&s.proxy, &admin, &acme).await;
}

/// Policies may read the setting themselves (what saves the most: no
/// function to inline at every plan) in the one form the pool accepts,
/// which turns "no tenant" into NULL: tenants see their own rows, and a
/// session without a context (the role connecting around the proxy) sees
/// and writes none, rows with an empty tenant_id included.
#[tokio::test]
async fn a_policy_reading_the_setting_itself_holds() {
    let direct = "NULLIF(pg_catalog.current_setting('backtrace_functions'), '')";
    let before = format!(
        "ALTER POLICY tenant_rows ON notes USING (tenant_id = {direct}) \
         WITH CHECK (tenant_id = {direct});
         INSERT INTO notes (tenant_id, body) VALUES ('', 'nobody''s')"
    );
    let s = shared_with(&["acme", "globex"], &before, "setting", "").await;
    let acme = s.proxy.connect("acme").await;
    let globex = s.proxy.connect("globex").await;
    for _ in 0..3 {
        assert_eq!(bodies(&acme).await, own("acme"));
        assert_eq!(bodies(&globex).await, own("globex"));
    }
    let (direct, conn) = tokio_postgres::connect(
        &s.pg.cluster.url(SHARED_ROLE, SHARED_PASSWORD, "app_shared"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("direct connection");
    tokio::spawn(conn);
    assert!(bodies(&direct).await.is_empty(), "no context, no rows");
    let e = direct
        .execute("INSERT INTO notes (tenant_id, body) VALUES ('', 'x')", &[])
        .await
        .expect_err("no writes");
    assert_eq!(sqlstate(&e), "42501", "{e}");
}

/// A superuser can break the store's premises while the pool runs: each
/// new server connection is checked, not only the first. Here the role
/// gets a starting value naming globex after the pool started, and acme
/// resets its session in a function (RESET ALL returns to the starting
/// value) to read globex's rows: the new connection is refused (08006),
/// and once the value is gone the placement works again. (With the check
/// at pool start only, acme read globex's rows.)
#[tokio::test]
async fn every_new_connection_is_checked_for_a_starting_value() {
    let s = shared(&["acme", "globex"], "").await;
    let su = s.pg.cluster.admin("app_shared").await.expect("superuser");
    create_reset_everything(&su).await;
    let acme = s.proxy.connect("acme").await;
    assert_eq!(bodies(&acme).await, own("acme"));
    su.batch_execute(&format!(
        "ALTER ROLE {SHARED_ROLE} IN DATABASE app_shared SET backtrace_functions = 'globex'"
    ))
    .await
    .expect("a starting value");
    // The pool's connection goes away (for sure, so that the pool cannot
    // hand the dying one out); the next lease needs a new one.
    let pids = common::backend_pids_of(&su, SHARED_ROLE).await;
    su.execute(
        "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid",
        &[&pids],
    )
    .await
    .expect("terminate");
    common::wait_until_gone(&su, &pids, "the terminated pool connection").await;
    let conn_str = s.proxy.conn_str("app.acme", "acme-secret", "acme");
    // Refused at login, or at the first query (which needs the new one).
    let attempt = match s.proxy.try_connect(&conn_str).await {
        Err(e) => Err(e),
        Ok(c) => {
            first_column(
                &c,
                "BEGIN; SELECT public.reset_everything(); SELECT body FROM notes; COMMIT",
            )
            .await
        }
    };
    match attempt {
        Err(e) => assert_eq!(sqlstate(&e), "08006", "{e}"),
        Ok(rows) => panic!("a connection starting with a tenant was used: {rows:?}"),
    }
    su.batch_execute(&format!(
        "ALTER ROLE {SHARED_ROLE} IN DATABASE app_shared RESET backtrace_functions"
    ))
    .await
    .expect("reset");
    let mut ok = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(c) = s.proxy.try_connect(&conn_str).await
            && let Ok(rows) = c.query("SELECT body FROM notes", &[]).await
        {
            ok = Some(rows.len());
            break;
        }
    }
    assert_eq!(ok, Some(2), "acme's two rows once fixed");
}

/// The README's switch of a running placement from the sequences store to
/// the setting store and back: the grant first, a reload with the new
/// store, then the whole file; back, `sql/pgtenant.sql` then a reload.
/// Two tenants query on a pool of one (every lease switches tenant) all
/// along; each result must be exactly its own rows, never none.
#[tokio::test]
async fn a_running_placement_switches_store_and_back_without_a_window() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let db = shared_database("", &notes_seed(&["acme", "globex"], "", "", SHARED_ROLE)).await;
    let config = |store: &str| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nsecret_file = \"{}\"\n\n\
             [placements.shared]\nurl = \"{}\"\nisolation = \"rls\"\npool_size = 1\n\
             context_store = \"{store}\"\n\n{}",
            db.secret_file.display(),
            db.pg
                .cluster
                .url(SHARED_ROLE, SHARED_PASSWORD, "app_shared"),
            tenants_config(&["acme", "globex"])
        )
    };
    let proxy = common::live::LiveProxy::start(&config("sequences")).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in ["acme", "globex"] {
        let c = proxy.connect(t).await;
        let stop = std::sync::Arc::clone(&stop);
        readers.push(tokio::spawn(async move {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = c.query("SELECT body FROM notes", &[]).await.map(|rows| {
                    let mut b: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    b.sort();
                    b
                });
                match got {
                    Ok(b) if b == own(t) => reads += 1,
                    other => return Err(format!("{t} after {reads} reads: {other:?}")),
                }
            }
            Ok(reads)
        }));
    }
    let su = db.pg.cluster.admin("app_shared").await.expect("superuser");
    let settle = || tokio::time::sleep(Duration::from_millis(400));
    settle().await;
    // 1. The grant and the starting value alone.
    su.batch_execute(
        "GRANT SET ON PARAMETER backtrace_functions TO app_owner;
         ALTER DATABASE app_shared SET backtrace_functions = ''",
    )
    .await
    .expect("grant");
    settle().await;
    // 2. The new store: enter() writes both, current_tenant() still reads
    //    the sequences.
    let old = common::backend_pids_of(&su, SHARED_ROLE).await;
    assert!(!old.is_empty(), "the sequences pool is in use");
    proxy.reload(&config("setting")).await.expect("reload");
    // "Once the old pool's leases are done": its connection closes.
    common::wait_until_gone(&su, &old, "the sequences pool's connections").await;
    settle().await;
    // 3. The whole file: current_tenant() reads the setting.
    su.batch_execute(SETTING_SQL).await.expect("setting store");
    settle().await;
    let lang: String = su
        .query_one(
            "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang \
             WHERE p.oid = 'pgtenant.current_tenant()'::regprocedure",
            &[],
        )
        .await
        .expect("language")
        .get(0);
    assert_eq!(lang, "sql", "the setting store's current_tenant()");
    // Back: the sequences' current_tenant(), then the store.
    su.batch_execute(&format!(
        "SET ROLE app_owner; {} RESET ROLE",
        include_str!("../sql/pgtenant.sql")
    ))
    .await
    .expect("sequences again");
    settle().await;
    proxy
        .reload(&config("sequences"))
        .await
        .expect("reload back");
    settle().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        let reads = r.await.expect("join").unwrap_or_else(|e| panic!("{e}"));
        assert!(reads >= 20, "reads all along: {reads}");
    }
}

/// The same write as a FunctionCall message over a raw socket (the proxy
/// cannot see into one), in a transaction with a Sync-free pipeline
/// behind it: the server refuses it, and nothing the client sends after
/// it in that packet reads another tenant's rows.
#[tokio::test]
async fn a_raw_function_call_cannot_write_the_setting() {
    let s = shared(&["acme", "globex"], "auth_type = \"trust\"").await;
    let globex = s.proxy.connect("globex").await;
    assert_eq!(bodies(&globex).await, own("globex"));
    let mut acme = raw::login_trust(s.proxy.port, "acme").await;
    raw::simple_query(&mut acme, "BEGIN").await;
    // pg_catalog.set_config(text, text, boolean), text arguments.
    let mut call = 2078u32.to_be_bytes().to_vec();
    call.extend_from_slice(&[0, 1, 0, 0, 0, 3]);
    for arg in [&b"backtrace_functions"[..], b"globex", b"false"] {
        call.extend_from_slice(&(arg.len() as i32).to_be_bytes());
        call.extend_from_slice(arg);
    }
    call.extend_from_slice(&[0, 0]);
    let mut packet = raw::frame(b'F', &call);
    packet.extend_from_slice(&raw::query("SELECT body FROM notes"));
    raw::send(&mut acme, &packet).await;
    let (msgs, _) = raw::read_until_ready_any(&mut acme).await;
    let e = msgs.iter().find(|m| m.tag == b'E').expect("refused");
    assert_eq!(e.code(), "42501", "{e:?}");
    // The query behind it runs in the failed transaction (refused) or
    // as acme: never globex's rows.
    let (msgs, _) = raw::read_until_ready_any(&mut acme).await;
    assert!(
        !msgs
            .iter()
            .any(|m| m.tag == b'D' && m.body.windows(6).any(|w| w == b"globex")),
        "{msgs:?}"
    );
    raw::simple_query(&mut acme, "ROLLBACK").await;
    raw::send(&mut acme, &raw::query("SELECT body FROM notes")).await;
    let (msgs, _) = raw::read_to_ready(&mut acme, "after the call").await;
    let rows: Vec<&raw::Msg> = msgs.iter().filter(|m| m.tag == b'D').collect();
    assert_eq!(rows.len(), 2, "acme's own two rows: {msgs:?}");
    assert!(rows.iter().all(|m| m.body.windows(4).any(|w| w == b"acme")));
}
