//! Tests of the placement pool against listeners standing in for servers.

use super::*;
use crate::pool::CONNECT_CONCURRENCY;
use crate::runtime::time::sleep;
use crate::runtime::{block_on, block_on_paused};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::oneshot;

fn pool_at(port: u16, max: usize, timeouts: PoolTimeouts) -> Arc<PlacementPool> {
    let target =
        BackendTarget::from_url(&format!("postgres://u:p@127.0.0.1:{port}/db")).expect("url");
    PlacementPool::new(
        PlacementName("p".into()),
        target,
        max,
        1,
        timeouts,
        RolePolicy::trusted(),
        None,
        vec![PoolTenant {
            name: "t".into(),
            max_server_connections: max,
        }],
    )
}

/// The one tenant of `pool_at`'s pools.
fn seat(pool: &PlacementPool) -> TenantSeat {
    pool.seat("t").expect("seat")
}

/// A port where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn a_failed_connect_makes_the_next_checkouts_fail_fast() {
    block_on(failed_connect_backs_off());
}

async fn failed_connect_backs_off() {
    let timeouts = PoolTimeouts {
        login_retry: Duration::from_secs(60),
        ..PoolTimeouts::default()
    };
    let pool = pool_at(closed_port(), 4, timeouts);
    let wait = Duration::from_secs(5);
    let first = pool
        .checkout(seat(&pool), wait)
        .await
        .err()
        .expect("nothing listens");
    assert!(
        matches!(first, CheckoutError::Connect(ServerError::Io(_))),
        "{first:?}"
    );
    for _ in 0..20 {
        let e = pool
            .checkout(seat(&pool), wait)
            .await
            .err()
            .expect("backing off");
        match e {
            CheckoutError::Connect(ServerError::Backoff(d)) => {
                assert!(d <= Duration::from_millis(100), "{d:?}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pool.stats().connect_failures.load(Ordering::Relaxed), 1);
    assert_eq!(pool.stats().backoff_refusals.load(Ordering::Relaxed), 20);
    // After the delay: one more attempt, and a doubled delay.
    sleep(Duration::from_millis(120)).await;
    let e = pool
        .checkout(seat(&pool), wait)
        .await
        .err()
        .expect("still nothing");
    assert!(
        matches!(e, CheckoutError::Connect(ServerError::Io(_))),
        "{e:?}"
    );
    match pool
        .checkout(seat(&pool), wait)
        .await
        .err()
        .expect("backing off")
    {
        CheckoutError::Connect(ServerError::Backoff(d)) => {
            assert!(d > Duration::from_millis(100), "{d:?}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.stats().connect_failures.load(Ordering::Relaxed), 2);
    let c = pool.counts();
    assert_eq!((c.idle, c.active, c.connecting, c.waiting), (0, 0, 0, 0));
}

#[test]
fn concurrent_connects_are_bounded_and_waiters_learn_of_a_failure() {
    // Accepts and never answers: every attempt times out.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            counter.fetch_add(1, Ordering::Relaxed);
            held.push(s);
        }
    });
    block_on(bounded_connects(port, accepted));
}

async fn bounded_connects(port: u16, accepted: Arc<AtomicU64>) {
    let timeouts = PoolTimeouts {
        connect: Duration::from_millis(300),
        ..PoolTimeouts::default()
    };
    let pool = pool_at(port, 20, timeouts);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let pool = Arc::clone(&pool);
        let (tx, rx) = oneshot::channel();
        let task = async move {
            let _ = tx.send(
                pool.checkout(seat(&pool), Duration::from_secs(30))
                    .await
                    .err(),
            );
        };
        assert!(crate::runtime::spawn_local(Box::pin(task)).is_ok());
        tasks.push(rx);
    }
    sleep(Duration::from_millis(100)).await;
    let c = pool.counts();
    assert_eq!(c.connecting, CONNECT_CONCURRENCY, "{c:?}");
    assert_eq!(c.waiting, 12 - CONNECT_CONCURRENCY, "{c:?}");
    for t in tasks {
        let e = t.await.expect("join").expect("fails");
        assert!(
            matches!(
                e,
                CheckoutError::Connect(ServerError::Timeout | ServerError::Backoff(_))
            ),
            "{e:?}"
        );
    }
    // Everyone heard within about one connect timeout, not the wait.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(accepted.load(Ordering::Relaxed), CONNECT_CONCURRENCY as u64);
    let c = pool.counts();
    assert_eq!((c.active, c.connecting, c.waiting), (0, 0, 0), "{c:?}");
}

#[test]
fn a_tenant_at_its_cap_waits_while_another_gets_a_connection() {
    // Accepts and never answers: connects stay in progress.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            held.push(s);
        }
    });
    block_on(capped_tenant_waits(port));
}

