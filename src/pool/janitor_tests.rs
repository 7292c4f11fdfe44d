//! The janitor's limits (`server_idle_timeout`, `server_lifetime`,
//! `server_check_delay`) on a paused clock, against a stand-in server
//! (`stand_in`) that is a task of the same runtime: the clock moves only
//! when both sides wait, so minutes of limits pass in milliseconds and no
//! real reply can be overtaken by a timer. (Against a real PostgreSQL:
//! `tests/server_timeouts.rs`.)

use super::{PERIOD, run};
use crate::config::BackendTarget;
use crate::pool::stand_in;
use crate::pool::{PlacementName, PlacementPool, PoolTenant, PoolTimeouts, RolePolicy};
use crate::runtime::block_on_paused;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

fn pool_at(port: u16, timeouts: PoolTimeouts) -> Arc<PlacementPool> {
    let target = BackendTarget::from_url(&format!(
        "postgres://u@127.0.0.1:{port}/db?require_auth=none"
    ))
    .expect("url");
    PlacementPool::new(
        PlacementName("p".into()),
        target,
        2,
        1,
        timeouts,
        RolePolicy::trusted(),
        None,
        vec![PoolTenant {
            name: "t".into(),
            max_server_connections: 2,
        }],
    )
}

/// One connection opened, used and handed back idle; then the janitor
/// starts looking after the pool. Returns when it went idle.
async fn one_idle_connection(pool: &Arc<PlacementPool>, stop: &CancellationToken) -> Instant {
    let seat = pool.seat("t").expect("seat");
    let lease = pool
        .checkout(seat, Duration::from_secs(5))
        .await
        .expect("logged in");
    lease.release();
    let idle_since = Instant::now();
    assert_eq!(pool.counts().idle, 1);
    let watched = Arc::clone(pool);
    tokio::spawn(run(move || vec![Arc::clone(&watched)], stop.clone()));
    idle_since
}

/// Lets the server's side of a close run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn idle_connections_close_at_server_idle_timeout_within_one_period() {
    block_on_paused(async {
        let (port, seen) = stand_in::start().await;
        let idle = Duration::from_secs(600);
        let pool = pool_at(
            port,
            PoolTimeouts {
                idle,
                ..PoolTimeouts::default()
            },
        );
        let stop = CancellationToken::new();
        let idle_since = one_idle_connection(&pool, &stop).await;
        sleep_until(idle_since + idle - Duration::from_millis(1)).await;
        assert_eq!(pool.counts().idle, 1, "closed before server_idle_timeout");
        sleep_until(idle_since + idle + PERIOD).await;
        settle().await;
        assert_eq!(pool.counts().idle, 0, "open past server_idle_timeout");
        assert_eq!(pool.stats().closed_idle.load(Ordering::Relaxed), 1);
        assert_eq!(seen.open.load(Ordering::Relaxed), 0, "the socket closed");
        stop.cancel();
    });
}

#[test]
fn connections_retire_within_the_last_tenth_of_server_lifetime() {
    block_on_paused(async {
        let (port, seen) = stand_in::start().await;
        let lifetime = Duration::from_secs(1000);
        let pool = pool_at(
            port,
            PoolTimeouts {
                lifetime,
                idle: Duration::ZERO,
                ..PoolTimeouts::default()
            },
        );
        let stop = CancellationToken::new();
        let opened = one_idle_connection(&pool, &stop).await;
        // Jittered into [0.9, 1] of the lifetime, so that connections
        // opened together do not all close together.
        sleep_until(opened + lifetime * 9 / 10 - Duration::from_millis(1)).await;
        assert_eq!(pool.counts().idle, 1, "retired early");
        sleep_until(opened + lifetime + PERIOD).await;
        settle().await;
        assert_eq!(pool.counts().idle, 0, "not retired");
        assert_eq!(pool.stats().closed_lifetime.load(Ordering::Relaxed), 1);
        assert_eq!(seen.open.load(Ordering::Relaxed), 0);
        // The next checkout logs in afresh.
        let lease = pool
            .checkout(pool.seat("t").expect("seat"), Duration::from_secs(5))
            .await
            .expect("a new connection");
        assert_eq!(seen.logins.load(Ordering::Relaxed), 2);
        lease.release();
        stop.cancel();
    });
}

#[test]
fn a_connection_idle_past_server_check_delay_is_checked_once_before_reuse() {
    block_on_paused(async {
        let (port, seen) = stand_in::start().await;
        let check_delay = Duration::from_secs(30);
        let pool = pool_at(
            port,
            PoolTimeouts {
                check_delay,
                ..PoolTimeouts::default()
            },
        );
        let seat = pool.seat("t").expect("seat");
        let stop = CancellationToken::new();
        let idle_since = one_idle_connection(&pool, &stop).await;
        // Reused within the delay: no round trip.
        sleep_until(idle_since + check_delay - PERIOD).await;
        let lease = pool
            .checkout(seat, Duration::from_secs(5))
            .await
            .expect("reuse");
        lease.release();
        assert_eq!(seen.checks.load(Ordering::Relaxed), 0);
        // Idle past it (and a janitor pass): one check, then the same
        // connection.
        sleep(check_delay + PERIOD).await;
        let lease = pool
            .checkout(seat, Duration::from_secs(5))
            .await
            .expect("checked");
        assert_eq!(seen.checks.load(Ordering::Relaxed), 1);
        lease.release();
        let lease = pool
            .checkout(seat, Duration::from_secs(5))
            .await
            .expect("reuse");
        lease.release();
        assert_eq!(
            seen.checks.load(Ordering::Relaxed),
            1,
            "checked again at once"
        );
        assert_eq!(seen.logins.load(Ordering::Relaxed), 1);
        stop.cancel();
    });
}
