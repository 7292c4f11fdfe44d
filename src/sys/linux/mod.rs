//! The Linux calls: `accept4` and sockets created non-blocking and
//! close-on-exec in one syscall, `recvfrom`/`sendto` made as raw
//! syscalls, the open-files limit raised to its hard limit, and the
//! io_uring ring that submits a turn's sends together (`uring`).

use super::NofileLimit;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};

mod uring;

pub(crate) use uring::SendRing;

/// A non-blocking, close-on-exec TCP socket with its connect to `addr`
/// under way (done once it turns writable).
pub(crate) fn start_connect(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    use socket2::{Domain, Protocol, Type};
    let sock = socket2::Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    super::begin_connect(sock, addr)
}

/// accept4 with the new socket non-blocking and close-on-exec (one
/// syscall; std's `accept` leaves it blocking).
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` has room for any address and `len` says so.
    let new = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
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

pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
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

pub(crate) fn send(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
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
    fd: BorrowedFd<'_>,
    buf: *mut libc::c_void,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: the caller vouches for `buf`; the address arguments are
    // null; `fd` is open for the call (borrowed).
    let n = unsafe { libc::syscall(nr, fd.as_raw_fd(), buf, len, flags, 0usize, 0usize) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Raises the soft open-files limit to the hard limit (an unprivileged
/// process may); returns the limit before and after.
pub(crate) fn raise_nofile() -> io::Result<(NofileLimit, NofileLimit)> {
    let before = super::nofile_limit()?;
    if before.soft < before.hard {
        let r = libc::rlimit {
            rlim_cur: before.hard,
            rlim_max: before.hard,
        };
        // SAFETY: `r` is a valid rlimit; only the soft value changes.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, super::nofile_limit()?))
}
