//! `[placements.NAME]`: where tenants' data lives, how tenants on it are
//! kept apart, and the pool in front of it.

use super::Secret;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// The placement's database belongs to one tenant.
    Database,
    /// One database, many tenants, separated by row-level security.
    Rls,
    /// One database, a schema per tenant.
    Schema,
}

/// Where an `isolation = "rls"` placement's database keeps each session's
/// tenant (README, "Where the context is kept").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextStore {
    /// Owner-only sequences read by a `SECURITY DEFINER` function: no
    /// superuser needed, works on managed PostgreSQL.
    #[default]
    Sequences,
    /// The built-in setting `backtrace_functions`, which only a superuser
    /// can let `pgtenant.enter()` set (`sql/pgtenant-setting.sql`) and
    /// every role can read: cheaper for every policy, tenant names
    /// limited to letters, digits and `_`.
    Setting,
}

/// The setting a [`ContextStore::Setting`] placement keeps its tenant in:
/// one of PostgreSQL's own, that only superusers (and roles they grant
/// SET on it) may change, and whose check accepts identifiers.
pub const CONTEXT_SETTING: &str = "backtrace_functions";

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Database => "database",
            Isolation::Rls => "rls",
            Isolation::Schema => "schema",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementConfig {
    /// `postgres://user:password@host:port/database`; the backend user and
    /// database always come from here, never from the client.
    pub url: Secret,
    pub isolation: Isolation,
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Accept the backend role as it is: no role check when the pool
    /// opens its first connection, and the same host, port and user may
    /// serve other placements that say the same. Off by default: the role
    /// is what keeps one placement's tenants out of the others'.
    #[serde(default)]
    pub trust_backend_role: bool,
    /// Let several tenants share this `isolation = "database"` placement
    /// (they are not isolated from each other). Off by default.
    #[serde(default)]
    pub allow_shared_database: bool,
    /// `isolation = "rls"`: a custom setting (such as `app.tenant_id`)
    /// that each lease also sets to the tenant's name, for applications
    /// that read one. Informational: policies use
    /// `pgtenant.current_tenant()`, which a client cannot forge.
    pub tenant_setting: Option<String>,
    /// `isolation = "rls"`: where the database keeps the tenant.
    #[serde(default)]
    pub context_store: ContextStore,
    /// Server connections of this pool one tenant's clients may hold at
    /// once, for tenants that set no `max_server_connections`; default:
    /// see [`PlacementConfig::tenant_cap`].
    pub tenant_max_server_connections: Option<u32>,
    /// `isolation = "schema"`: the schema of each tenant, `{tenant}`
    /// standing for its name (`schema_names::DEFAULT_SCHEMA_PATTERN`).
    pub schema_pattern: Option<String>,
    /// `isolation = "schema"`: the `search_path` a tenant's clients start
    /// with, `{schema}` standing for its schema
    /// (`schema_names::DEFAULT_SEARCH_PATH`).
    pub search_path: Option<String>,
    /// `isolation = "rls"` only: schema-qualified tables (or views) that
    /// hold no tenant's rows and that every tenant may read without
    /// row-level security, such as `public.countries`. The role check
    /// requires them read-only for the placement's role.
    #[serde(default)]
    pub shared_tables: Vec<String>,
    /// `isolation = "rls"` only: the platform operators' own backend role
    /// on the same database (`postgres://pgt_operator:...@host/db`), never
    /// the tenants' role. Operators listed in `[operators.*]` reach it
    /// through a pool of its own.
    pub operator_url: Option<Secret>,
    /// Server connections of the operators' pool; default
    /// [`DEFAULT_OPERATOR_POOL_SIZE`]. Only with `operator_url`.
    pub operator_pool_size: Option<u32>,
}

/// `operator_pool_size` when a placement sets none.
pub const DEFAULT_OPERATOR_POOL_SIZE: u32 = 2;

impl PlacementConfig {
    /// The operators' pool size, where the placement has an `operator_url`.
    pub fn operator_pool(&self) -> Option<u32> {
        self.operator_url.as_ref().map(|_| {
            self.operator_pool_size
                .unwrap_or(DEFAULT_OPERATOR_POOL_SIZE)
        })
    }

    /// The `max_server_connections` of a tenant on this placement that
    /// sets none, when `tenants` tenants are on it:
    /// `tenant_max_server_connections` if set, else the whole pool for a
    /// placement with one tenant, else half of it (at least 1), so that no
    /// tenant of a shared pool can take all of it and any other tenant
    /// finds at least half the pool out of the first one's reach.
    pub fn tenant_cap(&self, tenants: usize) -> u32 {
        match self.tenant_max_server_connections {
            Some(cap) => cap,
            None if tenants <= 1 => self.pool_size,
            None => (self.pool_size / 2).max(1),
        }
    }
}

fn default_pool_size() -> u32 {
    20
}
