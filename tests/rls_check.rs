//! The row-level security check of an `isolation = "rls"` placement
//! (src/pool/rls_check.rs), against a real PostgreSQL: a correctly set up
//! shared database passes; each way its login role could reach around the
//! policies is shown to work (where it is an attack one can perform) and
//! then to get the placement refused, with a message naming the fix; a
//! refused placement passes once fixed, without a restart.
//!
//! Tenants on rls placements are still refused with 0A000 before any
//! checkout (src/client/mod.rs), so these tests drive the pool itself
//! (`PlacementPool::checkout`, whose refusal clients see as 08006, see
//! tests/backend_roles.rs) and the check on a `ServerConn`.
//!
//! `pgtenant.current_tenant()` here is a stand-in with the shape of
//! sql/pgtenant.sql (schema owned by the application's owner role, a
//! SECURITY DEFINER function behind it, a key table the shared role cannot
//! read): the check looks at privileges and owners, not at how the
//! context is proved.

mod common;

use common::sqlstate;
use pgtenant::config::BackendTarget;
use pgtenant::pgcluster::{HostAuth, PgCluster};
use pgtenant::pool::rls_check::{self, RlsPolicy};
use pgtenant::pool::{
    CheckoutError, PlacementName, PlacementPool, PoolTenant, PoolTimeouts, RolePolicy, ServerConn,
    ServerError,
};
use pgtenant::runtime::block_on;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

const ROLE: &str = "pgt_shared";
const PASSWORD: &str = "shared-backend-secret";
const DB: &str = "app_shared";

/// The shared database as the README tells to set it up: the tables
/// belong to `app_owner` (the migrations role), the tenants' login role
/// `pgt_shared` may use them and nothing else.
const SETUP: &str = "
SET ROLE app_owner;
CREATE SCHEMA pgtenant;
REVOKE ALL ON SCHEMA pgtenant FROM PUBLIC;
CREATE TABLE pgtenant.context_key (id int PRIMARY KEY, ipad bytea);
REVOKE ALL ON pgtenant.context_key FROM PUBLIC;
CREATE UNLOGGED SEQUENCE pgtenant.context_s1;
REVOKE ALL ON SEQUENCE pgtenant.context_s1 FROM PUBLIC;
CREATE FUNCTION pgtenant.verified_tenant() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT pg_catalog.current_setting('pgtenant.context', true) $$;
CREATE FUNCTION pgtenant.current_tenant() RETURNS text LANGUAGE sql STABLE
    BEGIN ATOMIC SELECT (SELECT pgtenant.verified_tenant()); END;
GRANT USAGE ON SCHEMA pgtenant TO pgt_shared;

