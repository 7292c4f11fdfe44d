//! The syscalls the data plane makes on sockets itself: name resolution
//! off the worker's thread, `accept4`, direct
//! `recvfrom`/`sendto`, the start of a non-blocking connect.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;

/// A non-blocking, close-on-exec TCP socket with its connect to `addr`
/// under way (done once it turns writable).
pub(crate) fn start_connect(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
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
    Ok(sock.into())
}

/// Nothing to read and no EOF or error on `fd`, by a non-blocking peek.
pub(crate) fn is_quiet(fd: RawFd) -> bool {
    let mut probe = [MaybeUninit::<u8>::uninit()];
    // SAFETY: one writable byte; MSG_PEEK leaves the data queued.
    let n = unsafe {
        libc::recv(
            fd,
            probe.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Addresses of `host:port`: an IP at once, a name through the system
/// resolver on a thread of its own (it blocks), never on the loop.
pub(crate) async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
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
pub(crate) fn accept(fd: RawFd) -> io::Result<(std::net::TcpStream, SocketAddr)> {
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

pub(crate) fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
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

pub(crate) fn send_fd(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
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
