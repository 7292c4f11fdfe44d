//! Platform operator access (issue 18 point 6): an operator configured in
//! `[operators.*]` reaches an rls placement through the placement's
//! `operator_url` role and a pool of its own, sees every tenant's rows (or
//! one tenant's when it names one), is logged from start to end, and no
//! tenant credential ever becomes one. The tenants' role without a context
//! still sees nothing, and so does the operators' role without one (a
//! connection that went around the proxy and its log).

mod common;

use common::shared::{
    SHARED_PASSWORD, SHARED_ROLE, SharedDb, bodies, notes_seed, shared_database, tenants_config,
};
use common::tls::{Issued, TestCa, psql};
use common::{TestPg, TestProxy, sqlstate};
use rcgen::ExtendedKeyUsagePurpose::ClientAuth;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const OPERATOR_ROLE: &str = "pgt_operator";
const OPERATOR_PASSWORD: &str = "operator-backend-secret";
/// The operator's own password at the proxy.
const OPS_PASSWORD: &str = "ops-secret";

// ------------------------------------------------------------------ logs

/// Everything the proxy logged in this test binary (all tests share one
/// global subscriber; each looks for its own lines).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .try_init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend(b);
        // Also shown with --nocapture.
        std::io::stderr().write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines holding every one of `needles`.
