//! The client side of a connection: the startup handshake (encryption
//! requests, cancel requests, StartupMessage), the login (`login`: tenant
//! resolution, authentication, limits), and the hand-over to a
//! [`Session`].
//!
//! Every refusal goes through [`ClientConn::refuse`], once, here; only
//! the accept loop's, which must not wait, use
//! [`accept::refuse_at_accept`].

pub mod accept;
pub mod admin;
pub mod auth;
pub mod conn;
mod login;
mod login_limit;
pub mod operator;
mod proxy_header;
mod startup_phase;
#[cfg(test)]
mod timeout_tests;

use crate::admission::Unauthenticated;
use crate::protocol::messages;
use crate::runtime::net::Socket;
use crate::runtime::time;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use crate::session::{self, Session, params};
use crate::state::{CountGuard, ProxyState, Snapshot};
use login::{LoggedIn, Login};
use std::net::SocketAddr;
use std::sync::Arc;

/// Serves one accepted connection to its end. Never panics on client
/// input; every failure the client can be told about is told.
/// `unauthenticated` counts the connection until it authenticates (or,
/// if it never does, until it is closed).
///
/// Not an `async fn`: the future holds each of its parts once (an async
/// fn's arguments would take room beside what is made of them).
pub fn serve(
    state: Arc<ProxyState>,
    stream: Socket,
    peer: SocketAddr,
    unauthenticated: Unauthenticated,
) -> impl std::future::Future<Output = ()> + Send {
    let conn = crate::control::next_client_id();
    // The generation first: a reload between the two reads is followed
    // at the session's first lease.
    let generation = state.stop.generation();
    let snap = state.snapshot();
    // A trusted balancer's connection names its client only in its PROXY
    // header: until then the log says the balancer is `via`, not `peer`.
    let relayed = proxy_header::trusted(&snap.config.proxy, peer);
    let _ = stream.set_nodelay(true);
    let mut client = ClientConn::new(stream.into(), snap.config.proxy.max_message_size.0 as usize);
    let mut unauthenticated = Some(unauthenticated);
    // Every line logged while it runs names the connection (not a span:
    // see `log_context`).
    crate::log_context::with_log(conn, peer, relayed, async move {
        let mut stats = None;
        let outcome = serve_inner(
            &state,
            (&snap, generation),
            &mut client,
            (peer, conn),
            &mut unauthenticated,
            &mut stats,
        )
        .await;
        // Bytes read since the last lease (between transactions, the
        // request that never got one).
        if let Some(s) = &stats {
            s.add_bytes(client.flow.take_bytes_read(), 0);
        }
        if let Some(refusal) = refusal(&state, &snap, stats.as_deref(), &mut client, outcome) {
            refusal.await;
        }
    })
}

/// Bytes of the future that serves one client ([`serve`]): what an idle
/// client costs its worker besides its socket and registrations. Logged
/// at startup; a test bounds it.
pub fn future_size() -> usize {
    fn output_size<A, B, C, D, F>(_: impl FnOnce(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    output_size(serve)
}

/// The `application_name` a client started with (SHOW CLIENTS).
fn startup_application_name(wanted: &[(String, String)]) -> Option<String> {
    wanted
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("application_name"))
        .map(|(_, v)| v.clone())
}

/// What ends a connection that failed: `e` counted, and the future that
/// tells the client. Boxed with the error, and made apart from `serve`'s
/// future: held there across a wait, either would take room in every
/// client's future (idle ones too), beside the session's.
fn refusal<'c>(
    state: &ProxyState,
    snap: &Snapshot,
    stats: Option<&crate::metrics::TenantStats>,
    client: &'c mut ClientConn,
    outcome: Result<(), ClientError>,
) -> Option<std::pin::Pin<Box<impl std::future::Future<Output = ()> + Send + 'c>>> {
    let e = outcome.err()?;
    count_error(state, snap, stats, &e);
    Some(Box::pin(async move { client.refuse(&e).await }))
}

