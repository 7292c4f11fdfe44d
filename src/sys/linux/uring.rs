//! The io_uring ring that submits a turn's sends in one `io_uring_enter`
//! (`runtime::batch` says why). Each send is non-blocking (MSG_DONTWAIT:
//! a full socket buffer completes with EAGAIN at once instead of waiting
//! inside io_uring), so every completion is there when the submit
//! returns.

use crate::sys::{RingSend, Submitted};
use io_uring::{IoUring, opcode, types};
use std::io;
use std::os::fd::AsRawFd;

/// A result not (yet) collected.
const PENDING: i32 = i32::MIN;
/// Collections retried after EINTR, EAGAIN or EBUSY before giving up.
const RETRIES: u32 = 1000;

pub(crate) struct SendRing {
    ring: IoUring,
    entries: u32,
}

impl SendRing {
    /// A ring of `entries` submission entries for this thread's sends;
    /// an error if the kernel refuses one (old kernels, seccomp profiles
    /// such as Docker's default, `kernel.io_uring_disabled`).
    pub(crate) fn new(entries: u32) -> io::Result<SendRing> {
        // One thread alone submits, and it reaps right after each
        // submit, so the kernel need not interrupt it to post completions.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(entries)
            .or_else(|_| IoUring::new(entries))?;
        Ok(SendRing { ring, entries })
    }

    /// Submits `sends` (at most `entries` of them) and collects their
    /// results.
    pub(crate) fn send_all<T: RingSend>(&mut self, sends: &mut [T]) -> Submitted {
        if sends.len() > self.entries as usize {
            return Submitted::None;
        }
        {
            let mut sq = self.ring.submission();
            for (i, e) in sends.iter_mut().enumerate() {
                e.set_result(PENDING);
                let bytes = e.bytes();
                let sqe = opcode::Send::new(
                    types::Fd(e.fd().as_raw_fd()),
                    bytes.as_ptr(),
                    bytes.len() as u32, // at most runtime::BATCH_MAX
                )
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64);
                // SAFETY: the bytes stay where they are until their
                // completion is collected below (MSG_DONTWAIT sends never
                // wait inside io_uring, so the submit returns with every
                // send done), or are abandoned (never freed) if it cannot
                // be; the fd stays open meanwhile (the caller's entry
                // holds the stream).
                if unsafe { sq.push(&sqe) }.is_err() {
                    // Cannot happen (the queue is empty and as large as
                    // `entries`); the ring is given up, which discards the rest.
                    return Submitted::None;
                }
            }
        }
        let mut left = sends.len();
        let mut first = true;
        let mut retries = 0;
        while left > 0 {
            // The first call submits; later ones (if any completion were
            // missing) submit what is left and wait for one.
            let r = if first {
                self.ring.submit()
            } else {
                self.ring.submitter().submit_and_wait(1)
            };
            match r {
                Ok(_) => {}
                Err(e) if first && e.kind() != io::ErrorKind::Interrupted => {
                    // io_uring_enter fails only when it took no entry.
                    tracing::warn!(error = %e, "io_uring submit failed; sending without it");
                    return Submitted::None;
                }
                Err(e)
                    if retries < RETRIES
                        && (e.kind() == io::ErrorKind::Interrupted
                            || e.kind() == io::ErrorKind::WouldBlock
                            || e.raw_os_error() == Some(libc::EBUSY)) =>
                {
                    retries += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring completions lost; failing those sends");
                    for e in sends.iter_mut().filter(|e| e.result() == PENDING) {
                        e.set_result(-libc::EIO);
                        e.abandon();
                    }
                    return Submitted::Unknown;
                }
            }
            first = false;
            for cqe in self.ring.completion() {
                if let Some(e) = sends.get_mut(cqe.user_data() as usize)
                    && e.result() == PENDING
                {
                    e.set_result(cqe.result());
                    left -= 1;
                }
            }
        }
        Submitted::All
    }
}
