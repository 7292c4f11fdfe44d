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
        None => read.map(|()| 0),
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
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the kernel
    // writes at most that many.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            s.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
            0,
            0usize,
            0usize,
        )
    };
    byte_count(n)
}

#[cfg(target_os = "linux")]
fn send(s: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            s.as_raw_fd(),
            bytes.as_ptr(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
            0usize,
            0usize,
        )
    };
    byte_count(n)
}

/// A byte-count syscall's result: the count, or the error in `errno`.
#[cfg(target_os = "linux")]
fn byte_count(n: libc::c_long) -> io::Result<usize> {
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
        let n = loop {
            ours.readable().await.expect("readable");
            match try_recv(&ours, &mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("recv: {e}"),
            }
        };
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
        let eof = loop {
            ours.readable().await.expect("readable");
            match try_recv(&ours, &mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("recv: {e}"),
            }
        };
        assert_eq!(eof, 0);
    }
}