CREATE TABLE public.notes (
    id serial PRIMARY KEY,
    tenant_id text NOT NULL DEFAULT pgtenant.current_tenant(),
    body text NOT NULL);
ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON public.notes USING (tenant_id = pgtenant.current_tenant())
    WITH CHECK (tenant_id = pgtenant.current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON public.notes TO pgt_shared;
GRANT USAGE ON SEQUENCE public.notes_id_seq TO pgt_shared;

CREATE TABLE public.countries (code text PRIMARY KEY, name text NOT NULL);
GRANT SELECT ON public.countries TO pgt_shared;

-- Reads with the caller's rights: the policies of notes apply.
CREATE VIEW public.my_notes WITH (security_invoker = on) AS SELECT body FROM public.notes;
GRANT SELECT ON public.my_notes TO pgt_shared;
RESET ROLE;
-- Rows are written by a superuser (the operator identity), past the
-- policies that bind even the tables' owner.
INSERT INTO public.notes (tenant_id, body) VALUES ('a', 'secret of a'), ('b', 'note of b');
INSERT INTO public.countries VALUES ('fr', 'France');
";

struct Shared {
    pg: PgCluster,
    /// Superuser, connected to the shared database.
    admin: Client,
}

async fn shared_database() -> Shared {
    let pg = tokio::task::spawn_blocking(|| PgCluster::start(HostAuth::ScramSha256))
        .await
        .expect("join")
        .expect("start PostgreSQL");
    let postgres = pg.admin("postgres").await.expect("admin");
    // One statement each: CREATE DATABASE runs outside a transaction.
    for sql in [
        "CREATE ROLE app_owner NOLOGIN".to_string(),
        format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
        format!("CREATE DATABASE {DB} OWNER app_owner"),
        format!("REVOKE ALL ON DATABASE {DB} FROM PUBLIC"),
        format!("GRANT CONNECT, TEMPORARY ON DATABASE {DB} TO {ROLE}"),
    ] {
        postgres
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let admin = pg.admin(DB).await.expect("admin");
    admin.batch_execute(SETUP).await.expect("shared schema");
    Shared { pg, admin }
}

fn target(pg: &PgCluster) -> BackendTarget {
    BackendTarget::from_url(&pg.url(ROLE, PASSWORD, DB)).expect("url")
}

fn policy(shared_tables: &[&str]) -> RlsPolicy {
    RlsPolicy {
        shared_tables: shared_tables.iter().map(|s| s.to_string()).collect(),
        setting_store: false,
    }
}

fn listed() -> RlsPolicy {
    policy(&["public.countries"])
}

/// A pool of the rls placement, as `state.rs` builds it.
fn pool(pg: &PgCluster, rls: RlsPolicy, trusted: bool) -> Arc<PlacementPool> {
    PlacementPool::new(
        PlacementName("shared".into()),
        target(pg),
        2,
        1,
        PoolTimeouts {
            login_retry: Duration::from_millis(200),
            ..PoolTimeouts::default()
        },
        RolePolicy {
            trusted,
            other_placements: Vec::new(),
            rls: Some(rls),
            ..RolePolicy::default()
        },
        None,
        vec![PoolTenant {
            name: "t".into(),
            max_server_connections: 2,
        }],
    )
}

/// A checkout from `pool` (on a worker loop of its own): the refusal
/// message when the placement is refused for its role.
async fn checkout(pool: &Arc<PlacementPool>) -> Result<(), String> {
    let pool = Arc::clone(pool);
    tokio::task::spawn_blocking(move || {
        block_on(async {
            let seat = pool.seat("t").expect("seat");
            match pool.checkout(seat, Duration::from_secs(30)).await {
                Ok(lease) => {
                    drop(lease);
                    Ok(())
                }
                Err(CheckoutError::Connect(ServerError::UnsafeRole(m))) => Err(m),
                Err(e) => panic!("checkout failed for another reason: {e}"),
            }
        })
    })
    .await
    .expect("join")
}

/// The check alone on a fresh connection: its warnings, or the refusal,
/// and how long the query took.
async fn check(pg: &PgCluster, rls: RlsPolicy) -> (Result<Vec<String>, String>, Duration) {
    let target = target(pg);
    tokio::task::spawn_blocking(move || {
        block_on(async {
            let mut conn = ServerConn::connect(&target, Duration::from_secs(30), 0)
                .await
                .expect("connect as the shared role");
            let started = Instant::now();
            let out = rls_check::check(&mut conn, ROLE, &rls).await;
            let took = started.elapsed();
            match out {
                Ok(w) => (Ok(w), took),
                Err(ServerError::UnsafeRole(m)) => (Err(m), took),
                Err(e) => panic!("the check failed to run: {e}"),
            }
        })
    })
    .await
    .expect("join")
}

/// A direct connection as the shared role, with tenant `t`'s context
/// (the stand-in's), to perform the attacks the check prevents.
async fn as_tenant(pg: &PgCluster, t: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(&pg.client_url(ROLE, PASSWORD, DB), NoTls)
        .await
        .expect("connect as the shared role");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute(&format!("SET pgtenant.context = '{t}'"))
        .await
        .expect("context");
    client
}

async fn bodies(c: &Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// One way to break the setup: what a superuser does, what undoes it,
/// and what the refusal must say.
struct Case {
    name: &'static str,
    shared_tables: &'static [&'static str],
    sql: &'static str,
    undo: &'static str,
    says: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "superuser",
        shared_tables: &["public.countries"],
        sql: "ALTER ROLE pgt_shared SUPERUSER",
        undo: "ALTER ROLE pgt_shared NOSUPERUSER",
        says: "it is SUPERUSER (ALTER ROLE \"pgt_shared\" NOSUPERUSER)",
    },
    Case {
        name: "bypassrls",
        shared_tables: &["public.countries"],
        sql: "ALTER ROLE pgt_shared BYPASSRLS",
        undo: "ALTER ROLE pgt_shared NOBYPASSRLS",
        says: "it has BYPASSRLS (ALTER ROLE \"pgt_shared\" NOBYPASSRLS)",
    },
    Case {
        name: "replication",
        shared_tables: &["public.countries"],
        sql: "ALTER ROLE pgt_shared REPLICATION",
        undo: "ALTER ROLE pgt_shared NOREPLICATION",
        says: "it has REPLICATION",
    },
    Case {
        name: "predefined role",
        shared_tables: &["public.countries"],
        sql: "GRANT pg_read_all_data TO pgt_shared",
        undo: "REVOKE pg_read_all_data FROM pgt_shared",
        says: "predefined role \"pg_read_all_data\"",
    },
    Case {
        name: "member of the tables' owner",
        shared_tables: &["public.countries"],
        sql: "GRANT app_owner TO pgt_shared",
        undo: "REVOKE app_owner FROM pgt_shared",
        says: "it is a member of role \"app_owner\", which owns schema pgtenant",
    },
    Case {
        name: "member of pgtenant_owner",
        shared_tables: &["public.countries"],
        sql: "CREATE ROLE pgtenant_owner NOLOGIN; GRANT pgtenant_owner TO pgt_shared",
        undo: "DROP ROLE pgtenant_owner",
        says: "it is a member of role \"pgtenant_owner\"",
    },
    Case {
        name: "owns schema pgtenant",
        shared_tables: &["public.countries"],
        sql: "ALTER SCHEMA pgtenant OWNER TO pgt_shared",
        undo: "ALTER SCHEMA pgtenant OWNER TO app_owner;
               GRANT USAGE ON SCHEMA pgtenant TO pgt_shared",
        says: "it owns schema pgtenant",
    },
    Case {
        name: "owns the database",
        shared_tables: &["public.countries"],
        sql: "ALTER DATABASE app_shared OWNER TO pgt_shared",
        // The owner's grants go with it; pgt_shared's CONNECT is given back.
        undo: "ALTER DATABASE app_shared OWNER TO app_owner;
               GRANT CONNECT, TEMPORARY ON DATABASE app_shared TO pgt_shared",
        says: "it owns database app_shared",
    },
    Case {
        name: "owns a table",
        shared_tables: &["public.countries"],
        sql: "ALTER TABLE public.notes OWNER TO pgt_shared",
        // The grants the owner made go with the table; given back.
        undo: "ALTER TABLE public.notes OWNER TO app_owner;
               GRANT SELECT, INSERT, UPDATE, DELETE ON public.notes TO pgt_shared",
        says: "it owns table public.notes",
    },
    Case {
        name: "owns a function",
        shared_tables: &["public.countries"],
        sql: "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
              ALTER FUNCTION public.f() OWNER TO pgt_shared",
        undo: "DROP FUNCTION public.f()",
        says: "it owns function public.f()",
    },
    Case {
        name: "owns a schema",
        shared_tables: &["public.countries"],
        sql: "CREATE SCHEMA mine AUTHORIZATION pgt_shared",
        undo: "DROP SCHEMA mine",
        says: "it owns schema mine",
    },
    Case {
        name: "CREATE on public",
        shared_tables: &["public.countries"],
        sql: "GRANT CREATE ON SCHEMA public TO PUBLIC",
        undo: "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        says: "it may CREATE in schema public",
    },
    Case {
        name: "CREATE on the database",
        shared_tables: &["public.countries"],
        sql: "GRANT CREATE ON DATABASE app_shared TO pgt_shared",
        undo: "REVOKE CREATE ON DATABASE app_shared FROM pgt_shared",
        says: "REVOKE CREATE ON DATABASE app_shared FROM PUBLIC, \"pgt_shared\"",
    },
    Case {
        name: "RLS not forced",
        shared_tables: &["public.countries"],
        sql: "ALTER TABLE public.notes NO FORCE ROW LEVEL SECURITY",
        undo: "ALTER TABLE public.notes FORCE ROW LEVEL SECURITY",
        says: "it may SELECT, INSERT, UPDATE, DELETE public.notes, which does not have \
               row-level security enabled and forced",
    },
    Case {
        name: "RLS not enabled",
        shared_tables: &["public.countries"],
        sql: "ALTER TABLE public.notes DISABLE ROW LEVEL SECURITY",
        undo: "ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY",
        says: "public.notes, which does not have row-level security enabled and forced",
    },
    Case {
        name: "a table without RLS",
        shared_tables: &["public.countries"],
        sql: "CREATE TABLE public.plain (x int); GRANT SELECT ON public.plain TO pgt_shared",
        undo: "DROP TABLE public.plain",
        says: "it may SELECT public.plain",
    },
    Case {
        name: "a column of a table without RLS",
        shared_tables: &["public.countries"],
        sql: "CREATE TABLE public.plain (x int, y int); GRANT SELECT (x) ON public.plain TO pgt_shared",
        undo: "DROP TABLE public.plain",
        says: "it may SELECT public.plain",
    },
    Case {
        name: "a reference table not on the allow-list",
        shared_tables: &[],
        sql: "",
        undo: "",
        says: "it may SELECT public.countries",
    },
    Case {
        name: "a writable reference table",
        shared_tables: &["public.countries"],
        sql: "GRANT UPDATE (name) ON public.countries TO pgt_shared",
        undo: "REVOKE UPDATE (name) ON public.countries FROM pgt_shared",
        says: "it may UPDATE shared table public.countries",
    },
    Case {
        name: "a policy on a setting the client can set",
        shared_tables: &["public.countries"],
        sql: "ALTER POLICY tenant ON public.notes USING (tenant_id = current_setting('app.tenant_id'))",
        undo: "ALTER POLICY tenant ON public.notes USING (tenant_id = pgtenant.current_tenant())",
        says: "policy \"tenant\" on public.notes reads current_setting(), which any client may SET",
    },
    Case {
        name: "TRUNCATE",
        shared_tables: &["public.countries"],
        sql: "GRANT TRUNCATE ON public.notes TO pgt_shared",
        undo: "REVOKE TRUNCATE ON public.notes FROM pgt_shared",
        says: "it may TRUNCATE public.notes",
    },
    Case {
        name: "TRUNCATE on a reference table",
        shared_tables: &["public.countries"],
        sql: "GRANT TRUNCATE ON public.countries TO pgt_shared",
        undo: "REVOKE TRUNCATE ON public.countries FROM pgt_shared",
        says: "it may TRUNCATE public.countries",
    },
    Case {
        name: "a partition without forced RLS",
        shared_tables: &["public.countries"],
        sql: PARTITIONS,
        undo: "DROP TABLE public.events",
        says: "it may SELECT public.events_a, which does not have row-level security",
    },
    Case {
        name: "a foreign table",
        shared_tables: &["public.countries"],
        sql: "CREATE FOREIGN DATA WRAPPER stub; CREATE SERVER elsewhere FOREIGN DATA WRAPPER stub;
              CREATE FOREIGN TABLE public.remote (x int) SERVER elsewhere;
              GRANT SELECT ON public.remote TO pgt_shared",
        undo: "DROP FOREIGN DATA WRAPPER stub CASCADE",
        says: "it may SELECT foreign table public.remote, which row-level security cannot filter",
    },
    Case {
        name: "a materialized view",
        shared_tables: &["public.countries"],
        sql: "CREATE MATERIALIZED VIEW public.mv AS SELECT * FROM public.notes;
              GRANT SELECT ON public.mv TO pgt_shared",
        undo: "DROP MATERIALIZED VIEW public.mv",
        says: "it may read materialized view public.mv",
    },
    Case {
        name: "a view owned by a superuser",
        shared_tables: &["public.countries"],
        sql: "CREATE VIEW public.v_super AS SELECT * FROM public.notes;
              GRANT SELECT ON public.v_super TO pgt_shared",
        undo: "DROP VIEW public.v_super",
        says: "view public.v_super reads with the rights of \"postgres\", who bypasses",
    },
    Case {
        name: "a view over a view over a table without forced RLS",
        shared_tables: &["public.countries"],
        sql: "SET ROLE app_owner;
              CREATE TABLE public.private (tenant_id text, secret text);
              CREATE VIEW public.v_inner AS SELECT * FROM public.private;
              CREATE VIEW public.v_outer AS SELECT * FROM public.v_inner;
              GRANT SELECT ON public.v_outer TO pgt_shared; RESET ROLE",
        undo: "DROP TABLE public.private CASCADE",
        says: "view public.v_outer reads public.private, without row-level security",
    },
    Case {
        name: "setval on a shared sequence",
        shared_tables: &["public.countries"],
        sql: "GRANT UPDATE ON SEQUENCE public.notes_id_seq TO pgt_shared",
        undo: "REVOKE UPDATE ON SEQUENCE public.notes_id_seq FROM pgt_shared",
        says: "it may setval() sequence public.notes_id_seq",
    },
    Case {
        name: "a privilege on pgtenant's key table",
        shared_tables: &["public.countries"],
        sql: "GRANT SELECT (id) ON pgtenant.context_key TO pgt_shared",
        undo: "REVOKE SELECT (id) ON pgtenant.context_key FROM pgt_shared",
        says: "it has SELECT on pgtenant.context_key",
    },
    Case {
        name: "a privilege on pgtenant's sequence",
        shared_tables: &["public.countries"],
        sql: "GRANT USAGE ON SEQUENCE pgtenant.context_s1 TO pgt_shared",
        undo: "REVOKE USAGE ON SEQUENCE pgtenant.context_s1 FROM pgt_shared",
        says: "it has USAGE on pgtenant.context_s1",
    },
    Case {
        name: "pgtenant not installed",
        shared_tables: &["public.countries"],
        sql: "ALTER FUNCTION pgtenant.current_tenant() RENAME TO gone",
        undo: "ALTER FUNCTION pgtenant.gone() RENAME TO current_tenant",
        says: "pgtenant.current_tenant() does not exist in this database (install \
               sql/pgtenant.sql)",
    },
    Case {
        name: "pgtenant not usable",
        shared_tables: &["public.countries"],
        sql: "REVOKE USAGE ON SCHEMA pgtenant FROM pgt_shared",
        undo: "GRANT USAGE ON SCHEMA pgtenant TO pgt_shared",
        says: "it may not call pgtenant.current_tenant()",
    },
    Case {
        name: "lo_compat_privileges",
        shared_tables: &["public.countries"],
        sql: "ALTER DATABASE app_shared SET lo_compat_privileges = on",
        undo: "ALTER DATABASE app_shared RESET lo_compat_privileges",
        says: "lo_compat_privileges is not off",
    },
    Case {
        name: "owns a large object",
        shared_tables: &["public.countries"],
        sql: "SELECT pg_catalog.lo_create(4242); ALTER LARGE OBJECT 4242 OWNER TO pgt_shared",
        undo: "SELECT pg_catalog.lo_unlink(4242)",
        says: "it owns large object 4242",
    },
    Case {
        name: "a large object granted to PUBLIC",
        shared_tables: &["public.countries"],
        sql: "SELECT pg_catalog.lo_create(4343); GRANT SELECT ON LARGE OBJECT 4343 TO PUBLIC",
        undo: "SELECT pg_catalog.lo_unlink(4343)",
        says: "large object 4343 grants SELECT to PUBLIC",
    },
    Case {
        name: "pg_largeobject readable",
        shared_tables: &["public.countries"],
        sql: "GRANT SELECT ON pg_catalog.pg_largeobject TO pgt_shared",
        undo: "REVOKE SELECT ON pg_catalog.pg_largeobject FROM pgt_shared",
        says: "it may read pg_catalog.pg_largeobject",
    },
    Case {
        name: "a SECURITY DEFINER function of a superuser",
        shared_tables: &["public.countries"],
        sql: "CREATE FUNCTION public.all_notes() RETURNS bigint LANGUAGE sql SECURITY DEFINER
              AS 'SELECT count(*) FROM public.notes'",
        undo: "DROP FUNCTION public.all_notes()",
        says: "SECURITY DEFINER function public.all_notes(), which runs as \"postgres\"",
    },
];

/// A partitioned table with forced RLS whose partition has none.
const PARTITIONS: &str = "SET ROLE app_owner;
CREATE TABLE public.events (tenant_id text NOT NULL, body text) PARTITION BY LIST (tenant_id);
CREATE TABLE public.events_a PARTITION OF public.events FOR VALUES IN ('a');
ALTER TABLE public.events ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON public.events USING (tenant_id = pgtenant.current_tenant());
GRANT SELECT ON public.events, public.events_a TO pgt_shared;
RESET ROLE;
INSERT INTO public.events VALUES ('a', 'event of a')";

#[tokio::test]
async fn a_correct_shared_database_passes_and_each_broken_rule_refuses_it() {
    let s = shared_database().await;

    // The correct setup: tenant b sees its own rows only.
    let b = as_tenant(&s.pg, "b").await;
    assert_eq!(
        bodies(&b, "SELECT body FROM public.notes").await,
        ["note of b"]
    );
    assert_eq!(
        bodies(&b, "SELECT body FROM public.my_notes").await,
        ["note of b"]
    );
    checkout(&pool(&s.pg, listed(), false))
        .await
        .expect("a correct setup passes");
    let (warnings, _) = check(&s.pg, listed()).await;
    let warnings = warnings.expect("passes").join("\n");
    // What only a superuser can close is said, not refused.
    assert!(warnings.contains("pg_cancel_backend"), "{warnings}");
    assert!(warnings.contains("pg_stat_activity"), "{warnings}");
    assert!(warnings.contains("lo_create"), "{warnings}");
    assert!(warnings.contains("temporary tables"), "{warnings}");

    for case in CASES {
        if !case.sql.is_empty() {
            s.admin
                .batch_execute(case.sql)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        }
        let rls = policy(case.shared_tables);
        let refused = checkout(&pool(&s.pg, rls.clone(), false)).await;
        let message = refused.expect_err(case.name);
        assert!(
            message.contains(case.says),
            "{}: {:?} missing from:\n{message}",
            case.name,
            case.says
        );
        assert!(message.contains("\"pgt_shared\""), "{message}");
        // Never told to leave itself.
        assert!(!message.contains("REVOKE \"pgt_shared\" FROM"), "{message}");
        // Opting out accepts the role as it is.
        checkout(&pool(&s.pg, rls.clone(), true))
            .await
            .unwrap_or_else(|e| panic!("{}: trust_backend_role: {e}", case.name));
        if !case.undo.is_empty() {
            s.admin
                .batch_execute(case.undo)
                .await
                .unwrap_or_else(|e| panic!("{} (undo): {e}", case.name));
        }
        checkout(&pool(&s.pg, listed(), false))
            .await
            .unwrap_or_else(|e| panic!("{}: undone, it must pass: {e}", case.name));
        // Undone for real: the next case starts from the correct setup.
        let b = as_tenant(&s.pg, "b").await;
        assert_eq!(
            bodies(&b, "SELECT body FROM public.my_notes").await,
            ["note of b"],
            "{}",
            case.name
        );
    }
}

/// With `context_store = "setting"` a policy may read the tenant from
/// `backtrace_functions` itself, only in the form that makes "no tenant"
/// NULL; every other `current_setting()` stays refused, and a sequences
/// placement refuses that form too (nothing there sets the setting).
#[tokio::test]
async fn a_setting_store_allows_its_own_setting_in_policies() {
    let s = shared_database().await;
    let setting = RlsPolicy {
        setting_store: true,
        ..listed()
    };
    let direct = "ALTER POLICY tenant ON public.notes \
        USING (tenant_id = NULLIF(pg_catalog.current_setting('backtrace_functions'), '')) \
        WITH CHECK (tenant_id = NULLIF(pg_catalog.current_setting('backtrace_functions'), ''))";
    s.admin.batch_execute(direct).await.expect("direct policy");
    check(&s.pg, setting.clone())
        .await
        .0
        .expect("the setting's own form passes on a setting store");
    let refused = check(&s.pg, listed()).await.0.expect_err("sequences");
    assert!(refused.contains("reads current_setting()"), "{refused}");
    for other in [
        // '' would match rows whose tenant_id is ''.
        "USING (tenant_id = pg_catalog.current_setting('backtrace_functions'))",
        "USING (tenant_id = NULLIF(current_setting('app.tenant_id'), ''))",
        "USING (tenant_id = NULLIF(pg_catalog.current_setting('backtrace_functions'), '') \
         OR tenant_id = current_setting('app.tenant_id'))",
    ] {
        s.admin
            .batch_execute(&format!("ALTER POLICY tenant ON public.notes {other}"))
            .await
            .expect(other);
        let refused = check(&s.pg, setting.clone()).await.0.expect_err(other);
        assert!(
            refused.contains("reads current_setting()"),
            "{other}: {refused}"
        );
    }
}

/// On a setting store, a SECURITY DEFINER function the tenants may call,
/// whose owner may set the store's setting, is named in a warning: if it
/// sets a setting its caller names, a tenant can name another.
#[tokio::test]
async fn a_definer_that_may_write_the_setting_store_is_named() {
    let s = shared_database().await;
    s.admin
        .batch_execute(
            "GRANT SET ON PARAMETER backtrace_functions TO app_owner;
             SET ROLE app_owner;
             CREATE FUNCTION public.set_any(n text, v text) RETURNS text LANGUAGE sql
                 SECURITY DEFINER SET search_path = pg_catalog, pg_temp
                 RETURN pg_catalog.set_config(n, v, false);
             GRANT EXECUTE ON FUNCTION public.set_any(text, text) TO pgt_shared;
             RESET ROLE",
        )
        .await
        .expect("a setter");
    let setting = RlsPolicy {
        setting_store: true,
        ..listed()
    };
    let said = "may SET backtrace_functions";
    let warnings = check(&s.pg, setting)
        .await
        .0
        .expect("a warning, not a refusal");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("public.set_any(text,text)") && w.contains(said)),
        "{warnings:?}"
    );
    // On a sequences placement the setting is no tenant's.
    let warnings = check(&s.pg, listed()).await.0.expect("passes");
    assert!(!warnings.iter().any(|w| w.contains(said)), "{warnings:?}");
}

