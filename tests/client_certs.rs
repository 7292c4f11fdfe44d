//! Client-certificate login (issue 20, point 6): `[tls] client_ca`, and
//! users who log in by a certificate naming them (`{ cert = "..." }`),
//! alone or with their password. What an attacker tries: no
//! certificate, another tenant's certificate for a user of the same
//! name, a certificate of another CA, one not made for client
//! authentication, a revoked one, a right password without the
//! certificate, the certificate with a wrong password, plaintext. Real
//! client: psql (libpq `sslcert`/`sslkey`).

mod common;

use common::live::LiveProxy;
use common::tls::{Issued, TestCa, psql};
use common::{TestPg, sqlstate};
use pgtenant::pgcluster::HostAuth;
use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};

struct Fixture {
    pg: TestPg,
    ca: TestCa,
    server: Issued,
    dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let pg = TestPg::start(HostAuth::Trust, &["acme", "globex"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path());
    let server = ca.issue("server", &["*.db.example.com"]);
    Fixture {
        pg,
        ca,
        server,
        dir,
    }
}

const WHO: &str = "SELECT current_database()";

impl Fixture {
    /// acme and globex, each with a user `batch` who logs in by
    /// certificate alone (`batch@<tenant>`); acme also has `svc` (by a
    /// SPIFFE URI) and `both` (certificate and password). `tls_extra`
    /// goes into `[tls]`.
    fn config(&self, tls_extra: &str) -> String {
        let mut text = self
            .pg
            .config(&["acme", "globex"], 2, "sni_suffix = \"db.example.com\"");
        for t in ["acme", "globex"] {
            text = text.replace(
                &format!("users = {{ app = \"{t}-secret\" }}"),
                &format!(
                    "users = {{ app = \"{t}-secret\", batch = {{ cert = \"batch@{t}\" }}, \
                     svc = {{ cert = \"spiffe://pgtenant.test/{t}/svc\" }}, \
                     both = {{ password = \"{t}-both\", cert = \"both@{t}\" }} }}"
                ),
            );
        }
        format!(
            "{text}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{tls_extra}\n",
            self.server.cert.display(),
            self.server.key.display(),
            self.ca.pem_path.display(),
        )
    }

    /// libpq keywords for `user` of `tenant` (named by server name),
    /// verifying the proxy, presenting `cert` (None: no certificate).
    fn conninfo(&self, tenant: &str, user: &str, cert: Option<&Issued>, password: &str) -> String {
        let none = self.dir.path().join("none");
        let (c, k) = match cert {
            Some(i) => (i.cert.clone(), i.key.clone()),
            // A path that does not exist: libpq then sends none (not
            // ~/.postgresql/postgresql.crt).
            None => (none.clone(), none),
        };
        let password = if password.is_empty() {
            String::new()
        } else {
            format!("password={password}")
        };
        format!(
            "host={tenant}.db.example.com hostaddr=127.0.0.1 user={user} {password} dbname=app \
             sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            self.ca.pem_path.display(),
            c.display(),
            k.display()
        )
    }

