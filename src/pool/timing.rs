//! The pool's time limits and the arithmetic behind them: reconnect
//! backoff, connect concurrency, jittered lifetimes.

use crate::config::ProxyConfig;
use std::time::Duration;

/// Connections of one pool being opened at once, at most. Enough to fill
/// a pool quickly (a connect takes a few ms), few enough that a server
/// coming back is not hit by a pool's worth of logins at the same moment.
pub const CONNECT_CONCURRENCY: usize = 4;

/// The first backoff delay after a failed connect.
pub const RETRY_BASE: Duration = Duration::from_millis(100);

/// The pool's time limits, from `[proxy]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTimeouts {
    /// Opening and authenticating one connection; also bounds a check.
    pub connect: Duration,
    /// Idle connections unused for longer are closed; zero: never.
    pub idle: Duration,
    /// Connections are retired after this, jittered per connection;
    /// zero: each connection is used once.
    pub lifetime: Duration,
    /// Idle connections unused for longer are checked with a round trip
    /// before reuse; zero: always.
    pub check_delay: Duration,
    /// The longest backoff delay after failed connects.
    pub login_retry: Duration,
}

impl PoolTimeouts {
    pub fn from_config(p: &ProxyConfig) -> PoolTimeouts {
        PoolTimeouts {
            connect: p.server_connect_timeout,
            idle: p.server_idle_timeout,
            lifetime: p.server_lifetime,
            check_delay: p.server_check_delay,
            login_retry: p.server_login_retry,
        }
    }
}

impl Default for PoolTimeouts {
    fn default() -> Self {
        PoolTimeouts::from_config(&ProxyConfig::default())
    }
}

/// The backoff delay after `failures` consecutive failed connects:
/// [`RETRY_BASE`] doubling per failure, at most `cap`.
pub fn retry_delay(failures: u32, cap: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(20);
    RETRY_BASE.saturating_mul(1 << doublings).min(cap)
}

/// One connection's lifetime: uniformly in [0.9, 1.0] × `lifetime` for
/// `unit` in [0, 1], so connections opened together retire apart.
pub fn jittered_lifetime(lifetime: Duration, unit: f64) -> Duration {
    let factor = 0.9 + 0.1 * unit.clamp(0.0, 1.0);
    Duration::try_from_secs_f64(lifetime.as_secs_f64() * factor)
        .map_or(lifetime, |d| d.min(lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_up_to_the_cap() {
        let cap = Duration::from_secs(5);
        let got: Vec<u128> = (0..10).map(|n| retry_delay(n, cap).as_millis()).collect();
        assert_eq!(got, [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(retry_delay(u32::MAX, cap), cap);
        assert_eq!(retry_delay(3, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            retry_delay(1, Duration::from_millis(50)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn lifetimes_are_jittered_within_ninety_to_a_hundred_percent() {
        let life = Duration::from_secs(3600);
        assert_eq!(jittered_lifetime(life, 0.0), Duration::from_secs(3240));
        assert_eq!(jittered_lifetime(life, 1.0), life);
        assert_eq!(jittered_lifetime(life, 7.0), life);
        assert_eq!(jittered_lifetime(life, -1.0), Duration::from_secs(3240));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let d = jittered_lifetime(life, rand::random());
            assert!(d >= Duration::from_secs(3240) && d <= life, "{d:?}");
            seen.insert(d.as_secs());
        }
        assert!(seen.len() > 100, "not spread: {} values", seen.len());
        assert_eq!(jittered_lifetime(Duration::ZERO, 0.5), Duration::ZERO);
        assert_eq!(jittered_lifetime(Duration::MAX, 1.0), Duration::MAX);
        assert!(jittered_lifetime(Duration::MAX, 0.0) < Duration::MAX);
    }

    #[test]
    fn timeouts_come_from_the_config_with_pgbouncer_defaults() {
        let t = PoolTimeouts::default();
        assert_eq!(t.idle, Duration::from_secs(600));
        assert_eq!(t.lifetime, Duration::from_secs(3600));
        assert_eq!(t.check_delay, Duration::from_secs(30));
        assert_eq!(t.login_retry, Duration::from_secs(5));
        assert_eq!(t.connect, Duration::from_secs(15));
        let text = "[proxy]\nserver_idle_timeout = \"0\"\nserver_lifetime = \"1h 30m\"\n\
                    server_check_delay = \"500ms\"\nserver_login_retry = \"15s\"\n";
        let (cfg, _) = crate::config::parse_str(text, "t.toml").expect("valid");
        let t = PoolTimeouts::from_config(&cfg.proxy);
        assert_eq!(t.idle, Duration::ZERO);
        assert_eq!(t.lifetime, Duration::from_secs(5400));
        assert_eq!(t.check_delay, Duration::from_millis(500));
        assert_eq!(t.login_retry, Duration::from_secs(15));
        let bad = "[proxy]\nserver_lifetime = \"forever\"\n";
        let err = crate::config::parse_str(bad, "t.toml").expect_err("invalid");
        assert_eq!(err.key, "proxy.server_lifetime", "{err}");
    }
}
