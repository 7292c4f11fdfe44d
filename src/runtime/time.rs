//! Timers on a worker's event loop (`reactor`): `sleep`, `sleep_until`
//! and `timeout`, as tokio's, for code that runs on the loop.
//!
//! A timer is set at its first poll and cancelled when dropped. Used off
//! the loop it fires at once (a bug, caught by tests in debug builds),
//! so a bounded wait can never turn into an unbounded one.

use super::reactor::{TimerKey, timer_add, timer_cancel, timer_poll};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Waits until `deadline`.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    key: Option<TimerKey>,
}

pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        key: None,
    }
}

pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let fired = match &self.key {
            Some(key) => timer_poll(key, cx.waker()),
            None => match timer_add(self.deadline, cx.waker()) {
                Some(key) => {
                    self.key = Some(key);
                    false
                }
                None => {
                    debug_assert!(false, "a timer polled off the event loop");
                    true
                }
            },
        };
        if fired {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            timer_cancel(key);
        }
    }
}

/// `fut` took longer than its time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

pin_project_lite::pin_project! {
    /// `fut`, for at most a time limit (`timeout`). A struct rather than
    /// an async fn: an async fn would copy `fut` (a whole login, several
    /// kB) once more into its own state.
    #[derive(Debug)]
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        sleep: Sleep,
    }
}

/// Runs `fut` for at most `limit` (counted from now).
pub fn timeout<F: Future>(limit: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        sleep: sleep(limit),
    }
}

/// Runs `fut` until `deadline` at most.
pub fn timeout_at<F: Future>(deadline: Instant, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        sleep: sleep_until(deadline),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        Pin::new(this.sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::reactor::block_on;

    /// Timers fire in deadline order, not before their deadline, and a
    /// cancelled one never wakes anything.
    #[test]
    fn timers_fire_in_order_and_not_early() {
        block_on(async {
            let start = Instant::now();
            let order = std::sync::Mutex::new(Vec::new());
            let cancelled = sleep(Duration::from_millis(5));
            drop(cancelled);
            let a = async {
                sleep(Duration::from_millis(60)).await;
                order.lock().expect("lock").push(60);
            };
            let b = async {
                sleep(Duration::from_millis(20)).await;
                order.lock().expect("lock").push(20);
            };
            futures_util::join!(a, b);
            assert!(start.elapsed() >= Duration::from_millis(60));
            assert_eq!(*order.lock().expect("lock"), vec![20, 60]);
        });
    }

    #[test]
    fn timeout_ends_a_slow_future_and_passes_a_quick_one() {
        block_on(async {
            let slow = timeout(Duration::from_millis(10), sleep(Duration::from_secs(30))).await;
            assert_eq!(slow, Err(Elapsed));
            let quick = timeout(Duration::from_secs(30), async { 7 }).await;
            assert_eq!(quick, Ok(7));
        });
    }

    /// Many timers set and dropped before their deadline (an idle limit
    /// per transaction) do not pile up.
    #[test]
    fn cancelled_timers_are_compacted() {
        block_on(async {
            for _ in 0..10_000 {
                let mut s = std::pin::pin!(sleep(Duration::from_secs(3600)));
                assert!(futures_util::poll!(s.as_mut()).is_pending());
            }
            let heap = crate::runtime::reactor::timer_heap_len();
            assert!(heap < 200, "heap holds {heap} entries");
        });
    }
}
