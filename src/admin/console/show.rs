//! The SHOW listings. Columns follow PgBouncer's where the meaning
//! matches (`cl_active`, `sv_idle`, `connect_time`, `remote_pid`, ...);
//! what PgBouncer calls a database is a tenant here, and a pool is a
//! placement's, shared by its tenants.

use super::command::Listing;
use super::rows::{Kind, Rows, int, text, time};
use crate::config::{AuthType, PinPolicy, PoolMode};
use crate::state::{ProxyState, Snapshot};
use std::collections::HashMap;
use std::time::Instant;

/// The rows of `listing`.
pub fn listing(state: &ProxyState, snap: &Snapshot, listing: Listing) -> Rows {
    match listing {
        Listing::Tenants => tenants(state, snap),
        Listing::Pools => pools(state, snap),
        Listing::Clients => clients(state),
        Listing::Servers => servers(snap),
        Listing::Config => config(snap),
        Listing::Version => version(),
        Listing::Stats => stats(state),
    }
}

static TENANT_COLUMNS: [(&str, Kind); 9] = [
    ("tenant", Kind::Text),
    ("placement", Kind::Text),
    ("isolation", Kind::Text),
    ("state", Kind::Text),
    ("max_client_connections", Kind::Int),
    ("max_server_connections", Kind::Int),
    ("max_pinned_connections", Kind::Int),
    ("client_connections", Kind::Int),
    ("server_connections", Kind::Int),
];

fn tenants(state: &ProxyState, snap: &Snapshot) -> Rows {
    let mut rows = Rows::new(&TENANT_COLUMNS);
    let mut list: Vec<_> = snap.catalog.iter().collect();
    list.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    let proxy = &snap.config.proxy;
    for t in list {
        let placement = snap.placements.get(&t.placement);
        let pool = placement.map(|p| &p.pool);
        let held = pool
            .and_then(|p| p.seat(t.id.as_str()).and_then(|s| p.tenant_counts(s)))
            .map_or(0, |c| c.held);
        // As the session computes it (`client::serve_inner`).
        let max_pins = t
            .max_pinned_connections
            .unwrap_or_else(|| pool.map_or(1, |p| (p.counts().max as u32 / 2).max(1)));
        rows.push(vec![
            text(t.id.as_str()),
            text(t.placement.as_str()),
            placement.map(|p| p.isolation.as_str().to_string()),
            text(state.controls.state(&t.id, t.suspended).as_str()),
            int(t
                .max_client_connections
                .unwrap_or(proxy.default_tenant_max_client_connections)),
            int(t.max_server_connections),
            int(max_pins),
            int(state.tenant_client_count(&t.id)),
            int(held),
        ]);
    }
    rows
}

static POOL_COLUMNS: [(&str, Kind); 11] = [
    ("placement", Kind::Text),
    ("tenant", Kind::Text),
    ("cl_active", Kind::Int),
    ("cl_waiting", Kind::Int),
    ("sv_active", Kind::Int),
    ("sv_idle", Kind::Int),
    ("sv_login", Kind::Int),
    ("maxwait", Kind::Int),
    ("maxwait_us", Kind::Int),
    ("pool_size", Kind::Int),
    ("pool_mode", Kind::Text),
];

