//! Timers on a worker's tokio runtime: tokio's own, taking
//! `std::time::Instant` deadlines as the rest of the crate does. Being
//! tokio's, they follow `tokio::time::pause` in tests; so must the clock
//! deadlines are computed from: [`now`], never `std::time::Instant::now`
//! (a paused test's timers would fire at once, or never, against it).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use tokio::time::error::Elapsed;
pub use tokio::time::{Sleep, Timeout};

/// The time timers count from: the runtime's clock (a paused test runtime
/// moves it itself), else the system's monotonic clock. Outside tests
/// (tokio without `test-util`) it is `std::time::Instant::now()`.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Waits until `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    tokio::time::sleep_until(deadline.into())
}

pub fn sleep(d: Duration) -> Sleep {
    tokio::time::sleep(d)
}

/// Runs `fut` for at most `limit` (counted from now).
pub fn timeout<F: Future>(limit: Duration, fut: F) -> Timeout<F> {
    tokio::time::timeout(limit, fut)
}

/// Runs `fut` until `deadline` at most.
pub fn timeout_at<F: Future>(deadline: Instant, fut: F) -> Timeout<F> {
    tokio::time::timeout_at(deadline.into(), fut)
}

/// A timer that takes one pointer of its owner's room until first armed:
/// tokio's `Sleep` (over 100 bytes) is boxed then, and reset rather than
/// made again after. For state that mostly waits with no limit armed (an
/// idle client's future).
#[derive(Default)]
pub struct LazyTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl LazyTimer {
    /// Fires at `deadline`, or never (None), replacing what was armed.
    /// A disarmed timer keeps its box, still registered: it may wake its
    /// task once for nothing, and never fires through `poll_fired`.
    pub fn set(&mut self, deadline: Option<Instant>) {
        let Some(deadline) = deadline else {
            self.armed = false;
            return;
        };
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline.into()),
            None => self.sleep = Some(Box::pin(sleep_until(deadline))),
        }
        self.armed = true;
    }

    /// Whether a deadline is armed.
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Ready once the armed deadline has passed; pending while disarmed.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) if self.armed => sleep.as_mut().poll(cx),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::block_on;

    #[test]
    fn timeout_ends_a_slow_future_and_passes_a_quick_one() {
        block_on(async {
            let slow = timeout(Duration::from_millis(10), sleep(Duration::from_secs(30))).await;
            assert!(slow.is_err());
            let quick = timeout(Duration::from_secs(30), async { 7 }).await;
            assert_eq!(quick, Ok(7));
            let start = Instant::now();
            sleep_until(start + Duration::from_millis(20)).await;
            assert!(start.elapsed() >= Duration::from_millis(20));
        });
    }

    #[test]
    fn a_lazy_timer_fires_only_while_armed() {
        block_on(async {
            let mut timer = LazyTimer::default();
            async fn fired(timer: &mut LazyTimer) -> bool {
                std::future::poll_fn(|cx| Poll::Ready(timer.poll_fired(cx).is_ready())).await
            }
            assert!(!fired(&mut timer).await, "never armed");
            let start = Instant::now();
            timer.set(Some(start + Duration::from_millis(10)));
            std::future::poll_fn(|cx| timer.poll_fired(cx)).await;
            assert!(start.elapsed() >= Duration::from_millis(10));
            timer.set(None);
            assert!(!fired(&mut timer).await, "disarmed after firing");
            // Armed again, the same box runs to the new deadline.
            let again = Instant::now();
            timer.set(Some(again + Duration::from_millis(10)));
            assert!(!fired(&mut timer).await, "not yet");
            std::future::poll_fn(|cx| timer.poll_fired(cx)).await;
            assert!(again.elapsed() >= Duration::from_millis(10));
        });
    }
}
