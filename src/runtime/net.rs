//! TCP sockets on a worker's event loop (`reactor`): a listener, and a
//! stream that implements tokio's `AsyncRead`/`AsyncWrite` for the login
//! and recovery paths and offers readiness-level calls for the forwarding
//! path (`session::sockio`). Small writes of both kinds are queued for
//! the loop's batch of sends (`reactor::sends`).
//!
//! A socket belongs to the reactor of the thread that registered it and
//! is used there only; [`Socket::rebind`] moves it to the current
//! thread's (a pooled server connection checked out by another worker).

use super::Direction;
use super::reactor::{READ, Registration, SharedStream, WRITE};
use super::sys::{self, resolve, send_fd};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connected TCP stream registered with this thread's event loop.
/// The stream is shared with the sends the loop has queued for it, so it
/// closes when the last of them is done (`reactor::sends`).
#[derive(Debug)]
pub struct Socket {
    reg: Registration,
    io: SharedStream,
}

impl Socket {
    /// Registers a connected stream with this thread's event loop.
    pub fn from_std(io: std::net::TcpStream) -> io::Result<Socket> {
        io.set_nonblocking(true)?;
        let io = std::sync::Arc::new(io);
        let reg = Registration::for_stream(&io)?;
        Ok(Socket { reg, io })
    }

