//! The socket calls on Unixes other than Linux (and on Linux with the
//! `portable-sys` feature): std and socket2 only, no ring.

use super::{NofileLimit, RingSend, Submitted};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

/// A non-blocking TCP socket with its connect to `addr` under way (done
/// once it turns writable). socket2 sets close-on-exec where the OS
/// cannot do it at creation.
pub(crate) fn start_connect(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    use socket2::{Domain, Protocol, Type};
    let sock = socket2::Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    super::begin_connect(sock, addr)
}

/// Accepts a connection, made non-blocking (and close-on-exec by socket2).
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    let (sock, addr) = socket2::SockRef::from(&listener).accept()?;
    sock.set_nonblocking(true)?;
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection that is not TCP/IP"))?;
    Ok((sock.into(), peer))
}

pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    socket2::SockRef::from(&fd).recv(buf)
}

/// A send that never raises SIGPIPE (Rust programs ignore it, and
/// socket2 asks the OS not to send it where it can).
pub(crate) fn send(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(&fd).send(bytes)
}

/// The limit is left as the service manager set it (raising it to the
/// hard limit is done on Linux, where the hard limit is a real number).
pub(crate) fn raise_nofile() -> io::Result<(NofileLimit, NofileLimit)> {
    let now = super::nofile_limit()?;
    Ok((now, now))
}

/// No ring here: every send is a syscall of its own.
pub(crate) enum SendRing {}

impl SendRing {
    pub(crate) fn new(_entries: u32) -> io::Result<SendRing> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "batched sends need io_uring (Linux)",
        ))
    }

    pub(crate) fn send_all<T: RingSend>(&mut self, _sends: &mut [T]) -> Submitted {
        match *self {}
    }
}
