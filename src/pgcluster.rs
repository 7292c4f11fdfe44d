//! A throwaway PostgreSQL cluster: `initdb` in a temporary folder, a free
//! loopback port, stopped and removed on drop. Used by `pgtenant demo` and
//! by the integration tests; needs only the server binaries (found on
//! PATH or under `/usr/lib/postgresql/*/bin`).
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the
//! `postgres` OS user through `runuser`.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// How clients other than the `postgres` superuser authenticate over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAuth {
    Trust,
    Md5,
    ScramSha256,
}

impl HostAuth {
    fn as_hba(self) -> &'static str {
        match self {
            HostAuth::Trust => "trust",
            HostAuth::Md5 => "md5",
            HostAuth::ScramSha256 => "scram-sha-256",
        }
    }
}

/// A running throwaway cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    run_as: Option<&'static str>,
    running: bool,
    auth: HostAuth,
}

impl PgCluster {
    /// Creates and starts a cluster. The superuser `postgres` connects
    /// over TCP without a password; other roles use `auth`.
    pub fn start(auth: HostAuth) -> anyhow::Result<PgCluster> {
        let bin = find_bin_dir()?;
        let run_as = is_root().then_some("postgres");
        let dir = tempfile::Builder::new().prefix("pgtenant-pg-").tempdir()?;
        if let Some(user) = run_as {
            chown(dir.path(), user)?;
        }
        let data = dir.path().join("data");
        init_data(&bin, run_as, &data)?;
        let encryption = if auth == HostAuth::Md5 {
            "md5"
        } else {
            "scram-sha-256"
        };
        let conf = data.join("postgresql.auto.conf");
        let socket_dir = dir.path().display().to_string();
        let settings = |port: u16| {
            std::fs::write(
                &conf,
                format!(
                    "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
                     fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
                     max_connections = 300\npassword_encryption = '{encryption}'\n",
                    socket_dir
                ),
            )
        };
        let port = free_port()?;
        settings(port)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 {}\n",
                auth.as_hba()
            ),
        )?;
        if let Some(user) = run_as {
            chown(&data, user)?;
        }
        let mut cluster = PgCluster {
            dir,
            bin,
            port,
            run_as,
            running: false,
            auth,
        };
        // The port was free when `free_port` let it go; something else
        // (another test's listener or outgoing connection) may take it
        // before the server binds it: then another port.
        let mut attempts = 0;
        loop {
            match cluster.pg_ctl(&["start", "-w", "-t", "60"]) {
                Ok(()) => break,
                Err(e) => {
                    let log = std::fs::read_to_string(cluster.dir.path().join("postgres.log"))
                        .unwrap_or_default();
                    if attempts < 3 && log.contains("could not bind") {
                        attempts += 1;
                        cluster.port = free_port()?;
                        settings(cluster.port)?;
                        continue;
                    }
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                    return Err(e.context(format!("postgres.log ends:\n{tail}")));
                }
            }
        }
        cluster.running = true;
        Ok(cluster)
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(args);
        run(as_user(cmd, self.run_as)).with_context(|| format!("pg_ctl {}", args.join(" ")))
    }

    /// Stops the server (fast shutdown: sessions are terminated).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.running {
            self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])?;
            self.running = false;
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if !self.running {
            self.pg_ctl(&["start", "-w", "-t", "60"])?;
            self.running = true;
        }
        Ok(())
    }

    /// A placement URL for `user` on `database`: with `require_auth`
    /// allowing what this cluster asks for where that is not SCRAM (a
    /// trust or md5 cluster), since pgtenant allows only SCRAM unless told.
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        let base = self.client_url(user, password, database);
        match self.auth {
            HostAuth::ScramSha256 => base,
            HostAuth::Trust => format!("{base}?require_auth=none"),
            HostAuth::Md5 => format!("{base}?require_auth=md5"),
        }
    }

    /// A libpq URL for `user` on `database`, without pgtenant's
    /// `require_auth` (libpq before 16 and tokio-postgres do not know it).
    pub fn client_url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A superuser connection for setup SQL.
    pub async fn admin(&self, database: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={database}",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .context("connecting as postgres")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// The server log, for test failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Turns TLS on with this certificate chain and key (PEM), written
    /// into the data directory as the server requires (its owner's, mode
    /// 0600), and reloads.
    pub async fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = self.dir.path().join("data");
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        std::fs::write(&cert, cert_pem)?;
        std::fs::write(&key, key_pem)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        if let Some(user) = self.run_as {
            chown(&cert, user)?;
            chown(&key, user)?;
        }
        let admin = self.admin("postgres").await?;
        admin.simple_query("ALTER SYSTEM SET ssl = on").await?;
        admin.simple_query("SELECT pg_reload_conf()").await?;
        // The postmaster applies the reload on its own time: wait until a
        // new backend sees it.
        for _ in 0..100 {
            let fresh = self.admin("postgres").await?;
            let row = fresh.query_one("SHOW ssl", &[]).await?;
            if row.get::<_, String>(0) == "on" {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        anyhow::bail!("ssl = on did not take effect")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        }
    }
}

