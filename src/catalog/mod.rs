//! The tenant catalog: which tenants exist, where each one's data lives
//! (its placement), who may log in, and its limits.
//!
//! A [`Catalog`] is an immutable snapshot; readers hold an `Arc` of it and
//! a reload swaps in a new one. Today it is built from the config file
//! (`file.rs`); a catalog kept in PostgreSQL and shared by several proxies
//! will produce the same snapshot type.

mod admins;
mod file;
mod operators;

pub use operators::{OperatorCheck, OperatorEntry};

use crate::credentials::scram::Verifier;
use crate::credentials::secret::AuthSecret;
use crate::routing::TenantId;
use std::collections::HashMap;
use std::sync::Arc;

/// Maps keyed by names the config defines (tenants, users, placements),
/// looked up once or twice per login with the name the client sent.
/// foldhash instead of std's SipHash: these maps take no client-chosen
/// keys, so flooding them with colliding keys is not possible, and
/// SipHash was about 4 % of the login path's instructions (callgrind).
/// Maps that do take client-chosen keys keep std's hasher.
pub type ConfigMap<K, V> = HashMap<K, V, FastHash>;

/// The hasher of `ConfigMap`, for other maps whose keys clients cannot
/// choose (concurrent ones, keys the proxy draws).
pub type FastHash = foldhash::fast::RandomState;

/// How a tenant user proves who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Scram(Verifier),
}

/// How a tenant user proves who they are: a SCRAM verifier, a client
/// certificate's identity, or both, each then required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLogin {
    pub password: Option<Verifier>,
    /// Matched against the verified client certificate
    /// (`tls::certificate_names`).
    pub cert: Option<Box<str>>,
}

/// One tenant, as the data plane needs it.
#[derive(Debug)]
pub struct TenantEntry {
    pub id: TenantId,
    pub placement: String,
    pub users: ConfigMap<String, UserLogin>,
    pub max_client_connections: Option<u32>,
    pub max_pinned_connections: Option<u32>,
    /// Server connections of its placement's pool its clients may hold
    /// at once (the tenant's own setting or the placement's default).
    pub max_server_connections: u32,
    /// On an `isolation = "schema"` placement: the `search_path` this
    /// tenant's clients start with (as if each had sent it at startup).
    pub search_path: Option<Arc<str>>,
    /// `suspended = true` in the config: new connections are refused.
    pub suspended: bool,
    /// `watch = true`: series of its own in `/metrics` (`metrics::topk`).
    pub watch: bool,
}

/// All tenants, by name.
#[derive(Debug)]
pub struct Catalog {
    tenants: ConfigMap<String, Arc<TenantEntry>>,
    /// Platform operators (`[operators.*]`), by name.
    operators: ConfigMap<String, OperatorEntry>,
    /// Admin console users (`[admin] users`), by name.
    admins: ConfigMap<String, UserLogin>,
    /// Keys the salts of plaintext passwords and of unknown users.
    secret: AuthSecret,
}

impl Catalog {
    /// What a SCRAM exchange for `user` of `tenant` runs against: the
    /// user's verifier, or for a name that is not configured, or that
    /// has no password, a doomed one with the salt such a user would have
    /// (PostgreSQL's mock exchange).
    pub fn scram_verifier(&self, tenant: &TenantEntry, user: &str) -> Verifier {
        match tenant.users.get(user).and_then(|u| u.password.as_ref()) {
            Some(v) => v.clone(),
            None => Verifier::doomed(&self.secret.salt(tenant.id.as_str(), user)),
        }
    }

    /// Every tenant, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<TenantEntry>> {
        self.tenants.values()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<TenantEntry>> {
        self.tenants.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tenants.contains_key(name)
    }

    /// The secret the catalog's salts were keyed with (a reload keeps
    /// it).
    pub fn secret(&self) -> &AuthSecret {
        &self.secret
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}
