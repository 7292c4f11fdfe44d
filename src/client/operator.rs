//! A platform operator's login (`options=operator=PLACEMENT`, user = the
//! operator's name): authenticated against `[operators.*]` through the
//! same SCRAM exchange, caps and failure shape as a tenant user's, then
//! served from the placement's operators' pool (its own backend role,
//! never the tenants' pool), and logged at warn level from start to end.
//!
//! Every lease of that pool starts with the tenant context call, like a
//! tenant's: for the tenant the operator named with `tenant=T`, else for
//! [`ALL_TENANTS`], which no tenant can be. Policies for the operators'
//! role grant rows by that value (README, "Operator access"), so a
//! connection of that role without a context (one that bypassed the
//! proxy and its log) sees no rows, and a connection that named a tenant
//! cannot widen itself to the others: it has no key to enter another.

use super::auth;
use crate::catalog::{OperatorCheck, TenantEntry};
use crate::config::AuthType;
use crate::pool::{PlacementPool, TenantSeat};
use crate::routing::{OperatorRoute, TenantId};
use crate::runtime::time;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use crate::state::Snapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The context an operator's lease enters when it names no tenant: `*`
/// is in no tenant's name (config names are letters, digits, '_', '-').
pub const ALL_TENANTS: &str = "*";

/// An authenticated operator, ready for its session.
pub struct Admitted {
    /// What the session runs as: the named tenant (whose context each
    /// lease enters) or [`ALL_TENANTS`], on the operator's placement.
    pub tenant: Arc<TenantEntry>,
    pub pool: Arc<PlacementPool>,
    pub seat: TenantSeat,
    /// Counts the operator's connections and pins apart from any tenant's.
    pub counter: TenantId,
    pub audit: Audit,
}

/// Who connected, from where, to what: logged when the session starts
/// and when it ends.
pub struct Audit {
    operator: String,
    peer: SocketAddr,
    placement: String,
    tenant: Option<TenantId>,
    started: Instant,
}

impl Audit {
    fn tenant(&self) -> &str {
        self.tenant.as_ref().map_or("all tenants", |t| t.as_str())
    }

    /// The session starts.
    pub fn connected(&self) {
        tracing::warn!(
            operator = %self.operator,
            client = %self.peer,
            placement = %self.placement,
            tenant = self.tenant(),
            "operator connected"
        );
    }

    /// The session is over, with `outcome`.
    pub fn ended(&self, outcome: &Result<(), ClientError>) {
        let secs = self.started.elapsed().as_secs_f64();
        let outcome = match outcome {
            Ok(()) => "closed".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            operator = %self.operator,
            client = %self.peer,
            placement = %self.placement,
            tenant = self.tenant(),
            seconds = format_args!("{secs:.3}"),
            outcome = %outcome,
            "operator disconnected"
        );
    }
}

/// Authenticates `route.operator` for `route.placement` and finds its
/// seat at the operators' pool. An unknown operator, a wrong password
/// and a placement not in the operator's list all fail alike (28P01,
/// after a whole exchange); the log says which.
pub async fn login(
    snap: &Snapshot,
    client: &mut ClientConn,
    route: &OperatorRoute,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<Admitted, ClientError> {
    let pool = snap
        .placements
        .get(&route.placement)
        .and_then(|p| p.operators.as_ref());
    let check = match snap
        .catalog
        .operator_check(&route.operator, &route.placement)
    {
        // Config validation makes every listed placement have a pool;
        // one without fails like an unlisted one.
        OperatorCheck::Allowed(v) if pool.is_none() => {
            OperatorCheck::PlacementNotListed(v.doomed_like())
        }
        check => check,
    };
    let fail = || ClientError::OperatorAuthFailed {
        operator: route.operator.clone(),
    };
    let authenticated = match snap.config.proxy.auth_type {
        AuthType::ScramSha256 => {
            time::timeout_at(deadline, auth::exchange(client, check.verifier(), fail))
                .await
                .map_err(|_| ClientError::LoginTimeout)
                .and_then(|r| r)
        }
        AuthType::Trust => Ok(()),
    };
    // An operator with a certificate identity needs that certificate
    // too (after the exchange, so a missing one fails as a wrong password
    // does); not checked under trust, as nothing is.
    let cert_failed = snap.config.proxy.auth_type == AuthType::ScramSha256
        && check.allowed()
        && snap
            .catalog
            .operator_cert(&route.operator)
            .is_some_and(|id| !auth::presents(client, id));
    let exchange_passed = authenticated.is_ok();
    // Belt and braces after SCRAM (a doomed exchange cannot succeed); the
    // whole check under trust.
    let authenticated = authenticated.and_then(|()| match (check.allowed(), pool) {
        (true, Some(pool)) if !cert_failed => Ok(pool),
        _ => Err(fail()),
    });
    let pool = match authenticated {
        Ok(pool) => pool,
        Err(e) => {
            let why = match &e {
                ClientError::OperatorAuthFailed { .. } if cert_failed && exchange_passed => {
                    "no client certificate naming the operator".to_string()
                }
                ClientError::OperatorAuthFailed { .. } => check.failure().to_string(),
                other => other.to_string(),
            };
            tracing::warn!(
                operator = %route.operator,
                client = %peer,
                placement = %route.placement,
                "operator login failed: {why}"
            );
            return Err(e);
        }
    };
    let tenant = match &route.tenant {
        Some(t) => match snap.catalog.get(t.as_str()) {
            Some(entry) if entry.placement == route.placement => t.clone(),
            _ => {
                return Err(ClientError::OperatorTenant {
                    tenant: t.clone(),
                    placement: route.placement.clone(),
                });
            }
        },
        None => TenantId::new(ALL_TENANTS),
    };
    let seat = pool
        .seat(&route.operator)
        .ok_or_else(|| ClientError::PlacementUnreachable(tenant.clone()))?;
    let audit = Audit {
        operator: route.operator.clone(),
        peer,
        placement: route.placement.clone(),
        tenant: route.tenant.clone(),
        started: Instant::now(),
    };
    Ok(Admitted {
        tenant: Arc::new(TenantEntry {
            id: tenant,
            placement: route.placement.clone(),
            users: Default::default(),
            max_client_connections: None,
            max_pinned_connections: None,
            max_server_connections: pool.counts().max as u32,
            search_path: None,
            suspended: false,
            watch: false,
        }),
        pool: Arc::clone(pool),
        seat,
        counter: TenantId::new(format!("operator:{}", route.operator)),
        audit,
    })
}
