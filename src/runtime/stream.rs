//! The stream seam: what the forwarding path, the login and recovery
//! ask of a connection, whether it is plain TCP or TLS. The pump is
//! written against [`Transport`]; a client's connection is a [`Stream`],
//! either kind.

use super::net::{PeerState, Socket};
pub use super::tls_socket::Chosen;
use super::tls_socket::TlsLayer;
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The forwarding path's view of a connection.
pub trait Transport {
    /// Whether reading may find something, with no syscall.
    fn read_ready(&self) -> bool;
    /// Ready once reading may find something; else the task's waker waits
    /// with the socket. Bytes an earlier write left unsent (a batch
    /// backlog, TLS records) are sent meanwhile: a task waiting to read
    /// also drives the end of what it wrote, which its peer may need
    /// before it sends anything.
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Bytes an earlier write took and has not sent yet (this thread):
    /// a reader that skips `poll_read_ready` while waiting must not skip
    /// it while this is true (`Flow::poll_fill`).
    fn has_unsent(&self) -> bool;
    /// Bytes into the spare capacity of `buf`: Ok(0) at the end of the
    /// stream, WouldBlock (readiness cleared) when there are none.
    fn recv_into(&mut self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Pending while earlier writes are not yet out (back-pressure).
    fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Takes what it can of `bytes`, batched with the turn's other sends
    /// where small.
    fn poll_send_soon(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>>;
}

/// Runs `wait`, sending meanwhile what `stream` has left unsent (a batch
/// backlog, TLS records): a wait that is not for this peer (a server
/// connection, a pause) must not hold back bytes it already has, such as
/// the end of its last result. A send error is left for the next write.
pub fn sending_meanwhile<'s, S: Transport, F: Future>(
    stream: &'s mut S,
    wait: F,
) -> SendingMeanwhile<'s, S, F> {
    SendingMeanwhile {
        settled: !stream.has_unsent(),
        stream,
        wait,
    }
}

pin_project_lite::pin_project! {
    /// [`sending_meanwhile`]'s future. A struct rather than an `async fn`,
    /// whose state would hold `wait` twice (the argument and the pinned
    /// local it moves to) and copy it once more on the first poll: the
    /// session boxes this at every wait for a server connection.
    pub struct SendingMeanwhile<'s, S, F> {
        stream: &'s mut S,
        settled: bool,
        #[pin]
        wait: F,
    }
}

impl<S: Transport, F: Future> Future for SendingMeanwhile<'_, S, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !*this.settled {
            *this.settled = this.stream.poll_settle(cx).is_ready();
        }
        this.wait.poll(cx)
    }
}

/// Runs `wait` as [`sending_meanwhile`] does, unless the client closes
/// its connection first (None): a request held for long (a pause) is
/// dropped when its client gives up on it, rather than run later for
/// nobody. PostgreSQL's `client_connection_check_interval` makes the same
/// call for a running query.
pub fn unless_peer_gone<F: Future>(stream: &mut Stream, wait: F) -> UnlessPeerGone<'_, F> {
    UnlessPeerGone {
        inner: sending_meanwhile(stream, wait),
        recheck: super::time::LazyTimer::default(),
    }
}

/// How often [`unless_peer_gone`] looks again while the client's unread
/// bytes hide a close from the reactor (a TLS client's close_notify
/// comes before its TCP close).
const PEER_RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

pin_project_lite::pin_project! {
    /// [`unless_peer_gone`]'s future.
    pub struct UnlessPeerGone<'s, F> {
        #[pin]
        inner: SendingMeanwhile<'s, Stream, F>,
        // Armed only while unread bytes hide a close.
        recheck: super::time::LazyTimer,
    }
}

impl<F: Future> Future for UnlessPeerGone<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.inner.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let sock = &this.inner.project().stream.sock;
        loop {
            match sock.poll_peer_state(cx) {
                PeerState::Gone => return Poll::Ready(None),
                PeerState::Open => return Poll::Pending,
                PeerState::Unread => {
                    if !this.recheck.is_armed() {
                        this.recheck.set(Some(super::time::now() + PEER_RECHECK));
                    }
                    if this.recheck.poll_fired(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Due: look again, and wait another round if need be.
                    this.recheck.set(Some(super::time::now() + PEER_RECHECK));
                }
            }
        }
    }
}

