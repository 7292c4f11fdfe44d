//! A TLS connection over a [`Socket`], on the same terms as the plain
//! socket: one `recv` when the reactor says readable, small writes handed
//! to the worker's batch of sends. rustls does the protocol; this file
//! moves its records. Records are bytes like any others, so a turn's
//! encrypted sends still go out in one batch.
//!
//! Plaintext rustls has decrypted and not yet handed over is readable
//! though the socket may signal nothing: `read_ready` counts it, so the
//! pump's readiness shortcut never sleeps on bytes already here.

use super::Direction;
use super::net::Socket;
use bytes::BytesMut;
use std::io::{self, Read as _, Write as _};
use std::mem::MaybeUninit;
use std::task::{Context, Poll, ready};

/// The plaintext rustls may hold for us before it stops taking records,
/// and the ciphertext it may queue before a write waits for the socket.
const TLS_BUFFER: usize = 64 * 1024;

/// The TLS layer of a [`super::stream::Stream`]: rustls's connection and
/// what this side knows of its buffers. The socket is passed in.
pub struct TlsLayer {
    conn: rustls::Connection,
    /// Decrypted bytes rustls holds, not yet read.
    plaintext: usize,
    /// The last `recv` came back short: the kernel had nothing more, and
    /// readiness is cleared; another would only find EAGAIN.
    drained: bool,
    /// The peer closed (close_notify or end of stream): reads say EOF
    /// once the plaintext is out.
    closed: bool,
    /// The `tls-server-end-point` channel binding of the certificate
    /// presented (server side), for SCRAM-SHA-256-PLUS.
    end_point: Option<Box<[u8]>>,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("plaintext", &self.plaintext)
            .field("closed", &self.closed)
            .finish()
    }
}

/// `recv` on the socket as an `io::Read` for rustls, noting a short read.
struct SockRead<'a> {
    sock: &'a Socket,
    short: bool,
}

impl io::Read for SockRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len();
        // SAFETY: `recv` only writes initialised bytes into the slice,
        // which stays initialised.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        match self.sock.recv(uninit) {
            Ok(n) => {
                if n < want {
                    self.short = true;
                    self.sock.clear_ready(Direction::Read);
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.short = true;
                    self.sock.clear_ready(Direction::Read);
                }
                Err(e)
            }
        }
    }
}

/// The socket's soon-sends as an `io::Write` for rustls: Pending becomes
/// WouldBlock, with the task's waker left with the socket.
struct SockWrite<'a, 'c, 'w> {
    sock: &'a Socket,
    cx: &'c mut Context<'w>,
}

/// Straight to the socket, no batch: an alert before the connection
/// closes (what the kernel does not take is lost with it).
struct SendNow<'a>(&'a Socket);

