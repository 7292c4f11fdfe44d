//! Upkeep of the pools, as PgBouncer's `janitor.c`: once a second, every
//! pool closes idle server connections past `server_idle_timeout` or past
//! their lifetime, and marks those idle past `server_check_delay` for a
//! round-trip check at their next checkout ([`PlacementPool::maintain`]).
//!
//! It runs on its own small thread, so the data-plane workers never pay
//! for it; a pool's mutex is held only for one pass over its idle lists,
//! never across an await, and sockets are closed after it is let go. The
//! pools are asked for on every tick, so a reload that swaps pools is
//! followed without telling the janitor.

use super::PlacementPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How often the pools are looked after: idle and lifetime limits are
/// kept to within this.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Starts the janitor thread; it stops as soon as `shutdown` is
/// cancelled. `pools` lists the pools to look after, read every tick.
pub fn spawn<F>(
    pools: F,
    shutdown: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: Fn() -> Vec<Arc<PlacementPool>> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("pgtenant-janitor".into())
        .spawn(move || rt.block_on(run(pools, shutdown)))
}

/// The janitor's loop, until `shutdown`.
pub async fn run<F>(pools: F, shutdown: CancellationToken)
where
    F: Fn() -> Vec<Arc<PlacementPool>>,
{
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::runtime::time::now();
        for pool in pools() {
            pool.maintain(now);
        }
    }
}

#[cfg(test)]
#[path = "janitor_tests.rs"]
mod tests;
