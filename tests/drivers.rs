//! Real client drivers through the proxy in transaction mode: psycopg 3,
//! asyncpg, node-postgres and postgres.js, each from its own registry
//! (pinned in `tests/drivers/`), each with many more concurrent client
//! connections than the placement's `pool_size`, using named prepared
//! statements, transactions and session settings, and checking results.
//! Clients authenticate with SCRAM-SHA-256 (the proxy's default), so the
//! drivers' own SCRAM implementations are exercised too.
//!
//! The scripts live in `tests/drivers/`; `tests/drivers/install.sh`
//! installs their dependencies (`.ci/run` calls it). Without them a test
//! prints a loud SKIPPED message and passes, unless `CI` is set, where a
//! missing driver is a failure.

mod common;

use common::{TestPg, TestProxy, backend_user};
use pgtenant::pgcluster::HostAuth;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const POOL_SIZE: u32 = 4;
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The scripts' own deadline, so a hang is reported by the script (with
/// what it was doing) before this file kills it.
const SCRIPT_BUDGET_S: u64 = 100;

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Runs a quick dependency probe; `Err` says what is missing.
fn probe(program: &str, args: &[&str], dir: &Path) -> Result<(), String> {
    match Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            // The line that says what is missing, not the whole trace.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let why = lines
                .iter()
                .find(|l| l.contains("Error"))
                .or(lines.last())
                .copied()
                .unwrap_or("no output");
            Err(format!("`{program} {}` failed: {why}", args.join(" ")))
        }
        Err(e) => Err(format!("cannot run `{program}`: {e}")),
    }
}

fn python_deps(module: &str) -> Result<(), String> {
    probe(
        "python3",
        &["-c", &format!("import {module}")],
        &drivers_dir().join("python"),
    )
}

fn node_deps(package: &str) -> Result<(), String> {
    probe(
        "node",
        &["-e", &format!("require('{package}')")],
        &drivers_dir().join("node"),
    )
}

/// Whether the driver can run. Missing dependencies fail the test under
/// CI and skip it (loudly) elsewhere.
fn deps_ready(driver: &str, deps: Result<(), String>) -> bool {
    match deps {
        Ok(()) => true,
        Err(why) if in_ci() => panic!(
            "{driver}: driver dependencies are missing under CI: {why}\n\
             (.ci/run installs them with tests/drivers/install.sh)"
        ),
        Err(why) => {
            // Straight to the process's stderr: the test harness captures
            // eprintln! of passing tests, and this must be seen.
            let bar = "*".repeat(72);
            let _ = writeln!(
                std::io::stderr().lock(),
                "\n{bar}\nSKIPPED {driver} driver test: {why}\n\
                 run `tests/drivers/install.sh` to install the drivers\n{bar}"
            );
            false
        }
    }
}

/// PostgreSQL (SCRAM for the proxy's own logins) with the tables the
/// scripts use, and the proxy in front in transaction mode.
async fn start() -> (TestPg, TestProxy) {
    let pg = TestPg::start(HostAuth::ScramSha256, &["acme"]).await;
    let db = pg.cluster.admin("tenant_acme").await.expect("admin");
    db.batch_execute(&format!(
        "SET ROLE {};
         CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
         INSERT INTO items SELECT i, 'item-' || i, i * 3 FROM generate_series(1, 1000) i;
         CREATE TABLE ledger (id bigserial PRIMARY KEY, driver text NOT NULL,
                              client int NOT NULL, seq int NOT NULL, amount int NOT NULL);",
        backend_user("acme")
    ))
    .await
    .expect("seed");
    let proxy =
        TestProxy::start(&pg.config(&["acme"], POOL_SIZE, "pool_mode = \"transaction\"")).await;
    (pg, proxy)
}

struct Finished {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion or kills it at `timeout`.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Finished {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("wait for script") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    Finished {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Runs one driver script against the proxy and asserts it succeeded.
async fn run_script(proxy: &TestProxy, d: &Driver) -> String {
    let Driver {
        name: driver,
        program,
        script,
        args,
        clients,
        ..
    } = *d;
    let path = drivers_dir().join(script);
    let mut cmd = Command::new(program);
    cmd.arg(&path)
        .args(args)
        .current_dir(path.parent().expect("script folder"))
        .env("PGTENANT_HOST", "127.0.0.1")
        .env("PGTENANT_PORT", proxy.port.to_string())
        .env("PGTENANT_USER", "app.acme")
        .env("PGTENANT_PASSWORD", "acme-secret")
        .env("PGTENANT_DB", "acme")
        .env("PGTENANT_CLIENTS", clients.to_string())
        .env("PGTENANT_POOL_SIZE", POOL_SIZE.to_string())
        .env("PGTENANT_SCRIPT_BUDGET_S", SCRIPT_BUDGET_S.to_string())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let done = tokio::task::spawn_blocking(move || run_with_timeout(cmd, SCRIPT_TIMEOUT))
        .await
        .expect("join script runner");
    let elapsed = started.elapsed();
    let report = format!(
        "--- {script} stdout ---\n{}\n--- {script} stderr ---\n{}",
        done.stdout.trim_end(),
        done.stderr.trim_end()
    );
    match done.status {
        None => panic!(
            "{driver}: {script} did not finish within {SCRIPT_TIMEOUT:?} and was killed\n{report}"
        ),
        Some(s) if !s.success() => {
            panic!("{driver}: {script} failed ({s}) after {elapsed:.1?}\n{report}")
        }
        Some(_) => {}
    }
    assert!(
        done.stdout.lines().any(|l| l.starts_with("ok: ")),
        "{driver}: {script} exited 0 without its closing `ok:` line\n{report}"
    );
    println!(
        "{driver}: passed in {elapsed:.1?}\n{}",
        done.stdout.trim_end()
    );
    done.stdout
}

/// What the backend itself says after a script: its committed rows are
/// there, and the proxy never opened more than `pool_size` connections.
async fn check_backend(pg: &TestPg, d: &Driver) {
    let driver = d.name;
    let db = pg.cluster.admin("tenant_acme").await.expect("admin");
    if let Some(ledger) = d.ledger {
        let rows: i64 = db
            .query_one("SELECT count(*) FROM ledger WHERE driver = $1", &[&ledger])
            .await
            .expect("ledger")
            .get(0);
        assert!(
            rows > 0,
            "{driver}: no committed ledger rows reached the backend"
        );
    }
    let bad: i64 = db
        .query_one("SELECT count(*) FROM ledger WHERE seq < 0", &[])
        .await
        .expect("ledger")
        .get(0);
    assert_eq!(bad, 0, "{driver}: rolled-back rows reached the backend");
    let servers: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&backend_user("acme")],
        )
        .await
        .expect("activity")
        .get(0);
    assert!(
        servers <= i64::from(POOL_SIZE),
        "{driver}: {servers} server connections for pool_size {POOL_SIZE}"
    );
}

/// One driver scenario: which script, with which arguments.
struct Driver {
    name: &'static str,
    program: &'static str,
    script: &'static str,
    args: &'static [&'static str],
    clients: usize,
    /// The `driver` column of the rows the script commits, if it does.
    ledger: Option<&'static str>,
}

