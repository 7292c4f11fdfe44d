//! Tenant resolution and authentication through the real proxy and a real
//! PostgreSQL: every source, disagreement, unknown tenants, passwords.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;

#[tokio::test]
async fn tenants_are_resolved_and_isolated() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme", "globex"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme", "globex"], 4, "")).await;

    // user suffix
    let acme = proxy.connect("acme").await;
    let rows = acme
        .query("SELECT tenant_id, current_database() FROM notes", &[])
        .await
        .expect("query");
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r.get::<_, String>(0), "acme");
        assert_eq!(r.get::<_, String>(1), "tenant_acme");
    }
    // options, with the database naming nothing known
    let globex = proxy
        .try_connect(&format!(
            "{} options='tenant=globex'",
            proxy.conn_str("app", "globex-secret", "whatever")
        ))
        .await
        .expect("options");
    let t: String = globex
        .query_one("SELECT string_agg(DISTINCT tenant_id, ',') FROM notes", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(t, "globex");
    // database name alone
    let by_db = proxy
        .try_connect(&proxy.conn_str("app", "acme-secret", "acme"))
        .await
        .expect("database");
    let db: String = by_db
        .query_one("SELECT current_database()", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(db, "tenant_acme");
    // The tenant= token never reaches the backend.
    let opts: String = globex
        .query_one("SHOW application_name", &[])
        .await
        .expect("q")
        .get(0);
    assert!(!opts.contains("tenant="));
}

#[tokio::test]
async fn refusals_carry_the_contract_sqlstates() {
    let pg = TestPg::start(HostAuth::Md5, &["acme", "globex"]).await;
    let proxy = TestProxy::start(&pg.config(&["acme", "globex"], 2, "")).await;

    let cases = [
        // disagreement between user and options
        (
            format!(
                "{} options='tenant=globex'",
                proxy.conn_str("app.acme", "acme-secret", "x")
            ),
            "08004",
        ),
        // unknown tenant
        (proxy.conn_str("app.nope", "x", "x"), "3D000"),
        // no tenant at all
        (proxy.conn_str("app", "x", "app"), "3D000"),
        // wrong password and unknown user: same code
        (proxy.conn_str("app.acme", "wrong", "acme"), "28P01"),
        (
            proxy.conn_str("nobody.acme", "acme-secret", "acme"),
            "28P01",
        ),
    ];
    for (conn, code) in cases {
        let err = proxy
            .try_connect(&conn)
            .await
            .err()
            .unwrap_or_else(|| panic!("{conn} must fail"));
        assert_eq!(sqlstate(&err), code, "{conn}: {err}");
    }
    let wrong = proxy
        .try_connect(&proxy.conn_str("app.acme", "wrong", "acme"))
        .await
        .expect_err("fails");
    let unknown = proxy
        .try_connect(&proxy.conn_str("nobody.acme", "wrong", "acme"))
        .await
        .expect_err("fails");
    let msg = |e: &tokio_postgres::Error| {
        e.as_db_error()
            .map(|d| d.message().replace("nobody", "app"))
    };
    assert_eq!(
        msg(&wrong),
        msg(&unknown),
        "wrong password and unknown user look alike"
    );
    // Tenant routing by options only, with the user source switched off:
    let only_options =
        TestProxy::start(&pg.config(&["acme"], 2, "tenant_from = [\"options\"]")).await;
    let err = only_options
        .try_connect(&only_options.conn_str("app.acme", "acme-secret", "acme"))
        .await
        .expect_err("no tenant");
    assert_eq!(sqlstate(&err), "08004");
    assert!(
        err.as_db_error()
            .expect("db")
            .message()
            .contains("tried options"),
        "{err}"
    );
}
