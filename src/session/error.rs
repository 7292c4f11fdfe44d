//! Everything that can end a client connection with an error, and the
//! SQLSTATE each one carries (CONTRACT §5). Messages name the tenant where
//! there is one and never include hosts, URLs or secrets.

use crate::metrics::ErrorKind;
use crate::protocol::SqlState;
use crate::routing::{RoutingError, TenantId};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Routing(#[from] RoutingError),
    #[error("tenant \"{0}\" does not exist")]
    UnknownTenant(TenantId),
    #[error("password authentication failed for user \"{user}\" of tenant \"{tenant}\"")]
    AuthFailed { user: String, tenant: TenantId },
    /// An operator's login failed: unknown name, wrong password, or a
    /// placement not in its list, told apart only in the log.
    #[error("password authentication failed for operator \"{operator}\"")]
    OperatorAuthFailed { operator: String },
    /// An authenticated operator named a tenant its placement does not
    /// hold.
    #[error("tenant \"{tenant}\" is not on placement \"{placement}\"")]
    OperatorTenant { tenant: TenantId, placement: String },
    #[error("too many client connections for tenant \"{0}\"")]
    TenantFull(TenantId),
    #[error("too many client connections to pgtenant")]
    ProxyFull,
    /// Over an unauthenticated cap once a PROXY header named the client
    /// (`admission::Refusal::message`).
    #[error("{0}")]
    LoginsInFlight(&'static str),
    #[error("no server connection for tenant \"{0}\" became free within query_wait_timeout")]
    WaitTimeout(TenantId),
    #[error("placement of tenant \"{0}\" is unreachable")]
    PlacementUnreachable(TenantId),
    #[error("server connection of tenant \"{0}\" was lost")]
    ServerLost(TenantId),
    /// The lease's tenant context could not be set (`isolation = "rls"`).
    #[error(
        "tenant \"{0}\": the tenant context could not be set on the shared database; the server connection is closed"
    )]
    ContextFailed(TenantId),
    /// The session settings after a SET could not be read back, so they
    /// cannot follow the client: it is told rather than losing them.
    #[error(
        "tenant \"{0}\": the session settings could not be read back after a SET; the connection is closed so that none is lost silently"
    )]
    SettingsUnknown(TenantId),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("pgtenant is shutting down")]
    ShuttingDown,
    #[error(
        "terminating connection of tenant \"{0}\": idle in transaction longer than idle_transaction_timeout"
    )]
    IdleInTransaction(TenantId),
    #[error("terminating connection of tenant \"{0}\": idle longer than client_idle_timeout")]
    ClientIdle(TenantId),
    /// The client did not read what the proxy held for it.
    #[error(
        "terminating connection of tenant \"{0}\": it did not read its results for longer than client_read_timeout"
    )]
    ClientStalled(TenantId),
    /// Shutdown began before the client finished logging in.
    #[error("pgtenant is shutting down and accepts no new sessions")]
    NotAccepting,
    #[error("startup and authentication did not finish within client_login_timeout")]
    LoginTimeout,
    #[error("no startup packet within client_startup_timeout")]
    StartupTimeout,
    /// LISTEN on an rls placement: notifications ignore row-level
    /// security, so one tenant's would reach another's listeners.
    #[error(
        "tenant \"{0}\": LISTEN is not available on a shared (rls) placement: notifications are not separated by tenant"
    )]
    ListenOnShared(TenantId),
    /// Session state under `pin_policy = "error"`.
    #[error(
        "tenant \"{tenant}\": {kinds} cannot be kept across transactions with transaction pooling (pin_policy = \"error\"); release it in the same transaction or use session mode"
    )]
    SessionState { tenant: TenantId, kinds: String },
    /// Session state past the tenant's cap on pinned connections.
    #[error(
        "tenant \"{tenant}\" already holds {max} server connections pinned by session state (max_pinned_connections); {kinds} cannot be kept across transactions: release it in the same transaction"
    )]
    TooManyPins {
        tenant: TenantId,
        max: u32,
        kinds: String,
    },
    /// A message begun and not finished within client_message_timeout.
    #[error(
        "terminating connection of tenant \"{0}\": a message was not finished within client_message_timeout"
    )]
    MessageTimeout(TenantId),
    /// A login of a suspended tenant (SUSPEND or `suspended = true`).
    #[error("tenant \"{0}\" is suspended and accepts no new connections")]
    Suspended(TenantId),
    /// A session of a tenant suspended meanwhile, after its transaction.
    #[error("terminating connection: tenant \"{0}\" was suspended by an administrator")]
    SuspendedSession(TenantId),
    /// KILL from the admin console.
    #[error("terminating connection: tenant \"{0}\" was killed by an administrator")]
    Killed(TenantId),
    /// The tenant stayed paused longer than pause_timeout.
    #[error(
        "tenant \"{0}\" stayed paused longer than pause_timeout; the transaction did not start"
    )]
    PauseTimeout(TenantId),
    /// Too many failed logins of this user from this address lately
    /// (`auth_failure_limit`): refused without an exchange.
    #[error("too many failed logins for {who} from this address; try again in {retry_secs} s")]
    LoginBanned { who: String, retry_secs: u64 },
    /// `tls.require`: a client that did not encrypt, refused before any
    /// password could cross in clear.
    #[error("TLS is required: connect with sslmode=require or stronger")]
    TlsRequired,
    /// The TLS handshake failed (the client is told nothing more: it
    /// expects TLS records, not a message).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// An admin console login failed (unknown name or wrong password).
    #[error("password authentication failed for admin user \"{0}\"")]
    AdminAuthFailed(String),
    /// Too many admin console sessions at once.
    #[error("too many admin console connections")]
    ConsoleFull,
    /// A live reload removed the client's tenant.
    #[error("terminating connection: tenant \"{0}\" was removed from the configuration")]
    TenantRemoved(TenantId),
    /// A live reload changed where or how the client's tenant connects,
    /// and the client could not move (session mode, a pin, a new schema).
    #[error(
        "terminating connection of tenant \"{0}\": its placement or settings changed in a configuration reload; reconnect"
    )]
    Reconfigured(TenantId),
    /// The server refused a setting the client asked for; its own words.
    #[error("{message}")]
    Server { code: String, message: String },
}

