//! `GET /metrics`: refreshes the top-K choice (`topk`) and writes every
//! family (`encode`), gauges read from the state the proxy keeps.
//!
//! Series bound: 46 per tenant label value (3 client-connection states,
//! transactions, queries, 2 byte directions, 7 error kinds, 2 histograms
//! of 14 buckets plus sum and count), for at most D + W + K + 1 values
//! (dedicated tenants, watched tenants, `admin.top_tenants`, `_other`);
//! 7 for `_unknown`; 7 per pool; 11 proxy-wide. See `SERIES_PER_TENANT`.

use super::encode::Encoder;
use super::tenant::{BUCKET_BOUNDS_US, Counters, ErrorKind, HistogramValues};
use super::{OTHER, UNKNOWN};
use crate::config::Isolation;
use crate::routing::TenantId;
use crate::state::{ProxyState, Snapshot};
use std::collections::HashMap;

/// Series per tenant label value (see the module comment).
pub const SERIES_PER_TENANT: usize = 3 + 1 + 1 + 2 + 7 + 2 * (BUCKET_BOUNDS_US.len() + 1 + 2);
/// Series per pool (3 connection states, max, oldest wait, connects,
/// failures).
pub const SERIES_PER_POOL: usize = 7;
/// Proxy-wide series.
pub const SERIES_GLOBAL: usize = 11;

/// The most series a scrape can have: `always` is the number of
/// dedicated and watched tenants, `pools` the pools (operators' too).
pub fn series_bound(always: usize, top_tenants: usize, pools: usize) -> usize {
    SERIES_PER_TENANT * (always + top_tenants + 1) + 7 + SERIES_PER_POOL * pools + SERIES_GLOBAL
}

/// Client connections by state.
#[derive(Default, Clone, Copy)]
struct ClientStates {
    active: u64,
    idle: u64,
    waiting: u64,
}

/// One label value's series.
struct TenantSeries<'a> {
    name: &'a str,
    counters: Counters,
    clients: ClientStates,
}

/// The text of a scrape.
pub fn render(state: &ProxyState) -> String {
    let snap = state.snapshot();
    let top = snap
        .config
        .admin
        .as_ref()
        .map_or(crate::config::DEFAULT_TOP_TENANTS, |a| a.top_tenants);
    let metrics = &state.metrics;
    metrics.prune(|t| snap.catalog.contains(t));
    let always = always_tenants(&snap);
    // Dedicated and watched tenants have series before their first
    // client (bounded by the config).
    for id in &always {
        metrics.tenant(&TenantId::new(id.as_str()));
    }
    let mut export = metrics.export.lock().unwrap_or_else(|p| p.into_inner());
    export.begin();
    metrics.each_tenant(|id, stats| {
        export.observe(id, stats.read(), always.contains(id.as_str()));
    });
    export.observe_unranked(metrics.operators.read());
    export.finish(top);

    // Gauges: members' from their pools; `_other` is what is left.
    let mut series: Vec<TenantSeries> = Vec::new();
    let mut members_clients = ClientStates::default();
    for (id, own) in export.members() {
        let clients = tenant_clients(state, &snap, id);
        members_clients.active += clients.active;
        members_clients.idle += clients.idle;
        members_clients.waiting += clients.waiting;
        series.push(TenantSeries {
            name: id.as_str(),
            counters: *own,
            clients,
        });
    }
    series.sort_unstable_by(|a, b| a.name.cmp(b.name));
    let (mut held, mut waiting) = (0u64, 0u64);
    for pool in snap.pools() {
        let c = pool.counts();
        held += (c.active + c.connecting) as u64;
        waiting += c.waiting as u64;
    }
    let total = u64::from(state.client_count());
    let other_active = held.saturating_sub(members_clients.active);
    let other_waiting = waiting.saturating_sub(members_clients.waiting);
    let other_total = total
        .saturating_sub(members_clients.active + members_clients.idle + members_clients.waiting);
    let other_active = other_active.min(other_total);
    let other_waiting = other_waiting.min(other_total - other_active);
    series.push(TenantSeries {
        name: OTHER,
        counters: export.other,
        clients: ClientStates {
            active: other_active,
            waiting: other_waiting,
            idle: other_total - other_active - other_waiting,
        },
    });

    let mut e = Encoder::default();
    write_tenants(&mut e, &series, &metrics.unknown.read());
    write_pools(&mut e, &snap);
    write_global(&mut e, state, &snap, &export.total);
    e.finish()
}