impl io::Write for SendNow<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.send(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Write for SockWrite<'_, '_, '_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.sock.poll_send_soon(self.cx, bytes) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Each record to the batch in turn, up to the first the socket does
    /// not take whole.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut total = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            match self.write(b) {
                Ok(n) => {
                    total += n;
                    if n < b.len() {
                        break;
                    }
                }
                Err(e) if total == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsLayer {
    /// A layer for `conn`, which has the bytes of the handshake read so
    /// far (a server connection from an `Acceptor`, or a new client
    /// connection).
    pub fn new(mut conn: rustls::Connection, end_point: Option<Box<[u8]>>) -> io::Result<TlsLayer> {
        conn.set_buffer_limit(Some(TLS_BUFFER));
        let plaintext = conn
            .process_new_packets()
            .map_err(invalid)?
            .plaintext_bytes_to_read();
        Ok(TlsLayer {
            conn,
            plaintext,
            drained: false,
            closed: false,
            end_point,
        })
    }

    pub fn connection(&self) -> &rustls::Connection {
        &self.conn
    }

    pub fn end_point(&self) -> Option<&[u8]> {
        self.end_point.as_deref()
    }

    /// Runs the handshake to its end: records written as rustls makes
    /// them, read as the socket has them. Bounded by the caller (the
    /// login's deadline).
    pub async fn handshake(&mut self, sock: &Socket) -> io::Result<()> {
        while self.conn.is_handshaking() {
            std::future::poll_fn(|cx| self.poll_flush_tls(sock, cx)).await?;
            if !self.conn.is_handshaking() {
                break;
            }
            if self.conn.wants_read() {
                sock.readable().await?;
                match self.read_records(sock) {
                    Ok(0) if self.closed => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed the connection during the TLS handshake",
                        ));
                    }
                    Ok(_) => {}
                    // Readiness without bytes after all: wait again.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // The end of our side's handshake goes out now.
        std::future::poll_fn(|cx| self.poll_flush(sock, cx)).await
    }

    /// One `recv` of records into rustls, processed: the plaintext count
    /// it left, 0 with `closed` at the end of the stream. WouldBlock when
    /// the socket had nothing.
    fn read_records(&mut self, sock: &Socket) -> io::Result<usize> {
        let mut src = SockRead { sock, short: false };
        let got = loop {
            match self.conn.read_tls(&mut src) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        self.drained = src.short;
        if got? == 0 {
            self.closed = true;
        }
        let state = match self.conn.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                // The alert rustls queued, if the socket takes it now.
                self.send_alert(sock);
                return Err(invalid(e));
            }
        };
        if state.peer_has_closed() {
            self.closed = true;
        }
        self.plaintext = state.plaintext_bytes_to_read();
        Ok(self.plaintext)
    }

    /// Plaintext held, or records to send.
    pub fn holds_anything(&self) -> bool {
        self.plaintext > 0 || self.conn.wants_write() || self.closed
    }

    /// Hands what rustls queued to the socket without waiting; false if
    /// some is left.
    pub fn flush_now(&mut self, sock: &Socket) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(self.poll_flush_tls(sock, &mut cx), Poll::Ready(Ok(())))
            && !self.conn.wants_write()
    }

    /// Encrypts `bytes` and sends what the socket takes without waiting.
    pub fn send_now(&mut self, sock: &Socket, bytes: &[u8]) {
        let _ = self.conn.writer().write_all(bytes);
        let _ = self.flush_now(sock);
        sock.settle_for_handoff();
    }

    /// What rustls queued (an alert before closing), if the socket takes
    /// it without waiting.
    fn send_alert(&mut self, sock: &Socket) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = self.poll_flush_tls(sock, &mut cx);
        sock.settle_for_handoff();
    }

    /// Reads and decrypts records until plaintext is held or the stream
    /// ended; WouldBlock when the socket has no whole record more.
    fn fill(&mut self, sock: &Socket) -> io::Result<()> {
        while self.plaintext == 0 && !self.closed {
            if self.drained && !sock.read_ready() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.read_records(sock)?;
        }
        Ok(())
    }

    /// Decrypted bytes into `dst`: Ok(0) at the end of the stream (or for
    /// an empty `dst`), WouldBlock when there are none yet.
    pub fn read(&mut self, sock: &Socket, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        self.fill(sock)?;
        if self.plaintext == 0 {
            return Ok(0);
        }
        match self.conn.reader().read(dst) {
            Ok(got) => {
                self.plaintext -= got.min(self.plaintext);
                Ok(got)
            }
            Err(e) => {
                self.plaintext = 0;
                Err(e)
            }
        }
    }

    /// Decrypted bytes into the spare capacity of `buf` (see [`Self::read`]).
    pub fn recv_into(&mut self, sock: &Socket, buf: &mut BytesMut) -> io::Result<usize> {
        self.fill(sock)?;
        let start = buf.len();
        // Only the bytes about to be written are zeroed (rustls reads
        // into initialised memory).
        let n = self.plaintext.min(buf.capacity() - start);
        buf.resize(start + n, 0);
        let got = self.read(sock, &mut buf[start..]);
        buf.truncate(start + *got.as_ref().unwrap_or(&0));
        got
    }

    /// Whether reading may find something, with no syscall: plaintext
    /// held, an end seen, or the socket readable.
    pub fn read_ready(&self, sock: &Socket) -> bool {
        self.plaintext > 0 || self.closed || sock.read_ready()
    }

    /// Ready with plaintext held or the end seen; else as the socket's.
    /// Records rustls holds go out meanwhile (the socket's own backlog
    /// too, in its `poll_read_ready`).
    pub fn poll_read_ready(&mut self, sock: &Socket, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.plaintext > 0 || self.closed {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(Err(e)) = self.poll_flush_tls(sock, cx) {
            return Poll::Ready(Err(e));
        }
        sock.poll_read_ready(cx)
    }

    /// Records rustls holds that the socket has not taken yet.
    pub fn holds_records(&self) -> bool {
        self.conn.wants_write()
    }

    /// Sends the records rustls holds; Pending (the waker with the
    /// socket) while the socket takes no more.
    fn poll_flush_tls(&mut self, sock: &Socket, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut dst = SockWrite { sock, cx };
            match self.conn.write_tls(&mut dst) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Pending while records or a batch backlog are unsent.
    pub fn poll_settle(&mut self, sock: &Socket, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_tls(sock, cx))?;
        sock.poll_settle(cx)
    }

    /// Encrypts what rustls takes of `bytes` (all of it unless its queue
    /// of records is full) and hands the records to the batch; the bytes
    /// taken count as written, as a batched plain send does.
    pub fn poll_send_soon(
        &mut self,
        sock: &Socket,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_settle(sock, cx))?;
            let n = self.conn.writer().write(bytes)?;
            // Out now if the socket takes them; else the next settle waits.
            if let Poll::Ready(Err(e)) = self.poll_flush_tls(sock, cx) {
                return Poll::Ready(Err(e));
            }
            if n > 0 || bytes.is_empty() {
                return Poll::Ready(Ok(n));
            }
        }
    }

    /// Writes what the socket takes now, records and batch included.
    pub fn poll_flush(&mut self, sock: &Socket, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_tls(sock, cx))?;
        sock.poll_flush_now(cx)
    }

    /// close_notify, then the socket's write side shut.
    pub fn poll_shutdown(&mut self, sock: &Socket, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed {
            self.conn.send_close_notify();
        }
        ready!(self.poll_flush(sock, cx))?;
        Poll::Ready(sock.shutdown_write())
    }
}

