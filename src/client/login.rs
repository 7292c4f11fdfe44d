//! A login, from the StartupMessage to who the client is: the admin
//! console, or a tenant's user or an operator authenticated, admitted
//! under the client limits and sent its ParameterStatus set.

use super::{admin, auth, login_limit, operator, startup_phase};
use crate::admission::Unauthenticated;
use crate::admission::failed_logins::Who;
use crate::config::AuthType;
use crate::protocol::messages;
use crate::protocol::startup::Startup;
use crate::routing::{self, RoutingInput};
use crate::runtime::time;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use crate::session::{self, params};
use crate::state::{CountGuard, ProxyState, Snapshot};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Who logged in: a tenant's (or operator's) client, or an admin.
pub(super) enum LoggedIn {
    Tenant(Box<Login>),
    Console(admin::ConsoleLogin),
}

/// What a successful login leaves behind.
pub(super) struct Login {
    /// The user name it authenticated as (SHOW CLIENTS).
    pub(super) user: String,
    /// The tenant (for an operator: the tenant it named, or
    /// `operator::ALL_TENANTS`).
    pub(super) tenant: Arc<crate::catalog::TenantEntry>,
    /// The pool the session leases from: the tenant's placement's, or
    /// the operators' pool of the operator's placement.
    pub(super) pool: Arc<crate::pool::PlacementPool>,
    /// Whose client and pin counters this connection takes.
    pub(super) counter: crate::routing::TenantId,
    pub(super) wanted: Vec<(String, String)>,
    /// The ParameterStatus set the client was sent.
    pub(super) reported: params::Reported,
    /// The tenant's (or operator's) place at `pool`.
    pub(super) seat: crate::pool::TenantSeat,
    /// An operator's connection: logged at its start and end.
    pub(super) audit: Option<operator::Audit>,
    pub(super) follows: session::Follows,
    /// `Controls::kill_count` when the tenant was known.
    pub(super) kills_seen: u64,
    pub(super) _guards: [CountGuard; 2],
}

/// Who authenticated, before the common part of a login.
struct Identity {
    user: String,
    tenant: Arc<crate::catalog::TenantEntry>,
    pool: Arc<crate::pool::PlacementPool>,
    seat: Option<crate::pool::TenantSeat>,
    counter: crate::routing::TenantId,
    client_limit: u32,
    settings: Vec<(String, String)>,
    audit: Option<operator::Audit>,
    follows: session::Follows,
}