/// Dedicated tenants (alone on an `isolation = "database"` placement)
/// and watched ones.
fn always_tenants(snap: &Snapshot) -> std::collections::HashSet<String> {
    let mut per_placement: HashMap<&str, usize> = HashMap::new();
    for t in snap.catalog.iter() {
        *per_placement.entry(t.placement.as_str()).or_default() += 1;
    }
    snap.catalog
        .iter()
        .filter(|t| {
            t.watch
                || (per_placement.get(t.placement.as_str()) == Some(&1)
                    && snap
                        .placements
                        .get(&t.placement)
                        .is_some_and(|p| p.isolation == Isolation::Database))
        })
        .map(|t| t.id.as_str().to_owned())
        .collect()
}

/// A tenant's clients by state: connected (its client counter), holding
/// a server connection and waiting for one (its pool's fair-share state).
fn tenant_clients(state: &ProxyState, snap: &Snapshot, id: &TenantId) -> ClientStates {
    let total = u64::from(state.tenant_client_count(id));
    let counts = snap.catalog.get(id.as_str()).and_then(|t| {
        let pool = &snap.placements.get(&t.placement)?.pool;
        pool.tenant_counts(pool.seat(id.as_str())?)
    });
    let (held, waiting) = counts.map_or((0, 0), |c| (c.held as u64, c.waiting as u64));
    let active = held.min(total);
    let waiting = waiting.min(total - active);
    ClientStates {
        active,
        waiting,
        idle: total - active - waiting,
    }
}

fn write_tenants(e: &mut Encoder, series: &[TenantSeries], unknown: &Counters) {
    e.family(
        "pgtenant_client_connections",
        "gauge",
        "Authenticated client connections by tenant and state (active: holding a server connection; waiting: for one; idle).",
    );
    for s in series {
        for (state, n) in [
            ("active", s.clients.active),
            ("idle", s.clients.idle),
            ("waiting", s.clients.waiting),
        ] {
            e.sample(
                "pgtenant_client_connections",
                &[("tenant", s.name), ("state", state)],
                n,
            );
        }
    }
    e.family(
        "pgtenant_transactions_total",
        "counter",
        "Server connection leases that ended (transactions in transaction mode).",
    );
    for s in series {
        e.sample(
            "pgtenant_transactions_total",
            &[("tenant", s.name)],
            s.counters.transactions,
        );
    }
    e.family(
        "pgtenant_queries_total",
        "counter",
        "Queries answered (ReadyForQuery messages from the server).",
    );
    for s in series {
        e.sample(
            "pgtenant_queries_total",
            &[("tenant", s.name)],
            s.counters.queries,
        );
    }
    e.family(
        "pgtenant_client_bytes_total",
        "counter",
        "Bytes from clients (in) and from servers to clients (out).",
    );
    for s in series {
        for (dir, n) in [("in", s.counters.bytes_in), ("out", s.counters.bytes_out)] {
            e.sample(
                "pgtenant_client_bytes_total",
                &[("tenant", s.name), ("direction", dir)],
                n,
            );
        }
    }
    e.family(
        "pgtenant_errors_total",
        "counter",
        "Client connections ended or refused with an error, by kind.",
    );
    let unknown = TenantSeries {
        name: UNKNOWN,
        counters: *unknown,
        clients: ClientStates::default(),
    };
    for s in series.iter().chain(std::iter::once(&unknown)) {
        for kind in ErrorKind::ALL {
            e.sample(
                "pgtenant_errors_total",
                &[("tenant", s.name), ("kind", kind.as_str())],
                s.counters.error(kind),
            );
        }
    }
    e.family(
        "pgtenant_query_duration_seconds",
        "histogram",
        "Time a server connection was leased, per lease (one transaction in transaction mode).",
    );
    for s in series {
        histogram(
            e,
            "pgtenant_query_duration_seconds",
            s.name,
            &s.counters.query_time,
        );
    }
    e.family(
        "pgtenant_server_wait_duration_seconds",
        "histogram",
        "Time clients waited for a server connection, per lease.",
    );
    for s in series {
        histogram(
            e,
            "pgtenant_server_wait_duration_seconds",
            s.name,
            &s.counters.wait_time,
        );
    }
}

fn histogram(e: &mut Encoder, name: &str, tenant: &str, h: &HistogramValues) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        cumulative += n;
        let le = match BUCKET_BOUNDS_US.get(i) {
            Some(&us) => format!("{}", us as f64 / 1e6),
            None => "+Inf".to_owned(),
        };
        e.sample(&bucket, &[("tenant", tenant), ("le", &le)], cumulative);
    }
    e.sample_f64(
        &format!("{name}_sum"),
        &[("tenant", tenant)],
        h.sum_us as f64 / 1e6,
    );
    e.sample(&format!("{name}_count"), &[("tenant", tenant)], cumulative);
}