/// Counts `e` for the tenant the connection logged in as, else the one
/// the error names (only a configured one: names a client made up never
/// get counters), else under `_unknown`.
fn count_error(
    state: &ProxyState,
    snap: &Snapshot,
    stats: Option<&crate::metrics::TenantStats>,
    e: &ClientError,
) {
    let Some(kind) = e.metric_kind() else {
        return;
    };
    match (stats, e.tenant()) {
        (Some(s), _) => s.error(kind),
        (None, Some(t)) if snap.catalog.contains(t.as_str()) => state.metrics.tenant(t).error(kind),
        _ => state.metrics.unknown.error(kind),
    }
}

/// Not an `async fn`: its arguments are taken into the future once.
#[allow(clippy::manual_async_fn)]
fn serve_inner<'a>(
    state: &'a Arc<ProxyState>,
    (snap, generation): (&'a Arc<Snapshot>, u64),
    client: &'a mut ClientConn,
    (mut peer, conn): (SocketAddr, u64),
    unauthenticated: &'a mut Option<Unauthenticated>,
    stats: &'a mut Option<Arc<crate::metrics::TenantStats>>,
) -> impl std::future::Future<Output = Result<(), ClientError>> + Send + 'a {
    async move {
        let proxy = &snap.config.proxy;
        // Both limits count from accept: the startup packet within
        // client_startup_timeout, authentication within client_login_timeout.
        // What the client cannot stall (waiting for the placement's first
        // server connection) has its own bound, query_wait_timeout. Shutdown
        // abandons a login at any point: nothing has started that must finish.
        let login_deadline = time::now() + proxy.client_login_timeout;
        let startup_limit = proxy.client_startup_timeout.min(proxy.client_login_timeout);
        // Boxed: the handshake and authentication states (SCRAM's among
        // them) are a large part of a client's future, and once logged in
        // a client carries none of them (one allocation per connection).
        // A balancer's PROXY header said it ended the client's TLS.
        let mut relayed_tls = false;
        let login = Box::pin(async {
            // A load balancer's PROXY header first: from here on `peer`
            // is the client it names.
            let mut relayed_name = None;
            let first = time::timeout(startup_limit, async {
                let who = proxy_header::identify(client, peer, proxy, unauthenticated).await?;
                (peer, relayed_name, relayed_tls) = (who.client, who.server_name, who.client_tls);
                startup_phase::handshake(client, snap.tls.as_deref(), relayed_tls).await
            })
            .await
            .map_err(|_| ClientError::StartupTimeout)??;
            let startup = match first {
                startup_phase::First::Startup(s) => s,
                startup_phase::First::Cancel(key) => {
                    time::timeout_at(login_deadline, state.cancels.cancel(key))
                        .await
                        .map_err(|_| ClientError::LoginTimeout)?;
                    return Ok(None); // nothing more to say
                }
            };
            login::login(
                state,
                snap,
                client,
                &startup,
                (peer, relayed_name.as_deref()),
                login_deadline,
                unauthenticated,
            )
            .await
            .map(Some)
        });
        let login = tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => Err(ClientError::NotAccepting),
            r = login => r,
        };
        let login = match login? {
            None => return Ok(()),
            Some(LoggedIn::Console(console)) => {
                let tls = tls_description(client, relayed_tls);
                // Boxed: a tenant client's future need not be as large.
                let serve = crate::admin::console::serve(state, client, console, (conn, tls));
                return Box::pin(serve).await;
            }
            Some(LoggedIn::Tenant(login)) => login,
        };

        // Resolved once; the session only bumps atomics in it.
        let tenant_stats = if login.audit.is_some() {
            state.metrics.operators()
        } else {
            state.metrics.tenant(&login.tenant.id)
        };
        *stats = Some(Arc::clone(&tenant_stats));
        let registration = state.cancels.register();
        messages::backend_key_data(
            &mut client.out,
            registration.key.pid,
            registration.key.secret,
        );
        messages::ready_for_query(&mut client.out, b'I');
        client
            .flush_out()
            .await
            .map_err(|e| ClientError::Protocol(format!("connection lost: {e}")))?;
        // Nothing more of the proxy's own is written until the end
        // (`refuse`): a logged-in client keeps no write buffer.
        client.out = bytes::BytesMut::new();
        tracing::debug!("client ready");
        let (mut session, audit, _guards) = start_session(
            state,
            (snap, generation),
            login,
            &registration,
            &tenant_stats,
            (peer, conn, tls_description(client, relayed_tls)),
        );
        drop(tenant_stats);
        let outcome = session.run(client).await;
        drop(session);
        if let Some(audit) = &audit {
            audit.ended(&outcome);
        }
        outcome
    }
}