// Each argument is one part of the connection so far.
#[allow(clippy::too_many_arguments)]
pub(super) async fn login(
    state: &ProxyState,
    snap: &Snapshot,
    client: &mut ClientConn,
    startup: &Startup,
    (peer, relayed_name): (SocketAddr, Option<&str>),
    login_deadline: Instant,
    unauthenticated: &mut Option<Unauthenticated>,
) -> Result<LoggedIn, ClientError> {
    // Newer 3.x minor versions and unknown `_pq_.` options: say what we
    // speak instead of refusing (protocol docs, NegotiateProtocolVersion).
    let unknown: Vec<&str> = startup
        .params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if startup.minor > 0 || !unknown.is_empty() {
        messages::negotiate_protocol_version(&mut client.out, &unknown);
    }
    if let Some(r) = startup.param("replication")
        && !matches!(r, "false" | "off" | "no" | "0")
    {
        return Err(ClientError::NotSupported(
            "replication connections are not supported through pgtenant".into(),
        ));
    }
    let user = startup
        .param("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ClientError::Protocol("no user name in the startup packet".into()))?;
    // Recorded as a string field: both log formats quote and escape it,
    // so a crafted name cannot forge a line.
    crate::log_context::set_user(user);

    // Database `pgtenant` is the admin console whatever else the client
    // sent (no tenant may have that name); no admin reaches a placement.
    if startup.param("database") == Some(crate::config::ADMIN_DATABASE) {
        crate::log_context::set_tenant(crate::config::ADMIN_DATABASE);
        let who = Who::admin(user);
        // Made in place and boxed, as the operator's below: rare, and
        // large (a future first held in a local would take room twice).
        return Box::pin(login_limit::limited(
            (state, snap),
            peer.ip(),
            who,
            admin::login(
                state,
                snap,
                client,
                user,
                peer,
                login_deadline,
                unauthenticated,
            ),
        ))
        .await
        .map(LoggedIn::Console);
    }

    let route = routing::route(
        &snap.rules,
        &RoutingInput {
            // The TLS handshake's own server name; on a connection a
            // balancer decrypted, the one the client asked it for.
            sni: client.stream.server_name().or(relayed_name),
            user,
            database: startup.param("database"),
            options: startup.param("options"),
        },
        |name| snap.catalog.contains(name),
    )?;
    // From here the connection is its tenant's: a KILL of the tenant
    // while it logs in closes it too (`start_session`).
    let kills_seen = state.controls.kill_count();
    let id = match route {
        routing::Route::Tenant(resolved) => {
            let who = Who::tenant_user(resolved.tenant.as_str(), &resolved.user);
            // Made in place: held in a local first, it would take room
            // twice in this future.
            login_limit::limited(
                (state, snap),
                peer.ip(),
                who,
                tenant_login(state, snap, client, resolved, login_deadline),
            )
            .await?
        }
        routing::Route::Operator(route) => {
            crate::log_context::set_operator(route.operator.as_str());
            if let Some(t) = &route.tenant {
                crate::log_context::set_tenant(t.as_str());
            }
            let who = Who::operator(&route.operator);
            let op = Box::pin(login_limit::limited(
                (state, snap),
                peer.ip(),
                who,
                operator::login(snap, client, &route, peer, login_deadline),
            ))
            .await?;
            Identity {
                user: route.operator.clone(),
                tenant: op.tenant,
                pool: op.pool,
                seat: Some(op.seat),
                counter: op.counter,
                client_limit: snap.config.proxy.default_tenant_max_client_connections,
                follows: session::Follows::Operator(Box::new(session::OperatorOn {
                    placement: route.placement.clone(),
                    operator: route.operator.clone(),
                })),
                settings: route.settings,
                audit: Some(op.audit),
            }
        }
    };
    let tenant = id.tenant;
    // Counted only once authenticated, so that nobody who merely knows a
    // tenant's name can hold these slots with stalled handshakes: until
    // now the connection counted against the unauthenticated caps only.
    let proxy_guard = state
        .admit_client(snap.config.proxy.max_client_connections)
        .ok_or(ClientError::ProxyFull)?;
    let tenant_guard = state
        .admit_tenant_client(&id.counter, id.client_limit)
        .ok_or_else(|| ClientError::TenantFull(tenant.id.clone()))?;
    *unauthenticated = None;
    messages::auth_ok(&mut client.out);

    // The tenant's schema comes first, as if the client had sent it at
    // startup: the client's own startup value or `-c` option replaces it,
    // and RESET returns to it (`Session::startup_settings`).
    let mut wanted = Vec::new();
    if let Some(path) = &tenant.search_path {
        params::upsert(&mut wanted, "search_path", path);
    }
    for (k, v) in startup
        .params
        .iter()
        .filter(|(k, _)| params::is_setting(k))
        .chain(id.settings.iter())
    {
        if !params::valid_name(k) {
            return Err(ClientError::Protocol(format!(
                "invalid parameter name {k:?}"
            )));
        }
        params::upsert(&mut wanted, k, v);
    }
    startup_phase::canonical_client_encoding(&mut wanted)?;

    // One without a seat is refused rather than let in uncounted.
    let seat = id
        .seat
        .ok_or_else(|| ClientError::PlacementUnreachable(tenant.id.clone()))?;
    let server_params = id
        .pool
        .startup_params(seat, snap.config.proxy.query_wait_timeout)
        .await
        .map_err(|e| session::checkout_error(&tenant, e))?;
    let mut reported = params::Reported::new(Arc::clone(&server_params.list));
    for (i, (name, server_value)) in server_params.list.iter().enumerate() {
        match wanted.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some((_, value)) if value != server_value => {
                messages::parameter_status(&mut client.out, name, value);
                reported.set(name, value);
            }
            _ => client.out.extend_from_slice(server_params.message(i)),
        }
    }
    tracing::debug!("authenticated");
    Ok(LoggedIn::Tenant(Box::new(Login {
        user: id.user,
        tenant,
        pool: id.pool,
        counter: id.counter,
        wanted,
        reported,
        seat,
        audit: id.audit,
        follows: id.follows,
        kills_seen,
        _guards: [proxy_guard, tenant_guard],
    })))
}

