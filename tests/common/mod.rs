//! Shared integration-test fixtures: a throwaway PostgreSQL with tenant
//! databases (`TestPg`) and the real proxy running in-process on a free
//! port (`TestProxy`).
#![allow(dead_code)]

pub mod http;
pub mod live;
pub mod raw;
pub mod seccomp;
pub mod shared;
pub mod tls;

use pgtenant::pgcluster::{HostAuth, PgCluster};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// The backend login role of tenant `t`'s database: it owns no database
/// and may connect only to its own (`pgtenant::provision`), so the proxy's
/// role check passes.
pub fn backend_user(tenant: &str) -> String {
    pgtenant::provision::backend_role(tenant)
}

pub fn backend_password(tenant: &str) -> String {
    format!("backend-{tenant}-secret")
}

/// A PostgreSQL cluster with one database per tenant (`tenant_<name>`),
/// each with its own login role (`pgt_<name>`) and holding a `notes` table
/// with rows that name their tenant.
pub struct TestPg {
    pub cluster: PgCluster,
}

impl TestPg {
    pub async fn start(auth: HostAuth, tenants: &[&str]) -> TestPg {
        seccomp::refuse_io_uring_if_asked();
        let cluster = tokio::task::spawn_blocking(move || PgCluster::start(auth))
            .await
            .expect("join")
            .expect("start PostgreSQL");
        let admin = cluster.admin("postgres").await.expect("admin connection");
        for t in tenants {
            pgtenant::provision::dedicated_database(
                &cluster,
                &admin,
                &format!("tenant_{t}"),
                &backend_user(t),
                &backend_password(t),
                &format!(
                    "CREATE TABLE notes (id serial PRIMARY KEY, tenant_id text NOT NULL, body text NOT NULL);
                     INSERT INTO notes (tenant_id, body) VALUES ('{t}', 'secret of {t}'), ('{t}', 'more of {t}');"
                ),
            )
            .await
            .expect("create tenant database");
        }
        TestPg { cluster }
    }

    /// The placement URL of `database` (`tenant_<name>`), as its own role.
    pub fn url(&self, database: &str) -> String {
        let tenant = database
            .strip_prefix("tenant_")
            .unwrap_or_else(|| panic!("{database} is not a tenant database"));
        self.cluster
            .url(&backend_user(tenant), &backend_password(tenant), database)
    }

    /// `url` for libpq 15 tools and tokio-postgres (no `require_auth`).
    pub fn client_url(&self, database: &str) -> String {
        let tenant = database
            .strip_prefix("tenant_")
            .unwrap_or_else(|| panic!("{database} is not a tenant database"));
        self.cluster
            .client_url(&backend_user(tenant), &backend_password(tenant), database)
    }

    /// A config with one dedicated placement per tenant; `extra_proxy`
    /// lines go into `[proxy]`, `pool_size` applies to every placement.
    pub fn config(&self, tenants: &[&str], pool_size: u32, extra_proxy: &str) -> String {
        let mut s = format!("[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n{extra_proxy}\n\n");
        for t in tenants {
            s.push_str(&format!(
                "[placements.{t}_db]\nurl = \"{}\"\nisolation = \"database\"\npool_size = {pool_size}\n\n\
                 [tenants.{t}]\nplacement = \"{t}_db\"\nusers = {{ app = \"{t}-secret\" }}\n\n",
                self.url(&format!("tenant_{t}"))
            ));
        }
        s
    }
}

/// The proxy, running in-process until dropped.
pub struct TestProxy {
    pub port: u16,
    pub shutdown: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestProxy {
    pub async fn start(config: &str) -> TestProxy {
        let (cfg, src) = pgtenant::config::parse_str(config, "test.toml").expect("valid config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(pgtenant::run(cfg, src, listener, shutdown.clone()));
        TestProxy {
            port,
            shutdown,
            task: Some(task),
        }
    }

    /// A libpq-style connection string for the proxy.
    pub fn conn_str(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={database} connect_timeout=10",
            self.port
        )
    }

    /// Connects as `app.<tenant>` with the tenant's password.
    pub async fn connect(&self, tenant: &str) -> Client {
        self.try_connect(&self.conn_str(
            &format!("app.{tenant}"),
            &format!("{tenant}-secret"),
            tenant,
        ))
        .await
        .unwrap_or_else(|e| panic!("connect as {tenant}: {e}: {:?}", e.as_db_error()))
    }

    pub async fn try_connect(&self, conn_str: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(conn_str, NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Asks the proxy to stop and waits (bounded) for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("proxy stops")
            .expect("join")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The SQLSTATE of a failed connect or query.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// A child process (the real binary) killed and reaped when dropped, so
/// a failing test leaves no proxy behind.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until a backend waits for a lock: the one with `pid`, or else
/// any backend of `admin`'s database.
pub async fn wait_for_lock_wait(admin: &Client, pid: Option<i32>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND (pid = $1 OR ($1 IS NULL AND datname = current_database())))",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no backend came to wait for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pids of `role`'s backends, as `admin` sees them.
pub async fn backend_pids_of(admin: &Client, role: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .expect("pids")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits (up to 20 s) until none of the backends `pids` is left.
pub async fn wait_until_gone(admin: &Client, pids: &[i32], what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .expect("count")
            .get(0);
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: backends {pids:?} still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
