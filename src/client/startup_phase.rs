//! The startup phase before authentication: encryption requests
//! answered, the first real packet (a StartupMessage or a
//! CancelRequest), and the client's `client_encoding` spelled as the
//! server reports it.

use crate::protocol::CancelKey;
use crate::protocol::startup::{self, Startup, StartupPacket};
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use tokio::io::AsyncWriteExt;

/// The first packet that is not an encryption request.
pub(super) enum First {
    Startup(Startup),
    Cancel(CancelKey),
}

/// Reads startup-phase packets until a StartupMessage or a
/// CancelRequest, answering encryption requests on the way.
pub(super) async fn handshake(client: &mut ClientConn) -> Result<First, ClientError> {
    // At most one SSLRequest and one GSSENCRequest precede the startup.
    for _ in 0..3 {
        let len = client.read_startup_packet().await?;
        let packet = startup::parse(&client.flow.buf[..len])
            .map_err(|e| ClientError::Protocol(e.to_string()));
        // Bytes after the packet stay: a client may send its first
        // message without waiting for the authentication result.
        bytes::Buf::advance(&mut client.flow.buf, len);
        match packet? {
            // TLS is not configured (its own issue): decline, as PostgreSQL
            // does without ssl = on; the client may go on in plaintext.
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                // The client must wait for the answer: anything sent
                // ahead of it would be read as if it had come over the
                // encrypted channel (PostgreSQL refuses it too, since the
                // fix for CVE-2021-23214).
                if !client.flow.buf.is_empty() {
                    return Err(ClientError::Protocol(
                        "received unencrypted data after an encryption request".into(),
                    ));
                }
                client.stream.write_all(b"N").await.map_err(early_eof)?;
            }
            StartupPacket::Cancel(key) => return Ok(First::Cancel(key)),
            StartupPacket::Startup(s) => return Ok(First::Startup(s)),
        }
    }
    Err(ClientError::Protocol("too many encryption requests".into()))
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
