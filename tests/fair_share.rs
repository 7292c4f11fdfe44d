//! Fair sharing of one pool (issue 18 point 5): a tenant holds at most
//! `max_server_connections` of its placement's pool, and waiting tenants
//! are served in turn, so one tenant flooding a shared pool cannot make
//! another tenant's client wait behind its whole queue.
//!
//! One `isolation = "database"` placement with `allow_shared_database`
//! (the rls isolation is not wired yet) shared by tenants `flood` (100
//! clients in `pg_sleep(0.2)` transactions) and `quiet` (one client in
//! short transactions). The flood's server connections are counted on the
//! backend (pg_stat_activity) by the superuser.

mod common;

use common::{TestPg, TestProxy, sqlstate};
use pgtenant::pgcluster::HostAuth;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FLOOD_CLIENTS: usize = 100;
const FLOOD_TXN: &str = "BEGIN; SELECT pg_sleep(0.2); COMMIT";
/// How long the quiet client keeps going while the pool is flooded.
const QUIET_FOR: Duration = Duration::from_secs(4);
/// Generous against a loaded 2-core machine: fair service waits for about
/// one flood transaction (0.2 s) at most; one FIFO makes the quiet client
/// wait for the whole flood queue (about 100 * 0.2 s / pool_size: 2 s with
/// 10 connections, 5 s with 4).
const QUIET_BOUND: Duration = Duration::from_secs(2);

/// A proxy in front of one shared placement of `pool_size` connections;
/// `flood_extra` goes into `[tenants.flood]`, `proxy_extra` into `[proxy]`.
async fn shared_pool(pool_size: u32, flood_extra: &str, proxy_extra: &str) -> (TestPg, TestProxy) {
    let pg = TestPg::start(HostAuth::Trust, &["pool"]).await;
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nauth_type = \"trust\"\n{proxy_extra}\n\n\
         [placements.shared]\nurl = \"{}\"\nisolation = \"database\"\nallow_shared_database = true\n\
         pool_size = {pool_size}\n\n\
         [tenants.flood]\nplacement = \"shared\"\nusers = {{ app = \"flood-secret\" }}\n{flood_extra}\n\n\
         [tenants.quiet]\nplacement = \"shared\"\nusers = {{ app = \"quiet-secret\" }}\n",
        pg.url("tenant_pool")
    );
    let proxy = TestProxy::start(&config).await;
    (pg, proxy)
}

/// The flood's server connections busy right now, seen by the backend.
async fn flood_backends(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE query = $1 AND state <> 'idle' AND pid <> pg_backend_pid()",
            &[&FLOOD_TXN],
        )
        .await
        .expect("count")
        .get(0)
}