fn write_pools(e: &mut Encoder, snap: &Snapshot) {
    let pools = snap.pools();
    e.family(
        "pgtenant_server_connections",
        "gauge",
        "Server connections by placement and state.",
    );
    for p in &pools {
        let c = p.counts();
        let name = p.name().0.as_str();
        for (state, n) in [
            ("idle", c.idle),
            ("active", c.active),
            ("connecting", c.connecting),
        ] {
            e.sample(
                "pgtenant_server_connections",
                &[("placement", name), ("state", state)],
                n as u64,
            );
        }
    }
    e.family(
        "pgtenant_server_connections_max",
        "gauge",
        "Pool size by placement.",
    );
    for p in &pools {
        e.sample(
            "pgtenant_server_connections_max",
            &[("placement", p.name().0.as_str())],
            p.counts().max as u64,
        );
    }
    e.family(
        "pgtenant_pool_max_wait_seconds",
        "gauge",
        "How long the oldest client waiting for a server connection has waited, by placement (0: none waits).",
    );
    let now = crate::runtime::time::now();
    for p in &pools {
        let waited = p
            .oldest_wait()
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        e.sample_f64(
            "pgtenant_pool_max_wait_seconds",
            &[("placement", p.name().0.as_str())],
            waited,
        );
    }
    e.family(
        "pgtenant_server_connects_total",
        "counter",
        "Server connections opened, by placement.",
    );
    for p in &pools {
        e.sample(
            "pgtenant_server_connects_total",
            &[("placement", p.name().0.as_str())],
            p.stats()
                .connects
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    e.family(
        "pgtenant_server_connect_failures_total",
        "counter",
        "Server connection attempts that failed, by placement.",
    );
    for p in &pools {
        e.sample(
            "pgtenant_server_connect_failures_total",
            &[("placement", p.name().0.as_str())],
            p.stats()
                .connect_failures
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
}

fn write_global(e: &mut Encoder, state: &ProxyState, snap: &Snapshot, total: &Counters) {
    e.family(
        "pgtenant_pins_total",
        "counter",
        "Clients pinned to a server connection by session state (transaction mode).",
    );
    e.sample(
        "pgtenant_pins_total",
        &[],
        state.pins.load(std::sync::atomic::Ordering::Relaxed),
    );
    e.family(
        "pgtenant_pinned_server_connections",
        "gauge",
        "Server connections pinned by session state now.",
    );
    e.sample(
        "pgtenant_pinned_server_connections",
        &[],
        state.pinned_count(),
    );
    for (i, (name, help)) in [
        (
            "pgtenant_prepared_cache_hits_total",
            "Named statements a server connection already had.",
        ),
        (
            "pgtenant_prepared_cache_misses_total",
            "Named statements prepared on a server connection that lacked them.",
        ),
        (
            "pgtenant_prepared_cache_evictions_total",
            "Named statements closed to make room (max_prepared_statements).",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        e.family(name, "counter", help);
        e.sample(name, &[], total.prepared[i]);
    }
    let (ok, failed) = state.metrics.reloads();
    e.family(
        "pgtenant_reloads_total",
        "counter",
        "Configuration reloads by result.",
    );
    e.sample("pgtenant_reloads_total", &[("result", "ok")], ok);
    e.sample("pgtenant_reloads_total", &[("result", "error")], failed);
    let (bans, refused) = state.failed_logins.totals();
    e.family(
        "pgtenant_login_bans_total",
        "counter",
        "Bans of a user's logins from one address after auth_failure_limit failures (started), and logins they refused (refused).",
    );
    e.sample("pgtenant_login_bans_total", &[("event", "started")], bans);
    e.sample(
        "pgtenant_login_bans_total",
        &[("event", "refused")],
        refused,
    );
    e.family(
        "pgtenant_unauthenticated_connections",
        "gauge",
        "Client connections accepted and not yet authenticated.",
    );
    e.sample(
        "pgtenant_unauthenticated_connections",
        &[],
        u64::from(state.unauthenticated.total()),
    );
    e.family("pgtenant_tenants", "gauge", "Tenants in the configuration.");
    e.sample("pgtenant_tenants", &[], snap.catalog.len() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `name{labels}` -> value of every sample line.
    fn samples(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn a_hundred_thousand_tenants_render_a_bounded_monotonic_series_set() {
        const TENANTS: usize = 100_000;
        // A verifier, not a password: nothing to derive per tenant.
        const USERS: &str = "users = { app = \"SCRAM-SHA-256$4096:WrrvTz9JvsWshhDuMRv0yQ==$7rCDfD/IupLpEUlvAXkwOffb9Z2N2YJaVQQOji96lqU=:84wQ5mhTwYG+eC2BTZpGHNvTK2xWyeTc/1JB0o5MxGE=\" }\n";
        let mut text = String::from(
            "[proxy]\ndefault_placement = \"shared\"\n\
             [admin]\ntop_tenants = 100\n\
             [placements.shared]\nurl = \"postgres://u@127.0.0.1/db\"\nisolation = \"database\"\n\
             allow_shared_database = true\n\
             [placements.solo]\nurl = \"postgres://v@127.0.0.1/db2\"\nisolation = \"database\"\n\
             [tenants.solo]\nplacement = \"solo\"\n\
             [tenants.w]\nwatch = true\n",
        );
        text = text.replace(
            "placement = \"solo\"\n",
            &format!("placement = \"solo\"\n{USERS}"),
        );
        text.push_str(USERS);
        for i in 0..TENANTS {
            text.push_str(&format!("[tenants.t{i}]\n{USERS}"));
        }
        let (cfg, src) = crate::config::parse_str(&text, "t.toml").expect("valid");
        let snap = crate::state::Snapshot::build(cfg, &src, 1).expect("builds");
        let state = ProxyState::new(snap, 1, Default::default());
        let ids: Vec<TenantId> = (0..TENANTS)
            .map(|i| TenantId::new(format!("t{i}")))
            .chain([TenantId::new("solo"), TenantId::new("w")])
            .collect();
        let handles: Vec<_> = ids
            .iter()
            .map(|id| state.metrics.tenant(id).session())
            .collect();
        // Dedicated `solo`, watched `w`, the top 100 and `_other`.
        let bound = series_bound(2, 100, 2);
        let mut before: Option<HashMap<String, f64>> = None;
        let mut members_seen = std::collections::HashSet::new();
        for round in 0..6usize {
            for (i, h) in handles.iter().enumerate() {
                // Everyone a little; a moving window of 150 a lot.
                let busy = i >= round * 120 && i < round * 120 + 150;
                let n = if busy { 500 } else { 1 };
                for _ in 0..n {
                    h.transaction_done(1, 10, 10, std::time::Duration::from_micros(300));
                }
                if i % 1000 == 0 {
                    h.tenant().error(ErrorKind::Timeout);
                }
            }
            let out = render(&state);
            let now = samples(&out);
            assert!(now.len() <= bound, "{} series > bound {bound}", now.len());
            assert!(now.contains_key("pgtenant_transactions_total{tenant=\"solo\"}"));
            // Exactly the documented number of series per tenant.
            let solo = now.keys().filter(|k| k.contains("tenant=\"solo\"")).count();
            assert_eq!(solo, SERIES_PER_TENANT);
            assert!(now.contains_key("pgtenant_transactions_total{tenant=\"w\"}"));
            for k in now
                .keys()
                .filter(|k| k.starts_with("pgtenant_transactions_total{"))
            {
                members_seen.insert(k.clone());
            }
            if let Some(before) = &before {
                for (k, v) in &now {
                    let counter = k.contains("_total{")
                        || k.contains("_bucket{")
                        || k.contains("_count{")
                        || k.contains("_sum{");
                    if counter && let Some(b) = before.get(k) {
                        assert!(v >= b, "{k} went from {b} to {v}");
                    }
                }
            }
            // The sum over the series is every tenant's total.
            let sum: f64 = now
                .iter()
                .filter(|(k, _)| k.starts_with("pgtenant_transactions_total{"))
                .map(|(_, v)| v)
                .sum();
            let raw: u64 = handles.iter().map(|h| h.tenant().read().transactions).sum();
            assert!(sum <= raw as f64);
            before = Some(now);
        }
        // The top K churned: more tenants had series over the rounds than
        // at any one time.
        assert!(members_seen.len() > 100 + 2 + 1, "{}", members_seen.len());
        // A removed tenant's series disappear: one of the top K, its
        // counters dropped as `prune` does for a tenant a reload removed.
        let member = before
            .expect("scraped")
            .keys()
            .filter_map(|k| k.strip_prefix("pgtenant_transactions_total{tenant=\"t"))
            .map(|k| format!("t{}", k.trim_end_matches("\"}")))
            .next()
            .expect("a busy tenant has series");
        state.metrics.prune(|t| t != member);
        let out = render(&state);
        assert!(!out.contains(&format!("tenant=\"{member}\"")), "{member}");
    }
}
