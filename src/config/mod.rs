//! The configuration file's shape (CONTRACT §3), its defaults, and the few
//! value types it needs (durations, byte sizes).
//!
//! A leaf module: it knows nothing of sockets, pools or tenants at run time.
//! `load.rs` turns a file into a validated [`Config`] whose errors name the
//! offending key and line.

mod backend_url;
pub mod domains;
mod load;
pub mod networks;
mod placement;
mod placement_checks;
pub mod schema_names;
pub mod secret_exposure;
mod secrets;
mod user_auth;
mod values;

pub use backend_url::{AllowedAuth, BackendTarget, BackendTls, SslMode};
pub use load::{ConfigError, ConfigSource, load_file, parse_str};
pub use networks::Network;
pub use placement::{
    CONTEXT_SETTING, ContextStore, DEFAULT_OPERATOR_POOL_SIZE, Isolation, PlacementConfig,
};
pub use secrets::{Secret, SecretOrigin};
pub use user_auth::UserAuth;
pub use values::ByteSize;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration, as read from one TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    pub tls: Option<TlsConfig>,
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub placements: BTreeMap<String, PlacementConfig>,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// Platform operators: who may reach `isolation = "rls"` placements
    /// through their `operator_url` (startup option `operator=PLACEMENT`).
    #[serde(default)]
    pub operators: BTreeMap<String, OperatorConfig>,
    /// Folder relative paths resolve from (the config file's folder);
    /// empty for a config parsed from text (`parse_str`).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A server connection is leased for one transaction.
    Transaction,
    /// A server connection is leased for the client's whole session.
    Session,
}

/// Where a connection's tenant may come from (CONTRACT §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantSource {
    Sni,
    Options,
    User,
    Database,
}