    /// psql as `user` of `tenant` (`conninfo`) on the proxy at `port`:
    /// the database the login reached, or psql's error.
    async fn who(
        &self,
        port: u16,
        tenant: &str,
        user: &str,
        cert: Option<&Issued>,
        password: &str,
    ) -> Result<String, String> {
        psql(port, self.conninfo(tenant, user, cert, password), WHO).await
    }
}

#[tokio::test]
async fn a_certificate_names_one_user_of_one_tenant() {
    let f = fixture().await;
    let proxy = LiveProxy::start(&f.config("")).await;
    let acme_batch =
        f.ca.issue_client("acme-batch", "batch@acme", &[], ClientAuth, 10);
    let globex_batch =
        f.ca.issue_client("globex-batch", "batch@globex", &[], ClientAuth, 11);
    let acme_svc = f.ca.issue_client(
        "acme-svc",
        "anything",
        &["spiffe://pgtenant.test/acme/svc"],
        ClientAuth,
        12,
    );

    // The certificate alone logs its user in, no password asked.
    for (tenant, cert) in [("acme", &acme_batch), ("globex", &globex_batch)] {
        let db = f.who(proxy.port, tenant, "batch", Some(cert), "").await;
        assert_eq!(db.as_deref(), Ok(format!("tenant_{tenant}").as_str()));
    }
    // By a subjectAltName URI.
    let db = f.who(proxy.port, "acme", "svc", Some(&acme_svc), "").await;
    assert_eq!(db.as_deref(), Ok("tenant_acme"));

    // Another tenant's certificate for a user of the same name, both
    // ways: refused, as is a certificate naming another user.
    for (tenant, cert) in [("acme", &globex_batch), ("globex", &acme_batch)] {
        let e = f
            .who(proxy.port, tenant, "batch", Some(cert), "")
            .await
            .expect_err("another tenant's certificate");
        assert!(
            e.contains("authentication failed") || e.contains("no password"),
            "{e}"
        );
    }
    let e = f
        .who(proxy.port, "acme", "svc", Some(&acme_batch), "")
        .await
        .expect_err("another user's certificate");
    assert!(e.contains("no password"), "{e}");

    // No certificate: the login looks like a wrong password (a user who
    // does not exist looks the same), whatever password is given.
    for password in ["", "acme-secret", "guess"] {
        let e = f
            .who(proxy.port, "acme", "batch", None, password)
            .await
            .expect_err("no certificate");
        let unknown = f
            .who(proxy.port, "acme", "nobody", None, password)
            .await
            .expect_err("unknown user");
        assert_eq!(
            e.replace("batch", "USER"),
            unknown.replace("nobody", "USER"),
            "a missing certificate and an unknown user differ"
        );
    }

    // Plaintext: no certificate can come; refused with 28P01.
    let plain = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=batch.acme password=x dbname=acme sslmode=disable",
            proxy.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("plaintext certificate user");
    assert_eq!(sqlstate(&plain), "28P01", "{plain}");

    // Users with a password are untouched.
    let app = f.conninfo("acme", "app", None, "acme-secret");
    assert_eq!(
        psql(proxy.port, app, WHO).await.as_deref(),
        Ok("tenant_acme")
    );
}

#[tokio::test]
async fn certificate_and_password_each_required() {
    let f = fixture().await;
    let proxy = LiveProxy::start(&f.config("")).await;
    let both =
        f.ca.issue_client("acme-both", "both@acme", &[], ClientAuth, 20);
    let ok = f
        .who(proxy.port, "acme", "both", Some(&both), "acme-both")
        .await;
    assert_eq!(ok.as_deref(), Ok("tenant_acme"));
    let e = f
        .who(proxy.port, "acme", "both", None, "acme-both")
        .await
        .expect_err("password without the certificate");
    assert!(e.contains("password authentication failed"), "{e}");
    let e = f
        .who(proxy.port, "acme", "both", Some(&both), "wrong")
        .await
        .expect_err("certificate with a wrong password");
    assert!(e.contains("password authentication failed"), "{e}");
    let e = f
        .who(proxy.port, "acme", "both", Some(&both), "")
        .await
        .expect_err("certificate without a password");
    assert!(e.contains("no password"), "{e}");
}

/// Certificates the handshake itself refuses: another CA's (a
/// self-made one naming the user), one made for servers only, a revoked
/// one; a certificate of the same CA not revoked still logs in.
#[tokio::test]
async fn forged_wrong_purpose_and_revoked_certificates_fail_the_handshake() {
    let f = fixture().await;
    let revoked =
        f.ca.issue_client("revoked", "batch@acme", &[], ClientAuth, 30);
    let good = f.ca.issue_client("good", "batch@acme", &[], ClientAuth, 31);
    let server_only =
        f.ca.issue_client("server-only", "batch@acme", &[], ServerAuth, 32);
    let crl = f.ca.crl("clients", &[30]);
    let proxy = LiveProxy::start(&f.config(&format!("client_crl = [\"{}\"]", crl.display()))).await;

    let other_dir = tempfile::tempdir().expect("dir");
    let other_ca = TestCa::new(other_dir.path());
    let forged = other_ca.issue_client("forged", "batch@acme", &[], ClientAuth, 30);

    for (what, cert) in [
        ("another CA's", &forged),
        ("a server-only", &server_only),
        ("a revoked", &revoked),
    ] {
        let e = f
            .who(proxy.port, "acme", "batch", Some(cert), "")
            .await
            .expect_err(what);
        assert!(
            e.contains("SSL") || e.contains("alert") || e.contains("certificate"),
            "{what} certificate: {e}"
        );
        assert!(
            !e.contains("password"),
            "{what}: refused at the handshake: {e}"
        );
    }
    let db = f.who(proxy.port, "acme", "batch", Some(&good), "").await;
    assert_eq!(db.as_deref(), Ok("tenant_acme"));
}

/// A reload reads the revocation list again: a certificate revoked after
/// the proxy started fails the next handshake.
#[tokio::test]
async fn a_revocation_takes_effect_at_the_next_reload() {
    let f = fixture().await;
    let cert =
        f.ca.issue_client("later", "batch@acme", &[], ClientAuth, 40);
    let crl = f.ca.crl("reloaded", &[]);
    let config = f.config(&format!("client_crl = [\"{}\"]", crl.display()));
    let proxy = LiveProxy::start(&config).await;
    let db = f.who(proxy.port, "acme", "batch", Some(&cert), "").await;
    assert_eq!(db.as_deref(), Ok("tenant_acme"));

    let revoked = f.ca.crl("reloaded", &[40]);
    assert_eq!(revoked, crl, "the same file, rewritten");
    proxy.reload(&config).await.expect("reload");
    let e = f
        .who(proxy.port, "acme", "batch", Some(&cert), "")
        .await
        .expect_err("revoked since the reload");
    assert!(!e.contains("password"), "refused at the handshake: {e}");
}

/// A certificate user needs `[tls] client_ca`: without it the config is
/// refused, naming the user.
#[test]
fn a_certificate_user_without_client_ca_is_a_config_error() {
    let text = "[proxy]\ndefault_placement = \"p\"\n\
                [placements.p]\nurl = \"postgres://u@127.0.0.1/db\"\nisolation = \"database\"\n\
                [tenants.a]\nusers = { batch = { cert = \"batch@a\" } }\n";
    let e = pgtenant::config::parse_str(text, "t.toml").expect_err("no client_ca");
    assert_eq!(e.key, "tenants.a.users.batch", "{e}");
    assert!(e.to_string().contains("client_ca"), "{e}");
    // An admin console user likewise.
    let text = text.replace("{ batch = { cert = \"batch@a\" } }", "{ app = \"secret\" }")
        + "[admin]\nusers = { root = { cert = \"root@console\" } }\n";
    let e = pgtenant::config::parse_str(&text, "t.toml").expect_err("no client_ca");
    assert_eq!(e.key, "admin.users.root", "{e}");
    assert!(e.to_string().contains("client_ca"), "{e}");
}

/// Admin console users (`[admin] users`) log in by certificate as tenant
/// users do: alone, or with their password; without the certificate, or
/// with another user's, the login fails as a wrong password does.
#[tokio::test]
async fn admin_console_users_log_in_by_certificate_too() {
    let f = fixture().await;
    let config = format!(
        "{}\n[admin]\nusers = {{ root = {{ cert = \"root@console\" }}, \
         ops = {{ password = \"ops-secret\", cert = \"ops@console\" }} }}\n",
        f.config("")
    );
    let proxy = LiveProxy::start(&config).await;
    let root =
        f.ca.issue_client("root", "root@console", &[], ClientAuth, 30);
    let ops = f.ca.issue_client("ops", "ops@console", &[], ClientAuth, 31);
    // A tenant user's certificate, of the same CA.
    let batch =
        f.ca.issue_client("acme-batch", "batch@acme", &[], ClientAuth, 32);
    let console = |user: &str, cert: Option<&Issued>, password: &str| {
        f.conninfo("acme", user, cert, password)
            .replace("dbname=app", "dbname=pgtenant")
    };
    const VERSION: &str = "SHOW VERSION";
    let ok = psql(proxy.port, console("root", Some(&root), ""), VERSION).await;
    assert!(
        ok.as_deref().is_ok_and(|v| v.contains("pgtenant")),
        "{ok:?}"
    );
    let ok = psql(
        proxy.port,
        console("ops", Some(&ops), "ops-secret"),
        VERSION,
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    for (user, cert, password, why) in [
        ("root", None, "", "no certificate"),
        ("root", Some(&ops), "", "another admin's certificate"),
        ("root", Some(&batch), "", "a tenant user's certificate"),
        (
            "ops",
            None,
            "ops-secret",
            "the password without the certificate",
        ),
        (
            "ops",
            Some(&ops),
            "wrong",
            "the certificate with a wrong password",
        ),
        (
            "ops",
            Some(&root),
            "ops-secret",
            "the password with another's certificate",
        ),
    ] {
        let e = psql(proxy.port, console(user, cert, password), VERSION).await;
        assert!(e.is_err(), "{why}: {e:?}");
    }
}