/// A row per placement (tenant NULL: the pool's totals, idle and
/// connecting connections included) and a row per tenant of it (what its
/// clients hold and wait for; idle connections belong to no tenant, so
/// `sv_idle` and `sv_login` are NULL there). `pool_size` is the pool's on
/// a placement row, the tenant's `max_server_connections` on its own.
/// `maxwait` and `maxwait_us`, as PgBouncer's: how long the oldest client
/// waiting for a server connection has waited (whole seconds, and the
/// microseconds past them); 0 when none waits. A client waiting for its
/// tenant's pause to end waits too (in `cl_waiting` and in `maxwait`).
fn pools(state: &ProxyState, snap: &Snapshot) -> Rows {
    let mut rows = Rows::new(&POOL_COLUMNS);
    let now = crate::runtime::time::now();
    let maxwait = |since: Option<Instant>| {
        let waited = since.map_or(std::time::Duration::ZERO, |t| {
            now.saturating_duration_since(t)
        });
        [int(waited.as_secs()), int(waited.subsec_micros())]
    };
    let mode = match snap.pool_mode() {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    };
    // Clients waiting for a pause to end, by tenant: how many, and since
    // when the first of them.
    let mut paused: HashMap<String, (usize, Instant)> = HashMap::new();
    for s in state.stop.sessions() {
        if let Some(c) = &s.client
            && let Some(since) = c.paused_since()
        {
            let e = paused
                .entry(c.tenant.as_str().to_string())
                .or_insert((0, since));
            e.0 += 1;
            e.1 = e.1.min(since);
        }
    }
    let mut names: Vec<&String> = snap.placements.keys().collect();
    names.sort();
    for name in names {
        let placement = &snap.placements[name];
        let pool = &placement.pool;
        let mut tenants = pool.seats();
        tenants.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tenant_rows = Vec::with_capacity(tenants.len());
        let (mut cl_active, mut cl_waiting) = (0usize, 0usize);
        // The oldest wait of the placement's tenants, paused ones included.
        let mut oldest = pool.oldest_wait();
        for (tenant, seat) in tenants {
            let counts = pool.tenant_counts(seat);
            let id = crate::routing::TenantId::new(&tenant);
            let clients = state.tenant_client_count(&id) as usize;
            let held = paused.get(tenant.as_str()).copied();
            let waiting = counts.map_or(0, |c| c.waiting) + held.map_or(0, |(n, _)| n);
            let active = clients.saturating_sub(waiting);
            cl_active += active;
            cl_waiting += waiting;
            let since = (counts.and_then(|c| c.waiting_since))
                .into_iter()
                .chain(held.map(|(_, t)| t))
                .min();
            oldest = oldest.into_iter().chain(since).min();
            let [wait_s, wait_us] = maxwait(since);
            tenant_rows.push(vec![
                text(name.as_str()),
                text(tenant),
                int(active),
                int(waiting),
                int(counts.map_or(0, |c| c.held)),
                None,
                None,
                wait_s,
                wait_us,
                int(counts.map_or(0, |c| c.cap)),
                text(mode),
            ]);
        }
        let c = pool.counts();
        let [wait_s, wait_us] = maxwait(oldest);
        rows.push(vec![
            text(name.as_str()),
            None,
            int(cl_active),
            int(cl_waiting),
            int(c.active),
            int(c.idle),
            int(c.connecting),
            wait_s,
            wait_us,
            int(c.max),
            text(mode),
        ]);
        for r in tenant_rows {
            rows.push(r);
        }
        if let Some(ops) = &placement.operators {
            let c = ops.counts();
            let [wait_s, wait_us] = maxwait(ops.oldest_wait());
            rows.push(vec![
                text(ops.name().0.as_str()),
                None,
                None,
                int(c.waiting),
                int(c.active),
                int(c.idle),
                int(c.connecting),
                wait_s,
                wait_us,
                int(c.max),
                text(mode),
            ]);
        }
    }
    rows
}

static CLIENT_COLUMNS: [(&str, Kind); 10] = [
    ("type", Kind::Text),
    ("user", Kind::Text),
    ("tenant", Kind::Text),
    ("state", Kind::Text),
    ("addr", Kind::Text),
    ("port", Kind::Int),
    ("connect_time", Kind::Text),
    ("application_name", Kind::Text),
    ("id", Kind::Int),
    ("tls", Kind::Text),
];

/// One row per authenticated client session (console sessions included,
/// with tenant `pgtenant`). `state`: `waiting` while its tenant's pause
/// holds it, else `active` (PgBouncer's "logged in").
fn clients(state: &ProxyState) -> Rows {
    let mut rows = Rows::new(&CLIENT_COLUMNS);
    let mut list: Vec<_> = state
        .stop
        .sessions()
        .into_iter()
        .filter(|s| s.client.is_some())
        .collect();
    list.sort_by_key(|s| s.client.as_ref().map_or(0, |c| c.id));
    for s in &list {
        let Some(c) = &s.client else { continue };
        let st = if c.paused_since().is_some() {
            "waiting"
        } else {
            "active"
        };
        rows.push(vec![
            text("C"),
            text(c.user.as_str()),
            text(c.tenant.as_str()),
            text(st),
            text(c.peer.ip().to_string()),
            int(c.peer.port()),
            time(c.connect_time),
            c.application_name.clone(),
            int(c.id),
            c.tls.as_deref().map(str::to_string),
        ]);
    }
    rows
}