impl TenantSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantSource::Sni => "sni",
            TenantSource::Options => "options",
            TenantSource::User => "user",
            TenantSource::Database => "database",
        }
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthType {
    /// SCRAM-SHA-256 against the tenant's users (the default).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// No password: any listed user of the tenant is let in. For local
    /// development and benchmarks only.
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: String,
    pub pool_mode: PoolMode,
    pub tenant_from: Vec<TenantSource>,
    pub user_separator: String,
    pub sni_suffix: Option<String>,
    pub default_placement: Option<String>,
    pub auth_type: AuthType,
    /// Data-plane threads; 0 means half the CPUs, at least one.
    pub workers: usize,
    /// Submit each worker's small sends of a loop turn together through
    /// io_uring (falls back to one `send` each where the kernel refuses).
    pub io_uring: bool,
    /// Authenticated client connections the whole proxy serves at once.
    pub max_client_connections: u32,
    /// Client connections accepted but not yet authenticated, at once;
    /// counted apart from `max_client_connections`, so that stalled
    /// logins never take an authenticated client's slot. Its last tenth
    /// is kept for lightly loaded addresses (`admission`).
    pub max_unauthenticated_connections: u32,
    /// Of those, from one source address at once. Also bounds a burst of
    /// logins from one host: 128 lets an application open a hundred
    /// connections at once (pool warm-up), while a flood must come from 16
    /// addresses to fill the default total.
    pub max_unauthenticated_per_address: u32,
    /// A tenant's client connections at once, where the tenant sets no
    /// `max_client_connections` of its own.
    pub default_tenant_max_client_connections: u32,
    /// Failed logins of one user from one client address (an IPv6 /64)
    /// within `auth_failure_window` before that user's logins from there
    /// are refused for `auth_ban_time`; 0 turns the limit off.
    pub auth_failure_limit: u32,
    #[serde(with = "humantime_serde_compat")]
    pub auth_failure_window: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub auth_ban_time: Duration,
    /// Largest frontend message accepted after startup, checked against the
    /// length header before anything is read.
    pub max_message_size: ByteSize,
    /// From accept, a client must send its StartupMessage (after any
    /// SSLRequest/GSSENCRequest) within this.
    #[serde(with = "humantime_serde_compat")]
    pub client_startup_timeout: Duration,
    /// From accept, a client must finish startup and authentication
    /// within this.
    #[serde(with = "humantime_serde_compat")]
    pub client_login_timeout: Duration,
    /// How long a client waits for a server connection before `57014`.
    #[serde(with = "humantime_serde_compat")]
    pub query_wait_timeout: Duration,
    /// How long opening and authenticating a server connection may take.
    #[serde(with = "humantime_serde_compat")]
    pub server_connect_timeout: Duration,
    /// Idle server connections unused for longer are closed; 0: never.
    #[serde(with = "humantime_serde_compat")]
    pub server_idle_timeout: Duration,
    /// Server connections are closed once this old (each one jittered to
    /// 90-100% of it), when idle, never while leased; 0: used once.
    #[serde(with = "humantime_serde_compat")]
    pub server_lifetime: Duration,
    /// An idle server connection unused for longer is checked with a
    /// round trip before it is handed out; 0: checked every time.
    #[serde(with = "humantime_serde_compat")]
    pub server_check_delay: Duration,
    /// After failed connects, the longest wait before the next attempt
    /// (100 ms, doubling per failure, up to this); meanwhile clients that
    /// need a new server connection get 08006 at once.
    #[serde(with = "humantime_serde_compat")]
    pub server_login_retry: Duration,
    /// Named prepared statements kept per server connection in
    /// transaction mode (least recently used closed first); 0 turns the
    /// statement mapping off, so named statements only work in session mode.
    pub max_prepared_statements: usize,
    /// Transaction mode: the most named-statement text (query text and
    /// parameter types, summed over its statements) one client may keep;
    /// a Parse past it gets 54000.
    pub max_client_memory: ByteSize,
    /// Transaction mode: the largest named statement a client may prepare
    /// (54000 past it).
    pub max_statement_size: ByteSize,
    /// A client whose results back up in the proxy (it stopped reading
    /// while its server went on answering) is disconnected (54000) once
    /// the backlog has been over its limit this long, or once it has
    /// taken no byte of a result being streamed to it for this long;
    /// 0: never.
    #[serde(with = "humantime_serde_compat")]
    pub client_read_timeout: Duration,
    /// A client idle inside a transaction for longer is disconnected
    /// (25P03) and its transaction rolled back; 0: never.
    #[serde(with = "humantime_serde_compat")]
    pub idle_transaction_timeout: Duration,
    /// A client idle outside a transaction for longer is disconnected
    /// (57P05); 0: never.
    #[serde(with = "humantime_serde_compat")]
    pub client_idle_timeout: Duration,
    /// A client that has begun a message must send the part the proxy
    /// needs before it leases a server connection (all of it, or its first
    /// 64 kB) within this, or it is disconnected (08P01); 0: never.
    #[serde(with = "humantime_serde_compat")]
    pub client_message_timeout: Duration,
    /// Transaction mode: what to do when a client creates session state
    /// (LISTEN, session advisory locks, temporary tables, WITH HOLD
    /// cursors, SQL PREPARE).
    pub pin_policy: PinPolicy,
    /// Run on a session-mode server connection before it is reused.
    pub server_reset_query: String,
    /// How long a paused tenant's client waits for RESUME before its
    /// transaction is refused (57014); `query_wait_timeout` starts only
    /// after the pause.
    #[serde(with = "humantime_serde_compat")]
    pub pause_timeout: Duration,
    /// On SIGTERM/SIGINT, how long running transactions may take to finish.
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_timeout: Duration,
    /// The authentication secret that keys SCRAM salts (`credentials/secret.rs`);
    /// relative to the config's folder. Default: `pgtenant.secret` there.
    pub secret_file: Option<PathBuf>,
    /// Load balancers (addresses or CIDR ranges) whose connections start
    /// with a PROXY protocol v2 header naming the real client; empty: the
    /// PROXY protocol is off. A header from any other peer is refused.
    pub proxy_protocol_networks: Vec<Network>,
    /// A connection from `proxy_protocol_networks` must start with a
    /// header (the default: a balancer that forgets it would make every
    /// client one address to the login limits). Off, one may connect
    /// without (a probe or a client on the balancer's own host).
    pub proxy_protocol_required: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            pool_mode: PoolMode::Transaction,
            tenant_from: vec![
                TenantSource::Sni,
                TenantSource::Options,
                TenantSource::User,
                TenantSource::Database,
            ],
            user_separator: ".".into(),
            sni_suffix: None,
            default_placement: None,
            auth_type: AuthType::ScramSha256,
            workers: 0,
            io_uring: true,
            max_client_connections: 10_000,
            max_unauthenticated_connections: 2_000,
            max_unauthenticated_per_address: 128,
            default_tenant_max_client_connections: 1_000,
            max_message_size: ByteSize(64 * 1024 * 1024),
            client_startup_timeout: Duration::from_secs(5),
            client_login_timeout: Duration::from_secs(15),
            auth_failure_limit: 10,
            auth_failure_window: Duration::from_secs(300),
            auth_ban_time: Duration::from_secs(300),
            query_wait_timeout: Duration::from_secs(120),
            server_connect_timeout: Duration::from_secs(15),
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            server_check_delay: Duration::from_secs(30),
            server_login_retry: Duration::from_secs(5),
            max_prepared_statements: 200,
            max_client_memory: ByteSize(16 * 1024 * 1024),
            client_read_timeout: Duration::from_secs(60),
            max_statement_size: ByteSize(1024 * 1024),
            idle_transaction_timeout: Duration::ZERO,
            client_idle_timeout: Duration::ZERO,
            client_message_timeout: Duration::from_secs(30),
            pin_policy: PinPolicy::Pin,
            server_reset_query: "DISCARD ALL".into(),
            pause_timeout: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(30),
            secret_file: None,
            proxy_protocol_networks: Vec::new(),
            proxy_protocol_required: true,
        }
    }
}