impl Transport for Socket {
    #[inline]
    fn read_ready(&self) -> bool {
        Socket::read_ready(self)
    }

    #[inline]
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Socket::poll_read_ready(self, cx)
    }

    #[inline]
    fn has_unsent(&self) -> bool {
        Socket::has_backlog(self)
    }

    /// Like tokio's `poll_read`, a read that does not fill the buffer
    /// clears the readiness (a TCP socket gave all it had), so the next
    /// wait registers at once instead of paying a `recv` that finds
    /// nothing; so does a read that finds nothing after all.
    fn recv_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let spare = buf.spare_capacity_mut();
        let want = spare.len();
        match self.recv(spare) {
            Ok(n) => {
                // SAFETY: `recv` initialised the first `n` bytes of the
                // spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                if n < want {
                    self.clear_ready(super::Direction::Read);
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.clear_ready(super::Direction::Read);
                }
                Err(e)
            }
        }
    }

    #[inline]
    fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Socket::poll_settle(self, cx)
    }

    #[inline]
    fn poll_send_soon(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        Socket::poll_send_soon(self, cx, bytes)
    }
}

/// A connection, plain or encrypted: the socket, and the TLS layer over
/// it once the client asked for one (boxed: a plain client pays one word
/// for the choice). The layer is added in place, so nothing that holds
/// the connection changes when it is encrypted.
#[derive(Debug)]
pub struct Stream {
    sock: Socket,
    tls: Option<Box<TlsLayer>>,
}

impl From<Socket> for Stream {
    fn from(sock: Socket) -> Stream {
        Stream { sock, tls: None }
    }
}

impl Stream {
    /// The TCP socket under it.
    pub fn socket(&self) -> &Socket {
        &self.sock
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS connection, if encrypted (server name, protocol version).
    pub fn tls(&self) -> Option<&rustls::Connection> {
        self.tls.as_deref().map(TlsLayer::connection)
    }

    /// What the connection's TLS is, as SHOW CLIENTS gives it (as
    /// PgBouncer's `tls` column): protocol version and cipher suite, such
    /// as `TLSv1.3/TLS13_AES_256_GCM_SHA384`; None in plaintext.
    pub fn tls_description(&self) -> Option<String> {
        let conn = self.tls()?;
        let version = match conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        };
        Some(match conn.negotiated_cipher_suite() {
            Some(suite) => format!("{version}/{:?}", suite.suite()),
            None => version,
        })
    }

    /// The server name the client asked for in its TLS hello (SNI).
    pub fn server_name(&self) -> Option<&str> {
        match self.tls()? {
            rustls::Connection::Server(c) => c.server_name(),
            rustls::Connection::Client(_) => None,
        }
    }

    /// The certificate the peer presented and the handshake verified
    /// (its leaf); None in plaintext or where it presented none.
    pub fn peer_certificate(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        self.tls()?.peer_certificates()?.first()
    }

    /// Encrypts the stream from here on with `conn` (its handshake begun
    /// with the bytes read so far), and runs the rest of the handshake.
    /// Refused on a stream already encrypted.
    /// `end_point`: the channel binding of our certificate (server side).
    pub async fn start_tls(
        &mut self,
        conn: rustls::Connection,
        end_point: Option<Box<[u8]>>,
    ) -> io::Result<()> {
        if self.tls.is_some() {
            return Err(io::Error::other("the stream is already encrypted"));
        }
        let layer = self.tls.insert(Box::new(TlsLayer::new(conn, end_point)?));
        layer.handshake(&self.sock).await
    }

