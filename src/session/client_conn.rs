//! A client's connection as the session uses it: the socket, the read
//! side of the client-to-server direction, and what the proxy itself
//! writes to the client. The login side adds its readers in
//! `client::conn`.

use crate::runtime::stream::Stream;
use crate::session::pump::Flow;
use bytes::BytesMut;
use std::io;
use tokio::io::AsyncWriteExt;

/// A connected client.
pub struct ClientConn {
    pub stream: Stream,
    /// Client → server direction of the pump; also where startup-phase
    /// reads land.
    pub flow: Flow,
    /// Messages the proxy writes itself (startup, errors).
    pub out: BytesMut,
}

impl ClientConn {
    pub fn new(stream: Stream, max_message: usize) -> ClientConn {
        ClientConn {
            stream,
            flow: Flow::new(max_message),
            out: BytesMut::with_capacity(512),
        }
    }

    /// Writes and clears `out`.
    pub async fn flush_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}