async fn capped_tenant_waits(port: u16) {
    let target =
        BackendTarget::from_url(&format!("postgres://u:p@127.0.0.1:{port}/db")).expect("url");
    let timeouts = PoolTimeouts {
        connect: Duration::from_secs(5),
        ..PoolTimeouts::default()
    };
    let tenants = [("flood", 1), ("quiet", 4)].map(|(name, cap)| PoolTenant {
        name: name.into(),
        max_server_connections: cap,
    });
    let pool = PlacementPool::new(
        PlacementName("p".into()),
        target,
        4,
        1,
        timeouts,
        RolePolicy::trusted(),
        None,
        tenants.to_vec(),
    );
    let flood = pool.seat("flood").expect("seat");
    let quiet = pool.seat("quiet").expect("seat");
    assert_eq!(pool.seat("other"), None);
    let mut tasks = Vec::new();
    for seat in [flood, flood, flood, quiet] {
        let pool = Arc::clone(&pool);
        let task = async move {
            let _ = pool.checkout(seat, Duration::from_millis(500)).await;
        };
        let (abort, reg) = futures_util::future::AbortHandle::new_pair();
        let task = futures_util::future::Abortable::new(task, reg);
        assert!(
            crate::runtime::spawn_local(Box::pin(async move {
                let _ = task.await;
            }))
            .is_ok()
        );
        tasks.push(abort);
    }
    sleep(Duration::from_millis(100)).await;
    // The flood opens one (its cap) and queues two, though the pool has
    // room for three more; the quiet tenant's connect goes ahead.
    let c = pool.counts();
    assert_eq!((c.connecting, c.waiting), (2, 2), "{c:?}");
    let f = pool.tenant_counts(flood).expect("flood");
    assert_eq!((f.held, f.waiting, f.cap), (1, 2, 1), "{f:?}");
    let q = pool.tenant_counts(quiet).expect("quiet");
    assert_eq!((q.held, q.waiting), (1, 0), "{q:?}");
    // Given up: everything is handed back, nothing stays counted.
    tasks.iter().for_each(|t| t.abort());
    sleep(Duration::from_millis(50)).await;
    let c = pool.counts();
    assert_eq!((c.active, c.connecting, c.waiting), (0, 0, 0), "{c:?}");
    for seat in [flood, quiet] {
        let t = pool.tenant_counts(seat).expect("counts");
        assert_eq!((t.held, t.waiting), (0, 0), "{t:?}");
    }
}

/// The startup messages encoded once are the ones a login would frame.
#[test]
fn startup_messages_are_encoded_per_parameter() {
    let list: Arc<[(String, String)]> = vec![
        ("server_version".to_owned(), "15.18".to_owned()),
        ("DateStyle".to_owned(), "ISO, MDY".to_owned()),
        ("application_name".to_owned(), String::new()),
    ]
    .into();
    let p = StartupParams::new(Arc::clone(&list));
    for (i, (name, value)) in list.iter().enumerate() {
        let mut want = bytes::BytesMut::new();
        crate::protocol::messages::parameter_status(&mut want, name, value);
        assert_eq!(p.message(i), &want[..], "{name}");
    }
}

/// A server that accepts and never says a word: a login to it stays in
/// progress until the connect timeout.
fn silent_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            held.push(s);
        }
    });
    port
}

/// Within `[at, at + 10 ms)`: a paused clock moves to a timer's
/// millisecond, never short of it.
fn assert_at(took: Duration, at: Duration) {
    assert!(
        took >= at && took < at + Duration::from_millis(10),
        "{took:?}, not {at:?}"
    );
}

/// query_wait_timeout and server_connect_timeout on a paused clock: the
/// pool's one slot is a login nobody answers; a second checkout gives up
/// at its wait, the login at the connect timeout, each to the millisecond
/// and in no wall-clock time (the server's silence needs no real time).
#[test]
fn a_waiter_gives_up_at_its_wait_and_a_silent_login_at_the_connect_timeout() {
    let port = silent_server();
    block_on_paused(async move {
        let timeouts = PoolTimeouts {
            connect: Duration::from_secs(30),
            ..PoolTimeouts::default()
        };
        let pool = pool_at(port, 1, timeouts);
        let opened = tokio::time::Instant::now();
        let (tx, rx) = oneshot::channel();
        let opener = {
            let pool = Arc::clone(&pool);
            async move {
                let e = pool.checkout(seat(&pool), Duration::from_secs(600)).await;
                let _ = tx.send((e.err(), tokio::time::Instant::now()));
            }
        };
        assert!(crate::runtime::spawn_local(Box::pin(opener)).is_ok());
        sleep(Duration::from_millis(1)).await;
        assert_eq!(pool.counts().connecting, 1);
        let asked = tokio::time::Instant::now();
        let e = pool
            .checkout(seat(&pool), Duration::from_secs(5))
            .await
            .err()
            .expect("no connection for the waiter");
        assert!(matches!(e, CheckoutError::WaitTimeout), "{e:?}");
        assert_at(asked.elapsed(), Duration::from_secs(5));
        assert_eq!(pool.counts().waiting, 0);
        let (e, failed_at) = rx.await.expect("the opener reports");
        assert!(
            matches!(e, Some(CheckoutError::Connect(ServerError::Timeout))),
            "{e:?}"
        );
        assert_at(failed_at - opened, Duration::from_secs(30));
        let c = pool.counts();
        assert_eq!((c.active, c.connecting, c.waiting), (0, 0, 0), "{c:?}");
    });
}

/// A session boxes the checkout it waits on (`session::lease`): opening a
/// connection and checking it are boxed apart inside it, so that box is
/// the wait's own state, not a connect's.
#[test]
fn a_checkout_future_is_small() {
    let pool = pool_at(closed_port(), 1, PoolTimeouts::default());
    let size = std::mem::size_of_val(&pool.checkout(seat(&pool), Duration::from_secs(1)));
    println!("a checkout's future: {size} bytes");
    assert!(size <= 512, "{size} bytes");
}