impl ClientError {
    pub fn sql_state(&self) -> SqlState {
        match self {
            ClientError::Routing(RoutingError::BadOptions(_)) => SqlState::PROTOCOL_VIOLATION,
            ClientError::Routing(_) => SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
            ClientError::UnknownTenant(_) => SqlState::INVALID_CATALOG_NAME,
            ClientError::AuthFailed { .. }
            | ClientError::OperatorAuthFailed { .. }
            | ClientError::AdminAuthFailed(_) => SqlState::INVALID_PASSWORD,
            ClientError::LoginBanned { .. } | ClientError::TlsRequired => {
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }
            ClientError::Tls(_) => SqlState::PROTOCOL_VIOLATION,
            ClientError::Suspended(_) => {
                SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION
            }
            ClientError::SuspendedSession(_) | ClientError::Killed(_) => SqlState::ADMIN_SHUTDOWN,
            ClientError::PauseTimeout(_) => SqlState::QUERY_CANCELED,
            ClientError::ConsoleFull => SqlState::TOO_MANY_CONNECTIONS,
            ClientError::OperatorTenant { .. } => SqlState::INVALID_CATALOG_NAME,
            ClientError::TenantFull(_)
            | ClientError::ProxyFull
            | ClientError::LoginsInFlight(_)
            | ClientError::TooManyPins { .. } => SqlState::TOO_MANY_CONNECTIONS,
            ClientError::MessageTimeout(_) => SqlState::PROTOCOL_VIOLATION,
            ClientError::WaitTimeout(_) => SqlState::QUERY_CANCELED,
            ClientError::PlacementUnreachable(_)
            | ClientError::ServerLost(_)
            | ClientError::ContextFailed(_)
            | ClientError::SettingsUnknown(_) => SqlState::CONNECTION_FAILURE,
            ClientError::Protocol(_) | ClientError::LoginTimeout | ClientError::StartupTimeout => {
                SqlState::PROTOCOL_VIOLATION
            }
            ClientError::NotSupported(_)
            | ClientError::SessionState { .. }
            | ClientError::ListenOnShared(_) => SqlState::FEATURE_NOT_SUPPORTED,
            ClientError::ShuttingDown
            | ClientError::TenantRemoved(_)
            | ClientError::Reconfigured(_) => SqlState::ADMIN_SHUTDOWN,
            ClientError::IdleInTransaction(_) => SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            ClientError::ClientIdle(_) => SqlState::IDLE_SESSION_TIMEOUT,
            ClientError::ClientStalled(_) => SqlState::PROGRAM_LIMIT_EXCEEDED,
            ClientError::NotAccepting => SqlState::CANNOT_CONNECT_NOW,
            ClientError::Server { code, .. } => {
                SqlState::parse(code).unwrap_or(SqlState::INTERNAL_ERROR)
            }
        }
    }

