//! `isolation = "schema"`: each tenant's clients resolve unqualified names
//! in the tenant's own schema, on whatever server connection they get,
//! with every other tenant on the same one; what a client sets (startup
//! options, SET) is its own choice, and RESET, RESET ALL and DISCARD ALL
//! bring it back to its tenant's schema, not to the server's default.
//!
//! One database `tenant_shared` (role `pgt_shared`), with `public.notes`
//! and a `notes` table in each tenant's schema, rows naming their owner.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Tenants on the schema placement; `c-eu` checks that the schema name
/// is quoted (`"tenant_c-eu"`).
const TENANTS: [&str; 3] = ["a", "b", "c-eu"];

/// A cluster whose `tenant_shared` database holds a schema per tenant.
async fn cluster() -> TestPg {
    let pg = TestPg::start(HostAuth::Trust, &["shared"]).await;
    let admin = pg.cluster.admin("tenant_shared").await.expect("admin");
    for t in TENANTS {
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA \"tenant_{t}\";
                 CREATE TABLE \"tenant_{t}\".notes (id serial PRIMARY KEY, body text NOT NULL);
                 INSERT INTO \"tenant_{t}\".notes (body) VALUES ('note of {t}');
                 GRANT USAGE ON SCHEMA \"tenant_{t}\" TO pgt_shared;
                 GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA \"tenant_{t}\" TO pgt_shared;
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"tenant_{t}\" TO pgt_shared;"
            ))
            .await
            .expect("tenant schema");
    }
    pg
}

/// One schema placement of `pool_size` connections holding every tenant.
fn config(pg: &TestPg, mode: &str, pool_size: u32, placement_extra: &str) -> String {
    let mut s = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nauth_type = \"trust\"\npool_mode = \"{mode}\"\n\n\
         [placements.schemas]\nurl = \"{}\"\nisolation = \"schema\"\npool_size = {pool_size}\n{placement_extra}\n\n",
        pg.url("tenant_shared")
    );
    for t in TENANTS {
        s.push_str(&format!(
            "[tenants.{t}]\nplacement = \"schemas\"\nusers = {{ app = \"{t}-secret\" }}\n\n"
        ));
    }
    s
}

async fn show(c: &Client, name: &str) -> String {
    first(c, &format!("SHOW {name}")).await
}

