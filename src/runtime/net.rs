//! TCP sockets on a worker's tokio runtime, over an `AsyncFd` of the
//! runtime's reactor. Readiness checks without a waker
//! are tokio's `try_io` (one atomic load, no syscall, no coop budget);
//! waits are `poll_read_ready`/`poll_write_ready`, which spend the task's
//! coop budget like any tokio resource. Small writes are queued for the
//! worker's batch of sends (`sends`).
//!
//! A socket belongs to the runtime of the thread that registered it and
//! is used there only; [`Socket::rebind`] moves it to the current
//! thread's (a pooled server connection checked out by another worker).

use super::sends::{self, Slot};
use super::worker_rt::{off_loop, runtime_id};
use crate::runtime::Direction;
use crate::runtime::batch::{self, SharedStream};
use crate::sys;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// What [`Socket::poll_peer_state`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Open, and the task is woken when that changes.
    Open,
    /// Open as far as can be told: bytes the peer sent wait unread, and
    /// no wake-up comes for what follows them.
    Unread,
    /// Closed or reset.
    Gone,
}

/// A connected TCP stream registered with this thread's runtime. The
/// stream is shared with the sends the batch has queued for it, so it
/// closes when the last of them is done (`runtime::batch`).
#[derive(Debug)]
pub struct Socket {
    /// Declared first: dropped first, it sends what the socket queued.
    sends: Sends,
    io: AsyncFd<SharedStream>,
}

/// The socket's share of the batch, and the runtime it is registered
/// with.
struct Sends {
    slot: Arc<Slot>,
    runtime: usize,
}

impl std::fmt::Debug for Sends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sends")
            .field("runtime", &self.runtime)
            .finish()
    }
}

impl Sends {
    fn is_local(&self) -> bool {
        self.runtime == runtime_id()
    }

    /// Sends this socket's queued bytes now (and with them the rest of
    /// the turn's batch), before bytes that must follow them go out
    /// another way.
    fn flush_queued(&self) {
        if self.is_local() && self.slot.sends.queued.get() != 0 {
            sends::flush_local();
        }
    }

    /// Backlog or error left by a submitted send (on its runtime).
    fn unsettled(&self) -> bool {
        self.is_local() && self.slot.sends.unsettled()
    }
}

impl Drop for Sends {
    fn drop(&mut self) {
        // Bytes handed to the batch go out now, in order, before the
        // socket closes. Where that cannot run (off the runtime), queued
        // sends and the backlog hold the stream, so they still go to this
        // socket, never to one that reuses its number. A backlog gets one
        // last try.
        if self.is_local() {
            self.flush_queued();
            batch::drain_backlog(&self.slot.sends);
        }
    }
}

/// Registers `io` (non-blocking) with this thread's runtime.
fn register<T: AsRawFd>(io: T, interest: Interest) -> io::Result<(AsyncFd<T>, usize)> {
    let runtime = runtime_id();
    if runtime == 0 || tokio::runtime::Handle::try_current().is_err() {
        return Err(off_loop());
    }
    // SAFETY: `io` owns its descriptor, and the AsyncFd owns `io`: the
    // descriptor stays open for as long as the registration.
    let fd =
        unsafe { AsyncFd::register_with_interest(io, interest) }.map_err(|e| e.into_parts().1)?;
    Ok((fd, runtime))
}

fn interest(dir: Direction) -> Interest {
    match dir {
        Direction::Read => Interest::READABLE,
        Direction::Write => Interest::WRITABLE,
    }
}

impl Socket {
    /// Registers a connected stream with this thread's runtime.
    pub fn from_std(io: std::net::TcpStream) -> io::Result<Socket> {
        io.set_nonblocking(true)?;
        Socket::register(Arc::new(io))
    }

    fn register(io: SharedStream) -> io::Result<Socket> {
        let (io, runtime) = register(io, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Socket {
            sends: Sends {
                slot: Arc::default(),
                runtime,
            },
            io,
        })
    }