static SERVER_COLUMNS: [(&str, Kind); 11] = [
    ("type", Kind::Text),
    ("user", Kind::Text),
    ("database", Kind::Text),
    ("placement", Kind::Text),
    ("tenant", Kind::Text),
    ("state", Kind::Text),
    ("addr", Kind::Text),
    ("port", Kind::Int),
    ("connect_time", Kind::Text),
    ("remote_pid", Kind::Int),
    ("id", Kind::Int),
];

/// One row per open server connection: its backend role and database,
/// its placement, `idle` or `active` (leased, or being cleaned for the
/// next client). `tenant` is the placement's only tenant; on a shared
/// pool a connection serves any of its tenants, one transaction at a
/// time, so it is NULL there.
fn servers(snap: &Snapshot) -> Rows {
    let mut rows = Rows::new(&SERVER_COLUMNS);
    let mut names: Vec<&String> = snap.placements.keys().collect();
    names.sort();
    for name in names {
        let placement = &snap.placements[name];
        for pool in std::iter::once(&placement.pool).chain(placement.operators.as_ref()) {
            let seats = pool.seats();
            let only = match seats.as_slice() {
                [(t, _)] => Some(t.clone()),
                _ => None,
            };
            let target = pool.target();
            let mut list = pool.servers();
            list.sort_by_key(|(s, _)| s.id);
            for (s, idle) in list {
                rows.push(vec![
                    text("S"),
                    text(target.user.as_str()),
                    text(target.database.as_str()),
                    text(pool.name().0.as_str()),
                    only.clone(),
                    text(if idle { "idle" } else { "active" }),
                    text(target.host.as_str()),
                    int(target.port),
                    time(s.connect_time),
                    int(s.pid),
                    int(s.id),
                ]);
            }
        }
    }
    rows
}

static CONFIG_COLUMNS: [(&str, Kind); 2] = [("key", Kind::Text), ("value", Kind::Text)];