fn lines_with(needles: &[&str]) -> Vec<String> {
    let text =
        String::from_utf8_lossy(&logs().lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Waits (generously) for a log line holding every one of `needles`.
async fn wait_for_line(needles: &[&str]) -> String {
    for _ in 0..200 {
        if let Some(l) = lines_with(needles).into_iter().next() {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line with {needles:?}");
}

// ----------------------------------------------------------------- setup

/// `notes` with forced RLS, two rows per tenant, the tenants' policy, and
/// the operators' role with the one policy the README gives it: every row
/// in the all-tenants context `*`, one tenant's rows in that tenant's,
/// none without a context.
fn seed(tenants: &[&str]) -> String {
    notes_seed(
        tenants,
        SHARED_ROLE,
        &format!(
            "CREATE POLICY operator_rows ON notes TO {OPERATOR_ROLE}
                 USING ((SELECT pgtenant.current_tenant()) IN ('*', tenant_id))
                 WITH CHECK ((SELECT pgtenant.current_tenant()) IN ('*', tenant_id) AND tenant_id <> '*');"
        ),
        &format!("{SHARED_ROLE}, {OPERATOR_ROLE}"),
    )
}

struct Shared {
    pg: TestPg,
    proxy: TestProxy,
    _dir: tempfile::TempDir,
}

/// The shared database `app_shared` (keyed for placement `shared`) with
/// tenants `tenants`, the operators' role, and the proxy with operator
/// `ops` allowed on `shared`. `before_proxy` runs as superuser first.
async fn shared(tenants: &[&str], before_proxy: &str) -> Shared {
    shared_with(tenants, before_proxy, "", "").await
}

/// [`shared`], with `op_extra` lines in `[operators.ops]` and `tail`
/// appended to the config.
async fn shared_with(tenants: &[&str], before_proxy: &str, op_extra: &str, tail: &str) -> Shared {
    logs();
    let SharedDb {
        pg,
        secret_file,
        dir,
        admin,
    } = shared_database(
        &format!(
            "CREATE ROLE {OPERATOR_ROLE} LOGIN PASSWORD '{OPERATOR_PASSWORD}' NOSUPERUSER NOBYPASSRLS"
        ),
        &seed(tenants),
    )
    .await;
    admin
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE app_shared TO {OPERATOR_ROLE}; {before_proxy}"
        ))
        .await
        .expect("grants");
    pg.cluster
        .admin("app_shared")
        .await
        .expect("admin")
        .batch_execute(&format!("GRANT USAGE ON SCHEMA public TO {OPERATOR_ROLE}"))
        .await
        .expect("schema grant");
    let mut config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nsecret_file = \"{}\"\n\
         server_login_retry = \"200ms\"\n\n\
         [placements.shared]\nurl = \"{}\"\nisolation = \"rls\"\npool_size = 2\n\
         operator_url = \"{}\"\n\n\
         [operators.ops]\npassword = \"{OPS_PASSWORD}\"\nplacements = [\"shared\"]\n{op_extra}\n\n",
        secret_file.display(),
        pg.cluster.url(SHARED_ROLE, SHARED_PASSWORD, "app_shared"),
        pg.cluster
            .url(OPERATOR_ROLE, OPERATOR_PASSWORD, "app_shared"),
    );
    config.push_str(&tenants_config(tenants));
    config.push_str(tail);
    let proxy = TestProxy::start(&config).await;
    Shared {
        pg,
        proxy,
        _dir: dir,
    }
}

impl Shared {
    /// A connection string for `user`/`password` with startup `options`.
    fn with_options(&self, user: &str, password: &str, options: &str) -> String {
        format!(
            "{} options='{options}'",
            self.proxy.conn_str(user, password, "app_shared")
        )
    }

    /// Operator `ops`, with `options` after `operator=shared`.
    async fn operator(&self, more: &str) -> tokio_postgres::Client {
        let conn = self.with_options("ops", OPS_PASSWORD, &format!("operator=shared {more}"));
        self.proxy
            .try_connect(&conn)
            .await
            .unwrap_or_else(|e| panic!("operator connect ({more}): {e}: {:?}", e.as_db_error()))
    }

    async fn direct(&self, role: &str, password: &str) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(
            &self.pg.cluster.url(role, password, "app_shared"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("direct connection");
        tokio::spawn(conn);
        c
    }
}

fn own(tenants: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = tenants
        .iter()
        .flat_map(|t| [format!("more of {t}"), format!("secret of {t}")])
        .collect();
    v.sort();
    v
}

async fn one_text(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    c.query_one(sql, &[]).await.expect(sql).get(0)
}

// ----------------------------------------------------------------- tests

#[tokio::test]
async fn an_operator_sees_every_tenant_or_the_one_it_names() {
    let tenants = ["acme", "globex"];
    let s = shared(&tenants, "").await;
    let all = s.operator("").await;
    let acme_only = s.operator("tenant=acme").await;
    let tenant = s.proxy.connect("globex").await;
    for round in 0..3 {
        assert_eq!(bodies(&all).await, own(&tenants), "round {round}");
        assert_eq!(bodies(&acme_only).await, own(&["acme"]), "round {round}");
        assert_eq!(bodies(&tenant).await, own(&["globex"]), "round {round}");
    }
    // Its own role and pool, never the tenants'.
    assert_eq!(
        one_text(&all, "SELECT current_user::text").await.as_deref(),
        Some(OPERATOR_ROLE)
    );
    assert_eq!(
        one_text(&tenant, "SELECT current_user::text")
            .await
            .as_deref(),
        Some(SHARED_ROLE)
    );
    assert_eq!(
        one_text(&all, "SELECT pgtenant.current_tenant()")
            .await
            .as_deref(),
        Some("*")
    );
    // Writes: a named tenant's context fills the tenant in; all-tenants
    // writes must name one (and never '*').
    let t = one_text(
        &acme_only,
        "INSERT INTO notes (body) VALUES ('by ops') RETURNING tenant_id",
    )
    .await;
    assert_eq!(t.as_deref(), Some("acme"));
    let e = acme_only
        .execute(
            "INSERT INTO notes (tenant_id, body) VALUES ('globex', 'x')",
            &[],
        )
        .await
        .expect_err("another tenant's row");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    let e = all
        .execute("INSERT INTO notes (body) VALUES ('nobody''s')", &[])
        .await
        .expect_err("a row for no tenant");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    all.execute("DELETE FROM notes WHERE body = 'by ops'", &[])
        .await
        .expect("delete");
    // A connection that named a tenant cannot widen itself: the context
    // comes from the key only the proxy holds.
    acme_only
        .batch_execute("SET pgtenant.tenant = '*'; SET app.tenant_id = '*'")
        .await
        .expect("set");
    assert_eq!(bodies(&acme_only).await, own(&["acme"]));
    acme_only.batch_execute("RESET ALL").await.expect("reset");
    assert_eq!(bodies(&acme_only).await, own(&["acme"]));
    // A tenant that is not on the placement, once authenticated: 3D000.
    let e = s
        .proxy
        .try_connect(&s.with_options("ops", OPS_PASSWORD, "operator=shared tenant=nope"))
        .await
        .expect_err("no such tenant");
    assert_eq!(sqlstate(&e), "3D000", "{e}");

    // Logged with who, from where, which placement and tenant; the end too.
    let connected = wait_for_line(&[
        "operator connected",
        "operator=ops",
        "placement=shared",
        "tenant=\"all tenants\"",
        "client=127.0.0.1:",
    ])
    .await;
    assert!(connected.contains("WARN"), "{connected}");
    wait_for_line(&["operator connected", "operator=ops", "tenant=\"acme\""]).await;
    drop(all);
    wait_for_line(&[
        "operator disconnected",
        "operator=ops",
        "tenant=\"all tenants\"",
        "seconds=",
    ])
    .await;
}

#[tokio::test]
async fn no_tenant_credential_makes_an_operator_and_failures_look_alike() {
    let s = shared(&["acme"], "").await;
    let refused = |conn: String| {
        let proxy = &s.proxy;
        async move {
            let e = proxy.try_connect(&conn).await.expect_err(&conn);
            let db = e.as_db_error().map(|d| d.message().to_owned());
            (sqlstate(&e), db.unwrap_or_default())
        }
    };
    // A tenant user asking for operator access with its own password.
    for user in ["app", "app.acme"] {
        let (code, _) = refused(s.with_options(user, "acme-secret", "operator=shared")).await;
        assert_eq!(code, "28P01", "{user}");
    }
    // The operator's name and password as a tenant user.
    for (user, options) in [("ops.acme", ""), ("ops", "tenant=acme")] {
        let (code, _) = refused(s.with_options(user, OPS_PASSWORD, options)).await;
        assert_eq!(code, "28P01", "{user} {options}");
    }
    let c = s.proxy.conn_str("ops", OPS_PASSWORD, "acme");
    assert_eq!(refused(c).await.0, "28P01", "database names the tenant");
    // Wrong password, unknown operator, placement not in the list (or
    // none at all): one SQLSTATE, and for one name one message.
    let wrong = refused(s.with_options("ops", "guess", "operator=shared")).await;
    let unlisted = refused(s.with_options("ops", OPS_PASSWORD, "operator=elsewhere")).await;
    let unknown = refused(s.with_options("nobody", OPS_PASSWORD, "operator=shared")).await;
    assert_eq!(wrong.0, "28P01");
    assert_eq!(wrong, unlisted);
    assert_eq!(unknown.0, "28P01");
    assert_eq!(unknown.1, wrong.1.replace("\"ops\"", "\"nobody\""));
    // The log tells the platform which it was.
    for why in [
        "wrong password",
        "placement not in its list",
        "no such operator",
    ] {
        wait_for_line(&["operator login failed", why]).await;
    }
    // The operator itself still gets in.
    assert_eq!(bodies(&s.operator("").await).await, own(&["acme"]));
}

/// An operator with `cert` needs its client certificate as well as its
/// password: without it, or with another identity's, the login fails as
/// a wrong password does, and the log says why.
#[tokio::test]
async fn an_operator_with_a_certificate_identity_needs_both() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new(dir.path());
    let server = ca.issue("server", &["proxy.test"]);
    let ops = ca.issue_client("ops", "ops@platform", &[], ClientAuth, 1);
    let other = ca.issue_client("other", "app@acme", &[], ClientAuth, 2);
    let tail = format!(
        "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
        server.cert.display(),
        server.key.display(),
        ca.pem_path.display()
    );
    let s = shared_with(&["acme"], "", "cert = \"ops@platform\"", &tail).await;
    let none = dir.path().join("none");
    let login = |cert: Option<&Issued>, password: &str| {
        let (c, k) = match cert {
            Some(i) => (i.cert.clone(), i.key.clone()),
            None => (none.clone(), none.clone()),
        };
        format!(
            "host=127.0.0.1 user=ops password={password} dbname=app_shared \
             options=operator=shared sslmode=require sslcert={} sslkey={}",
            c.display(),
            k.display()
        )
    };
    let rows = psql(
        s.proxy.port,
        login(Some(&ops), OPS_PASSWORD),
        "SELECT count(*) FROM notes",
    )
    .await;
    assert_eq!(rows.as_deref(), Ok("2"), "password and certificate");
    let wrong = psql(s.proxy.port, login(Some(&ops), "guess"), "SELECT 1")
        .await
        .expect_err("certificate, wrong password");
    for (cert, what) in [(None, "no certificate"), (Some(&other), "another identity")] {
        let e = psql(s.proxy.port, login(cert, OPS_PASSWORD), "SELECT 1")
            .await
            .expect_err(what);
        assert_eq!(e, wrong, "{what} fails as a wrong password");
    }
    wait_for_line(&[
        "operator login failed",
        "no client certificate naming the operator",
    ])
    .await;
}

/// Neither role sees a row without the context only the proxy can set:
/// the tenants' role (contract section 4) and the operators' role (a
/// connection around the proxy is no audited operator).
#[tokio::test]
async fn without_a_context_neither_role_sees_a_row() {
    let s = shared(&["acme", "globex"], "").await;
    // The proxy's operator pool is in use meanwhile.
    assert_eq!(
        bodies(&s.operator("").await).await,
        own(&["acme", "globex"])
    );
    for (role, password) in [
        (SHARED_ROLE, SHARED_PASSWORD),
        (OPERATOR_ROLE, OPERATOR_PASSWORD),
    ] {
        let direct = s.direct(role, password).await;
        assert!(bodies(&direct).await.is_empty(), "{role}");
        direct
            .batch_execute("SET pgtenant.tenant = '*'")
            .await
            .expect("set");
        let seen = direct
            .query("SELECT body FROM notes", &[])
            .await
            .map_or(0, |r| r.len());
        assert_eq!(seen, 0, "{role}: a setting alone gives no context");
        let e = direct
            .execute(
                "INSERT INTO notes (tenant_id, body) VALUES ('acme', 'x')",
                &[],
            )
            .await
            .expect_err("no writes");
        assert!(
            ["42501", "55000"].contains(&sqlstate(&e).as_str()),
            "{role}: {e}"
        );
    }
}

/// An operators' role that bypasses row-level security is refused for
/// operators (it would see everything whatever it named), and a tenants'
/// role that can become the operators' role is refused for tenants; both
/// with the fix in the log, both served once fixed. An operators' role
/// that can read the context key is served with a warning.
#[tokio::test]
async fn roles_that_reach_around_the_operator_policies_are_refused() {
    let s = shared(
        &["acme"],
        &format!(
            "ALTER ROLE {OPERATOR_ROLE} BYPASSRLS; GRANT {OPERATOR_ROLE} TO {SHARED_ROLE};
             GRANT app_owner TO {OPERATOR_ROLE}"
        ),
    )
    .await;
    let e = s
        .proxy
        .try_connect(&s.with_options("ops", OPS_PASSWORD, "operator=shared"))
        .await
        .expect_err("bypassrls operator role");
    assert_eq!(sqlstate(&e), "08006", "{e}");
    wait_for_line(&[
        "not bound by row-level security",
        "ALTER ROLE \"pgt_operator\" NOBYPASSRLS",
    ])
    .await;
    let admin = s.pg.cluster.admin("postgres").await.expect("admin");
    admin
        .batch_execute(&format!("ALTER ROLE {OPERATOR_ROLE} NOBYPASSRLS"))
        .await
        .expect("fix the operators' role");
    // A plain operators' role still must not be the tenants' to become.
    let e = s
        .proxy
        .try_connect(&s.proxy.conn_str("app.acme", "acme-secret", "acme"))
        .await
        .expect_err("tenants' role in the operators' role");
    assert_eq!(sqlstate(&e), "08006", "{e}");
    wait_for_line(&[
        "operator role of placement \"shared\"",
        "REVOKE \"pgt_operator\" FROM \"pgt_shared\"",
    ])
    .await;
    admin
        .batch_execute(&format!("REVOKE {OPERATOR_ROLE} FROM {SHARED_ROLE}"))
        .await
        .expect("fix the tenants' role");
    let mut served = None;
    for _ in 0..100 {
        let op = s
            .proxy
            .try_connect(&s.with_options("ops", OPS_PASSWORD, "operator=shared tenant=acme"))
            .await;
        let tenant = s
            .proxy
            .try_connect(&s.proxy.conn_str("app.acme", "acme-secret", "acme"))
            .await;
        if let (Ok(op), Ok(tenant)) = (op, tenant) {
            served = Some((op, tenant));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (op, tenant) = served.expect("served once the roles are fixed");
    assert_eq!(bodies(&op).await, own(&["acme"]));
    assert_eq!(bodies(&tenant).await, own(&["acme"]));
    // A migrations-capable operators' role (member of the owner of schema
    // pgtenant) is served, with a warning: it can read the context key.
    wait_for_line(&["\"pgt_operator\"", "can read pgtenant.context_key"]).await;
}
