//! The process's open-files limit (`RLIMIT_NOFILE`): raised to its hard
//! limit at start, and compared with what the configured limits may
//! open. Every client, server and cancel connection is a file
//! descriptor; under the usual service default of 1,024 (soft), a
//! thousand idle sockets would otherwise make `accept` fail for everyone.

use crate::config::Config;
use std::io;

/// Descriptors the proxy uses besides client and server sockets: the
/// listener's duplicates, each worker's epoll and io_uring, logs, cancel
/// connections in flight, resolver threads.
pub const RESERVE: u64 = 256;

/// Soft and hard `RLIMIT_NOFILE`.
pub type Limit = crate::sys::NofileLimit;

pub fn current() -> io::Result<Limit> {
    crate::sys::nofile_limit()
}

/// Raises the soft limit to the hard limit where the OS allows it
/// (Linux; elsewhere it stays as the service manager set it); returns
/// the limit before and after.
pub fn raise_to_hard() -> io::Result<(Limit, Limit)> {
    crate::sys::raise_nofile()
}

/// Descriptors the configuration may hold open at once.
pub fn needed(config: &Config) -> u64 {
    let p = &config.proxy;
    let pools: u64 = config
        .placements
        .values()
        .map(|pl| u64::from(pl.pool_size))
        .sum();
    u64::from(p.max_client_connections)
        + u64::from(p.max_unauthenticated_connections)
        + pools
        + RESERVE
}

/// A warning when `config` may need more descriptors than `limit`.
pub fn shortfall(config: &Config, limit: u64) -> Option<String> {
    let need = needed(config);
    (need > limit).then(|| {
        let p = &config.proxy;
        format!(
            "max_client_connections ({}) + max_unauthenticated_connections ({}) + pool sizes ({}) + {RESERVE} reserved = {need} open files, \
             more than the limit of {limit}: past it accept fails for everyone; raise the limit (LimitNOFILE=, ulimit -n) or lower these",
            p.max_client_connections,
            p.max_unauthenticated_connections,
            need - RESERVE
                - u64::from(p.max_client_connections)
                - u64::from(p.max_unauthenticated_connections),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_clients_logins_and_pools() {
        let text = "[proxy]\nmax_client_connections = 100\nmax_unauthenticated_connections = 50\n\
                    [placements.a]\nurl = \"postgres://u@127.0.0.1/a\"\nisolation = \"database\"\npool_size = 7\n\
                    [placements.b]\nurl = \"postgres://v@127.0.0.1/b\"\nisolation = \"database\"\npool_size = 3\n";
        let (cfg, _) = crate::config::parse_str(text, "t.toml").expect("valid");
        assert_eq!(needed(&cfg), 100 + 50 + 10 + RESERVE);
        assert_eq!(shortfall(&cfg, needed(&cfg)), None);
        let warning = shortfall(&cfg, 300).expect("short");
        assert!(warning.contains("pool sizes (10)"), "{warning}");
        assert!(warning.contains("limit of 300"), "{warning}");
    }

    #[test]
    #[cfg(all(target_os = "linux", not(feature = "portable-sys")))]
    fn raising_reaches_the_hard_limit() {
        let (before, after) = raise_to_hard().expect("raising the open-files limit");
        assert_eq!(after.hard, before.hard);
        assert_eq!(after.soft, before.hard);
    }
}