async fn driver_test(d: Driver, deps: Result<(), String>) {
    if !deps_ready(d.name, deps) {
        return;
    }
    let (pg, proxy) = start().await;
    run_script(&proxy, &d).await;
    check_backend(&pg, &d).await;
    proxy.stop().await.expect("proxy stops cleanly");
}

fn psycopg(scenario: &'static [&'static str], ledger: Option<&'static str>) -> Driver {
    Driver {
        name: "psycopg",
        program: "python3",
        script: "python/test_psycopg.py",
        args: scenario,
        clients: 30,
        ledger,
    }
}

fn postgres_js(scenario: &'static [&'static str], ledger: Option<&'static str>) -> Driver {
    Driver {
        name: "postgres.js",
        program: "node",
        script: "node/postgres_js_test.js",
        args: scenario,
        clients: 30,
        ledger,
    }
}

/// psycopg 3, `prepare_threshold=0` (every statement a named prepared
/// statement), 30 connections: parameterised queries and seeded rows,
/// proxy-named server-side statements, multi-statement transactions
/// (commit, rollback, error), and SET/RESET/SET LOCAL of
/// statement_timeout and TimeZone following only their own client.
#[tokio::test]
async fn psycopg3_named_statements_transactions_and_settings() {
    driver_test(psycopg(&["core"], Some("psycopg")), python_deps("psycopg")).await;
}

/// psycopg 3 pipeline mode and executemany; afterwards the clients sit
/// idle, which must leave the pool to the others.
#[tokio::test]
async fn psycopg3_pipeline_mode_then_idle() {
    driver_test(
        psycopg(&["pipeline"], Some("psycopg")),
        python_deps("psycopg"),
    )
    .await;
}

/// `SET app.custom = ...` (a placeholder GUC, the usual way to pass
/// application context) follows its own client and never another.
#[tokio::test]
async fn psycopg3_custom_settings_follow_their_client() {
    driver_test(psycopg(&["custom-guc"], None), python_deps("psycopg")).await;
}

/// Clients that vanish mid-statement (RST or Terminate before the reply)
/// leave no SET and no stale statement cache behind.
#[tokio::test]
async fn psycopg3_abandoned_connections_leave_nothing_behind() {
    driver_test(psycopg(&["abandoned"], None), python_deps("psycopg")).await;
}

/// asyncpg, 40 connections plus a pool of 10: fetch/fetchrow/fetchval with
/// parameters, `prepare()` reused, a tiny statement cache, errors,
/// transactions with a savepoint, executemany and a cursor.
#[tokio::test]
async fn asyncpg_prepared_statements_transactions_and_pool() {
    driver_test(
        Driver {
            name: "asyncpg",
            program: "python3",
            script: "python/test_asyncpg.py",
            args: &[],
            clients: 40,
            ledger: Some("asyncpg"),
        },
        python_deps("asyncpg"),
    )
    .await;
}

/// node-postgres, 30 clients plus a pg.Pool of 20: named queries,
/// failing Execute and Parse, BEGIN/COMMIT/ROLLBACK.
#[tokio::test]
async fn node_postgres_named_queries_and_transactions() {
    driver_test(
        Driver {
            name: "node-postgres",
            program: "node",
            script: "node/pg_test.js",
            args: &[],
            clients: 30,
            ledger: Some("node-postgres"),
        },
        node_deps("pg"),
    )
    .await;
}

/// postgres.js, 30 connections: 1800 queries from waves of concurrent
/// callers, sql.begin with pipelined queries and a savepoint, errors.
#[tokio::test]
async fn postgres_js_prepared_queries_and_transactions() {
    driver_test(
        postgres_js(&["core"], Some("postgres.js")),
        node_deps("postgres"),
    )
    .await;
}

/// postgres.js with 2000 queries in flight on one connection: a long
/// pipeline of Bind/Execute/Sync for one named statement.
#[tokio::test]
async fn postgres_js_deep_pipeline_of_named_statements() {
    driver_test(postgres_js(&["deep-pipeline"], None), node_deps("postgres")).await;
}
