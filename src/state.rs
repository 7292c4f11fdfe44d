//! What every connection shares: the current configuration snapshot
//! (routing rules, catalog, pools), the cancel registry, connection
//! counters and the shutdown signal.
//!
//! The snapshot sits behind one `ArcSwap`: a reload (`crate::reload`)
//! builds a new snapshot, keeping each pool whose placement's connection
//! settings did not change, and swaps it in atomically; a connection
//! keeps the snapshot it started with for its login, and sessions follow
//! the new one between transactions (`session/follow.rs`).

use crate::admission::{Caps, Refusal, Unauthenticated, UnauthenticatedCounts};
use crate::catalog::{Catalog, ConfigMap};
use crate::config::{BackendTarget, Config, ConfigError, ConfigSource, Isolation, PoolMode};
use crate::pool::{
    PlacementName, PlacementPool, PoolTenant, PoolTimeouts, RolePolicy, TenantContext,
};
use crate::routing::{RoutingRules, TenantId};
use crate::session::cancel::CancelRegistry;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio_util::sync::CancellationToken;

/// A placement as the data plane sees it.
pub struct Placement {
    pub isolation: Isolation,
    pub pool: Arc<PlacementPool>,
    /// An rls placement with an `operator_url`: the platform operators'
    /// pool (their own role, never the tenants' pool), whose seats are
    /// the operators that may reach it.
    pub operators: Option<Arc<PlacementPool>>,
}

/// One consistent view of the configuration.
pub struct Snapshot {
    /// The config, without its `tenants` (the catalog has them).
    pub config: Config,
    pub rules: RoutingRules,
    pub catalog: Catalog,
    pub placements: ConfigMap<String, Placement>,
    /// Client TLS (`[tls]`), loaded with this snapshot: a reload reads
    /// the certificate files again.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

/// A pool a rebuilt snapshot kept, and what it is to become once the new
/// snapshot is accepted (applied by `crate::reload`, never before: a
/// config rejected later must leave every pool as it was).
pub struct PoolUpdate {
    pub pool: Arc<PlacementPool>,
    /// The placement (the operators' pool: `None`, sized by its own key).
    pub placement: Option<String>,
    pub size: usize,
    pub tenants: Vec<PoolTenant>,
}

impl Snapshot {
    pub fn build(
        config: Config,
        src: &ConfigSource,
        workers: usize,
    ) -> Result<Snapshot, ConfigError> {
        let secret = crate::credentials::secret::AuthSecret::for_config(&config)
            .map_err(|m| src.error("proxy.secret_file", m))?;
        Ok(Snapshot::assemble(config, src, workers, secret, None)?.0)
    }

    /// A snapshot from a re-read config, with `previous`'s secret (read
    /// at start only: the rls placements' context keys registered in
    /// their databases derive from it) and each of its pools whose
    /// placement's connection settings are unchanged; those pools'
    /// updates are returned, not applied.
    pub fn rebuild(
        config: Config,
        src: &ConfigSource,
        workers: usize,
        previous: &Snapshot,
    ) -> Result<(Snapshot, Vec<PoolUpdate>), ConfigError> {
        let secret = previous.catalog.secret().clone();
        Snapshot::assemble(config, src, workers, secret, Some(previous))
    }

