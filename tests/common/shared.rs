//! A shared (`isolation = "rls"`) database for tests: `app_shared`, with
//! `sql/pgtenant.sql` installed and keyed for placement `shared`, and a
//! `notes` table under forced row-level security with two rows per tenant.

use super::TestPg;
use pgtenant::credentials::secret::AuthSecret;
use pgtenant::pgcluster::HostAuth;
use std::path::PathBuf;

pub const SHARED_ROLE: &str = "pgt_shared";
pub const SHARED_PASSWORD: &str = "shared-backend-secret";

/// `notes` with forced RLS and two rows per tenant; the tenants' policy
/// applies `to` those roles (PUBLIC when empty); `extra` (policies,
/// grants) runs after it; `grantees` may read and write it.
pub fn notes_seed(tenants: &[&str], to: &str, extra: &str, grantees: &str) -> String {
    let rows: String = tenants
        .iter()
        .map(|t| {
            format!(
                "INSERT INTO notes (tenant_id, body) VALUES ('{t}', 'secret of {t}'), ('{t}', 'more of {t}');"
            )
        })
        .collect();
    let to = if to.is_empty() {
        String::new()
    } else {
        format!("TO {to}")
    };
    format!(
        "CREATE TABLE notes (id serial PRIMARY KEY,
             tenant_id text NOT NULL DEFAULT pgtenant.current_tenant(), body text NOT NULL);
         {rows}
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         ALTER TABLE notes FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant_rows ON notes {to}
             USING (tenant_id = pgtenant.current_tenant())
             WITH CHECK (tenant_id = pgtenant.current_tenant());
         {extra}
         GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {grantees};
         GRANT USAGE ON SEQUENCE notes_id_seq TO {grantees}"
    )
}

/// A cluster with `app_shared` built from `seed` (as its owner), and the
/// proxy's secret file whose key the database holds.
pub struct SharedDb {
    pub pg: TestPg,
    pub secret_file: PathBuf,
    pub dir: tempfile::TempDir,
    pub admin: tokio_postgres::Client,
}

/// `before` runs as superuser before the database is built.
pub async fn shared_database(before: &str, seed: &str) -> SharedDb {
    let pg = TestPg::start(HostAuth::ScramSha256, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("pgtenant.secret");
    let secret = AuthSecret::load_or_create(&secret_file).expect("secret");
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    if !before.is_empty() {
        admin.batch_execute(before).await.expect("before");
    }
    pgtenant::provision::shared_database(
        &pg.cluster,
        &admin,
        "app_shared",
        "app_owner",
        SHARED_ROLE,
        SHARED_PASSWORD,
        &secret.context_key("shared"),
        seed,
    )
    .await
    .expect("shared database");
    SharedDb {
        pg,
        secret_file,
        dir,
        admin,
    }
}

/// `[tenants.T]` tables for `tenants` on placement `shared`, each with user
/// `app` and password `T-secret`.
pub fn tenants_config(tenants: &[&str]) -> String {
    tenants
        .iter()
        .map(|t| {
            format!("[tenants.{t}]\nplacement = \"shared\"\nusers = {{ app = \"{t}-secret\" }}\n\n")
        })
        .collect()
}

/// Creates `public.subscribe(channel)` in `app_shared` (through `owner`, a
/// superuser connection): a function the shared role may call that
/// LISTENs, which the session-state probe cannot see into.
pub async fn create_subscribe(owner: &tokio_postgres::Client) {
    owner
        .batch_execute(&format!(
            "SET ROLE app_owner;
             CREATE FUNCTION public.subscribe(ch text) RETURNS void LANGUAGE plpgsql
                 AS $f$BEGIN EXECUTE 'LISTEN ' || quote_ident(ch); END$f$;
             GRANT EXECUTE ON FUNCTION public.subscribe(text) TO {SHARED_ROLE};
             RESET ROLE"
        ))
        .await
        .expect("function");
}

/// Runs `SELECT pg_sleep(1)` on `client`'s next lease while `owner` sends
/// `NOTIFY news, payload`; the messages up to its ReadyForQuery. With a
/// pool of one, that lease runs on the connection a `subscribe('news')`
/// before it left listening.
pub async fn notified_during_a_query(
    client: &mut tokio::net::TcpStream,
    owner: &tokio_postgres::Client,
    payload: &str,
) -> Vec<super::raw::Msg> {
    use super::raw;
    raw::send(client, &raw::query("SELECT pg_sleep(1)")).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    owner
        .batch_execute(&format!(
            "NOTIFY news, {}",
            postgres_protocol::escape::escape_literal(payload)
        ))
        .await
        .expect("notify");
    raw::read_to_ready(client, "after NOTIFY").await.0
}

/// The `body` of every `notes` row the client sees, sorted.
pub async fn bodies(client: &tokio_postgres::Client) -> Vec<String> {
    let mut out: Vec<String> = client
        .query("SELECT body FROM notes", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.sort();
    out
}

/// Tenant `t`'s two seeded `notes` bodies, sorted.
pub fn own(t: &str) -> Vec<String> {
    vec![format!("more of {t}"), format!("secret of {t}")]
}

/// What the attacking client sends: a write to every row it can reach.
pub const OVERWRITE: &str = "BEGIN READ WRITE; UPDATE notes SET body = 'pwned'; COMMIT";

/// Holds the lock `pgtenant.enter()`'s first step (its clearing `setval`)
/// waits for, in `admin`'s open transaction, until it rolls back: a
/// context call then stalls before it clears anything.
pub async fn lock_context_sequence(admin: &tokio_postgres::Client) {
    admin
        .batch_execute("BEGIN; ALTER SEQUENCE pgtenant.ctx_0 NO CYCLE")
        .await
        .expect("lock the context sequence");
}

/// The attack on a context call that fails before it could change the
/// context: `proxy`'s tenant `evil` writes to every row it can reach
/// right behind its lease's call, which waits for a lock at its first
/// step (`admin`, a superuser in `app_shared`, holds `pgtenant.ctx_0`)
/// until evil cancels it, or until evil's own statement_timeout ends it.
/// On a pool of one whose connection last held acme's context, the write
/// must not run: `acme` still reads its own rows.
pub async fn overwrite_behind_a_stalled_context_call(
    proxy: &super::TestProxy,
    admin: &tokio_postgres::Client,
    acme: &tokio_postgres::Client,
) {
    for how in ["cancel", "statement_timeout"] {
        let evil = proxy.connect("evil").await;
        if how == "statement_timeout" {
            evil.batch_execute("SET statement_timeout = 300")
                .await
                .expect("set");
        }
        let token = evil.cancel_token();
        // The pool's one connection now holds acme's context.
        assert_eq!(bodies(acme).await, own("acme"), "{how}");
        lock_context_sequence(admin).await;
        let attempt = tokio::spawn(async move { evil.batch_execute(OVERWRITE).await });
        if how == "cancel" {
            // Cancel only once the call is stuck in its first step.
            super::wait_for_lock_wait(admin, None).await;
            token
                .cancel_query(tokio_postgres::NoTls)
                .await
                .expect("cancel request");
        }
        let attempt = tokio::time::timeout(std::time::Duration::from_secs(10), attempt)
            .await
            .expect("the attempt ends")
            .expect("join");
        assert!(
            attempt.is_err(),
            "the lease fails closed ({how}): {attempt:?}"
        );
        admin.batch_execute("ROLLBACK").await.expect("unlock");
        assert_eq!(
            bodies(acme).await,
            own("acme"),
            "acme's rows after evil's attempt ({how})"
        );
    }
}
