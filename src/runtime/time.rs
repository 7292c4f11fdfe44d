//! Timers on a worker's tokio runtime: tokio's own, taking
//! `std::time::Instant` deadlines as the rest of the crate does. Being
//! tokio's, they follow `tokio::time::pause` in tests.

use std::future::Future;
use std::time::{Duration, Instant};

pub use tokio::time::error::Elapsed;
pub use tokio::time::{Sleep, Timeout};

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
