//! Moving a tenant from the shared placement to a dedicated database
//! while its application keeps running, the way the README's "Moving a
//! tenant to a dedicated database" tells an operator to: PostgreSQL's
//! logical replication (a publication filtered to the tenant's rows)
//! copies and follows the rows; pgtenant holds the tenant's transactions
//! for the cut-over (`PAUSE`), switches its placement (`RELOAD`) and lets
//! them go (`RESUME`). The tenant's client stays connected and sees no
//! error; no write is lost, and none lands on the old side after the
//! switch; the other tenants of the shared placement are not held.

mod common;

use common::live::LiveProxy;
use common::raw;
use common::shared::{
    SHARED_PASSWORD, SHARED_ROLE, SharedDb, create_subscribe, notified_during_a_query,
    shared_database,
};
use common::{backend_password, backend_user};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const ADMIN_PASSWORD: &str = "admin-secret";

/// The shared `notes`: forced row-level security, and a primary key that
/// starts with `tenant_id`, as the README's schema rules ask (a row
/// filter on `tenant_id` then covers updates and deletes too).
fn shared_seed() -> String {
    format!(
        "CREATE TABLE notes (id bigserial,
             tenant_id text NOT NULL DEFAULT pgtenant.current_tenant(),
             body text NOT NULL, PRIMARY KEY (tenant_id, id));
         INSERT INTO notes (tenant_id, body) VALUES
             ('acme', 'secret of acme'), ('acme', 'more of acme'),
             ('globex', 'secret of globex'), ('globex', 'more of globex');
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         ALTER TABLE notes FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant_rows ON notes
             USING (tenant_id = pgtenant.current_tenant())
             WITH CHECK (tenant_id = pgtenant.current_tenant());
         GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO {SHARED_ROLE};
         GRANT USAGE ON SEQUENCE notes_id_seq TO {SHARED_ROLE}"
    )
}

/// The dedicated database's schema, as the application's migrations make
/// it, with `pgtenant.current_tenant()` a constant so that the same
/// defaults and queries work unchanged.
const DEDICATED_SCHEMA: &str = "
    CREATE SCHEMA pgtenant AUTHORIZATION pgt_acme;
    CREATE FUNCTION pgtenant.current_tenant() RETURNS text
        LANGUAGE sql IMMUTABLE RETURN 'acme';
    CREATE TABLE notes (id bigserial,
        tenant_id text NOT NULL DEFAULT pgtenant.current_tenant(),
        body text NOT NULL, PRIMARY KEY (tenant_id, id));
    ALTER TABLE notes OWNER TO pgt_acme;";

fn config(db: &SharedDb, acme_placement: &str) -> String {
    config_with(db, acme_placement, "", 4)
}

/// `config` with `proxy_extra` in `[proxy]` and the shared pool's size.
fn config_with(db: &SharedDb, acme_placement: &str, proxy_extra: &str, shared_pool: u32) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nsecret_file = \"{}\"\n\
         pause_timeout = \"2m\"\n{proxy_extra}\n\n\
         [placements.shared]\nurl = \"{}\"\nisolation = \"rls\"\npool_size = {shared_pool}\n\n\
         [placements.acme_db]\nurl = \"{}\"\nisolation = \"database\"\npool_size = 2\n\n\
         [tenants.acme]\nplacement = \"{acme_placement}\"\nusers = {{ app = \"acme-secret\" }}\n\n\
         [tenants.globex]\nplacement = \"shared\"\nusers = {{ app = \"globex-secret\" }}\n\n\
         [admin]\nusers = {{ admin = \"{ADMIN_PASSWORD}\" }}\n",
        db.secret_file.display(),
        db.pg
            .cluster
            .url(SHARED_ROLE, SHARED_PASSWORD, "app_shared"),
        db.pg.cluster.url(
            &backend_user("acme"),
            &backend_password("acme"),
            "tenant_acme"
        ),
    )
}

/// `tenant_acme`, acme's dedicated database, with `DEDICATED_SCHEMA` (made
/// through `admin`, a superuser connection); a superuser connection to it.
async fn dedicated_acme(db: &SharedDb, admin: &Client) -> Client {
    pgtenant::provision::dedicated_database(
        &db.pg.cluster,
        admin,
        "tenant_acme",
        &backend_user("acme"),
        &backend_password("acme"),
        "",
    )
    .await
    .expect("dedicated database");
    let dedicated_su = db.pg.cluster.admin("tenant_acme").await.expect("admin");
    dedicated_su
        .batch_execute(DEDICATED_SCHEMA)
        .await
        .expect("dedicated schema");
    dedicated_su
}

