//! The login side of a client's connection: reading startup-phase
//! packets and authentication frames, and the one way errors reach a
//! client: [`ClientConn::refuse`] writes the ErrorResponse and flushes
//! before the connection is closed. (The connection type itself is the
//! session's, `session::client_conn`.)

use crate::protocol::error::{Severity, write_error};
use crate::protocol::{HEADER_LEN, codec, startup};
use crate::session::client_conn::ClientConn;
use crate::session::error::ClientError;
use bytes::{Buf, BytesMut};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the goodbye (an ErrorResponse, then shutdown) to a refused
/// client may take.
const REFUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl ClientConn {
    /// Sends `err` as a FATAL ErrorResponse. The caller closes afterwards.
    pub async fn refuse(&mut self, err: &ClientError) {
        tracing::info!(kind = err.kind(), "refusing client: {err}");
        if let ClientError::Tls(_) = err {
            // Mid-handshake: the client reads TLS records, not a message.
            let _ = self.stream.socket().shutdown_write();
            return;
        }
        self.out.clear();
        write_error(
            &mut self.out,
            Severity::Fatal,
            err.sql_state(),
            &err.to_string(),
            None,
        );
        // The client may already be gone, or not reading (its send buffer
        // full): the goodbye is bounded, so no uncounted socket lingers.
        let goodbye = async {
            let _ = self.flush_out().await;
            let _ = self.stream.shutdown().await;
        };
        let _ = crate::runtime::time::timeout(REFUSE_TIMEOUT, goodbye).await;
    }

    /// The first byte the client sent (read, and left in the buffer).
    pub async fn peek_first_byte(&mut self) -> Result<u8, ClientError> {
        while self.flow.buf.is_empty() {
            self.flow.unpark();
            self.read_startup_bytes(HEADER_LEN).await?;
        }
        Ok(self.flow.buf[0])
    }

    /// One read of what the socket has into the read buffer (room for at
    /// least `room` more); the end of the stream is an incomplete packet.
    async fn read_startup_bytes(&mut self, room: usize) -> Result<(), ClientError> {
        self.flow.buf.reserve(room);
        let n = self
            .stream
            .read_buf(&mut self.flow.buf)
            .await
            .map_err(super::startup_phase::early_eof)?;
        if n == 0 {
            return Err(super::startup_phase::early_eof(
                io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        Ok(())
    }

    /// Reads until the read buffer starts with a whole startup-phase
    /// packet, whose length it returns (checked before the rest is read).
    /// Each read takes what the socket has, so a packet usually costs one
    /// `recv`, and a short read leaves the socket waiting for readiness
    /// rather than paying a `recv` that finds nothing. Bytes past the
    /// packet stay in the buffer (the caller decides whether they may be
    /// there); the buffer never grows past the largest packet plus one
    /// read.
    pub async fn read_startup_packet(&mut self) -> Result<usize, ClientError> {
        loop {
            self.flow.unpark();
            let declared = startup::declared_len(&self.flow.buf)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let room = match declared {
                Some(len) if self.flow.buf.len() >= len => return Ok(len),
                Some(len) => len - self.flow.buf.len(),
                None => HEADER_LEN,
            };
            self.read_startup_bytes(room).await?;
        }
    }

    /// Reads one whole frame during authentication (tag, body), checked
    /// against `max` before the body is read.
    pub async fn read_auth_frame(&mut self, max: usize) -> Result<(u8, BytesMut), ClientError> {
        loop {
            match codec::parse_header(&self.flow.buf, max) {
                Ok(Some(h)) if self.flow.buf.len() > h.len => {
                    // Copied, not split off: the read buffer stays a plain
                    // vector that `Flow::poll_fill` can rewind (see there).
                    let frame = BytesMut::from(&self.flow.buf[HEADER_LEN..=h.len]);
                    self.flow.buf.advance(h.len + 1);
                    return Ok((h.tag, frame));
                }
                Ok(_) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            self.flow.unpark();
            self.flow.buf.reserve(1024);
            let n = self
                .stream
                .read_buf(&mut self.flow.buf)
                .await
                .map_err(|e| ClientError::Protocol(format!("connection lost: {e}")))?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "client closed the connection during authentication".into(),
                ));
            }
        }
    }
}