/// The channels the rules close are real: with its own context, tenant b
/// reads tenant a's rows through each of them.
#[tokio::test]
async fn what_row_level_security_does_not_filter() {
    let s = shared_database().await;
    s.admin.batch_execute(PARTITIONS).await.expect("partitions");
    s.admin
        .batch_execute(
            "CREATE MATERIALIZED VIEW public.mv AS SELECT body FROM public.notes;
             GRANT SELECT ON public.mv TO pgt_shared;
             CREATE VIEW public.v_super AS SELECT body FROM public.notes;
             GRANT SELECT ON public.v_super TO pgt_shared;
             CREATE TABLE public.victim (tenant_id text NOT NULL DEFAULT pgtenant.current_tenant());
             ALTER TABLE public.victim ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
             CREATE POLICY tenant ON public.victim USING (tenant_id = pgtenant.current_tenant());
             GRANT SELECT, INSERT, TRUNCATE ON public.victim TO pgt_shared;
             INSERT INTO public.victim VALUES ('a');",
        )
        .await
        .expect("set up the channels");
    let b = as_tenant(&s.pg, "b").await;
    assert!(
        bodies(&b, "SELECT body FROM public.events")
            .await
            .is_empty()
    );
    assert_eq!(
        bodies(&b, "SELECT body FROM public.events_a").await,
        ["event of a"],
        "a partition read directly has no policy"
    );
    assert!(
        bodies(&b, "SELECT body FROM public.mv")
            .await
            .contains(&"secret of a".to_string())
    );
    assert!(
        bodies(&b, "SELECT body FROM public.v_super")
            .await
            .contains(&"secret of a".to_string())
    );
    b.batch_execute("TRUNCATE public.victim")
        .await
        .expect("truncate");
    let left: i64 = s
        .admin
        .query_one("SELECT count(*) FROM public.victim", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "TRUNCATE removed tenant a's row");
}