/// SHOW CLIENTS' `tls` for this connection: its own TLS, or a balancer's
/// word that it ended the client's.
fn tls_description(client: &ClientConn, relayed_tls: bool) -> Option<String> {
    client
        .stream
        .tls_description()
        .or_else(|| relayed_tls.then(|| crate::control::RELAYED_TLS.to_string()))
}

/// The session of a logged-in client, and what must outlive it (the
/// operator audit, the connection-count guards). Not async: the login
/// moves into the session without taking room in the client's future.
fn start_session<'a>(
    state: &'a Arc<ProxyState>,
    (snap, generation): (&'a Snapshot, u64),
    login: Box<Login>,
    registration: &'a session::cancel::Registration<'_>,
    tenant_stats: &Arc<crate::metrics::TenantStats>,
    (peer, conn, tls): (SocketAddr, u64, Option<String>),
) -> (Session<'a>, Option<Box<operator::Audit>>, [CountGuard; 2]) {
    let Login {
        user,
        tenant,
        pool,
        counter,
        wanted,
        reported,
        seat,
        audit,
        follows,
        kills_seen,
        _guards,
    } = *login;
    if let Some(audit) = &audit {
        audit.connected();
    }
    let proxy = &snap.config.proxy;
    let application_name = startup_application_name(&wanted);
    let session = Session {
        config: proxy,
        stats: tenant_stats.session(),
        seat,
        mode: snap.pool_mode(),
        cancel: &registration.slot,
        client_pid: registration.key.pid,
        controls: &state.controls,
        startup_settings: wanted.clone(),
        wanted: params::interned(wanted),
        reported,
        custom_settings: Vec::new(),
        walk_again_at: 0,
        statement_limits: crate::session::budget::StatementLimits {
            max_statement: proxy.max_statement_size.0 as usize,
            max_total: proxy.max_client_memory.0 as usize,
        },
        statements: session::statements::ClientStatements::in_namespace(tenant.search_path.clone()),
        pins: &state.pins,
        pin_slots: state.tenant_pins(&counter),
        max_pins: tenant
            .max_pinned_connections
            .unwrap_or((pool.counts().max as u32 / 2).max(1)),
        pin_guard: None,
        state,
        follows,
        ending: None,
        skip_request: None,
        stop: state.stop.subscribe_client(
            Some(
                crate::control::ClientInfo::new(conn, counter, user, peer, application_name, false)
                    .with_tls(tls),
            ),
            generation,
        ),
        tenant,
        pool,
    };
    // A KILL of the tenant while this client logged in signalled the
    // sessions subscribed then, not this one: it goes with them.
    if let Some(c) = session.stop.client()
        && state.controls.killed_since(&c.tenant, kills_seen)
    {
        session.stop.signal(crate::shutdown::reason::KILL);
    }
    // Boxed: only operators have one, and every client's future holds it.
    (session, audit.map(Box::new), _guards)
}

#[cfg(test)]
mod tests {
    /// An idle client's future holds no login, lease or pump state: those
    /// are boxed while they run, and neither a timer (`LazyTimer`) nor the
    /// proxy settings (read from the login's snapshot). The bound is an
    /// allocator size class (mimalloc's 1.75 kB; 1,640 bytes measured in
    /// a release build).
    #[test]
    fn a_client_future_is_small() {
        let size = super::future_size();
        println!("a client's future: {size} bytes");
        assert!(size <= 1792, "{size} bytes");
    }
}
