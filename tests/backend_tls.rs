//! TLS to placements (issue 20, point 5): `sslmode` and `sslrootcert` in
//! the placement url, as libpq reads them, against a real PostgreSQL with
//! TLS on. The server's own view (`pg_stat_ssl`) says whether the proxy's
//! connection is encrypted; a certificate from another CA, a name that
//! does not match under verify-full, or a server that declines TLS where
//! it is required are refused (`08006`). The test cluster asks for
//! SCRAM and offers SCRAM-SHA-256-PLUS over TLS: the logins here are
//! bound to the server's certificate.

mod common;

use common::tls::TestCa;
use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;

/// `pg.config` with acme's placement url changed to reach the server by
/// `host` with `params`.
fn config(pg: &TestPg, host: &str, params: &str) -> String {
    let url = pg.url("tenant_acme");
    let changed = format!("{}{params}", url.replace("127.0.0.1", host));
    pg.config(&["acme"], 2, "server_connect_timeout = \"5s\"")
        .replace(&url, &changed)
}

async fn encrypted(proxy: &TestProxy) -> Result<bool, tokio_postgres::Error> {
    let client = proxy
        .try_connect(&proxy.conn_str("app.acme", "acme-secret", "acme"))
        .await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn placements_connect_over_tls_as_their_sslmode_says() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let server = ca.issue("server", &["localhost"]);
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).expect("read");
    pg.cluster
        .enable_tls(&pem(&server.cert), &pem(&server.key))
        .await
        .expect("TLS on");
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let other = TestCa::new(&other_dir);
    let ca_file = ca.pem_path.display().to_string();
    let other_file = other.pem_path.display().to_string();

    let cases: [(&str, String, Option<bool>); 6] = [
        // Verified chain and name.
        (
            "localhost",
            format!("?sslmode=verify-full&sslrootcert={ca_file}"),
            Some(true),
        ),
        // libpq's default: TLS when the server offers it.
        ("127.0.0.1", String::new(), Some(true)),
        // The chain only: the name (an IP here) is not checked.
        (
            "127.0.0.1",
            format!("?sslmode=verify-ca&sslrootcert={ca_file}"),
            Some(true),
        ),
        // The name does not match the certificate.
        (
            "127.0.0.1",
            format!("?sslmode=verify-full&sslrootcert={ca_file}"),
            None,
        ),
        // Another CA: refused even under verify-ca.
        (
            "localhost",
            format!("?sslmode=verify-ca&sslrootcert={other_file}"),
            None,
        ),
        // Plaintext by choice.
        ("127.0.0.1", "?sslmode=disable".to_string(), Some(false)),
    ];
    for (host, params, want) in cases {
        let proxy = TestProxy::start(&config(&pg, host, &params)).await;
        match (encrypted(&proxy).await, want) {
            (Ok(got), Some(want)) => assert_eq!(got, want, "{host}{params}"),
            (Err(e), None) => assert_eq!(sqlstate(&e), "08006", "{host}{params}: {e}"),
            (got, want) => panic!("{host}{params}: got {got:?}, wanted {want:?}"),
        }
        proxy.stop().await.expect("stop");
    }
}

/// A server that declines TLS (or an attacker answering `N` for it) is
/// refused where sslmode requires TLS, and used in plaintext where it
/// only prefers it.
#[tokio::test]
async fn a_server_that_declines_tls_is_refused_where_it_is_required() {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let proxy = TestProxy::start(&config(&pg, "127.0.0.1", "?sslmode=require")).await;
    let e = encrypted(&proxy).await.expect_err("no TLS to be had");
    assert_eq!(sqlstate(&e), "08006", "{e}");
    proxy.stop().await.expect("stop");

    let proxy = TestProxy::start(&config(&pg, "127.0.0.1", "?sslmode=prefer")).await;
    assert!(!encrypted(&proxy).await.expect("plaintext"));
    proxy.stop().await.expect("stop");
}