/// The first column of the first row of a simple query.
async fn first(c: &Client, sql: &str) -> String {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Every body of the unqualified `notes`, through the simple protocol.
async fn notes_simple(c: &Client) -> Vec<String> {
    let rows = c
        .simple_query("SELECT body FROM notes ORDER BY id")
        .await
        .expect("simple select");
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
}

/// The same through the extended protocol (an unnamed statement each time).
async fn notes_extended(c: &Client) -> Vec<String> {
    c.query("SELECT body FROM notes WHERE id > $1 ORDER BY id", &[&0i32])
        .await
        .expect("extended select")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn own(t: &str) -> Vec<String> {
    vec![format!("note of {t}")]
}

/// `public.notes`, seeded by `TestPg` for its `shared` tenant.
fn public() -> Vec<String> {
    vec!["secret of shared".into(), "more of shared".into()]
}

#[tokio::test]
async fn tenants_sharing_one_connection_each_see_their_own_schema_in_transaction_mode() {
    let pg = cluster().await;
    let proxy = TestProxy::start(&config(&pg, "transaction", 1, "")).await;
    let clients = [
        proxy.connect("a").await,
        proxy.connect("b").await,
        proxy.connect("c-eu").await,
    ];
    assert_eq!(show(&clients[0], "search_path").await, "\"tenant_a\"");
    assert_eq!(show(&clients[2], "search_path").await, "\"tenant_c-eu\"");
    // Named statements, prepared once each, then run alternately on the
    // one server connection: each must resolve in its client's schema.
    let mut prepared = Vec::new();
    for c in &clients {
        prepared.push(c.prepare("SELECT body FROM notes").await.expect("prepare"));
    }
    let pids: Vec<String> = {
        let mut v = Vec::new();
        for c in &clients {
            v.push(first(c, "SELECT pg_backend_pid()::text").await);
        }
        v
    };
    assert!(
        pids.windows(2).all(|w| w[0] == w[1]),
        "one server connection: {pids:?}"
    );
    for round in 0..20 {
        for (c, t) in clients.iter().zip(TENANTS) {
            assert_eq!(notes_simple(c).await, own(t), "simple, round {round}");
            assert_eq!(notes_extended(c).await, own(t), "extended, round {round}");
        }
        for ((c, t), st) in clients.iter().zip(TENANTS).zip(&prepared) {
            let body: String = c.query_one(st, &[]).await.expect("named").get(0);
            assert_eq!(vec![body], own(t), "named statement, round {round}");
        }
        // A transaction block, and a write that lands in the own schema.
        let c = &clients[round % 2];
        c.batch_execute("BEGIN; INSERT INTO notes (body) VALUES ('added'); ROLLBACK")
            .await
            .expect("transaction");
    }
}

/// Tenants' schemas need not have the same shape (a migration reaches
/// them one at a time): a statement text two tenants share must run
/// against each one's own table, with each one's own columns.
#[tokio::test]
async fn the_same_statement_text_serves_schemas_of_different_shapes() {
    let pg = cluster().await;
    let admin = pg.cluster.admin("tenant_shared").await.expect("admin");
    admin
        .batch_execute("ALTER TABLE tenant_b.notes ADD COLUMN extra text NOT NULL DEFAULT 'b only'")
        .await
        .expect("migrate b");
    let proxy = TestProxy::start(&config(&pg, "transaction", 1, "")).await;
    let a = proxy.connect("a").await;
    let b = proxy.connect("b").await;
    for round in 0..5 {
        for (c, t, columns) in [(&a, "a", 3), (&b, "b", 3 + 1)] {
            let rows = c
                .query("SELECT * FROM notes", &[])
                .await
                .unwrap_or_else(|e| panic!("{t}, round {round}: {:?}", e.as_db_error()));
            assert_eq!(rows.len(), 1, "{t}");
            assert_eq!(rows[0].len(), columns - 1, "{t}: its own columns");
            let st = c.prepare("SELECT * FROM notes").await.expect("prepare");
            assert_eq!(st.columns().len(), columns - 1, "{t}: described");
            let rows = c.query(&st, &[]).await.expect("named");
            assert_eq!(rows[0].get::<_, String>("body"), format!("note of {t}"));
        }
    }
}

#[tokio::test]
async fn tenants_sharing_one_connection_each_see_their_own_schema_in_session_mode() {
    let pg = cluster().await;
    let proxy = TestProxy::start(&config(&pg, "session", 1, "")).await;
    // One connection: sessions take turns on it.
    let mut pids = Vec::new();
    for round in 0..10 {
        for t in TENANTS {
            let c = proxy.connect(t).await;
            for _ in 0..3 {
                assert_eq!(notes_simple(&c).await, own(t), "simple, round {round}");
                assert_eq!(notes_extended(&c).await, own(t), "extended, round {round}");
            }
            pids.push(first(&c, "SELECT pg_backend_pid()::text").await);
            drop(c);
        }
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "one server connection: {pids:?}");
}

/// What a client sets is its own: another tenant on the same connection
/// keeps its schema, and RESET (of one setting or all) and DISCARD ALL
/// bring the client back to its tenant's schema, not the server default.
async fn own_choices_and_reset(mode: &str) {
    let pg = cluster().await;
    let proxy = TestProxy::start(&config(&pg, mode, 1, "")).await;
    let a = proxy.connect("a").await;
    let mut resets = vec![
        "RESET search_path",
        "RESET ALL",
        "DISCARD ALL",
        "BEGIN; SET search_path = public; RESET search_path; COMMIT",
    ];
    if mode == "transaction" {
        // Read back at the end of the transaction (in session mode only
        // RESET and DISCARD ALL are: see the README).
        resets.push("SET search_path TO DEFAULT");
    }
    for reset in resets {
        a.batch_execute("SET search_path = public")
            .await
            .expect("set");
        assert_eq!(notes_simple(&a).await, public(), "{mode}: a's own choice");
        assert_eq!(notes_extended(&a).await, public(), "{mode}: a's own choice");
        if mode == "transaction" {
            // b shares the server connection and keeps its schema.
            let b = proxy.connect("b").await;
            assert_eq!(notes_simple(&b).await, own("b"), "{mode}: b after a's SET");
            assert_eq!(show(&b, "search_path").await, "\"tenant_b\"");
            drop(b);
            assert_eq!(notes_simple(&a).await, public(), "{mode}: a keeps it");
        }
        a.batch_execute(reset).await.expect("reset");
        assert_eq!(notes_simple(&a).await, own("a"), "{mode}: after {reset}");
        assert_eq!(notes_extended(&a).await, own("a"), "{mode}: after {reset}");
        assert_eq!(
            show(&a, "search_path").await,
            "\"tenant_a\"",
            "{mode}: {reset}"
        );
    }
}

#[tokio::test]
async fn own_search_path_then_reset_in_transaction_mode() {
    own_choices_and_reset("transaction").await;
}

#[tokio::test]
async fn own_search_path_then_reset_in_session_mode() {
    own_choices_and_reset("session").await;
}

#[tokio::test]
async fn reset_brings_a_pinned_client_back_to_its_schema() {
    let pg = cluster().await;
    let proxy = TestProxy::start(&config(&pg, "transaction", 2, "")).await;
    let a = proxy.connect("a").await;
    // A temporary table pins a to its server connection: no new lease
    // re-applies its settings between its transactions.
    a.batch_execute("CREATE TEMPORARY TABLE pin (x int)")
        .await
        .expect("pin");
    a.batch_execute("SET search_path = public")
        .await
        .expect("set");
    assert_eq!(notes_simple(&a).await, public());
    a.batch_execute("RESET ALL").await.expect("reset");
    assert_eq!(notes_simple(&a).await, own("a"));
    a.batch_execute("SET search_path = public")
        .await
        .expect("set");
    a.batch_execute("RESET search_path").await.expect("reset");
    assert_eq!(notes_extended(&a).await, own("a"));
}

#[tokio::test]
async fn startup_search_path_is_honoured_and_reset_returns_to_it() {
    let pg = cluster().await;
    let proxy = TestProxy::start(&config(&pg, "transaction", 1, "")).await;
    let b = proxy.connect("b").await;
    let conn_str = |options: &str| {
        format!(
            "{} options='{options}'",
            proxy.conn_str("app.a", "a-secret", "tenant_shared")
        )
    };
    let a = proxy
        .try_connect(&conn_str("-c search_path=public"))
        .await
        .expect("connect with options");
    assert_eq!(show(&a, "search_path").await, "public");
    for _ in 0..5 {
        assert_eq!(notes_simple(&a).await, public());
        assert_eq!(notes_extended(&b).await, own("b"));
    }
    // RESET returns to what the client started with, as in PostgreSQL.
    a.batch_execute("SET search_path = tenant_b; RESET search_path")
        .await
        .expect("reset");
    assert_eq!(notes_simple(&a).await, public());
    // A plain startup parameter counts the same.
    let (a2, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.port)
        .user("app.a")
        .dbname("tenant_shared")
        .options("-c search_path=tenant_b,public")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    assert_eq!(show(&a2, "search_path").await, "tenant_b,public");
}

/// A namespace, not a boundary: the shared role reads every tenant's
/// schema with qualified names. The README says so; this keeps it honest.
#[tokio::test]
async fn the_shared_role_reaches_other_schemas_by_qualified_name() {
    let pg = cluster().await;
    let proxy = TestProxy::start(&config(&pg, "transaction", 1, "")).await;
    let a = proxy.connect("a").await;
    assert_eq!(
        first(&a, "SELECT body FROM tenant_b.notes").await,
        "note of b"
    );
    assert_eq!(
        first(&a, "SET search_path = tenant_b; SELECT body FROM notes").await,
        "note of b"
    );
}

/// The boundary the README shows: one placement and one backend role per
/// tenant, each role with USAGE on its own schema only.
#[tokio::test]
async fn a_role_per_tenant_makes_the_schema_a_boundary() {
    let pg = cluster().await;
    let admin = pg.cluster.admin("tenant_shared").await.expect("admin");
    let mut cfg =
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nauth_type = \"trust\"\n\n".to_string();
    for t in ["a", "b"] {
        admin
            .batch_execute(&format!(
                "CREATE ROLE pgt_schema_{t} LOGIN PASSWORD 'pw-{t}';
                 GRANT CONNECT, TEMPORARY ON DATABASE tenant_shared TO pgt_schema_{t};
                 GRANT USAGE ON SCHEMA tenant_{t} TO pgt_schema_{t};
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tenant_{t} TO pgt_schema_{t};"
            ))
            .await
            .expect("tenant role");
        cfg.push_str(&format!(
            "[placements.schema_{t}]\nurl = \"{}\"\nisolation = \"schema\"\npool_size = 2\n\n\
             [tenants.{t}]\nplacement = \"schema_{t}\"\nusers = {{ app = \"{t}-secret\" }}\n\n",
            pg.cluster.url(
                &format!("pgt_schema_{t}"),
                &format!("pw-{t}"),
                "tenant_shared"
            )
        ));
    }
    let proxy = TestProxy::start(&cfg).await;
    let a = proxy.connect("a").await;
    assert_eq!(notes_simple(&a).await, own("a"));
    // PostgreSQL skips a schema without USAGE on the path: "no such
    // table" rather than "permission denied".
    for (attack, code) in [
        ("SELECT body FROM tenant_b.notes", "42501"),
        (
            "SET search_path = tenant_b; SELECT body FROM notes",
            "42P01",
        ),
        ("RESET ROLE; SELECT body FROM tenant_b.notes", "42501"),
        ("SET ROLE pgt_schema_b", "42501"),
    ] {
        let err = a.batch_execute(attack).await.expect_err(attack);
        assert_eq!(sqlstate(&err), code, "{attack}: {err}");
    }
    // public's notes belong to the database's own role.
    let err = a
        .batch_execute("SELECT body FROM public.notes")
        .await
        .expect_err("public");
    assert_eq!(sqlstate(&err), "42501", "{err}");
}

#[tokio::test]
async fn search_path_template_and_tenant_schema_override() {
    let pg = cluster().await;
    let extra = "search_path = \"{schema}, public\"";
    let mut cfg = config(&pg, "transaction", 1, extra);
    // c-eu's own `schema` key overrides the pattern.
    cfg = cfg.replace(
        "[tenants.c-eu]\nplacement = \"schemas\"\n",
        "[tenants.c-eu]\nplacement = \"schemas\"\nschema = \"tenant_x\"\n",
    );
    let admin = pg.cluster.admin("tenant_shared").await.expect("admin");
    admin
        .batch_execute(
            "CREATE SCHEMA tenant_x; GRANT USAGE ON SCHEMA tenant_x TO pgt_shared;
             CREATE TABLE tenant_x.only_x (v text); INSERT INTO tenant_x.only_x VALUES ('x');
             GRANT SELECT ON tenant_x.only_x TO pgt_shared;
             CREATE TABLE public.reference (v text); INSERT INTO public.reference VALUES ('shared ref');
             GRANT SELECT ON public.reference TO pgt_shared;",
        )
        .await
        .expect("schemas");
    let proxy = TestProxy::start(&cfg).await;
    let a = proxy.connect("a").await;
    let c = proxy.connect("c-eu").await;
    assert_eq!(show(&a, "search_path").await, "\"tenant_a\", public");
    assert_eq!(show(&c, "search_path").await, "\"tenant_x\", public");
    // The tenant's own table first, then shared reference tables.
    assert_eq!(notes_simple(&a).await, own("a"));
    assert_eq!(first(&a, "SELECT v FROM reference").await, "shared ref");
    assert_eq!(first(&c, "SELECT v FROM only_x").await, "x");
    assert_eq!(first(&c, "SELECT v FROM reference").await, "shared ref");
    // c's schema has no notes: public's are next on its path.
    assert_eq!(notes_simple(&c).await, public());
    let err = a
        .batch_execute("SELECT v FROM only_x")
        .await
        .expect_err("not on a's path");
    assert_eq!(sqlstate(&err), "42P01", "{err}");
}

/// Statements that run after a RESET in the same query string (or the
/// same transaction block) run before the proxy can put the tenant's path
/// back: they get the role's default. With the role's default path empty,
/// as the README advises, they find no table rather than another schema's.
#[tokio::test]
async fn an_empty_role_default_makes_the_reset_gap_fail_closed() {
    let pg = cluster().await;
    let admin = pg.cluster.admin("tenant_shared").await.expect("admin");
    admin
        .batch_execute("ALTER ROLE pgt_shared IN DATABASE tenant_shared SET search_path = ''")
        .await
        .expect("role default");
    for mode in ["transaction", "session"] {
        let proxy = TestProxy::start(&config(&pg, mode, 1, "")).await;
        let a = proxy.connect("a").await;
        assert_eq!(notes_simple(&a).await, own("a"), "{mode}");
        for gap in [
            "RESET search_path; SELECT body FROM notes",
            "BEGIN; RESET ALL; SELECT body FROM notes; COMMIT",
        ] {
            let err = a.batch_execute(gap).await.expect_err(gap);
            assert_eq!(sqlstate(&err), "42P01", "{mode}: {gap}: {err}");
            a.batch_execute("ROLLBACK").await.expect("rollback");
            // The next statement has the tenant's path again.
            assert_eq!(notes_simple(&a).await, own("a"), "{mode}: after {gap}");
        }
    }
}

/// A statement a tenant's client prepared and described is known to the
/// proxy: another client of the same tenant prepares it without a server
/// connection (here all of them are taken), while another tenant's client,
/// whose same text names another table, is not given that description.
#[tokio::test]
async fn kept_descriptions_serve_their_own_tenant_only() {
    let pg = cluster().await;
    let admin = pg.cluster.admin("tenant_shared").await.expect("admin");
    admin
        .batch_execute("ALTER TABLE tenant_b.notes ADD COLUMN extra text")
        .await
        .expect("migrate b");
    let mut cfg = config(&pg, "transaction", 1, "");
    cfg = cfg.replace("[proxy]\n", "[proxy]\nquery_wait_timeout = \"3s\"\n");
    let proxy = TestProxy::start(&cfg).await;
    let sql = "SELECT * FROM notes";
    let a1 = proxy.connect("a").await;
    assert_eq!(
        a1.prepare(sql).await.expect("a1 prepares").columns().len(),
        2
    );
    let a2 = proxy.connect("a").await;
    let b = proxy.connect("b").await;
    // The one server connection is taken by an open transaction.
    let holder = proxy.connect("c-eu").await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let a2_prepared = tokio::time::timeout(std::time::Duration::from_secs(30), a2.prepare(sql))
        .await
        .expect("answered without a server connection")
        .expect("a2 prepares");
    assert_eq!(a2_prepared.columns().len(), 2);
    let err = b.prepare(sql).await.expect_err("b needs the server");
    assert_eq!(sqlstate(&err), "57014", "{err}");
    holder.batch_execute("COMMIT").await.expect("commit");
    // A wait timeout ends the client's connection.
    let b = proxy.connect("b").await;
    let b_prepared = b.prepare(sql).await.expect("b prepares");
    assert_eq!(b_prepared.columns().len(), 3, "b's own columns");
    let row = b.query_one(&b_prepared, &[]).await.expect("b runs it");
    assert_eq!(row.get::<_, String>("body"), "note of b");
    let row = a2.query_one(&a2_prepared, &[]).await.expect("a2 runs it");
    assert_eq!(row.get::<_, String>("body"), "note of a");
}
