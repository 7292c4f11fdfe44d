//! A proxy started from a config file, in-process, whose state tests
//! hold so that they can call `pgtenant::reload::reload` on it after
//! rewriting the file; and the config text the reload tests build.

use super::{TestPg, backend_user};
use pgtenant::reload::{ReloadError, ReloadSummary};
use pgtenant::state::ProxyState;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

pub struct LiveProxy {
    pub port: u16,
    pub path: PathBuf,
    pub state: Arc<ProxyState>,
    pub shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl LiveProxy {
    pub async fn start(config: &str) -> LiveProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgtenant.toml");
        std::fs::write(&path, config).expect("write config");
        let (cfg, src) = pgtenant::config::load_file(&path).expect("valid config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(pgtenant::run_with(
            cfg,
            src,
            listener,
            shutdown.clone(),
            Some(path.clone()),
            move |state| {
                let _ = tx.send(Arc::clone(state));
            },
        ));
        let state = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("proxy starts")
            .expect("state");
        LiveProxy {
            port,
            path,
            state,
            shutdown,
            _dir: dir,
        }
    }

    /// Rewrites the config file and reloads it.
    pub async fn reload(&self, config: &str) -> Result<ReloadSummary, ReloadError> {
        std::fs::write(&self.path, config).expect("write config");
        pgtenant::reload::reload(&self.state).await
    }

    pub fn conn_str(&self, tenant: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=app.{tenant} password={tenant}-secret dbname={tenant} connect_timeout=10",
            self.port
        )
    }

    pub async fn try_connect(&self, tenant: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(&self.conn_str(tenant), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// A client and its connection's end: an ErrorResponse the proxy
    /// sends while the client is idle ends the connection with that error.
    pub async fn connect_watched(&self, tenant: &str) -> (Client, Ending) {
        let (client, conn) = tokio_postgres::connect(&self.conn_str(tenant), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect as {tenant}: {e}"));
        (client, Ending(tokio::spawn(conn)))
    }

    pub async fn connect(&self, tenant: &str) -> Client {
        self.try_connect(tenant)
            .await
            .unwrap_or_else(|e| panic!("connect as {tenant}: {e}: {:?}", e.as_db_error()))
    }

    /// The admin console, as `admin` with `password`.
    pub async fn console(&self, password: &str) -> Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=admin password={password} dbname=pgtenant connect_timeout=10",
                self.port
            ),
            NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("admin login: {e}: {:?}", e.as_db_error()));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// The current size of placement `name`'s pool.
    pub fn pool_size(&self, name: &str) -> usize {
        self.state.snapshot().placements[name].pool.counts().max
    }
}

impl Drop for LiveProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Config text: `[proxy]` with `proxy_extra`, then placements and
/// tenants.
pub struct ConfigText(pub String);

impl ConfigText {
    pub fn new(proxy_extra: &str) -> ConfigText {
        ConfigText(format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nquery_wait_timeout = \"30s\"\n{proxy_extra}\n\n"
        ))
    }

    /// A placement on database `tenant_<db>` as its own role; shared by
    /// any number of tenants.
    pub fn placement(mut self, pg: &TestPg, name: &str, db: &str, pool_size: u32) -> ConfigText {
        self.0.push_str(&format!(
            "[placements.{name}]\nurl = \"{}\"\nisolation = \"database\"\nallow_shared_database = true\n\
             pool_size = {pool_size}\n\n",
            pg.url(&format!("tenant_{db}"))
        ));
        self
    }

    /// Tenant `name` on `placement`; `extra` lines go into its table.
    pub fn tenant(mut self, name: &str, placement: &str, extra: &str) -> ConfigText {
        self.0.push_str(&format!(
            "[tenants.{name}]\nplacement = \"{placement}\"\nusers = {{ app = \"{name}-secret\" }}\n{extra}\n\n"
        ));
        self
    }
}

/// Server connections the proxy holds on database `tenant_<db>` (as its
/// role), seen by the backend.
pub async fn backends(admin: &Client, db: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2",
            &[&backend_user(db), &format!("tenant_{db}")],
        )
        .await
        .expect("count")
        .get(0)
}

/// Waits (generously) until `backends` is `want`.
pub async fn wait_for_backends(admin: &Client, db: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = backends(admin, db).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{db}: {n} server connections, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn current_database(c: &Client) -> String {
    c.query_one("SELECT current_database()", &[])
        .await
        .expect("current_database")
        .get(0)
}

pub async fn backend_pid(c: &Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// How a watched connection ended.
pub struct Ending(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Ending {
    /// The (code, message) the proxy closed the connection with; waits
    /// (generously) for it.
    pub async fn error(self) -> (String, String) {
        let end = tokio::time::timeout(Duration::from_secs(20), self.0)
            .await
            .expect("the connection ends")
            .expect("task");
        let e = end.expect_err("closed with an error");
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("no ErrorResponse: {e}"));
        (db.code().code().to_string(), db.message().to_string())
    }
}