async fn ids(c: &Client, sql: &str) -> BTreeSet<i64> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The `body` of every `notes` row the client sees, sorted.
async fn bodies(c: &Client) -> Vec<String> {
    c.query("SELECT body FROM notes ORDER BY body", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Polls `sql` (one boolean) until it says true.
async fn wait_until(c: &Client, sql: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: bool = c
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0);
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_tenant_moves_to_a_dedicated_database_while_its_client_keeps_writing() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut db = shared_database("", &shared_seed()).await;
    // Logical replication needs wal_level = logical, set at start.
    db.admin
        .batch_execute("ALTER SYSTEM SET wal_level = logical")
        .await
        .expect("wal_level");
    db.pg.cluster.stop().expect("stop PostgreSQL");
    db.pg.cluster.start_again().expect("start PostgreSQL");
    let admin = db.pg.cluster.admin("postgres").await.expect("admin");
    let dedicated_su = dedicated_acme(&db, &admin).await;
    let shared_su = db.pg.cluster.admin("app_shared").await.expect("admin");

    let proxy = LiveProxy::start(&config(&db, "shared")).await;
    let ops = proxy.console(ADMIN_PASSWORD).await;
    let globex = proxy.connect("globex").await;

    // The application: acme's client writes without a pause, through
    // the whole move, on one connection.
    let acme = proxy.connect("acme").await;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let writer = tokio::spawn({
        let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
        async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let row = acme
                    .query_one(
                        "INSERT INTO notes (body) VALUES ($1) RETURNING id",
                        &[&format!("written {i}")],
                    )
                    .await
                    .map_err(|e| format!("write {i}: {e}: {:?}", e.as_db_error()))?;
                written.lock().expect("ids").push(row.get(0));
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, String>(acme)
        }
    });
    let written_now = || written.lock().expect("ids").len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(written_now() > 0, "the writer runs");

    // 1. Copy and follow acme's rows (the README's commands). The slot is
    // made apart: a subscription in the same cluster cannot make it.
    // (One statement per call: each its own transaction.)
    for sql in [
        "CREATE PUBLICATION move_acme FOR TABLE notes WHERE (tenant_id = 'acme')",
        "SELECT pg_create_logical_replication_slot('move_acme', 'pgoutput')",
    ] {
        shared_su.batch_execute(sql).await.expect(sql);
    }
    let publisher = db.pg.cluster.client_url("postgres", "", "app_shared");
    dedicated_su
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION move_acme CONNECTION '{publisher}' PUBLICATION move_acme
                 WITH (create_slot = false, slot_name = 'move_acme')"
        ))
        .await
        .expect("subscription");
    wait_until(
        &dedicated_su,
        "SELECT count(*) = 0 FROM pg_subscription_rel WHERE srsubstate <> 'r'",
        "the initial copy",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 2. Hold acme's transactions: PAUSE returns once its running one is
    // over, and from then on nothing of acme's reaches the old database.
    ops.simple_query("PAUSE acme").await.expect("pause");
    // The writer may not have counted the reply of the transaction PAUSE
    // waited for yet: let it, before taking the count the pause holds.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held_at = written_now();
    // Everything written so far reaches the new database.
    let lsn: String = shared_su
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    wait_until(
        &shared_su,
        &format!(
            "SELECT confirmed_flush_lsn >= '{lsn}'::pg_lsn FROM pg_replication_slots
             WHERE slot_name = 'move_acme'"
        ),
        "the subscriber to catch up",
    )
    .await;
    // Sequences are not replicated: the new side continues after the
    // highest id it holds.
    dedicated_su
        .batch_execute("SELECT setval('notes_id_seq', (SELECT max(id) FROM notes))")
        .await
        .expect("setval");
    // The other tenants of the shared placement are not held.
    assert_eq!(
        globex
            .query_one("SELECT count(*) FROM notes", &[])
            .await
            .expect("globex reads while acme is paused")
            .get::<_, i64>(0),
        2
    );
    assert_eq!(written_now(), held_at, "acme wrote while paused");

    // 3. Switch acme's placement and let its transactions go.
    std::fs::write(&proxy.path, config(&db, "acme_db")).expect("write config");
    ops.simple_query("RELOAD").await.expect("reload");
    // The pause outlives the reload: nothing runs until RESUME.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(written_now(), held_at, "acme wrote before RESUME");
    ops.simple_query("RESUME acme").await.expect("resume");
    let resumed = Instant::now();
    while written_now() < held_at + 20 && !writer.is_finished() {
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "the writer did not resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acme = writer
        .await
        .expect("writer task")
        .unwrap_or_else(|e| panic!("the application saw an error: {e}"));

    // 4. Stop following (the README's order for a slot in the same cluster).
    for sql in [
        "ALTER SUBSCRIPTION move_acme DISABLE",
        "ALTER SUBSCRIPTION move_acme SET (slot_name = NONE)",
        "DROP SUBSCRIPTION move_acme",
    ] {
        dedicated_su.batch_execute(sql).await.expect(sql);
    }
    wait_until(
        &shared_su,
        "SELECT NOT active FROM pg_replication_slots WHERE slot_name = 'move_acme'",
        "the walsender to leave",
    )
    .await;
    for sql in [
        "SELECT pg_drop_replication_slot('move_acme')",
        "DROP PUBLICATION move_acme",
    ] {
        shared_su.batch_execute(sql).await.expect(sql);
    }

    // Every id the application was given is on the new side, with the
    // two rows acme had before; the ones written after the switch are
    // on the new side only.
    let written: BTreeSet<i64> = written.lock().expect("ids").iter().copied().collect();
    let old_side = ids(&shared_su, "SELECT id FROM notes WHERE tenant_id = 'acme'").await;
    let new_side = ids(
        &dedicated_su,
        "SELECT id FROM notes WHERE tenant_id = 'acme'",
    )
    .await;
    assert!(written.is_subset(&new_side), "writes lost in the move");
    assert!(old_side.is_subset(&new_side), "rows left behind");
    assert_eq!(new_side.len(), written.len() + 2);
    let after_switch: Vec<i64> = new_side.difference(&old_side).copied().collect();
    assert!(
        after_switch.len() >= 20,
        "{} writes after the switch",
        after_switch.len()
    );
    assert!(
        after_switch.iter().all(|id| written.contains(id)),
        "{after_switch:?}"
    );
    // The application's connection now reaches the new database and sees
    // all of acme's rows there.
    let here: String = acme
        .query_one("SELECT current_database()", &[])
        .await
        .expect("acme after the move")
        .get(0);
    assert_eq!(here, "tenant_acme");
    let count: i64 = acme
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count as usize, new_side.len());
    // The operator then removes acme's rows from the shared database;
    // globex's stay, and it still sees only them.
    shared_su
        .batch_execute("DELETE FROM notes WHERE tenant_id = 'acme'")
        .await
        .expect("clean up the old side");
    assert_eq!(
        bodies(&globex).await,
        ["more of globex", "secret of globex"]
    );
}