/// A refused placement is asked again at the next connect attempt: fixing
/// the database needs no restart of the proxy.
#[tokio::test]
async fn a_refused_placement_passes_once_fixed() {
    let s = shared_database().await;
    s.admin
        .batch_execute("ALTER TABLE public.notes NO FORCE ROW LEVEL SECURITY")
        .await
        .expect("break");
    let pool = pool(&s.pg, listed(), false);
    let e = checkout(&pool).await.expect_err("refused");
    assert!(e.contains("FORCE ROW LEVEL SECURITY"), "{e}");
    s.admin
        .batch_execute("ALTER TABLE public.notes FORCE ROW LEVEL SECURITY")
        .await
        .expect("fix");
    // The pool backs off after a refusal (at most 200 ms here).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = Arc::clone(&pool);
        let outcome = tokio::task::spawn_blocking(move || {
            block_on(async {
                pool.checkout(pool.seat("t").expect("seat"), Duration::from_secs(30))
                    .await
                    .map(drop)
            })
        })
        .await
        .expect("join");
        match outcome {
            Ok(()) => break,
            Err(CheckoutError::Connect(ServerError::Backoff(_))) => {
                assert!(Instant::now() < deadline, "still backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("fixed, it must pass: {e}"),
        }
    }
}

/// The check's one query on a database with 1,000 tenant tables (and
/// their sequences): how long it takes is printed, the bound is generous.
#[tokio::test]
async fn the_check_on_a_thousand_tables() {
    let s = shared_database().await;
    s.admin
        .batch_execute(
            "SET ROLE app_owner;
             DO $$ BEGIN FOR i IN 1..1000 LOOP EXECUTE format(
               'CREATE TABLE public.t%s (id serial PRIMARY KEY, tenant_id text NOT NULL, body text);
                ALTER TABLE public.t%s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
                CREATE POLICY tenant ON public.t%s USING (tenant_id = pgtenant.current_tenant());
                GRANT SELECT, INSERT, UPDATE, DELETE ON public.t%s TO pgt_shared;
                GRANT USAGE ON SEQUENCE public.t%s_id_seq TO pgt_shared', i, i, i, i, i);
             END LOOP; END $$;
             RESET ROLE; ANALYZE;",
        )
        .await
        .expect("1,000 tables");
    let mut times = Vec::new();
    for _ in 0..5 {
        let (outcome, took) = check(&s.pg, listed()).await;
        outcome.expect("passes");
        times.push(took);
    }
    times.sort();
    println!(
        "rls check on 1,000 tables: median {:?}, all {times:?}",
        times[2]
    );
    assert!(times[2] < Duration::from_secs(20), "{times:?}");
    // One table without forced RLS among them is found.
    s.admin
        .batch_execute("ALTER TABLE public.t500 NO FORCE ROW LEVEL SECURITY")
        .await
        .expect("break one");
    let (outcome, _) = check(&s.pg, listed()).await;
    let e = outcome.expect_err("refused");
    assert!(e.contains("public.t500,"), "{e}");
}

/// What PostgreSQL 15 lets a non-superuser role change about itself: its
/// password and its own defaults, nothing else. The check warns about
/// defaults a tenant planted.
#[tokio::test]
async fn what_the_shared_role_can_change_about_itself() {
    let s = shared_database().await;
    let b = as_tenant(&s.pg, "b").await;
    // (statement, None: allowed, Some: the SQLSTATE refusing it)
    for (sql, refused) in [
        ("ALTER ROLE CURRENT_USER PASSWORD 'changed'", None),
        (
            "ALTER ROLE CURRENT_USER SET statement_timeout = '5min'",
            None,
        ),
        (
            "ALTER ROLE CURRENT_USER IN DATABASE app_shared SET work_mem = '64kB'",
            None,
        ),
        (
            "ALTER ROLE CURRENT_USER VALID UNTIL '2000-01-01'",
            Some("42501"),
        ),
        ("ALTER ROLE CURRENT_USER CONNECTION LIMIT 0", Some("42501")),
        ("ALTER ROLE CURRENT_USER NOLOGIN", Some("42501")),
        ("ALTER ROLE pgt_shared RENAME TO someone", Some("0A000")),
        (
            "ALTER ROLE CURRENT_USER SET log_statement = 'none'",
            Some("42501"),
        ),
        (
            "ALTER DATABASE app_shared SET work_mem = '64kB'",
            Some("42501"),
        ),
        (
            "ALTER DATABASE app_shared CONNECTION LIMIT 0",
            Some("42501"),
        ),
    ] {
        let outcome = b.batch_execute(sql).await;
        match (refused, outcome) {
            (None, Ok(())) => {}
            (Some(code), Err(e)) => assert_eq!(sqlstate(&e), code, "{sql}: {e}"),
            (None, Err(e)) => panic!("{sql}: {e}"),
            (Some(_), Ok(())) => panic!("{sql} must be refused"),
        }
    }
    s.admin
        .batch_execute(&format!(
            "ALTER ROLE {ROLE} PASSWORD '{PASSWORD}';
             ALTER ROLE {ROLE} IN DATABASE {DB} SET track_activities = off"
        ))
        .await
        .expect("reset the password; a default only a superuser can set");
    let (outcome, _) = check(&s.pg, listed()).await;
    let w = outcome.expect("settings are warnings").join("\n");
    assert!(
        w.contains("ALTER ROLE \"pgt_shared\" RESET statement_timeout"),
        "{w}"
    );
    assert!(
        w.contains("ALTER ROLE \"pgt_shared\" IN DATABASE app_shared RESET work_mem"),
        "{w}"
    );
    // No tenant can set or reset what only a superuser may.
    assert!(!w.contains("track_activities"), "{w}");
    let e = b
        .batch_execute("ALTER ROLE CURRENT_USER IN DATABASE app_shared RESET track_activities")
        .await
        .expect_err("superuser-only");
    assert_eq!(sqlstate(&e), "42501", "{e}");
}

/// A query of tenant a's kept running until its lock is released: it
/// waits for an advisory lock the superuser holds, so no timing decides
/// whether tenant b's attack lands while it runs.
struct Busy {
    task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    pid: i32,
}

impl Busy {
    async fn start(s: &Shared, locker: &Client, marker: &str) -> Busy {
        locker
            .batch_execute("SELECT pg_advisory_lock(42)")
            .await
            .expect("lock");
        let a = as_tenant(&s.pg, "a").await;
        let pid: i32 = a
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let sql = format!("SELECT '{marker}', pg_advisory_xact_lock(42)");
        let task = tokio::spawn(async move { a.simple_query(&sql).await.map(|_| ()) });
        common::wait_for_lock_wait(&s.admin, Some(pid)).await;
        Busy { task, pid }
    }

    async fn finish(self, locker: &Client) -> Result<(), tokio_postgres::Error> {
        locker
            .batch_execute("SELECT pg_advisory_unlock(42)")
            .await
            .expect("unlock");
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("a's query ends once the lock is free")
            .expect("join")
    }
}

/// What tenant b could do to tenant a through the shared role.
#[derive(Debug, Default, PartialEq)]
struct Reach {
    read_query_text: bool,
    cancelled: bool,
    terminated: bool,
    read_large_object: bool,
}

async fn reach(s: &Shared) -> Reach {
    let locker = s.pg.admin(DB).await.expect("locker");
    let b = as_tenant(&s.pg, "b").await;
    let mut r = Reach::default();

    let busy = Busy::start(s, &locker, "a-card-4242").await;
    for sql in [
        "SELECT coalesce(query, '') FROM pg_catalog.pg_stat_activity",
        "SELECT coalesce(pg_catalog.pg_stat_get_backend_activity(i), '') \
         FROM pg_catalog.pg_stat_get_backend_idset() i",
    ] {
        match b.query(sql, &[]).await {
            Ok(rows) => {
                r.read_query_text |= rows
                    .iter()
                    .any(|row| row.get::<_, String>(0).contains("a-card-4242"))
            }
            Err(e) => assert_eq!(sqlstate(&e), "42501", "{sql}: {e}"),
        }
    }
    busy.finish(&locker).await.expect("a's query");

    for (verb, hit) in [
        ("pg_cancel_backend", &mut r.cancelled),
        ("pg_terminate_backend", &mut r.terminated),
    ] {
        let busy = Busy::start(s, &locker, verb).await;
        let sent = b
            .query_one(&format!("SELECT pg_catalog.{verb}($1)"), &[&busy.pid])
            .await;
        if let Err(e) = &sent {
            assert_eq!(sqlstate(e), "42501", "{verb}: {e}");
        }
        *hit = busy.finish(&locker).await.is_err();
    }

    // A large object tenant a creates belongs to the shared role.
    let a = as_tenant(&s.pg, "a").await;
    match a
        .query_one(
            "SELECT pg_catalog.lo_from_bytea(0, 'a''s document')::int8",
            &[],
        )
        .await
    {
        Ok(row) => {
            let oid: i64 = row.get(0);
            let read = b
                .query_one(
                    "SELECT pg_catalog.convert_from(pg_catalog.lo_get($1::int8::oid), 'UTF8')",
                    &[&oid],
                )
                .await
                .expect("b reads a's large object");
            r.read_large_object = read.get::<_, String>(0) == "a's document";
            s.admin
                .query_one("SELECT pg_catalog.lo_unlink($1::int8::oid)", &[&oid])
                .await
                .expect("unlink");
        }
        Err(e) => assert_eq!(sqlstate(&e), "42501", "{e}"),
    }
    r
}

/// sql/pgtenant-superuser.sql closes what it says: before it, tenant b
/// reads tenant a's running SQL, cancels and terminates a's backend and
/// reads a's large object; after it, none of that, the check no longer
/// warns about it, and monitoring through pg_monitor still works.
#[tokio::test]
async fn the_superuser_script_closes_its_channels() {
    let s = shared_database().await;
    let before = reach(&s).await;
    assert_eq!(
        before,
        Reach {
            read_query_text: true,
            cancelled: true,
            terminated: true,
            read_large_object: true,
        }
    );
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sql/pgtenant-superuser.sql"
    ))
    .expect("sql/pgtenant-superuser.sql");
    s.admin
        .batch_execute(&script)
        .await
        .expect("the script runs");
    s.admin
        .batch_execute(&script)
        .await
        .expect("and runs again");
    let after = reach(&s).await;
    assert_eq!(after, Reach::default());

    let (outcome, _) = check(&s.pg, listed()).await;
    let w = outcome.expect("passes").join("\n");
    for gone in ["pg_cancel_backend", "pg_stat_activity", "lo_create"] {
        assert!(!w.contains(gone), "{gone} still warned: {w}");
    }

    // A monitoring role keeps the view.
    s.admin
        .batch_execute("CREATE ROLE monitor IN ROLE pg_monitor")
        .await
        .expect("monitor");
    let mon = s.pg.admin(DB).await.expect("admin");
    mon.batch_execute("SET ROLE monitor")
        .await
        .expect("set role");
    let rows = mon
        .query(
            "SELECT query FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_monitor reads pg_stat_activity");
    assert!(rows[0].get::<_, String>(0).contains("pg_stat_activity"));
}

