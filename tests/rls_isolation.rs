//! `isolation = "rls"`: many tenants in one shared database behind one
//! pool, each statement running with its client's tenant as the
//! database-side context (`sql/pgtenant.sql`, `pool::context`). Every test
//! attacks the boundary: tenants alternate on one server connection, a
//! client tries each way to name another tenant (settings, functions,
//! forged FunctionCalls, startup options, cached plans), and a connection
//! without a context must see and write nothing.

mod common;

use common::shared::{
    OVERWRITE, SHARED_PASSWORD, SHARED_ROLE, bodies, create_subscribe, lock_context_sequence,
    notes_seed, notified_during_a_query, overwrite_behind_a_stalled_context_call, own,
    shared_database, tenants_config,
};
use common::{TestPg, TestProxy, raw, sqlstate};
use pgtenant::credentials::secret::AuthSecret;
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

struct Shared {
    pg: TestPg,
    proxy: TestProxy,
    secret_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A cluster with the shared database `app_shared` (installed and keyed
/// for placement `shared`) and the proxy in front, `tenants` all on it.
async fn shared(tenants: &[&str], pool_size: u32, extra_proxy: &str) -> Shared {
    shared_mirroring(tenants, pool_size, extra_proxy, Some("app.tenant_id"), 2).await
}

/// `shared` with `tenant_setting` as given (`None`: no mirror setting,
/// the context call's shortest path).
async fn shared_mirroring(
    tenants: &[&str],
    pool_size: u32,
    extra_proxy: &str,
    mirror: Option<&str>,
    workers: u32,
) -> Shared {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let db = shared_database("", &notes_seed(tenants, "", "", SHARED_ROLE)).await;
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\nsecret_file = \"{}\"\n{extra_proxy}\n\n\
         [placements.shared]\nurl = \"{}\"\nisolation = \"rls\"\npool_size = {pool_size}\n\
         {}\n\n{}",
        db.secret_file.display(),
        db.pg
            .cluster
            .url(SHARED_ROLE, SHARED_PASSWORD, "app_shared"),
        mirror
            .map(|m| format!("tenant_setting = \"{m}\""))
            .unwrap_or_default(),
        tenants_config(tenants)
    );
    let proxy = TestProxy::start(&config).await;
    Shared {
        pg: db.pg,
        proxy,
        secret_file: db.secret_file,
        _dir: db.dir,
    }
}

/// Same through the simple protocol.
async fn bodies_simple(client: &tokio_postgres::Client) -> Vec<String> {
    let mut out: Vec<String> = client
        .simple_query("SELECT body FROM notes")
        .await
        .expect("select")
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// What `pgtenant.current_tenant()` says on the client's lease.
async fn current_tenant(client: &tokio_postgres::Client) -> Option<String> {
    client
        .query_one("SELECT pgtenant.current_tenant()", &[])
        .await
        .expect("current_tenant")
        .get(0)
}

/// Names around the 7 bytes `pgtenant.enter()` and `current_tenant()`
/// keep in their first sequence (the path without a mirror setting
/// differs for longer names): a longer name is never read back as its
/// first 7 bytes, which here are another tenant's whole name.
#[tokio::test]
async fn names_longer_than_one_word_are_never_read_as_their_prefix() {
    let tenants = [
        "abcdef",
        "abcdefg",
        "abcdefgh",
        "abcdefg-and-more",
        "abcdefg-and-a-name-of-forty-or-more-bytes-x",
    ];
    let s = shared_mirroring(&tenants, 1, "", None, 2).await;
    let mut clients = Vec::new();
    for t in tenants {
        clients.push((t, s.proxy.connect(t).await));
    }
    for round in 0..3 {
        for (t, c) in clients.iter().chain(clients.iter().rev()) {
            assert_eq!(bodies(c).await, own(t), "{t}, round {round}");
            assert_eq!(
                current_tenant(c).await.as_deref(),
                Some(*t),
                "round {round}"
            );
        }
    }
}

/// With room in the pool, a lease takes an idle connection whose session
/// already holds its tenant's context (no context call) over the most
/// recently idle one: two tenants taking turns each keep their own server
/// session.
#[tokio::test]
async fn an_idle_connection_holding_the_tenants_context_is_taken_first() {
    let s = shared_mirroring(&["acme", "globex"], 2, "", None, 1).await;
    let acme = s.proxy.connect("acme").await;
    let globex = s.proxy.connect("globex").await;
    async fn backend(c: &tokio_postgres::Client) -> i32 {
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0)
    }
    // acme holds one connection while globex takes (and gives back) the
    // other; then acme's comes back last, on top of the idle ones.
    acme.batch_execute("BEGIN").await.expect("begin");
    let acme_pid = backend(&acme).await;
    let globex_pid = backend(&globex).await;
    assert_ne!(acme_pid, globex_pid, "two server connections");
    acme.batch_execute("COMMIT").await.expect("commit");
    for round in 0..10 {
        assert_eq!(backend(&globex).await, globex_pid, "globex, round {round}");
        assert_eq!(bodies(&globex).await, own("globex"));
        assert_eq!(backend(&acme).await, acme_pid, "acme, round {round}");
        assert_eq!(bodies(&acme).await, own("acme"));
    }
}

#[tokio::test]
async fn tenants_alternating_on_one_connection_see_only_their_rows() {
    let tenants = ["acme", "globex", "initech"];
    let s = shared(&tenants, 1, "").await;
    let mut clients = Vec::new();
    for t in tenants {
        clients.push((t, s.proxy.connect(t).await));
    }
    for round in 0..10 {
        for (t, c) in &clients {
            assert_eq!(bodies(c).await, own(t), "{t}, round {round}, extended");
            assert_eq!(bodies_simple(c).await, own(t), "{t}, round {round}, simple");
            assert_eq!(current_tenant(c).await.as_deref(), Some(*t));
            let mirror: String = c
                .query_one("SELECT current_setting('app.tenant_id')", &[])
                .await
                .expect("mirror")
                .get(0);
            assert_eq!(mirror, *t, "the mirror setting follows the lease");
        }
    }
    // Writes land in the writer's tenant (the DEFAULT and WITH CHECK use
    // the context), and a row for another tenant is refused.
    let (_, acme) = &clients[0];
    let tenant: String = acme
        .query_one(
            "INSERT INTO notes (body) VALUES ('new') RETURNING tenant_id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    assert_eq!(tenant, "acme");
    let e = acme
        .execute(
            "INSERT INTO notes (tenant_id, body) VALUES ('globex', 'planted')",
            &[],
        )
        .await
        .expect_err("a row for another tenant");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    let (_, globex) = &clients[1];
    assert_eq!(bodies(globex).await, own("globex"));
    assert_eq!(
        globex
            .execute("UPDATE notes SET body = 'x' WHERE tenant_id = 'acme'", &[])
            .await
            .expect("update"),
        0,
        "no row of another tenant to update"
    );
}

#[tokio::test]
async fn session_mode_sets_the_context_for_the_whole_session() {
    let tenants = ["acme", "globex"];
    let s = shared(&tenants, 1, "pool_mode = \"session\"").await;
    for round in 0..3 {
        for t in tenants {
            let c = s.proxy.connect(t).await;
            for _ in 0..3 {
                assert_eq!(bodies(&c).await, own(t), "{t}, round {round}");
            }
            c.batch_execute("BEGIN; SELECT 1; COMMIT; SELECT 2")
                .await
                .expect("transactions");
            assert_eq!(bodies_simple(&c).await, own(t), "{t} after transactions");
            // Statements that take the context with them: the session
            // gets it back before it goes on.
            for sql in ["RESET ALL", "DISCARD ALL", "DISCARD SEQUENCES"] {
                c.batch_execute(sql).await.expect(sql);
                assert_eq!(bodies(&c).await, own(t), "{t} after {sql}");
            }
            drop(c);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Everything a client of acme can send to name another tenant, on the
/// one server connection globex also uses; after each attempt acme sees
/// none of globex's rows and globex still sees exactly its own.
#[tokio::test]
async fn no_statement_names_another_tenant() {
    let s = shared(&["acme", "globex"], 1, "").await;
    let acme = s.proxy.connect("acme").await;
    let globex = s.proxy.connect("globex").await;
    let attempts = [
        "SET pgtenant.tenant = 'globex'",
        "SET app.tenant_id = 'globex'",
        "SELECT set_config('pgtenant.tenant', 'globex', false)",
        "BEGIN; SET LOCAL pgtenant.tenant = 'globex'; SELECT body FROM notes; COMMIT",
        "DO $$BEGIN PERFORM set_config('pgtenant.tenant', 'globex', false); END$$",
        "RESET ALL",
        "DISCARD ALL",
        "SET ROLE app_owner",
        "SET SESSION AUTHORIZATION app_owner",
        "SELECT pgtenant.enter('globex', '', 1, 2, NULL)",
        "SELECT pgtenant.enter('globex', 'app.tenant_id', 0, 0, NULL)",
        "SELECT pgtenant.open_session(1, 2, sha256('globex'::bytea))",
        "SELECT setval('pgtenant.ctx_0', 0)",
        "SELECT currval('pgtenant.ctx_0')",
        "SELECT * FROM pgtenant.context_key",
        "SELECT pgtenant.install_key(sha256('mine'::bytea) || sha256('mine'::bytea))",
        "ALTER ROLE CURRENT_USER SET pgtenant.tenant = 'globex'",
        "ALTER DATABASE app_shared SET pgtenant.tenant = 'globex'",
        "CREATE TEMP TABLE notes (body text); INSERT INTO notes VALUES ('secret of globex')",
        "CREATE FUNCTION pg_temp.current_tenant() RETURNS text LANGUAGE sql AS $$SELECT 'globex'$$",
    ];
    for sql in attempts {
        let _ = acme.batch_execute(sql).await; // most are refused; none may help
        let seen = bodies_simple(&acme).await;
        assert!(
            seen.iter().all(|b| !b.contains("globex")),
            "after {sql:?} acme sees {seen:?}"
        );
        assert!(
            seen.is_empty() || seen == own("acme"),
            "after {sql:?} acme sees {seen:?}"
        );
        assert_eq!(bodies(&globex).await, own("globex"), "globex after {sql:?}");
        // The next lease of acme has its context back.
        assert_eq!(
            bodies(&acme).await,
            own("acme"),
            "acme's next lease after {sql:?}"
        );
    }
    // Startup options naming the context setting change nothing.
    let opts = s
        .proxy
        .try_connect(&format!(
            "{} options='-c pgtenant.tenant=globex -c app.tenant_id=globex'",
            s.proxy.conn_str("app.acme", "acme-secret", "acme")
        ))
        .await
        .expect("connect with options");
    assert_eq!(bodies(&opts).await, own("acme"));
}

/// A statement prepared while one tenant held the connection runs with
/// the context of whoever executes it, also as a cached generic plan.
#[tokio::test]
async fn cached_generic_plans_carry_no_tenant() {
    let s = shared(&["acme", "globex"], 1, "").await;
    let connect = |t: &'static str| {
        let conn = format!(
            "{} options='-c plan_cache_mode=force_generic_plan'",
            s.proxy
                .conn_str(&format!("app.{t}"), &format!("{t}-secret"), t)
        );
        let proxy = &s.proxy;
        async move { proxy.try_connect(&conn).await.expect("connect") }
    };
    let acme = connect("acme").await;
    let globex = connect("globex").await;
    let sql = "SELECT body FROM notes WHERE body LIKE $1 ORDER BY body";
    let (sa, sg) = (
        acme.prepare(sql).await.expect("prepare"),
        globex.prepare(sql).await.expect("prepare"),
    );
    for round in 0..8 {
        for (t, c, st) in [("acme", &acme, &sa), ("globex", &globex, &sg)] {
            let rows: Vec<String> = c
                .query(st, &[&"%"])
                .await
                .expect("execute")
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(rows, own(t), "{t}, round {round}");
        }
    }
}

/// Statements pipelined behind the first message of a lease, COPY TO and
/// a FunctionCall all run with the lease's tenant.
#[tokio::test]
async fn pipelined_statements_copy_and_function_calls_have_the_context() {
    let s = shared(&["acme", "globex"], 1, "auth_type = \"trust\"").await;
    let globex = s.proxy.connect("globex").await;
    assert_eq!(bodies(&globex).await, own("globex"));

    // Three queries in one packet: every one sees acme's rows.
    let mut raw_acme = raw::login_trust(s.proxy.port, "acme").await;
    let mut packet = raw::query("SELECT count(*) FROM notes");
    packet.extend(raw::query(
        "SELECT string_agg(body, ',' ORDER BY body) FROM notes",
    ));
    packet.extend(raw::query("SELECT pgtenant.current_tenant()"));
    raw::send(&mut raw_acme, &packet).await;
    let mut values = Vec::new();
    for _ in 0..3 {
        let (msgs, _) = raw::read_to_ready(&mut raw_acme, "pipelined").await;
        for m in msgs.iter().filter(|m| m.tag == b'D') {
            let len = i32::from_be_bytes([m.body[2], m.body[3], m.body[4], m.body[5]]) as usize;
            values.push(String::from_utf8_lossy(&m.body[6..6 + len]).into_owned());
        }
    }
    assert_eq!(
        values,
        ["2", "more of acme,secret of acme", "acme"],
        "pipelined queries"
    );

    // A FunctionCall of pgtenant.current_tenant() answers acme.
    let acme = s.proxy.connect("acme").await;
    let oid: u32 = acme
        .query_one("SELECT 'pgtenant.current_tenant()'::regprocedure::oid", &[])
        .await
        .expect("oid")
        .get(0);
    let mut call = oid.to_be_bytes().to_vec();
    call.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no args, text result
    raw::send(&mut raw_acme, &raw::frame(b'F', &call)).await;
    let (msgs, _) = raw::read_to_ready(&mut raw_acme, "function call").await;
    let v = msgs
        .iter()
        .find(|m| m.tag == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(&v.body[4..], b"acme");

    // COPY TO sees acme's rows only.
    let copied = {
        use futures_util::StreamExt;
        let stream = acme
            .copy_out("COPY (SELECT body FROM notes ORDER BY body) TO STDOUT")
            .await
            .expect("copy out");
        let chunks: Vec<_> = stream.collect().await;
        chunks
            .into_iter()
            .map(|c| String::from_utf8_lossy(&c.expect("chunk")).into_owned())
            .collect::<String>()
    };
    assert_eq!(copied, "more of acme\nsecret of acme\n");
}

/// `pgtenant.enter()` with the session's own secret but arguments it
/// refuses (no custom setting as the mirror, an empty or overlong name,
/// a long name with a bad mirror) fails after the secret check and
/// leaves no tenant, never the one before: its first step, before
/// anything that can fail, clears the context. Run on one session as the
/// superuser, the only party here that can give itself a secret.
#[tokio::test]
async fn an_enter_refused_after_the_secret_check_leaves_no_tenant() {
    let s = shared(&["acme"], 1, "").await;
    let db = s.pg.cluster.admin("app_shared").await.expect("admin");
    db.batch_execute(
        "SELECT pg_catalog.setval('pgtenant.session_s1', 11, true), \
         pg_catalog.setval('pgtenant.session_s2', 22, true)",
    )
    .await
    .expect("a secret");
    let overlong = "x".repeat(64);
    for (tenant, mirror) in [
        ("globex", "not a setting"),
        ("", ""),
        (overlong.as_str(), ""),
        ("globex-with-a-longer-name", "app."),
    ] {
        db.execute(
            "SELECT pgtenant.enter('acme', 'app.tenant_id', 11, 22, NULL)",
            &[],
        )
        .await
        .expect("enter acme");
        assert_eq!(current_tenant(&db).await.as_deref(), Some("acme"));
        let e = db
            .execute(
                "SELECT pgtenant.enter($1, $2, 11, 22, NULL)",
                &[&tenant, &mirror],
            )
            .await
            .expect_err("refused");
        assert_eq!(sqlstate(&e), "42501", "{e}");
        assert_eq!(
            current_tenant(&db).await,
            None,
            "after {tenant:?}, {mirror:?}"
        );
    }
}

/// A forged call of pgtenant.enter() in the middle of a lease (the
/// client's own FunctionCall) fails, and leaves no tenant at all, not
/// the lease's one nor another: enter() clears before it checks.
#[tokio::test]
async fn a_forged_enter_leaves_no_tenant() {
    let s = shared(&["acme", "globex"], 1, "auth_type = \"trust\"").await;
    let acme = s.proxy.connect("acme").await;
    let oid: u32 = acme
        .query_one(
            "SELECT 'pgtenant.enter(text,text,int8,int8,int8)'::regprocedure::oid",
            &[],
        )
        .await
        .expect("oid")
        .get(0);
    let mut raw_acme = raw::login_trust(s.proxy.port, "acme").await;
    // A transaction keeps the lease (and its server connection) across
    // messages; a savepoint lets it go on after the refusal.
    raw::simple_query(&mut raw_acme, "BEGIN; SAVEPOINT before").await;
    let mut call = oid.to_be_bytes().to_vec();
    call.extend_from_slice(&[0, 1, 0, 1, 0, 5]);
    for arg in [&b"globex"[..], b"", &[0u8; 8], &[1u8; 8]] {
        call.extend_from_slice(&(arg.len() as i32).to_be_bytes());
        call.extend_from_slice(arg);
    }
    call.extend_from_slice(&(-1i32).to_be_bytes()); // no proof
    call.extend_from_slice(&[0, 1]);
    raw::send(&mut raw_acme, &raw::frame(b'F', &call)).await;
    let (msgs, _) = raw::read_until_ready_any(&mut raw_acme).await;
    let e = msgs.iter().find(|m| m.tag == b'E').expect("refused");
    assert_eq!(e.code(), "42501", "{e:?}");
    raw::simple_query(&mut raw_acme, "ROLLBACK TO SAVEPOINT before").await;
    raw::send(
        &mut raw_acme,
        &raw::query(
            "SELECT coalesce(pgtenant.current_tenant(), '<none>'), (SELECT count(*) FROM notes)",
        ),
    )
    .await;
    let (msgs, _) = raw::read_to_ready(&mut raw_acme, "after the forged call").await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("row");
    assert!(
        row.body.windows(6).any(|w| w == b"<none>"),
        "no tenant after the forged call: {row:?}"
    );
    raw::simple_query(&mut raw_acme, "COMMIT").await;
    // The next lease has acme again.
    assert_eq!(bodies(&acme).await, own("acme"));
    assert_eq!(bodies_simple(&acme).await, own("acme"));
}

/// A connection of the placement's role that did not come through the
/// proxy has no context: no rows, no writes.
#[tokio::test]
async fn without_a_context_nothing_is_visible_or_writable() {
    let s = shared(&["acme"], 1, "").await;
    let (direct, conn) = tokio_postgres::connect(
        &s.pg.cluster.url(SHARED_ROLE, SHARED_PASSWORD, "app_shared"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("direct connection");
    tokio::spawn(conn);
    assert!(bodies(&direct).await.is_empty());
    assert_eq!(current_tenant(&direct).await, None);
    direct
        .batch_execute("SET pgtenant.tenant = 'acme'; SET app.tenant_id = 'acme'")
        .await
        .expect("set");
    assert!(
        direct
            .query("SELECT body FROM notes", &[])
            .await
            .map_or(true, |r| r.is_empty()),
        "a setting alone gives no context"
    );
    let e = direct
        .execute(
            "INSERT INTO notes (tenant_id, body) VALUES ('acme', 'x')",
            &[],
        )
        .await
        .expect_err("no writes");
    assert!(["42501", "55000"].contains(&sqlstate(&e).as_str()), "{e}");
    drop(s.proxy);
}

/// A database holding another context key (or none) is refused, with the
/// fix in the log; clients get 08006 and nothing runs.
#[tokio::test]
async fn a_database_with_another_key_refuses_the_placement() {
    let s = shared(&["acme"], 1, "").await;
    let owner = s.pg.cluster.admin("app_shared").await.expect("admin");
    owner
        .batch_execute(
            "SET ROLE app_owner; SELECT pgtenant.install_key(sha256('other'::bytea) || sha256('key'::bytea))",
        )
        .await
        .expect("another key");
    let Err(e) = s
        .proxy
        .try_connect(&s.proxy.conn_str("app.acme", "acme-secret", "acme"))
        .await
    else {
        panic!("a database with another key is refused");
    };
    assert_eq!(sqlstate(&e), "08006", "{e}");
    // The right key again: the placement works without a restart, once
    // the backoff allows another attempt.
    let secret = AuthSecret::load(&s.secret_file)
        .expect("load")
        .expect("secret");
    let hex: String = secret
        .context_key("shared")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    owner
        .batch_execute(&format!("SELECT pgtenant.install_key('\\x{hex}'::bytea)"))
        .await
        .expect("right key");
    let mut ok = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(c) = s
            .proxy
            .try_connect(&s.proxy.conn_str("app.acme", "acme-secret", "acme"))
            .await
        {
            ok = Some(c);
            break;
        }
    }
    let c = ok.expect("connects once the key is right");
    assert_eq!(bodies(&c).await, own("acme"));
}

/// NOTIFY ignores row-level security: on a shared placement LISTEN is
/// refused (0A000, the connection reset), and a notification to a server
/// connection that listens anyway (a function the probe cannot see into)
/// reaches no client.
#[tokio::test]
async fn no_notification_crosses_tenants() {
    let s = shared(&["acme", "globex"], 1, "auth_type = \"trust\"").await;
    let acme = s.proxy.connect("acme").await;
    let e = acme
        .batch_execute("LISTEN news")
        .await
        .expect_err("LISTEN is refused");
    assert_eq!(sqlstate(&e), "0A000", "{e}");

    let owner = s.pg.cluster.admin("app_shared").await.expect("admin");
    create_subscribe(&owner).await;
    let mut globex = raw::login_trust(s.proxy.port, "globex").await;
    raw::simple_query(&mut globex, "SELECT public.subscribe('news')").await;
    // The next lease runs on the same (listening) server connection; the
    // notification arrives while it runs and would be sent before its
    // ReadyForQuery.
    let msgs = notified_during_a_query(&mut globex, &owner, "acme's secret").await;
    assert!(
        msgs.iter().all(|m| m.tag != b'A'),
        "a notification reached a client: {msgs:?}"
    );
}

/// Named statements are kept per server connection and shared between
/// its clients, so pg_prepared_statements shows a tenant the SQL text of
/// statements another tenant prepared there, until a superuser runs
/// sql/pgtenant-superuser.sql (which tenants cannot undo).
#[tokio::test]
async fn statement_texts_of_other_tenants_are_hidden_by_the_superuser_script() {
    let s = shared(&["acme", "globex"], 1, "").await;
    let acme = s.proxy.connect("acme").await;
    let globex = s.proxy.connect("globex").await;
    acme.prepare("SELECT body FROM notes WHERE body <> 'acme private literal'")
        .await
        .expect("prepare");
    let texts = globex
        .simple_query("SELECT string_agg(statement, ' | ') FROM pg_prepared_statements")
        .await
        .expect("the view is readable before the script")
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap_or_default();
    assert!(texts.contains("acme private literal"), "{texts}");

    let admin = s.pg.cluster.admin("app_shared").await.expect("admin");
    admin
        .batch_execute(include_str!("../sql/pgtenant-superuser.sql"))
        .await
        .expect("the superuser script");
    let e = globex
        .simple_query("SELECT statement FROM pg_prepared_statements")
        .await
        .expect_err("no longer readable");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    let e = globex
        .simple_query("SELECT * FROM pg_prepared_statement()")
        .await
        .expect_err("nor the function");
    assert_eq!(sqlstate(&e), "42501", "{e}");
}

/// COPY FROM into a table under row-level security is refused by
/// PostgreSQL with an error that names the alternative (INSERT); the
/// session goes on. (Raw socket: tokio-postgres's copy_in leaves its
/// connection unusable after such an error, also without pgtenant.)
#[tokio::test]
async fn copy_from_is_refused_with_the_alternative() {
    let s = shared(&["acme"], 1, "auth_type = \"trust\"").await;
    let mut acme = raw::login_trust(s.proxy.port, "acme").await;
    raw::send(&mut acme, &raw::query("COPY notes (body) FROM STDIN")).await;
    let (msgs, status) = raw::read_until_ready_any(&mut acme).await;
    let e = msgs.iter().find(|m| m.tag == b'E').expect("refused");
    assert_eq!(e.code(), "0A000", "{e:?}");
    assert!(
        e.fields().get(&b'H').is_some_and(|h| h.contains("INSERT")),
        "{:?}",
        e.fields()
    );
    assert_eq!(status, b'I');
    raw::send(&mut acme, &raw::query("SELECT count(*) FROM notes")).await;
    let (msgs, _) = raw::read_to_ready(&mut acme, "after COPY").await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("row");
    assert_eq!(&row.body[6..], b"2");
}

/// A lease of the tenant whose context the connection already holds skips
/// the context call; after anything that may have cleared the context
/// (in its own lease) the next lease enters it again.
#[tokio::test]
async fn a_cleared_context_is_entered_again_by_the_next_lease() {
    let s = shared(&["acme"], 1, "").await;
    let acme = s.proxy.connect("acme").await;
    for sql in [
        "RESET ALL",
        "DISCARD ALL",
        "DISCARD SEQUENCES",
        "RESET pgtenant.tenant",
        "SET pgtenant.tenant = ''",
        "SELECT set_config('pgtenant.tenant', '', false)",
        "DO $$BEGIN PERFORM set_config('pgtenant.tenant', '', false); END$$",
        // A call of its own with a bad proof clears the context first.
        "SELECT pgtenant.enter('acme', '', 1, 2, NULL)",
    ] {
        assert_eq!(bodies(&acme).await, own("acme"), "before {sql}");
        let _ = acme.batch_execute(sql).await;
        assert_eq!(bodies(&acme).await, own("acme"), "the lease after {sql}");
        assert_eq!(bodies(&acme).await, own("acme"), "and the one after");
    }
}

/// The context call costs no connection: tenants taking turns on a pool
/// of one keep using the same server session (a call left unanswered at
/// the end of a lease would close it every time).
#[tokio::test]
async fn taking_turns_keeps_the_server_connection() {
    let s = shared(&["acme", "globex"], 1, "").await;
    let acme = s.proxy.connect("acme").await;
    let globex = s.proxy.connect("globex").await;
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..20 {
        for c in [&acme, &globex] {
            let pid: i32 = c
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .expect("pid")
                .get(0);
            pids.insert(pid);
            let _ = c.simple_query("SELECT 1").await.expect("simple");
        }
    }
    assert_eq!(pids.len(), 1, "server connections used: {pids:?}");
}

/// A client that makes its own lease's context call fail must not run
/// its statements with the context the connection held before, another
/// tenant's. Here the client's session is read-only by default (a
/// setting that follows it onto every connection it leases), so the call's
/// first `setval` fails before it can clear anything; the client's
/// statements, sent with the call, must be skipped, and the other tenant's
/// rows stay untouched. (Any failure of the call works the same way: a
/// statement_timeout or a cancel landing before its first statement.)
#[tokio::test]
async fn a_failed_context_call_never_runs_statements_in_the_previous_context() {
    let s = shared(&["acme", "evil"], 1, "").await;
    let acme = s.proxy.connect("acme").await;
    for round in 0..3 {
        let evil = s.proxy.connect("evil").await;
        evil.batch_execute("SET default_transaction_read_only = on")
            .await
            .expect("set");
        // The placement's one connection now holds acme's context.
        assert_eq!(bodies(&acme).await, own("acme"), "round {round}");
        // evil's next lease: evil's settings first, then the context call,
        // which fails in the read-only transaction.
        let attempt = evil.batch_execute(OVERWRITE).await;
        assert!(attempt.is_err(), "the lease fails closed: {attempt:?}");
        assert_eq!(
            bodies(&acme).await,
            own("acme"),
            "acme's rows after evil's attempt, round {round}"
        );
    }
}

/// The guard that follows the context call (`pool::write_guard`) takes no
/// snapshot and runs nothing: a lease that switches tenant may still open
/// with a statement that must come first in its transaction (an isolation
/// level, simple or extended) or outside any pipeline (VACUUM).
#[tokio::test]
async fn a_switching_lease_may_open_with_statements_that_must_come_first() {
    let s = shared(&["acme", "globex"], 1, "").await;
    let mut clients = Vec::new();
    for t in ["acme", "globex"] {
        clients.push((t, s.proxy.connect(t).await));
    }
    // Each statement below opens a lease that follows the other tenant's
    // on the one connection: every one of them comes after a context call
    // and its guard.
    for round in 0..3 {
        for (t, c) in &clients {
            // Simple protocol: the lease's first message sets the level.
            let rows = c
                .simple_query(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ; \
                     SELECT current_setting('transaction_isolation'), \
                     (SELECT count(*) FROM notes); COMMIT",
                )
                .await
                .expect("begin isolation level");
            let level = rows.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some((r.get(0)?.to_owned(), r.get(1)?.to_owned())),
                _ => None,
            });
            let want = Some(("repeatable read".to_owned(), "2".to_owned()));
            assert_eq!(level, want, "{t}, round {round}");
        }
        for (t, c) in &mut clients {
            // tokio-postgres: START TRANSACTION ISOLATION LEVEL first.
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::Serializable)
                .start()
                .await
                .expect("serializable transaction");
            let level: String = tx
                .query_one("SELECT current_setting('transaction_isolation')", &[])
                .await
                .expect("level")
                .get(0);
            assert_eq!(level, "serializable", "{t}, round {round}");
            tx.commit().await.expect("commit");
        }
        for (t, c) in &clients {
            // Refused inside a pipeline or a transaction block; the
            // placement's role owns no table, so it only warns.
            c.batch_execute("VACUUM notes").await.expect("vacuum");
            assert_eq!(bodies(c).await, own(t), "{t}, round {round}");
        }
    }
}

/// The guard holds back what follows a failed context call only up to the
/// next Sync, which ends PostgreSQL's skipping: a client that sends a Sync
/// of its own, and a statement after it, in the lease's first send must
/// not get that statement run in the previous tenant's context either.
#[tokio::test]
async fn a_sync_behind_a_failed_context_call_lets_nothing_through() {
    let s = shared(&["acme", "evil"], 1, "auth_type = \"trust\"").await;
    let acme = s.proxy.connect("acme").await;
    for round in 0..3 {
        let mut evil = raw::login_trust(s.proxy.port, "evil").await;
        raw::simple_query(&mut evil, "SET default_transaction_read_only = on").await;
        // The placement's one connection now holds acme's context.
        assert_eq!(bodies(&acme).await, own("acme"), "round {round}");
        let mut send = raw::query("SELECT 1");
        send.extend_from_slice(&raw::frame(b'S', &[]));
        send.extend_from_slice(&raw::query(OVERWRITE));
        raw::send(&mut evil, &send).await;
        let msgs = raw::read_until_closed(&mut evil, Duration::from_secs(10)).await;
        assert!(
            msgs.iter().any(|m| m.tag == b'E'),
            "the lease fails closed: {msgs:?}"
        );
        assert_eq!(
            bodies(&acme).await,
            own("acme"),
            "acme's rows after evil's attempt, round {round}"
        );
    }
}

/// The context call can fail before its first step, the one that clears
/// the context: here it waits for a lock (the superuser holds the
/// sequence that step writes) when the client cancels it, or when the
/// client's own `statement_timeout` ends it. Either way the statements
/// the client sent with the call must not run in the context the
/// connection held before, another tenant's.
#[tokio::test]
async fn a_context_call_canceled_or_timed_out_before_its_clear_lets_nothing_through() {
    let s = shared(&["acme", "evil"], 1, "").await;
    let admin = s.pg.cluster.admin("app_shared").await.expect("admin");
    let acme = s.proxy.connect("acme").await;
    overwrite_behind_a_stalled_context_call(&s.proxy, &admin, &acme).await;
}

/// A client that leaves while its lease's context call is still waiting
/// leaves a connection whose context nobody knows: the call may fail
/// (here the client's own `statement_timeout` ends it before its first
/// step, so the connection keeps the previous tenant's context) after the
/// proxy noted the client's tenant as the one it holds. The connection
/// must be closed, not given to the next lease, which for the same tenant
/// would skip the call and run with the other tenant's context. (Three
/// layers see to it: the lease's end closes a connection with calls
/// unanswered, recovery forgets the context, and a checkout drops a
/// connection with unread bytes; with the first, or the first two,
/// removed the test still passes. It checks the end result.)
#[tokio::test]
async fn a_client_leaving_during_its_context_call_leaves_no_connection_behind() {
    let s = shared(&["acme", "evil"], 1, "auth_type = \"trust\"").await;
    let admin = s.pg.cluster.admin("app_shared").await.expect("admin");
    let acme = s.proxy.connect("acme").await;
    for round in 0..2 {
        let mut evil = raw::login_trust(s.proxy.port, "evil").await;
        raw::simple_query(&mut evil, "SET statement_timeout = 300").await;
        // The placement's one connection now holds acme's context.
        assert_eq!(bodies(&acme).await, own("acme"), "round {round}");
        lock_context_sequence(&admin).await;
        raw::send(&mut evil, &raw::query("SELECT 1")).await;
        common::wait_for_lock_wait(&admin, None).await;
        drop(evil);
        // The call times out at its first step, clearing nothing.
        tokio::time::sleep(Duration::from_millis(600)).await;
        admin.batch_execute("ROLLBACK").await.expect("unlock");
        let evil = s.proxy.connect("evil").await;
        assert_eq!(bodies(&evil).await, own("evil"), "round {round}");
        assert_eq!(bodies(&acme).await, own("acme"), "round {round}");
    }
}