struct Flood {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Flood {
    async fn start(proxy: &TestProxy) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for _ in 0..FLOOD_CLIENTS {
            clients.push(proxy.connect("flood").await);
        }
        let tasks = clients
            .into_iter()
            .map(|c| {
                let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        c.batch_execute(FLOOD_TXN).await.expect("flood transaction");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Flood { stop, done, tasks }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("flood client");
        }
        self.done.load(Ordering::Relaxed)
    }
}

/// Waits (bounded) until the flood holds `n` server connections.
async fn until_flood_holds(admin: &tokio_postgres::Client, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while flood_backends(admin).await < n {
        assert!(
            Instant::now() < deadline,
            "the flood never held {n} connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the quiet tenant's short transactions for `QUIET_FOR` while
/// sampling the flood's server connections; returns each transaction's
/// time and the most connections the flood was seen holding.
async fn quiet_under_flood(
    quiet: &tokio_postgres::Client,
    admin: &tokio_postgres::Client,
) -> (Vec<Duration>, i64) {
    let stop = AtomicBool::new(false);
    let sample = async {
        let mut most = 0;
        while !stop.load(Ordering::Relaxed) {
            most = most.max(flood_backends(admin).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        most
    };
    let run = async {
        let mut times = Vec::new();
        let started = Instant::now();
        while started.elapsed() < QUIET_FOR {
            let t = Instant::now();
            quiet
                .batch_execute("BEGIN; SELECT count(*) FROM notes; COMMIT")
                .await
                .expect("quiet transaction");
            times.push(t.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        times
    };
    tokio::join!(run, sample)
}

fn report(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    let max = sorted.last().copied().unwrap_or_default();
    println!(
        "quiet: {} transactions, p50 {:?}, max {:?}",
        sorted.len(),
        sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
        max
    );
    max
}

/// Two tenants on a pool of 10: each may hold half of it by default. The
/// flood never holds more than 5 server connections, however many of its
/// clients wait, and the quiet tenant keeps completing transactions.
#[tokio::test]
async fn a_flooding_tenant_holds_at_most_its_share() {
    let (pg, proxy) = shared_pool(10, "", "query_wait_timeout = \"60s\"").await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    let quiet = proxy.connect("quiet").await;
    let flood = Flood::start(&proxy).await;
    until_flood_holds(&admin, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (times, most) = quiet_under_flood(&quiet, &admin).await;
    let flooded = flood.stop().await;
    println!("flood: {flooded} transactions, at most {most} server connections at once");
    // It did reach 5 (`until_flood_holds`).
    assert!(
        most <= 5,
        "the flood may hold half the pool (5 of 10) and no more, held {most}"
    );
    let max = report(&times);
    assert!(times.len() >= 5, "only {} quiet transactions", times.len());
    assert!(max < QUIET_BOUND, "a quiet transaction took {max:?}");
    assert!(flooded > 0, "the flood made no progress");
}

/// The flood may take the whole pool (max_server_connections = pool_size),
/// so only the round robin protects the quiet tenant: its single waiter is
/// next in turn after the flood's current one, not behind 96 others (which
/// one FIFO would make about 96 * 0.2 s / 4 = 5 s per transaction).
#[tokio::test]
async fn a_single_waiter_is_served_in_turn_not_behind_a_flood() {
    let (pg, proxy) = shared_pool(
        4,
        "max_server_connections = 4",
        "query_wait_timeout = \"60s\"",
    )
    .await;
    let admin = pg.cluster.admin("postgres").await.expect("admin");
    let quiet = proxy.connect("quiet").await;
    let flood = Flood::start(&proxy).await;
    until_flood_holds(&admin, 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (times, most) = quiet_under_flood(&quiet, &admin).await;
    let flooded = flood.stop().await;
    println!("flood: {flooded} transactions, at most {most} server connections at once");
    assert!(most <= 4, "{most} busy connections in a pool of 4");
    let max = report(&times);
    assert!(times.len() >= 5, "only {} quiet transactions", times.len());
    assert!(max < QUIET_BOUND, "a quiet transaction took {max:?}");
}

/// A tenant at its cap waits even while the pool has idle connections,
/// and gets 57014 after query_wait_timeout as usual; another tenant of
/// the same pool is not held up.
#[tokio::test]
async fn a_tenant_at_its_cap_waits_though_connections_are_idle() {
    let (_pg, proxy) = shared_pool(
        4,
        "max_server_connections = 1",
        "query_wait_timeout = \"1s\"",
    )
    .await;
    // Warm the pool (quiet may hold 2 of 4): idle connections are there
    // to be had.
    let quiet = proxy.connect("quiet").await;
    drop(warm_pool(&proxy, 2).await);
    let holder = proxy.connect("flood").await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let second = proxy.connect("flood").await;
    let started = Instant::now();
    let e = second
        .batch_execute("SELECT 1")
        .await
        .expect_err("the flood holds its one connection");
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    quiet
        .batch_execute("SELECT 1")
        .await
        .expect("quiet goes on");
    holder.batch_execute("COMMIT").await.expect("commit");
    // 57014 ends that client's session; the next one gets the connection.
    proxy
        .connect("flood")
        .await
        .batch_execute("SELECT 1")
        .await
        .expect("the flood's connection came back");
}

/// Opens `n` server connections at once through the quiet tenant (each
/// client holds one in an open transaction), then ends the transactions.
async fn warm_pool(proxy: &TestProxy, n: usize) -> Vec<tokio_postgres::Client> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let c = proxy.connect("quiet").await;
        c.batch_execute("BEGIN").await.expect("begin");
        clients.push(c);
    }
    for c in &clients {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    clients
}