    /// The server side of a TLS handshake: reads the ClientHello (after
    /// `prefix`, its first bytes if already read), encrypts with the
    /// configuration `choose` picks for it, and completes the handshake.
    pub async fn accept_tls(
        &mut self,
        prefix: &[u8],
        choose: impl FnOnce(&rustls::server::ClientHello<'_>) -> io::Result<Chosen>,
    ) -> io::Result<()> {
        if self.tls.is_some() {
            return Err(io::Error::other("the stream is already encrypted"));
        }
        let (conn, end_point) = super::tls_socket::accept(&self.sock, prefix, choose).await?;
        self.start_tls(rustls::Connection::Server(conn), end_point)
            .await
    }

    /// Records rustls holds that the socket has not taken (tests).
    #[cfg(test)]
    pub(crate) fn tls_holds_records(&self) -> bool {
        self.tls.as_deref().is_some_and(TlsLayer::holds_records)
    }

    /// The `tls-server-end-point` channel binding of the certificate this
    /// side presented; None in plaintext or where the certificate's
    /// algorithm defines none.
    pub fn channel_binding(&self) -> Option<&[u8]> {
        self.tls.as_deref()?.end_point()
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.sock.set_nodelay(on)
    }

    /// Whether the socket is registered with this thread's runtime.
    pub fn is_local(&self) -> bool {
        self.sock.is_local()
    }

    /// Nothing to read, no EOF or error, and no plaintext held: the
    /// connection is at rest (any thread). Records the socket holds that
    /// carry no data yet (a ticket, a key update) count as something:
    /// the caller discards a connection it cannot prove quiet.
    pub fn is_quiet(&self) -> bool {
        if self.tls.as_deref().is_some_and(TlsLayer::holds_anything) {
            return false;
        }
        self.sock.is_quiet()
    }

    /// This stream on the current thread's runtime (a pooled server
    /// connection checked out by another worker); the TLS layer moves
    /// with it.
    pub fn rebind(self) -> io::Result<Stream> {
        let Stream { sock, tls } = self;
        Ok(Stream {
            sock: sock.rebind()?,
            tls,
        })
    }

    /// Before the stream goes to another session or worker: what it
    /// queued is sent; false if bytes (records included) or an error are
    /// left, and it must not be reused.
    pub fn settle_for_handoff(&mut self) -> bool {
        if let Some(t) = &mut self.tls
            && !t.flush_now(&self.sock)
        {
            return false;
        }
        self.sock.settle_for_handoff()
    }

    /// Sends what fits without waiting, for a goodbye (Terminate) before
    /// closing: through the TLS layer if encrypted.
    pub fn send_now(&mut self, bytes: &[u8]) {
        match &mut self.tls {
            None => {
                let _ = self.sock.send(bytes);
            }
            Some(t) => t.send_now(&self.sock, bytes),
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.peer_addr()
    }

    /// Waits until reading may find something (data, EOF or an error),
    /// sending meanwhile what earlier writes left unsent.
    pub async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| Transport::poll_read_ready(self, cx)).await
    }
}

impl Transport for Stream {
    #[inline]
    fn read_ready(&self) -> bool {
        match &self.tls {
            None => Socket::read_ready(&self.sock),
            Some(t) => t.read_ready(&self.sock),
        }
    }

    #[inline]
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.tls {
            None => Socket::poll_read_ready(&self.sock, cx),
            Some(t) => t.poll_read_ready(&self.sock, cx),
        }
    }

    #[inline]
    fn has_unsent(&self) -> bool {
        self.tls.as_deref().is_some_and(TlsLayer::holds_records) || self.sock.has_backlog()
    }

    #[inline]
    fn recv_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match &mut self.tls {
            None => self.sock.recv_into(buf),
            Some(t) => t.recv_into(&self.sock, buf),
        }
    }

    #[inline]
    fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.tls {
            None => Socket::poll_settle(&self.sock, cx),
            Some(t) => t.poll_settle(&self.sock, cx),
        }
    }

    #[inline]
    fn poll_send_soon(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.tls {
            None => Socket::poll_send_soon(&self.sock, cx, bytes),
            Some(t) => t.poll_send_soon(&self.sock, cx, bytes),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(t) = &mut this.tls else {
            return Pin::new(&mut this.sock).poll_read(cx, buf);
        };
        loop {
            ready!(t.poll_read_ready(&this.sock, cx))?;
            match t.read(&this.sock, buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.tls {
            None => Pin::new(&mut this.sock).poll_write(cx, bytes),
            Some(t) => t.poll_send_soon(&this.sock, cx, bytes),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.tls {
            None => Pin::new(&mut this.sock).poll_flush(cx),
            Some(t) => t.poll_flush(&this.sock, cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.tls {
            None => Pin::new(&mut this.sock).poll_shutdown(cx),
            Some(t) => t.poll_shutdown(&this.sock, cx),
        }
    }
}
