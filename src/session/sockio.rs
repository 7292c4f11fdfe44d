//! The forwarding path's socket calls: one `recv` or `send` per readiness,
//! without the layers of `AsyncRead`/`AsyncWrite` (cooperative budget,
//! `ReadBuf`, a readiness poll that may take a lock). The caller registers
//! for readiness only when a call finds nothing.
//!
//! On Linux the two syscalls are made directly: glibc's `recv` and `send`
//! are thread-cancellation points, and their bookkeeping around the
//! syscall cost about 4 % of the proxy's user-space instructions per
//! transaction (callgrind). pgtenant never cancels threads.

use bytes::BytesMut;
use std::io;
use std::mem::MaybeUninit;
use std::task::{Context, Poll, ready};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// tokio's readiness for reading `src` is set: one atomic load, no
/// syscall.
pub fn read_ready(src: &TcpStream) -> bool {
    src.try_io(Interest::READABLE, || Ok(())).is_ok()
}

/// One `recv` into the spare capacity of `buf` if tokio has seen `src`
/// readable; `WouldBlock` if not (or if the socket had nothing after all).
///
/// Like tokio's own `poll_read`, a read that does not fill the buffer
/// clears the readiness (a TCP socket gave all it had), so the next wait
/// registers at once instead of paying a `recv` that finds nothing.
pub fn try_recv(src: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let want = spare.len();
    let mut got = None;
    let read = src.try_io(Interest::READABLE, || {
        let n = recv(src, spare)?;
        got = Some(n);
        if n < want {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match got {
        Some(n) => {
            // SAFETY: `recv` initialised the first `n` bytes of the spare
            // capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Ok(n)
        }
        // Nothing was read, so this is never Ok(0), which means EOF.
        None => Err(read
            .err()
            .unwrap_or_else(|| io::ErrorKind::WouldBlock.into())),
    }
}

/// Writes what `dst` takes of `bytes` now; Pending (with the task's waker
/// registered) if it takes nothing.
pub fn poll_send(cx: &mut Context<'_>, dst: &TcpStream, bytes: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        match dst.try_io(Interest::WRITABLE, || send(dst, bytes)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(dst.poll_write_ready(cx))?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return Poll::Ready(done),
        }
    }
}

#[cfg(target_os = "linux")]
fn recv(s: &TcpStream, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the kernel
    // writes at most that many.
    unsafe { socket_call(libc::SYS_recvfrom, s, buf.as_mut_ptr().cast(), buf.len(), 0) }
}

#[cfg(target_os = "linux")]
fn send(s: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes, and
    // `sendto` only reads them.
    unsafe {
        socket_call(
            libc::SYS_sendto,
            s,
            bytes.as_ptr().cast_mut().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
        )
    }
}

/// `recvfrom`/`sendto` (syscall `nr`) on `s` with no address: the byte
/// count, or the error in `errno`.
///
/// # Safety
/// `buf` must be valid for `len` bytes, for writes when `nr` writes.
#[cfg(target_os = "linux")]
unsafe fn socket_call(
    nr: libc::c_long,
    s: &TcpStream,
    buf: *mut libc::c_void,
    len: usize,
    flags: libc::c_int,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: the caller vouches for `buf`; the address arguments are null.
    let n = unsafe { libc::syscall(nr, s.as_raw_fd(), buf, len, flags, 0usize, 0usize) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(not(target_os = "linux"))]
fn recv(s: &TcpStream, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    socket2::SockRef::from(s).recv(buf)
}

#[cfg(not(target_os = "linux"))]
fn send(s: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(s).send(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Bytes go both ways through the direct calls, a short read leaves
    /// the socket waiting for readiness, and EOF reads as 0.
    #[tokio::test]
    async fn recv_and_send_round_trip() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut peer = TcpStream::connect(addr).await.expect("connect");
        let (ours, _) = listener.accept().await.expect("accept");

        peer.write_all(b"hello").await.expect("write");
        let mut buf = BytesMut::with_capacity(64);
        let n = recv_when_ready(&ours, &mut buf).await;
        assert_eq!((n, &buf[..]), (5, &b"hello"[..]));
        // The short read cleared readiness: nothing more without a syscall.
        assert!(!read_ready(&ours));

        let sent = std::future::poll_fn(|cx| poll_send(cx, &ours, b"back")).await;
        assert_eq!(sent.expect("send"), 4);
        let mut back = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut back)
            .await
            .expect("read back");
        assert_eq!(&back, b"back");

        drop(peer);
        assert_eq!(recv_when_ready(&ours, &mut buf).await, 0, "EOF");
    }

    /// `try_recv` once tokio says `s` is readable, again after a spurious
    /// wake-up.
    async fn recv_when_ready(s: &TcpStream, buf: &mut BytesMut) -> usize {
        loop {
            s.readable().await.expect("readable");
            match try_recv(s, buf) {
                Ok(n) => return n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}