    fn assemble(
        mut config: Config,
        src: &ConfigSource,
        workers: usize,
        secret: crate::credentials::secret::AuthSecret,
        previous: Option<&Snapshot>,
    ) -> Result<(Snapshot, Vec<PoolUpdate>), ConfigError> {
        let mut updates = Vec::new();
        // Keys of rls placements' tenant contexts, derived before the
        // catalog takes the secret.
        let context_keys: Vec<(&String, [u8; 32])> = config
            .placements
            .iter()
            .filter(|(_, p)| p.isolation == Isolation::Rls)
            .map(|(name, _)| (name, secret.context_key(name)))
            .collect();
        let catalog = Catalog::from_config(&config, src, secret)?;
        // Each pool's tenants and their caps, from the catalog.
        let mut tenants: ConfigMap<&str, Vec<PoolTenant>> = ConfigMap::default();
        for t in catalog.iter() {
            tenants
                .entry(t.placement.as_str())
                .or_default()
                .push(PoolTenant {
                    name: t.id.as_str().to_owned(),
                    max_server_connections: t.max_server_connections as usize,
                });
        }
        let mut placements = ConfigMap::default();
        let mut targets = Vec::with_capacity(config.placements.len());
        // (placement, operators' target) of each placement with an
        // operator_url.
        let mut operator_targets = Vec::new();
        for (name, p) in &config.placements {
            let target = BackendTarget::from_url(p.url.expose())
                .map_err(|m| src.error(&format!("placements.{name}.url"), m))?;
            targets.push((name, target));
            if let Some(url) = &p.operator_url {
                let target = BackendTarget::from_url(url.expose())
                    .map_err(|m| src.error(&format!("placements.{name}.operator_url"), m))?;
                operator_targets.push((name, target));
            }
        }
        for (name, target) in targets.iter().cloned() {
            let p = &config.placements[name];
            // Any other placement's role, whatever its host: a role name
            // seen on another server is checked for nothing worse than
            // membership, and host spellings differ.
            let roles = RolePolicy {
                trusted: p.trust_backend_role,
                other_placements: targets
                    .iter()
                    .filter(|(other, t)| *other != name && t.user != target.user)
                    .map(|(other, t)| (t.user.clone(), (*other).clone()))
                    .collect(),
                rls: (p.isolation == Isolation::Rls).then(|| crate::pool::rls_check::RlsPolicy {
                    shared_tables: p.shared_tables.clone(),
                    setting_store: p.context_store == crate::config::ContextStore::Setting,
                }),
                operator_roles: operator_targets
                    .iter()
                    .filter(|(_, t)| t.user != target.user)
                    .map(|(other, t)| (t.user.clone(), (*other).clone()))
                    .collect(),
                operator: false,
            };
            let context_key = context_keys
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, key)| *key);
            let spec = PoolSpec {
                name: PlacementName(name.clone()),
                target,
                size: p.pool_size as usize,
                timeouts: PoolTimeouts::from_config(&config.proxy),
                roles,
                context: context_key
                    .map(|key| TenantContext::new(key, p.tenant_setting.clone(), p.context_store)),
                tenants: tenants.remove(name.as_str()).unwrap_or_default(),
            };
            let kept = previous.and_then(|s| s.placements.get(name));
            let pool = spec.pool(workers, kept.map(|k| &k.pool), Some(name), &mut updates);
            let operators = match (
                operator_targets.iter().find(|(n, _)| *n == name),
                context_key,
                p.operator_pool(),
            ) {
                (Some((_, target)), Some(key), Some(size)) => Some(
                    operator_pool(
                        name,
                        target.clone(),
                        size,
                        &config,
                        TenantContext::new(key, p.tenant_setting.clone(), p.context_store),
                        &catalog,
                    )
                    .pool(
                        workers,
                        kept.and_then(|k| k.operators.as_ref()),
                        None,
                        &mut updates,
                    ),
                ),
                _ => None,
            };
            placements.insert(
                name.clone(),
                Placement {
                    isolation: p.isolation,
                    pool,
                    operators,
                },
            );
        }
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(
                crate::tls::ServerTls::load(t, &config.base_dir)
                    .map_err(|m| src.error("tls", m))?,
            )),
            None => None,
        };
        let rules = RoutingRules {
            order: config.proxy.tenant_from.clone(),
            user_separator: config.proxy.user_separator.clone(),
            sni_suffix: config.proxy.sni_suffix.clone(),
            domains: crate::config::domains::tenant_domains(&config)
                .map_err(|(key, m)| src.error(&key, m))?,
        };
        // Kept, the tables the catalog came from would double a large
        // config's memory for the snapshot's life, plaintext passwords
        // included.
        config.tenants = Default::default();
        let snapshot = Snapshot {
            config,
            rules,
            catalog,
            placements,
            tls,
        };
        Ok((snapshot, updates))
    }

    pub fn pool_mode(&self) -> PoolMode {
        self.config.proxy.pool_mode
    }

    /// Every placement's pools, the operators' included (for the janitor).
    pub fn pools(&self) -> Vec<Arc<PlacementPool>> {
        self.placements
            .values()
            .flat_map(|p| std::iter::once(&p.pool).chain(p.operators.as_ref()))
            .map(Arc::clone)
            .collect()
    }
}

/// What a placement's pool is made from.
struct PoolSpec {
    name: PlacementName,
    target: BackendTarget,
    size: usize,
    timeouts: PoolTimeouts,
    roles: RolePolicy,
    context: Option<TenantContext>,
    tenants: Vec<PoolTenant>,
}

