//! What pgtenant asks of the operating system beyond std and tokio: the
//! socket calls the data plane makes itself, the batched-send ring, and
//! the open-files limit.
//!
//! Everything Linux-only (io_uring, `accept4`, `SOCK_CLOEXEC`,
//! `MSG_NOSIGNAL`, raw syscalls, raising `RLIMIT_NOFILE`) lives in
//! [`linux`], compiled on Linux only; [`portable`] gives the same calls
//! on the other Unixes (macOS, the BSDs) with std and socket2, and
//! without the ring (every send a syscall of its own). `.ci/run` checks
//! that no such symbol appears outside `src/sys/linux/`.
//!
//! The `portable-sys` feature builds the portable calls on Linux too, so
//! CI runs the integration tests on them.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;

#[cfg(all(target_os = "linux", not(feature = "portable-sys")))]
mod linux;
#[cfg(all(target_os = "linux", not(feature = "portable-sys")))]
use linux as os;

#[cfg(any(not(target_os = "linux"), feature = "portable-sys"))]
mod portable;
#[cfg(any(not(target_os = "linux"), feature = "portable-sys"))]
use portable as os;

pub(crate) use os::{SendRing, accept, raise_nofile, recv, send, start_connect};

/// Which calls this build makes (logged at start).
pub const FLAVOUR: &str = if cfg!(all(target_os = "linux", not(feature = "portable-sys"))) {
    "linux"
} else {
    "portable"
};

/// Soft and hard `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// The process's open-files limit (POSIX `getrlimit`).
pub fn nofile_limit() -> io::Result<NofileLimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is u64 on Linux and macOS, i64 on some BSDs.
    #[allow(clippy::unnecessary_cast)]
    Ok(NofileLimit {
        soft: r.rlim_cur as u64,
        hard: r.rlim_max as u64,
    })
}

/// Starts non-blocking `sock`'s connect to `addr` (done once it turns
/// writable).
fn begin_connect(
    sock: socket2::Socket,
    addr: std::net::SocketAddr,
) -> io::Result<std::net::TcpStream> {
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(sock.into())
}

/// Nothing to read and no EOF or error on a non-blocking socket, by a
/// peek that leaves any data queued.
pub(crate) fn is_quiet(fd: BorrowedFd<'_>) -> bool {
    peek_state(fd) == PeekState::Quiet
}

/// What a non-blocking peek finds on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeekState {
    /// Nothing to read, and open.
    Quiet,
    /// Bytes to read.
    Data,
    /// End of stream or an error: the peer is gone.
    Closed,
}

/// Peeks one byte without blocking or consuming it.
pub(crate) fn peek_state(fd: BorrowedFd<'_>) -> PeekState {
    let mut probe = [MaybeUninit::<u8>::uninit()];
    match socket2::SockRef::from(&fd).peek(&mut probe) {
        Ok(0) => PeekState::Closed,
        Ok(_) => PeekState::Data,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => PeekState::Quiet,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => PeekState::Data,
        Err(_) => PeekState::Closed,
    }
}

/// One send for the ring: a socket, the bytes, and where its result goes
/// (bytes taken, or -errno). (Without a ring, nothing calls it.)
#[cfg_attr(
    any(not(target_os = "linux"), feature = "portable-sys"),
    allow(dead_code)
)]
pub(crate) trait RingSend {
    fn fd(&self) -> BorrowedFd<'_>;
    fn bytes(&self) -> &[u8];
    fn result(&self) -> i32;
    fn set_result(&mut self, result: i32);
    /// The kernel may still read the bytes (their completion was lost):
    /// they must never be freed or reused.
    fn abandon(&mut self);
}

/// How a submission of sends went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    any(not(target_os = "linux"), feature = "portable-sys"),
    allow(dead_code)
)]
pub(crate) enum Submitted {
    /// Every send ran; each holds its result.
    All,
    /// The ring took none of them (they may be sent another way).
    None,
    /// The ring took them but results could not all be collected: those
    /// missing count as failed, and the ring must be given up.
    Unknown,
}