/// Session state in transaction mode (see `session/pinning/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinPolicy {
    /// Keep the client on its server connection until the state is gone
    /// or the client leaves.
    Pin,
    /// End the session with an error naming the state.
    Error,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The default certificate (PEM chain, leaf first) and its key: for
    /// clients that send no server name, or one no other certificate has.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// More certificates, each chosen for the DNS names (wildcards
    /// included) in its subjectAltName when a client asks for one (SNI).
    #[serde(default)]
    pub certificates: Vec<CertFiles>,
    /// The oldest TLS version accepted: "1.2" (the default) or "1.3".
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Refuse clients that do not encrypt (28000, before any password).
    #[serde(default)]
    pub require: bool,
    /// CA certificates (PEM) client certificates are verified against;
    /// set, every TLS client is asked for one (optional at the handshake;
    /// required at login by users with `cert`).
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) of `client_ca`'s
    /// issuers; a revoked client certificate fails the handshake.
    #[serde(default)]
    pub client_crl: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// The database name of the admin console (`psql -U admin pgtenant`);
/// no tenant may be named so.
pub const ADMIN_DATABASE: &str = "pgtenant";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the HTTP endpoints (`GET /metrics`, `GET /healthz`);
    /// none: no HTTP server.
    pub listen: Option<String>,
    /// Who may log in to the admin console (database `pgtenant`): user
    /// name to plaintext password or `SCRAM-SHA-256$...` verifier, a
    /// client certificate's identity (`{ cert = ".." }`, needs `[tls]
    /// client_ca`), or both, as tenant users.
    #[serde(default)]
    pub users: BTreeMap<String, UserAuth>,
    /// Bearer token `GET /metrics` and `POST /reload` require
    /// (`Authorization: Bearer TOKEN`); none: open. `/healthz` stays open
    /// for load balancers and probes.
    pub token: Option<Secret>,
    /// Tenants with series of their own besides dedicated and watched
    /// ones: the busiest this many (see `metrics::topk`); the rest are
    /// summed under `tenant="_other"`.
    #[serde(default = "default_top_tenants")]
    pub top_tenants: usize,
    /// Serve the HTTP endpoints over TLS only, with `[tls]`'s
    /// certificates (chosen by SNI), so the bearer token never crosses
    /// in clear.
    #[serde(default)]
    pub tls: bool,
}