    /// Connects to `host:port` (a name is resolved off the loop), trying
    /// each address in turn.
    pub async fn connect(host: &str, port: u16) -> io::Result<Socket> {
        let mut last = None;
        for addr in resolve(host, port).await? {
            match Self::connect_addr(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
        }))
    }

    async fn connect_addr(addr: SocketAddr) -> io::Result<Socket> {
        let s = Socket::from_std(sys::start_connect(addr)?)?;
        // Writable once the handshake is done, or failed.
        std::future::poll_fn(|cx| s.poll_write_ready(cx)).await?;
        if let Some(e) = s.io.take_error()? {
            return Err(e);
        }
        s.io.peer_addr()?;
        Ok(s)
    }

    /// This socket, registered with the current thread's event loop
    /// (taken off the one it was on, if another).
    pub fn rebind(self) -> io::Result<Socket> {
        if self.reg.is_local() {
            return Ok(self);
        }
        let Socket { reg, io } = self;
        reg.forget_fd(io.as_raw_fd());
        drop(reg);
        let reg = Registration::for_stream(&io)?;
        Ok(Socket { reg, io })
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.io.set_nodelay(on)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.peer_addr()
    }

    /// Ready once the kernel reported readiness not yet used up;
    /// otherwise the task waits for it.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.reg.poll_ready(cx, READ)
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.reg.poll_ready(cx, WRITE)
    }

    /// Whether reading may find something, with no syscall.
    pub fn read_ready(&self) -> bool {
        self.reg.is_ready(READ)
    }

    /// Whether this socket is registered with the current thread's loop.
    pub fn is_local(&self) -> bool {
        self.reg.is_local()
    }

    /// Nothing to read and no EOF or error, by a non-blocking peek (any
    /// thread); readiness is cleared when that is so.
    pub fn is_quiet(&self) -> bool {
        let quiet = sys::is_quiet(self.io.as_raw_fd());
        if quiet {
            self.reg.clear(READ);
        }
        quiet
    }

    /// Waits until reading may find something (data, EOF or an error).
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Runs `f` if `dir` is ready; WouldBlock from it clears the
    /// readiness. WouldBlock without a call if not ready.
    pub fn try_io<R>(&self, dir: Direction, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let dir = bits(dir);
        if !self.reg.is_ready(dir) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let r = f();
        if let Err(e) = &r
            && e.kind() == io::ErrorKind::WouldBlock
        {
            self.reg.clear(dir);
        }
        r
    }

    /// Clears `dir` readiness: the last call used it up.
    pub fn clear_ready(&self, dir: Direction) {
        self.reg.clear(bits(dir));
    }

    /// One `recv` into `buf` (no readiness check).
    pub fn recv(&self, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        sys::recv(self.io.as_raw_fd(), buf)
    }

    /// One `send` of `bytes` (no readiness check, nothing queued first).
    pub fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        send_fd(self.io.as_raw_fd(), bytes)
    }

    /// Writes `bytes` the cheap way for the forwarding path: a small write
    /// is handed to the loop, which sends it with the turn's other sends
    /// (`reactor::sends`), and counts as written; a larger one (or any
    /// where the loop does not batch) goes straight out, after what the
    /// socket has queued. Pending while an earlier send's backlog is not
    /// yet out; an earlier send's error, if it met one.
    pub fn poll_send_soon(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_settle(cx))?;
        if self.reg.queue_send(bytes, cx.waker()) {
            return Poll::Ready(Ok(bytes.len()));
        }
        self.poll_send_now(cx, bytes)
    }

    /// Writes what the kernel takes of `bytes` now, after anything the
    /// socket has queued or left over; Pending (with the task's waker
    /// registered) if it takes nothing.
    pub fn poll_send_now(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        self.reg.flush_queued();
        ready!(self.poll_settle(cx))?;
        loop {
            match self.try_io(Direction::Write, || self.send(bytes)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_write_ready(cx))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                done => return Poll::Ready(done),
            }
        }
    }

    /// Pending while a send handed to the loop is unfinished (backlog);
    /// its error if it failed. The pump asks this before it reads more
    /// for the peer (back-pressure).
    pub fn poll_settle(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.reg.poll_settle(cx)
    }

    /// Before the socket goes to another session or worker (a pooled
    /// server connection): sends what it has queued; false if bytes or an
    /// error are left, and it must not be reused.
    pub fn settle_for_handoff(&self) -> bool {
        self.reg.flush_queued();
        !self.reg.unsettled()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            // SAFETY: `recv` writes initialised bytes only, and we mark
            // exactly the count it returns as initialised.
            let unfilled = unsafe { buf.unfilled_mut() };
            let want = unfilled.len();
            match self.recv(unfilled) {
                Ok(n) => {
                    // SAFETY: the kernel wrote the first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    if n < want {
                        self.reg.clear(READ);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.reg.clear(READ),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Logins, resets and recovery batch as the pump does: a turn's
        // sends still go out before the loop waits, and `poll_flush`
        // sends at once.
        self.poll_send_soon(cx, bytes)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.reg.flush_queued();
        Socket::poll_settle(&self, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Poll::Ready(self.io.shutdown(std::net::Shutdown::Write))
    }
}

/// A listening socket registered with this thread's event loop. Workers
/// each hold a duplicate of one listening socket.
#[derive(Debug)]
pub struct Listener {
    reg: Registration,
    io: std::net::TcpListener,
}

impl Listener {
    pub fn from_std(io: std::net::TcpListener) -> io::Result<Listener> {
        io.set_nonblocking(true)?;
        let reg = Registration::new(io.as_raw_fd())?;
        Ok(Listener { reg, io })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// The next connection, registered with this thread's event loop.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Socket, SocketAddr)>> {
        loop {
            ready!(self.reg.poll_ready(cx, READ))?;
            match sys::accept(self.io.as_raw_fd()) {
                Ok((io, peer)) => {
                    let io = std::sync::Arc::new(io);
                    let reg = Registration::for_stream(&io)?;
                    return Poll::Ready(Ok((Socket { reg, io }, peer)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.reg.clear(READ),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The other workers' duplicates keep the socket open, so closing
        // ours would not take it off our epoll instance.
        self.reg.forget_fd(self.io.as_raw_fd());
    }
}

/// A connection accepted through this thread's loop, and its peer end (a
/// plain blocking socket): for tests of the loop's sockets.
#[cfg(test)]
pub(crate) async fn accepted() -> (Socket, std::net::TcpStream) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = std_listener.local_addr().expect("addr");
    let listener = Listener::from_std(std_listener).expect("register");
    let peer = std::net::TcpStream::connect(addr).expect("connect");
    let (ours, _) = listener.accept().await.expect("accept");
    (ours, peer)
}

/// The reactor's readiness bit for `dir`.
fn bits(dir: Direction) -> u8 {
    match dir {
        Direction::Read => READ,
        Direction::Write => WRITE,
    }
}
