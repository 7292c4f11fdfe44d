//! Authenticating a client against its tenant's users with SCRAM-SHA-256
//! and, for users who need one, a client certificate.
//! A wrong password and an unknown user fail identically (same exchange
//! against a doomed verifier whose salt is keyed like a real user's, same
//! `28P01` message), so the proxy does not reveal which user names exist,
//! and no proof logs in as a user that does not exist.

use crate::catalog::{Catalog, TenantEntry, UserLogin};
use crate::credentials::scram::{self, Binding, ScramError, Verifier};
use crate::protocol::messages;
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use base64::Engine;
use rand::RngExt;

/// SASL messages are a few hundred bytes; anything near this is hostile.
const MAX_AUTH_MESSAGE: usize = 8 * 1024;

pub async fn scram_sha_256(
    client: &mut ClientConn,
    catalog: &Catalog,
    tenant: &TenantEntry,
    user: &str,
) -> Result<(), ClientError> {
    let verifier = catalog.scram_verifier(tenant, user);
    exchange(client, &verifier, || ClientError::AuthFailed {
        user: user.to_string(),
        tenant: tenant.id.clone(),
    })
    .await
}

/// Where a user's login stands on client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCheck {
    /// The user needs none (or is not configured).
    NotNeeded,
    /// The user needs one, and the verified certificate names the user.
    Passed,
    /// The user needs one, and none presented names the user.
    Failed,
}

impl CertCheck {
    /// Whether this check alone logs `login` in: the right certificate of
    /// a user who has no password. Everyone else runs the exchange (a
    /// doomed one without a password), so that a missing certificate
    /// fails as a wrong password does.
    pub fn suffices(self, login: Option<&UserLogin>) -> bool {
        self == CertCheck::Passed && login.is_some_and(|l| l.password.is_none())
    }
}

/// Checks the client's verified certificate against the identity `login`
/// requires, if any. The handshake verified the chain; this is whose it
/// is.
pub fn certificate_check(client: &ClientConn, login: Option<&UserLogin>) -> CertCheck {
    match login.and_then(|l| l.cert.as_deref()) {
        None => CertCheck::NotNeeded,
        Some(identity) if presents(client, identity) => CertCheck::Passed,
        Some(_) => CertCheck::Failed,
    }
}

/// Whether the client's verified certificate names `identity`.
pub fn presents(client: &ClientConn, identity: &str) -> bool {
    client
        .stream
        .peer_certificate()
        .is_some_and(|leaf| crate::tls::certificate_names(leaf, identity))
}

/// The SCRAM-SHA-256 exchange against `verifier`; a wrong proof is
/// `fail()`. Tenant users, operators and admins log in through it.
pub async fn exchange(
    client: &mut ClientConn,
    verifier: &Verifier,
    fail: impl FnOnce() -> ClientError,
) -> Result<(), ClientError> {
    // Channel binding is offered over TLS where the certificate has an
    // end-point hash: the binding data is copied out, since the reads
    // below need the connection.
    let end_point = client.stream.channel_binding().map(<[u8]>::to_vec);
    messages::auth_sasl(&mut client.out, end_point.is_some());
    client.flush_out().await.map_err(io_lost)?;

    let (tag, body) = client.read_auth_frame(MAX_AUTH_MESSAGE).await?;
    if tag != b'p' {
        return Err(ClientError::Protocol(format!(
            "expected SASLInitialResponse, got message type {:?}",
            tag as char
        )));
    }
    let (mechanism, data) = parse_initial_response(&body)?;
    let binding = match (mechanism, end_point.as_deref()) {
        ("SCRAM-SHA-256", None) => Binding::Unavailable,
        ("SCRAM-SHA-256", Some(end_point)) => Binding::Offered {
            end_point,
            plus: false,
        },
        ("SCRAM-SHA-256-PLUS", Some(end_point)) => Binding::Offered {
            end_point,
            plus: true,
        },
        _ => {
            return Err(ClientError::Protocol(format!(
                "SASL mechanism {mechanism:?} is not offered"
            )));
        }
    };
    let nonce = server_nonce();
    let (exchange, server_first) =
        scram::server_first(verifier, data, &nonce, binding).map_err(scram_err)?;
    messages::auth_sasl_continue(&mut client.out, server_first.as_bytes());
    client.flush_out().await.map_err(io_lost)?;

    let (tag, body) = client.read_auth_frame(MAX_AUTH_MESSAGE).await?;
    if tag != b'p' {
        return Err(ClientError::Protocol("expected SASLResponse".into()));
    }
    match exchange.finish(&body) {
        Ok(server_final) => {
            messages::auth_sasl_final(&mut client.out, server_final.as_bytes());
            Ok(())
        }
        Err(ScramError::BadProof) => Err(fail()),
        Err(e) => Err(scram_err(e)),
    }
}

fn scram_err(e: ScramError) -> ClientError {
    ClientError::Protocol(e.to_string())
}

fn io_lost(e: std::io::Error) -> ClientError {
    ClientError::Protocol(format!("connection lost: {e}"))
}

/// SASLInitialResponse body: mechanism (C string), Int32 length (-1 for
/// none), data.
fn parse_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ClientError> {
    let bad = || ClientError::Protocol("malformed SASLInitialResponse".into());
    let nul = body.iter().position(|&b| b == 0).ok_or_else(bad)?;
    let mechanism = std::str::from_utf8(&body[..nul]).map_err(|_| bad())?;
    let rest = &body[nul + 1..];
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    let len = i32::from_be_bytes(len_bytes);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(bad());
    }
    Ok((mechanism, data))
}

fn server_nonce() -> String {
    let bytes: [u8; 18] = rand::rng().random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_response_parsing() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"n,,ab");
        assert_eq!(
            parse_initial_response(&body).ok(),
            Some(("SCRAM-SHA-256", &b"n,,ab"[..]))
        );
        body.push(b'x');
        assert!(parse_initial_response(&body).is_err());
        assert!(parse_initial_response(b"SCRAM").is_err());
        assert!(parse_initial_response(b"SCRAM\0\xff\xff\xff\xff").is_err());
    }
}