    /// Connects to `host:port` (a name is resolved off the runtime),
    /// trying each address in turn.
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
        let s = Socket::register(Arc::new(sys::start_connect(addr)?))?;
        // Writable once the handshake is done, or failed.
        std::future::poll_fn(|cx| s.poll_write_ready(cx)).await?;
        if let Some(e) = s.io.get_ref().take_error()? {
            return Err(e);
        }
        s.io.get_ref().peer_addr()?;
        Ok(s)
    }

    /// This socket, registered with the current thread's runtime (taken
    /// off the one it was on, if another).
    pub fn rebind(self) -> io::Result<Socket> {
        if self.is_local() {
            return Ok(self);
        }
        let Socket { sends, io } = self;
        // Off its runtime: nothing to flush (the handoff settled it).
        drop(sends);
        Socket::register(io.into_inner())
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.io.get_ref().set_nodelay(on)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().peer_addr()
    }

    /// Shuts the write side (after the caller sent what it queued).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.io.get_ref().shutdown(std::net::Shutdown::Write)
    }

    /// Ready once the reactor reported readiness not yet used up;
    /// otherwise the task waits for it. A backlog left by the batch is
    /// sent meanwhile (the task also waits for write readiness for it).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.is_local() {
            return Poll::Ready(Err(off_loop()));
        }
        if self.sends.slot.sends.unsettled() {
            // An error stays for the next write.
            let _ = self.poll_settle(cx);
        }
        self.io.poll_read_ready(cx).map_ok(drop)
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.is_local() {
            return Poll::Ready(Err(off_loop()));
        }
        self.io.poll_write_ready(cx).map_ok(drop)
    }

    /// Bytes a submitted send left for this socket (on its runtime):
    /// `poll_read_ready` and `poll_settle` send them.
    pub fn has_backlog(&self) -> bool {
        self.sends.is_local() && !self.sends.slot.sends.backlog.borrow().bytes.is_empty()
    }

    /// Whether reading may find something, with no syscall.
    pub fn read_ready(&self) -> bool {
        self.io.try_io(Interest::READABLE, |_| Ok(())).is_ok()
    }

    /// Whether this socket is registered with the current thread's
    /// runtime.
    pub fn is_local(&self) -> bool {
        self.sends.is_local()
    }

    /// Nothing to read and no EOF or error, by a non-blocking peek (any
    /// thread); readiness is cleared when that is so.
    pub fn is_quiet(&self) -> bool {
        let quiet = sys::is_quiet(self.as_fd());
        if quiet {
            self.clear_ready(Direction::Read);
        }
        quiet
    }

    /// Whether the peer is gone: it closed its side of the connection
    /// (FIN or reset), whatever it sent before that. While it is open the
    /// task's waker waits for the close, unless bytes it sent are still
    /// unread: they keep the socket readable, so no wake-up comes for a
    /// close behind them ([`PeerState::Unread`]: ask again later).
    /// Readiness found stale (a peek finds nothing) is cleared.
    pub fn poll_peer_state(&self, cx: &mut Context<'_>) -> PeerState {
        if !self.is_local() {
            return PeerState::Unread;
        }
        loop {
            let ready = match self.io.poll_read_ready(cx) {
                Poll::Pending => return PeerState::Open,
                Poll::Ready(Err(_)) => return PeerState::Gone,
                Poll::Ready(Ok(guard)) => guard.ready(),
            };
            if ready.is_read_closed() {
                return PeerState::Gone;
            }
            match sys::peek_state(self.as_fd()) {
                sys::PeekState::Closed => return PeerState::Gone,
                sys::PeekState::Data => return PeerState::Unread,
                // Nothing after all: wait for the next event.
                sys::PeekState::Quiet => self.clear_ready(Direction::Read),
            }
        }
    }

    /// Waits until reading may find something (data, EOF or an error).
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Runs `f` if `dir` is ready; WouldBlock from it clears the
    /// readiness. WouldBlock without a call if not ready.
    pub fn try_io<R>(&self, dir: Direction, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.io.try_io(interest(dir), |_| f())
    }

    /// Clears `dir` readiness: the last call used it up. (A closed state
    /// stays, as tokio keeps it.)
    pub fn clear_ready(&self, dir: Direction) {
        let _ = self.io.try_io(interest(dir), |_| {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }

    /// One `recv` into `buf` (no readiness check).
    pub fn recv(&self, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        sys::recv(self.as_fd(), buf)
    }

    /// One `send` of `bytes` (no readiness check, nothing queued first).
    pub fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        sys::send(self.as_fd(), bytes)
    }

    /// Writes `bytes` the cheap way for the forwarding path: a small write
    /// is handed to the batch, which sends it with the turn's other sends
    /// (`sends`), and counts as written; a larger one (or any where the
    /// runtime does not batch) goes straight out, after what the socket
    /// has queued. Pending while an earlier send's backlog is not yet
    /// out; an earlier send's error, if it met one.
    pub fn poll_send_soon(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_settle(cx))?;
        if self.is_local() && sends::queue(&self.sends.slot, self.io.get_ref(), bytes, cx.waker()) {
            return Poll::Ready(Ok(bytes.len()));
        }
        self.poll_send_now(cx, bytes)
    }

    /// Writes what the kernel takes of `bytes` now, after anything the
    /// socket has queued or left over; Pending (with the task's waker
    /// registered) if it takes nothing.
    pub fn poll_send_now(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        self.sends.flush_queued();
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

    /// Pending while a send handed to the batch is unfinished (backlog),
    /// which is sent here as the socket turns writable; its error if it
    /// failed. The pump asks this before it reads more for the peer
    /// (back-pressure). Off the socket's runtime, Ready: nothing this
    /// thread queued is pending.
    pub fn poll_settle(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.sends.unsettled() {
            return Poll::Ready(Ok(()));
        }
        let state = &self.sends.slot.sends;
        loop {
            if let Some(code) = state.send_error.get() {
                return Poll::Ready(Err(io::Error::from_raw_os_error(code)));
            }
            if state.backlog.borrow().bytes.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let mut guard = ready!(self.io.poll_write_ready(cx))?;
            if batch::drain_backlog(state) {
                guard.clear_ready();
            }
        }
    }

    /// Sends what the socket has queued for the batch now, and waits for
    /// any backlog (`AsyncWrite::poll_flush`).
    pub fn poll_flush_now(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sends.flush_queued();
        self.poll_settle(cx)
    }

    /// Before the socket goes to another session or worker (a pooled
    /// server connection): sends what it has queued; false if bytes or an
    /// error are left, and it must not be reused.
    pub fn settle_for_handoff(&self) -> bool {
        self.sends.flush_queued();
        !self.sends.unsettled()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.get_ref().as_raw_fd()
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
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
                        self.clear_ready(Direction::Read);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.clear_ready(Direction::Read);
                }
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
        // sends still go out at its end, and `poll_flush` sends at once.
        self.poll_send_soon(cx, bytes)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush_now(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Poll::Ready(self.shutdown_write())
    }
}