/// Prepared transactions: a role may finish any prepared transaction of
/// its own role, so with max_prepared_transactions above 0 tenant b sees
/// and commits tenant a's. The check refuses the placement while it is above 0.
#[tokio::test]
async fn another_tenant_can_commit_a_prepared_transaction() {
    let Shared { pg, admin } = shared_database().await;
    admin
        .batch_execute("ALTER SYSTEM SET max_prepared_transactions = 4")
        .await
        .expect("alter system");
    drop(admin);
    let pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop().expect("stop");
        pg.start_again().expect("start");
        pg
    })
    .await
    .expect("join");
    let s = Shared {
        admin: pg.admin(DB).await.expect("admin"),
        pg,
    };
    let admin = &s.admin;
    let a = as_tenant(&s.pg, "a").await;
    a.batch_execute(
        "BEGIN; INSERT INTO public.notes (body) VALUES ('prepared by a'); \
         PREPARE TRANSACTION 'a-1'",
    )
    .await
    .expect("a prepares");
    let b = as_tenant(&s.pg, "b").await;
    assert_eq!(
        bodies(&b, "SELECT gid FROM pg_catalog.pg_prepared_xacts").await,
        ["a-1"]
    );
    b.batch_execute("COMMIT PREPARED 'a-1'")
        .await
        .expect("b commits a's prepared transaction");
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM public.notes WHERE body = 'prepared by a'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    let (outcome, _) = check(&s.pg, listed()).await;
    let refusal = outcome.expect_err("the placement is refused");
    assert!(
        refusal.contains("max_prepared_transactions is 4"),
        "{refusal}"
    );
}

/// LISTEN/NOTIFY ignores row-level security and roles: in one database,
/// a notification of tenant a reaches tenant b listening on the channel.
/// No privilege closes it; the proxy has to refuse LISTEN on rls
/// placements.
#[tokio::test]
async fn a_notification_reaches_every_tenant_listening() {
    use futures_util::StreamExt;
    let s = shared_database().await;
    let (b, mut conn) = tokio_postgres::connect(&s.pg.client_url(ROLE, PASSWORD, DB), NoTls)
        .await
        .expect("connect as b");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    b.batch_execute("SET pgtenant.context = 'b'; LISTEN orders")
        .await
        .expect("b listens");
    let a = as_tenant(&s.pg, "a").await;
    a.batch_execute("NOTIFY orders, 'order 17 of a: 4242 EUR'")
        .await
        .expect("a notifies");
    let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("b is notified")
        .expect("payload");
    assert_eq!(got, "order 17 of a: 4242 EUR");
}