/// The PostgreSQL server binaries: `initdb` on PATH, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = dirs
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .context(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under \
             /usr/lib/postgresql/*/bin; install them, e.g. `apt-get install -y postgresql`",
        )
}

/// What `initdb` is run with.
const INITDB_ARGS: [&str; 8] = [
    "-U",
    "postgres",
    "-A",
    "trust",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
];

/// Makes the data folder `data`: `initdb`, or, where the environment
/// variable `PGTENANT_INITDB_CACHE` names a folder (the repository's
/// `.cargo/config.toml` sets it for `cargo test`), a copy of the data
/// folder `initdb` made there once for these server binaries. `initdb`
/// was most of a throwaway cluster's start, and the test suite starts
/// over a hundred. (`cargo run -- demo` copies it too; an installed
/// `pgtenant demo` runs `initdb` and leaves nothing behind.)
fn init_data(bin: &Path, run_as: Option<&'static str>, data: &Path) -> anyhow::Result<()> {
    let cache = std::env::var_os("PGTENANT_INITDB_CACHE").filter(|c| !c.is_empty());
    let Some(cache) = cache else {
        return initdb(bin, run_as, data);
    };
    let template = cached_template(bin, run_as, Path::new(&cache))?;
    copy_dir(&template, data).context("copying the cached initdb template")
}

/// Copies the folder `from` to `to` (which must not exist), keeping
/// owners (the postgres user, as root) and modes: `cp -a`.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    run({
        let mut c = Command::new("cp");
        c.arg("-a").arg(from).arg(to);
        c
    })
}

fn initdb(bin: &Path, run_as: Option<&str>, data: &Path) -> anyhow::Result<()> {
    let mut initdb = Command::new(bin.join("initdb"));
    initdb.arg("-D").arg(data).args(INITDB_ARGS);
    run(as_user(initdb, run_as)).context("initdb")
}

/// The template for these binaries, arguments and user under `cache`,
/// made if missing. Concurrent makers (test binaries run in parallel)
/// each stage a copy of their own and rename it into place: the first
/// rename wins, the others drop theirs.
fn cached_template(
    bin: &Path,
    run_as: Option<&'static str>,
    cache: &Path,
) -> anyhow::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut key = std::collections::hash_map::DefaultHasher::new();
    bin.hash(&mut key);
    // Another build of the binaries at the same path: another template.
    let meta = std::fs::metadata(bin.join("initdb")).context("initdb")?;
    (meta.len(), meta.modified().ok()).hash(&mut key);
    INITDB_ARGS.hash(&mut key);
    run_as.hash(&mut key);
    let template = cache.join(format!("initdb-{:016x}", key.finish()));
    if template.is_dir() {
        return Ok(template);
    }
    // initdb runs where a cluster would (the temp dir): as root it runs
    // as the postgres user, who may not reach `cache` (a checkout under
    // /root); root copies the result there.
    let fresh = tempfile::Builder::new()
        .prefix("pgtenant-initdb-")
        .tempdir()?;
    if let Some(user) = run_as {
        chown(fresh.path(), user)?;
    }
    let data = fresh.path().join("data");
    initdb(bin, run_as, &data)?;
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let work = tempfile::Builder::new()
        .prefix("making-")
        .tempdir_in(cache)?;
    let staged = work.path().join("data");
    copy_dir(&data, &staged)?;
    if std::fs::rename(&staged, &template).is_err() && !template.is_dir() {
        bail!(
            "could not put the initdb template at {}",
            template.display()
        );
    }
    Ok(template)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn as_user(cmd: Command, user: Option<&str>) -> Command {
    match user {
        None => cmd,
        Some(u) => {
            let mut wrapped = Command::new("runuser");
            wrapped.args(["-u", u, "--"]).arg(cmd.get_program());
            wrapped.args(cmd.get_args());
            wrapped
        }
    }
}

fn chown(path: &Path, user: &str) -> anyhow::Result<()> {
    run({
        let mut c = Command::new("chown");
        c.arg("-R").arg(user).arg(path);
        c
    })
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test binaries start clusters in parallel: makers racing for a
    /// missing template must all get the same one, whole, and leave
    /// nothing else behind.
    #[test]
    fn concurrent_makers_share_one_template() {
        let bin = find_bin_dir().expect("PostgreSQL server binaries");
        let run_as = is_root().then_some("postgres");
        let cache = tempfile::tempdir().expect("temp dir");
        let cache_dir = cache.path().join("initdb-cache");
        let made: Vec<PathBuf> = std::thread::scope(|s| {
            let makers: Vec<_> = (0..3)
                .map(|_| s.spawn(|| cached_template(&bin, run_as, &cache_dir)))
                .collect();
            makers
                .into_iter()
                .map(|m| m.join().expect("join").expect("template"))
                .collect()
        });
        assert!(made.iter().all(|p| *p == made[0]), "{made:?}");
        assert!(made[0].join("PG_VERSION").is_file());
        assert!(made[0].join("global/pg_control").is_file());
        let left: Vec<_> = std::fs::read_dir(&cache_dir)
            .expect("cache")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, [made[0].file_name().expect("name").to_owned()]);
        assert_eq!(
            cached_template(&bin, run_as, &cache_dir).expect("again"),
            made[0]
        );
    }
}
