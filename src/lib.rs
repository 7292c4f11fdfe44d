//! pgtenant: a PostgreSQL wire-protocol proxy for multi-tenant SaaS.
//!
//! Module map (`->` = may call; nothing calls back up, which
//! `tests/module_walls.rs` checks):
//! - `config`: the TOML file's shape, defaults and validation (a leaf).
//! - `protocol`: framing with length caps, startup packets, the messages
//!   the proxy writes, ErrorResponse and SQLSTATEs (pure).
//! - `routing`: which tenant a connection names (pure).
//! - `credentials`: SCRAM verifiers and the server side of the exchange
//!   (sans-IO), the authentication secret. `credentials -> config`.
//! - `catalog`: tenants, their placement, users and limits (a snapshot).
//! - `pool`: server connections, the per-placement pool and its janitor.
//!   Names no session type: what the session keeps with a connection or
//!   a placement is opaque to it (`pool::Carried`).
//! - `session`: one client's lease/forward/release loop, settings that
//!   follow the client, cancel keys. `session -> pool, protocol`.
//! - `client`: accept-side handshake, routing and auth, then a session.
//!   `client -> routing, catalog, session`.
//! - `state`: what all connections share (config snapshot, registries).
//! - `control`: per-tenant control state (paused, suspended) and what
//!   SHOW CLIENTS lists; sessions check it before each lease.
//! - `admin`: the operator-facing side; `admin::console` is the admin
//!   console on database `pgtenant` (SHOW, PAUSE, RESUME, SUSPEND, KILL).
//!   `client -> admin -> state, control`.
//! - `reload`: live reload of the config file (SIGHUP, RELOAD,
//!   `POST /reload`). `reload -> state, pool, config`.
//! - `admission`: counts connections from accept until they
//!   authenticate (a total and a per-address cap).
//! - `open_files`: `RLIMIT_NOFILE`, raised at start and checked against
//!   the configured limits.
//! - `runtime`: the data-plane worker threads: each one's event loop
//!   (epoll, timers, sockets) and the set of sessions it runs.
//!   Calls nothing else in the crate: what an accepted socket becomes
//!   (`client::accept`) is a handler `run` gives it.
//! - `metrics`: per-tenant counters sessions bump, the bounded series
//!   set (top-K tenants and `_other`) and its Prometheus text; SHOW STATS
//!   figures.
//! - `admin`: operators' interfaces; `admin::http` serves `/metrics` and
//!   `/healthz` on `admin.listen` (control runtime).
//! - `log_context`: who a client connection is (id, peer, user, tenant,
//!   placement), added to the lines it logs; a leaf.
//! - `pgcluster`: a throwaway PostgreSQL for `pgtenant demo` and tests;
//!   `provision`: a tenant database with its own backend role on it.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admin;
pub mod admission;
pub mod catalog;
pub mod client;
pub mod config;
pub mod control;
pub mod credentials;
pub mod demo;
pub mod log_context;
pub mod metrics;
pub mod open_files;
pub mod pgcluster;
pub mod pool;
pub mod protocol;
pub mod provision;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod sys;
pub mod tls;

use anyhow::Context;
use config::{Config, ConfigSource};
use state::{ProxyState, Snapshot};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs the proxy on an already bound listener until `shutdown` is
/// cancelled, then stops accepting, lets sessions finish their current
/// transaction for up to `shutdown_timeout`, and returns.
///
/// Spawns the data-plane worker threads itself, so it may be awaited from
/// any runtime (tests run it in-process on port 0).
pub async fn run(
    config: Config,
    source: ConfigSource,
    listener: std::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(config, source, listener, shutdown, None, |_| {}).await
}

