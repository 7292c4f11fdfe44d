//! Timers on a worker's tokio runtime: tokio's own, taking
//! `std::time::Instant` deadlines as the rest of the crate does. Being
//! tokio's, they follow `tokio::time::pause` in tests; so must the clock
//! deadlines are computed from: [`now`], never `std::time::Instant::now`
//! (a paused test's timers would fire at once, or never, against it).

use std::future::Future;
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
}