/// A tenant user's login: the tenant, its user's password, its pool.
async fn tenant_login(
    state: &ProxyState,
    snap: &Snapshot,
    client: &mut ClientConn,
    resolved: routing::Resolved,
    login_deadline: Instant,
) -> Result<Identity, ClientError> {
    crate::log_context::set_tenant(resolved.tenant.as_str());
    let tenant = snap
        .catalog
        .get(resolved.tenant.as_str())
        .cloned()
        .ok_or_else(|| ClientError::UnknownTenant(resolved.tenant.clone()))?;
    if snap.config.proxy.auth_type == AuthType::ScramSha256 {
        let login = tenant.users.get(&resolved.user);
        let cert = auth::certificate_check(client, login);
        if !cert.suffices(login) {
            // Boxed: the exchange's state would otherwise be part of
            // every login's future, copied at each step even under trust.
            time::timeout_at(
                login_deadline,
                Box::pin(auth::scram_sha_256(
                    client,
                    &snap.catalog,
                    &tenant,
                    &resolved.user,
                )),
            )
            .await
            .map_err(|_| ClientError::LoginTimeout)??;
        }
        if cert == auth::CertCheck::Failed {
            tracing::info!(
                user = %resolved.user,
                presented = client.stream.peer_certificate().is_some(),
                "login refused: the user logs in by client certificate, and none naming it was presented"
            );
            return Err(ClientError::AuthFailed {
                user: resolved.user.clone(),
                tenant: tenant.id.clone(),
            });
        }
    }
    // Belt and braces after SCRAM (an unknown user's exchange is doomed
    // already); the whole check under trust.
    if !tenant.users.contains_key(&resolved.user) {
        return Err(ClientError::AuthFailed {
            user: resolved.user.clone(),
            tenant: tenant.id.clone(),
        });
    }
    // Checked once authenticated, so that only the tenant's own users
    // learn it is suspended.
    if tenant.suspended || state.controls.is_suspended(&tenant.id) {
        return Err(ClientError::Suspended(tenant.id.clone()));
    }
    let placement = snap
        .placements
        .get(&tenant.placement)
        .ok_or_else(|| ClientError::PlacementUnreachable(tenant.id.clone()))?;
    // Every line this connection logs says where its tenant lives.
    crate::log_context::set_placement(tenant.placement.as_str(), placement.isolation.as_str());
    // Every catalog tenant has a seat at its placement's pool
    // (`Snapshot::build`); one without is refused rather than let in
    // uncounted.
    let seat = placement.pool.seat(tenant.id.as_str());
    tracing::debug!(user = %resolved.user, source = resolved.source.as_str(), "tenant user");
    Ok(Identity {
        user: resolved.user.clone(),
        counter: tenant.id.clone(),
        client_limit: tenant
            .max_client_connections
            .unwrap_or(snap.config.proxy.default_tenant_max_client_connections),
        pool: Arc::clone(&placement.pool),
        seat,
        settings: resolved.settings,
        audit: None,
        follows: session::Follows::Tenant,
        tenant,
    })
}