/// `admin.top_tenants` when unset.
pub const DEFAULT_TOP_TENANTS: usize = 100;
/// The most `admin.top_tenants` may be: it bounds the series count.
pub const MAX_TOP_TENANTS: usize = 10_000;

fn default_top_tenants() -> usize {
    DEFAULT_TOP_TENANTS
}

/// A platform operator (`[operators.NAME]`): a person or tool that may see
/// every tenant's rows of the listed rls placements, through each one's
/// `operator_url` role and the policies that role has.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Plaintext password or `SCRAM-SHA-256$...` verifier.
    pub password: Secret,
    /// Also require a client certificate naming this identity (its
    /// common name or a subjectAltName URI; needs `[tls] client_ca`): a
    /// second factor for the login that reaches every tenant's rows.
    pub cert: Option<String>,
    /// The `isolation = "rls"` placements (with an `operator_url`) this
    /// operator may reach; at least one.
    pub placements: Vec<String>,
}

impl Config {
    /// Whether `[tls]` asks clients for certificates (what a `cert`
    /// login needs).
    pub fn asks_client_certificates(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }

    /// The placement a tenant is on: its own, else `default_placement`.
    pub fn placement_of<'a>(&'a self, tenant: &'a TenantConfig) -> Option<&'a str> {
        tenant
            .placement
            .as_deref()
            .or(self.proxy.default_placement.as_deref())
    }

    /// How many tenants each placement holds (placements with none are
    /// absent).
    pub fn tenants_per_placement(&self) -> std::collections::HashMap<&str, usize> {
        let mut n = std::collections::HashMap::new();
        for t in self.tenants.values() {
            if let Some(p) = self.placement_of(t) {
                *n.entry(p).or_insert(0) += 1;
            }
        }
        n
    }

    /// The server connections of its placement's pool that `tenant`'s
    /// clients may hold at once: its own `max_server_connections`, else
    /// the placement's default (`PlacementConfig::tenant_cap`). `None` if
    /// the tenant or its placement is unknown. `counts` is
    /// [`Config::tenants_per_placement`], computed once by the caller.
    pub fn tenant_server_cap(
        &self,
        tenant: &str,
        counts: &std::collections::HashMap<&str, usize>,
    ) -> Option<u32> {
        let t = self.tenants.get(tenant)?;
        if let Some(cap) = t.max_server_connections {
            return Some(cap);
        }
        let name = self.placement_of(t)?;
        let p = self.placements.get(name)?;
        Some(p.tenant_cap(counts.get(name).copied().unwrap_or(1)))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub placement: Option<String>,
    /// User name to plaintext password or `SCRAM-SHA-256$...` verifier,
    /// or to a client certificate identity (`{ cert = "..." }`).
    #[serde(default)]
    pub users: BTreeMap<String, UserAuth>,
    pub max_client_connections: Option<u32>,
    /// Server connections this tenant's clients may hold pinned at once
    /// (session state in transaction mode); default: half the placement's
    /// pool_size, at least 1.
    pub max_pinned_connections: Option<u32>,
    /// Server connections of its placement's pool this tenant's clients
    /// may hold at once (leased, pinned or being opened); default: the
    /// placement's `tenant_max_server_connections`.
    pub max_server_connections: Option<u32>,
    /// On an `isolation = "schema"` placement: this tenant's schema, in
    /// place of the placement's `schema_pattern`.
    pub schema: Option<String>,
    /// New connections are refused (08004), as after the console's
    /// `SUSPEND`; its `RESUME` cannot lift this one.
    #[serde(default)]
    pub suspended: bool,
    /// Give this tenant series of its own in `/metrics` whatever its
    /// traffic (see `admin.top_tenants`).
    #[serde(default)]
    pub watch: bool,
    /// Host names that name this tenant by TLS server name (SNI), e.g.
    /// its own domain; checked before `proxy.sni_suffix`.
    #[serde(default)]
    pub domains: Vec<String>,
}

/// Durations as strings: "30s", "500ms", "2m", "1h 30m".
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}
