//! What a reload changed (the summary it returns and logs), and the keys
//! that cannot change while the proxy runs.

use crate::catalog::TenantEntry;
use crate::config::Config;
use crate::state::{Placement, Snapshot};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// What a reload changed. Names are sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub tenants_added: Vec<String>,
    pub tenants_removed: Vec<String>,
    /// Any setting of theirs: placement, limits, users, schema.
    pub tenants_changed: Vec<String>,
    pub placements_added: Vec<String>,
    pub placements_removed: Vec<String>,
    /// Connection settings changed: a new pool replaced the old one.
    pub placements_changed: Vec<String>,
    /// (pool, size before, size after) of pools kept.
    pub pools_resized: Vec<(String, usize, usize)>,
    /// Restart-only keys the new file changed, kept at their running
    /// values.
    pub kept_restart_values: Vec<String>,
    /// Placements whose tenant set or tenants' caps changed.
    touched: BTreeSet<String>,
}

impl ReloadSummary {
    /// Whether placement `name` has tenants added, removed or changed.
    pub fn touches(&self, name: &str) -> bool {
        self.touched.contains(name)
    }

    pub fn is_empty(&self) -> bool {
        self.tenants_added.is_empty()
            && self.tenants_removed.is_empty()
            && self.tenants_changed.is_empty()
            && self.placements_added.is_empty()
            && self.placements_removed.is_empty()
            && self.placements_changed.is_empty()
            && self.pools_resized.is_empty()
    }
}

/// Shown names per list, at most; the rest are counted.
const SHOWN: usize = 10;

fn names(f: &mut fmt::Formatter<'_>, what: &str, list: &[String]) -> fmt::Result {
    if list.is_empty() {
        return Ok(());
    }
    write!(
        f,
        "; {what} {}: {}",
        list.len(),
        list[..list.len().min(SHOWN)].join(", ")
    )?;
    if list.len() > SHOWN {
        write!(f, ", and {} more", list.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("configuration reloaded")?;
        if self.is_empty() {
            f.write_str(": nothing changed")?;
        }
        names(f, "tenants added", &self.tenants_added)?;
        names(f, "tenants removed", &self.tenants_removed)?;
        names(f, "tenants changed", &self.tenants_changed)?;
        names(f, "placements added", &self.placements_added)?;
        names(f, "placements removed", &self.placements_removed)?;
        names(f, "placements changed", &self.placements_changed)?;
        let resized: Vec<String> = self
            .pools_resized
            .iter()
            .map(|(p, a, b)| format!("{p} {a} -> {b}"))
            .collect();
        names(f, "pools resized", &resized)?;
        names(f, "needing a restart (kept)", &self.kept_restart_values)
    }
}

/// Compares two snapshots (`new` built from `old` by
/// [`Snapshot::rebuild`], so that kept pools are the same `Arc`).
/// `pools_resized` is filled when the kept pools are updated.
pub fn summarize(old: &Snapshot, new: &Snapshot) -> ReloadSummary {
    let mut s = ReloadSummary::default();
    for t in new.catalog.iter() {
        match old.catalog.get(t.id.as_str()) {
            None => {
                s.tenants_added.push(t.id.as_str().to_owned());
                s.touched.insert(t.placement.clone());
            }
            Some(was) if !same_tenant(was, t) => {
                s.tenants_changed.push(t.id.as_str().to_owned());
                s.touched.insert(t.placement.clone());
                s.touched.insert(was.placement.clone());
            }
            Some(_) => {}
        }
    }
    for t in old.catalog.iter() {
        if !new.catalog.contains(t.id.as_str()) {
            s.tenants_removed.push(t.id.as_str().to_owned());
            s.touched.insert(t.placement.clone());
        }
    }
    for (name, p) in &new.placements {
        match old.placements.get(name) {
            None => s.placements_added.push(name.clone()),
            Some(was) if !same_pools(was, p) => s.placements_changed.push(name.clone()),
            Some(_) => {}
        }
    }
    for name in old.placements.keys() {
        if !new.placements.contains_key(name) {
            s.placements_removed.push(name.clone());
        }
    }
    for list in [
        &mut s.tenants_added,
        &mut s.tenants_removed,
        &mut s.tenants_changed,
        &mut s.placements_added,
        &mut s.placements_removed,
        &mut s.placements_changed,
    ] {
        list.sort_unstable();
    }
    s
}

fn same_tenant(a: &TenantEntry, b: &TenantEntry) -> bool {
    a.placement == b.placement
        && a.max_client_connections == b.max_client_connections
        && a.max_pinned_connections == b.max_pinned_connections
        && a.max_server_connections == b.max_server_connections
        && a.search_path == b.search_path
        && a.users.len() == b.users.len()
        && a.users.iter().all(|(u, c)| b.users.get(u) == Some(c))
}

fn same_pools(a: &Placement, b: &Placement) -> bool {
    let same_operators = match (&a.operators, &b.operators) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        _ => false,
    };
    a.isolation == b.isolation && Arc::ptr_eq(&a.pool, &b.pool) && same_operators
}

/// Puts back the running values of `[proxy]` keys that cannot change
/// while the proxy runs, and says which the new file changed:
/// `listen`, `workers` and `io_uring` (the listener and worker threads
/// exist), `shutdown_timeout` (read at start), the server-connection
/// timers (every pool keeps one set; a restart applies new ones to all)
/// and `secret_file` (the secret is read at start only: the rls context
/// keys registered in databases derive from it).
pub fn keep_restart_only(new: &mut Config, running: &Config) -> Vec<String> {
    let mut kept = Vec::new();
    let (n, r) = (&mut new.proxy, &running.proxy);
    macro_rules! keep {
        ($($key:ident),*) => {$(
            if n.$key != r.$key {
                kept.push(format!(
                    "proxy.{} changed; it takes a restart, the running value stays",
                    stringify!($key)
                ));
                n.$key = r.$key.clone();
            }
        )*};
    }
    keep!(
        listen,
        workers,
        io_uring,
        shutdown_timeout,
        server_connect_timeout,
        server_idle_timeout,
        server_lifetime,
        server_check_delay,
        server_login_retry,
        secret_file
    );
    // The HTTP listener is bound once; its token and the rest of
    // `[admin]` are read live.
    let running_listen = running.admin.as_ref().and_then(|a| a.listen.clone());
    let new_listen = new.admin.as_ref().and_then(|a| a.listen.clone());
    if new_listen != running_listen {
        kept.push("admin.listen changed; it takes a restart, the running value stays".into());
        match new.admin.as_mut() {
            Some(a) => a.listen = running_listen,
            None => {
                new.admin = Some(crate::config::AdminConfig {
                    listen: running_listen,
                    users: Default::default(),
                    token: None,
                    top_tenants: crate::config::DEFAULT_TOP_TENANTS,
                    tls: false,
                })
            }
        }
    }
    kept
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