/// The way back: a tenant moved onto the shared placement by a reload
/// runs its next transaction there with its own tenant context, on the
/// same client connection, and sees its rows and no other tenant's.
#[tokio::test]
async fn a_tenant_moved_onto_the_shared_placement_gets_its_context_at_its_next_transaction() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let db = shared_database("", &shared_seed()).await;
    dedicated_acme(&db, &db.admin)
        .await
        .batch_execute("INSERT INTO notes (body) VALUES ('kept in acme_db')")
        .await
        .expect("a row of acme's");
    let proxy = LiveProxy::start(&config(&db, "acme_db")).await;
    let acme = proxy.connect("acme").await;
    assert_eq!(bodies(&acme).await, ["kept in acme_db"]);
    proxy.reload(&config(&db, "shared")).await.expect("reload");
    assert_eq!(bodies(&acme).await, ["more of acme", "secret of acme"]);
    let tenant: Option<String> = acme
        .query_one("SELECT pgtenant.current_tenant()", &[])
        .await
        .expect("context")
        .get(0);
    assert_eq!(tenant.as_deref(), Some("acme"));
    // A write lands as acme's, and the policy refuses another tenant's.
    acme.execute("INSERT INTO notes (body) VALUES ('after the move')", &[])
        .await
        .expect("insert");
    let forged = acme
        .execute(
            "INSERT INTO notes (tenant_id, body) VALUES ('globex', 'forged')",
            &[],
        )
        .await
        .expect_err("a row of another tenant");
    assert_eq!(common::sqlstate(&forged), "42501");
}

/// NOTIFY ignores row-level security, so a shared placement passes no
/// notification to any client. A client whose tenant a reload moves onto
/// the shared placement is held to that from its next transaction: its
/// server connection listens (through a function the session-state probe
/// cannot see into), another session notifies, and nothing reaches it.
#[tokio::test]
async fn a_tenant_moved_onto_the_shared_placement_gets_no_notification() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let db = shared_database("", &shared_seed()).await;
    dedicated_acme(&db, &db.admin).await;
    let owner = db.pg.cluster.admin("app_shared").await.expect("admin");
    create_subscribe(&owner).await;
    let trust = "auth_type = \"trust\"";
    let proxy = LiveProxy::start(&config_with(&db, "acme_db", trust, 1)).await;
    let mut acme = raw::login_trust(proxy.port, "acme").await;
    raw::simple_query(&mut acme, "SELECT count(*) FROM notes").await;
    proxy
        .reload(&config_with(&db, "shared", trust, 1))
        .await
        .expect("reload");
    // On the shared placement now (one server connection): it listens...
    raw::simple_query(&mut acme, "SELECT public.subscribe('news')").await;
    // ...and its next transaction runs there while a notification comes.
    let msgs = notified_during_a_query(&mut acme, &owner, "globex's secret").await;
    assert!(
        msgs.iter().all(|m| m.tag != b'A'),
        "a notification reached a client of the shared placement: {msgs:?}"
    );
}