impl PoolSpec {
    /// `kept` if it connects the same way (its new size and tenants go
    /// to `updates`), else a new pool.
    fn pool(
        self,
        workers: usize,
        kept: Option<&Arc<PlacementPool>>,
        placement: Option<&String>,
        updates: &mut Vec<PoolUpdate>,
    ) -> Arc<PlacementPool> {
        if let Some(kept) = kept
            && kept.same_settings(&self.target, &self.roles, self.context.as_ref())
        {
            updates.push(PoolUpdate {
                pool: Arc::clone(kept),
                placement: placement.cloned(),
                size: self.size,
                tenants: self.tenants,
            });
            return Arc::clone(kept);
        }
        PlacementPool::new(
            self.name,
            self.target,
            self.size,
            workers,
            self.timeouts,
            self.roles,
            self.context,
            self.tenants,
        )
    }
}

/// The operators' pool of rls placement `name`: its own role (checked by
/// `operator_check`, never trusted blindly), the placement's context key
/// (each lease enters the tenant the operator named, or
/// [`crate::client::operator::ALL_TENANTS`]), and a seat per operator
/// that may reach it, each allowed the whole pool when alone, else half.
fn operator_pool(
    name: &str,
    target: BackendTarget,
    size: u32,
    config: &Config,
    context: TenantContext,
    catalog: &Catalog,
) -> PoolSpec {
    let names: Vec<&str> = catalog.operators_of(name).collect();
    let cap = if names.len() <= 1 {
        size
    } else {
        (size / 2).max(1)
    };
    PoolSpec {
        name: PlacementName(format!("{name}/operators")),
        target,
        size: size as usize,
        timeouts: PoolTimeouts::from_config(&config.proxy),
        roles: RolePolicy {
            operator: true,
            ..RolePolicy::default()
        },
        context: Some(context),
        tenants: names
            .into_iter()
            .map(|n| PoolTenant {
                name: n.to_owned(),
                max_server_connections: cap as usize,
            })
            .collect(),
    }
}

/// Shared by every worker and connection.
pub struct ProxyState {
    snapshot: ArcSwap<Snapshot>,
    pub cancels: CancelRegistry,
    /// Authenticated client connections open right now (all tenants).
    clients: Arc<AtomicU32>,
    /// Client connections accepted and not yet authenticated.
    pub unauthenticated: Arc<UnauthenticatedCounts>,
    /// Failed logins per client address and user (bans).
    pub failed_logins: crate::admission::failed_logins::FailedLogins,
    /// Keyed by config-defined tenants: a fast hasher (see `FastHash`).
    tenant_clients: DashMap<TenantId, Arc<AtomicU32>, crate::catalog::FastHash>,
    /// Pinned server connections per tenant (keyed like `tenant_clients`).
    tenant_pins: DashMap<TenantId, Arc<AtomicU32>, crate::catalog::FastHash>,
    pub shutdown: CancellationToken,
    pub workers: usize,
    /// Fired when `shutdown` fires; what sessions watch between
    /// transactions (see `shutdown.rs`).
    pub stop: Arc<crate::shutdown::StopSignal>,
    /// Clients pinned to a server connection by session state (total).
    pub pins: std::sync::atomic::AtomicU64,
    /// Paused and suspended tenants (the admin console's).
    pub controls: crate::control::Controls,
    /// Admin console sessions open right now.
    pub consoles: Arc<AtomicU32>,
    /// Per-tenant counters and the exporter's memory (`metrics`).
    pub metrics: crate::metrics::Metrics,
    /// The config file the proxy was started with: what a reload reads.
    pub config_path: Option<std::path::PathBuf>,
    /// Serializes reloads (`crate::reload`); held by the reloading
    /// thread only, never by the data plane.
    pub(crate) reload_lock: std::sync::Mutex<()>,
}

impl ProxyState {
    pub fn new(snapshot: Snapshot, workers: usize, shutdown: CancellationToken) -> ProxyState {
        ProxyState {
            snapshot: ArcSwap::from_pointee(snapshot),
            cancels: CancelRegistry::default(),
            clients: Arc::new(AtomicU32::new(0)),
            unauthenticated: Default::default(),
            failed_logins: Default::default(),
            tenant_clients: DashMap::default(),
            tenant_pins: DashMap::default(),
            shutdown,
            workers,
            pins: Default::default(),
            stop: Default::default(),
            config_path: None,
            reload_lock: Default::default(),
            controls: Default::default(),
            consoles: Arc::new(AtomicU32::new(0)),
            metrics: Default::default(),
        }
    }