    /// The errors metric's kind; `None` for a shutdown (not an error of
    /// the client's or the proxy's).
    pub fn metric_kind(&self) -> Option<ErrorKind> {
        Some(match self {
            ClientError::Routing(_)
            | ClientError::UnknownTenant(_)
            | ClientError::OperatorTenant { .. } => ErrorKind::Routing,
            ClientError::AuthFailed { .. }
            | ClientError::OperatorAuthFailed { .. }
            | ClientError::AdminAuthFailed(_)
            | ClientError::LoginBanned { .. }
            | ClientError::TlsRequired => ErrorKind::Auth,
            ClientError::Tls(_) => ErrorKind::Protocol,
            // A suspended tenant's login is refused by policy, like a
            // full one.
            ClientError::Suspended(_)
            | ClientError::ConsoleFull
            | ClientError::TenantFull(_)
            | ClientError::ProxyFull
            | ClientError::LoginsInFlight(_)
            | ClientError::TooManyPins { .. }
            | ClientError::ClientStalled(_)
            | ClientError::SessionState { .. }
            | ClientError::ListenOnShared(_) => ErrorKind::Limit,
            ClientError::WaitTimeout(_)
            | ClientError::MessageTimeout(_)
            | ClientError::LoginTimeout
            | ClientError::StartupTimeout
            | ClientError::IdleInTransaction(_)
            | ClientError::ClientIdle(_)
            | ClientError::PauseTimeout(_) => ErrorKind::Timeout,
            ClientError::PlacementUnreachable(_)
            | ClientError::ServerLost(_)
            | ClientError::ContextFailed(_)
            | ClientError::SettingsUnknown(_)
            | ClientError::Server { .. } => ErrorKind::Backend,
            ClientError::Protocol(m) if m.starts_with("internal") => ErrorKind::Internal,
            ClientError::Protocol(_) | ClientError::NotSupported(_) => ErrorKind::Protocol,
            // An administrator's or the proxy's own stop, not an error.
            ClientError::ShuttingDown
            | ClientError::NotAccepting
            | ClientError::SuspendedSession(_)
            | ClientError::Killed(_)
            | ClientError::TenantRemoved(_)
            | ClientError::Reconfigured(_) => return None,
        })
    }

    /// The tenant the error names, if any.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            ClientError::AuthFailed { tenant, .. }
            | ClientError::TooManyPins { tenant, .. }
            | ClientError::SessionState { tenant, .. } => Some(tenant),
            ClientError::TenantFull(t)
            | ClientError::WaitTimeout(t)
            | ClientError::PlacementUnreachable(t)
            | ClientError::ServerLost(t)
            | ClientError::ContextFailed(t)
            | ClientError::SettingsUnknown(t)
            | ClientError::IdleInTransaction(t)
            | ClientError::ClientIdle(t)
            | ClientError::ClientStalled(t)
            | ClientError::ListenOnShared(t)
            | ClientError::Suspended(t)
            | ClientError::PauseTimeout(t)
            | ClientError::MessageTimeout(t) => Some(t),
            _ => None,
        }
    }

    /// A short label for logs and (later) the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Routing(_) => "routing",
            ClientError::UnknownTenant(_) => "unknown_tenant",
            ClientError::AuthFailed { .. }
            | ClientError::OperatorAuthFailed { .. }
            | ClientError::AdminAuthFailed(_) => "auth",
            ClientError::LoginBanned { .. } => "auth_banned",
            ClientError::TlsRequired => "tls_required",
            ClientError::Tls(_) => "tls",
            ClientError::Suspended(_) | ClientError::SuspendedSession(_) => "suspended",
            ClientError::Killed(_) => "killed",
            ClientError::PauseTimeout(_) => "pause_timeout",
            ClientError::ConsoleFull => "limit",
            ClientError::OperatorTenant { .. } => "unknown_tenant",
            ClientError::TenantFull(_)
            | ClientError::ProxyFull
            | ClientError::LoginsInFlight(_)
            | ClientError::TooManyPins { .. } => "limit",
            ClientError::MessageTimeout(_) => "timeout",
            ClientError::WaitTimeout(_) => "wait_timeout",
            ClientError::PlacementUnreachable(_)
            | ClientError::ServerLost(_)
            | ClientError::ContextFailed(_)
            | ClientError::SettingsUnknown(_) => "server",
            ClientError::Protocol(_) | ClientError::LoginTimeout | ClientError::StartupTimeout => {
                "protocol"
            }
            ClientError::NotSupported(_) => "not_supported",
            ClientError::SessionState { .. } | ClientError::ListenOnShared(_) => "session_state",
            ClientError::ShuttingDown | ClientError::NotAccepting => "shutdown",
            ClientError::TenantRemoved(_) | ClientError::Reconfigured(_) => "reload",
            ClientError::IdleInTransaction(_) | ClientError::ClientIdle(_) => "idle_timeout",
            ClientError::ClientStalled(_) => "limit",
            ClientError::Server { .. } => "server_refused",
        }
    }
}
