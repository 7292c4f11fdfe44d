//! TCP sockets on a worker's event loop (`reactor`): a listener, and a
//! stream that implements tokio's `AsyncRead`/`AsyncWrite` for the login
//! and recovery paths and offers readiness-level calls for the forwarding
//! path (`session::sockio`). Small writes of both kinds are queued for
//! the loop's batch of sends (`reactor::sends`).
//!
//! A socket belongs to the reactor of the thread that registered it and
//! is used there only; [`Socket::rebind`] moves it to the current
//! thread's (a pooled server connection checked out by another worker).

use super::reactor::{READ, Registration, SharedStream, WRITE};
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
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
        use socket2::{Domain, Protocol, Type};
        let sock = socket2::Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let s = Socket::from_std(sock.into())?;
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
        let mut probe = [MaybeUninit::<u8>::uninit()];
        // SAFETY: one writable byte; MSG_PEEK leaves the data queued.
        let n = unsafe {
            libc::recv(
                self.io.as_raw_fd(),
                probe.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let quiet = n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock;
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
    pub fn try_io<R>(&self, dir: u8, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
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
    pub fn clear_ready(&self, dir: u8) {
        self.reg.clear(dir);
    }

    /// One `recv` into `buf` (no readiness check).
    pub fn recv(&self, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        recv(self.io.as_raw_fd(), buf)
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
            match self.try_io(WRITE, || self.send(bytes)) {
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
            match accept(self.io.as_raw_fd()) {
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

/// Addresses of `host:port`: an IP at once, a name through the system
/// resolver on a thread of its own (it blocks), never on the loop.
async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("pgtenant-resolve".into())
        .spawn(move || {
            let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
        })?;
    rx.await
        .map_err(|_| io::Error::other("the resolver thread ended without an answer"))?
}

/// accept4 with the new socket non-blocking and close-on-exec (one
/// syscall; std's `accept` leaves it blocking).
fn accept(fd: RawFd) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use std::os::fd::FromRawFd;
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` has room for any address and `len` says so.
    let new = unsafe {
        libc::accept4(
            fd,
            storage.as_mut_ptr().cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new fd that nothing else owns.
    let io = unsafe { std::net::TcpStream::from_raw_fd(new) };
    // SAFETY: the kernel wrote the peer's address into `storage`
    // (zeroed before, so every byte is initialised).
    let storage = unsafe { storage.assume_init() };
    let peer = socket_addr(&storage)
        .ok_or_else(|| io::Error::other("accepted a connection that is not TCP/IP"))?;
    Ok((io, peer))
}

/// The IPv4 or IPv6 address in `s`.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says `s` holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the kernel
    // writes at most that many.
    unsafe {
        socket_call(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
        )
    }
}

pub(super) fn send_fd(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes, and
    // `sendto` only reads them.
    unsafe {
        socket_call(
            libc::SYS_sendto,
            fd,
            bytes.as_ptr().cast_mut().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
        )
    }
}

/// `recvfrom`/`sendto` (syscall `nr`) on `fd` with no address, made
/// directly: glibc's wrappers are thread-cancellation points, and their
/// bookkeeping was about 4 % of the proxy's user-space instructions per
/// transaction (callgrind). pgtenant never cancels threads.
///
/// # Safety
/// `buf` must be valid for `len` bytes, for writes when `nr` writes.
unsafe fn socket_call(
    nr: libc::c_long,
    fd: RawFd,
    buf: *mut libc::c_void,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: the caller vouches for `buf`; the address arguments are null.
    let n = unsafe { libc::syscall(nr, fd, buf, len, flags, 0usize, 0usize) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