/// [`run`] for a proxy started from the file `config_path` (what
/// [`reload::reload`] re-reads); `started` gets the shared state once it
/// exists (for SIGHUP, the admin console, tests).
pub async fn run_with(
    config: Config,
    source: ConfigSource,
    listener: std::net::TcpListener,
    shutdown: CancellationToken,
    config_path: Option<std::path::PathBuf>,
    started: impl FnOnce(&Arc<ProxyState>),
) -> anyhow::Result<()> {
    let workers = runtime::worker_count(config.proxy.workers);
    let grace = config.proxy.shutdown_timeout;
    let options = runtime::LoopOptions {
        batch_sends: config.proxy.io_uring,
    };
    raise_open_files_limit(&config);
    let snapshot = Snapshot::build(config, &source, workers).map_err(anyhow::Error::new)?;
    // The file's text (a large config's tenants, plaintext passwords
    // included) is not needed once built.
    drop(source);
    let mut tenants: std::collections::HashMap<&str, usize> = Default::default();
    for t in snapshot.catalog.iter() {
        *tenants.entry(t.placement.as_str()).or_default() += 1;
    }
    for (name, p) in &snapshot.placements {
        tracing::info!(
            placement = %name,
            isolation = p.isolation.as_str(),
            tenants = tenants.get(name.as_str()).copied().unwrap_or(0),
            "placement configured"
        );
    }
    tracing::debug!(bytes = client::future_size(), "the future of one client");
    let admin = snapshot.config.admin.clone();
    let mut state = ProxyState::new(snapshot, workers, shutdown.clone());
    state.config_path = config_path;
    let state = Arc::new(state);
    started(&state);
    listener.set_nonblocking(true)?;
    // `/metrics` and `/healthz`: up before the workers accept, and until
    // they have drained (`/healthz` says 503 from the start of shutdown).
    let http_stop = CancellationToken::new();
    let _http_stop_guard = http_stop.clone().drop_guard();
    if let Some(admin) = admin
        && let Some(addr) = &admin.listen
    {
        let http = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on admin.listen {addr}"))?;
        tracing::info!("admin HTTP on {addr}");
        tokio::spawn(admin::http::serve(
            http,
            Arc::clone(&state),
            http_stop.clone(),
        ));
    }
    {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            state.shutdown.cancelled().await;
            state.stop.stop();
        });
    }

    // Idle and lifetime limits of server connections; stops at shutdown.
    let janitor = {
        let state = Arc::clone(&state);
        pool::janitor::spawn(move || state.snapshot().pools(), shutdown.clone())
            .context("starting the janitor thread")?
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tracing::info!(
        workers,
        batch_sends = options.batch_sends,
        os_calls = sys::FLAVOUR,
        "starting the data plane"
    );
    // The runtime accepts; what a socket becomes is decided here.
    let on_accept: runtime::AcceptHandler = {
        let state = Arc::clone(&state);
        Arc::new(move |stream, peer| client::accept::accept(&state, stream, peer))
    };
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let listener = listener.try_clone().context("cloning the listener")?;
        let on_accept = Arc::clone(&on_accept);
        let shutdown = state.shutdown.clone();
        let handle = std::thread::Builder::new()
            .name(format!("pgtenant-worker-{id}"))
            .spawn(move || {
                runtime::worker_main(id, listener, on_accept, shutdown, (grace, options))
            })
            .context("starting a worker thread")?;
        handles.push(handle);
    }
    // Only the workers' clones may keep the socket open: once they stop
    // accepting, new connections must be refused, not queued.
    drop(listener);
    std::thread::spawn(move || {
        let mut result = Ok(());
        if janitor.join().is_err() {
            result = Err(anyhow::anyhow!("the janitor thread panicked"));
        }
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(anyhow::anyhow!("a worker thread panicked")),
            }
        }
        let _ = done_tx.send(result);
    });
    done_rx.await.context("worker threads vanished")?
}

/// Raises `RLIMIT_NOFILE` to its hard limit, logs the figure, and warns
/// when the configured limits may need more (the proxy still starts: the
/// caps, not the descriptor limit, should be what refuses clients, but an
/// operator may knowingly run with fewer).
fn raise_open_files_limit(config: &Config) {
    let limit = match open_files::raise_to_hard() {
        Ok((before, after)) => {
            if after.soft > before.soft {
                tracing::info!(
                    "open files limit raised from {} to {} (the hard limit)",
                    before.soft,
                    after.soft
                );
            } else {
                tracing::info!("open files limit: {}", after.soft);
            }
            after.soft
        }
        Err(e) => {
            tracing::warn!("cannot raise the open files limit: {e}");
            match open_files::current() {
                Ok(l) => l.soft,
                Err(_) => return,
            }
        }
    };
    if let Some(warning) = open_files::shortfall(config, limit) {
        tracing::warn!("{warning}");
    }
}
