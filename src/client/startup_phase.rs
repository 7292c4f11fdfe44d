//! The startup phase before authentication: encryption requests
//! answered, the first real packet (a StartupMessage or a
//! CancelRequest), and the client's `client_encoding` spelled as the
//! server reports it.

use crate::protocol::CancelKey;
use crate::protocol::startup::{self, Startup, StartupPacket};
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use crate::tls::ServerTls;
use rustls::server::ClientHello;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The first packet that is not an encryption request.
pub(super) enum First {
    Startup(Startup),
    Cancel(CancelKey),
}

/// The first byte of a TLS handshake record: a connection that opens with
/// it wants TLS at once (PostgreSQL 17's `sslnegotiation=direct`). A
/// startup packet opens with its length's high byte, 0.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Reads startup-phase packets until a StartupMessage or a
/// CancelRequest, answering encryption requests on the way: with `tls`
/// configured, SSLRequest gets `S` and a handshake, as does a direct TLS
/// hello; without it, `N` (the client may go on in plaintext).
pub(super) async fn handshake(
    client: &mut ClientConn,
    tls: Option<&ServerTls>,
    relayed_tls: bool,
) -> Result<First, ClientError> {
    if client.peek_first_byte().await? == TLS_HANDSHAKE_RECORD {
        let Some(tls) = tls else {
            return Err(ClientError::Tls(
                "a direct TLS connection, and TLS is not configured".into(),
            ));
        };
        // The hello's first bytes, read already, go to rustls first.
        let prefix = client.flow.buf.split();
        start_tls(client, tls, &prefix, true).await?;
    }
    // At most one SSLRequest and one GSSENCRequest precede the startup.
    for _ in 0..3 {
        let len = client.read_startup_packet().await?;
        let packet = startup::parse(&client.flow.buf[..len])
            .map_err(|e| ClientError::Protocol(e.to_string()));
        // Bytes after the packet stay: a client may send its first
        // message without waiting for the authentication result.
        bytes::Buf::advance(&mut client.flow.buf, len);
        match packet? {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if client.stream.is_tls() => {
                return Err(ClientError::Protocol(
                    "an encryption request on an encrypted connection".into(),
                ));
            }
            request @ (StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                // The client must wait for the answer: anything sent
                // ahead of it would be read as if it had come over the
                // encrypted channel (PostgreSQL refuses it too, since the
                // fix for CVE-2021-23214).
                if !client.flow.buf.is_empty() {
                    return Err(ClientError::Protocol(
                        "received unencrypted data after an encryption request".into(),
                    ));
                }
                match (request, tls) {
                    (StartupPacket::SslRequest, Some(tls)) => {
                        client.stream.write_all(b"S").await.map_err(early_eof)?;
                        client.stream.flush().await.map_err(early_eof)?;
                        start_tls(client, tls, &[], false).await?;
                    }
                    // GSSAPI is not offered; TLS is not configured.
                    _ => client.stream.write_all(b"N").await.map_err(early_eof)?,
                }
            }
            StartupPacket::Cancel(key) => return Ok(First::Cancel(key)),
            // A listed balancer's word that the client reached it over
            // TLS counts: the balancer ended that TLS.
            StartupPacket::Startup(_)
                if tls.is_some_and(|t| t.require) && !client.stream.is_tls() && !relayed_tls =>
            {
                return Err(ClientError::TlsRequired);
            }
            StartupPacket::Startup(s) => return Ok(First::Startup(s)),
        }
    }
    Err(ClientError::Protocol("too many encryption requests".into()))
}

/// The TLS handshake, with the certificate the client's server name
/// selects. A direct connection must name PostgreSQL by ALPN (as
/// PostgreSQL 17 requires, so a TLS connection meant for another
/// protocol is never taken for one of ours); after an SSLRequest, ALPN
/// is optional, but if offered must name PostgreSQL (rustls refuses the
/// handshake otherwise).
async fn start_tls(
    client: &mut ClientConn,
    tls: &ServerTls,
    prefix: &[u8],
    direct: bool,
) -> Result<(), ClientError> {
    let mut refused = None;
    let choose = |hello: &ClientHello<'_>| {
        let named = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == crate::tls::ALPN_POSTGRESQL));
        if direct && !named {
            refused = Some("a direct TLS connection that did not offer ALPN \"postgresql\"");
            return Err(std::io::Error::other("no ALPN"));
        }
        let served = tls.choose(hello.server_name());
        Ok((Arc::clone(&served.postgres), served.end_point.clone()))
    };
    let done = client.stream.accept_tls(prefix, choose).await;
    done.map_err(|e| ClientError::Tls(refused.map_or_else(|| e.to_string(), str::to_string)))
}

pub(super) fn early_eof(e: std::io::Error) -> ClientError {
    ClientError::Protocol(format!("incomplete startup packet: {e}"))
}

/// Spells the client's `client_encoding` as the server reports it
/// (`utf-8` -> `UTF8`), so the ParameterStatus the client gets at login is
/// the one PostgreSQL would send; a name PostgreSQL refuses is refused
/// here, as PostgreSQL refuses it at startup.
pub(super) fn canonical_client_encoding(
    wanted: &mut [(String, String)],
) -> Result<(), ClientError> {
    let Some((_, value)) = wanted
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case("client_encoding"))
    else {
        return Ok(());
    };
    match crate::protocol::encoding::reported_client_encoding(value) {
        Some(name) if name == value => Ok(()),
        Some(name) => {
            *value = name.to_string();
            Ok(())
        }
        None => Err(ClientError::Server {
            code: crate::protocol::SqlState::INVALID_PARAMETER_VALUE
                .as_str()
                .to_string(),
            message: format!("invalid value for parameter \"client_encoding\": \"{value}\""),
        }),
    }
}