    /// Whether `/healthz` says ready: not once shutdown has begun.
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && !self.stop.is_stopping()
    }

    /// Authenticated client connections open now (all tenants).
    pub fn client_count(&self) -> u32 {
        self.clients.load(Ordering::Relaxed)
    }

    /// A tenant's authenticated client connections open now.
    pub fn tenant_client_count(&self, tenant: &TenantId) -> u32 {
        self.tenant_clients
            .get(tenant)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Server connections pinned by session state now (all tenants).
    pub fn pinned_count(&self) -> u64 {
        self.tenant_pins
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum()
    }

    /// Puts a new snapshot in place, then tells the sessions (in that
    /// order: a session that sees the new generation finds the new
    /// snapshot).
    pub(crate) fn swap_snapshot(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let old = self.snapshot.swap(Arc::new(snapshot));
        self.stop.reloaded();
        old
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Counts a connection just accepted from `peer` against the
    /// unauthenticated caps of the current configuration; from a load
    /// balancer in `proxy_protocol_networks`, against the total only
    /// until its PROXY header names the client.
    pub fn admit_unauthenticated(
        &self,
        peer: std::net::IpAddr,
    ) -> Result<Unauthenticated, Refusal> {
        let (caps, relayed) = {
            let snap = self.snapshot.load();
            let proxy = &snap.config.proxy;
            let relayed =
                crate::config::networks::any_contains(&proxy.proxy_protocol_networks, peer);
            (Caps::of(proxy), relayed)
        };
        if relayed {
            Unauthenticated::admit_relayed(&self.unauthenticated, caps)
        } else {
            Unauthenticated::admit(&self.unauthenticated, peer, caps)
        }
    }

    /// Counts an authenticated client against the proxy-wide limit;
    /// `None` when full.
    pub fn admit_client(&self, max: u32) -> Option<CountGuard> {
        CountGuard::acquire(&self.clients, max)
    }

    /// The counter of a tenant's pinned server connections.
    pub fn tenant_pins(&self, tenant: &TenantId) -> Arc<AtomicU32> {
        Arc::clone(
            self.tenant_pins
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(AtomicU32::new(0)))
                .value(),
        )
    }

    /// Asks `tenant`'s client sessions to close after their current
    /// transaction (SUSPEND; also for a reload that sets `suspended`);
    /// how many were asked.
    pub fn suspend_sessions(&self, tenant: &TenantId) -> usize {
        self.stop
            .signal_where(crate::shutdown::reason::SUSPEND, |c| {
                !c.console && c.tenant == *tenant
            })
    }

    /// Closes `tenant`'s client sessions now, mid-transaction too (KILL);
    /// how many were subscribed. Logins of the tenant in flight close as
    /// soon as their session starts (`Controls::killed_since`).
    pub fn kill_sessions(&self, tenant: &TenantId) -> usize {
        self.controls.count_kill(tenant);
        self.stop.signal_where(crate::shutdown::reason::KILL, |c| {
            !c.console && c.tenant == *tenant
        })
    }

    /// Counts a client against its tenant's limit; `None` when full.
    pub fn admit_tenant_client(&self, tenant: &TenantId, max: u32) -> Option<CountGuard> {
        let counter = Arc::clone(
            self.tenant_clients
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(AtomicU32::new(0)))
                .value(),
        );
        CountGuard::acquire(&counter, max)
    }
}

/// Holds one unit of a counter; gives it back on drop.
pub struct CountGuard(Arc<AtomicU32>);

impl CountGuard {
    pub fn acquire(counter: &Arc<AtomicU32>, max: u32) -> Option<CountGuard> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(CountGuard(Arc::clone(counter)))
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_live_in_the_catalog_only() {
        let text = "[proxy]\ndefault_placement = \"p\"\n\
                    [placements.p]\nurl = \"postgres://u@127.0.0.1/db\"\nisolation = \"database\"\n\
                    allow_shared_database = true\n\
                    [tenants.a]\nusers = { app = \"plain-a\" }\n\
                    [tenants.b]\nusers = { app = \"plain-b\" }\n";
        let (cfg, src) = crate::config::parse_str(text, "t.toml").expect("valid");
        let snap = Snapshot::build(cfg, &src, 1).expect("builds");
        assert!(snap.config.tenants.is_empty());
        assert_eq!(snap.catalog.len(), 2);
        assert!(
            snap.catalog
                .get("b")
                .is_some_and(|t| t.users.contains_key("app"))
        );
    }
}
