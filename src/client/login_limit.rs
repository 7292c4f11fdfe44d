//! A login under the failed-login limits (`admission::failed_logins`):
//! refused at once while its user is banned from its address, counted
//! when its exchange fails (a ban starts, logged, at the limit), cleared
//! when it succeeds.

use crate::admission::failed_logins::{Failure, Limits, Who};
use crate::session::error::ClientError;
use crate::state::{ProxyState, Snapshot};
use std::future::Future;
use std::net::IpAddr;

pub(super) async fn limited<T>(
    (state, snap): (&ProxyState, &Snapshot),
    peer: IpAddr,
    who: Who,
    login: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let limits = Limits::of(&snap.config.proxy);
    if let Some(left) = state.failed_logins.banned(peer, &who, limits) {
        return Err(ClientError::LoginBanned {
            who: shown(&who),
            retry_secs: left.as_secs().max(1),
        });
    }
    let outcome = login.await;
    match &outcome {
        Ok(_) => state.failed_logins.succeeded(peer, &who),
        Err(
            ClientError::AuthFailed { .. }
            | ClientError::OperatorAuthFailed { .. }
            | ClientError::AdminAuthFailed(_),
        ) => match state.failed_logins.failed(peer, &who, limits) {
            Failure::Counted => {}
            Failure::Banned => tracing::warn!(
                who = %who.0,
                failures = limits.failures,
                ban_secs = limits.ban.as_secs(),
                "too many failed logins from this address; its logins for this user are refused for a while"
            ),
            Failure::Untracked => tracing::warn!(
                "the failed-login table is full; a failure from a new address is not counted"
            ),
        },
        Err(_) => {}
    }
    outcome
}

/// `who` as a client may be told it (it named all of it itself).
fn shown(who: &Who) -> String {
    match who.0.split_once('/') {
        Some((tenant, user)) => format!("user \"{user}\" of tenant \"{tenant}\""),
        None => who.0.replace(':', " \"") + "\"",
    }
}