/// Reads a ClientHello (after `prefix`, bytes of it read already) and
/// starts a server connection with the configuration `choose` picks for
/// it (by server name and ALPN); `choose`'s error refuses the client.
/// The rest of the handshake is [`TlsLayer::handshake`]'s.
pub(super) async fn accept(
    sock: &Socket,
    mut prefix: &[u8],
    choose: impl FnOnce(&rustls::server::ClientHello<'_>) -> io::Result<Chosen>,
) -> io::Result<(rustls::ServerConnection, Option<Box<[u8]>>)> {
    let mut acceptor = rustls::server::Acceptor::default();
    while !prefix.is_empty() {
        acceptor.read_tls(&mut prefix)?;
    }
    let accepted = loop {
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => {}
            Err((e, mut alert)) => {
                let _ = alert.write(&mut SendNow(sock));
                return Err(invalid(e));
            }
        }
        sock.readable().await?;
        let mut src = SockRead { sock, short: false };
        match acceptor.read_tls(&mut src) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before its TLS hello",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let (config, end_point) = choose(&accepted.client_hello())?;
    let conn = accepted.into_connection(config).map_err(|(e, mut alert)| {
        let _ = alert.write(&mut SendNow(sock));
        invalid(e)
    })?;
    Ok((conn, end_point))
}

/// What a server handshake goes on with: the configuration (the
/// certificate) and that certificate's channel binding.
pub type Chosen = (std::sync::Arc<rustls::ServerConfig>, Option<Box<[u8]>>);

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