/// The running configuration as `key`/`value` rows. Never a secret:
/// placement URLs lose their password, admin and tenant users their
/// passwords (tenants are in SHOW TENANTS).
fn config(snap: &Snapshot) -> Rows {
    let mut rows = Rows::new(&CONFIG_COLUMNS);
    let p = &snap.config.proxy;
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let mut kv = |k: String, v: String| rows.push(vec![text(k), text(v)]);
    let entries: Vec<(&str, String)> = vec![
        ("listen", p.listen.clone()),
        (
            "pool_mode",
            match p.pool_mode {
                PoolMode::Transaction => "transaction".into(),
                PoolMode::Session => "session".into(),
            },
        ),
        (
            "tenant_from",
            p.tenant_from
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("user_separator", p.user_separator.clone()),
        ("sni_suffix", p.sni_suffix.clone().unwrap_or_default()),
        (
            "default_placement",
            p.default_placement.clone().unwrap_or_default(),
        ),
        (
            "auth_type",
            match p.auth_type {
                AuthType::ScramSha256 => "scram-sha-256".into(),
                AuthType::Trust => "trust".into(),
            },
        ),
        ("workers", p.workers.to_string()),
        ("io_uring", p.io_uring.to_string()),
        (
            "max_client_connections",
            p.max_client_connections.to_string(),
        ),
        (
            "max_unauthenticated_connections",
            p.max_unauthenticated_connections.to_string(),
        ),
        (
            "max_unauthenticated_per_address",
            p.max_unauthenticated_per_address.to_string(),
        ),
        (
            "default_tenant_max_client_connections",
            p.default_tenant_max_client_connections.to_string(),
        ),
        ("max_message_size", p.max_message_size.0.to_string()),
        ("client_startup_timeout", d(p.client_startup_timeout)),
        ("client_login_timeout", d(p.client_login_timeout)),
        ("auth_failure_limit", p.auth_failure_limit.to_string()),
        ("auth_failure_window", d(p.auth_failure_window)),
        ("auth_ban_time", d(p.auth_ban_time)),
        ("query_wait_timeout", d(p.query_wait_timeout)),
        ("server_connect_timeout", d(p.server_connect_timeout)),
        ("server_idle_timeout", d(p.server_idle_timeout)),
        ("server_lifetime", d(p.server_lifetime)),
        ("server_check_delay", d(p.server_check_delay)),
        ("server_login_retry", d(p.server_login_retry)),
        (
            "max_prepared_statements",
            p.max_prepared_statements.to_string(),
        ),
        ("max_client_memory", p.max_client_memory.0.to_string()),
        ("max_statement_size", p.max_statement_size.0.to_string()),
        ("client_read_timeout", d(p.client_read_timeout)),
        ("idle_transaction_timeout", d(p.idle_transaction_timeout)),
        ("client_idle_timeout", d(p.client_idle_timeout)),
        ("client_message_timeout", d(p.client_message_timeout)),
        (
            "pin_policy",
            match p.pin_policy {
                PinPolicy::Pin => "pin".into(),
                PinPolicy::Error => "error".into(),
            },
        ),
        ("server_reset_query", p.server_reset_query.clone()),
        ("pause_timeout", d(p.pause_timeout)),
        ("shutdown_timeout", d(p.shutdown_timeout)),
        (
            "secret_file",
            p.secret_file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
        ),
        (
            "proxy_protocol_networks",
            p.proxy_protocol_networks
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "proxy_protocol_required",
            p.proxy_protocol_required.to_string(),
        ),
    ];
    for (k, v) in entries {
        kv(format!("proxy.{k}"), v);
    }
    if let Some(admin) = &snap.config.admin {
        kv(
            "admin.listen".into(),
            admin.listen.clone().unwrap_or_default(),
        );
    }
    let mut admins: Vec<&str> = snap.catalog.admin_names().collect();
    admins.sort_unstable();
    kv("admin.users".into(), admins.join(","));
    let mut names: Vec<&String> = snap.placements.keys().collect();
    names.sort();
    for name in names {
        let placement = &snap.placements[name];
        let t = placement.pool.target();
        kv(
            format!("placements.{name}.url"),
            // Without its password, whatever the config wrote.
            format!("postgres://{}@{}:{}/{}", t.user, t.host, t.port, t.database),
        );
        kv(
            format!("placements.{name}.isolation"),
            placement.isolation.as_str().into(),
        );
        kv(
            format!("placements.{name}.pool_size"),
            placement.pool.counts().max.to_string(),
        );
    }
    rows
}

static VERSION_COLUMNS: [(&str, Kind); 1] = [("version", Kind::Text)];

fn version() -> Rows {
    let mut rows = Rows::new(&VERSION_COLUMNS);
    rows.push(vec![text(format!(
        "pgtenant {}",
        env!("CARGO_PKG_VERSION")
    ))]);
    rows
}

/// PgBouncer's SHOW STATS columns where the meaning matches (its
/// `database` is the tenant here; a transaction is a lease of a server
/// connection), plus p99s from the histograms. Times in microseconds.
static STATS_COLUMNS: [(&str, Kind); 11] = [
    ("tenant", Kind::Text),
    ("total_xact_count", Kind::Int),
    ("total_query_count", Kind::Int),
    ("total_received", Kind::Int),
    ("total_sent", Kind::Int),
    ("total_xact_time", Kind::Int),
    ("total_wait_time", Kind::Int),
    ("avg_xact_time", Kind::Int),
    ("p99_xact_time", Kind::Int),
    ("avg_wait_time", Kind::Int),
    ("p99_wait_time", Kind::Int),
];

/// Every tenant that has had a client since the proxy started.
fn stats(state: &ProxyState) -> Rows {
    let mut rows = Rows::new(&STATS_COLUMNS);
    for r in state.metrics.tenant_stats() {
        rows.push(vec![
            text(r.tenant),
            int(r.transactions),
            int(r.queries),
            int(r.bytes_in),
            int(r.bytes_out),
            int(r.total_query_time_us),
            int(r.total_wait_time_us),
            int(r.avg_query_time_us),
            int(r.p99_query_time_us),
            int(r.avg_wait_time_us),
            int(r.p99_wait_time_us),
        ]);
    }
    rows
}
