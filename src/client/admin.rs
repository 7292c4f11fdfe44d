//! An admin's login to the console (database `pgtenant`, a user from
//! `[admin] users`): the same SCRAM exchange, unauthenticated caps and
//! failure shape as a tenant user's, then the console (`admin::console`)
//! instead of a session. An unknown name runs a doomed exchange, so names
//! cannot be probed; every attempt is logged with who and from where.

use super::auth;
use crate::admission::Unauthenticated;
use crate::config::AuthType;
use crate::protocol::messages;
use crate::runtime::time;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use crate::state::{CountGuard, ProxyState, Snapshot};
use std::net::SocketAddr;
use std::time::Instant;

/// Console sessions open at once. Counted apart from
/// `max_client_connections`, so an operator can reach the console of a
/// proxy full of tenant clients; small, since each is a person or a tool.
pub const MAX_CONSOLES: u32 = 32;

/// An authenticated admin, ready for the console.
pub struct ConsoleLogin {
    pub user: String,
    pub peer: SocketAddr,
    _guard: CountGuard,
}

/// Authenticates `user` as an admin and sends the login's answer
/// (AuthenticationOk and the ParameterStatus set psql expects).
pub async fn login(
    state: &ProxyState,
    snap: &Snapshot,
    client: &mut ClientConn,
    user: &str,
    peer: SocketAddr,
    deadline: Instant,
    unauthenticated: &mut Option<Unauthenticated>,
) -> Result<ConsoleLogin, ClientError> {
    let login = snap.catalog.admin_login(user);
    let known = login.is_some();
    let fail = || ClientError::AdminAuthFailed(user.to_string());
    // Under trust nothing is checked, certificates neither.
    let cert = match snap.config.proxy.auth_type {
        AuthType::ScramSha256 => auth::certificate_check(client, login),
        AuthType::Trust => auth::CertCheck::NotNeeded,
    };
    let authenticated = match snap.config.proxy.auth_type {
        AuthType::ScramSha256 => {
            // As a tenant user's login (`CertCheck::suffices`).
            if cert.suffices(login) {
                Ok(())
            } else {
                let verifier = snap.catalog.admin_verifier(user);
                time::timeout_at(deadline, auth::exchange(client, &verifier, fail))
                    .await
                    .map_err(|_| ClientError::LoginTimeout)
                    .and_then(|r| r)
            }
        }
        AuthType::Trust => Ok(()),
    };
    // Belt and braces after SCRAM (a doomed exchange cannot succeed); the
    // whole check under trust.
    let authenticated = authenticated.and_then(|()| {
        if known && cert != auth::CertCheck::Failed {
            Ok(())
        } else {
            Err(fail())
        }
    });
    if let Err(e) = &authenticated {
        let why = match e {
            ClientError::AdminAuthFailed(_) if known && cert == auth::CertCheck::Failed => {
                "no client certificate naming the admin".to_string()
            }
            ClientError::AdminAuthFailed(_) if known => "wrong password".to_string(),
            ClientError::AdminAuthFailed(_) => "no such admin user".to_string(),
            other => other.to_string(),
        };
        tracing::warn!(admin = %user, client = %peer, "admin console login failed: {why}");
    }
    authenticated?;
    let guard =
        CountGuard::acquire(&state.consoles, MAX_CONSOLES).ok_or(ClientError::ConsoleFull)?;
    *unauthenticated = None;
    messages::auth_ok(&mut client.out);
    for (name, value) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgtenant"),
    ] {
        messages::parameter_status(&mut client.out, name, value);
    }
    tracing::info!(admin = %user, client = %peer, "admin console login");
    Ok(ConsoleLogin {
        user: user.to_string(),
        peer,
        _guard: guard,
    })
}