/// A listening socket registered with this thread's runtime. Workers
/// each hold a duplicate of one listening socket; dropping ours takes it
/// off our reactor (the AsyncFd deregisters before it closes).
#[derive(Debug)]
pub struct Listener {
    io: AsyncFd<std::net::TcpListener>,
}

impl Listener {
    pub fn from_std(io: std::net::TcpListener) -> io::Result<Listener> {
        io.set_nonblocking(true)?;
        let (io, _) = register(io, Interest::READABLE)?;
        Ok(Listener { io })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// The next connection, registered with this thread's runtime.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Socket, SocketAddr)>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            match guard.try_io(|l| sys::accept(l.as_fd())) {
                Ok(Ok((io, peer))) => {
                    return Poll::Ready(Ok((Socket::register(Arc::new(io))?, peer)));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // WouldBlock: readiness cleared, wait again.
                Err(_) => {}
            }
        }
    }

    pub async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }
}

/// A connection accepted through this thread's runtime, and its peer end
/// (a plain blocking socket): for tests of the runtime's sockets.
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
/// resolver on a thread of its own (it blocks), never on a worker.
async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("pgtenant-resolve".into())
        .spawn(move || {
            use std::net::ToSocketAddrs as _;
            let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
        })?;
    rx.await
        .map_err(|_| io::Error::other("the resolver thread ended without an answer"))?
}
